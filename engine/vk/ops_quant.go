package vk

import (
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// Block-quantized weights (engine/quant.go) live on the device as ggml's
// blocks, unchanged, bound as 32-bit words: R32UI texels for the
// register-blocked matmul and the Winograd weight transform, uint storage
// buffers for the GPU tiles and the dequantizing copy. Each kernel decodes
// in registers (kernels/glsl/quant.glsl); no op makes a 16-bit copy of the
// weights. Linear runs matmul_reg_q* (CPU tuning) or matmul_tile_q*;
// Conv2d runs Winograd with a quantized weight transform, im2col with
// matmul_reg_q* (1x1 convs too) or conv2d_tile_q* (see conv2dQuant).

// quantKernels are one block type's kernels.
type quantKernels struct {
	reg, tile, conv, wino, toF32, toF16 *kernels.Kernel
}

var quantTable = map[engine.DType]quantKernels{
	engine.Q4_0: {kernels.MatMulRegQ40, kernels.MatMulTileQ40, kernels.Conv2dTileQ40, kernels.WinogradWeightsQ40, kernels.DequantQ40F32, kernels.DequantQ40F16},
	engine.Q4_1: {kernels.MatMulRegQ41, kernels.MatMulTileQ41, kernels.Conv2dTileQ41, kernels.WinogradWeightsQ41, kernels.DequantQ41F32, kernels.DequantQ41F16},
	engine.Q5_0: {kernels.MatMulRegQ50, kernels.MatMulTileQ50, kernels.Conv2dTileQ50, kernels.WinogradWeightsQ50, kernels.DequantQ50F32, kernels.DequantQ50F16},
	engine.Q5_1: {kernels.MatMulRegQ51, kernels.MatMulTileQ51, kernels.Conv2dTileQ51, kernels.WinogradWeightsQ51, kernels.DequantQ51F32, kernels.DequantQ51F16},
	engine.Q8_0: {kernels.MatMulRegQ80, kernels.MatMulTileQ80, kernels.Conv2dTileQ80, kernels.WinogradWeightsQ80, kernels.DequantQ80F32, kernels.DequantQ80F16},
	engine.Q2_K: {kernels.MatMulRegQ2K, kernels.MatMulTileQ2K, kernels.Conv2dTileQ2K, kernels.WinogradWeightsQ2K, kernels.DequantQ2KF32, kernels.DequantQ2KF16},
	engine.Q3_K: {kernels.MatMulRegQ3K, kernels.MatMulTileQ3K, kernels.Conv2dTileQ3K, kernels.WinogradWeightsQ3K, kernels.DequantQ3KF32, kernels.DequantQ3KF16},
	engine.Q4_K: {kernels.MatMulRegQ4K, kernels.MatMulTileQ4K, kernels.Conv2dTileQ4K, kernels.WinogradWeightsQ4K, kernels.DequantQ4KF32, kernels.DequantQ4KF16},
	engine.Q5_K: {kernels.MatMulRegQ5K, kernels.MatMulTileQ5K, kernels.Conv2dTileQ5K, kernels.WinogradWeightsQ5K, kernels.DequantQ5KF32, kernels.DequantQ5KF16},
	engine.Q6_K: {kernels.MatMulRegQ6K, kernels.MatMulTileQ6K, kernels.Conv2dTileQ6K, kernels.WinogradWeightsQ6K, kernels.DequantQ6KF32, kernels.DequantQ6KF16},
}

// weightDTypes are the dtypes weighted ops take for their weights.
var weightDTypes = append([]engine.DType{engine.F32, engine.F16}, engine.BlockTypes...)

// SupportsBlocks reports whether the device runs Linear, Conv2d and Copy on
// weights of block type dt: every block type the engine defines.
func (d *Device) SupportsBlocks(dt engine.DType) bool {
	_, ok := quantTable[dt]
	return ok
}

var _ engine.BlockSupporter = (*Device)(nil)

// quantBindBytes is the size a block-quantized tensor binds and allocates:
// its blocks and at least one more 32-bit word, which the kernels'
// unaligned reads of the last block may fetch (and discard), rounded up to
// whole 16-byte texels.
func quantBindBytes(t *engine.Tensor) int64 {
	return alignUp(t.Bytes()+4, 16)
}

// copyQuant records dst (F32 or F16, same shape) = the decoded elements of
// the block-quantized x.
func (d *Device) copyQuant(dst, x *engine.Tensor) error {
	c := d.newOp("copy " + x.Name)
	c.dtype(dst, engine.F32, engine.F16)
	if c.err != nil {
		return c.err
	}
	if !d.fits(dst, x) {
		// Blocks are independent: run whole blocks at a time.
		bs := x.DType.BlockSize()
		if n := x.NumElem(); n%bs == 0 {
			flatX, err := x.Reshape(n/bs, bs)
			if err != nil {
				return err
			}
			flatD, err := dst.Reshape(n/bs, bs)
			if err != nil {
				return err
			}
			if ok, err := d.splitLeading([]*engine.Tensor{flatD, flatX}, func(v []*engine.Tensor) error {
				return d.copyQuant(v[0], v[1])
			}); ok {
				return err
			}
		}
	}
	c.in(x)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	qk := quantTable[x.DType]
	k := qk.toF32
	if dst.DType == engine.F16 {
		k = qk.toF16
	}
	n := x.NumElem()
	p := kernels.DequantParams{N: uint32(n)}
	return c.run(k, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem))
}

