package gguf

import (
	"encoding/binary"
	"fmt"
	"math"
)

// This file encodes as ggml's quantize_row_*_ref (ggml-quants.c) does,
// which is what ggml_quantize_chunk runs without an importance matrix
// (stable-diffusion.cpp's convert, llama.cpp's quantize without --imatrix):
// same float32 operations in the same order, each rounded once (see the
// note on fused multiply-add in dequant.go), same integer conversions.

// CanQuantize reports whether Quantize encodes t.
func CanQuantize(t Type) bool {
	switch t {
	case F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K:
		return true
	}
	return false
}

// Quantize encodes src, whole blocks of t, into dst, which must hold
// exactly RowBytes(len(src)) bytes. Values must be finite (ggml's encoders
// turn NaN into garbage); the error names the first that is not.
func Quantize(t Type, src []float32, dst []byte) error {
	if !CanQuantize(t) {
		return fmt.Errorf("gguf: quantize: type %s is not supported (want F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 or Q4_K)", t)
	}
	need, ok := t.RowBytes(len(src))
	if !ok {
		return fmt.Errorf("gguf: quantize %s: %d elements are not whole %d-element blocks", t, len(src), t.BlockSize())
	}
	if len(dst) != need {
		return fmt.Errorf("gguf: quantize %s: %d bytes for %d elements, want %d", t, len(dst), len(src), need)
	}
	for i, v := range src {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("gguf: quantize %s: element %d is %v", t, i, v)
		}
	}
	le := binary.LittleEndian
	switch t {
	case F32:
		for i, v := range src {
			le.PutUint32(dst[4*i:], math.Float32bits(v))
		}
		return nil
	case F16:
		for i, v := range src {
			le.PutUint16(dst[2*i:], FloatToHalf(v))
		}
		return nil
	case BF16:
		for i, v := range src {
			le.PutUint16(dst[2*i:], floatToBF16(v))
		}
		return nil
	}
	bs, bb := t.BlockSize(), t.BlockBytes()
	enc := map[Type]func(x []float32, y []byte){
		Q8_0: quantQ8_0, Q4_0: quantQ4_0, Q4_1: quantQ4_1, Q5_0: quantQ5_0, Q5_1: quantQ5_1, Q4_K: quantQ4_K,
	}[t]
	for i := 0; i*bs < len(src); i++ {
		enc(src[i*bs:(i+1)*bs], dst[i*bb:(i+1)*bb])
	}
	return nil
}

// floatToBF16 rounds to nearest even, as ggml_compute_fp32_to_bf16 does
// for finite values.
func floatToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}

func putHalf(b []byte, f float32) { binary.LittleEndian.PutUint16(b, FloatToHalf(f)) }

func abs32(f float32) float32 { return math.Float32frombits(math.Float32bits(f) &^ (1 << 31)) }

// recip is ggml's `d ? 1.0f/d : 0.0f`.
func recip(d float32) float32 {
	if d == 0 {
		return 0
	}
	return 1 / d
}

// roundf rounds half away from zero, like C's roundf.
func roundf(f float32) float32 { return float32(math.Round(float64(f))) }

func quantQ8_0(x []float32, y []byte) {
	var amax float32
	for _, v := range x {
		amax = max(amax, abs32(v))
	}
	d := amax / 127
	id := recip(d)
	putHalf(y, d)
	for j, v := range x {
		y[2+j] = byte(int8(roundf(v * id)))
	}
}

// absMax returns the value of largest magnitude (the first of equals), as
// the Q4_0/Q5_0 encoders pick it: its sign sets the sign of the scale.
func absMax(x []float32) float32 {
	var amax, m float32
	for _, v := range x {
		if amax < abs32(v) {
			amax, m = abs32(v), v
		}
	}
	return m
}

// minMax returns the smallest and largest values.
func minMax(x []float32) (lo, hi float32) {
	lo, hi = math.MaxFloat32, -math.MaxFloat32
	for _, v := range x {
		if v < lo {
			lo = v
		}
		if v > hi {
			hi = v
		}
	}
	return lo, hi
}

func quantQ4_0(x []float32, y []byte) {
	d := absMax(x) / -8
	id := recip(d)
	putHalf(y, d)
	for j := range 16 {
		q0 := min(15, int(int8(float32(x[j]*id)+8.5)))
		q1 := min(15, int(int8(float32(x[j+16]*id)+8.5)))
		y[2+j] = byte(q0) | byte(q1)<<4
	}
}

func quantQ4_1(x []float32, y []byte) {
	lo, hi := minMax(x)
	d := (hi - lo) / 15
	id := recip(d)
	putHalf(y, d)
	putHalf(y[2:], lo)
	for j := range 16 {
		q0 := min(15, int(int8(float32((x[j]-lo)*id)+0.5)))
		q1 := min(15, int(int8(float32((x[j+16]-lo)*id)+0.5)))
		y[4+j] = byte(q0) | byte(q1)<<4
	}
}

func quantQ5_0(x []float32, y []byte) {
	d := absMax(x) / -16
	id := recip(d)
	putHalf(y, d)
	var qh uint32
	for j := range 16 {
		q0 := byte(min(31, int(int8(float32(x[j]*id)+16.5))))
		q1 := byte(min(31, int(int8(float32(x[j+16]*id)+16.5))))
		y[6+j] = q0&0x0f | (q1&0x0f)<<4
		qh |= uint32(q0>>4&1) << j
		qh |= uint32(q1>>4&1) << (j + 16)
	}
	binary.LittleEndian.PutUint32(y[2:], qh)
}

