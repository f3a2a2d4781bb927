package gguf

import (
	"fmt"
	"math"
)

// This file is ggml_quantize_chunk with an importance matrix (the
// quantize_row_*_impl functions of ggml-quants.c): per-element weights
// steer the search for each block's scale. stable-diffusion.cpp's convert
// always takes this path, with all-one weights when it collected no
// matrix, so its files differ from the _ref encoders' for Q4_0, Q4_1,
// Q5_0, Q5_1 and Q4_K. Same float32 discipline as quant.go.

// QuantizeWeighted encodes src, rows of rowLen elements, into dst as
// ggml_quantize_chunk does with an importance matrix: weights holds one
// weight per column (len rowLen); all ones reproduces stable-diffusion.cpp's
// convert. Q8_0 and the plain types ignore the weights, as ggml does.
func QuantizeWeighted(t Type, src []float32, dst []byte, rowLen int, weights []float32) error {
	switch t {
	case Q4_0, Q4_1, Q5_0, Q5_1, Q4_K:
	default:
		return Quantize(t, src, dst)
	}
	if rowLen <= 0 || len(src)%rowLen != 0 {
		return fmt.Errorf("gguf: quantize %s: %d elements are not rows of %d", t, len(src), rowLen)
	}
	rowBytes, ok := t.RowBytes(rowLen)
	if !ok {
		return fmt.Errorf("gguf: quantize %s: rows of %d elements are not whole %d-element blocks", t, rowLen, t.BlockSize())
	}
	if len(weights) != rowLen {
		return fmt.Errorf("gguf: quantize %s: %d importance weights for rows of %d", t, len(weights), rowLen)
	}
	if len(dst) != len(src)/rowLen*rowBytes {
		return fmt.Errorf("gguf: quantize %s: %d bytes for %d elements, want %d", t, len(dst), len(src), len(src)/rowLen*rowBytes)
	}
	for i, v := range src {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("gguf: quantize %s: element %d is %v", t, i, v)
		}
	}
	for r := 0; r*rowLen < len(src); r++ {
		x := src[r*rowLen : (r+1)*rowLen]
		y := dst[r*rowBytes : (r+1)*rowBytes]
		if t == Q4_K {
			for i := 0; i*QK_K < rowLen; i++ {
				quantQ4_KWeighted(x[i*QK_K:(i+1)*QK_K], y[i*144:(i+1)*144], weights[i*QK_K:(i+1)*QK_K])
			}
			continue
		}
		// The 32-element types weight each element by its importance
		// times sqrt(sigma^2 + x^2), sigma^2 the row's mean square.
		var sumX2 float32
		for _, v := range x {
			sumX2 += float32(v * v)
		}
		sigma2 := sumX2 / float32(rowLen)
		var w [32]float32
		bb := t.BlockBytes()
		for ib := 0; ib*32 < rowLen; ib++ {
			xb := x[32*ib : 32*ib+32]
			for j, v := range xb {
				w[j] = weights[32*ib+j] * float32(math.Sqrt(float64(sigma2+float32(v*v))))
			}
			yb := y[ib*bb : (ib+1)*bb]
			switch t {
			case Q4_0:
				var L [32]int8
				putHalf(yb, makeQX(8, xb, L[:], w[:]))
				for j := range 16 {
					yb[2+j] = byte(L[j]) | byte(L[j+16])<<4
				}
			case Q5_0:
				var L [32]int8
				putHalf(yb, makeQX(16, xb, L[:], w[:]))
				packQ5(yb[2:6], yb[6:22], L[:])
			case Q4_1, Q5_1:
				var L, laux [32]uint8
				nmax := 15
				if t == Q5_1 {
					nmax = 31
				}
				d, m := makeQKX2(nmax, xb, w[:], L[:], laux[:], -0.9, 0.05, 36)
				putHalf(yb, d)
				putHalf(yb[2:], -m) // m is -min, as make_qkx3_quants returns it
				if t == Q4_1 {
					for j := range 16 {
						yb[4+j] = L[j] | L[j+16]<<4
					}
				} else {
					var l8 [32]int8
					for j, v := range L {
						l8[j] = int8(v)
					}
					packQ5(yb[4:8], yb[8:24], l8[:])
				}
			}
		}
	}
	return nil
}

