// Package enginetest is the conformance suite every engine.Backend runs: each
// op on a table of awkward shapes (1, 3, 17, sizes that are no multiple of a
// workgroup) and real Stable Diffusion shapes, in every weight dtype the op
// allows, compared with the reference backend (engine/ref) by normalised
// mean squared error, plus error paths, views and in-place use.
//
// The reference runs the same op on the same seeded inputs. Where a full
// reference computation would be slow (the big matmuls, convolutions and
// attentions), only a deterministic sample of output entries is computed,
// directly in float64 (sample.go), and the backend's full output is checked
// at those entries. Big SD shapes are skipped under -short.
package enginetest

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
)

// NMSE bounds: sum((got-want)²) / sum(want²) over the compared entries.
const (
	// TolF32 holds where every operand is stored as F32. A float32
	// accumulation over K terms has relative error about sqrt(K)·6e-8, so
	// even K = 4608 (3x3 conv over 512 channels) stays near 1e-11.
	TolF32 = 1e-7
	// TolF16 holds where an operand is stored as F16 (weights, copies).
	// Both backends see identical F16 values, but a backend may convert or
	// accumulate through F16 paths (GPU fp16 arithmetic has 2^-11 relative
	// rounding, NMSE ~1e-7 per rounding; a few of them stay below 1e-5).
	TolF16 = 1e-5
)

// fullMACs is the largest op (in multiply-adds) the reference computes in
// full; bigger ones are checked at sampled entries. The reference runs near
// 1.5 GFLOP/s, so this costs at most ~30 ms.
const fullMACs = 2e7

// samples is how many output entries (or attention rows) a sampled check
// compares.
const samples = 384

// Option adjusts a run of the suite.
type Option func(*config)

type config struct{ smallOnly bool }

// SmallOnly skips the big SD shapes, as -short does. The reference backend's
// own tests use it: running the big shapes on the naive backend itself would
// take minutes.
func SmallOnly() Option { return func(c *config) { c.smallOnly = true } }

func configOf(opts []Option) config {
	var c config
	for _, o := range opts {
		o(&c)
	}
	return c
}

// big skips a subtest that runs a big SD shape when the run asks for short
// tests.
func (c config) big(t *testing.T) {
	t.Helper()
	if testing.Short() || c.smallOnly {
		t.Skip("big SD shape: skipped under -short")
	}
}

// All runs every op of the suite as subtests.
func All(t *testing.T, b engine.Backend, opts ...Option) {
	for _, c := range []struct {
		name string
		f    func(*testing.T, engine.Backend, ...Option)
	}{
		{"Memory", Memory}, {"Errors", Errors}, {"Views", Views},
		{"Linear", Linear}, {"MatMul", MatMul}, {"Conv2d", Conv2d},
		{"GroupNorm", GroupNorm}, {"LayerNorm", LayerNorm}, {"Softmax", Softmax}, {"Attention", Attention},
		{"RMSNorm", RMSNorm}, {"Rope", Rope}, {"SwiGLU", SwiGLU}, {"AttentionMasks", AttentionMasks},
		{"Unary", Unary}, {"GEGLU", GEGLU}, {"Binary", Binary}, {"Scale", Scale},
		{"Upsample2x", Upsample2x}, {"Concat", Concat}, {"Permute", Permute}, {"Embedding", Embedding}, {"Copy", Copy},
		{"Quantized", Quantized},
	} {
		t.Run(c.name, func(t *testing.T) { c.f(t, b, opts...) })
	}
}

// env holds one check's tensors on the backend under test (b) and, when the
// reference runs the op in full, on the reference backend (r).
type env struct {
	t   testing.TB
	b   engine.Backend
	r   *ref.Backend // nil when expected values are sampled
	rng *rand.Rand
	bts []*engine.Tensor
}

// operand is one tensor: the host values written (already rounded to its
// dtype) and its copies on both backends.
type operand struct {
	host   []float32
	bt, rt *engine.Tensor
}

// newEnv seeds the inputs from the case name, so every case is reproducible
// alone. full says whether the reference runs the op in full.
func newEnv(t testing.TB, b engine.Backend, name string, full bool) *env {
	h := fnv.New64a()
	h.Write([]byte(name))
	e := &env{t: t, b: b, rng: rand.New(rand.NewPCG(h.Sum64(), 0x5eed))}
	if full {
		e.r = ref.New()
	}
	return e
}

