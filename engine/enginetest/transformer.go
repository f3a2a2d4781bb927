package enginetest

import (
	"fmt"
	"math"
	"testing"

	"github.com/zimage/zimage/engine"
)

// The ops of the transformer text encoders and DiTs. Real shapes: the
// Qwen3-4B text encoder (hidden 2560, 32 query heads and 8 key/value heads
// of 128, up to 512 tokens, intermediate 9728), the Z-Image DiT (dim 3840,
// 30 heads of 128, FFN 10240; 1024 image tokens at 512², 4096 at 1024²,
// plus up to 512 caption tokens), and the tiny test models (DiT dim 384 =
// 3 heads of 128, FFN 1024; Qwen3 hidden 64 with 4 query heads and one
// key/value head of 32, intermediate 192).

// RMSNorm runs RMSNorm over the last dim, with and without gamma.
func RMSNorm(t *testing.T, b engine.Backend, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		shape engine.Shape
		big   bool
	}{
		{engine.Shape{1, 1}, false},
		{engine.Shape{3, 17}, false},
		{engine.Shape{2, 5, 2}, false},
		{engine.Shape{7, 3, 32}, false},       // tiny Qwen3 q/k norm, one row per head
		{engine.Shape{2, 33, 64}, false},      // tiny Qwen3 hidden
		{engine.Shape{1, 96, 384}, false},     // tiny DiT
		{engine.Shape{1056 * 30, 128}, false}, // DiT q/k norm at 512², per head
		{engine.Shape{1, 512, 2560}, false},   // Qwen3-4B hidden
		{engine.Shape{2, 1056, 3840}, true},   // DiT hidden at 512², CFG batch
		{engine.Shape{1, 4160, 3840}, true},   // DiT hidden at 1024²
	} {
		for _, gamma := range []bool{true, false} {
			t.Run(fmt.Sprintf("%v_gamma=%v", tc.shape, gamma), func(t *testing.T) {
				if tc.big {
					c.big(t)
				}
				checkRMSNorm(t, b, tc.shape, gamma)
			})
		}
	}
}

// checkRMSNorm checks RMSNorm (eps 1e-6, as Qwen3) against the reference;
// the input has an offset, as trained activations do.
func checkRMSNorm(t testing.TB, b engine.Backend, shape engine.Shape, gamma bool) {
	t.Helper()
	name := fmt.Sprintf("rms_norm %v gamma=%v", shape, gamma)
	e := newEnv(t, b, name, true)
	defer e.close()
	dim := shape[len(shape)-1]
	x := e.inputData("rms_norm.x", engine.F32, shape, offset(e.random(shape.NumElem(), 1), 0.5))
	var g *operand
	if gamma {
		g = e.inputData("rms_norm.gamma", engine.F32, engine.Shape{dim}, offset(e.random(dim, 0.5), 1))
	}
	d := e.output("rms_norm.dst", engine.F32, shape)
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.RMSNorm(tt(d), tt(x), tt(g), 1e-6)
	})
	e.checkFull(name, d, TolF32)
}

// Rope runs both pairings with tables shared by the batch and one per
// batch row, into a new tensor and in place.
func Rope(t *testing.T, b engine.Backend, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		batch, l, heads, d int
		big                bool
	}{
		{1, 1, 1, 2, false},
		{1, 3, 1, 2, false},
		{2, 17, 3, 8, false},     // odd heads
		{1, 5, 3, 6, false},      // D/2 odd: no vector path for either pairing
		{2, 7, 2, 12, false},     // D/2 = 6: vector path for interleaved pairs only
		{2, 33, 4, 32, false},    // tiny Qwen3 q (k: one head)
		{1, 96, 3, 128, false},   // tiny DiT
		{1, 512, 32, 128, false}, // Qwen3-4B q
		{1, 512, 8, 128, false},  // Qwen3-4B k
		{2, 1056, 30, 128, true}, // DiT at 512², CFG batch
		{1, 4160, 30, 128, true}, // DiT at 1024²
	} {
		for _, mode := range []engine.RopeMode{engine.RopeHalf, engine.RopeInterleaved} {
			for _, perBatch := range []bool{false, true} {
				if perBatch && tc.batch == 1 {
					continue
				}
				for _, inPlace := range []bool{false, true} {
					t.Run(fmt.Sprintf("b%d_l%d_h%dx%d_%v_perbatch=%v_inplace=%v", tc.batch, tc.l, tc.heads, tc.d, mode, perBatch, inPlace), func(t *testing.T) {
						if tc.big {
							c.big(t)
						}
						checkRope(t, b, tc.batch, tc.l, tc.heads, tc.d, mode, perBatch, inPlace)
					})
				}
			}
		}
	}
}

