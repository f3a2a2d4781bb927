package enginetest

import (
	"fmt"
	"math"
	"testing"

	"github.com/zimage/zimage/engine"
)

// Unary runs every activation, into a new tensor and in place. Inputs span
// [-6, 6) so the tails of erf, tanh and the sigmoids are exercised.
func Unary(t *testing.T, b engine.Backend, opts ...Option) {
	for _, op := range []engine.UnaryOp{engine.SiLU, engine.GELU, engine.QuickGELU, engine.GELUTanh, engine.Tanh, engine.ReLU} {
		for _, shape := range []engine.Shape{{1}, {17}, {3, 5, 7}, {2, 77, 3072}, {2, 1280, 8, 8}} {
			for _, inPlace := range []bool{false, true} {
				t.Run(fmt.Sprintf("%v_%v_inplace=%v", op, shape, inPlace), func(t *testing.T) {
					checkUnary(t, b, op, shape, inPlace)
				})
			}
		}
	}
	t.Run("relu_nan", func(t *testing.T) { checkReLUSpecials(t, b) })
}

// checkReLUSpecials checks that ReLU passes NaN through and maps -Inf to 0
// (torch.relu does both; a max()-based kernel may swallow the NaN and hide
// a broken network), on the scalar (5 values) and vec4 (4 values) paths.
func checkReLUSpecials(t *testing.T, b engine.Backend) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, in := range [][]float32{{nan, -1, 2, -inf}, {nan, -1, 2, -inf, inf}} {
		x, err := b.Alloc("relu.x", engine.F32, engine.Shape{len(in)})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Free(x)
		if err := b.Write(x, in); err != nil {
			t.Fatal(err)
		}
		if err := b.Unary(x, x, engine.ReLU); err != nil {
			t.Fatal(err)
		}
		got, err := b.Read(x)
		if err != nil {
			t.Fatal(err)
		}
		want := []float32{nan, 0, 2, 0, inf}[:len(in)]
		for i := range want {
			if same := got[i] == want[i] || (math.IsNaN(float64(got[i])) && math.IsNaN(float64(want[i]))); !same {
				t.Errorf("relu(%v) = %v, want %v", in[i], got[i], want[i])
			}
		}
	}
}

func checkUnary(t testing.TB, b engine.Backend, op engine.UnaryOp, shape engine.Shape, inPlace bool) {
	t.Helper()
	name := fmt.Sprintf("unary %v %v in place=%v", op, shape, inPlace)
	e := newEnv(t, b, name, true)
	defer e.close()
	x := e.input("unary.x", engine.F32, shape, 6)
	d := x
	if !inPlace {
		d = e.output("unary.dst", engine.F32, shape)
	}
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error { return be.Unary(tt(d), tt(x), op) })
	checkCloseAbs(t, name, e.got(d), e.want(d), nil, TolF32, actAbs)
}

// actAbs bounds each activation output's error relative to 1+|want|:
// float32 exp/tanh and a polynomial erf (GLSL has none; Abramowitz-Stegun
// 7.1.26 errs by 1.5e-7) stay far below it.
const actAbs = 1e-5

// GEGLU runs the gated GELU of SD's feed-forward blocks.
func GEGLU(t *testing.T, b engine.Backend, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		shape engine.Shape
		big   bool
	}{
		{engine.Shape{1, 2}, false},
		{engine.Shape{3, 34}, false},
		{engine.Shape{2, 77, 2 * 40}, false},
		{engine.Shape{1, 256, 2 * 640}, false},
		{engine.Shape{1, 4096, 2 * 1280}, true}, // SD UNet at 512x512, 320 channels x 4
	} {
		t.Run(tc.shape.String(), func(t *testing.T) {
			if tc.big {
				c.big(t)
			}
			checkGEGLU(t, b, tc.shape)
		})
	}
}

