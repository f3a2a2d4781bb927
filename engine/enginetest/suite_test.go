package enginetest

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
)

// The suite must fail a backend with a bug. Each mutant below is the
// reference with one op broken the way real kernels break; the checks run
// against it through a probe that records failures instead of failing
// this test.

type probe struct {
	testing.TB
	failed bool
	msg    string
}

func (p *probe) Helper() {}
func (p *probe) Errorf(f string, a ...any) {
	p.failed = true
	p.msg = fmt.Sprintf(f, a...)
}
func (p *probe) Error(a ...any) { p.Errorf("%s", fmt.Sprint(a...)) }
func (p *probe) Fail()          { p.failed = true }
func (p *probe) Failed() bool   { return p.failed }
func (p *probe) FailNow()       { p.failed = true; runtime.Goexit() }
func (p *probe) Fatalf(f string, a ...any) {
	p.Errorf(f, a...)
	runtime.Goexit()
}
func (p *probe) Fatal(a ...any)           { p.Errorf("%s", fmt.Sprint(a...)); runtime.Goexit() }
func (p *probe) Skipf(f string, a ...any) { p.Fatalf("unexpected skip: "+f, a...) }
func (p *probe) Skip(a ...any)            { p.Fatal(a...) }
func (p *probe) SkipNow()                 { p.Fatal("unexpected skip") }
func (p *probe) Logf(f string, a ...any)  {}
func (p *probe) Log(a ...any)             {}
func (p *probe) Skipped() bool            { return false }
func (p *probe) Name() string             { return "probe" }

// runProbe runs check in its own goroutine, since Fatal ends it with Goexit.
func runProbe(t *testing.T, check func(tb testing.TB)) *probe {
	p := &probe{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		check(p)
	}()
	<-done
	return p
}

type convNoBias struct{ *ref.Backend }

func (m convNoBias) Conv2d(dst, x, w, bias *engine.Tensor, p engine.Conv2dParams) error {
	return m.Backend.Conv2d(dst, x, w, nil, p)
}

// lastZero forgets the last output entry of a conv (a missed border tile).
type lastZero struct{ *ref.Backend }

func (m lastZero) Conv2d(dst, x, w, bias *engine.Tensor, p engine.Conv2dParams) error {
	if err := m.Backend.Conv2d(dst, x, w, bias, p); err != nil {
		return err
	}
	v, _ := m.Read(dst)
	v[len(v)-1] = 0
	return m.Write(dst, v)
}

// offByEps adds 1% of a typical output to every Linear entry.
type offByEps struct{ *ref.Backend }

func (m offByEps) Linear(dst, x, w, bias *engine.Tensor) error {
	if err := m.Backend.Linear(dst, x, w, bias); err != nil {
		return err
	}
	return m.Scale(dst, dst, 1, 0.05)
}

type ignoreTrans struct{ *ref.Backend }

func (m ignoreTrans) MatMul(dst, a, b *engine.Tensor, transB bool, alpha float32) error {
	return m.Backend.MatMul(dst, a, b, false, alpha)
}

type noCausal struct{ *ref.Backend }

func (m noCausal) Attention(dst, q, k, v *engine.Tensor, o engine.AttentionOptions) error {
	o.Causal = false
	return m.Backend.Attention(dst, q, k, v, o)
}

type scaleOne struct{ *ref.Backend }

func (m scaleOne) Attention(dst, q, k, v *engine.Tensor, o engine.AttentionOptions) error {
	o.Scale *= 1.01
	return m.Backend.Attention(dst, q, k, v, o)
}

type noKeyLens struct{ *ref.Backend }

func (m noKeyLens) Attention(dst, q, k, v *engine.Tensor, o engine.AttentionOptions) error {
	o.KeyLens = nil
	return m.Backend.Attention(dst, q, k, v, o)
}

// kvModulo gives query head h key/value head h % KV instead of h / (H/KV),
// running the reference on q with its heads reordered.
type kvModulo struct{ *ref.Backend }

func (m kvModulo) Attention(dst, q, k, v *engine.Tensor, o engine.AttentionOptions) error {
	h, kv := o.Heads, o.KV()
	d := q.Shape[2] / h
	// Head j of the reordered q is head src[j] of q: the reference gives it
	// kv head j/(h/kv), which must be src[j] % kv.
	src := make([]int, 0, h)
	for c := 0; c < kv; c++ {
		for x := c; x < h; x += kv {
			src = append(src, x)
		}
	}
	qv, err := m.Read(q)
	if err != nil {
		return err
	}
	perm := func(in []float32, inverse bool) []float32 {
		out := make([]float32, len(in))
		for r := 0; r < len(in)/(h*d); r++ {
			for j, sj := range src {
				a, b := j, sj
				if inverse {
					a, b = b, a
				}
				copy(out[(r*h+a)*d:][:d], in[(r*h+b)*d:][:d])
			}
		}
		return out
	}
	qp, err := m.Alloc("qp", engine.F32, q.Shape)
	if err != nil {
		return err
	}
	defer m.Free(qp)
	if err := m.Write(qp, perm(qv, false)); err != nil {
		return err
	}
	if err := m.Backend.Attention(dst, qp, k, v, o); err != nil {
		return err
	}
	out, err := m.Read(dst)
	if err != nil {
		return err
	}
	return m.Write(dst, perm(out, true))
}

