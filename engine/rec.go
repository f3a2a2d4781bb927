package engine

import "fmt"

// Rec records ops on a Backend, allocating each result and keeping the first
// error: after a failure every further call returns nil and does nothing, so
// network code checks Err once per block instead of after every op.
type Rec struct {
	B   Backend
	err error
}

// NewRec returns a recorder on b.
func NewRec(b Backend) *Rec { return &Rec{B: b} }

// Err is the first error recorded.
func (r *Rec) Err() error { return r.err }

// Fail records err (the first one wins) and returns nil for chaining.
func (r *Rec) Fail(err error) *Tensor {
	if r.err == nil && err != nil {
		r.err = err
	}
	return nil
}

func (r *Rec) ok(ts ...*Tensor) bool {
	if r.err != nil {
		return false
	}
	for i, t := range ts {
		if t == nil {
			r.err = fmt.Errorf("engine: operand %d is nil", i)
			return false
		}
	}
	return true
}

// Alloc allocates an F32 tensor.
func (r *Rec) Alloc(name string, shape ...int) *Tensor {
	if r.err != nil {
		return nil
	}
	t, err := r.B.Alloc(name, F32, shape)
	if err != nil {
		return r.Fail(err)
	}
	return t
}

// Free releases tensors; nil entries are skipped.
func (r *Rec) Free(ts ...*Tensor) {
	for _, t := range ts {
		if t != nil {
			r.B.Free(t)
		}
	}
}

// run allocates dst of shape s, runs op, and frees dst when op fails.
func (r *Rec) run(name string, s Shape, op func(dst *Tensor) error) *Tensor {
	dst := r.Alloc(name, s...)
	if dst == nil {
		return nil
	}
	if err := op(dst); err != nil {
		r.B.Free(dst)
		return r.Fail(err)
	}
	return dst
}

// Write uploads host values into a new F32 tensor.
func (r *Rec) Write(name string, data []float32, shape ...int) *Tensor {
	return r.run(name, shape, func(dst *Tensor) error { return r.B.Write(dst, data) })
}

// Reshape returns a view of x with a new shape.
func (r *Rec) Reshape(x *Tensor, shape ...int) *Tensor {
	if !r.ok(x) {
		return nil
	}
	v, err := x.Reshape(shape...)
	if err != nil {
		return r.Fail(err)
	}
	return v
}

// Linear computes x·wᵀ + bias; bias may be nil.
func (r *Rec) Linear(name string, x, w, bias *Tensor) *Tensor {
	if !r.ok(x, w) {
		return nil
	}
	s, err := LinearShape(x, w)
	if err != nil {
		return r.Fail(err)
	}
	return r.run(name, s, func(d *Tensor) error { return r.B.Linear(d, x, w, bias) })
}

// MatMul computes alpha * a·b (b transposed when transB).
func (r *Rec) MatMul(name string, a, b *Tensor, transB bool, alpha float32) *Tensor {
	if !r.ok(a, b) {
		return nil
	}
	s, err := MatMulShape(a, b, transB)
	if err != nil {
		return r.Fail(err)
	}
	return r.run(name, s, func(d *Tensor) error { return r.B.MatMul(d, a, b, transB, alpha) })
}

// Conv2d convolves x with w (bias may be nil).
func (r *Rec) Conv2d(name string, x, w, bias *Tensor, stride, pad int) *Tensor {
	if !r.ok(x, w) {
		return nil
	}
	p := Conv2dParams{Stride: stride, Pad: pad}
	s, err := Conv2dShape(x, w, p)
	if err != nil {
		return r.Fail(err)
	}
	return r.run(name, s, func(d *Tensor) error { return r.B.Conv2d(d, x, w, bias, p) })
}

// GroupNorm normalises x in groups, optionally followed by SiLU.
func (r *Rec) GroupNorm(name string, x, gamma, beta *Tensor, groups int, eps float32, silu bool) *Tensor {
	if !r.ok(x, gamma, beta) {
		return nil
	}
	return r.run(name, x.Shape, func(d *Tensor) error { return r.B.GroupNorm(d, x, gamma, beta, groups, eps, silu) })
}

// LayerNorm normalises x over its last dim.
func (r *Rec) LayerNorm(name string, x, gamma, beta *Tensor, eps float32) *Tensor {
	if !r.ok(x, gamma, beta) {
		return nil
	}
	return r.run(name, x.Shape, func(d *Tensor) error { return r.B.LayerNorm(d, x, gamma, beta, eps) })
}

// Softmax over the last dim.
func (r *Rec) Softmax(name string, x *Tensor) *Tensor {
	if !r.ok(x) {
		return nil
	}
	return r.run(name, x.Shape, func(d *Tensor) error { return r.B.Softmax(d, x) })
}

// Attention runs multi-head attention on token-layout q, k, v.
func (r *Rec) Attention(name string, q, k, v *Tensor, o AttentionOptions) *Tensor {
	if !r.ok(q, k, v) {
		return nil
	}
	if _, _, _, _, err := AttentionCheck(q, k, v, o); err != nil {
		return r.Fail(err)
	}
	return r.run(name, q.Shape, func(d *Tensor) error { return r.B.Attention(d, q, k, v, o) })
}

// RMSNorm normalises x over its last dim (gamma may be nil).
func (r *Rec) RMSNorm(name string, x, gamma *Tensor, eps float32) *Tensor {
	if !r.ok(x) {
		return nil
	}
	return r.run(name, x.Shape, func(d *Tensor) error { return r.B.RMSNorm(d, x, gamma, eps) })
}

