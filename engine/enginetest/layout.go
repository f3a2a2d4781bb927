package enginetest

import (
	"fmt"
	"math"
	"testing"

	"github.com/zimage/zimage/engine"
)

// Layout ops move values without arithmetic: they must match the reference
// exactly.

// Upsample2x runs nearest-neighbour upsampling.
func Upsample2x(t *testing.T, b engine.Backend, opts ...Option) {
	for _, shape := range []engine.Shape{{1, 1, 1, 1}, {2, 3, 5, 7}, {1, 3, 17, 1}, {1, 1280, 8, 8}, {1, 320, 32, 32}} {
		t.Run(shape.String(), func(t *testing.T) { checkUpsample2x(t, b, shape) })
	}
}

func checkUpsample2x(t testing.TB, b engine.Backend, shape engine.Shape) {
	t.Helper()
	name := "upsample2x " + shape.String()
	e := newEnv(t, b, name, true)
	defer e.close()
	x := e.input("upsample2x.x", engine.F32, shape, 1)
	d := e.output("upsample2x.dst", engine.F32, engine.Shape{shape[0], shape[1], 2 * shape[2], 2 * shape[3]})
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error { return be.Upsample2x(tt(d), tt(x)) })
	e.checkExactFull(name, d)
}

// Concat joins tensors of 2 to 4 dims on axis 1.
func Concat(t *testing.T, b engine.Backend, opts ...Option) {
	for _, pair := range [][2]engine.Shape{
		{{1, 1, 1, 1}, {1, 2, 1, 1}},
		{{2, 3, 5, 7}, {2, 4, 5, 7}},
		{{2, 3, 5}, {2, 1, 5}},
		{{3, 4}, {3, 1}},
		{{1, 640, 32, 32}, {1, 320, 32, 32}}, // UNet up-block skip connection
		{{2, 1280, 8, 8}, {2, 1280, 8, 8}},
	} {
		t.Run(fmt.Sprintf("%v++%v", pair[0], pair[1]), func(t *testing.T) { checkConcat(t, b, pair[0], pair[1]) })
	}
}

func checkConcat(t testing.TB, b engine.Backend, as, bs engine.Shape) {
	t.Helper()
	name := fmt.Sprintf("concat %v ++ %v", as, bs)
	e := newEnv(t, b, name, true)
	defer e.close()
	a := e.input("concat.a", engine.F32, as, 1)
	c := e.input("concat.b", engine.F32, bs, 1)
	out := as.Clone()
	out[1] += bs[1]
	d := e.output("concat.dst", engine.F32, out)
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error { return be.Concat(tt(d), tt(a), tt(c)) })
	e.checkExactFull(name, d)
}

// Permute runs every permutation of a 4-D and a 3-D tensor and the layout
// changes the networks make (NCHW <-> tokens, splitting heads).
func Permute(t *testing.T, b engine.Backend, opts ...Option) {
	type perm struct {
		shape engine.Shape
		p     []int
	}
	var cases []perm
	for _, p := range permutations(4) {
		cases = append(cases, perm{engine.Shape{2, 3, 5, 7}, p})
	}
	for _, p := range permutations(3) {
		cases = append(cases, perm{engine.Shape{3, 4, 17}, p})
	}
	cases = append(cases,
		perm{engine.Shape{5}, []int{0}},
		perm{engine.Shape{17, 3}, []int{1, 0}},
		perm{engine.Shape{1, 320, 64, 64}, []int{0, 2, 3, 1}}, // NCHW -> NHWC (tokens)
		perm{engine.Shape{1, 64, 64, 320}, []int{0, 3, 1, 2}}, // and back
		perm{engine.Shape{2, 77, 8, 40}, []int{0, 2, 1, 3}},   // split heads
	)
	for _, c := range cases {
		t.Run(fmt.Sprintf("%v_by_%v", c.shape, c.p), func(t *testing.T) { checkPermute(t, b, c.shape, c.p) })
	}
}

