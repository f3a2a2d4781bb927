package ref

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/x448/float16"
)

func TestF16KnownValues(t *testing.T) {
	cases := []struct {
		f    float32
		want uint16
	}{
		{0, 0x0000},
		{float32(math.Copysign(0, -1)), 0x8000},
		{1, 0x3c00},
		{-2, 0xc000},
		{65504, 0x7bff},                       // largest finite
		{65520, 0x7c00},                       // halfway to 2^16 ties to even: Inf
		{65519.99, 0x7bff},                    // just below the tie
		{1 + 1.0/2048, 0x3c00},                // half an ulp above 1 ties to even (1)
		{1 + 3.0/2048, 0x3c02},                // 1.5 ulp ties to the even 2 ulp
		{1 + 1.0/2048 + 1.0/65536, 0x3c01},    // just above the tie rounds up
		{float32(math.Ldexp(1, -24)), 0x0001}, // smallest subnormal
		{float32(math.Ldexp(1, -25)), 0x0000}, // half of it ties to even (zero)
		{float32(math.Ldexp(1.5, -25)), 0x0001},
		{float32(math.Ldexp(1, -14)), 0x0400},      // smallest normal
		{float32(math.Ldexp(1023.5, -24)), 0x0400}, // subnormal rounding carries into the normal range
		{float32(math.Inf(1)), 0x7c00},
		{float32(math.Inf(-1)), 0xfc00},
		{1e10, 0x7c00},
	}
	for _, c := range cases {
		if got := F32ToF16(c.f); got != c.want {
			t.Errorf("F32ToF16(%g) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
	if h := F32ToF16(float32(math.NaN())); h&0x7c00 != 0x7c00 || h&0x3ff == 0 {
		t.Errorf("F32ToF16(NaN) = %#04x, not a NaN", h)
	}
	if v := F16ToF32(0x0001); v != float32(math.Ldexp(1, -24)) {
		t.Errorf("F16ToF32(0x0001) = %g", v)
	}
}

// Every finite F16 value widens and narrows back to itself.
func TestF16RoundTripAll(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := F16ToF32(uint16(h))
		if uint16(h)&0x7c00 == 0x7c00 && uint16(h)&0x3ff != 0 {
			if !math.IsNaN(float64(f)) {
				t.Fatalf("F16ToF32(%#04x) = %g, want NaN", h, f)
			}
			continue
		}
		if want := float16.Frombits(uint16(h)).Float32(); math.Float32bits(f) != math.Float32bits(want) {
			t.Fatalf("F16ToF32(%#04x) = %g, want %g", h, f, want)
		}
		if back := F32ToF16(f); back != uint16(h) {
			t.Fatalf("F32ToF16(F16ToF32(%#04x)) = %#04x", h, back)
		}
	}
}

// Random float32 bit patterns round like x448/float16 (round to nearest even).
func TestF16MatchesX448(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		f := math.Float32frombits(r.Uint32())
		if math.IsNaN(float64(f)) {
			continue
		}
		if got, want := F32ToF16(f), float16.Fromfloat32(f).Bits(); got != want {
			t.Fatalf("F32ToF16(%g [%#08x]) = %#04x, x448 says %#04x", f, math.Float32bits(f), got, want)
		}
	}
}
