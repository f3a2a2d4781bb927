package enginetest

import (
	"fmt"
	"math"
	"testing"

	"github.com/zimage/zimage/engine"
)

// GroupNorm runs GroupNorm with and without the fused SiLU.
func GroupNorm(t *testing.T, b engine.Backend, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		shape  engine.Shape
		groups int
		big    bool
	}{
		{engine.Shape{1, 1, 1}, 1, false},
		{engine.Shape{1, 4, 1, 1}, 2, false},
		{engine.Shape{2, 6, 5}, 3, false},
		{engine.Shape{1, 32, 3, 17}, 32, false}, // one channel per group
		{engine.Shape{2, 64, 7, 9}, 32, false},
		{engine.Shape{1, 320, 64, 64}, 32, false}, // SD UNet at 512x512
		{engine.Shape{2, 1280, 8, 8}, 32, false},
		{engine.Shape{1, 512, 128, 128}, 32, true}, // VAE decoder
	} {
		for _, silu := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v_g%d_silu=%v", tc.shape, tc.groups, silu), func(t *testing.T) {
				if tc.big {
					c.big(t)
				}
				CheckGroupNorm(t, b, tc.shape, tc.groups, silu)
			})
		}
	}
}

// CheckGroupNorm checks GroupNorm of x with shape [N, C, ...] in groups
// (eps 1e-5 as in SD; fused SiLU when silu) against the reference. The
// input has a mean offset of 2, which punishes a one-pass variance.
func CheckGroupNorm(t testing.TB, b engine.Backend, shape engine.Shape, groups int, silu bool) {
	t.Helper()
	if len(shape) < 2 || shape.Valid() != nil || groups < 1 || shape[1]%groups != 0 {
		t.Skipf("group_norm: invalid shape %v with %d groups", shape, groups)
	}
	name := fmt.Sprintf("group_norm %v groups %d silu=%v", shape, groups, silu)
	e := newEnv(t, b, name, true)
	defer e.close()
	vals := e.random(shape.NumElem(), 1)
	for i := range vals {
		vals[i] += 2
	}
	x := e.inputData("group_norm.x", engine.F32, shape, vals)
	gamma := e.inputData("group_norm.gamma", engine.F32, engine.Shape{shape[1]}, offset(e.random(shape[1], 0.5), 1))
	beta := e.input("group_norm.beta", engine.F32, engine.Shape{shape[1]}, 0.5)
	d := e.output("group_norm.dst", engine.F32, shape)
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.GroupNorm(tt(d), tt(x), tt(gamma), tt(beta), groups, 1e-5, silu)
	})
	e.checkFull(name, d, TolF32)
}

func offset(v []float32, by float32) []float32 {
	for i := range v {
		v[i] += by
	}
	return v
}

// LayerNorm runs LayerNorm over the last dim.
func LayerNorm(t *testing.T, b engine.Backend, opts ...Option) {
	for _, shape := range []engine.Shape{
		{1, 1}, // one element: output is beta
		{3, 17},
		{2, 5, 33},
		{2, 77, 768},  // CLIP-L text encoder
		{1, 77, 1024}, // OpenCLIP-H
		{1, 4096, 320},
	} {
		t.Run(shape.String(), func(t *testing.T) { checkLayerNorm(t, b, shape) })
	}
}

func checkLayerNorm(t testing.TB, b engine.Backend, shape engine.Shape) {
	t.Helper()
	name := "layer_norm " + shape.String()
	e := newEnv(t, b, name, true)
	defer e.close()
	dim := shape[len(shape)-1]
	x := e.inputData("layer_norm.x", engine.F32, shape, offset(e.random(shape.NumElem(), 1), -1))
	gamma := e.inputData("layer_norm.gamma", engine.F32, engine.Shape{dim}, offset(e.random(dim, 0.5), 1))
	beta := e.input("layer_norm.beta", engine.F32, engine.Shape{dim}, 0.5)
	d := e.output("layer_norm.dst", engine.F32, shape)
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.LayerNorm(tt(d), tt(x), tt(gamma), tt(beta), 1e-5)
	})
	e.checkFull(name, d, TolF32)
}

// Softmax runs Softmax over the last dim, with inputs large enough to
// overflow exp without the max subtraction, and with masked (-Inf) entries.
func Softmax(t *testing.T, b engine.Backend, opts ...Option) {
	for _, tc := range []struct {
		shape  engine.Shape
		amp    float32
		masked bool
	}{
		{engine.Shape{1, 1}, 1, false},
		{engine.Shape{3, 17}, 1, false},
		{engine.Shape{2, 5, 77}, 4, false},
		{engine.Shape{3, 300}, 200, false}, // exp(200) overflows float32
		{engine.Shape{2, 9, 33}, 2, true},
		{engine.Shape{5, 4096}, 8, false},
	} {
		t.Run(fmt.Sprintf("%v_amp%g_masked=%v", tc.shape, tc.amp, tc.masked), func(t *testing.T) {
			checkSoftmax(t, b, tc.shape, tc.amp, tc.masked)
		})
	}
}

func checkSoftmax(t testing.TB, b engine.Backend, shape engine.Shape, amp float32, masked bool) {
	t.Helper()
	name := fmt.Sprintf("softmax %v amp %g masked=%v", shape, amp, masked)
	e := newEnv(t, b, name, true)
	defer e.close()
	vals := e.random(shape.NumElem(), amp)
	if masked {
		// Mask like a causal attention: row r keeps its first r%D+1 entries.
		dim := shape[len(shape)-1]
		for i := range vals {
			if r, j := i/dim, i%dim; j > r%dim {
				vals[i] = float32(math.Inf(-1))
			}
		}
	}
	x := e.inputData("softmax.x", engine.F32, shape, vals)
	d := e.output("softmax.dst", engine.F32, shape)
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error { return be.Softmax(tt(d), tt(x)) })
	e.checkFull(name, d, TolF32)
}

