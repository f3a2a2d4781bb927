package enginetest

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
)

// Block-quantized weights: random blocks (every bit pattern of the quants,
// scales and high bits; seeded d, dmin and m halves sized so that values
// stay near [-1, 1], now and then zero), decoded on the host by
// engine.Dequantize, the reference's exact decoder. Both backends see the
// same decoded weights, so products are held to TolF32: only the order of
// the float32 sums differs.

// blockHalves places a block type's F16 scale fields: byte offset and the
// magnitude that keeps values near amp.
var blockHalves = map[engine.DType][]struct {
	off   int
	scale float32
}{
	engine.Q4_0: {{0, 1.0 / 8}},
	engine.Q4_1: {{0, 1.0 / 15}, {2, 1}},
	engine.Q5_0: {{0, 1.0 / 16}},
	engine.Q5_1: {{0, 1.0 / 31}, {2, 1}},
	engine.Q8_0: {{0, 1.0 / 127}},
	engine.Q2_K: {{80, 1.0 / 45}, {82, 1.0 / 15}},
	engine.Q3_K: {{108, 1.0 / 128}},
	engine.Q4_K: {{0, 1.0 / 945}, {2, 1.0 / 63}},
	engine.Q5_K: {{0, 1.0 / 1953}, {2, 1.0 / 63}},
	engine.Q6_K: {{208, 1.0 / 4096}},
}

// randomBlocks returns n elements of seeded random blocks of type dt.
func (e *env) randomBlocks(dt engine.DType, n int, amp float32) []byte {
	raw := make([]byte, dt.RowBytes(n))
	for i := range raw {
		raw[i] = byte(e.rng.Uint32())
	}
	bb := dt.BlockBytes()
	for b := 0; b < n/dt.BlockSize(); b++ {
		zero := e.rng.IntN(16) == 0 // a zero scale now and then
		for _, h := range blockHalves[dt] {
			v := amp * h.scale * (0.25 + 0.75*e.rng.Float32())
			if e.rng.IntN(2) == 0 {
				v = -v
			}
			if zero {
				v = 0
			}
			binary.LittleEndian.PutUint16(raw[b*bb+h.off:], ref.F32ToF16(v))
		}
	}
	return raw
}

// inputBlocks allocates a block-quantized tensor on both backends holding
// random blocks; host holds their exact decoding.
func (e *env) inputBlocks(name string, dt engine.DType, shape engine.Shape, amp float32) *operand {
	e.t.Helper()
	raw := e.randomBlocks(dt, shape.NumElem(), amp)
	vals := make([]float32, shape.NumElem())
	if err := engine.Dequantize(dt, raw, vals); err != nil {
		e.t.Fatal(err)
	}
	o := &operand{host: vals, bt: e.alloc(e.b, name, dt, shape)}
	e.must("write "+name, func() error { return e.b.WriteRaw(o.bt, raw, dt) })
	if e.r != nil {
		o.rt = e.alloc(e.r, name, dt, shape)
		e.must("ref write "+name, func() error { return e.r.WriteRaw(o.rt, raw, dt) })
	}
	return o
}

// BlockTypesOf lists the block types b runs weights of.
func BlockTypesOf(b engine.Backend) []engine.DType {
	var out []engine.DType
	for _, dt := range engine.BlockTypes {
		if engine.SupportsBlocks(b, dt) {
			out = append(out, dt)
		}
	}
	return out
}

// Quantized runs Linear, Conv2d and Copy on block-quantized weights of
// every type the backend supports (none: skipped), and checks the errors
// for rows that are not whole blocks.
func Quantized(t *testing.T, b engine.Backend, opts ...Option) {
	types := BlockTypesOf(b)
	if len(types) == 0 {
		t.Skipf("%s runs no block-quantized weights", b.Name())
	}
	for _, dt := range types {
		t.Run(dt.String(), func(t *testing.T) {
			t.Run("Linear", func(t *testing.T) { QuantLinear(t, b, dt, opts...) })
			t.Run("Conv2d", func(t *testing.T) { QuantConv2d(t, b, dt, opts...) })
			t.Run("Copy", func(t *testing.T) { QuantCopy(t, b, dt) })
			t.Run("Errors", func(t *testing.T) { quantErrors(t, b, dt) })
		})
	}
}

