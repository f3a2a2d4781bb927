package vk

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// ConvAlgo selects how 3x3 stride-1 convolutions run.
type ConvAlgo int

const (
	// ConvAuto uses Winograd where the shape repays it (register-blocked
	// tuning, enough channels and pixels) and the direct kernel elsewhere.
	ConvAuto ConvAlgo = iota
	// ConvDirect always uses the implicit-GEMM kernel.
	ConvDirect
	// ConvWinograd uses Winograd for every 3x3 stride-1 conv whose scratch
	// fits (tests use it to cover small shapes).
	ConvWinograd
)

func (a ConvAlgo) String() string {
	switch a {
	case ConvDirect:
		return "direct"
	case ConvWinograd:
		return "winograd"
	}
	return "auto"
}

// Winograd F(4x4, 3x3) (kernels/glsl/winograd.glsl): each 4x4 output tile
// costs 36 multiply-adds per input channel instead of 144. The transformed
// input V and the products M are chunked over tiles so that each scratch
// buffer stays under winoChunkBytes (and the binding limit). Measured on
// lavapipe, 4-64 MiB chunks run at the same speed: the chunk only bounds
// the scratch memory.
const (
	winoChunkBytes = 16 << 20
	winoTile       = 4  // outputs per tile side
	winoPos        = 36 // positions a of the 6x6 transformed tile
)

// winogradAuto reports whether ConvAuto picks Winograd for a 3x3 stride-1
// conv with c input and o output channels on an oh x ow output. Measured
// on lavapipe (BenchmarkConv2dWinograd): Winograd wins from 64->64 at 32²,
// 128->128 at 16² and 32->32 at 64² (~1.2-1.4x) up to ~4x at 512->512
// at 64², and loses at 64->64 at 16², where four dispatches and the
// transforms outweigh the multiplies saved. GPUs keep the direct kernel
// until measured there.
func (d *Device) winogradAuto(c, o, oh, ow int) bool {
	return d.tuning == TuningCPU && c >= 32 && o >= 32 && oh*ow >= 16*16 && c*o*oh*ow >= 1<<22
}

// winoGroupAlign is the output-channel granularity of Winograd's channel
// groups: group offsets into w, bias and dst stay 256-byte aligned for
// any input channel count.
const winoGroupAlign = 64

// winoGroups splits o output channels into groups whose transformed
// weights (36 x group x cp floats) fit limit bytes; 0 when even one
// aligned group does not.
func winoGroups(o, cp int, limit int64) int {
	perO := int64(winoPos) * int64(cp) * 4
	if int64(4*((o+3)/4))*perO <= limit {
		return o
	}
	most := int(limit/perO) / winoGroupAlign * winoGroupAlign
	if most < winoGroupAlign {
		return 0
	}
	groups := (o + most - 1) / most
	return ((o+groups-1)/groups + winoGroupAlign - 1) / winoGroupAlign * winoGroupAlign
}

