package vk

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// conv2d_reg.comp's tile: TO output channels x TP output pixels.
const regTO, regTP = 16, 16

// Conv2d: x [N, C, H, W], w [O, C, KH, KW], bias [O] or nil ->
// dst [N, O, OH, OW], as an implicit GEMM (no im2col buffer); on CPU-like
// devices 3x3 stride-1 convs may run through Winograd (ops_winograd.go,
// Options.Conv) and 1x1, strided or narrow ones through im2col + matmul
// (conv2dGEMM).
func (d *Device) Conv2d(dst, x, w, bias *engine.Tensor, p engine.Conv2dParams) error {
	if dst == nil || x == nil || w == nil {
		return fmt.Errorf("vk: conv2d: nil tensor")
	}
	c := d.newOp("conv2d " + w.Name)
	s, err := engine.Conv2dShape(x, w, p)
	if err != nil {
		return err
	}
	c.check(engine.WantShape(c.op, dst, s...))
	o := w.Shape[0]
	if c.err == nil && !d.fits(dst, x) {
		// Images are independent; one image over the limit is the
		// caller's to tile (MaxTensorBytes).
		if ok, err := d.splitLeading([]*engine.Tensor{dst, x}, func(v []*engine.Tensor) error {
			return d.Conv2d(v[0], v[1], w, bias, p)
		}); ok {
			return err
		}
	}
	kh, kw := w.Shape[2], w.Shape[3]
	hasBias := c.weighted(dst, x, w, bias, o, x.Shape[1]*kh*kw)
	if c.err != nil {
		return c.err
	}
	n, ch, h, wd := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	oh, ow := s[2], s[3]
	if w.DType.Quantized() {
		return d.conv2dQuant(c, w.DType, n, ch, h, wd, o, kh, kw, oh, ow, p, hasBias)
	}
	texels := d.texelsFit(1, x, w) // the CPU kernels read x and w as scalar texels
	if kh == 3 && kw == 3 && p.Stride == 1 && d.opts.Conv != ConvDirect && texels &&
		(d.opts.Conv == ConvWinograd || d.winogradAuto(ch, o, oh, ow)) {
		if ok, err := d.conv2dWinograd(c, w.DType, n, ch, h, wd, o, oh, ow, p.Pad, hasBias); ok || err != nil {
			return err
		}
	}
	pp := kernels.Conv2dParams{C: uint32(ch), H: uint32(h), W: uint32(wd), O: uint32(o),
		Oh: uint32(oh), Ow: uint32(ow), HasBias: hasBias}
	if d.tuning == TuningCPU && texels {
		if ok, err := d.conv2dGEMM(c, w.DType, n, kh, kw, p, pp); ok || err != nil {
			return err
		}
	}
	var kern *kernels.Kernel
	var groups [3]uint32
	local := uint32(wgReg)
	if d.tuning == TuningGPU || !texels {
		kern = pickW(w.DType, kernels.Conv2dTileF32, kernels.Conv2dTileF16)
		groups = [3]uint32{uint32((oh*ow + tileMN - 1) / tileMN), uint32((o + tileMN - 1) / tileMN), uint32(n)}
		local = 256
	} else {
		kern = kernels.Conv2dReg
		tiles := ((ow + regTP - 1) / regTP) * oh * ((o + regTO - 1) / regTO)
		groups = d.groupGrid((tiles+wgReg-1)/wgReg, n)
	}
	spec := []uint32{local, uint32(kh), uint32(kw), uint32(p.Stride), uint32(p.Pad), uint32(convCB(kh, kw))}
	return c.run(kern, spec, unsafe.Pointer(&pp), unsafe.Sizeof(pp), groups)
}

// convCB is conv2d_reg's input channels per accumulator pass. Measured on
// lavapipe: one channel for 3x3 (9 taps per pass), four for 1x1; more
// channels per pass spill more than they save.
func convCB(kh, kw int) int {
	if kh*kw >= 4 {
		return 1
	}
	return 4
}

// im2colMaxBytes caps the im2col scratch of conv2dGEMM; bigger convs run
// the direct kernel.
const im2colMaxBytes = 64 << 20

// conv2dGEMM runs a conv as im2col + matmul_reg where that beats conv2d_reg
// on lavapipe (BenchmarkConv2d): strided convs (320->320 3x3 stride 2 at
// 64²: 18 -> 37 GFLOP/s) and maps narrower than conv2d_reg's 16-pixel row
// tiles (the UNet's 1280->1280 3x3 convs at 8x8: 21 -> 32 GFLOP/s). 1x1
// convs stay direct: the im2col transpose ate the matmul's gain (27 vs 28
// GFLOP/s at 512->512, 64²) and costs a scratch buffer. The product is
// col [pix, C*KH*KW] · wᵀ stored transposed, [O, pix] per image, so its
// operands have the same texel formats as a Linear's (F32 activations, F16
// or F32 weights) and reuse that compiled kernel. It returns false, having
// recorded nothing, for the shapes it leaves to the direct kernel.
func (d *Device) conv2dGEMM(c *opCtx, wdt engine.DType, n, kh, kw int, p engine.Conv2dParams, pp kernels.Conv2dParams) (bool, error) {
	ch, o, pix := int(pp.C), int(pp.O), int(pp.Oh*pp.Ow)
	k := ch * kh * kw
	if o < 16 || ch < 4 || k%4 != 0 {
		return false, nil
	}
	if !wdt.Quantized() && ((kh == 1 && kw == 1) || (int(pp.Ow) >= regTP && p.Stride == 1)) {
		return false, nil // the direct kernel is faster (quantized weights have none)
	}
	bytes := int64(n) * int64(pix) * int64(k) * 4
	if bytes > im2colMaxBytes || (d.bindLimit() > 0 && bytes > d.bindLimit()) ||
		!d.texelBindsFit(4, binding{size: bytes, dtype: engine.F32}, c.binds[1]) {
		return false, nil // matmul_reg could not read col or w
	}
	col, err := d.Alloc(c.op+".im2col", engine.F32, engine.Shape{n, pix, k})
	if err != nil {
		var be *BudgetError
		if errors.As(err, &be) {
			return false, nil
		}
		return false, err
	}
	defer d.Free(col)
	defer c.release()
	xb, wb, bb, yb := c.binds[0], c.binds[1], c.binds[2], c.binds[3]
	colb, _, err := c.rawBinding(col, true)
	if err != nil {
		return true, err
	}
	spec := []uint32{wgReg, uint32(kh), uint32(kw), uint32(p.Stride), uint32(p.Pad)}
	if err := d.rec.dispatch(kernels.Im2col, spec, unsafe.Pointer(&pp), unsafe.Sizeof(pp), d.groupGrid((pix*ch+wgReg-1)/wgReg, n),
		[]binding{xb, colb}); err != nil {
		return true, d.fail(fmt.Errorf("vk: %s: %w", c.op, err))
	}
	colb.write = false
	mp := kernels.MatMulParams{M: uint32(pix), N: uint32(o), K: uint32(k), StrideA: uint32(pix * k), StrideB: 0,
		StrideC: uint32(o * pix), TransB: 1, HasBias: pp.HasBias, Alpha: 1, TransC: 1}
	mc := &opCtx{d: d, op: c.op, binds: []binding{colb, wb, bb, yb}, post: c.post}
	return true, d.matmul(mc, wdt, n, pix, o, k, true, mp)
}