// close frees the tensors allocated on the backend under test.
func (e *env) close() {
	for _, t := range e.bts {
		e.b.Free(t)
	}
	e.bts = nil
}

// call runs a backend op, turning a panic into a test failure.
func call(t testing.TB, what string, f func() error) (err error) {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("%s panicked: %v", what, p)
		}
	}()
	return f()
}

// must runs an op that has to succeed.
func (e *env) must(what string, f func() error) {
	e.t.Helper()
	if err := call(e.t, what, f); err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

// random returns n seeded values uniform in [-amp, amp).
func (e *env) random(n int, amp float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = amp * (2*e.rng.Float32() - 1)
	}
	return v
}

// input allocates a tensor on both backends holding seeded values in
// [-amp, amp), rounded to dt.
func (e *env) input(name string, dt engine.DType, shape engine.Shape, amp float32) *operand {
	return e.inputData(name, dt, shape, e.random(shape.NumElem(), amp))
}

// inputData is input with given values.
func (e *env) inputData(name string, dt engine.DType, shape engine.Shape, vals []float32) *operand {
	e.t.Helper()
	if dt == engine.F16 {
		for i, v := range vals {
			vals[i] = ref.RoundF16(v)
		}
	}
	o := &operand{host: vals, bt: e.alloc(e.b, name, dt, shape)}
	e.must("write "+name, func() error { return e.b.Write(o.bt, vals) })
	if e.r != nil {
		o.rt = e.alloc(e.r, name, dt, shape)
		e.must("ref write "+name, func() error { return e.r.Write(o.rt, vals) })
	}
	return o
}

// output allocates a destination on both backends. The one under test is
// filled with NaN first, so an entry the op fails to write cannot pass.
func (e *env) output(name string, dt engine.DType, shape engine.Shape) *operand {
	e.t.Helper()
	o := &operand{bt: e.alloc(e.b, name, dt, shape)}
	nan := make([]float32, shape.NumElem())
	for i := range nan {
		nan[i] = float32(math.NaN())
	}
	e.must("write "+name, func() error { return e.b.Write(o.bt, nan) })
	if e.r != nil {
		o.rt = e.alloc(e.r, name, dt, shape)
	}
	return o
}

func (e *env) alloc(b engine.Backend, name string, dt engine.DType, shape engine.Shape) *engine.Tensor {
	e.t.Helper()
	var t *engine.Tensor
	e.must(fmt.Sprintf("alloc %s %v%v", name, dt, shape), func() (err error) {
		t, err = b.Alloc(name, dt, shape)
		return err
	})
	if b == e.b {
		e.bts = append(e.bts, t)
	}
	return t
}

// run runs op on the backend under test and, in full mode, on the reference.
func (e *env) run(what string, op func(b engine.Backend, t func(*operand) *engine.Tensor) error) {
	e.t.Helper()
	e.must(what, func() error { return op(e.b, func(o *operand) *engine.Tensor { return tensorOf(o, false) }) })
	if e.r != nil {
		e.must("ref "+what, func() error { return op(e.r, func(o *operand) *engine.Tensor { return tensorOf(o, true) }) })
	}
}

func tensorOf(o *operand, onRef bool) *engine.Tensor {
	if o == nil {
		return nil
	}
	if onRef {
		return o.rt
	}
	return o.bt
}

// got reads the backend's result.
func (e *env) got(o *operand) []float32 {
	e.t.Helper()
	var v []float32
	e.must("read "+o.bt.Name, func() (err error) {
		v, err = e.b.Read(o.bt)
		return err
	})
	return v
}

// want reads the reference's result (full mode only).
func (e *env) want(o *operand) []float32 {
	e.t.Helper()
	v, err := e.r.Read(o.rt)
	if err != nil {
		e.t.Fatalf("ref read %s: %v", o.rt.Name, err)
	}
	return v
}

// checkFull compares the backend's result with the reference's in full.
func (e *env) checkFull(what string, o *operand, tol float64) {
	e.t.Helper()
	checkClose(e.t, what, e.got(o), e.want(o), nil, tol)
}

