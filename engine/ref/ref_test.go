package ref

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/zimage/zimage/engine"
)

// Hand-computed cases: every expected value below was worked out by hand
// (or with Python's math module for the transcendental ones).

func tensor(t *testing.T, b *Backend, name string, dt engine.DType, vals []float32, shape ...int) *engine.Tensor {
	t.Helper()
	x, err := b.Alloc(name, dt, shape)
	if err != nil {
		t.Fatal(err)
	}
	if vals != nil {
		if err := b.Write(x, vals); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

func read(t *testing.T, b *Backend, x *engine.Tensor) []float32 {
	t.Helper()
	v, err := b.Read(x)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func near(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Abs(float64(got[i]-want[i])) > tol {
			t.Fatalf("%s: got %v\nwant %v", what, got, want)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestMemoryAccounting(t *testing.T) {
	b := New(WithBudget(100))
	x := tensor(t, b, "x", engine.F32, nil, 4, 5) // 80 bytes
	if s := b.MemStats(); s.InUse != 80 || s.Peak != 80 || s.Budget != 100 {
		t.Fatalf("after alloc: %+v", s)
	}
	_, err := b.Alloc("y", engine.F16, engine.Shape{11}) // 22 bytes: over budget
	if err == nil || !strings.Contains(err.Error(), "22 bytes requested with 80 in use exceeds the budget of 100") {
		t.Fatalf("over-budget alloc: %v", err)
	}
	y := tensor(t, b, "y", engine.F16, nil, 10) // 20 bytes: exactly fits
	v, _ := x.SliceRows(1, 3)
	b.Free(v) // views are ignored
	if s := b.MemStats(); s.InUse != 100 {
		t.Fatalf("after freeing a view: %+v", s)
	}
	b.Free(x)
	b.Free(x) // double free is a no-op
	b.Free(nil)
	if s := b.MemStats(); s.InUse != 20 || s.Peak != 100 {
		t.Fatalf("after free: %+v", s)
	}
	b.ResetPeak()
	if s := b.MemStats(); s.Peak != 20 {
		t.Fatalf("after ResetPeak: %+v", s)
	}
	if _, err := b.Read(x); err == nil || !strings.Contains(err.Error(), "freed") {
		t.Fatalf("read after free: %v", err)
	}
	if _, err := b.Read(v); err == nil {
		t.Fatal("read of a view of a freed tensor succeeded")
	}
	foreign := &engine.Tensor{Name: "foreign", DType: engine.F32, Shape: engine.Shape{1}, Storage: []float32{1}}
	if _, err := b.Read(foreign); err == nil || !strings.Contains(err.Error(), "not allocated by the ref backend") {
		t.Fatalf("foreign tensor: %v", err)
	}
	if _, err := b.Alloc("z", engine.F32, engine.Shape{2, 0}); err == nil {
		t.Fatal("alloc with a zero dim succeeded")
	}
	b.Free(y)
	must(t, b.Close())
	if _, err := b.Alloc("w", engine.F32, engine.Shape{1}); err == nil {
		t.Fatal("alloc after Close succeeded")
	}
}

func TestWriteReadRaw(t *testing.T) {
	b := New()
	h := tensor(t, b, "h", engine.F16, []float32{1, 1.0 / 3, 70000, -2}, 4)
	near(t, "F16 write", read(t, b, h), []float32{1, RoundF16(1.0 / 3), float32(math.Inf(1)), -2}, 0)
	must(t, b.WriteRaw(h, []byte{0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0xff, 0x7b}, engine.F16))
	near(t, "F16 raw", read(t, b, h), []float32{1, -2, float32(math.Ldexp(1, -24)), 65504}, 0)
	f := tensor(t, b, "f", engine.F32, nil, 2)
	must(t, b.WriteRaw(f, []byte{0x00, 0x3c, 0x00, 0xc0}, engine.F16))
	near(t, "F16 raw into F32", read(t, b, f), []float32{1, -2}, 0)
	must(t, b.WriteRaw(f, []byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0}, engine.F32))
	near(t, "F32 raw", read(t, b, f), []float32{1, -2}, 0)
	must(t, b.WriteRaw(h, []byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0x80, 0x3f}, engine.F32))
	near(t, "F32 raw into F16", read(t, b, h), []float32{1, -2, 0, 1}, 0)
	if err := b.WriteRaw(f, []byte{0, 0, 0}, engine.F16); err == nil {
		t.Fatal("short raw write succeeded")
	}
	if err := b.Write(f, []float32{1, 2, 3}); err == nil {
		t.Fatal("long write succeeded")
	}
}

func TestConv2dHand(t *testing.T) {
	b := New()
	x := tensor(t, b, "x", engine.F32, []float32{1, 2, 3, 4, 5, 6, 7, 8, 9}, 1, 1, 3, 3)
	w := tensor(t, b, "w", engine.F16, []float32{1, 0, 0, -1}, 1, 1, 2, 2)
	bias := tensor(t, b, "bias", engine.F32, []float32{0.5}, 1)
	// Stride 1, no padding: x[y][x] - x[y+1][x+1] = -4 everywhere, plus bias.
	d := tensor(t, b, "d", engine.F32, nil, 1, 1, 2, 2)
	must(t, b.Conv2d(d, x, w, bias, engine.Conv2dParams{Stride: 1}))
	near(t, "stride 1", read(t, b, d), []float32{-3.5, -3.5, -3.5, -3.5}, 0)
	// Stride 2, pad 1: taps land on x(0,0), x(0,2), x(2,0) alone and x(1,1)-x(2,2).
	must(t, b.Conv2d(d, x, w, nil, engine.Conv2dParams{Stride: 2, Pad: 1}))
	near(t, "stride 2 pad 1", read(t, b, d), []float32{-1, -3, -7, -4}, 0)

	// Two input and two output channels, 1x1 kernel: a per-pixel 2x2 matrix.
	x2 := tensor(t, b, "x2", engine.F32, []float32{1, 2, 3, 4}, 1, 2, 1, 2) // ch0 [1 2], ch1 [3 4]
	w2 := tensor(t, b, "w2", engine.F32, []float32{1, 1, 2, -1}, 2, 2, 1, 1)
	d2 := tensor(t, b, "d2", engine.F32, nil, 1, 2, 1, 2)
	must(t, b.Conv2d(d2, x2, w2, nil, engine.Conv2dParams{Stride: 1}))
	near(t, "1x1", read(t, b, d2), []float32{4, 6, -1, 0}, 0)

	// Errors: wrong dst shape, channel mismatch, nil, wrong bias.
	if err := b.Conv2d(d2, x, w, nil, engine.Conv2dParams{Stride: 1}); err == nil {
		t.Error("wrong dst shape accepted")
	}
	var se *engine.ShapeError
	if err := b.Conv2d(d, x2, w, nil, engine.Conv2dParams{Stride: 1}); !errors.As(err, &se) {
		t.Errorf("channel mismatch: %v", err)
	}
	if err := b.Conv2d(d, nil, w, nil, engine.Conv2dParams{Stride: 1}); err == nil {
		t.Error("nil input accepted")
	}
	if err := b.Conv2d(d, x, w, x, engine.Conv2dParams{Stride: 1}); err == nil {
		t.Error("bias of the wrong shape accepted")
	}
	if err := b.Conv2d(d, x, w, nil, engine.Conv2dParams{Stride: 0}); err == nil {
		t.Error("stride 0 accepted")
	}
}

func TestLinearMatMulHand(t *testing.T) {
	b := New()
	x := tensor(t, b, "x", engine.F32, []float32{1, 2, 3, 4, 5, 6}, 2, 3)
	w := tensor(t, b, "w", engine.F16, []float32{1, 0, -1, 0.5, 0.5, 0.5}, 2, 3)
	bias := tensor(t, b, "bias", engine.F32, []float32{10, 20}, 2)
	d := tensor(t, b, "d", engine.F32, nil, 2, 2)
	must(t, b.Linear(d, x, w, bias))
	near(t, "linear", read(t, b, d), []float32{1 - 3 + 10, 3 + 20, 4 - 6 + 10, 7.5 + 20}, 0)
	must(t, b.Linear(d, x, w, nil))
	near(t, "linear no bias", read(t, b, d), []float32{-2, 3, -2, 7.5}, 0)
	if err := b.Linear(d, x, d, nil); err == nil {
		t.Error("K mismatch accepted")
	}

	a := tensor(t, b, "a", engine.F32, []float32{1, 2, 3, 4}, 1, 2, 2)
	m := tensor(t, b, "m", engine.F32, []float32{5, 6, 7, 8}, 1, 2, 2)
	d3 := tensor(t, b, "d3", engine.F32, nil, 1, 2, 2)
	must(t, b.MatMul(d3, a, m, false, 1))
	near(t, "matmul", read(t, b, d3), []float32{19, 22, 43, 50}, 0)
	must(t, b.MatMul(d3, a, m, true, 0.5))
	near(t, "matmul transB alpha", read(t, b, d3), []float32{8.5, 11.5, 19.5, 26.5}, 0)
}

func TestNormsHand(t *testing.T) {
	b := New()
	x := tensor(t, b, "x", engine.F32, []float32{1, 2, 3, 4}, 1, 2, 2)
	gamma := tensor(t, b, "gamma", engine.F32, []float32{1, 2}, 2)
	beta := tensor(t, b, "beta", engine.F32, []float32{0, 1}, 2)
	d := tensor(t, b, "d", engine.F32, nil, 1, 2, 2)
	// One group: mean 2.5, variance 1.25 (eps 1e-5).
	n := []float32{-1.3416354199689269, -0.447211806656309, 0.447211806656309, 1.3416354199689269}
	must(t, b.GroupNorm(d, x, gamma, beta, 1, 1e-5, false))
	near(t, "group_norm 1 group", read(t, b, d), []float32{n[0], n[1], 2*n[2] + 1, 2*n[3] + 1}, 1e-6)
	// Two groups: each channel [a, a+1] normalises to [-1, 1] (eps 0).
	must(t, b.GroupNorm(d, x, gamma, beta, 2, 0, false))
	near(t, "group_norm 2 groups", read(t, b, d), []float32{-1, 1, -1, 3}, 1e-6)
	must(t, b.GroupNorm(d, x, gamma, beta, 2, 0, true))
	near(t, "group_norm silu", read(t, b, d), []float32{-0.2689414213699951, 0.7310585786300049, -0.2689414213699951, 3 / (1 + float32(math.Exp(-3)))}, 1e-6)
	if err := b.GroupNorm(d, x, gamma, beta, 3, 0, false); err == nil {
		t.Error("3 groups of 2 channels accepted")
	}

	x4, _ := x.Reshape(1, 4)
	g4 := tensor(t, b, "g4", engine.F32, []float32{1, 1, 1, 1}, 4)
	b4 := tensor(t, b, "b4", engine.F32, []float32{0, 0, 0, 1}, 4)
	d4 := tensor(t, b, "d4", engine.F32, nil, 1, 4)
	must(t, b.LayerNorm(d4, x4, g4, b4, 1e-5))
	near(t, "layer_norm", read(t, b, d4), []float32{n[0], n[1], n[2], n[3] + 1}, 1e-6)
	if err := b.LayerNorm(d4, x4, gamma, b4, 1e-5); err == nil {
		t.Error("gamma of the wrong length accepted")
	}

	s := tensor(t, b, "s", engine.F32, []float32{1, 2, 3, 1000, 1000, float32(math.Inf(-1))}, 2, 3)
	ds := tensor(t, b, "ds", engine.F32, nil, 2, 3)
	must(t, b.Softmax(ds, s))
	near(t, "softmax", read(t, b, ds), []float32{0.09003057317038046, 0.24472847105479767, 0.6652409557748219, 0.5, 0.5, 0}, 1e-7)
}

func TestAttentionHand(t *testing.T) {
	b := New()
	// One key: every query returns that key's value, whatever the scores.
	q := tensor(t, b, "q", engine.F32, []float32{1, 2, 3, 4, -5, 6, 7, 8}, 1, 2, 4) // 2 heads of 2
	k := tensor(t, b, "k", engine.F32, []float32{9, 9, -9, 9}, 1, 1, 4)
	v := tensor(t, b, "v", engine.F32, []float32{1, 2, 3, 4}, 1, 1, 4)
	d := tensor(t, b, "d", engine.F32, nil, 1, 2, 4)
	must(t, b.Attention(d, q, k, v, engine.AttentionOptions{Heads: 2, Scale: 0.7}))
	near(t, "one key", read(t, b, d), []float32{1, 2, 3, 4, 1, 2, 3, 4}, 0)

	// Two keys, one head of 1: scores q*k*scale; query 0 with causal sees key 0 only.
	q1 := tensor(t, b, "q1", engine.F32, []float32{1, 2}, 1, 2, 1)
	k1 := tensor(t, b, "k1", engine.F32, []float32{0, math.Ln2}, 1, 2, 1)
	v1 := tensor(t, b, "v1", engine.F32, []float32{3, 6}, 1, 2, 1)
	d1 := tensor(t, b, "d1", engine.F32, nil, 1, 2, 1)
	// Query 1, scale 1: scores [0, 2 ln 2] -> weights [1/5, 4/5] -> 0.6 + 4.8.
	// Query 0: scores [0, ln 2] -> weights [1/3, 2/3] -> 1 + 4.
	must(t, b.Attention(d1, q1, k1, v1, engine.AttentionOptions{Heads: 1, Scale: 1}))
	near(t, "two keys", read(t, b, d1), []float32{5, 5.4}, 1e-6)
	must(t, b.Attention(d1, q1, k1, v1, engine.AttentionOptions{Heads: 1, Scale: 1, Causal: true}))
	near(t, "causal", read(t, b, d1), []float32{3, 5.4}, 1e-6)
	if err := b.Attention(d1, q1, k1, v1, engine.AttentionOptions{Heads: 3, Scale: 1}); err == nil {
		t.Error("heads not dividing the width accepted")
	}
}

func TestElementwiseHand(t *testing.T) {
	b := New()
	x := tensor(t, b, "x", engine.F32, []float32{1, -2, 0}, 3)
	d := tensor(t, b, "d", engine.F32, nil, 3)
	want := map[engine.UnaryOp][]float32{
		engine.SiLU:      {0.7310585786300049, -0.2384058440442351, 0},
		engine.GELU:      {0.8413447460685429, -2 * (1 - 0.9772498680518208), 0},
		engine.QuickGELU: {0.8457957659328212, -2 / (1 + float32(math.Exp(2*1.702))), 0},
		engine.GELUTanh:  {0.8411919906082768, -0.04540230591222, 0},
		engine.Tanh:      {0.7615941559557649, -0.9640275800758169, 0},
		engine.ReLU:      {1, 0, 0},
	}
	for op, w := range want {
		must(t, b.Unary(d, x, op))
		near(t, op.String(), read(t, b, d), w, 1e-7)
	}
	if err := b.Unary(d, x, engine.UnaryOp(99)); err == nil {
		t.Error("unknown unary op accepted")
	}
	must(t, b.Unary(x, x, engine.SiLU)) // in place
	near(t, "silu in place", read(t, b, x), want[engine.SiLU], 1e-7)

	g := tensor(t, b, "g", engine.F32, []float32{2, 3, 0, 1}, 1, 4)
	dg := tensor(t, b, "dg", engine.F32, nil, 1, 2)
	must(t, b.GEGLU(dg, g))
	near(t, "geglu", read(t, b, dg), []float32{0, 3 * 0.8413447460685429}, 1e-6)

	a := tensor(t, b, "a", engine.F32, []float32{1, 2, 3, 4, 5, 6}, 2, 3)
	row := tensor(t, b, "row", engine.F32, []float32{10, 20, 30}, 3)
	col := tensor(t, b, "col", engine.F32, []float32{2, 3}, 2, 1)
	d6 := tensor(t, b, "d6", engine.F32, nil, 2, 3)
	must(t, b.Binary(d6, a, row, engine.Add))
	near(t, "add row", read(t, b, d6), []float32{11, 22, 33, 14, 25, 36}, 0)
	must(t, b.Binary(d6, col, a, engine.Sub))
	near(t, "sub col", read(t, b, d6), []float32{1, 0, -1, -1, -2, -3}, 0)
	must(t, b.Binary(a, a, col, engine.Mul)) // in place
	near(t, "mul in place", read(t, b, a), []float32{2, 4, 6, 12, 15, 18}, 0)
	// 4-D broadcast: [2,1,1,1] * [1,1,1,3] -> [2,1,1,3].
	p := tensor(t, b, "p", engine.F32, []float32{1, -1}, 2, 1, 1, 1)
	r := tensor(t, b, "r", engine.F32, []float32{1, 2, 3}, 1, 1, 1, 3)
	d4 := tensor(t, b, "d4", engine.F32, nil, 2, 1, 1, 3)
	must(t, b.Binary(d4, p, r, engine.Mul))
	near(t, "4-d broadcast", read(t, b, d4), []float32{1, 2, 3, -1, -2, -3}, 0)
	if err := b.Binary(d6, a, p, engine.Add); err == nil {
		t.Error("non-broadcastable shapes accepted")
	}
	if err := b.Binary(row, a, row, engine.Add); err == nil {
		t.Error("dst of a non-broadcast shape accepted")
	}
	must(t, b.Scale(row, row, 0.5, 1))
	near(t, "scale in place", read(t, b, row), []float32{6, 11, 16}, 0)
}

func TestLayoutHand(t *testing.T) {
	b := New()
	for _, dt := range []engine.DType{engine.F32, engine.F16} {
		x := tensor(t, b, "x", dt, []float32{1, 2, 3, 4, 5, 6}, 1, 2, 1, 3)
		up := tensor(t, b, "up", dt, nil, 1, 2, 2, 6)
		must(t, b.Upsample2x(up, x))
		near(t, "upsample", read(t, b, up), []float32{
			1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3,
			4, 4, 5, 5, 6, 6, 4, 4, 5, 5, 6, 6}, 0)
		y := tensor(t, b, "y", dt, []float32{7, 8, 9}, 1, 1, 1, 3)
		c := tensor(t, b, "c", dt, nil, 1, 3, 1, 3)
		must(t, b.Concat(c, x, y))
		near(t, "concat", read(t, b, c), []float32{1, 2, 3, 4, 5, 6, 7, 8, 9}, 0)
		pt := tensor(t, b, "pt", dt, nil, 1, 1, 3, 2)
		must(t, b.Permute(pt, x, []int{0, 2, 3, 1})) // NCHW -> NHWC
		near(t, "permute", read(t, b, pt), []float32{1, 4, 2, 5, 3, 6}, 0)
		if err := b.Permute(pt, x, []int{0, 2, 2, 1}); err == nil {
			t.Error("non-permutation accepted")
		}
	}
	tab := tensor(t, b, "tab", engine.F16, []float32{1, 2, 3, 4, 5, 6}, 3, 2)
	e := tensor(t, b, "e", engine.F32, nil, 3, 2)
	must(t, b.Embedding(e, tab, []int32{2, 0, 2}))
	near(t, "embedding", read(t, b, e), []float32{5, 6, 1, 2, 5, 6}, 0)
	if err := b.Embedding(e, tab, []int32{2, 3, 0}); err == nil || !strings.Contains(err.Error(), "id 3") {
		t.Errorf("out-of-range id: %v", err)
	}

	f := tensor(t, b, "f", engine.F32, []float32{1.0 / 3, 65520, -0.1}, 3)
	h := tensor(t, b, "h", engine.F16, nil, 3)
	must(t, b.Copy(h, f))
	near(t, "copy to F16", read(t, b, h), []float32{RoundF16(1.0 / 3), float32(math.Inf(1)), RoundF16(-0.1)}, 0)
	must(t, b.Copy(f, h))
	near(t, "copy to F32", read(t, b, f), []float32{RoundF16(1.0 / 3), float32(math.Inf(1)), RoundF16(-0.1)}, 0)
}

// Views: ops read from and write into row slices, leaving other rows alone.
func TestViews(t *testing.T) {
	b := New()
	x := tensor(t, b, "x", engine.F32, []float32{1, 2, 3, 4, 5, 6}, 3, 2)
	d := tensor(t, b, "d", engine.F32, []float32{0, 0, 0, 0, 0, 0}, 3, 2)
	xs, _ := x.SliceRows(1, 3)
	ds, _ := d.SliceRows(0, 2)
	must(t, b.Scale(ds, xs, 2, 0))
	near(t, "view", read(t, b, d), []float32{6, 8, 10, 12, 0, 0}, 0)
	near(t, "view read", read(t, b, xs), []float32{3, 4, 5, 6}, 0)
	bad := &engine.Tensor{Name: "bad", DType: engine.F32, Shape: engine.Shape{2, 2}, Storage: x.Storage, Offset: 4}
	if err := b.Scale(bad, bad, 1, 0); err == nil || !strings.Contains(err.Error(), "overruns") {
		t.Errorf("view past the end: %v", err)
	}
}