type ropeSwapped struct{ *ref.Backend }

func (m ropeSwapped) Rope(dst, x, cos, sin *engine.Tensor, heads int, mode engine.RopeMode) error {
	return m.Backend.Rope(dst, x, cos, sin, heads, 1-mode)
}

type rmsNoGamma struct{ *ref.Backend }

func (m rmsNoGamma) RMSNorm(dst, x, gamma *engine.Tensor, eps float32) error {
	return m.Backend.RMSNorm(dst, x, nil, eps)
}

type swigluSwapped struct{ *ref.Backend }

func (m swigluSwapped) SwiGLU(dst, gate, up *engine.Tensor) error {
	return m.Backend.SwiGLU(dst, up, gate)
}

type noSiLU struct{ *ref.Backend }

func (m noSiLU) GroupNorm(dst, x, gamma, beta *engine.Tensor, groups int, eps float32, silu bool) error {
	return m.Backend.GroupNorm(dst, x, gamma, beta, groups, eps, false)
}

type tanhGELU struct{ *ref.Backend }

func (m tanhGELU) Unary(dst, x *engine.Tensor, op engine.UnaryOp) error {
	if op == engine.GELU {
		op = engine.GELUTanh
	}
	return m.Backend.Unary(dst, x, op)
}

// skipLast leaves the last Unary output unwritten.
type skipLast struct{ *ref.Backend }

func (m skipLast) Unary(dst, x *engine.Tensor, op engine.UnaryOp) error {
	old, err := m.Read(dst)
	if err != nil {
		return err
	}
	if err := m.Backend.Unary(dst, x, op); err != nil {
		return err
	}
	v, _ := m.Read(dst)
	v[len(v)-1] = old[len(old)-1]
	return m.Write(dst, v)
}

// truncF16 converts F32 to F16 by truncation instead of rounding to even.
type truncF16 struct{ *ref.Backend }

func (m truncF16) Copy(dst, x *engine.Tensor) error {
	if dst.DType != engine.F16 || x.DType != engine.F32 {
		return m.Backend.Copy(dst, x)
	}
	v, err := m.Read(x)
	if err != nil {
		return err
	}
	raw := make([]byte, 2*len(v))
	for i, f := range v {
		h := ref.F32ToF16(f)
		if r := ref.F16ToF32(h); !math.IsInf(float64(f), 0) && math.Abs(float64(r)) > math.Abs(float64(f)) {
			h-- // one step toward zero
		}
		binary.LittleEndian.PutUint16(raw[2*i:], h)
	}
	return m.WriteRaw(dst, raw, engine.F16)
}

type swapPerm struct{ *ref.Backend }

func (m swapPerm) Permute(dst, x *engine.Tensor, perm []int) error {
	p := append([]int(nil), perm...)
	p[0], p[len(p)-1] = p[len(p)-1], p[0]
	if s, err := engine.PermuteShape(x.Shape, p); err != nil || !s.Equal(dst.Shape) {
		return m.Backend.Permute(dst, x, perm)
	}
	return m.Backend.Permute(dst, x, p)
}

type panics struct{ *ref.Backend }

func (m panics) Softmax(dst, x *engine.Tensor) error { panic("index out of range") }