func checkGEGLU(t testing.TB, b engine.Backend, shape engine.Shape) {
	t.Helper()
	name := "geglu " + shape.String()
	e := newEnv(t, b, name, true)
	defer e.close()
	x := e.input("geglu.x", engine.F32, shape, 4)
	out := shape.Clone()
	out[len(out)-1] /= 2
	d := e.output("geglu.dst", engine.F32, out)
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error { return be.GEGLU(tt(d), tt(x)) })
	checkCloseAbs(t, name, e.got(d), e.want(d), nil, TolF32, actAbs)
}

// Binary runs add, sub and mul with numpy broadcasting in both operand
// orders, into a new tensor and in place into whichever operand has the
// broadcast shape.
func Binary(t *testing.T, b engine.Backend, opts ...Option) {
	for _, pair := range [][2]engine.Shape{
		{{1}, {1}},
		{{17}, {1}},
		{{3, 17}, {17}},
		{{4, 1}, {1, 5}},
		{{2, 3, 4, 5}, {3, 1, 1}},
		{{2, 1, 4, 1}, {1, 3, 1, 5}},
		{{2, 77, 768}, {77, 768}},
		{{1, 320, 64, 64}, {1, 320, 1, 1}}, // time embedding added to a UNet feature map
		{{2, 4, 64, 64}, {2, 4, 64, 64}},
	} {
		for _, swap := range []bool{false, true} {
			as, bs := pair[0], pair[1]
			if swap {
				as, bs = bs, as
			}
			out, err := engine.BroadcastShape(as, bs)
			if err != nil {
				t.Fatal(err)
			}
			for _, op := range []engine.BinaryOp{engine.Add, engine.Sub, engine.Mul} {
				// dst: 0 = a new tensor, 1 = a itself, 2 = b itself.
				for dst := 0; dst < 3; dst++ {
					if dst == 1 && !as.Equal(out) || dst == 2 && !bs.Equal(out) {
						continue
					}
					t.Run(fmt.Sprintf("%v_%v_%v_dst%d", as, op, bs, dst), func(t *testing.T) {
						checkBinary(t, b, as, bs, out, op, dst)
					})
				}
			}
		}
	}
}

// checkBinary checks a op b into a new tensor (dst 0), into a (1) or b (2).
func checkBinary(t testing.TB, b engine.Backend, as, bs, out engine.Shape, op engine.BinaryOp, dst int) {
	t.Helper()
	name := fmt.Sprintf("binary %v %v %v dst %d", as, op, bs, dst)
	e := newEnv(t, b, name, true)
	defer e.close()
	a := e.input("binary.a", engine.F32, as, 2)
	bo := e.input("binary.b", engine.F32, bs, 2)
	d := [3]*operand{nil, a, bo}[dst]
	if d == nil {
		d = e.output("binary.dst", engine.F32, out)
	}
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.Binary(tt(d), tt(a), tt(bo), op)
	})
	e.checkFull(name, d, TolF32)
}

// Scale runs dst = alpha*x + beta, into a new tensor and in place.
func Scale(t *testing.T, b engine.Backend, opts ...Option) {
	for _, shape := range []engine.Shape{{1}, {17}, {3, 5, 7}, {1, 4, 64, 64}} {
		for _, ab := range [][2]float32{{0.18215, 0}, {2, -1}, {-0.5, 0.25}, {1, 0}} {
			for _, inPlace := range []bool{false, true} {
				t.Run(fmt.Sprintf("%v_%gx+%g_inplace=%v", shape, ab[0], ab[1], inPlace), func(t *testing.T) {
					checkScale(t, b, shape, ab[0], ab[1], inPlace)
				})
			}
		}
	}
}

func checkScale(t testing.TB, b engine.Backend, shape engine.Shape, alpha, beta float32, inPlace bool) {
	t.Helper()
	name := fmt.Sprintf("scale %v alpha %g beta %g in place=%v", shape, alpha, beta, inPlace)
	e := newEnv(t, b, name, true)
	defer e.close()
	x := e.input("scale.x", engine.F32, shape, 3)
	d := x
	if !inPlace {
		d = e.output("scale.dst", engine.F32, shape)
	}
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.Scale(tt(d), tt(x), alpha, beta)
	})
	e.checkFull(name, d, TolF32)
}