// packQ5 stores 32 5-bit levels: low nibbles in qs, fifth bits in qh.
func packQ5(qh, qs []byte, L []int8) {
	var h uint32
	for j := range 16 {
		x0, x1 := uint8(L[j]), uint8(L[j+16])
		qs[j] = x0&0x0f | (x1&0x0f)<<4
		h |= uint32(x0>>4&1) << j
		h |= uint32(x1>>4&1) << (j + 16)
	}
	qh[0], qh[1], qh[2], qh[3] = byte(h), byte(h>>8), byte(h>>16), byte(h>>24)
}

// makeQX is ggml's make_qx_quants with rmse_type 1 and weights qw: a
// symmetric scale for levels -nmax..nmax-1 (stored in L offset by nmax),
// the best of 19 candidates by weighted least squares.
func makeQX(nmax int, x []float32, L []int8, qw []float32) float32 {
	var mx, amax float32
	for _, v := range x {
		if a := abs32(v); a > amax {
			amax, mx = a, v
		}
	}
	if amax < 1e-15 {
		for i := range L {
			L[i] = 0
		}
		return 0
	}
	fmax := float32(nmax)
	level := func(iscale, v float32) int { return max(-nmax, min(nmax-1, nearestInt(iscale*v))) }
	sums := func(iscale float32, store bool) (sumlx, suml2 float32) {
		for i, v := range x {
			l := level(iscale, v)
			if store {
				L[i] = int8(l + nmax)
			}
			fl := float32(l)
			sumlx += float32(float32(qw[i]*v) * fl)
			suml2 += float32(float32(qw[i]*fl) * fl)
		}
		return sumlx, suml2
	}
	iscale := -fmax / mx
	sumlx, suml2 := sums(iscale, true)
	var scale float32
	if suml2 != 0 {
		scale = sumlx / suml2
	}
	best := scale * sumlx
	for is := -9; is <= 9; is++ {
		if is == 0 {
			continue
		}
		iscale = -(fmax + float32(0.1*float32(is))) / mx
		sumlx, suml2 = sums(iscale, false)
		if suml2 > 0 && float32(sumlx*sumlx) > float32(best*suml2) {
			sums(iscale, true)
			scale = sumlx / suml2
			best = scale * sumlx
		}
	}
	return scale
}

// makeQP is ggml's make_qp_quants: a scale for non-negative x at levels
// 0..nmax (the super-block scales of Q4_K), searched over 9 candidates
// and then refined one level at a time by weighted least squares.
func makeQP(nmax int, x []float32, L []uint8, qw []float32) float32 {
	var mx float32
	for _, v := range x {
		if !(mx > v) {
			mx = v
		}
	}
	if mx < 1e-15 {
		for i := range L {
			L[i] = 0
		}
		return 0
	}
	fmax := float32(nmax)
	iscale := fmax / mx
	for i, v := range x {
		L[i] = uint8(nearestInt(iscale * v))
	}
	scale := 1 / iscale
	var best float32
	for i, v := range x {
		diff := v - float32(scale*float32(L[i]))
		best += float32(float32(qw[i]*diff) * diff)
	}
	for is := -4; is <= 4; is++ {
		if is == 0 {
			continue
		}
		iscaleIs := (float32(0.1*float32(is)) + fmax) / mx
		scaleIs := 1 / iscaleIs
		var mse float32
		for i, v := range x {
			l := min(nmax, nearestInt(iscaleIs*v))
			diff := v - float32(scaleIs*float32(l))
			mse += float32(float32(qw[i]*diff) * diff)
		}
		if mse < best {
			best, iscale = mse, iscaleIs
		}
	}
	var sumlx, suml2 float32
	for i, v := range x {
		l := min(nmax, nearestInt(iscale*v))
		L[i] = uint8(l) // ggml stores into uint8 but sums the int
		fl := float32(l)
		sumlx += float32(float32(qw[i]*v) * fl)
		suml2 += float32(float32(qw[i]*fl) * fl)
	}
	for range 5 {
		changed := false
		for i, v := range x {
			w := qw[i]
			fl := float32(L[i])
			slx := sumlx - float32(float32(w*v)*fl)
			sl2 := suml2 - float32(float32(w*fl)*fl)
			if slx > 0 && sl2 > 0 {
				nl := min(nmax, nearestInt(float32(v*sl2)/slx))
				if nl != int(L[i]) {
					fn := float32(nl)
					slx += float32(float32(w*v) * fn)
					sl2 += float32(float32(w*fn) * fn)
					if float32(float32(slx*slx)*suml2) > float32(float32(sumlx*sumlx)*sl2) {
						L[i], sumlx, suml2 = uint8(nl), slx, sl2
						changed = true
					}
				}
			}
		}
		if !changed {
			break
		}
	}
	if suml2 > 0 {
		return sumlx / suml2
	}
	return 0
}