// QuantLinear runs Linear with weights of block type dt on awkward shapes
// (one block, an odd number of blocks per row, so that rows of 2-byte
// aligned blocks start mid-word; edge tiles) and SD, SDXL and Z-Image
// shapes; K-quants take the shapes whose rows are whole 256-blocks.
func QuantLinear(t *testing.T, b engine.Backend, dt engine.DType, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		batch, rows, k, n int
		bias, big         bool
	}{
		{1, 1, 32, 1, true, false},
		{1, 3, 32, 5, false, false},
		{2, 5, 64, 31, true, false},
		{1, 17, 96, 33, true, false}, // 3 blocks a row: odd rows start mid-word
		{1, 9, 256, 17, true, false},
		{2, 7, 768, 40, false, false}, // 3 super-blocks
		{1, 20, 512, 129, true, false},
		{1, 300, 1024, 300, true, false},   // sampled reference
		{1, 4096, 320, 320, true, true},    // SD attention projection at 64x64
		{1, 1024, 1280, 1280, true, true},  // SDXL attention at 32x32
		{1, 77, 768, 3072, true, true},     // CLIP MLP up
		{1, 1056, 3840, 3840, true, true},  // Z-Image attention at 512²
		{1, 1056, 10240, 3840, true, true}, // Z-Image feed-forward down
	} {
		if tc.k%dt.BlockSize() != 0 {
			continue
		}
		t.Run(fmt.Sprintf("x%dx%dx%d_w%dx%d_bias=%v", tc.batch, tc.rows, tc.k, tc.n, tc.k, tc.bias), func(t *testing.T) {
			if tc.big {
				c.big(t)
			}
			CheckQuantLinear(t, b, dt, tc.batch, tc.rows, tc.k, tc.n, tc.bias)
		})
	}
}

// CheckQuantLinear checks Linear on x [batch, rows, k] and random blocks
// w [n, k] of type dt against the reference (CheckLinear with block
// weights).
func CheckQuantLinear(t testing.TB, b engine.Backend, dt engine.DType, batch, rows, k, n int, bias bool) {
	t.Helper()
	CheckLinear(t, b, batch, rows, k, n, bias, dt)
}

// QuantConv2d runs Conv2d with weights of block type dt whose rows
// (C*KH*KW) are whole blocks: 3x3 at the shapes a backend may run through
// Winograd, im2col or a direct kernel, strided, 1x1, batched, and SD
// shapes.
func QuantConv2d(t *testing.T, b engine.Backend, dt engine.DType, opts ...Option) {
	c := configOf(opts)
	for _, tc := range []struct {
		n, c, h, w, o, k, stride, pad int
		big                           bool
	}{
		{1, 32, 9, 9, 16, 3, 1, 1, false},
		{2, 32, 17, 17, 20, 3, 2, 1, false},
		{1, 32, 5, 6, 8, 3, 1, 1, false}, // few output channels
		{2, 64, 8, 8, 24, 1, 1, 0, false},
		{1, 64, 32, 32, 64, 3, 1, 1, false}, // Winograd-sized
		{1, 256, 6, 6, 8, 3, 1, 1, false},
		{1, 256, 9, 7, 40, 1, 1, 0, false},
		{1, 256, 16, 16, 64, 3, 1, 1, false},
		{1, 320, 64, 64, 320, 3, 1, 1, true},  // UNet down block 0 at 512²
		{1, 320, 64, 64, 320, 3, 2, 1, true},  // downsampler
		{1, 640, 32, 32, 320, 1, 1, 0, true},  // skip 1x1
		{1, 1280, 8, 8, 1280, 3, 1, 1, true},  // innermost resnets
		{1, 512, 32, 32, 512, 3, 1, 1, true},  // 256-row K-quant shape
		{1, 1280, 16, 16, 640, 1, 1, 0, true}, // 1x1, 256-row
	} {
		if tc.c*tc.k*tc.k%dt.BlockSize() != 0 {
			continue
		}
		name := fmt.Sprintf("x%dx%dx%dx%d_w%dx%dx%dx%d_s%d_p%d", tc.n, tc.c, tc.h, tc.w, tc.o, tc.c, tc.k, tc.k, tc.stride, tc.pad)
		t.Run(name, func(t *testing.T) {
			if tc.big {
				c.big(t)
			}
			CheckQuantConv2d(t, b, dt, tc.n, tc.c, tc.h, tc.w, tc.o, tc.k, tc.stride, tc.pad)
		})
	}
}