// checkExactFull requires the backend's result to equal the reference's.
func (e *env) checkExactFull(what string, o *operand) {
	e.t.Helper()
	checkExact(e.t, what, e.got(o), e.want(o))
}

// sampleIdx returns a deterministic sample of count indices in [0, n), the
// first and last included; all of them when n <= count.
func (e *env) sampleIdx(n, count int) []int {
	if n <= count {
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	idx := []int{0, n - 1}
	for len(idx) < count {
		idx = append(idx, e.rng.IntN(n))
	}
	return idx
}

// checkClose compares got with want by NMSE at every index (idx nil) or at
// the sampled indices idx (want[i] belongs to got[idx[i]]). NaN or Inf in
// one and not the other fails whatever the NMSE. A single entry may also
// not stray by more than 64·sqrt(tol) times the RMS of want (2% for F32,
// 20% with F16): NMSE alone would let one wrong entry among thousands pass,
// as a bug at a workgroup border makes.
func checkClose(t testing.TB, what string, got, want []float32, idx []int, tol float64) {
	t.Helper()
	checkCloseAbs(t, what, got, want, idx, tol, -1)
}

// checkCloseAbs is checkClose with a bound on each entry's error,
// |got - want| <= abs·(1 + |want|), when abs >= 0. The activations use it:
// their NMSE cannot tell erf GELU from its tanh approximation (they differ
// by at most 4.7e-4), an absolute bound of 1e-5 can.
func checkCloseAbs(t testing.TB, what string, got, want []float32, idx []int, tol, abs float64) {
	t.Helper()
	n := len(want)
	if idx == nil && len(got) != n {
		t.Fatalf("%s: %d values, want %d", what, len(got), n)
	}
	at := func(i int) int {
		if idx != nil {
			return idx[i]
		}
		return i
	}
	var num, den float64
	finite := 0
	worst, worstErr := -1, -1.0
	for i := 0; i < n; i++ {
		g, w := float64(got[at(i)]), float64(want[i])
		if math.IsNaN(g) != math.IsNaN(w) || (math.IsInf(w, 0) || math.IsInf(g, 0)) && g != w {
			t.Fatalf("%s: entry %d is %g, want %g (NaN/Inf mismatch)", what, at(i), g, w)
		}
		if math.IsNaN(w) || math.IsInf(w, 0) {
			continue
		}
		d := (g - w) * (g - w)
		if abs >= 0 && math.Sqrt(d) > abs*(1+math.Abs(w)) {
			t.Fatalf("%s: entry %d is %g, want %g (error %.3g > %.0e·(1+|want|))", what, at(i), g, w, math.Abs(g-w), abs)
		}
		num += d
		den += w * w
		finite++
		if d > worstErr {
			worst, worstErr = i, d
		}
	}
	if finite == 0 {
		return
	}
	rms := math.Sqrt(den / float64(finite))
	if den == 0 {
		den, rms = float64(finite), 1 // all-zero reference: compare the MSE with 1
	}
	if nmse := num / den; nmse > tol {
		t.Fatalf("%s: NMSE %.3g > %.0e (worst entry %d: got %g, want %g)", what, nmse, tol, at(worst), got[at(worst)], want[worst])
	}
	if lim := 64 * math.Sqrt(tol) * rms; math.Sqrt(worstErr) > lim {
		t.Fatalf("%s: entry %d is %g, want %g: error %.3g exceeds 64·sqrt(%.0e)·RMS = %.3g", what, at(worst), got[at(worst)], want[worst], math.Sqrt(worstErr), tol, lim)
	}
}

// checkExact requires equal values (any NaN matches any NaN).
func checkExact(t testing.TB, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if math.Float32bits(g) != math.Float32bits(w) && !(g != g && w != w) {
			t.Fatalf("%s: entry %d is %g (%#08x), want %g (%#08x)", what, i, g, math.Float32bits(g), w, math.Float32bits(w))
		}
	}
}

// tolFor is TolF16 when any of the dtypes is F16, else TolF32.
func tolFor(dts ...engine.DType) float64 {
	for _, d := range dts {
		if d == engine.F16 {
			return TolF16
		}
	}
	return TolF32
}