// checkRope checks Rope on x [batch, l, heads*d] with tables of angles in
// [-π, π) (one table per batch row when perBatch) against the reference.
func checkRope(t testing.TB, b engine.Backend, batch, l, heads, d int, mode engine.RopeMode, perBatch, inPlace bool) {
	t.Helper()
	name := fmt.Sprintf("rope b %d l %d heads %dx%d %v per batch=%v in place=%v", batch, l, heads, d, mode, perBatch, inPlace)
	e := newEnv(t, b, name, true)
	defer e.close()
	tb := 1
	if perBatch {
		tb = batch
	}
	angles := e.random(tb*l*d/2, math.Pi)
	cv, sv := make([]float32, len(angles)), make([]float32, len(angles))
	for i, a := range angles {
		cv[i], sv[i] = float32(math.Cos(float64(a))), float32(math.Sin(float64(a)))
	}
	shape := engine.Shape{batch, l, heads * d}
	x := e.input("rope.x", engine.F32, shape, 2)
	cos := e.inputData("rope.cos", engine.F32, engine.Shape{tb, l, d / 2}, cv)
	sin := e.inputData("rope.sin", engine.F32, engine.Shape{tb, l, d / 2}, sv)
	dst := x
	if !inPlace {
		dst = e.output("rope.dst", engine.F32, shape)
	}
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.Rope(tt(dst), tt(x), tt(cos), tt(sin), heads, mode)
	})
	e.checkFull(name, dst, TolF32)
}

// SwiGLU runs silu(gate) * up into a new tensor and in place into either
// operand.
func SwiGLU(t *testing.T, b engine.Backend, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		shape engine.Shape
		big   bool
	}{
		{engine.Shape{1}, false},
		{engine.Shape{17}, false},
		{engine.Shape{3, 5, 7}, false},
		{engine.Shape{2, 33, 192}, false},    // tiny Qwen3
		{engine.Shape{1, 96, 1024}, false},   // tiny DiT
		{engine.Shape{1, 512, 9728}, false},  // Qwen3-4B
		{engine.Shape{2, 1056, 10240}, true}, // DiT at 512², CFG batch
		// DiT at 1024²: 170 MB per operand, over a 128 MiB binding limit.
		{engine.Shape{1, 4160, 10240}, true},
	} {
		for dst := 0; dst < 3; dst++ {
			t.Run(fmt.Sprintf("%v_dst%d", tc.shape, dst), func(t *testing.T) {
				if tc.big {
					c.big(t)
					if dst != 0 {
						t.Skip("in place: covered by the small shapes")
					}
				}
				checkSwiGLU(t, b, tc.shape, dst)
			})
		}
	}
}

// checkSwiGLU checks SwiGLU into a new tensor (dst 0), into gate (1) or
// into up (2).
func checkSwiGLU(t testing.TB, b engine.Backend, shape engine.Shape, dst int) {
	t.Helper()
	name := fmt.Sprintf("swiglu %v dst %d", shape, dst)
	e := newEnv(t, b, name, true)
	defer e.close()
	g := e.input("swiglu.gate", engine.F32, shape, 6)
	u := e.input("swiglu.up", engine.F32, shape, 2)
	d := [3]*operand{nil, g, u}[dst]
	if d == nil {
		d = e.output("swiglu.dst", engine.F32, shape)
	}
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.SwiGLU(tt(d), tt(g), tt(u))
	})
	checkCloseAbs(t, name, e.got(d), e.want(d), nil, TolF32, actAbs)
}

// AttentionMasks runs grouped-query attention and per-row key lengths:
// awkward sizes, the Qwen3 text encoder (causal, 32 query heads over 8
// key/value heads) and the Z-Image DiT's CFG batch, whose two rows attend
// to different numbers of caption tokens.
func AttentionMasks(t *testing.T, b engine.Backend, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		batch, lq, lk, heads, kv, d int
		causal                      bool
		lens                        []int
		big                         bool
	}{
		{1, 1, 1, 2, 1, 2, false, nil, false},
		{1, 3, 5, 3, 1, 2, false, nil, false},
		{2, 17, 17, 4, 2, 8, true, nil, false},
		{1, 5, 9, 6, 3, 4, false, []int{4}, false},
		{3, 7, 17, 2, 2, 8, false, []int{1, 17, 5}, false},
		{3, 9, 9, 5, 5, 12, true, []int{9, 3, 3}, false}, // causal and lengths; rows 1, 2 share a length
		{2, 33, 40, 4, 1, 40, false, []int{40, 21}, false},
		{2, 33, 33, 4, 1, 32, true, []int{33, 20}, false},            // tiny Qwen3 (padded batch)
		{2, 96, 96, 3, 3, 128, false, []int{96, 64}, false},          // tiny DiT, CFG batch
		{1, 512, 512, 32, 8, 128, true, nil, false},                  // Qwen3-4B text encoder
		{2, 1088, 1088, 30, 30, 128, false, []int{1088, 1056}, true}, // DiT at 512², CFG batch
		// DiT at 1024² with a 512-token caption: q is 141 MB, over a 128
		// MiB binding limit.
		{2, 4608, 4608, 30, 30, 128, false, []int{4608, 4128}, true},
	} {
		o := engine.AttentionOptions{Heads: tc.heads, KVHeads: tc.kv, Causal: tc.causal, KeyLens: tc.lens}
		t.Run(fmt.Sprintf("b%d_q%d_k%d_h%d_kv%dx%d_causal=%v_lens%v", tc.batch, tc.lq, tc.lk, tc.heads, tc.kv, tc.d, tc.causal, tc.lens), func(t *testing.T) {
			if tc.big {
				c.big(t)
			}
			CheckAttentionOptions(t, b, tc.batch, tc.lq, tc.lk, tc.d, o)
		})
	}
}
