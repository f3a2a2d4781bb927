package ref

import (
	"math"
	"testing"

	"github.com/zimage/zimage/engine"
)

func TestRMSNormHand(t *testing.T) {
	b := New()
	// Row [3, 4]: mean square 12.5, 1/sqrt(12.5) = 0.28284271; gamma [1, 2].
	x := tensor(t, b, "x", engine.F32, []float32{3, 4, 0, 0}, 2, 2)
	g := tensor(t, b, "g", engine.F32, []float32{1, 2}, 2)
	d := tensor(t, b, "d", engine.F32, nil, 2, 2)
	must(t, b.RMSNorm(d, x, g, 0))
	near(t, "rms_norm", read(t, b, d), []float32{0.8485281, 2.2627417, 0, 0}, 1e-6)
	// No gamma, eps 1 on a zero row stays 0; eps shifts the mean square.
	must(t, b.RMSNorm(d, x, nil, 0.5))
	near(t, "rms_norm eps", read(t, b, d), []float32{3 / float32(math.Sqrt(13)), 4 / float32(math.Sqrt(13)), 0, 0}, 1e-6)
	if err := b.RMSNorm(d, x, tensor(t, b, "g3", engine.F32, nil, 3), 0); err == nil {
		t.Error("gamma of the wrong length accepted")
	}
}

func TestRopeHand(t *testing.T) {
	b := New()
	// One token, one head of D=4: pairs (0,2), (1,3) for half, (0,1), (2,3)
	// interleaved. Angles 90° (cos 0, sin 1) and 0°.
	x := tensor(t, b, "x", engine.F32, []float32{1, 2, 3, 4}, 1, 1, 4)
	cos := tensor(t, b, "cos", engine.F32, []float32{0, 1}, 1, 1, 2)
	sin := tensor(t, b, "sin", engine.F32, []float32{1, 0}, 1, 1, 2)
	d := tensor(t, b, "d", engine.F32, nil, 1, 1, 4)
	must(t, b.Rope(d, x, cos, sin, 1, engine.RopeHalf))
	// (1, 3) -> (1·0 - 3·1, 1·1 + 3·0) = (-3, 1); (2, 4) unrotated.
	near(t, "rope half", read(t, b, d), []float32{-3, 2, 1, 4}, 1e-6)
	must(t, b.Rope(d, x, cos, sin, 1, engine.RopeInterleaved))
	// (1, 2) -> (-2, 1); (3, 4) unrotated.
	near(t, "rope interleaved", read(t, b, d), []float32{-2, 1, 3, 4}, 1e-6)
	// In place, two heads sharing the table, per-batch tables.
	x2 := tensor(t, b, "x2", engine.F32, []float32{1, 2, 1, 2, 5, 6, 5, 6}, 2, 1, 4)
	cos2 := tensor(t, b, "cos2", engine.F32, []float32{0, -1}, 2, 1, 1)
	sin2 := tensor(t, b, "sin2", engine.F32, []float32{1, 0}, 2, 1, 1)
	must(t, b.Rope(x2, x2, cos2, sin2, 2, engine.RopeInterleaved))
	near(t, "rope in place", read(t, b, x2), []float32{-2, 1, -2, 1, -5, -6, -5, -6}, 1e-6)
	if err := b.Rope(d, x, cos2, sin2, 1, engine.RopeHalf); err == nil {
		t.Error("a table of the wrong length accepted")
	}
}

func TestSwiGLUAndTanhHand(t *testing.T) {
	b := New()
	g := tensor(t, b, "g", engine.F32, []float32{0, 1, -2}, 3)
	u := tensor(t, b, "u", engine.F32, []float32{5, 2, 3}, 3)
	must(t, b.SwiGLU(g, g, u))
	// silu(1) = 0.7310586, silu(-2) = -0.23840584.
	near(t, "swiglu", read(t, b, g), []float32{0, 1.4621172, -0.7152175}, 1e-6)
	x := tensor(t, b, "x", engine.F32, []float32{0, 0.5, -20}, 3)
	must(t, b.Unary(x, x, engine.Tanh))
	near(t, "tanh", read(t, b, x), []float32{0, 0.46211716, -1}, 1e-6)
}

func TestAttentionGroupedAndKeyLens(t *testing.T) {
	b := New()
	// Two query heads share one key/value head (D=1). Keys score 0 and
	// ln 3 for query 1 (scale 1): weights 1/4, 3/4 over values 2, 6 -> 5.
	q := tensor(t, b, "q", engine.F32, []float32{1, 0}, 1, 1, 2)
	k := tensor(t, b, "k", engine.F32, []float32{0, float32(math.Log(3))}, 1, 2, 1)
	v := tensor(t, b, "v", engine.F32, []float32{2, 6}, 1, 2, 1)
	d := tensor(t, b, "d", engine.F32, nil, 1, 1, 2)
	must(t, b.Attention(d, q, k, v, engine.AttentionOptions{Heads: 2, KVHeads: 1, Scale: 1}))
	// Head 0 (q=1): weights 1/4, 3/4 -> 5; head 1 (q=0): uniform -> 4.
	near(t, "grouped", read(t, b, d), []float32{5, 4}, 1e-6)
	// Masking the second key leaves the first value.
	must(t, b.Attention(d, q, k, v, engine.AttentionOptions{Heads: 2, KVHeads: 1, Scale: 1, KeyLens: []int{1}}))
	near(t, "key lengths", read(t, b, d), []float32{2, 2}, 1e-6)
	for _, o := range []engine.AttentionOptions{
		{Heads: 2, KVHeads: 1, KeyLens: []int{3}},
		{Heads: 2, KVHeads: 1, KeyLens: []int{0}},
		{Heads: 2, KVHeads: 1, KeyLens: []int{1, 1}},
		{Heads: 3, KVHeads: 2},
	} {
		if err := b.Attention(d, q, k, v, o); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}
