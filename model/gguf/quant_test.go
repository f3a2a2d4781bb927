package gguf

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// randomRows draws rows of Gaussian data at a spread of scales, with some
// all-zero and constant blocks.
func randomRows(seed uint64, n int) []float32 {
	r := rand.New(rand.NewPCG(seed, 1))
	x := make([]float32, n)
	for i := range x {
		scale := math.Pow(10, float64(i/512%5)-3) // 1e-3 .. 10 per 512-element stretch
		x[i] = float32(r.NormFloat64() * scale)
	}
	for i := 64; i < 96; i++ {
		x[i] = 0
	}
	for i := 96; i < 128; i++ {
		x[i] = 0.75
	}
	return x
}

// TestQuantizeRoundTrip encodes random data, decodes it, and bounds each
// element's error by the block's own decoded step: half a step for a
// level inside the range, plus what rounding the F16 scale (and min) to
// 11 bits can add across the levels (|q| up to 2^bits, relative error
// 2^-11 each).
func TestQuantizeRoundTrip(t *testing.T) {
	x := randomRows(7, 8*512)
	for _, typ := range []Type{Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, F16, BF16, F32} {
		for _, weighted := range []bool{false, true} {
			size, _ := typ.RowBytes(len(x))
			q := make([]byte, size)
			if weighted {
				w := make([]float32, 512)
				for i := range w {
					w[i] = 1 + float32(i%7)
				}
				require.NoError(t, QuantizeWeighted(typ, x, q, 512, w))
			} else {
				require.NoError(t, Quantize(typ, x, q))
			}
			y := make([]float32, len(x))
			require.NoError(t, Dequantize(typ, q, y))
			worst := 0.0
			bs, bb := typ.BlockSize(), typ.BlockBytes()
			for b := 0; b*bs < len(x); b++ {
				blk := q[b*bb : (b+1)*bb]
				for i := b * bs; i < (b+1)*bs; i++ {
					bound := errorBound(typ, weighted, blk, i-b*bs, x[i])
					e := math.Abs(float64(x[i] - y[i]))
					require.LessOrEqual(t, e, bound, "%s weighted=%v element %d: %v -> %v", typ, weighted, i, x[i], y[i])
					worst = max(worst, e/max(bound, 1e-30))
				}
			}
			t.Logf("%s weighted=%v: worst error %.2f of its bound", typ, weighted, worst)
		}
	}
}

// errorBound is the largest error the format allows for element i of a
// block holding value x.
func errorBound(typ Type, weighted bool, blk []byte, i int, x float32) float64 {
	// An F16-stored scale or min is off by at most half an F16 ulp:
	// relative 2^-11 for normal halves, 2^-25 absolute for subnormal ones
	// (tiny blocks); slack doubles both.
	f16err := func(v float64) float64 { return math.Abs(v)/1024 + 1.0/(1<<24) }
	ax := math.Abs(float64(x))
	switch typ {
	case F32:
		return 0
	case F16:
		return ax/2048 + 1.0/(1<<25)
	case BF16:
		return ax / 256 // 8 significant bits: half an ulp is at most 2^-8 of the value
	case Q8_0:
		d := math.Abs(float64(half(blk)))
		return d/2 + 128*f16err(d)
	case Q4_0, Q5_0:
		d := math.Abs(float64(half(blk)))
		levels := map[Type]float64{Q4_0: 8, Q5_0: 16}[typ]
		if weighted {
			// make_qx_quants may pick a scale that puts the largest
			// magnitude past -nmax..nmax-1, where it is clamped: bounded
			// by the whole range.
			return d*levels*1.1 + levels*f16err(d)
		}
		// The largest magnitude takes level -nmax; a value of the other
		// sign as large would need +nmax, which clamps to nmax-1: up to
		// one whole step there.
		if math.Abs(float64(x)) > d*(levels-1) {
			return d + levels*f16err(d)
		}
		return d/2 + levels*f16err(d)
	case Q4_1, Q5_1:
		d, m := float64(half(blk)), float64(half(blk[2:]))
		levels := map[Type]float64{Q4_1: 15, Q5_1: 31}[typ]
		b := math.Abs(d)/2 + levels*f16err(d) + f16err(m)
		if weighted {
			// make_qkx3_quants' scale search may clamp the ends too
			b += math.Abs(d) * levels * 0.1
		}
		return b
	case Q4_K:
		s, m := scaleMinK4(i/32, blk[4:16])
		d := float64(half(blk)) * float64(s)
		dm := float64(half(blk[2:])) * float64(m)
		// Within the group's range [-dm, 15d-dm] the level is the nearest;
		// outside it, clamped: add the distance to the range end.
		lo, hi := -dm, 15*d-dm
		out := max(lo-float64(x), float64(x)-hi, 0)
		return math.Abs(d)/2 + out + 1e-6*(math.Abs(d)*15+math.Abs(dm))
	}
	return 0
}

// TestQuantizeShapes checks the argument checks and that Quantize and
// QuantizeWeighted agree where ggml ignores the weights.
func TestQuantizeShapes(t *testing.T) {
	x := randomRows(3, 1024)
	a, b := make([]byte, 1088), make([]byte, 1088)
	require.NoError(t, Quantize(Q8_0, x, a))
	require.NoError(t, QuantizeWeighted(Q8_0, x, b, 512, make([]float32, 512)))
	assert.Equal(t, a, b, "Q8_0 ignores importance weights")
	assert.Error(t, QuantizeWeighted(Q4_0, x, make([]byte, 576), 500, make([]float32, 500)), "rows not whole blocks")
	assert.Error(t, QuantizeWeighted(Q4_0, x, make([]byte, 576), 512, make([]float32, 10)), "wrong weight count")
	assert.Error(t, QuantizeWeighted(Q4_K, x, make([]byte, 576), 384, make([]float32, 384)), "rows not whole super-blocks")
	assert.Error(t, Quantize(Q4_0, x, make([]byte, 575)), "short output")
}