// RopeInPlace rotates the heads of x itself and returns x.
func (r *Rec) RopeInPlace(x, cos, sin *Tensor, heads int, mode RopeMode) *Tensor {
	if !r.ok(x, cos, sin) {
		return nil
	}
	if err := r.B.Rope(x, x, cos, sin, heads, mode); err != nil {
		return r.Fail(err)
	}
	return x
}

// SwiGLUInPlace stores silu(gate) * up into gate and returns it.
func (r *Rec) SwiGLUInPlace(gate, up *Tensor) *Tensor {
	if !r.ok(gate, up) {
		return nil
	}
	if err := r.B.SwiGLU(gate, gate, up); err != nil {
		return r.Fail(err)
	}
	return gate
}

// Unary applies an activation into a new tensor.
func (r *Rec) Unary(name string, x *Tensor, op UnaryOp) *Tensor {
	if !r.ok(x) {
		return nil
	}
	return r.run(name, x.Shape, func(d *Tensor) error { return r.B.Unary(d, x, op) })
}

// UnaryInPlace applies an activation to x itself and returns x.
func (r *Rec) UnaryInPlace(x *Tensor, op UnaryOp) *Tensor {
	if !r.ok(x) {
		return nil
	}
	if err := r.B.Unary(x, x, op); err != nil {
		return r.Fail(err)
	}
	return x
}

// GEGLU gates the first half of the last dim with GELU of the second half.
func (r *Rec) GEGLU(name string, x *Tensor) *Tensor {
	if !r.ok(x) {
		return nil
	}
	s := x.Shape.Clone()
	if len(s) == 0 || s[len(s)-1]%2 != 0 {
		return r.Fail(&ShapeError{Op: "geglu", Tensor: x.Name, Got: x.Shape.String(), Want: "[..., 2N]"})
	}
	s[len(s)-1] /= 2
	return r.run(name, s, func(d *Tensor) error { return r.B.GEGLU(d, x) })
}

// Binary computes a op b with broadcasting into a new tensor.
func (r *Rec) Binary(name string, a, b *Tensor, op BinaryOp) *Tensor {
	if !r.ok(a, b) {
		return nil
	}
	s, err := BroadcastShape(a.Shape, b.Shape)
	if err != nil {
		return r.Fail(fmt.Errorf("%s %s %s: %w", a.Name, op, b.Name, err))
	}
	return r.run(name, s, func(d *Tensor) error { return r.B.Binary(d, a, b, op) })
}

// Add is Binary(Add).
func (r *Rec) Add(name string, a, b *Tensor) *Tensor { return r.Binary(name, a, b, Add) }

// AddInPlace adds b (broadcast) into a and returns a.
func (r *Rec) AddInPlace(a, b *Tensor) *Tensor {
	if !r.ok(a, b) {
		return nil
	}
	if err := r.B.Binary(a, a, b, Add); err != nil {
		return r.Fail(err)
	}
	return a
}

// Scale computes alpha*x + beta into a new tensor.
func (r *Rec) Scale(name string, x *Tensor, alpha, beta float32) *Tensor {
	if !r.ok(x) {
		return nil
	}
	return r.run(name, x.Shape, func(d *Tensor) error { return r.B.Scale(d, x, alpha, beta) })
}

// Upsample2x repeats every pixel of an NCHW tensor 2x2 times.
func (r *Rec) Upsample2x(name string, x *Tensor) *Tensor {
	if !r.ok(x) {
		return nil
	}
	if len(x.Shape) != 4 {
		return r.Fail(&ShapeError{Op: "upsample2x", Tensor: x.Name, Got: x.Shape.String(), Want: "[N, C, H, W]"})
	}
	s := Shape{x.Shape[0], x.Shape[1], 2 * x.Shape[2], 2 * x.Shape[3]}
	return r.run(name, s, func(d *Tensor) error { return r.B.Upsample2x(d, x) })
}

// Concat joins a and b on axis 1.
func (r *Rec) Concat(name string, a, b *Tensor) *Tensor {
	if !r.ok(a, b) {
		return nil
	}
	s, err := ConcatShape(a, b)
	if err != nil {
		return r.Fail(err)
	}
	return r.run(name, s, func(d *Tensor) error { return r.B.Concat(d, a, b) })
}

// Permute reorders x's dims by perm.
func (r *Rec) Permute(name string, x *Tensor, perm ...int) *Tensor {
	if !r.ok(x) {
		return nil
	}
	s, err := PermuteShape(x.Shape, perm)
	if err != nil {
		return r.Fail(fmt.Errorf("%s: %w", x.Name, err))
	}
	return r.run(name, s, func(d *Tensor) error { return r.B.Permute(d, x, perm) })
}

// Embedding gathers rows of table.
func (r *Rec) Embedding(name string, table *Tensor, ids []int32) *Tensor {
	if !r.ok(table) {
		return nil
	}
	if len(table.Shape) != 2 || len(ids) == 0 {
		return r.Fail(&ShapeError{Op: "embedding", Tensor: table.Name, Got: table.Shape.String(), Want: "[V, D] and at least one id"})
	}
	return r.run(name, Shape{len(ids), table.Shape[1]}, func(d *Tensor) error { return r.B.Embedding(d, table, ids) })
}

// Copy copies x into a new F32 tensor.
func (r *Rec) Copy(name string, x *Tensor) *Tensor {
	if !r.ok(x) {
		return nil
	}
	return r.run(name, x.Shape, func(d *Tensor) error { return r.B.Copy(d, x) })
}
