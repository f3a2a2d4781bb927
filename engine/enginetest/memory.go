package enginetest

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
)

// Memory checks allocation accounting, the budget, Write/WriteRaw/Read
// conversions and Flush.
func Memory(t *testing.T, b engine.Backend, opts ...Option) {
	t.Run("Accounting", func(t *testing.T) {
		s0 := b.MemStats()
		x, err := b.Alloc("mem.x", engine.F32, engine.Shape{1000})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Free(x)
		s1 := b.MemStats()
		if s1.InUse < s0.InUse+x.Bytes() || s1.Peak < s1.InUse {
			t.Fatalf("after allocating %d bytes: %+v, before %+v", x.Bytes(), s1, s0)
		}
		y, err := b.Alloc("mem.y", engine.F16, engine.Shape{3, 17})
		if err != nil {
			t.Fatal(err)
		}
		if s := b.MemStats(); s.InUse < s1.InUse+y.Bytes() {
			t.Fatalf("after allocating %d more bytes: %+v, before %+v", y.Bytes(), s, s1)
		}
		v, err := x.SliceRows(10, 20)
		if err != nil {
			t.Fatal(err)
		}
		b.Free(v)
		b.Free(nil)
		b.Free(y)
		if s := b.MemStats(); s.InUse != s1.InUse {
			t.Fatalf("after freeing a view, nil and mem.y: %+v, want InUse %d", s, s1.InUse)
		}
		b.ResetPeak()
		if s := b.MemStats(); s.Peak != s.InUse {
			t.Fatalf("after ResetPeak: %+v", s)
		}
		if _, err := b.Alloc("mem.bad", engine.F32, engine.Shape{4, 0}); err == nil {
			t.Fatal("Alloc of shape [4 0] returned no error")
		}
		if err := b.Flush(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Budget", func(t *testing.T) {
		s := b.MemStats()
		if s.Budget <= 0 {
			t.Skip("backend has no budget")
		}
		n := (s.Budget-s.InUse)/4 + 1
		x, err := b.Alloc("mem.over_budget", engine.F32, engine.Shape{int(n)})
		if err == nil {
			b.Free(x)
			t.Fatalf("allocating %d bytes with %d of %d in use returned no error", 4*n, s.InUse, s.Budget)
		}
	})
	t.Run("WriteRead", func(t *testing.T) {
		vals := []float32{0, float32(math.Copysign(0, -1)), 1, -2.5, 1.0 / 3, 65520, 1e-7, float32(math.Inf(-1)), 3.4e38, float32(math.NaN())}
		for _, dt := range []engine.DType{engine.F32, engine.F16} {
			x, err := b.Alloc("mem.rw", dt, engine.Shape{2, 5})
			if err != nil {
				t.Fatal(err)
			}
			want := append([]float32(nil), vals...)
			if dt == engine.F16 {
				for i, v := range want {
					want[i] = ref.RoundF16(v)
				}
			}
			mustOK(t, "write", b.Write(x, vals))
			checkExact(t, "read after write "+dt.String(), readAll(t, b, x), want)
			// Raw F32 bytes convert like Write does.
			raw := make([]byte, 4*len(vals))
			for i, v := range vals {
				binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
			}
			mustOK(t, "write_raw F32", b.WriteRaw(x, raw, engine.F32))
			checkExact(t, "read after raw F32 write into "+dt.String(), readAll(t, b, x), want)
			// Raw F16 bytes are exact in either dtype.
			raw16 := make([]byte, 2*len(vals))
			for i, v := range vals {
				binary.LittleEndian.PutUint16(raw16[2*i:], ref.F32ToF16(v))
			}
			mustOK(t, "write_raw F16", b.WriteRaw(x, raw16, engine.F16))
			want16 := make([]float32, len(vals))
			for i, v := range vals {
				want16[i] = ref.RoundF16(v)
			}
			checkExact(t, "read after raw F16 write into "+dt.String(), readAll(t, b, x), want16)
			if err := call(t, "write", func() error { return b.Write(x, vals[:9]) }); err == nil {
				t.Errorf("Write of 9 values into %v returned no error", x)
			}
			if err := call(t, "write_raw", func() error { return b.WriteRaw(x, raw16[:18], engine.F16) }); err == nil {
				t.Errorf("WriteRaw of 18 bytes of F16 into %v returned no error", x)
			}
			if err := call(t, "write_raw", func() error { return b.WriteRaw(x, raw16, engine.F32) }); err == nil {
				t.Errorf("WriteRaw of 20 bytes of F32 into %v returned no error", x)
			}
			b.Free(x)
		}
	})
}

func mustOK(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func readAll(t testing.TB, b engine.Backend, x *engine.Tensor) []float32 {
	t.Helper()
	var v []float32
	mustOK(t, "read "+x.Name, call(t, "read "+x.Name, func() (err error) {
		v, err = b.Read(x)
		return err
	}))
	return v
}

// viewIn is one input of a view case: sliced inputs have a parent of 3 rows
// (on axis 0) and the op reads rows [1, 3).
type viewIn struct {
	shape  engine.Shape // the view's shape (parent has 3 rows when sliced)
	dt     engine.DType
	sliced bool
}

// Views runs ops on row slices (tensors with a non-zero Offset): inputs are
// rows [1, 3) of 3-row parents, results go to rows [0, 2) of a 3-row parent
// whose last row must stay untouched. In-place ops also run on views.
func Views(t *testing.T, b engine.Backend, opts ...Option) {
	f32, f16 := engine.F32, engine.F16
	for _, c := range []struct {
		name  string
		ins   []viewIn
		out   engine.Shape
		outDT engine.DType
		op    func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error
	}{
		{"Linear", []viewIn{{engine.Shape{2, 4, 8}, f32, true}, {engine.Shape{5, 8}, f16, false}, {engine.Shape{5}, f32, false}},
			engine.Shape{2, 4, 5}, f32, func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.Linear(d, in[0], in[1], in[2])
			}},
		{"MatMul", []viewIn{{engine.Shape{2, 3, 8}, f32, true}, {engine.Shape{2, 8, 5}, f32, true}},
			engine.Shape{2, 3, 5}, f32, func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.MatMul(d, in[0], in[1], false, 1)
			}},
		{"Conv2d", []viewIn{{engine.Shape{2, 3, 5, 6}, f32, true}, {engine.Shape{4, 3, 3, 3}, f16, false}},
			engine.Shape{2, 4, 5, 6}, f32, func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.Conv2d(d, in[0], in[1], nil, engine.Conv2dParams{Stride: 1, Pad: 1})
			}},
		{"GroupNorm", []viewIn{{engine.Shape{2, 4, 3, 3}, f32, true}, {engine.Shape{4}, f32, false}, {engine.Shape{4}, f32, false}},
			engine.Shape{2, 4, 3, 3}, f32, func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.GroupNorm(d, in[0], in[1], in[2], 2, 1e-5, true)
			}},
		{"LayerNorm", []viewIn{{engine.Shape{2, 7}, f32, true}, {engine.Shape{7}, f32, false}, {engine.Shape{7}, f32, false}},
			engine.Shape{2, 7}, f32, func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.LayerNorm(d, in[0], in[1], in[2], 1e-5)
			}},
		{"Softmax", []viewIn{{engine.Shape{2, 3, 9}, f32, true}}, engine.Shape{2, 3, 9}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error { return be.Softmax(d, in[0]) }},
		{"Attention", []viewIn{{engine.Shape{2, 5, 8}, f32, true}, {engine.Shape{2, 7, 8}, f32, true}, {engine.Shape{2, 7, 8}, f32, true}},
			engine.Shape{2, 5, 8}, f32, func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.Attention(d, in[0], in[1], in[2], engine.AttentionOptions{Heads: 2, Scale: 0.5})
			}},
		{"AttentionMasks", []viewIn{{engine.Shape{2, 5, 8}, f32, true}, {engine.Shape{2, 7, 4}, f32, true}, {engine.Shape{2, 7, 4}, f32, true}},
			engine.Shape{2, 5, 8}, f32, func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.Attention(d, in[0], in[1], in[2], engine.AttentionOptions{Heads: 2, KVHeads: 1, Scale: 0.5, Causal: true, KeyLens: []int{7, 3}})
			}},
		{"RMSNorm", []viewIn{{engine.Shape{2, 3, 8}, f32, true}, {engine.Shape{8}, f32, false}}, engine.Shape{2, 3, 8}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.RMSNorm(d, in[0], in[1], 1e-6)
			}},
		{"Rope", []viewIn{{engine.Shape{2, 3, 16}, f32, true}, {engine.Shape{2, 3, 4}, f32, true}, {engine.Shape{2, 3, 4}, f32, true}},
			engine.Shape{2, 3, 16}, f32, func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.Rope(d, in[0], in[1], in[2], 2, engine.RopeHalf)
			}},
		{"SwiGLU", []viewIn{{engine.Shape{2, 6}, f32, true}, {engine.Shape{2, 6}, f32, true}}, engine.Shape{2, 6}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.SwiGLU(d, in[0], in[1])
			}},
		{"Unary", []viewIn{{engine.Shape{2, 9}, f32, true}}, engine.Shape{2, 9}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.Unary(d, in[0], engine.GELU)
			}},
		{"GEGLU", []viewIn{{engine.Shape{2, 3, 10}, f32, true}}, engine.Shape{2, 3, 5}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error { return be.GEGLU(d, in[0]) }},
		{"Binary", []viewIn{{engine.Shape{2, 3, 4}, f32, true}, {engine.Shape{2, 1, 4}, f32, true}}, engine.Shape{2, 3, 4}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.Binary(d, in[0], in[1], engine.Mul)
			}},
		{"Scale", []viewIn{{engine.Shape{2, 5}, f32, true}}, engine.Shape{2, 5}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error { return be.Scale(d, in[0], 3, -1) }},
		{"Upsample2x", []viewIn{{engine.Shape{2, 2, 3, 3}, f32, true}}, engine.Shape{2, 2, 6, 6}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error { return be.Upsample2x(d, in[0]) }},
		{"Concat", []viewIn{{engine.Shape{2, 2, 3}, f32, true}, {engine.Shape{2, 1, 3}, f32, true}}, engine.Shape{2, 3, 3}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.Concat(d, in[0], in[1])
			}},
		{"Permute", []viewIn{{engine.Shape{2, 3, 4}, f32, true}}, engine.Shape{2, 4, 3}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.Permute(d, in[0], []int{0, 2, 1})
			}},
		{"Embedding", []viewIn{{engine.Shape{2, 6}, f16, true}}, engine.Shape{2, 6}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error {
				return be.Embedding(d, in[0], []int32{1, 0})
			}},
		{"CopyToF16", []viewIn{{engine.Shape{2, 5}, f32, true}}, engine.Shape{2, 5}, f16,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error { return be.Copy(d, in[0]) }},
		{"CopyFromF16", []viewIn{{engine.Shape{2, 5}, f16, true}}, engine.Shape{2, 5}, f32,
			func(be engine.Backend, d *engine.Tensor, in []*engine.Tensor) error { return be.Copy(d, in[0]) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, b, "views "+c.name, true)
			defer e.close()
			var views, refs []*engine.Tensor
			tol := tolFor(c.outDT)
			for i, in := range c.ins {
				tol = max(tol, tolFor(in.dt))
				shape := in.shape
				if in.sliced {
					shape = append(engine.Shape{3}, in.shape[1:]...)
				}
				p := e.input("views.in", in.dt, shape, 2)
				v := p.bt
				host := p.host
				if in.sliced {
					var err error
					if v, err = p.bt.SliceRows(1, 3); err != nil {
						t.Fatal(err)
					}
					row := len(host) / 3
					host = host[row:]
				}
				if in.sliced && v.Offset == 0 {
					t.Fatalf("input %d: a slice from row 1 has offset 0", i)
				}
				views = append(views, v)
				refs = append(refs, e.alloc(e.r, "views.ref_in", in.dt, in.shape))
				mustOK(t, "ref write", e.r.Write(refs[i], host))
			}
			parent := append(engine.Shape{3}, c.out[1:]...)
			dp := e.alloc(e.b, "views.dst", c.outDT, parent)
			sentinel := make([]float32, parent.NumElem())
			for i := range sentinel {
				sentinel[i] = 7
			}
			mustOK(t, "write sentinel", e.b.Write(dp, sentinel))
			dv, err := dp.SliceRows(0, 2)
			if err != nil {
				t.Fatal(err)
			}
			rd := e.alloc(e.r, "views.ref_dst", c.outDT, c.out)
			e.must(c.name+" on views", func() error { return c.op(e.b, dv, views) })
			e.must("ref "+c.name, func() error { return c.op(e.r, rd, refs) })
			want := readAll(t, e.r, rd)
			got := readAll(t, e.b, dp)
			n := len(want)
			checkClose(t, c.name+" into rows [0,2) of a view", got[:n], want, nil, tol)
			checkExact(t, c.name+": row 2 of the destination's parent", got[n:], sentinel[n:])
			checkClose(t, c.name+" read through the view", readAll(t, e.b, dv), want, nil, tol)
		})
	}
	t.Run("InPlace", func(t *testing.T) {
		e := newEnv(t, b, "views in place", true)
		defer e.close()
		x := e.input("views.x", engine.F32, engine.Shape{3, 6}, 2)
		y := e.input("views.y", engine.F32, engine.Shape{6}, 2)
		v, err := x.bt.SliceRows(1, 3)
		if err != nil {
			t.Fatal(err)
		}
		rv, err := x.rt.SliceRows(1, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, be := range []struct {
			b    engine.Backend
			v, y *engine.Tensor
		}{{e.b, v, y.bt}, {e.r, rv, y.rt}} {
			e.must("in-place unary on a view", func() error { return be.b.Unary(be.v, be.v, engine.SiLU) })
			e.must("in-place scale on a view", func() error { return be.b.Scale(be.v, be.v, -2, 0.5) })
			e.must("in-place binary on a view", func() error { return be.b.Binary(be.v, be.v, be.y, engine.Add) })
			e.must("in-place swiglu on a view", func() error { return be.b.SwiGLU(be.v, be.v, be.v) })
		}
		e.checkFull("in-place ops on rows [1,3)", x, TolF32)
		checkExact(t, "row 0 untouched", readAll(t, b, x.bt)[:6], x.host[:6])
	})
}
