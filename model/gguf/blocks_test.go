package gguf

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/x448/float16"
)

// Hand-built blocks: each test writes a block's bytes from the layout in
// ggml-common.h and states the values the format definition gives them,
// worked out by hand in the comments. Image-level tests miss misplaced
// sub-block scales (a misread Q4_K scale moves a tiny model's image by
// under 1 LSB), so every type is pinned here.

const (
	h0     = 0x0000 // 0
	hNeg0  = 0x8000 // -0
	hHalf  = 0x3800 // 0.5
	hQuart = 0x3400 // 0.25
	hOne   = 0x3c00 // 1
	hTwo   = 0x4000 // 2
	hMOne  = 0xbc00 // -1
	hTen   = 0x4900 // 10
	hMax   = 0x7bff // 65504, the largest finite half
	hMMax  = 0xfbff // -65504
	hTiny  = 0x0001 // 2^-24, the smallest subnormal
)

func putH(b []byte, h uint16) { binary.LittleEndian.PutUint16(b, h) }

func decode(t *testing.T, typ Type, b []byte) []float32 {
	t.Helper()
	y := make([]float32, len(b)/typ.BlockBytes()*typ.BlockSize())
	require.NoError(t, Dequantize(typ, b, y))
	for i, v := range y {
		require.False(t, math.IsNaN(float64(v)) || math.IsInf(float64(v), 0), "element %d is %v", i, v)
	}
	return y
}

func TestBlockQ8_0(t *testing.T) {
	b := make([]byte, 34)
	putH(b, hHalf)
	qs := []int8{-128, -127, -1, 0, 1, 2, 126, 127}
	for i, q := range qs {
		b[2+i] = byte(q)
	}
	y := decode(t, Q8_0, b)
	// q * 0.5
	assert.Equal(t, []float32{-64, -63.5, -0.5, 0, 0.5, 1, 63, 63.5}, y[:8])
	assert.Equal(t, make([]float32, 24), y[8:])

	putH(b, hMax) // the largest magnitude: -128 * 65504
	y = decode(t, Q8_0, b)
	assert.Equal(t, float32(-8384512), y[0])
	assert.Equal(t, float32(127*65504), y[7])

	putH(b, h0) // a zero scale zeroes the block
	for _, v := range decode(t, Q8_0, b) {
		assert.Zero(t, v)
	}
}

func TestBlockQ4_0(t *testing.T) {
	b := make([]byte, 18)
	putH(b, hTwo)
	// qs[j]: low nibble j (element j), high nibble 15-j (element j+16).
	for j := range 16 {
		b[2+j] = byte(j) | byte(15-j)<<4
	}
	y := decode(t, Q4_0, b)
	for j := range 16 {
		assert.Equal(t, float32((j-8)*2), y[j], "element %d", j)       // (j-8)*2: -16 .. 14
		assert.Equal(t, float32((7-j)*2), y[j+16], "element %d", j+16) // (15-j-8)*2
	}
	putH(b, hMOne) // negative scale flips the signs: element 0 = (0-8)*-1
	y = decode(t, Q4_0, b)
	assert.Equal(t, float32(8), y[0])
	assert.Equal(t, float32(-7), y[16])
}

func TestBlockQ4_1(t *testing.T) {
	b := make([]byte, 20)
	putH(b, hQuart)
	putH(b[2:], hMOne)
	for j := range 16 {
		b[4+j] = byte(j) | byte(15-j)<<4
	}
	y := decode(t, Q4_1, b)
	// q*0.25 - 1: element 0 (q 0) -1, element 15 (q 15) 2.75, element 16 (q 15) 2.75, element 31 (q 0) -1.
	assert.Equal(t, float32(-1), y[0])
	assert.Equal(t, float32(-0.75), y[1])
	assert.Equal(t, float32(2.75), y[15])
	assert.Equal(t, float32(2.75), y[16])
	assert.Equal(t, float32(-1), y[31])
	putH(b, h0) // zero scale: every element is the min
	for _, v := range decode(t, Q4_1, b) {
		assert.Equal(t, float32(-1), v)
	}
}

