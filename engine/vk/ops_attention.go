package vk

import (
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// Attention: q [B, Lq, H*D], k and v [B, Lk, KV*D] -> dst [B, Lq, H*D],
// softmax(scale · q kᵀ) v per head, flash-style (no score matrix). Query
// head h reads key/value head h / (H/KV); o.KeyLens masks each batch row's
// keys past its length and o.Causal the keys after each query.
func (d *Device) Attention(dst, q, k, v *engine.Tensor, o engine.AttentionOptions) error {
	if dst == nil || q == nil || k == nil || v == nil {
		return fmt.Errorf("vk: attention: nil tensor")
	}
	if _, _, _, _, err := engine.AttentionCheck(q, k, v, o); err != nil {
		return err
	}
	if err := sameShape("attention "+q.Name, dst, q); err != nil {
		return err
	}
	return d.attention(dst, q, k, v, o, 0)
}

// attention runs validated operands; qOff is the index of q's first query
// in the whole sequence (for the causal mask) when q is a piece of it.
func (d *Device) attention(dst, q, k, v *engine.Tensor, o engine.AttentionOptions, qOff int) error {
	b, lq, lk, dim, _ := engine.AttentionCheck(q, k, v, o)
	c := d.newOp("attention " + q.Name)
	for _, t := range []*engine.Tensor{q, k, v, dst} {
		c.dtype(t, engine.F32)
	}
	if c.err != nil {
		return c.err
	}
	if ok, err := d.attentionPieces(dst, q, k, v, o, qOff, b, lq); ok {
		return err
	}
	c.in(q)
	c.in(k)
	c.in(v)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	kvLen := lk
	if o.KeyLens != nil {
		kvLen = o.KeyLens[0] // attentionPieces left rows of one length
	}
	p := kernels.AttentionParams{Lq: uint32(lq), Lk: uint32(lk), Heads: uint32(o.Heads), KvHeads: uint32(o.KV()),
		Scale: o.Scale, KvLen: uint32(kvLen), QOff: uint32(qOff)}
	if o.Causal {
		p.Causal = 1
	}
	qb := attentionQB(dim)
	if d.tuning == TuningGPU {
		// GPUs keep per-thread arrays in registers: one query per
		// invocation keeps q and the accumulators there, and the
		// invocations of a warp read the same key (a broadcast load).
		qb = 1
	}
	if dim%4 == 0 && d.texelsFit(4, q, k, v) && d.loopsFit(regLoops(dim, qb, lk)) {
		tiles := ((lq + qb - 1) / qb) * o.Heads
		groups := d.groupGrid((tiles+wgReg-1)/wgReg, b)
		return c.run(kernels.AttentionReg, []uint32{wgReg, uint32(dim), uint32(qb)}, unsafe.Pointer(&p), unsafe.Sizeof(p), groups)
	}
	if !d.loopsFit(scalarLoops(dim, lk)) {
		c.release()
		if o.Heads == 1 && o.KV() == 1 && !o.Causal && kvLen == lk {
			return d.attentionUnfused(dst, q, k, v, o.Scale, b, lq, lk, dim)
		}
		return fmt.Errorf("vk: %s: %d keys of head dim %d exceed what %s's loop limiter lets one invocation run", c.op, lk, dim, d.info.Name)
	}
	groups := d.groupGrid((lq*o.Heads+wgReg-1)/wgReg, b)
	return c.run(kernels.AttentionScalar, []uint32{wgReg, uint32(dim), 1}, unsafe.Pointer(&p), unsafe.Sizeof(p), groups)
}

// attentionPieces splits an attention into dispatches the kernel can run:
// runs of batch rows with equal key lengths (the kernel takes one length
// per dispatch), then, for operands over the binding limit, pieces of batch
// rows and of the queries of one row. It returns false when the operands
// go to one dispatch as they are.
func (d *Device) attentionPieces(dst, q, k, v *engine.Tensor, o engine.AttentionOptions, qOff, b, lq int) (bool, error) {
	row := func(t *engine.Tensor, vw *viewer, r0, r1 int) *engine.Tensor {
		return vw.rows(t, b, r0, r1, r1-r0, t.Shape[1], t.Shape[2])
	}
	// rows runs batch rows [r0, r1) as their own attention.
	rows := func(r0, r1 int) error {
		var vw viewer
		po := o
		if o.KeyLens != nil {
			po.KeyLens = o.KeyLens[r0:r1]
		}
		dv, qv, kv, vv := row(dst, &vw, r0, r1), row(q, &vw, r0, r1), row(k, &vw, r0, r1), row(v, &vw, r0, r1)
		if vw.err != nil {
			return vw.err
		}
		return d.attention(dv, qv, kv, vv, po, qOff)
	}
	if o.KeyLens != nil && !allEqual(o.KeyLens) {
		for r0 := 0; r0 < b; {
			r1 := r0 + 1
			for r1 < b && o.KeyLens[r1] == o.KeyLens[r0] {
				r1++
			}
			if err := rows(r0, r1); err != nil {
				return true, err
			}
			r0 = r1
		}
		return true, nil
	}
	if d.fits(dst, q, k, v) {
		return false, nil
	}
	if b > 1 {
		per := func(t *engine.Tensor) int64 { return t.Bytes() / int64(b) }
		pcs := d.pieces(b, per(q), per(k), per(v), per(dst))
		if len(pcs) < 2 {
			return false, nil
		}
		for _, pc := range pcs {
			if err := rows(pc[0], pc[1]); err != nil {
				return true, err
			}
		}
		return true, nil
	}
	if !d.fits(k, v) {
		return false, nil // every query reads all of k and v
	}
	// One batch row: split the queries (and their outputs).
	w := q.Shape[2]
	pcs := d.pieces(lq, int64(4*w), int64(4*w))
	if len(pcs) < 2 {
		return false, nil
	}
	for _, pc := range pcs {
		var vw viewer
		n := pc[1] - pc[0]
		qv := vw.rows(q, lq, pc[0], pc[1], 1, n, w)
		dv := vw.rows(dst, lq, pc[0], pc[1], 1, n, w)
		if vw.err != nil {
			return true, vw.err
		}
		if err := d.attention(dv, qv, k, v, o, qOff+pc[0]); err != nil {
			return true, err
		}
	}
	return true, nil
}

// attentionUnfused runs single-head attention as scores = scale·q kᵀ,
// softmax, scores·v, for the long keys at a wide head the fused kernels
// cannot loop over on llvmpipe (the SD VAE's mid-block attention: one head
// of 512 over every latent pixel, 4096 keys at 512²). The score matrix is
// made for chunks of queries of at most 16 MiB (and within the binding
// limit), twice (scores and weights), so the extra memory stays small
// whatever the size.
func (d *Device) attentionUnfused(dst, q, k, v *engine.Tensor, scale float32, b, lq, lk, dim int) error {
	chunkBytes := int64(16 << 20)
	if lim := d.bindLimit(); lim > 0 && lim < chunkBytes {
		chunkBytes = lim
	}
	per := max(1, int(chunkBytes/int64(4*lk)))
	var vw viewer
	for i := range b {
		kv, vv := vw.rows(k, b, i, i+1, 1, lk, dim), vw.rows(v, b, i, i+1, 1, lk, dim)
		for q0 := 0; q0 < lq; q0 += per {
			q1 := min(lq, q0+per)
			qv := vw.rows(q, b*lq, i*lq+q0, i*lq+q1, 1, q1-q0, dim)
			dv := vw.rows(dst, b*lq, i*lq+q0, i*lq+q1, 1, q1-q0, dim)
			if vw.err != nil {
				return vw.err
			}
			shape := engine.Shape{1, q1 - q0, lk}
			scores, err := d.Alloc("attention scores of "+q.Name, engine.F32, shape)
			if err != nil {
				return err
			}
			probs, err := d.Alloc("attention weights of "+q.Name, engine.F32, shape)
			if err == nil {
				err = d.MatMul(scores, qv, kv, true, scale)
			}
			if err == nil {
				err = d.Softmax(probs, scores)
			}
			if err == nil {
				err = d.MatMul(dv, probs, vv, false, 1)
			}
			d.Free(scores)
			d.Free(probs)
			if err != nil {
				return fmt.Errorf("vk: attention %s without the fused kernel: %w", q.Name, err)
			}
		}
	}
	return nil
}

// llvmpipe stops a shader's loops once they have run 65535 iterations in
// all (its loop limiter) and carries on with the outputs unwritten. It
// unrolls loops of up to 32 iterations, which do not count. These estimate
// the loop iterations of one invocation of the attention kernels over lk
// keys (kernels/glsl/attention_*.comp).
const cpuLoopLimit = 65535

// regLoops: attention_reg runs one iteration per block of 8 keys while its
// per-head loops (D/4 vec4s) unroll; over 32 vec4s they do not, and each
// block runs them per key for the scores and the values and per query to
// rescale, a little more than counted here (measured at D=160: 600 keys
// run, 630 fail; this estimate allows 576).
func regLoops(dim, qb, lk int) int {
	blocks := (lk + 7) / 8
	if d4 := dim / 4; d4 > 32 {
		return blocks*((2*8+qb+2)*(d4+1)+1) + 2*qb*(d4+1)
	}
	return blocks
}

// scalarLoops: attention_scalar walks the head in unrolled chunks of 32
// twice per key.
func scalarLoops(dim, lk int) int { return lk * (2*((dim+31)/32) + 1) }

// loopsFit reports whether a kernel running n loop iterations per
// invocation completes on this device: CPU devices (llvmpipe) cap them.
func (d *Device) loopsFit(n int) bool { return d.info.Type != "cpu" || n < cpuLoopLimit-64 }

func allEqual(s []int) bool {
	for _, x := range s {
		if x != s[0] {
			return false
		}
	}
	return true
}

// attentionQB is the queries per invocation: each loaded key and value is
// reused QB times, but the kernel's unrolled code (QB x D/4 vec4 registers)
// grows with it, and so does LLVM's compile time on lavapipe. Measured on
// lavapipe (1024 tokens, GFLOP/s per CPU-second x 2 cores; first-use
// compile): D=40: QB 4 13.9, 8 18.0 (5 s); D=64: 4 12.3, 8 19.5 (13 s),
// 16 25.4 (32 s); D=80: 2 7.3, 4 14.1 (12 s), 8 20.6 (20 s); D=160 is not
// unrolled by the driver (compiles in 0.6 s): 2 5.2, 4 6.8. D=128 (Qwen3,
// Z-Image; 1056 tokens x 30 heads, CPU-time rates on a loaded machine,
// medians of 3): 2 13.2, 3 14.6, 4 16.7, compiling in 7.5, -, 21.8 s
// there (about a third of that when quiet).
func attentionQB(dim int) int {
	switch {
	case dim <= 64:
		return 8
	case dim <= 128:
		return 4
	}
	return 4
}
