package enginetest

import (
	"fmt"
	"testing"

	"github.com/zimage/zimage/engine"
)

// Linear runs Linear on awkward and SD shapes with F32 and F16 weights.
func Linear(t *testing.T, b engine.Backend, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		batch, rows, k, n int
		bias, big         bool
	}{
		{1, 1, 1, 1, true, false},
		{1, 3, 17, 5, true, false},
		{2, 5, 33, 31, false, false},
		{1, 77, 32, 128, true, false},    // tiny CLIP MLP
		{2, 17, 64, 257, true, false},    // N not a multiple of any tile
		{1, 300, 256, 300, true, false},  // sampled reference
		{1, 77, 1024, 4096, true, true},  // OpenCLIP-H MLP up
		{1, 4096, 320, 1280, true, true}, // SD attention/FF projection at 64x64
	} {
		for _, wdt := range []engine.DType{engine.F32, engine.F16} {
			name := fmt.Sprintf("x%dx%dx%d_w%dx%d_%v_bias=%v", tc.batch, tc.rows, tc.k, tc.n, tc.k, wdt, tc.bias)
			t.Run(name, func(t *testing.T) {
				if tc.big {
					c.big(t)
				}
				CheckLinear(t, b, tc.batch, tc.rows, tc.k, tc.n, tc.bias, wdt)
			})
		}
	}
}

// CheckLinear checks Linear on x [batch, rows, k] and w [n, k] of dtype wdt,
// with a bias [n] when bias is set, against the reference. Non-positive
// sizes skip the test (for fuzzing).
func CheckLinear(t testing.TB, b engine.Backend, batch, rows, k, n int, bias bool, wdt engine.DType) {
	t.Helper()
	if batch < 1 || rows < 1 || k < 1 || n < 1 {
		t.Skipf("linear: non-positive size batch %d rows %d k %d n %d", batch, rows, k, n)
	}
	name := fmt.Sprintf("linear x[%d %d %d] w %v[%d %d] bias=%v", batch, rows, k, wdt, n, k, bias)
	e := newEnv(t, b, name, batch*rows*k*n <= fullMACs)
	defer e.close()
	x := e.input("linear.x", engine.F32, engine.Shape{batch, rows, k}, 1)
	var w *operand
	if wdt.Quantized() {
		w = e.inputBlocks("linear.w", wdt, engine.Shape{n, k}, 1) // random blocks; k whole blocks
	} else {
		w = e.input("linear.w", wdt, engine.Shape{n, k}, 1)
	}
	var bo *operand
	var bh []float32
	if bias {
		bo = e.input("linear.bias", engine.F32, engine.Shape{n}, 1)
		bh = bo.host
	}
	d := e.output("linear.dst", engine.F32, engine.Shape{batch, rows, n})
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.Linear(tt(d), tt(x), tt(w), tt(bo))
	})
	if e.r != nil {
		e.checkFull(name, d, tolFor(wdt))
		return
	}
	idx := e.sampleIdx(batch*rows*n, samples)
	want := make([]float32, len(idx))
	for i, j := range idx {
		want[i] = linearAt(x.host, w.host, bh, k, n, j)
	}
	checkClose(t, name, e.got(d), want, idx, tolFor(wdt))
}

// MatMul runs batched MatMul, plain and with b transposed, with several
// alphas (F32 operands: MatMul multiplies activations).
func MatMul(t *testing.T, b engine.Backend, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		batch, m, k, n int
		alpha          float32
		big            bool
	}{
		{1, 1, 1, 1, 1, false},
		{2, 3, 17, 5, 0.125, false},
		{3, 33, 64, 31, 1, false},
		{8, 77, 40, 77, 0.158113883, false}, // attention scores, 8 heads of 40
		{1, 129, 130, 131, -2, false},
		{2, 256, 320, 256, 1, false}, // sampled reference
		{1, 4096, 320, 4096, 1, true},
	} {
		for _, transB := range []bool{false, true} {
			name := fmt.Sprintf("%dx%dx%dx%d_transB=%v_alpha=%g", tc.batch, tc.m, tc.k, tc.n, transB, tc.alpha)
			t.Run(name, func(t *testing.T) {
				if tc.big {
					c.big(t)
				}
				CheckMatMul(t, b, tc.batch, tc.m, tc.k, tc.n, transB, tc.alpha)
			})
		}
	}
}