// conv2dQuant runs Conv2d with block-quantized weights (bound in c.binds,
// rows of C*KH*KW whole blocks): on the CPU tuning through Winograd (3x3
// stride 1, a quantized weight transform) or im2col + matmul_reg_q (every
// shape whose scratch fits, 1x1 convs included), else the GPU tile kernel,
// which decodes each weight as it stages it and takes any shape.
func (d *Device) conv2dQuant(c *opCtx, wdt engine.DType, n, ch, h, wd, o, kh, kw, oh, ow int, p engine.Conv2dParams, hasBias uint32) error {
	pp := kernels.Conv2dParams{C: uint32(ch), H: uint32(h), W: uint32(wd), O: uint32(o),
		Oh: uint32(oh), Ow: uint32(ow), HasBias: hasBias}
	if d.tuning == TuningCPU && d.texelBindsFit(1, c.binds[0], c.binds[1]) {
		if kh == 3 && kw == 3 && p.Stride == 1 && d.opts.Conv != ConvDirect &&
			(d.opts.Conv == ConvWinograd || d.winogradAuto(ch, o, oh, ow)) {
			if ok, err := d.conv2dWinograd(c, wdt, n, ch, h, wd, o, oh, ow, p.Pad, hasBias); ok || err != nil {
				return err
			}
		}
		if ok, err := d.conv2dGEMM(c, wdt, n, kh, kw, p, pp); ok || err != nil {
			return err
		}
	}
	spec := []uint32{256, uint32(kh), uint32(kw), uint32(p.Stride), uint32(p.Pad), 1}
	groups := [3]uint32{uint32((oh*ow + tileMN - 1) / tileMN), uint32((o + tileMN - 1) / tileMN), uint32(n)}
	return c.run(quantTable[wdt].conv, spec, unsafe.Pointer(&pp), unsafe.Sizeof(pp), groups)
}

// quantMatMulKernel picks the matmul for a block-quantized B (stored
// transposed): matmul_reg_q* where the device is tuned for registers and
// both operands read as texels, matmul_tile_q* otherwise.
func (d *Device) quantMatMulKernel(wdt engine.DType, a, b binding) (k *kernels.Kernel, reg bool, err error) {
	qk, ok := quantTable[wdt]
	if !ok {
		return nil, false, fmt.Errorf("vk: no kernels for %v weights", wdt)
	}
	comps := 1
	if qk.reg.QuadTexels {
		comps = 4
	}
	if d.tuning == TuningCPU && d.texelBindsFit(4, a) && d.texelBindsFit(comps, b) {
		return qk.reg, true, nil
	}
	return qk.tile, false, nil
}