// Attention runs fused attention: awkward sizes, causal masks (also with
// more keys than queries), CLIP self-attention, SD cross-attention over 77
// keys at every head dim SD uses, and SD self-attention at 64x64.
func Attention(t *testing.T, b engine.Backend, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		batch, lq, lk, heads, d int
		causal, big             bool
	}{
		{1, 1, 1, 1, 1, false, false},
		{1, 3, 17, 1, 8, false, false},
		{2, 17, 3, 2, 40, false, false},
		{1, 5, 5, 2, 16, true, false},
		{1, 4, 9, 1, 8, true, false},
		{2, 33, 77, 3, 64, false, false},
		{1, 77, 77, 12, 64, true, false},   // CLIP-L text encoder
		{2, 77, 77, 4, 8, true, false},     // tiny CLIP
		{1, 4096, 77, 8, 40, false, false}, // SD1.5 cross-attention, 320 channels
		{1, 4096, 77, 5, 64, false, false}, // SD2.1 cross-attention, 320 channels
		{1, 1024, 77, 8, 80, false, false}, // SD1.5, 640 channels
		{1, 256, 77, 10, 128, false, false},
		{1, 256, 77, 8, 160, false, false},   // SD1.5, 1280 channels
		{1, 33, 1500, 2, 160, true, false},   // long keys at a wide head (llvmpipe's loop limiter)
		{2, 40, 4096, 1, 512, false, true},   // the SD VAE's mid-block attention at 512²: past the loop limiter, unfused on llvmpipe (big: k of one row is 8 MiB)
		{1, 4096, 4096, 5, 64, false, true},  // SD2.1 self-attention at 64x64
		{2, 1024, 1024, 10, 64, false, true}, // SDXL self-attention at 32x32, CFG batch
	} {
		t.Run(fmt.Sprintf("b%d_q%d_k%d_h%dx%d_causal=%v", tc.batch, tc.lq, tc.lk, tc.heads, tc.d, tc.causal), func(t *testing.T) {
			if tc.big {
				c.big(t)
			}
			CheckAttention(t, b, tc.batch, tc.lq, tc.lk, tc.heads, tc.d, tc.causal)
		})
	}
}

// CheckAttention checks Attention of q [batch, lq, heads*d] over
// k, v [batch, lk, heads*d] with scale 1/sqrt(d) against the reference.
// Non-positive sizes skip the test (for fuzzing).
func CheckAttention(t testing.TB, b engine.Backend, batch, lq, lk, heads, d int, causal bool) {
	t.Helper()
	CheckAttentionOptions(t, b, batch, lq, lk, d, engine.AttentionOptions{Heads: heads, Causal: causal})
}

// CheckAttentionOptions checks Attention of q [batch, lq, H*d] over
// k, v [batch, lk, KV*d] with the heads, key/value heads, causal mask and
// key lengths of o, and scale 1/sqrt(d) (o.Scale is ignored), against the
// reference. Sizes or options the op must reject skip the test (for
// fuzzing).
func CheckAttentionOptions(t testing.TB, b engine.Backend, batch, lq, lk, d int, o engine.AttentionOptions) {
	t.Helper()
	heads, kv := o.Heads, o.KV()
	if batch < 1 || lq < 1 || lk < 1 || heads < 1 || d < 1 || kv < 1 || heads%kv != 0 {
		t.Skipf("attention: invalid size batch %d lq %d lk %d heads %d kv heads %d d %d", batch, lq, lk, heads, kv, d)
	}
	for _, n := range o.KeyLens {
		if len(o.KeyLens) != batch || n < 1 || n > lk {
			t.Skipf("attention: key lengths %v for batch %d of %d keys", o.KeyLens, batch, lk)
		}
	}
	name := fmt.Sprintf("attention b %d q %d k %d heads %d kv %d x %d causal=%v lens %v", batch, lq, lk, heads, kv, d, o.Causal, o.KeyLens)
	e := newEnv(t, b, name, 2*batch*heads*lq*lk*d <= fullMACs)
	defer e.close()
	hd, kvd := heads*d, kv*d
	o.Scale = float32(1 / math.Sqrt(float64(d)))
	// Amplitude 2 makes scores up to ~sqrt(d): peaked softmaxes, as trained
	// models have.
	q := e.input("attention.q", engine.F32, engine.Shape{batch, lq, hd}, 2)
	k := e.input("attention.k", engine.F32, engine.Shape{batch, lk, kvd}, 2)
	v := e.input("attention.v", engine.F32, engine.Shape{batch, lk, kvd}, 1)
	dst := e.output("attention.dst", engine.F32, engine.Shape{batch, lq, hd})
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.Attention(tt(dst), tt(q), tt(k), tt(v), o)
	})
	if e.r != nil {
		e.checkFull(name, dst, TolF32)
		return
	}
	// Sample whole rows (one query of one head); cap the float64 work near 5e7.
	rows := min(max(5e7/(lk*d), 32), samples)
	var idx []int
	var want []float32
	for _, r := range e.sampleIdx(batch*lq*heads, rows) {
		p, i, h := r/(lq*heads), r/heads%lq, r%heads
		for j, v := range attentionRow(q.host, k.host, v.host, lq, lk, d, o, p, i, h) {
			idx = append(idx, (p*lq+i)*hd+h*d+j)
			want = append(want, v)
		}
	}
	checkClose(t, name, e.got(dst), want, idx, TolF32)
}