func TestBlockQ5_0(t *testing.T) {
	b := make([]byte, 22)
	putH(b, hOne)
	// qh bit j is element j's fifth bit: set bits 0 and 31 (elements 0
	// and 31) and 17 (element 17).
	binary.LittleEndian.PutUint32(b[2:], 1|1<<17|1<<31)
	for j := range 16 {
		b[6+j] = 0xf0 // low nibbles 0, high nibbles 15
	}
	y := decode(t, Q5_0, b)
	assert.Equal(t, float32(0), y[0])   // (0|16)-16
	assert.Equal(t, float32(-16), y[1]) // 0-16
	assert.Equal(t, float32(-1), y[16]) // 15-16
	assert.Equal(t, float32(15), y[17]) // (15|16)-16
	assert.Equal(t, float32(15), y[31]) // (15|16)-16
	putH(b, hNeg0)
	for _, v := range decode(t, Q5_0, b) {
		assert.Zero(t, v)
	}
}

func TestBlockQ5_1(t *testing.T) {
	b := make([]byte, 24)
	putH(b, hHalf)
	putH(b[2:], hTen)
	binary.LittleEndian.PutUint32(b[4:], 0xffff0000) // fifth bit on elements 16-31
	for j := range 16 {
		b[8+j] = byte(j) | 0xf0
	}
	y := decode(t, Q5_1, b)
	// q*0.5 + 10: element j<16 q=j; element j>=16 q = 15|16 = 31 -> 25.5.
	for j := range 16 {
		assert.Equal(t, float32(j)*0.5+10, y[j])
		assert.Equal(t, float32(25.5), y[16+j])
	}
}

func TestBlockQ2_K(t *testing.T) {
	b := make([]byte, 84)
	// Group g (16 elements each, in order): scale g, min 15-g.
	for g := range 16 {
		b[g] = byte(g) | byte(15-g)<<4
	}
	// Every qs byte 0b11_10_01_00: the 2-bit field at shift 2s holds s.
	// Within each 128 elements, groups 2s and 2s+1 read shift 2s, so
	// group g's level is (g%8)/2.
	for i := 16; i < 80; i++ {
		b[i] = 0xe4
	}
	putH(b[80:], hOne)
	putH(b[82:], hHalf)
	y := decode(t, Q2_K, b)
	for g := range 16 {
		q := (g % 8) / 2
		want := float32(g*q) - 0.5*float32(15-g) // d*scale*q - dmin*min
		for l := range 16 {
			require.Equal(t, want, y[16*g+l], "group %d element %d", g, l)
		}
	}
}

// q3Block returns a Q3_K block with d=1, every 2-bit level 1 (qs 0x55),
// every hmask bit set, and all 16 scales 0 (stored 32: low nibble 0, top
// bits 0b10, so scale bytes 0-7 are 0x00 and 8-11 are 0xAA).
func q3Block() []byte {
	b := make([]byte, 110)
	for i := range 32 {
		b[i] = 0xff
	}
	for i := 32; i < 96; i++ {
		b[i] = 0x55
	}
	for i := 104; i < 108; i++ {
		b[i] = 0xaa
	}
	putH(b[108:], hOne)
	return b
}