// quantQ4_KWeighted is quantize_row_q4_K_impl for one super-block: group
// scales and mins by makeQKX2 with importance weights, the super-block
// scales by makeQP weighted by each group's total weight, then the same
// packing and re-quantization as the _ref encoder.
func quantQ4_KWeighted(x []float32, y []byte, qw []float32) {
	var (
		L       [QK_K]uint8
		laux    [32]uint8
		weights [32]float32
		sw      [8]float32
		scales  [8]float32
		mins    [8]float32
		ls, lm  [8]uint8
	)
	var sumX2 float32
	for _, v := range x {
		sumX2 += float32(v * v)
	}
	sigma2 := float32(2*sumX2) / QK_K
	for j := range 8 {
		g := x[32*j : 32*j+32]
		var sumw float32
		for l, v := range g {
			weights[l] = qw[32*j+l] * float32(math.Sqrt(float64(sigma2+float32(v*v))))
			sumw += weights[l]
		}
		sw[j] = sumw
		scales[j], mins[j] = makeQKX2(15, g, weights[:], L[32*j:32*j+32], laux[:], -0.9, 0.05, 36)
	}
	dBlock := makeQP(63, scales[:], ls[:], sw[:])
	mBlock := makeQP(63, mins[:], lm[:], sw[:])
	packQ4KScales(y[4:16], ls, lm)
	putHalf(y, dBlock)
	putHalf(y[2:], mBlock)
	requantQ4K(x, y, L[:])
}

// packQ4KScales packs 8 6-bit scales and mins (the inverse of scaleMinK4).
func packQ4KScales(sc []byte, ls, lm [8]uint8) {
	for i := range sc {
		sc[i] = 0
	}
	for j := range 8 {
		if j < 4 {
			sc[j] = ls[j]
			sc[j+4] = lm[j]
		} else {
			sc[j+4] = ls[j]&0x0f | (lm[j]&0x0f)<<4
			sc[j-4] |= (ls[j] >> 4) << 6
			sc[j] |= (lm[j] >> 4) << 6
		}
	}
}

// requantQ4K sets each element's level against its group's decoded scale
// and min (groups whose scale decodes to zero keep the levels in L) and
// packs the nibbles.
func requantQ4K(x []float32, y []byte, L []uint8) {
	dAll, mAll := half(y), half(y[2:])
	for j := range 8 {
		s, m := scaleMinK4(j, y[4:16])
		d := dAll * float32(s)
		if d == 0 {
			continue
		}
		dm := mAll * float32(m)
		for i := range 32 {
			L[32*j+i] = uint8(max(0, min(15, nearestInt((x[32*j+i]+dm)/d))))
		}
	}
	qs := y[16:144]
	for j := 0; j < QK_K; j += 64 {
		for l := range 32 {
			qs[j/2+l] = L[j+l] | L[j+l+32]<<4
		}
	}
}
