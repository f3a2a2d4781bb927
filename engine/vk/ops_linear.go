package vk

import (
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// Register-blocked matmul tile (matmul_reg.comp's TM x TN) and the shared
// memory tile (matmul_tile.comp's 64x64, 16x16 invocations).
const (
	regTM, regTN = 16, 16
	// regTMBig is matmul_reg_nt_m32's taller tile: 10-15% faster where M
	// is large (4096x4096x320: 46 vs 40 GFLOP/s on lavapipe), wasteful on
	// the short matrices of Winograd's small maps. Its cold LLVM compile on
	// lavapipe takes 3.9 s per texel-format combination (once: Mesa caches
	// it on disk), against 1.3 s for the 16-row tile (BenchmarkFirstDispatch).
	regTMBig, regBigMinM = 32, 512
	tileMN               = 64
)

// matmul records C[z] = alpha*A[z]·B[z] (+bias) for z < batch, choosing
// the kernel family from the device tuning and the shape.
func (d *Device) matmul(c *opCtx, wdt engine.DType, batch, m, n, k int, transB bool, p kernels.MatMulParams) error {
	if wdt.Quantized() {
		return d.matmulQuant(c, wdt, batch, m, n, p)
	}
	vec := k%4 == 0 && (transB || n%4 == 0)
	var kern *kernels.Kernel
	var groups [3]uint32
	var spec []uint32
	reg := false
	switch {
	case d.tuning == TuningGPU || !d.texelBindsFit(4, c.binds[0], c.binds[1]):
		kern = pickW(wdt, kernels.MatMulTileF32, kernels.MatMulTileF16)
		groups = [3]uint32{uint32((n + tileMN - 1) / tileMN), uint32((m + tileMN - 1) / tileMN), uint32(batch)}
	case vec:
		reg = true
		tm := regTM
		switch {
		case !transB:
			kern = kernels.MatMulRegNn
		case m >= regBigMinM:
			kern, tm = kernels.MatMulRegNtM32, regTMBig
		default:
			kern = kernels.MatMulRegNt
		}
		tiles := ((m + tm - 1) / tm) * ((n + regTN - 1) / regTN)
		// One SIMD group (8 lanes) per workgroup: the few, long tiles of
		// narrow products (M=64, K=11520 in the UNet's 8x8 convs) then
		// spread evenly over the CPU threads (1280->1280 at 8x8: 70 -> 59
		// ms); big products run as fast as with 64.
		const wg = 8
		groups = d.groupGrid((tiles+wg-1)/wg, batch)
		spec = []uint32{wg}
	default:
		kern = pickW(wdt, kernels.MatMulScalarF32, kernels.MatMulScalarF16)
		tiles := ((m + 3) / 4) * ((n + 3) / 4)
		groups = d.groupGrid((tiles+wgReg-1)/wgReg, batch)
		spec = []uint32{wgReg}
	}
	if p.TransC != 0 && !reg {
		// Only matmul_reg stores C transposed; callers check texelBindsFit.
		return fmt.Errorf("vk: %s: a transposed product needs matmul_reg, not %s", c.op, kern.Name)
	}
	return c.run(kern, spec, unsafe.Pointer(&p), unsafe.Sizeof(p), groups)
}

// matmulQuant records the product with a block-quantized B stored
// transposed (rows of K whole blocks; callers check): matmul_reg_q* in
// tiles of regTM x regTN, one SIMD group per workgroup as for F16 weights,
// or the shared-memory tiles.
func (d *Device) matmulQuant(c *opCtx, wdt engine.DType, batch, m, n int, p kernels.MatMulParams) error {
	kern, reg, err := d.quantMatMulKernel(wdt, c.binds[0], c.binds[1])
	if err != nil {
		c.fail(err)
		return err
	}
	if p.TransB == 0 {
		return fmt.Errorf("vk: %s: a block-quantized b must be stored transposed", c.op)
	}
	if p.TransC != 0 && !reg {
		return fmt.Errorf("vk: %s: a transposed product needs matmul_reg, not %s", c.op, kern.Name)
	}
	if !reg {
		groups := [3]uint32{uint32((n + tileMN - 1) / tileMN), uint32((m + tileMN - 1) / tileMN), uint32(batch)}
		return c.run(kern, nil, unsafe.Pointer(&p), unsafe.Sizeof(p), groups)
	}
	tiles := ((m + regTM - 1) / regTM) * ((n + regTN - 1) / regTN)
	const wg = 8
	return c.run(kern, []uint32{wg}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.groupGrid((tiles+wg-1)/wg, batch))
}

func pickW(dt engine.DType, f32, f16 *kernels.Kernel) *kernels.Kernel {
	if dt == engine.F16 {
		return f16
	}
	return f32
}

// Linear: x [..., K], w [N, K], bias [N] or nil -> dst [..., N].
func (d *Device) Linear(dst, x, w, bias *engine.Tensor) error {
	if dst == nil || x == nil || w == nil {
		return fmt.Errorf("vk: linear: nil tensor")
	}
	c := d.newOp("linear " + w.Name)
	s, err := engine.LinearShape(x, w)
	if err != nil {
		return err
	}
	c.check(engine.WantShape(c.op, dst, s...))
	n, k := w.Shape[0], w.Shape[1]
	if c.err == nil && !d.fits(x, dst) {
		// Rows of x are independent: run them in pieces (w and the bias
		// are bound whole by every piece).
		if ok, err := d.splitLeading([]*engine.Tensor{flat2(dst, n), flat2(x, k)}, func(v []*engine.Tensor) error {
			return d.Linear(v[0], v[1], w, bias)
		}); ok {
			return err
		}
	}
	hasBias := c.weighted(dst, x, w, bias, n, k)
	if c.err != nil {
		return c.err
	}
	m := x.NumElem() / k
	p := kernels.MatMulParams{M: uint32(m), N: uint32(n), K: uint32(k), StrideA: uint32(m * k), StrideC: uint32(m * n),
		TransB: 1, HasBias: hasBias, Alpha: 1}
	return d.matmul(c, w.DType, 1, m, n, k, true, p)
}

// MatMul: a [B, M, K], b [B, K, N] (transB: [B, N, K]) -> dst [B, M, N],
// dst = alpha * a·b.
func (d *Device) MatMul(dst, a, b *engine.Tensor, transB bool, alpha float32) error {
	if dst == nil || a == nil || b == nil {
		return fmt.Errorf("vk: matmul: nil tensor")
	}
	c := d.newOp("matmul " + a.Name + " x " + b.Name)
	s, err := engine.MatMulShape(a, b, transB)
	if err != nil {
		return err
	}
	c.check(engine.WantShape(c.op, dst, s...))
	c.dtype(a, engine.F32)
	c.dtype(b, engine.F32, engine.F16)
	c.dtype(dst, engine.F32)
	if c.err != nil {
		return c.err
	}
	if ok, err := d.matmulPieces(dst, a, b, transB, alpha); ok {
		return err
	}
	// The register-blocked kernel is far faster with both operands K-major
	// (dot products touch each spilled accumulator once per 4 k instead
	// of 4 times): transpose a plain F32 b first when the product is big
	// enough to repay it.
	if !transB && d.tuning == TuningCPU && b.DType == engine.F32 && a.Shape[1] >= 32 && a.Shape[2]%4 == 0 {
		bt, err := d.Alloc(b.Name+".T", engine.F32, engine.Shape{b.Shape[0], b.Shape[2], b.Shape[1]})
		if err != nil {
			return err
		}
		if err := d.Permute(bt, b, []int{0, 2, 1}); err != nil {
			d.Free(bt)
			return err
		}
		c.temps = append(c.temps, bt)
		b, transB = bt, true
	}
	c.in(a)
	c.in(b)
	c.opt(nil)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	batch, m, k, n := a.Shape[0], a.Shape[1], a.Shape[2], s[2]
	p := kernels.MatMulParams{M: uint32(m), N: uint32(n), K: uint32(k), StrideA: uint32(m * k),
		StrideB: uint32(k * n), StrideC: uint32(m * n), Alpha: alpha}
	if transB {
		p.TransB = 1
	}
	return d.matmul(c, b.DType, batch, m, n, k, transB, p)
}

// matmulPieces runs a MatMul whose operands do not all bind whole in
// pieces of batches, or of the rows of a and dst of one batch (each row
// reads all of b); false when neither splits.
func (d *Device) matmulPieces(dst, a, b *engine.Tensor, transB bool, alpha float32) (bool, error) {
	if d.fits(dst, a, b) {
		return false, nil
	}
	f := func(v []*engine.Tensor) error { return d.MatMul(v[0], v[1], v[2], transB, alpha) }
	if a.Shape[0] > 1 {
		return d.splitLeading([]*engine.Tensor{dst, a, b}, f)
	}
	if !d.fits(b) {
		return false, nil
	}
	m, k, n := a.Shape[1], a.Shape[2], dst.Shape[2]
	return d.split(m, []*engine.Tensor{dst, a, b}, []int64{int64(4 * n), int64(4 * k), 0},
		[][]int{{1, -1, n}, {1, -1, k}, nil}, f)
}
