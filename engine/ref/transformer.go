package ref

import (
	"math"

	"github.com/zimage/zimage/engine"
)

// Ops of the transformer text encoders and DiTs (Qwen3, Z-Image).

// RMSNorm: x / sqrt(mean(x², last dim) + eps) * gamma (gamma nil: no scale),
// the mean taken in float64.
func (b *Backend) RMSNorm(dst, x, gamma *engine.Tensor, eps float32) error {
	const op = "rms_norm"
	if err := checkAll(op, dst, x); err != nil {
		return err
	}
	if err := wantF32(op, dst, x); err != nil {
		return err
	}
	if len(x.Shape) < 1 {
		return &engine.ShapeError{Op: op, Tensor: x.Name, Got: x.Shape.String(), Want: "[..., D]"}
	}
	if err := engine.WantShape(op, dst, x.Shape...); err != nil {
		return err
	}
	d := x.Shape[len(x.Shape)-1]
	var g []float32
	if gamma != nil {
		if err := biasOK(op, gamma, d); err != nil {
			return err
		}
		g = data(gamma)
	}
	xv, out := data(x), data(dst)
	for r := 0; r < len(xv)/d; r++ {
		row := xv[r*d : (r+1)*d]
		var ss float64
		for _, v := range row {
			ss += float64(v) * float64(v)
		}
		inv := 1 / math.Sqrt(ss/float64(d)+float64(eps))
		for i, v := range row {
			y := float64(v) * inv
			if g != nil {
				y *= float64(g[i])
			}
			out[r*d+i] = float32(y)
		}
	}
	return nil
}

// Rope rotates pairs of each head of x [B, L, H*D] by the angles whose
// cosines and sines cos and sin [1 or B, L, D/2] hold.
func (b *Backend) Rope(dst, x, cos, sin *engine.Tensor, heads int, mode engine.RopeMode) error {
	const op = "rope"
	if err := checkAll(op, dst, x, cos, sin); err != nil {
		return err
	}
	if err := wantF32(op, dst, x, cos, sin); err != nil {
		return err
	}
	nb, l, d, err := engine.RopeCheck(x, cos, sin, heads, mode)
	if err != nil {
		return err
	}
	if err := engine.WantShape(op, dst, x.Shape...); err != nil {
		return err
	}
	xv, out, cv, sv := data(x), data(dst), data(cos), data(sin)
	half := d / 2
	for n := 0; n < nb; n++ {
		tb := 0
		if cos.Shape[0] == nb {
			tb = n
		}
		for t := 0; t < l; t++ {
			c, s := cv[(tb*l+t)*half:][:half], sv[(tb*l+t)*half:][:half]
			for h := 0; h < heads; h++ {
				base := (n*l+t)*heads*d + h*d
				for p := 0; p < half; p++ {
					i0, i1 := base+p, base+p+half
					if mode == engine.RopeInterleaved {
						i0, i1 = base+2*p, base+2*p+1
					}
					x0, x1 := float64(xv[i0]), float64(xv[i1])
					cp, sp := float64(c[p]), float64(s[p])
					out[i0] = float32(x0*cp - x1*sp)
					out[i1] = float32(x0*sp + x1*cp)
				}
			}
		}
	}
	return nil
}

// SwiGLU: dst = silu(gate) * up.
func (b *Backend) SwiGLU(dst, gate, up *engine.Tensor) error {
	const op = "swiglu"
	if err := checkAll(op, dst, gate, up); err != nil {
		return err
	}
	if err := wantF32(op, dst, gate, up); err != nil {
		return err
	}
	if err := engine.WantShape(op, up, gate.Shape...); err != nil {
		return err
	}
	if err := engine.WantShape(op, dst, gate.Shape...); err != nil {
		return err
	}
	gv, uv, out := data(gate), data(up), data(dst)
	for i := range out {
		out[i] = float32(siLU(float64(gv[i])) * float64(uv[i]))
	}
	return nil
}
