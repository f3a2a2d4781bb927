package engine

import "fmt"

// Output-shape rules of the ops, shared by Rec (to allocate results) and the
// backends (to validate destinations), so that both agree on every op.

// LinearShape is the result shape of Linear(x, w).
func LinearShape(x, w *Tensor) (Shape, error) {
	if len(w.Shape) != 2 || len(x.Shape) < 1 || x.Shape[len(x.Shape)-1] != w.Shape[1] {
		return nil, &ShapeError{Op: "linear", Tensor: x.Name + " x " + w.Name,
			Got: x.Shape.String() + " x " + w.Shape.String(), Want: "[..., K] x [N, K]"}
	}
	s := x.Shape.Clone()
	s[len(s)-1] = w.Shape[0]
	return s, nil
}

// MatMulShape is the result shape of MatMul(a, b, transB).
func MatMulShape(a, b *Tensor, transB bool) (Shape, error) {
	bad := &ShapeError{Op: "matmul", Tensor: a.Name + " x " + b.Name,
		Got: a.Shape.String() + " x " + b.Shape.String(), Want: "[B, M, K] x [B, K, N] (or [B, N, K] transposed)"}
	if len(a.Shape) != 3 || len(b.Shape) != 3 || a.Shape[0] != b.Shape[0] {
		return nil, bad
	}
	k, n := b.Shape[1], b.Shape[2]
	if transB {
		k, n = n, k
	}
	if a.Shape[2] != k {
		return nil, bad
	}
	return Shape{a.Shape[0], a.Shape[1], n}, nil
}

// Conv2dShape is the result shape of Conv2d(x, w, p).
func Conv2dShape(x, w *Tensor, p Conv2dParams) (Shape, error) {
	if len(x.Shape) != 4 || len(w.Shape) != 4 || x.Shape[1] != w.Shape[1] || p.Stride < 1 || p.Pad < 0 {
		return nil, &ShapeError{Op: "conv2d", Tensor: x.Name + " * " + w.Name,
			Got:  fmt.Sprintf("%v * %v stride %d pad %d", x.Shape, w.Shape, p.Stride, p.Pad),
			Want: "[N, C, H, W] * [O, C, KH, KW], stride >= 1, pad >= 0"}
	}
	oh := (x.Shape[2]+2*p.Pad-w.Shape[2])/p.Stride + 1
	ow := (x.Shape[3]+2*p.Pad-w.Shape[3])/p.Stride + 1
	// Go's division truncates toward zero, so a kernel one row larger than
	// the padded input would still give oh = 1 at stride 2: test the sizes.
	if oh < 1 || ow < 1 || x.Shape[2]+2*p.Pad < w.Shape[2] || x.Shape[3]+2*p.Pad < w.Shape[3] {
		return nil, &ShapeError{Op: "conv2d", Tensor: x.Name, Got: x.Shape.String(), Want: "an input at least as large as the kernel"}
	}
	return Shape{x.Shape[0], w.Shape[0], oh, ow}, nil
}

// BroadcastShape is the numpy-style broadcast of a and b (at most 4 dims).
func BroadcastShape(a, b Shape) (Shape, error) {
	n := max(len(a), len(b))
	if n > 4 {
		return nil, fmt.Errorf("engine: broadcast of %v and %v: more than 4 dims", a, b)
	}
	out := make(Shape, n)
	for i := 0; i < n; i++ {
		da, db := 1, 1
		if j := len(a) - n + i; j >= 0 {
			da = a[j]
		}
		if j := len(b) - n + i; j >= 0 {
			db = b[j]
		}
		switch {
		case da == db, db == 1:
			out[i] = da
		case da == 1:
			out[i] = db
		default:
			return nil, fmt.Errorf("engine: shapes %v and %v do not broadcast", a, b)
		}
	}
	return out, nil
}

