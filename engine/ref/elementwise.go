package ref

import (
	"fmt"
	"math"

	"github.com/zimage/zimage/engine"
)

func siLU(x float64) float64 { return x / (1 + math.Exp(-x)) }

func gelu(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) }

func quickGELU(x float64) float64 { return x / (1 + math.Exp(-1.702*x)) }

// geluTanh is torch's gelu(approximate="tanh").
func geluTanh(x float64) float64 {
	return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
}

// relu is torch.relu: negatives become 0, NaN passes through.
func relu(x float64) float64 {
	if x < 0 {
		return 0
	}
	return x
}

// activation returns the float64 function an UnaryOp applies, or nil for
// an unknown op.
func activation(op engine.UnaryOp) func(float64) float64 {
	switch op {
	case engine.SiLU:
		return siLU
	case engine.GELU:
		return gelu
	case engine.QuickGELU:
		return quickGELU
	case engine.GELUTanh:
		return geluTanh
	case engine.Tanh:
		return math.Tanh
	case engine.ReLU:
		return relu
	}
	return nil
}

// Unary applies op elementwise; dst may be x.
func (b *Backend) Unary(dst, x *engine.Tensor, op engine.UnaryOp) error {
	name := "unary " + op.String()
	if err := checkAll(name, dst, x); err != nil {
		return err
	}
	if err := wantF32(name, dst, x); err != nil {
		return err
	}
	if err := engine.WantShape(name, dst, x.Shape...); err != nil {
		return err
	}
	f := activation(op)
	if f == nil {
		return fmt.Errorf("ref: unary on %s: unknown op %d", x.Name, op)
	}
	out := data(dst)
	for i, v := range data(x) {
		out[i] = float32(f(float64(v)))
	}
	return nil
}

// GEGLU: x [..., 2N] -> dst [..., N] = x[..., :N] * gelu(x[..., N:]), with
// the exact erf GELU (diffusers' GEGLU calls F.gelu).
func (b *Backend) GEGLU(dst, x *engine.Tensor) error {
	const op = "geglu"
	if err := checkAll(op, dst, x); err != nil {
		return err
	}
	if err := wantF32(op, dst, x); err != nil {
		return err
	}
	r := len(x.Shape)
	if r < 1 || x.Shape[r-1]%2 != 0 {
		return &engine.ShapeError{Op: op, Tensor: x.Name, Got: x.Shape.String(), Want: "[..., 2N]"}
	}
	want := x.Shape.Clone()
	want[r-1] /= 2
	if err := engine.WantShape(op, dst, want...); err != nil {
		return err
	}
	n := want[r-1]
	xv, out := data(x), data(dst)
	for row := 0; row < len(out)/n; row++ {
		in := xv[row*2*n : (row+1)*2*n]
		for i := 0; i < n; i++ {
			out[row*n+i] = float32(float64(in[i]) * gelu(float64(in[n+i])))
		}
	}
	return nil
}

// Binary: dst = a op b with numpy broadcasting (up to 4 dims); dst may be a
// or b when it has the broadcast shape.
func (b *Backend) Binary(dst, a, bt *engine.Tensor, op engine.BinaryOp) error {
	name := "binary " + op.String()
	if err := checkAll(name, dst, a, bt); err != nil {
		return err
	}
	if err := wantF32(name, dst, a, bt); err != nil {
		return err
	}
	s, err := engine.BroadcastShape(a.Shape, bt.Shape)
	if err != nil {
		return fmt.Errorf("ref: %s of %s and %s: %w", name, a.Name, bt.Name, err)
	}
	if err := engine.WantShape(name, dst, s...); err != nil {
		return err
	}
	var f func(x, y float32) float32
	switch op {
	case engine.Add:
		f = func(x, y float32) float32 { return x + y }
	case engine.Sub:
		f = func(x, y float32) float32 { return x - y }
	case engine.Mul:
		f = func(x, y float32) float32 { return x * y }
	default:
		return fmt.Errorf("ref: binary on %s and %s: unknown op %d", a.Name, bt.Name, op)
	}
	// Pad every shape to 4 dims; a broadcast operand gets stride 0 on the
	// dims where it has extent 1.
	d4 := pad4(s)
	sa, sb := bcastStrides(a.Shape, d4), bcastStrides(bt.Shape, d4)
	av, bv, out := data(a), data(bt), data(dst)
	i := 0
	for i0 := 0; i0 < d4[0]; i0++ {
		for i1 := 0; i1 < d4[1]; i1++ {
			for i2 := 0; i2 < d4[2]; i2++ {
				ia := i0*sa[0] + i1*sa[1] + i2*sa[2]
				ib := i0*sb[0] + i1*sb[1] + i2*sb[2]
				for i3 := 0; i3 < d4[3]; i3++ {
					out[i] = f(av[ia], bv[ib])
					ia += sa[3]
					ib += sb[3]
					i++
				}
			}
		}
	}
	return nil
}

// pad4 left-pads s with ones to 4 dims.
func pad4(s engine.Shape) [4]int {
	d := [4]int{1, 1, 1, 1}
	copy(d[4-len(s):], s)
	return d
}

// bcastStrides are the element strides of a tensor of shape s read at the
// broadcast shape out (stride 0 where s has extent 1).
func bcastStrides(s engine.Shape, out [4]int) [4]int {
	d := pad4(s)
	var st [4]int
	step := 1
	for i := 3; i >= 0; i-- {
		if d[i] != 1 || out[i] == 1 {
			st[i] = step
		}
		step *= d[i]
	}
	return st
}

// Scale: dst = alpha*x + beta; dst may be x.
func (b *Backend) Scale(dst, x *engine.Tensor, alpha, beta float32) error {
	const op = "scale"
	if err := checkAll(op, dst, x); err != nil {
		return err
	}
	if err := wantF32(op, dst, x); err != nil {
		return err
	}
	if err := engine.WantShape(op, dst, x.Shape...); err != nil {
		return err
	}
	out := data(dst)
	for i, v := range data(x) {
		out[i] = float32(float64(alpha)*float64(v) + float64(beta))
	}
	return nil
}