func TestSuiteCatchesMutants(t *testing.T) {
	r := ref.New()
	for _, c := range []struct {
		name  string
		check func(tb testing.TB)
	}{
		{"conv ignores bias", func(tb testing.TB) { CheckConv2d(tb, convNoBias{r}, 1, 3, 9, 9, 4, 3, 1, 1, engine.F32) }},
		{"conv misses the last entry", func(tb testing.TB) { CheckConv2d(tb, lastZero{r}, 1, 3, 9, 9, 4, 3, 1, 1, engine.F16) }},
		{"linear off (sampled reference)", func(tb testing.TB) { CheckLinear(tb, offByEps{r}, 1, 300, 256, 300, true, engine.F16) }},
		{"matmul ignores transB", func(tb testing.TB) { CheckMatMul(tb, ignoreTrans{r}, 2, 5, 7, 7, true, 1) }},
		{"attention ignores causal", func(tb testing.TB) { CheckAttention(tb, noCausal{r}, 1, 9, 9, 2, 8, true) }},
		{"attention scale 1% off (sampled reference)", func(tb testing.TB) { CheckAttention(tb, scaleOne{r}, 1, 1024, 77, 8, 80, false) }},
		{"attention ignores key lengths", func(tb testing.TB) {
			CheckAttentionOptions(tb, noKeyLens{r}, 2, 5, 9, 8, engine.AttentionOptions{Heads: 2, KeyLens: []int{9, 4}})
		}},
		{"attention maps kv heads by modulo", func(tb testing.TB) {
			CheckAttentionOptions(tb, kvModulo{r}, 1, 5, 7, 8, engine.AttentionOptions{Heads: 4, KVHeads: 2})
		}},
		{"attention maps kv heads by modulo (sampled reference)", func(tb testing.TB) {
			CheckAttentionOptions(tb, kvModulo{r}, 1, 300, 300, 32, engine.AttentionOptions{Heads: 8, KVHeads: 2, Causal: true})
		}},
		{"rope pairs the other elements", func(tb testing.TB) { checkRope(tb, ropeSwapped{r}, 2, 3, 2, 8, engine.RopeInterleaved, true, false) }},
		{"rms_norm ignores gamma", func(tb testing.TB) { checkRMSNorm(tb, rmsNoGamma{r}, engine.Shape{3, 17}, true) }},
		{"swiglu gates the wrong operand", func(tb testing.TB) { checkSwiGLU(tb, swigluSwapped{r}, engine.Shape{3, 5}, 0) }},
		{"group_norm drops SiLU", func(tb testing.TB) { CheckGroupNorm(tb, noSiLU{r}, engine.Shape{1, 8, 4, 4}, 4, true) }},
		{"gelu is the tanh approximation", func(tb testing.TB) { checkUnary(tb, tanhGELU{r}, engine.GELU, engine.Shape{3, 5, 7}, false) }},
		{"unary leaves the last entry", func(tb testing.TB) { checkUnary(tb, skipLast{r}, engine.SiLU, engine.Shape{17}, false) }},
		{"F16 conversion truncates", func(tb testing.TB) { checkCopy(tb, truncF16{r}, engine.Shape{17}, engine.F32, engine.F16) }},
		{"permute swaps axes", func(tb testing.TB) { checkPermute(tb, swapPerm{r}, engine.Shape{2, 2, 2}, []int{0, 2, 1}) }},
		{"softmax panics", func(tb testing.TB) { checkSoftmax(tb, panics{r}, engine.Shape{3, 17}, 1, false) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := runProbe(t, c.check)
			if !p.failed {
				t.Fatal("the suite passed a broken backend")
			}
			t.Logf("caught: %s", p.msg)
		})
	}
	if s := r.MemStats(); s.InUse != 0 {
		t.Errorf("checks leaked %d bytes on the backend under test", s.InUse)
	}
}

func TestCheckClose(t *testing.T) {
	want := []float32{1, -2, 3, 0.5, float32(math.Inf(1)), float32(math.NaN())}
	ok := func(got []float32, idx []int, w []float32, tol float64) bool {
		return !runProbe(t, func(tb testing.TB) { checkClose(tb, "x", got, w, idx, tol) }).failed
	}
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	if !ok([]float32{1, -2, 3, 0.5, inf, nan}, nil, want, TolF32) {
		t.Error("equal values with Inf and NaN failed")
	}
	if !ok([]float32{1 + 1e-5, -2, 3, 0.5, inf, nan}, nil, want, TolF32) {
		t.Error("an NMSE of 7e-12 failed")
	}
	if ok([]float32{1.01, -2, 3, 0.5, inf, nan}, nil, want, TolF32) {
		t.Error("an NMSE of 7e-6 passed at 1e-7")
	}
	if ok([]float32{1, -2, 3, 0.5, inf, 0}, nil, want, 1) {
		t.Error("a NaN mismatch passed")
	}
	if ok([]float32{1, -2, 3, 0.5, 1e30, nan}, nil, want, 1) {
		t.Error("an Inf mismatch passed")
	}
	if ok([]float32{1, -2, inf}, nil, []float32{1, -2, 3}, 1) {
		t.Error("an Inf where a finite value belongs passed")
	}
	// One wrong entry among many: tiny NMSE, caught by the entry bound.
	got, w := make([]float32, 100000), make([]float32, 100000)
	for i := range w {
		w[i] = float32(i%7) - 3
		got[i] = w[i]
	}
	got[501] += 0.1 // NMSE 2.5e-8, within 1e-7
	if ok(got, nil, w, TolF32) {
		t.Error("a single wrong entry passed")
	}
	got[501] -= 0.09
	if !ok(got, nil, w, TolF32) {
		t.Error("an entry off by 0.5% of the RMS failed")
	}
	// Sampled: entries 1 and 3 of got are compared with want.
	if !ok([]float32{9, 1, 9, 2}, []int{1, 3}, []float32{1, 2}, TolF32) {
		t.Error("a sampled comparison of equal entries failed")
	}
	if ok([]float32{1, 9, 2, 9}, []int{1, 3}, []float32{1, 2}, TolF32) {
		t.Error("a sampled comparison looked at the wrong entries")
	}
	exact := func(got, w []float32) bool {
		return !runProbe(t, func(tb testing.TB) { checkExact(tb, "x", got, w) }).failed
	}
	if !exact([]float32{1, nan}, []float32{1, float32(-math.NaN())}) {
		t.Error("NaN did not match NaN")
	}
	if exact([]float32{0}, []float32{float32(math.Copysign(0, -1))}) {
		t.Error("+0 matched -0 in an exact comparison")
	}
}