// conv2dWinograd records the conv of Conv2d's bound operands c.binds
// (x, w, bias, dst) through Winograd. Output channels run in groups when
// the transformed weights of all of them would exceed the binding limit
// (1280-channel UNet convs on lavapipe's 128 MiB). It returns false, having
// recorded nothing, when the scratch does not fit the budget or the
// binding limit; the caller then runs the direct kernel.
func (d *Device) conv2dWinograd(c *opCtx, wdt engine.DType, n, ch, h, wd, o, oh, ow, pad int, hasBias uint32) (bool, error) {
	cp4 := (ch + 3) / 4
	cp := 4 * cp4
	th, tw := (oh+winoTile-1)/winoTile, (ow+winoTile-1)/winoTile
	tiles := n * th * tw
	limit := int64(1) << 31
	if r := d.bindLimit(); r > 0 {
		limit = r
	}
	og := winoGroups(o, cp, limit)
	op := 4 * ((og + 3) / 4)
	perTile := int64(winoPos) * int64(max(cp, op)) * 4
	tn := int(min(min(limit, winoChunkBytes)/perTile, int64(tiles)))
	if og == 0 || tn < 1 {
		return false, nil
	}
	if !d.texelBindsFit(4, binding{size: int64(winoPos) * int64(tn) * int64(cp) * 4, dtype: engine.F32},
		binding{size: int64(winoPos) * int64(op) * int64(cp) * 4, dtype: engine.F32}) {
		return false, nil // the products would leave matmul_reg
	}
	if a := int64(max(d.info.MinStorageBufferAlign, 16)); og < o &&
		(wdt.RowBytes(og*ch*9)%a != 0 && !wdt.Quantized() || int64(4*og*oh*ow)%a != 0 || int64(4*og)%a != 0) {
		return false, nil // groups would bind misaligned ranges
	}
	var scratch []*engine.Tensor
	defer func() {
		for _, t := range scratch {
			d.Free(t)
		}
	}()
	alloc := func(name string, elems int) (binding, error) {
		t, err := d.Alloc(c.op+"."+name, engine.F32, engine.Shape{elems})
		if err != nil {
			return binding{}, err
		}
		scratch = append(scratch, t)
		bd, _, err := c.rawBinding(t, false)
		return bd, err
	}
	ub, err := alloc("winograd_u", winoPos*op*cp)
	if err == nil {
		var vb, mb binding
		if vb, err = alloc("winograd_v", winoPos*tn*cp); err == nil {
			mb, err = alloc("winograd_m", winoPos*tn*op)
		}
		if err == nil {
			defer c.release()
			xb, wb, bb, yb := c.binds[0], c.binds[1], c.binds[2], c.binds[3]
			for o0 := 0; o0 < o; o0 += og {
				oc := min(og, o-o0)
				pp := kernels.WinogradParams{C: uint32(ch), H: uint32(h), W: uint32(wd), O: uint32(oc), Oh: uint32(oh),
					Ow: uint32(ow), Cp4: uint32(cp4), Op4: uint32((oc + 3) / 4), Th: uint32(th), Tw: uint32(tw),
					Tn: uint32(tn), Pad: uint32(pad), HasBias: hasBias, OStride: uint32(o)}
				gw := subRange(wb, wdt.RowBytes(o0*ch*9), wdt.RowBytes(oc*ch*9))
				if wdt.Quantized() {
					// The transform decodes from the whole tensor's words
					// (groups' blocks need not start on a word).
					gw, pp.WOff = wb, uint32(o0*ch*9)
				}
				gb := bb
				if hasBias != 0 {
					gb = subRange(bb, int64(4*o0), int64(4*oc))
				}
				gy := subRange(yb, int64(4*o0*oh*ow), yb.size-int64(4*o0*oh*ow))
				if err := d.recordWinograd(c, wdt, xb, gw, gb, gy, ub, vb, mb, pp, tiles); err != nil {
					return true, err
				}
			}
			for _, f := range c.post {
				if err := f(); err != nil {
					return true, err
				}
			}
			return true, nil
		}
	}
	var be *BudgetError
	var re *RangeError
	if errors.As(err, &be) || errors.As(err, &re) {
		return false, nil
	}
	c.release()
	return false, err
}

// subRange is the part of bd from off, size bytes long.
func subRange(bd binding, off, size int64) binding {
	bd.off += off
	bd.size = size
	return bd
}

// recordWinograd records, for one group of pp.O output channels, the
// weight transform into ub, then per chunk of pp.Tn tiles the input
// transform into vb, the 36 matmuls into mb and the output transform into
// the group's channels of yb.
func (d *Device) recordWinograd(c *opCtx, wdt engine.DType, xb, wb, bb, yb, ub, vb, mb binding, pp kernels.WinogradParams, tiles int) error {
	wr := func(bd binding) binding { bd.write = true; return bd }
	dispatch := func(k *kernels.Kernel, p kernels.WinogradParams, n int, binds ...binding) error {
		if err := d.rec.dispatch(k, []uint32{wgReg}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgReg), binds); err != nil {
			return d.fail(fmt.Errorf("vk: %s: %w", c.op, err))
		}
		return nil
	}
	cp, op := int(4*pp.Cp4), int(4*pp.Op4)
	wk := kernels.WinogradWeights
	if wdt.Quantized() {
		wk = quantTable[wdt].wino
	}
	if err := dispatch(wk, pp, op*int(pp.Cp4), wb, wr(ub)); err != nil {
		return err
	}
	chunk := int(pp.Tn)
	for t0 := 0; t0 < tiles; t0 += chunk {
		tn := min(chunk, tiles-t0)
		p := pp
		p.T0, p.Tn = uint32(t0), uint32(tn)
		if err := dispatch(kernels.WinogradInput, p, tn*int(p.Cp4), xb, wr(vb)); err != nil {
			return err
		}
		// M[a] [tn, op] = V[a] [tn, cp] · U[a] [op, cp]^T for the 36 positions.
		mc := &opCtx{d: d, op: c.op, binds: []binding{vb, ub, {buf: d.dummy.blk.buf, off: d.dummy.off, size: d.dummy.size}, wr(mb)}}
		mp := kernels.MatMulParams{M: uint32(tn), N: uint32(op), K: uint32(cp), StrideA: uint32(tn * cp),
			StrideB: uint32(op * cp), StrideC: uint32(tn * op), TransB: 1, Alpha: 1}
		if err := d.matmul(mc, engine.F32, winoPos, tn, op, cp, true, mp); err != nil {
			return err
		}
		if err := dispatch(kernels.WinogradOutput, p, tn*int(p.Op4), mb, bb, yb); err != nil {
			return err
		}
	}
	return nil
}