func quantQ5_1(x []float32, y []byte) {
	lo, hi := minMax(x)
	d := (hi - lo) / 31
	id := recip(d)
	putHalf(y, d)
	putHalf(y[2:], lo)
	var qh uint32
	for j := range 16 {
		// ggml casts to uint8 without clamping (the scale keeps q <= 31).
		q0 := uint8(int(float32((x[j]-lo)*id) + 0.5))
		q1 := uint8(int(float32((x[j+16]-lo)*id) + 0.5))
		y[8+j] = q0&0x0f | (q1&0x0f)<<4
		qh |= uint32(q0>>4&1) << j
		qh |= uint32(q1>>4&1) << (j + 16)
	}
	binary.LittleEndian.PutUint32(y[4:], qh)
}

// nearestInt is ggml's nearest_int: adding 1.5*2^23 leaves the rounded
// (to even) integer in the low mantissa bits, for |f| <= 4194303.
func nearestInt(f float32) int {
	v := f + 12582912
	return int(int32(math.Float32bits(v)&0x007fffff) - 0x00400000)
}

// makeQKX2 is ggml's make_qkx2_quants with use_mad false: it picks a scale
// and a (non-positive) min for x at levels 0..nmax, trying nstep+1
// candidate scales around the range and keeping the one with the smallest
// weighted squared error. L receives the levels; it returns scale and
// -min.
func makeQKX2(nmax int, x, weights []float32, L, laux []uint8, rmin, rdelta float32, nstep int) (scale, theMin float32) {
	n := len(x)
	lo, hi := x[0], x[0]
	sumW := weights[0]
	sumX := sumW * x[0]
	for i := 1; i < n; i++ {
		if x[i] < lo {
			lo = x[i]
		}
		if x[i] > hi {
			hi = x[i]
		}
		w := weights[i]
		sumW += w
		sumX += float32(w * x[i])
	}
	if lo > 0 {
		lo = 0
	}
	if hi == lo {
		for i := range L[:n] {
			L[i] = 0
		}
		return 0, -lo
	}
	fmax := float32(nmax)
	iscale := fmax / (hi - lo)
	scale = 1 / iscale
	var bestErr float32
	for i := range n {
		l := nearestInt(iscale * (x[i] - lo))
		L[i] = uint8(max(0, min(nmax, l)))
		diff := float32(float32(scale*float32(L[i]))+lo) - x[i]
		bestErr += float32(weights[i] * float32(diff*diff))
	}
	for is := 0; is <= nstep; is++ {
		iscale = (float32(rmin+float32(rdelta*float32(is))) + fmax) / (hi - lo)
		var sumL, sumL2, sumXL float32
		for i := range n {
			l := max(0, min(nmax, nearestInt(iscale*(x[i]-lo))))
			laux[i] = uint8(l)
			w := weights[i]
			fl := float32(l)
			sumL += float32(w * fl)
			sumL2 += float32(float32(w*fl) * fl)
			sumXL += float32(float32(w*fl) * x[i])
		}
		D := float32(sumW*sumL2) - float32(sumL*sumL)
		if D <= 0 {
			continue
		}
		thisScale := (float32(sumW*sumXL) - float32(sumX*sumL)) / D
		thisMin := (float32(sumL2*sumX) - float32(sumL*sumXL)) / D
		if thisMin > 0 {
			thisMin = 0
			thisScale = sumXL / sumL2
		}
		var cur float32
		for i := range n {
			diff := float32(float32(thisScale*float32(laux[i]))+thisMin) - x[i]
			cur += float32(weights[i] * float32(diff*diff))
		}
		if cur < bestErr {
			copy(L[:n], laux[:n])
			bestErr, scale, lo = cur, thisScale, thisMin
		}
	}
	return scale, -lo
}

// quantQ4_K is quantize_row_q4_K_ref: per group of 32 a scale and min by
// makeQKX2 (weights |x| + rms), the 8 scales and 8 mins quantized to 6
// bits against the largest of each (super-block d and dmin in F16), then
// every element re-quantized against its group's decoded scale and min.
func quantQ4_K(x []float32, y []byte) {
	var (
		L       [QK_K]uint8
		laux    [32]uint8
		weights [32]float32
		scales  [8]float32
		mins    [8]float32
	)
	var maxScale, maxMin float32
	for j := range 8 {
		g := x[32*j : 32*j+32]
		var sumX2 float32
		for _, v := range g {
			sumX2 += float32(v * v)
		}
		avX := float32(math.Sqrt(float64(sumX2 / 32)))
		for l, v := range g {
			weights[l] = avX + abs32(v)
		}
		scales[j], mins[j] = makeQKX2(15, g, weights[:], L[32*j:32*j+32], laux[:], -1, 0.1, 20)
		if scales[j] > maxScale {
			maxScale = scales[j]
		}
		if mins[j] > maxMin {
			maxMin = mins[j]
		}
	}
	var invScale, invMin float32
	if maxScale > 0 {
		invScale = 63 / maxScale
	}
	if maxMin > 0 {
		invMin = 63 / maxMin
	}
	var ls, lm [8]uint8
	for j := range 8 {
		// ggml stores nearest_int into a uint8_t (wrapping) before
		// clamping to 63.
		ls[j] = min(63, uint8(nearestInt(invScale*scales[j])))
		lm[j] = min(63, uint8(nearestInt(invMin*mins[j])))
	}
	packQ4KScales(y[4:16], ls, lm)
	putHalf(y, maxScale/63)
	putHalf(y[2:], maxMin/63)
	requantQ4K(x, y, L[:])
}
