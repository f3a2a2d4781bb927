package vk

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/enginetest"
)

// openLimited opens the default device with its binding limit lowered to
// limit bytes: every binding over it is refused (*RangeError), so an op
// that succeeds on bigger operands ran them in pieces.
func openLimited(t *testing.T, limit int64) *Device {
	t.Helper()
	device(t)
	opts := DefaultOptions()
	opts.MaxBinding = limit
	d, err := Open(opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, d.Close()) })
	require.Equal(t, limit, d.MaxTensorBytes())
	return d
}

type suiteOp struct {
	name string
	f    func(*testing.T, engine.Backend, ...enginetest.Option)
}

// TestConformanceSplit runs the suite's small shapes with binding limits
// far below the device's, so that the row-wise ops run their operands in
// pieces. At 2 MiB every operand the ops bind whole (weights, k and v of a
// batch row, gamma) fits, while SD-sized attention queries, norms over
// 4096 tokens, the Qwen3 and DiT-sized rope, RMSNorm and SwiGLU operands
// do not. At 16 KiB the ops that split every operand run a few rows or a
// few thousand elements per piece. Conv2d and Permute are left out: an
// image, or a permutation that moves the leading axis, does not split.
func TestConformanceSplit(t *testing.T) {
	for _, c := range []struct {
		limit int64
		ops   []suiteOp
	}{
		{2 << 20, []suiteOp{
			{"Linear", enginetest.Linear}, {"MatMul", enginetest.MatMul}, {"GroupNorm", enginetest.GroupNorm},
			{"LayerNorm", enginetest.LayerNorm}, {"Softmax", enginetest.Softmax}, {"Attention", enginetest.Attention},
			{"RMSNorm", enginetest.RMSNorm}, {"Rope", enginetest.Rope}, {"SwiGLU", enginetest.SwiGLU},
			{"AttentionMasks", enginetest.AttentionMasks}, {"Unary", enginetest.Unary}, {"GEGLU", enginetest.GEGLU},
			{"Binary", enginetest.Binary}, {"Scale", enginetest.Scale}, {"Upsample2x", enginetest.Upsample2x},
			{"Concat", enginetest.Concat}, {"Embedding", enginetest.Embedding}, {"Copy", enginetest.Copy},
			{"Views", enginetest.Views},
		}},
		{16 << 10, []suiteOp{
			{"Unary", enginetest.Unary}, {"Scale", enginetest.Scale}, {"Binary", enginetest.Binary},
			{"GEGLU", enginetest.GEGLU}, {"SwiGLU", enginetest.SwiGLU}, {"Copy", enginetest.Copy},
			{"LayerNorm", enginetest.LayerNorm}, {"RMSNorm", enginetest.RMSNorm}, {"Softmax", enginetest.Softmax},
			{"Rope", enginetest.Rope}, {"Upsample2x", enginetest.Upsample2x}, {"Concat", enginetest.Concat},
		}},
	} {
		t.Run(fmt.Sprintf("limit%dKiB", c.limit>>10), func(t *testing.T) {
			d := openLimited(t, c.limit)
			for _, op := range c.ops {
				t.Run(op.name, func(t *testing.T) { op.f(t, d, enginetest.SmallOnly()) })
			}
		})
	}
}

// TestSplitShapes runs the ops that bind some operands whole on shapes
// made to split at a 16 KiB limit: rows of a Linear and of a MatMul, batch
// rows and images, the queries of one attention row (the causal mask then
// needs the piece's query offset) with grouped heads and key lengths, and
// the groups of one image's GroupNorm.
func TestSplitShapes(t *testing.T) {
	d := openLimited(t, 16<<10)
	for _, wdt := range []engine.DType{engine.F32, engine.F16} {
		t.Run(fmt.Sprint("Linear_", wdt), func(t *testing.T) {
			enginetest.CheckLinear(t, d, 1, 300, 64, 48, true, wdt) // x 75 KiB, w 12 KiB
			enginetest.CheckLinear(t, d, 3, 37, 3, 20, false, wdt)  // rows of 12 bytes
		})
	}
	for _, transB := range []bool{false, true} {
		t.Run(fmt.Sprint("MatMul_transB=", transB), func(t *testing.T) {
			enginetest.CheckMatMul(t, d, 3, 100, 16, 24, transB, 0.5) // batches
			enginetest.CheckMatMul(t, d, 1, 300, 16, 24, transB, 1)   // rows of one batch
		})
	}
	t.Run("Attention", func(t *testing.T) {
		for _, o := range []engine.AttentionOptions{
			{Heads: 4, KVHeads: 2, Causal: true},
			{Heads: 4, KVHeads: 2, Causal: true, KeyLens: []int{40, 17}},
			{Heads: 3, KVHeads: 1, KeyLens: []int{9, 40}},
		} {
			enginetest.CheckAttentionOptions(t, d, 2, 300, 40, 8, o)
		}
		enginetest.CheckAttentionOptions(t, d, 1, 200, 200, 10, engine.AttentionOptions{Heads: 2, Causal: true}) // scalar kernel
	})
	t.Run("GroupNorm", func(t *testing.T) {
		enginetest.CheckGroupNorm(t, d, engine.Shape{3, 8, 12, 12}, 4, true)   // images
		enginetest.CheckGroupNorm(t, d, engine.Shape{1, 32, 24, 24}, 8, false) // groups of one image
	})
	t.Run("Conv2d", func(t *testing.T) {
		enginetest.CheckConv2d(t, d, 3, 4, 16, 16, 8, 3, 1, 1, engine.F16) // images
	})
}