func TestBlockQ3_K(t *testing.T) {
	// Scale i's low nibble sits in byte i (i < 8) or the high nibble of
	// byte i-8; its top 2 bits at bit 2*(i/4) of byte 8+i%4. Group i is
	// elements 16i..16i+15.
	for i := range 16 {
		// Stored 37 = 0b10_0101: scale 5, top bits unchanged.
		b := q3Block()
		if i < 8 {
			b[96+i] = 0x05
		} else {
			b[96+i-8] = 0x50
		}
		y := decode(t, Q3_K, b)
		for e, v := range y {
			want := float32(0)
			if e/16 == i {
				want = 5 // 1 * 5 * level 1
			}
			require.Equal(t, want, v, "scale %d low nibble: element %d", i, e)
		}
		// Stored 0: top bits cleared, scale -32.
		b = q3Block()
		b[104+i%4] &^= 3 << (2 * (i / 4))
		y = decode(t, Q3_K, b)
		for e, v := range y {
			want := float32(0)
			if e/16 == i {
				want = -32
			}
			require.Equal(t, want, v, "scale %d top bits: element %d", i, e)
		}
	}
	// hmask: bit k of byte j is the high bit of the element at
	// 128*(k/4) + 32*(k%4) + j (j < 32); clearing it subtracts 4.
	for _, c := range []struct{ byteIdx, bit, elem int }{{0, 0, 0}, {17, 0, 17}, {5, 3, 101}, {31, 7, 255}, {16, 4, 144}} {
		b := q3Block()
		for i := 96; i < 104; i++ {
			b[i] = 0x11 // every scale stored 33: scale 1 (top bits stay 0b10)
		}
		b[c.byteIdx] &^= 1 << c.bit
		y := decode(t, Q3_K, b)
		for e, v := range y {
			want := float32(1) // scale 1 * level 1
			if e == c.elem {
				want = -3 // 1 * (1 - 4)
			}
			require.Equal(t, want, v, "hmask byte %d bit %d: element %d", c.byteIdx, c.bit, e)
		}
	}
}

// k4Scales packs scales [1 2 3 4 17 33 49 63] and mins [0 5 10 15 20 40
// 60 63] by hand: bytes 0-3 scale j | top2(scale j+4)<<6, bytes 4-7 min j
// | top2(min j+4)<<6, bytes 8-11 low4(scale j+4) | low4(min j+4)<<4.
var k4Scales = []byte{0x41, 0x82, 0xc3, 0xc4, 0x40, 0x85, 0xca, 0xcf, 0x41, 0x81, 0xc1, 0xff}

func TestBlockQ4_K(t *testing.T) {
	b := make([]byte, 144)
	putH(b, hOne)
	putH(b[2:], hHalf)
	copy(b[4:], k4Scales)
	for i := 16; i < 144; i++ {
		b[i] = 0x21 // low nibble 1 (groups 0, 2, 4, 6), high nibble 2 (groups 1, 3, 5, 7)
	}
	y := decode(t, Q4_K, b)
	// d*scale*q - dmin*min, group g = elements 32g..32g+31:
	// 1*1-0, 2*2-2.5, 3*1-5, 4*2-7.5, 17*1-10, 33*2-20, 49*1-30, 63*2-31.5
	want := []float32{1, 1.5, -2, 0.5, 7, 46, 19, 94.5}
	for e, v := range y {
		require.Equal(t, want[e/32], v, "element %d", e)
	}
	putH(b, h0)
	putH(b[2:], h0)
	for _, v := range decode(t, Q4_K, b) {
		require.Zero(t, v)
	}
}

func TestBlockQ5_K(t *testing.T) {
	b := make([]byte, 176)
	putH(b, hOne)
	putH(b[2:], hHalf)
	copy(b[4:], k4Scales)
	for i := 16; i < 48; i++ {
		b[i] = 0xa5 // qh bit g adds 16 to group g: groups 0, 2, 5, 7
	}
	for i := 48; i < 176; i++ {
		b[i] = 0x21
	}
	y := decode(t, Q5_K, b)
	// As Q4_K with levels 17, 2, 17, 2, 1, 18, 1, 18:
	// 1*17-0, 2*2-2.5, 3*17-5, 4*2-7.5, 17*1-10, 33*18-20, 49*1-30, 63*18-31.5
	want := []float32{17, 1.5, 46, 0.5, 7, 574, 19, 1102.5}
	for e, v := range y {
		require.Equal(t, want[e/32], v, "element %d", e)
	}
}

