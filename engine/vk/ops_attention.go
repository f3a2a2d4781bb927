package vk

import (
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// Attention: q [B, Lq, H*D], k and v [B, Lk, H*D] -> dst [B, Lq, H*D],
// softmax(scale · q kᵀ) v per head, flash-style (no score matrix).
func (d *Device) Attention(dst, q, k, v *engine.Tensor, o engine.AttentionOptions) error {
	if dst == nil || q == nil || k == nil || v == nil {
		return fmt.Errorf("vk: attention: nil tensor")
	}
	c := d.newOp("attention " + q.Name)
	b, lq, lk, dim, err := engine.AttentionCheck(q, k, v, o)
	if err != nil {
		return err
	}
	if o.KV() != o.Heads || o.KeyLens != nil {
		return fmt.Errorf("vk: attention %s: grouped-query attention and key lengths are not implemented yet", q.Name)
	}
	heads, scale, causal := o.Heads, o.Scale, o.Causal
	c.check(sameShape(c.op, dst, q))
	for _, t := range []*engine.Tensor{q, k, v, dst} {
		c.dtype(t, engine.F32)
	}
	c.in(q)
	c.in(k)
	c.in(v)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	p := kernels.AttentionParams{Lq: uint32(lq), Lk: uint32(lk), Heads: uint32(heads), Scale: scale}
	if causal {
		p.Causal = 1
	}
	if dim%4 == 0 && d.texelsFit(4, q, k, v) {
		qb := attentionQB(dim)
		if d.tuning == TuningGPU {
			// GPUs keep per-thread arrays in registers: one query per
			// invocation keeps q and the accumulators there, and the
			// invocations of a warp read the same key (a broadcast load).
			qb = 1
		}
		tiles := ((lq + qb - 1) / qb) * heads
		groups := d.groupGrid((tiles+wgReg-1)/wgReg, b)
		return c.run(kernels.AttentionReg, []uint32{wgReg, uint32(dim), uint32(qb)}, unsafe.Pointer(&p), unsafe.Sizeof(p), groups)
	}
	groups := d.groupGrid((lq*heads+wgReg-1)/wgReg, b)
	return c.run(kernels.AttentionScalar, []uint32{wgReg, uint32(dim), 1}, unsafe.Pointer(&p), unsafe.Sizeof(p), groups)
}

// attentionQB is the queries per invocation: each loaded key and value is
// reused QB times, but the kernel's unrolled code (QB x D/4 vec4 registers)
// grows with it, and so does LLVM's compile time on lavapipe. Measured on
// lavapipe (1024 tokens, GFLOP/s per CPU-second x 2 cores; first-use
// compile): D=40: QB 4 13.9, 8 18.0 (5 s); D=64: 4 12.3, 8 19.5 (13 s),
// 16 25.4 (32 s); D=80: 2 7.3, 4 14.1 (12 s), 8 20.6 (20 s); D=160 is not
// unrolled by the driver (compiles in 0.6 s): 2 5.2, 4 6.8.
func attentionQB(dim int) int {
	switch {
	case dim <= 64:
		return 8
	case dim <= 80:
		return 4
	case dim <= 128:
		return 2
	}
	return 4
}
