package ref

import (
	"fmt"
	"math"

	"github.com/zimage/zimage/engine"
)

// GroupNorm: x [N, C, ...]; each group of C/groups channels is normalised
// over its channels and all trailing dims with the population variance
// (as torch.nn.GroupNorm), then scaled by gamma and shifted by beta per
// channel; silu applies SiLU to the result.
func (b *Backend) GroupNorm(dst, x, gamma, beta *engine.Tensor, groups int, eps float32, silu bool) error {
	const op = "group_norm"
	if err := checkAll(op, dst, x, gamma, beta); err != nil {
		return err
	}
	if err := wantF32(op, dst, x); err != nil {
		return err
	}
	if len(x.Shape) < 2 || groups < 1 || x.Shape[1]%groups != 0 {
		return &engine.ShapeError{Op: op, Tensor: x.Name, Got: fmt.Sprintf("%v in %d groups", x.Shape, groups),
			Want: "[N, C, ...] with C a multiple of groups >= 1"}
	}
	if err := engine.WantShape(op, dst, x.Shape...); err != nil {
		return err
	}
	c := x.Shape[1]
	if err := biasOK(op, gamma, c); err != nil {
		return err
	}
	if err := biasOK(op, beta, c); err != nil {
		return err
	}
	xv, out, g, be := data(x), data(dst), data(gamma), data(beta)
	spatial := x.NumElem() / (x.Shape[0] * c)
	per := c / groups * spatial // elements of one group, contiguous
	for n := 0; n < x.Shape[0]; n++ {
		for gi := 0; gi < groups; gi++ {
			base := (n*groups + gi) * per
			mean, rstd := meanRstd(xv[base:base+per], eps)
			for ci := 0; ci < c/groups; ci++ {
				ch := gi*c/groups + ci
				scale := rstd * float64(g[ch])
				shift := float64(be[ch]) - mean*scale
				lo := base + ci*spatial
				for i, v := range xv[lo : lo+spatial] {
					y := float64(v)*scale + shift
					if silu {
						y = siLU(y)
					}
					out[lo+i] = float32(y)
				}
			}
		}
	}
	return nil
}

// LayerNorm normalises x over its last dim D; gamma/beta [D].
func (b *Backend) LayerNorm(dst, x, gamma, beta *engine.Tensor, eps float32) error {
	const op = "layer_norm"
	if err := checkAll(op, dst, x, gamma, beta); err != nil {
		return err
	}
	if err := wantF32(op, dst, x); err != nil {
		return err
	}
	if err := engine.WantShape(op, dst, x.Shape...); err != nil {
		return err
	}
	if len(x.Shape) < 1 {
		return &engine.ShapeError{Op: op, Tensor: x.Name, Got: x.Shape.String(), Want: "[..., D]"}
	}
	d := x.Shape[len(x.Shape)-1]
	if err := biasOK(op, gamma, d); err != nil {
		return err
	}
	if err := biasOK(op, beta, d); err != nil {
		return err
	}
	xv, out, g, be := data(x), data(dst), data(gamma), data(beta)
	for r := 0; r < len(xv)/d; r++ {
		row := xv[r*d : (r+1)*d]
		mean, rstd := meanRstd(row, eps)
		for i, v := range row {
			out[r*d+i] = float32((float64(v)-mean)*rstd*float64(g[i]) + float64(be[i]))
		}
	}
	return nil
}

// meanRstd returns the mean and 1/sqrt(var + eps) of v, two-pass for accuracy.
func meanRstd(v []float32, eps float32) (mean, rstd float64) {
	var s float64
	for _, x := range v {
		s += float64(x)
	}
	mean = s / float64(len(v))
	var ss float64
	for _, x := range v {
		d := float64(x) - mean
		ss += d * d
	}
	return mean, 1 / math.Sqrt(ss/float64(len(v))+float64(eps))
}

// Softmax over the last dim; the row maximum is subtracted first.
func (b *Backend) Softmax(dst, x *engine.Tensor) error {
	const op = "softmax"
	if err := checkAll(op, dst, x); err != nil {
		return err
	}
	if err := wantF32(op, dst, x); err != nil {
		return err
	}
	if err := engine.WantShape(op, dst, x.Shape...); err != nil {
		return err
	}
	if len(x.Shape) < 1 {
		return &engine.ShapeError{Op: op, Tensor: x.Name, Got: x.Shape.String(), Want: "[..., D]"}
	}
	d := x.Shape[len(x.Shape)-1]
	xv, out := data(x), data(dst)
	e := make([]float64, d)
	for r := 0; r < len(xv)/d; r++ {
		row := xv[r*d : (r+1)*d]
		for i, v := range row {
			e[i] = float64(v)
		}
		softmax64(e)
		for i, v := range e {
			out[r*d+i] = float32(v)
		}
	}
	return nil
}

// softmax64 replaces v by its softmax. A row whose maximum is -Inf (every
// entry masked) has no defined softmax and becomes NaN, as in torch.
func softmax64(v []float64) {
	m := math.Inf(-1)
	for _, x := range v {
		m = max(m, x)
	}
	var s float64
	for i, x := range v {
		v[i] = math.Exp(x - m)
		s += v[i]
	}
	for i := range v {
		v[i] /= s
	}
}

// Attention: q [B, Lq, H*D], k and v [B, Lk, KV*D] -> dst [B, Lq, H*D],
// softmax(scale · q kᵀ) v per head; query head h reads key/value head
// h/(H/KV); causal masks keys j > query i, KeyLens the keys past a batch
// row's length.
func (b *Backend) Attention(dst, q, k, v *engine.Tensor, o engine.AttentionOptions) error {
	const op = "attention"
	if err := checkAll(op, dst, q, k, v); err != nil {
		return err
	}
	if err := wantF32(op, dst, q, k, v); err != nil {
		return err
	}
	nb, lq, lk, d, err := engine.AttentionCheck(q, k, v, o)
	if err != nil {
		return err
	}
	if err := engine.WantShape(op, dst, q.Shape...); err != nil {
		return err
	}
	heads, kvHeads := o.Heads, o.KV()
	group := heads / kvHeads
	qv, kv, vv := data(q), data(k), data(v)
	out := make([]float32, dst.NumElem()) // dst may alias q
	hd, kvd := heads*d, kvHeads*d
	s := make([]float64, lk)
	acc := make([]float64, d)
	for n := 0; n < nb; n++ {
		valid := lk
		if o.KeyLens != nil {
			valid = o.KeyLens[n]
		}
		for h := 0; h < heads; h++ {
			kh := h / group
			for i := 0; i < lq; i++ {
				qr := qv[(n*lq+i)*hd+h*d:][:d]
				keys := valid
				if o.Causal {
					keys = min(keys, i+1)
				}
				for j := 0; j < keys; j++ {
					s[j] = float64(o.Scale) * dot(qr, kv[(n*lk+j)*kvd+kh*d:][:d])
				}
				softmax64(s[:keys])
				clear(acc)
				for j := 0; j < keys; j++ {
					p := s[j]
					for e, x := range vv[(n*lk+j)*kvd+kh*d:][:d] {
						acc[e] += p * float64(x)
					}
				}
				o := out[(n*lq+i)*hd+h*d:][:d]
				for e, x := range acc {
					o[e] = float32(x)
				}
			}
		}
	}
	copy(data(dst), out)
	return nil
}