// CheckMatMul checks alpha · a [batch, m, k] · b [batch, k, n] (b stored
// [batch, n, k] when transB) against the reference. Non-positive sizes skip.
func CheckMatMul(t testing.TB, b engine.Backend, batch, m, k, n int, transB bool, alpha float32) {
	t.Helper()
	if batch < 1 || m < 1 || k < 1 || n < 1 {
		t.Skipf("matmul: non-positive size batch %d m %d k %d n %d", batch, m, k, n)
	}
	name := fmt.Sprintf("matmul [%d %d %d]x[%d %d] transB=%v alpha=%g", batch, m, k, k, n, transB, alpha)
	e := newEnv(t, b, name, batch*m*k*n <= fullMACs)
	defer e.close()
	a := e.input("matmul.a", engine.F32, engine.Shape{batch, m, k}, 1)
	bs := engine.Shape{batch, k, n}
	if transB {
		bs = engine.Shape{batch, n, k}
	}
	bm := e.input("matmul.b", engine.F32, bs, 1)
	d := e.output("matmul.dst", engine.F32, engine.Shape{batch, m, n})
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.MatMul(tt(d), tt(a), tt(bm), transB, alpha)
	})
	if e.r != nil {
		e.checkFull(name, d, TolF32)
		return
	}
	idx := e.sampleIdx(batch*m*n, samples)
	want := make([]float32, len(idx))
	for i, j := range idx {
		want[i] = matmulAt(a.host, bm.host, m, k, n, transB, alpha, j)
	}
	checkClose(t, name, e.got(d), want, idx, TolF32)
}

// Conv2d runs square-kernel convolutions: 1x1 and 3x3, stride 1 and 2,
// with and without padding and bias, with F32 and F16 weights.
func Conv2d(t *testing.T, b engine.Backend, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		n, c, h, w, o, k, stride, pad int
		bias, big                     bool
	}{
		{1, 1, 1, 1, 1, 1, 1, 0, true, false},
		{1, 3, 17, 17, 5, 3, 1, 1, true, false},
		{2, 4, 9, 7, 3, 3, 2, 1, true, false}, // odd sizes, stride 2
		{1, 5, 8, 8, 7, 1, 1, 0, false, false},
		{1, 8, 16, 16, 8, 3, 2, 0, true, false}, // VAE encoder downsampler: padded by hand, then pad 0
		{1, 3, 5, 6, 2, 2, 1, 1, false, false},  // even kernel
		{1, 16, 33, 31, 17, 3, 1, 1, true, false},
		{2, 4, 12, 20, 32, 3, 1, 1, true, false},   // tiny VAE/UNet conv_in
		{1, 64, 32, 32, 64, 3, 1, 1, true, false},  // sampled reference
		{1, 512, 64, 64, 512, 3, 1, 1, true, true}, // VAE decoder mid block at 512x512
		{1, 320, 64, 64, 320, 3, 2, 1, true, true}, // UNet downsampler
		{1, 640, 32, 32, 320, 1, 1, 0, true, true}, // UNet skip 1x1
		// Shapes a backend may run as matmuls: narrow maps, strides, 1x1,
		// batched (the weights shared by every image).
		{2, 8, 6, 7, 16, 3, 1, 1, true, false},
		{2, 12, 9, 9, 20, 3, 2, 1, true, false},
		{2, 16, 6, 6, 24, 1, 1, 0, true, false},
		{1, 1280, 8, 8, 1280, 3, 1, 1, true, true}, // UNet's innermost resnets
	} {
		for _, wdt := range []engine.DType{engine.F32, engine.F16} {
			name := fmt.Sprintf("x%dx%dx%dx%d_w%dx%dx%dx%d_s%d_p%d_%v_bias=%v", tc.n, tc.c, tc.h, tc.w, tc.o, tc.c, tc.k, tc.k, tc.stride, tc.pad, wdt, tc.bias)
			t.Run(name, func(t *testing.T) {
				if tc.big {
					c.big(t)
				}
				checkConv2d(t, b, tc.n, tc.c, tc.h, tc.w, tc.o, tc.k, tc.stride, tc.pad, wdt, tc.bias)
			})
		}
	}
}

