package vk

import (
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// conv2d_reg.comp's tile: TO output channels x TP output pixels.
const regTO, regTP = 16, 16

// Conv2d: x [N, C, H, W], w [O, C, KH, KW], bias [O] or nil ->
// dst [N, O, OH, OW], as an implicit GEMM (no im2col buffer), or for 3x3
// stride-1 convs through Winograd (ops_winograd.go, Options.Conv).
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
	hasBias := c.weighted(dst, x, w, bias, o)
	if c.err != nil {
		return c.err
	}
	n, ch, h, wd := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	kh, kw := w.Shape[2], w.Shape[3]
	oh, ow := s[2], s[3]
	if kh == 3 && kw == 3 && p.Stride == 1 && d.opts.Conv != ConvDirect && d.info.TexelBuffers &&
		(d.opts.Conv == ConvWinograd || d.winogradAuto(ch, o, oh, ow)) {
		if ok, err := d.conv2dWinograd(c, w.DType, n, ch, h, wd, o, oh, ow, p.Pad, hasBias); ok || err != nil {
			return err
		}
	}
	pp := kernels.Conv2dParams{C: uint32(ch), H: uint32(h), W: uint32(wd), O: uint32(o),
		Oh: uint32(oh), Ow: uint32(ow), HasBias: hasBias}
	var kern *kernels.Kernel
	var groups [3]uint32
	local := uint32(wgReg)
	if d.tuning == TuningGPU || !d.info.TexelBuffers {
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