// CheckQuantConv2d checks Conv2d of x [n, c, h, w] with random k×k blocks
// of type dt (c*k*k whole blocks), o output channels and a bias.
func CheckQuantConv2d(t testing.TB, b engine.Backend, dt engine.DType, n, c, h, w, o, k, stride, pad int) {
	t.Helper()
	g := convGeom{n: n, c: c, h: h, w: w, o: o, kh: k, kw: k, stride: stride, pad: pad,
		oh: (h+2*pad-k)/stride + 1, ow: (w+2*pad-k)/stride + 1}
	name := fmt.Sprintf("conv2d x[%d %d %d %d] w %v[%d %d %d %d] stride %d pad %d", n, c, h, w, dt, o, c, k, k, stride, pad)
	e := newEnv(t, b, name, n*o*g.oh*g.ow*c*k*k <= fullMACs)
	defer e.close()
	x := e.input("conv2d.x", engine.F32, engine.Shape{n, c, h, w}, 1)
	wt := e.inputBlocks("conv2d.w", dt, engine.Shape{o, c, k, k}, 1)
	bo := e.input("conv2d.bias", engine.F32, engine.Shape{o}, 1)
	p := engine.Conv2dParams{Stride: stride, Pad: pad}
	d := e.output("conv2d.dst", engine.F32, engine.Shape{n, o, g.oh, g.ow})
	e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error {
		return be.Conv2d(tt(d), tt(x), tt(wt), tt(bo), p)
	})
	if e.r != nil {
		e.checkFull(name, d, TolF32)
		return
	}
	idx := e.sampleIdx(n*o*g.oh*g.ow, samples)
	want := make([]float32, len(idx))
	for i, j := range idx {
		want[i] = convAt(x.host, wt.host, bo.host, g, j)
	}
	checkClose(t, name, e.got(d), want, idx, TolF32)
}

// QuantCopy decodes blocks of type dt into F32 (exactly the reference's
// values, bit for bit) and F16 (those values rounded), and reads them back
// through Read.
func QuantCopy(t testing.TB, b engine.Backend, dt engine.DType) {
	t.Helper()
	for _, shape := range []engine.Shape{{1, dt.BlockSize()}, {3, 3 * dt.BlockSize()}, {5, 2, 7 * dt.BlockSize()}} {
		name := fmt.Sprintf("copy %v%v", dt, shape)
		e := newEnv(t, b, name, true)
		x := e.inputBlocks("copy.x", dt, shape, 4)
		checkExact(t, name+" read", e.got(x), x.host)
		for _, to := range []engine.DType{engine.F32, engine.F16} {
			d := e.output("copy.dst", to, shape)
			e.run(name, func(be engine.Backend, tt func(*operand) *engine.Tensor) error { return be.Copy(tt(d), tt(x)) })
			want := x.host
			if to == engine.F16 {
				want = make([]float32, len(x.host))
				for i, v := range x.host {
					want[i] = ref.RoundF16(v)
				}
			}
			checkExact(t, fmt.Sprintf("%s to %v", name, to), e.got(d), want)
			e.checkExactFull(name, d)
		}
		e.close()
	}
}

// quantErrors: rows that are not whole blocks, float writes into blocks
// and copies into a block type are refused with an error, not a panic.
func quantErrors(t testing.TB, b engine.Backend, dt engine.DType) {
	t.Helper()
	bs := dt.BlockSize()
	e := newEnv(t, b, "quant errors "+dt.String(), false)
	defer e.close()
	// [2, bs/2, 2, 2]: 2*bs elements, but a conv row (C*KH*KW = 2*bs) of
	// whole blocks; Linear on its [4, bs/2] reshape has half-block rows.
	w := e.inputBlocks("q.w", dt, engine.Shape{4, bs / 2}, 1)
	x := e.input("q.x", engine.F32, engine.Shape{3, bs / 2}, 1)
	y := e.output("q.y", engine.F32, engine.Shape{3, 4})
	if err := call(t, "linear", func() error { return b.Linear(y.bt, x.bt, w.bt, nil) }); err == nil {
		t.Errorf("linear with %v rows of %d elements returned no error", dt, bs/2)
	}
	if err := call(t, "write", func() error { return b.Write(w.bt, make([]float32, 2*bs)) }); err == nil {
		t.Errorf("writing float32 values into %v blocks returned no error", dt)
	}
	f := e.input("q.f", engine.F32, engine.Shape{4, bs / 2}, 1)
	if err := call(t, "copy", func() error { return b.Copy(w.bt, f.bt) }); err == nil {
		t.Errorf("copy into %v blocks returned no error", dt)
	}
	if err := call(t, "write_raw", func() error { return b.WriteRaw(w.bt, make([]byte, 2*bs*2), engine.F16) }); err == nil {
		t.Errorf("writing F16 data into %v blocks returned no error", dt)
	}
	if err := call(t, "scale", func() error { return b.Scale(w.bt, w.bt, 2, 0) }); err == nil {
		t.Errorf("scale of %v blocks returned no error", dt)
	}
}
