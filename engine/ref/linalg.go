package ref

import (
	"github.com/zimage/zimage/engine"
)

// Linear: x [..., K], w [N, K] (F16 or F32), bias [N] or nil -> dst [..., N].
func (b *Backend) Linear(dst, x, w, bias *engine.Tensor) error {
	const op = "linear"
	if err := checkAll(op, dst, x, w); err != nil {
		return err
	}
	if err := wantF32(op, dst, x); err != nil {
		return err
	}
	s, err := engine.LinearShape(x, w)
	if err != nil {
		return err
	}
	if err := engine.WantShape(op, dst, s...); err != nil {
		return err
	}
	n, k := w.Shape[0], w.Shape[1]
	if err := engine.WholeBlocks(op, w, k, "rows"); err != nil {
		return err
	}
	var bv []float32
	if bias != nil {
		if err := biasOK(op, bias, n); err != nil {
			return err
		}
		bv = data(bias)
	}
	xv, wv, out := data(x), load(w), data(dst)
	rows := x.NumElem() / k
	row := make([]float32, n) // dst may not alias x, but a row buffer keeps a mistaken alias harmless
	for r := 0; r < rows; r++ {
		xr := xv[r*k : (r+1)*k]
		for j := 0; j < n; j++ {
			s := dot(xr, wv[j*k:(j+1)*k])
			if bv != nil {
				s += float64(bv[j])
			}
			row[j] = float32(s)
		}
		copy(out[r*n:(r+1)*n], row)
	}
	return nil
}

// MatMul: a [B, M, K], b [B, K, N] (transB: [B, N, K]) -> dst = alpha a·b.
func (b *Backend) MatMul(dst, a, bm *engine.Tensor, transB bool, alpha float32) error {
	const op = "matmul"
	if err := checkAll(op, dst, a, bm); err != nil {
		return err
	}
	if err := wantF32(op, dst, a, bm); err != nil {
		return err
	}
	s, err := engine.MatMulShape(a, bm, transB)
	if err != nil {
		return err
	}
	if err := engine.WantShape(op, dst, s...); err != nil {
		return err
	}
	batch, m, k, n := a.Shape[0], a.Shape[1], a.Shape[2], s[2]
	av, bv, out := data(a), data(bm), data(dst)
	acc := make([]float64, n)
	for p := 0; p < batch; p++ {
		ap, bp, cp := av[p*m*k:(p+1)*m*k], bv[p*k*n:(p+1)*k*n], out[p*m*n:(p+1)*m*n]
		for i := 0; i < m; i++ {
			ar := ap[i*k : (i+1)*k]
			if transB {
				for j := 0; j < n; j++ {
					acc[j] = dot(ar, bp[j*k:(j+1)*k])
				}
			} else {
				clear(acc)
				for kk, x := range ar {
					x := float64(x)
					for j, y := range bp[kk*n : (kk+1)*n] {
						acc[j] += x * float64(y)
					}
				}
			}
			for j, v := range acc {
				cp[i*n+j] = float32(float64(alpha) * v)
			}
		}
	}
	return nil
}

// Conv2d: x [N, C, H, W], w [O, C, KH, KW] (F16 or F32), bias [O] or nil.
// Loops run over output and input channels with the kernel taps outside
// and the output row inside, so the innermost loop walks contiguous memory.
func (b *Backend) Conv2d(dst, x, w, bias *engine.Tensor, p engine.Conv2dParams) error {
	const op = "conv2d"
	if err := checkAll(op, dst, x, w); err != nil {
		return err
	}
	if err := wantF32(op, dst, x); err != nil {
		return err
	}
	s, err := engine.Conv2dShape(x, w, p)
	if err != nil {
		return err
	}
	if err := engine.WantShape(op, dst, s...); err != nil {
		return err
	}
	nb, c, h, wd := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	o, kh, kw := w.Shape[0], w.Shape[2], w.Shape[3]
	oh, ow := s[2], s[3]
	if err := engine.WholeBlocks(op, w, c*kh*kw, "rows (C*KH*KW)"); err != nil {
		return err
	}
	var bv []float32
	if bias != nil {
		if err := biasOK(op, bias, o); err != nil {
			return err
		}
		bv = data(bias)
	}
	xv, wv, out := data(x), load(w), data(dst)
	stride, pad := p.Stride, p.Pad
	acc := make([]float64, oh*ow)
	for n := 0; n < nb; n++ {
		for oc := 0; oc < o; oc++ {
			clear(acc)
			for ic := 0; ic < c; ic++ {
				plane := xv[(n*c+ic)*h*wd : (n*c+ic+1)*h*wd]
				taps := wv[(oc*c+ic)*kh*kw : (oc*c+ic+1)*kh*kw]
				for ky := 0; ky < kh; ky++ {
					for kx := 0; kx < kw; kx++ {
						wt := float64(taps[ky*kw+kx])
						// Output columns whose input column ox*stride-pad+kx lies in [0, W).
						lo := max(0, ceilDiv(pad-kx, stride))
						hi := min(ow-1, floorDiv(wd-1+pad-kx, stride))
						if lo > hi {
							continue
						}
						for oy := 0; oy < oh; oy++ {
							iy := oy*stride - pad + ky
							if iy < 0 || iy >= h {
								continue
							}
							xr := plane[iy*wd : (iy+1)*wd]
							ar := acc[oy*ow : (oy+1)*ow]
							ix := lo*stride - pad + kx
							for ox := lo; ox <= hi; ox++ {
								ar[ox] += wt * float64(xr[ix])
								ix += stride
							}
						}
					}
				}
			}
			var bias float64
			if bv != nil {
				bias = float64(bv[oc])
			}
			dp := out[(n*o+oc)*oh*ow : (n*o+oc+1)*oh*ow]
			for i, v := range acc {
				dp[i] = float32(v + bias)
			}
		}
	}
	return nil
}

// biasOK validates a bias or norm parameter vector of length n.
func biasOK(op string, t *engine.Tensor, n int) error {
	if err := check(op, t); err != nil {
		return err
	}
	if err := engine.WantDType(op, t, engine.F32); err != nil {
		return err
	}
	return engine.WantShape(op, t, n)
}

// dot is the float64 dot product of two equal-length vectors. (A 4-way
// unrolled version measured slower here: Go does not vectorise either.)
func dot(a, b []float32) float64 {
	b = b[:len(a)]
	var s float64
	for i, x := range a {
		s += float64(x) * float64(b[i])
	}
	return s
}

func floorDiv(a, b int) int {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func ceilDiv(a, b int) int { return -floorDiv(-a, b) }