// CheckConv2d checks Conv2d of x [n, c, h, w] with a k×k kernel of dtype
// wdt, o output channels and a bias, against the reference. Non-positive
// sizes, stride < 1 or pad < 0 skip the test (for fuzzing); a kernel larger
// than the padded input must make the backend return an error.
func CheckConv2d(t testing.TB, b engine.Backend, n, c, h, w, o, k, stride, pad int, wdt engine.DType) {
	t.Helper()
	checkConv2d(t, b, n, c, h, w, o, k, stride, pad, wdt, true)
}

func checkConv2d(t testing.TB, b engine.Backend, n, c, h, w, o, k, stride, pad int, wdt engine.DType, bias bool) {
	t.Helper()
	if n < 1 || c < 1 || h < 1 || w < 1 || o < 1 || k < 1 || stride < 1 || pad < 0 {
		t.Skipf("conv2d: invalid parameters n %d c %d h %d w %d o %d k %d stride %d pad %d", n, c, h, w, o, k, stride, pad)
	}
	g := convGeom{n: n, c: c, h: h, w: w, o: o, kh: k, kw: k, stride: stride, pad: pad,
		oh: (h+2*pad-k)/stride + 1, ow: (w+2*pad-k)/stride + 1}
	name := fmt.Sprintf("conv2d x[%d %d %d %d] w %v[%d %d %d %d] stride %d pad %d bias=%v", n, c, h, w, wdt, o, c, k, k, stride, pad, bias)
	empty := h+2*pad < k || w+2*pad < k
	macs := n * o * max(g.oh, 1) * max(g.ow, 1) * c * k * k
	e := newEnv(t, b, name, !empty && macs <= fullMACs)
	defer e.close()
	x := e.input("conv2d.x", engine.F32, engine.Shape{n, c, h, w}, 1)
	wt := e.input("conv2d.w", wdt, engine.Shape{o, c, k, k}, 1)
	var bo *operand
	var bh []float32
	if bias {
		bo = e.input("conv2d.bias", engine.F32, engine.Shape{o}, 1)
		bh = bo.host
	}
	p := engine.Conv2dParams{Stride: stride, Pad: pad}
	if empty {
		d := e.output("conv2d.dst", engine.F32, engine.Shape{n, o, 1, 1})
		if err := call(t, name, func() error { return b.Conv2d(d.bt, x.bt, wt.bt, tensorOf(bo, false), p) }); err == nil {
			t.Fatalf("%s: a kernel larger than the padded input returned no error", name)
		}
		return
	}
	d := e.output("conv2d.dst", engine.F32, engine.Shape{n, o, g.oh, g.ow})
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.Conv2d(tt(d), tt(x), tt(wt), tt(bo), p)
	})
	if e.r != nil {
		e.checkFull(name, d, tolFor(wdt))
		return
	}
	idx := e.sampleIdx(n*o*g.oh*g.ow, samples)
	want := make([]float32, len(idx))
	for i, j := range idx {
		want[i] = convAt(x.host, wt.host, bh, g, j)
	}
	checkClose(t, name, e.got(d), want, idx, tolFor(wdt))
}