func checkPermute(t testing.TB, b engine.Backend, shape engine.Shape, perm []int) {
	t.Helper()
	name := fmt.Sprintf("permute %v by %v", shape, perm)
	out, err := engine.PermuteShape(shape, perm)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, b, name, true)
	defer e.close()
	x := e.input("permute.x", engine.F32, shape, 1)
	d := e.output("permute.dst", engine.F32, out)
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error { return be.Permute(tt(d), tt(x), perm) })
	e.checkExactFull(name, d)
}

// permutations lists every permutation of 0..n-1.
func permutations(n int) [][]int {
	if n == 1 {
		return [][]int{{0}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for pos := 0; pos <= len(p); pos++ {
			q := append(append(append([]int(nil), p[:pos]...), n-1), p[pos:]...)
			out = append(out, q)
		}
	}
	return out
}

// Embedding gathers rows of F32 and F16 tables, ids repeated and at both
// ends of the table.
func Embedding(t *testing.T, b engine.Backend, opts ...Option) {
	for _, tc := range []struct{ v, d, n int }{
		{1, 1, 1},
		{5, 3, 17},
		{1000, 64, 77},
		{77, 1024, 77},  // position embedding
		{49408, 32, 77}, // tiny CLIP token embedding
	} {
		for _, dt := range []engine.DType{engine.F32, engine.F16} {
			t.Run(fmt.Sprintf("%dx%d_%v_%d_ids", tc.v, tc.d, dt, tc.n), func(t *testing.T) {
				checkEmbedding(t, b, tc.v, tc.d, tc.n, dt)
			})
		}
	}
}

// checkEmbedding gathers n seeded ids (the first V-1, the last 0) from a
// [v, d] table of dtype dt.
func checkEmbedding(t testing.TB, b engine.Backend, v, d, n int, dt engine.DType) {
	t.Helper()
	name := fmt.Sprintf("embedding %v[%d %d] %d ids", dt, v, d, n)
	e := newEnv(t, b, name, true)
	defer e.close()
	ids := make([]int32, n)
	for i := range ids {
		ids[i] = int32(e.rng.IntN(v))
	}
	ids[0], ids[n-1] = int32(v-1), 0
	table := e.input("embedding.table", dt, engine.Shape{v, d}, 1)
	dst := e.output("embedding.dst", engine.F32, engine.Shape{n, d})
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.Embedding(tt(dst), tt(table), ids)
	})
	e.checkExactFull(name, dst)
}

// Copy converts between every pair of dtypes. F32 -> F16 must round to
// nearest even, overflow to Inf, keep NaN and signed zeros and produce
// subnormals: the first entries are such special values.
func Copy(t *testing.T, b engine.Backend, opts ...Option) {
	for _, shape := range []engine.Shape{{1}, {17}, {3, 5, 7}, {1, 4, 64, 64}} {
		for _, src := range []engine.DType{engine.F32, engine.F16} {
			for _, dst := range []engine.DType{engine.F32, engine.F16} {
				t.Run(fmt.Sprintf("%v_%v_to_%v", shape, src, dst), func(t *testing.T) { checkCopy(t, b, shape, src, dst) })
			}
		}
	}
}

// checkCopy copies seeded values whose first entries are special ones.
func checkCopy(t testing.TB, b engine.Backend, shape engine.Shape, src, dst engine.DType) {
	t.Helper()
	special := []float32{
		float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), 0, float32(math.Copysign(0, -1)),
		65504, 65519, 65520, -1e6, // largest F16, just below and at the overflow tie
		1 + 1.0/2048, 1 + 3.0/2048, // ties to even
		float32(math.Ldexp(1, -24)), float32(math.Ldexp(1, -25)), float32(math.Ldexp(1.5, -25)), 3e-6, -1e-7, // subnormals
		float32(math.Ldexp(1023.5, -24)), // rounds up into the normal range
	}
	name := fmt.Sprintf("copy %v %v to %v", shape, src, dst)
	e := newEnv(t, b, name, true)
	defer e.close()
	vals := e.random(shape.NumElem(), 100)
	copy(vals, special)
	x := e.inputData("copy.x", src, shape, vals)
	d := e.output("copy.dst", dst, shape)
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error { return be.Copy(tt(d), tt(x)) })
	e.checkExactFull(name, d)
}
