package rng

import "math"

// boxMuller16 turns 16 uniforms in [0,1) into 16 normals in place, bit for
// bit as torch 1.13's x86-64 build does it on an AVX2 CPU
// (normal_fill_16_AVX2): lanes j and j+8 form one pair; log, sin and cos
// are the Cephes-style float32 polynomials of avx_mathfun.h, evaluated with
// the fused multiply-adds that GCC contracts the intrinsics into.
func boxMuller16(d []float32) {
	_ = d[15]
	const twoPi = float32(2 * math.Pi)
	for j := 0; j < 8; j++ {
		u1 := 1 - d[j]
		u2 := d[j+8]
		radius := sqrt32(float32(-2 * log32(u1)))
		s, c := sincos32(float32(twoPi * u2))
		// fmadd(n, std=1, mean=0): adding +0 turns a -0 into +0.
		d[j] = float32(radius*c) + 0
		d[j+8] = float32(radius*s) + 0
	}
}

func sqrt32(x float32) float32 { return float32(math.Sqrt(float64(x))) }

// fma32 is a correctly rounded float32 fused multiply-add. The product is
// exact in float64; the sum is rounded once to float64, which can only
// mislead the final float32 rounding when it lands exactly on a float32
// midpoint, so that case is settled with the sum's rounding error.
func fma32(a, b, c float32) float32 {
	p := float64(float64(a) * float64(b)) // exact; the conversion forbids fusing
	s := p + float64(c)
	// TwoSum: err is the exact rounding error of s.
	bv := s - p
	err := (p - (s - bv)) + (float64(c) - bv)
	r := float32(s)
	if err == 0 || float64(r) == s {
		return r
	}
	// Neighbouring float32 on the other side of s.
	var o float32
	if float64(r) < s {
		o = math.Nextafter32(r, float32(math.Inf(1)))
	} else {
		o = math.Nextafter32(r, float32(math.Inf(-1)))
	}
	if mid := (float64(r) + float64(o)) / 2; mid != s {
		return r
	}
	// s is a float32 midpoint: the exact value lies on err's side.
	if (err > 0) == (o > r) {
		return o
	}
	return r
}

// Cephes constants of avx_mathfun.h (float32).
const (
	cephesSQRTHF = float32(0.707106781186547524)
	logP0        = float32(7.0376836292e-2)
	logP1        = float32(-1.1514610310e-1)
	logP2        = float32(1.1676998740e-1)
	logP3        = float32(-1.2420140846e-1)
	logP4        = float32(+1.4249322787e-1)
	logP5        = float32(-1.6668057665e-1)
	logP6        = float32(+2.0000714765e-1)
	logP7        = float32(-2.4999993993e-1)
	logP8        = float32(+3.3333331174e-1)
	logQ1        = float32(-2.12194440e-4)
	logQ2        = float32(0.693359375)

	minusDP1 = float32(-0.78515625)
	minusDP2 = float32(-2.4187564849853515625e-4)
	minusDP3 = float32(-3.77489497744594108e-8)
	sinP0    = float32(-1.9515295891e-4)
	sinP1    = float32(8.3321608736e-3)
	sinP2    = float32(-1.6666654611e-1)
	cosP0    = float32(2.443315711809948e-005)
	cosP1    = float32(-1.388731625493765e-003)
	cosP2    = float32(4.166664568298827e-002)
	fourOPi  = float32(1.27323954473516)
)

// log32 is log256_ps for one lane, valid for x in (0, 1] (1 - uniform).
func log32(x float32) float32 {
	if x <= 0 {
		return float32(math.NaN())
	}
	x = max(x, math.Float32frombits(0x00800000)) // cut off denormals
	bits := math.Float32bits(x)
	e := float32(int32(bits>>23)-0x7f) + 1
	x = math.Float32frombits(bits&^0x7f800000 | math.Float32bits(0.5)) // mantissa in [0.5, 1)
	if x < cephesSQRTHF {
		e--
		x = x - 1 + x
	} else {
		x = x - 1
	}
	z := float32(x * x)
	y := fma32(logP0, x, logP1)
	y = fma32(y, x, logP2)
	y = fma32(y, x, logP3)
	y = fma32(y, x, logP4)
	y = fma32(y, x, logP5)
	y = fma32(y, x, logP6)
	y = fma32(y, x, logP7)
	y = fma32(y, x, logP8)
	y = float32(y * x)
	y = fma32(y, z, float32(e*logQ1))
	y = fma32(-z, 0.5, y)
	return fma32(e, logQ2, x+y)
}

// sincos32 is sincos256_ps for one lane, for x >= 0 (2*pi*uniform).
func sincos32(x float32) (sin, cos float32) {
	j := int32(float32(x * fourOPi)) // truncation, as cvttps
	j = (j + 1) &^ 1
	y := float32(j)
	swapSin := j&4 != 0
	poly := j&2 == 0 // true: the sine polynomial gives sin
	swapCos := (j-2)&4 == 0

	// Extended precision modular arithmetic: x - y*pi/4 in three parts.
	x = fma32(y, minusDP1, x)
	x = fma32(y, minusDP2, x)
	x = fma32(y, minusDP3, x)

	z := float32(x * x)
	c := fma32(cosP0, z, cosP1)
	c = fma32(c, z, cosP2)
	c = float32(c * z)
	c = fma32(c, z, -float32(z*0.5))
	c = c + 1

	s := fma32(sinP0, z, sinP1)
	s = fma32(s, z, sinP2)
	s = float32(s * z)
	s = fma32(s, x, x)

	// The lanes blend the two polynomials by masking and adding a +0, which
	// turns a -0 into +0.
	if poly {
		sin, cos = s+0, c+0
	} else {
		sin, cos = c+0, s+0
	}
	if swapSin {
		sin = -sin
	}
	if swapCos {
		cos = -cos
	}
	return sin, cos
}