// TestSplitRefusals: what cannot go in pieces is refused with a
// *RangeError naming the tensor: one image of a convolution, a permutation
// that moves the leading axis, a weight over the limit.
func TestSplitRefusals(t *testing.T) {
	d := openLimited(t, 16<<10)
	alloc := func(name string, dt engine.DType, shape ...int) *engine.Tensor {
		x, err := d.Alloc(name, dt, shape)
		require.NoError(t, err)
		t.Cleanup(func() { d.Free(x) })
		return x
	}
	img := alloc("img", engine.F32, 1, 8, 32, 32) // 32 KiB
	w := alloc("w", engine.F16, 8, 8, 3, 3)
	out := alloc("out", engine.F32, 1, 8, 32, 32)
	perm := alloc("perm", engine.F32, 1, 32, 32, 8)
	x := alloc("x", engine.F32, 4, 16)
	big := alloc("big_w", engine.F32, 1024, 16) // 64 KiB
	y := alloc("y", engine.F32, 4, 1024)
	for name, c := range map[string]struct {
		tensor string
		op     func() error
	}{
		"conv2d of one image":   {"img", func() error { return d.Conv2d(out, img, w, nil, engine.Conv2dParams{Stride: 1, Pad: 1}) }},
		"permute moving axis 0": {"img", func() error { return d.Permute(perm, img, []int{0, 2, 3, 1}) }},
		"linear weight":         {"big_w", func() error { return d.Linear(y, x, big, nil) }},
	} {
		var re *RangeError
		err := c.op()
		if !errors.As(err, &re) || re.Tensor != c.tensor || re.Limit != 16<<10 {
			t.Errorf("%s: %v, want a *RangeError naming %s", name, err, c.tensor)
		}
	}
}

// TestSplitBig runs the Z-Image DiT's feed-forward at 1024² (4160 tokens:
// 4096 image and 64 caption tokens) on the device's own binding limit: the
// 10240-wide hidden activation is 170 MB, over the 128 MiB lavapipe and
// many GPUs bind, and runs in pieces through the up projection, SwiGLU and
// the down projection.
func TestSplitBig(t *testing.T) {
	d := device(t)
	if testing.Short() {
		t.Skip("DiT feed-forward at 1024²: skipped under -short")
	}
	const tokens, dim, hidden = 4160, 3840, 10240
	if lim := d.MaxTensorBytes(); lim <= 0 || lim >= 4*tokens*hidden {
		t.Skipf("binding limit %d: the 170 MB activation fits whole", lim)
	}
	t.Run("up", func(t *testing.T) { enginetest.CheckLinear(t, d, 1, tokens, dim, hidden, true, engine.F16) })
	t.Run("down", func(t *testing.T) { enginetest.CheckLinear(t, d, 1, tokens, hidden, dim, true, engine.F16) })
	t.Run("swiglu", func(t *testing.T) {
		g, err := d.Alloc("gate", engine.F32, engine.Shape{tokens, hidden})
		require.NoError(t, err)
		defer d.Free(g)
		u, err := d.Alloc("up", engine.F32, engine.Shape{tokens, hidden})
		require.NoError(t, err)
		defer d.Free(u)
		n := tokens * hidden
		gv, uv := make([]float32, n), make([]float32, n)
		for i := range gv {
			gv[i] = float32(i%1001)/250 - 2
			uv[i] = float32(i%7) - 3
		}
		require.NoError(t, d.Write(g, gv))
		require.NoError(t, d.Write(u, uv))
		require.NoError(t, d.SwiGLU(g, g, u))
		got, err := d.Read(g)
		require.NoError(t, err)
		for i := 0; i < n; i += 997 {
			x := float64(gv[i])
			want := x / (1 + math.Exp(-x)) * float64(uv[i])
			if math.Abs(float64(got[i])-want) > 1e-5*(1+math.Abs(want)) {
				t.Fatalf("swiglu entry %d: got %g, want %g", i, got[i], want)
			}
		}
	})
}

// TestSplitScaleCopy: Scale and Copy of a tensor just over the device's
// binding limit (they used to fail with a *RangeError) run in pieces.
func TestSplitScaleCopy(t *testing.T) {
	d := device(t)
	lim := d.MaxTensorBytes()
	if lim <= 0 || lim > 512<<20 {
		t.Skipf("binding limit %d: too large to test here", lim)
	}
	n := int(lim/4) + 1024
	x, err := d.Alloc("huge", engine.F32, engine.Shape{n})
	if err != nil {
		t.Skipf("cannot allocate %d bytes: %v", 4*n, err)
	}
	defer d.Free(x)
	y, err := d.Alloc("huge16", engine.F16, engine.Shape{n})
	require.NoError(t, err)
	defer d.Free(y)
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(i % 1000)
	}
	require.NoError(t, d.Write(x, v))
	require.NoError(t, d.Scale(x, x, 2, 1))
	require.NoError(t, d.Copy(y, x))
	got, err := d.Read(y)
	require.NoError(t, err)
	for _, i := range []int{0, 1, n / 2, n - 1025, n - 1024, n - 1} {
		require.Equal(t, 2*v[i]+1, got[i], "entry %d", i)
	}
}