func TestBlockQ6_K(t *testing.T) {
	b := make([]byte, 210)
	putH(b[208:], hQuart)
	// Group k (elements 16k..16k+15) has scale k-8.
	for k := range 16 {
		b[192+k] = byte(int8(k - 8))
	}
	// All levels 0 (stored 0 - 32): 0.25*(k-8)*(-32) = -8(k-8).
	y := decode(t, Q6_K, b)
	for e, v := range y {
		require.Equal(t, float32(-8*(e/16-8)), v, "element %d", e)
	}
	// ql 0x3A, qh 0b11_10_01_00: per 128 elements the quarters read
	// ql[l] low | qh bits 0-1 -> 10-32 = -22; ql[l+32] low | bits 2-3 -> 26-32 = -6;
	// ql[l] high | bits 4-5 -> 35-32 = 3; ql[l+32] high | bits 6-7 -> 51-32 = 19.
	for i := range 128 {
		b[i] = 0x3a
	}
	for i := 128; i < 192; i++ {
		b[i] = 0xe4
	}
	for k := range 16 {
		b[192+k] = 4 // scale 4: value = 0.25*4*q = q
	}
	y = decode(t, Q6_K, b)
	levels := []float32{-22, -6, 3, 19}
	for e, v := range y {
		require.Equal(t, levels[(e%128)/32], v, "element %d", e)
	}
	putH(b[208:], hMMax) // the largest magnitude: -65504 * 127 * 19
	b[192] = 127
	y = decode(t, Q6_K, b)
	assert.Equal(t, float32(-65504*127)*-22, y[0])
}

func TestBlockPlainTypes(t *testing.T) {
	f16 := []byte{0x00, 0x3c, 0x01, 0x00, 0x00, 0x80, 0xff, 0x7b, 0x55, 0x35}
	y := decode(t, F16, f16)
	assert.Equal(t, []float32{1, 1.0 / (1 << 24), 0, 65504, 0.33325195}, y)
	assert.True(t, math.Signbit(float64(y[2])))
	bf16 := []byte{0x80, 0x3f, 0x00, 0xc0, 0x49, 0x40}
	assert.Equal(t, []float32{1, -2, 3.140625}, decode(t, BF16, bf16))
	f32 := binary.LittleEndian.AppendUint32(nil, math.Float32bits(-1.5))
	assert.Equal(t, []float32{-1.5}, decode(t, F32, f32))
}

// Every half converts exactly; float32 -> half rounds to nearest even,
// checked against x448/float16 on every half, every midpoint between
// neighbours and a sweep of float32 bit patterns.
func TestHalfConversions(t *testing.T) {
	for h := range 1 << 16 {
		want := float16.Frombits(uint16(h)).Float32()
		got := HalfToFloat(uint16(h))
		if math.IsNaN(float64(want)) {
			require.True(t, math.IsNaN(float64(got)), "%#04x", h)
			continue
		}
		require.Equal(t, math.Float32bits(want), math.Float32bits(got), "%#04x", h)
		require.Equal(t, uint16(h), FloatToHalf(got), "%#04x round trip", h)
		// the midpoint to the next half up (ties go to the even one)
		if h&0x7fff < 0x7bff {
			next := HalfToFloat(uint16(h) + 1)
			mid := float32((float64(got) + float64(next)) / 2)
			require.Equal(t, float16.Fromfloat32(mid).Bits(), FloatToHalf(mid), "midpoint above %#04x", h)
		}
	}
	for u := uint32(0); u < 1<<32-1<<20; u += 1<<20 - 7 {
		f := math.Float32frombits(u)
		if math.IsNaN(float64(f)) {
			continue
		}
		require.Equal(t, float16.Fromfloat32(f).Bits(), FloatToHalf(f), "%#08x", u)
	}
}

func TestDequantizeErrors(t *testing.T) {
	y := make([]float32, 32)
	assert.Error(t, Dequantize(Q8_0, make([]byte, 33), y), "short block")
	assert.Error(t, Dequantize(Q8_0, make([]byte, 34), y[:31]), "not whole blocks")
	assert.Error(t, Dequantize(IQ2_XXS, make([]byte, 66), make([]float32, 256)), "unsupported type")
	assert.Error(t, Quantize(Q8_0, []float32{float32(math.NaN())}, nil))
	x := make([]float32, 32)
	x[3] = float32(math.Inf(-1))
	assert.ErrorContains(t, Quantize(Q4_0, x, make([]byte, 18)), "element 3")
	assert.Error(t, Quantize(Q6_K, make([]float32, 256), make([]byte, 210)), "no Q6_K encoder")
}