// ConcatShape is the result shape of Concat(a, b) on axis 1.
func ConcatShape(a, b *Tensor) (Shape, error) {
	ok := len(a.Shape) >= 2 && len(a.Shape) == len(b.Shape) && a.Shape[0] == b.Shape[0]
	for i := 2; ok && i < len(a.Shape); i++ {
		ok = a.Shape[i] == b.Shape[i]
	}
	if !ok {
		return nil, &ShapeError{Op: "concat", Tensor: a.Name + " ++ " + b.Name,
			Got: a.Shape.String() + " ++ " + b.Shape.String(), Want: "shapes equal except on axis 1"}
	}
	s := a.Shape.Clone()
	s[1] += b.Shape[1]
	return s, nil
}

// PermuteShape is x reordered by perm; perm must be a permutation of 0..n-1.
func PermuteShape(x Shape, perm []int) (Shape, error) {
	if len(perm) != len(x) || len(x) > 4 {
		return nil, fmt.Errorf("engine: permute %v by %v: need a permutation of up to 4 dims", x, perm)
	}
	seen := make([]bool, len(perm))
	out := make(Shape, len(perm))
	for i, p := range perm {
		if p < 0 || p >= len(perm) || seen[p] {
			return nil, fmt.Errorf("engine: permute %v by %v: not a permutation", x, perm)
		}
		seen[p] = true
		out[i] = x[p]
	}
	return out, nil
}

// AttentionCheck validates Attention's operands and options and returns
// (B, Lq, Lk, D).
func AttentionCheck(q, k, v *Tensor, o AttentionOptions) (b, lq, lk, d int, err error) {
	kv := o.KV()
	bad := &ShapeError{Op: "attention", Tensor: q.Name,
		Got:  fmt.Sprintf("q %v k %v v %v heads %d kv heads %d", q.Shape, k.Shape, v.Shape, o.Heads, kv),
		Want: "q [B, Lq, H*D], k = v [B, Lk, KV*D], H a multiple of KV"}
	if o.Heads < 1 || kv < 1 || o.Heads%kv != 0 || len(q.Shape) != 3 || !k.Shape.Equal(v.Shape) || len(k.Shape) != 3 ||
		q.Shape[0] != k.Shape[0] || q.Shape[2]%o.Heads != 0 {
		return 0, 0, 0, 0, bad
	}
	d = q.Shape[2] / o.Heads
	if k.Shape[2] != kv*d {
		return 0, 0, 0, 0, bad
	}
	b, lq, lk = q.Shape[0], q.Shape[1], k.Shape[1]
	if o.KeyLens != nil {
		if len(o.KeyLens) != b {
			return 0, 0, 0, 0, &ShapeError{Op: "attention", Tensor: k.Name, Got: fmt.Sprintf("%d key lengths", len(o.KeyLens)),
				Want: fmt.Sprintf("one per batch row (%d)", b)}
		}
		for i, n := range o.KeyLens {
			if n < 1 || n > lk {
				return 0, 0, 0, 0, &ShapeError{Op: "attention", Tensor: k.Name, Got: fmt.Sprintf("key length %d for batch row %d", n, i),
					Want: fmt.Sprintf("1..%d", lk)}
			}
		}
	}
	return b, lq, lk, d, nil
}

// RopeCheck validates Rope's operands and returns (B, L, D).
func RopeCheck(x, cos, sin *Tensor, heads int, mode RopeMode) (b, l, d int, err error) {
	bad := &ShapeError{Op: "rope", Tensor: x.Name, Got: fmt.Sprintf("x %v cos %v sin %v heads %d", x.Shape, cos.Shape, sin.Shape, heads),
		Want: "x [B, L, H*D] with D even, cos = sin [1 or B, L, D/2]"}
	if heads < 1 || len(x.Shape) != 3 || x.Shape[2]%heads != 0 || (x.Shape[2]/heads)%2 != 0 || mode > RopeInterleaved {
		return 0, 0, 0, bad
	}
	b, l, d = x.Shape[0], x.Shape[1], x.Shape[2]/heads
	if !cos.Shape.Equal(sin.Shape) || len(cos.Shape) != 3 || (cos.Shape[0] != 1 && cos.Shape[0] != b) ||
		cos.Shape[1] != l || cos.Shape[2] != d/2 {
		return 0, 0, 0, bad
	}
	return b, l, d, nil
}
