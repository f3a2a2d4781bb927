package enginetest

import (
	"math"

	"github.com/zimage/zimage/engine"
)

// Direct float64 computations of single output entries, used where the full
// reference would be too slow. They restate the op contracts of
// engine.Backend independently of engine/ref, so running the suite on ref
// also cross-checks the two.

// linearAt is entry idx of x [rows, K] · w [N, K]ᵀ + bias.
func linearAt(x, w, bias []float32, k, n, idx int) float32 {
	r, j := idx/n, idx%n
	s := dot64(x[r*k:(r+1)*k], w[j*k:(j+1)*k])
	if bias != nil {
		s += float64(bias[j])
	}
	return float32(s)
}

// matmulAt is entry idx of alpha · a [B, M, K] · b [B, K, N] (or [B, N, K]).
func matmulAt(a, b []float32, m, k, n int, transB bool, alpha float32, idx int) float32 {
	p, i, j := idx/(m*n), idx/n%m, idx%n
	ar := a[(p*m+i)*k : (p*m+i+1)*k]
	var s float64
	for kk, x := range ar {
		var y float32
		if transB {
			y = b[(p*n+j)*k+kk]
		} else {
			y = b[(p*k+kk)*n+j]
		}
		s += float64(x) * float64(y)
	}
	return float32(float64(alpha) * s)
}

// convGeom is the geometry of a Conv2d call.
type convGeom struct {
	n, c, h, w, o, kh, kw, stride, pad, oh, ow int
}

// convAt is entry idx of the convolution of x [N, C, H, W] with
// w [O, C, KH, KW] plus bias, zero padded.
func convAt(x, w, bias []float32, g convGeom, idx int) float32 {
	ox := idx % g.ow
	oy := idx / g.ow % g.oh
	oc := idx / (g.ow * g.oh) % g.o
	n := idx / (g.ow * g.oh * g.o)
	var s float64
	for c := 0; c < g.c; c++ {
		for ky := 0; ky < g.kh; ky++ {
			iy := oy*g.stride - g.pad + ky
			if iy < 0 || iy >= g.h {
				continue
			}
			for kx := 0; kx < g.kw; kx++ {
				ix := ox*g.stride - g.pad + kx
				if ix < 0 || ix >= g.w {
					continue
				}
				s += float64(x[((n*g.c+c)*g.h+iy)*g.w+ix]) * float64(w[((oc*g.c+c)*g.kh+ky)*g.kw+kx])
			}
		}
	}
	if bias != nil {
		s += float64(bias[oc])
	}
	return float32(s)
}

// attentionRow is the output of head h for query i of batch p:
// softmax(scale · q kᵀ) v over the keys the masks of o leave, with key/value
// head h / (H/KV).
func attentionRow(q, k, v []float32, lq, lk, d int, o engine.AttentionOptions, p, i, h int) []float32 {
	hd, kvd := o.Heads*d, o.KV()*d
	kh := h / (o.Heads / o.KV())
	qr := q[(p*lq+i)*hd+h*d:][:d]
	keys := lk
	if o.KeyLens != nil {
		keys = o.KeyLens[p]
	}
	if o.Causal {
		keys = min(keys, i+1)
	}
	s := make([]float64, keys)
	m := math.Inf(-1)
	for j := range s {
		s[j] = float64(o.Scale) * dot64(qr, k[(p*lk+j)*kvd+kh*d:][:d])
		m = max(m, s[j])
	}
	var sum float64
	for j := range s {
		s[j] = math.Exp(s[j] - m)
		sum += s[j]
	}
	acc := make([]float64, d)
	for j, pj := range s {
		for e, x := range v[(p*lk+j)*kvd+kh*d:][:d] {
			acc[e] += pj / sum * float64(x)
		}
	}
	out := make([]float32, d)
	for e, x := range acc {
		out[e] = float32(x)
	}
	return out
}

func dot64(a, b []float32) float64 {
	var s float64
	for i, x := range a {
		s += float64(x) * float64(b[i])
	}
	return s
}
