package vk

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/x448/float16"
	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/enginetest"
	"github.com/zimage/zimage/kernels"
)

// openConv opens a second device on the test device's GPU with the conv
// algorithm forced, closed when the test ends.
func openConv(t testing.TB, algo ConvAlgo) *Device {
	t.Helper()
	device(t)
	opts := DefaultOptions()
	opts.Conv = algo
	d, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d
}

// TestConv2dWinograd runs the conformance suite's convs (big shapes
// included) with Winograd forced for every 3x3 stride-1 conv, at the
// suite's own bounds, and direct-only so that the implicit-GEMM kernel keeps
// its coverage at the shapes ConvAuto now sends to Winograd.
func TestConv2dWinograd(t *testing.T) {
	for _, algo := range []ConvAlgo{ConvWinograd, ConvDirect} {
		t.Run(algo.String(), func(t *testing.T) {
			enginetest.Conv2d(t, openConv(t, algo))
		})
	}
	// Forced Winograd with the other kernel family's matmul (shared-memory
	// tiles on lavapipe, registers on GPUs).
	t.Run("winograd_other_family", func(t *testing.T) {
		opts := DefaultOptions()
		opts.Conv = ConvWinograd
		opts.Tuning = otherFamily(t).Tuning()
		d, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		enginetest.Conv2d(t, d, enginetest.SmallOnly())
		if _, used := d.pipes.modules[kernels.WinogradInput]; !used {
			t.Error("Winograd was not used")
		}
	})
}

// TestConv2dWinogradEdges covers tile edges (maps not a multiple of 4),
// padding other than 1, channel counts not a multiple of 4, batches, and
// chunking over tiles (a map whose scratch exceeds winoChunkBytes).
func TestConv2dWinogradEdges(t *testing.T) {
	d := openConv(t, ConvWinograd)
	for _, c := range []struct{ n, c, h, w, o, pad int }{
		{1, 1, 3, 3, 1, 0},
		{1, 3, 5, 7, 2, 1},
		{2, 5, 6, 9, 7, 2},
		{3, 6, 13, 4, 5, 0},
		{1, 128, 130, 126, 128, 1}, // 1056 tiles: chunks of 910 (winoChunkBytes) and 146
	} {
		for _, wdt := range []engine.DType{engine.F32, engine.F16} {
			enginetest.CheckConv2d(t, d, c.n, c.c, c.h, c.w, c.o, 3, 1, c.pad, wdt)
		}
	}
}

// FuzzConv2dWinograd compares forced Winograd with engine/ref on generated
// 3x3 stride-1 shapes (FuzzConv2d's sizes rarely reach ConvAuto's choice):
// go test -fuzz FuzzConv2dWinograd ./engine/vk.
func FuzzConv2dWinograd(f *testing.F) {
	f.Add(uint8(1), uint8(3), uint8(9), uint8(9), uint8(5), uint8(1), false)
	f.Add(uint8(2), uint8(17), uint8(5), uint8(13), uint8(33), uint8(2), true)
	f.Add(uint8(1), uint8(40), uint8(23), uint8(2), uint8(1), uint8(0), false)
	d := openConv(f, ConvWinograd)
	f.Fuzz(func(t *testing.T, n, c, h, w, o, pad uint8, f16 bool) {
		wdt := engine.F32
		if f16 {
			wdt = engine.F16
		}
		enginetest.CheckConv2d(t, d, int(n)%2+1, int(c)%48+1, int(h)%24+1, int(w)%24+1, int(o)%48+1,
			3, 1, int(pad)%3, wdt)
	})
}

// TestConv2dWinogradFallback checks that a budget too small for the
// Winograd scratch falls back to the direct kernel instead of failing, and
// that a roomier one uses Winograd.
func TestConv2dWinogradFallback(t *testing.T) {
	device(t)
	for _, c := range []struct {
		budget   int64
		winograd bool
	}{
		// x, dst 576 KiB each, w 144 KiB, U 576 KiB, V and M 1.3 MiB each.
		{3 << 20, false},
		{8 << 20, true},
	} {
		opts := DefaultOptions()
		opts.Conv = ConvWinograd
		opts.Budget = c.budget
		d, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		enginetest.CheckConv2d(t, d, 1, 64, 48, 48, 64, 3, 1, 1, engine.F32)
		_, used := d.pipes.modules[kernels.WinogradInput]
		if used != c.winograd {
			t.Errorf("budget %d MiB: Winograd used = %v, want %v", c.budget>>20, used, c.winograd)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestConv2dWinogradChannelGroups shrinks the binding limit so that the
// transformed weights of 150 output channels need three groups (64, 64,
// 22: the last one padded), with a batch of two so that the groups' output
// ranges interleave, and checks the result against the reference.
func TestConv2dWinogradChannelGroups(t *testing.T) {
	device(t)
	opts := DefaultOptions()
	opts.Conv = ConvWinograd
	d, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const n, c, h, w, o = 2, 32, 12, 12, 150
	limit := int64(winoPos * c * 4 * winoGroupAlign)
	if g := winoGroups(o, c, limit); g != winoGroupAlign {
		t.Fatalf("winoGroups = %d, want %d", g, winoGroupAlign)
	}
	d.info.MaxStorageBufferRange = limit
	for _, dt := range []engine.DType{engine.F32, engine.F16} {
		enginetest.CheckConv2d(t, d, n, c, h, w, o, 3, 1, 1, dt)
	}
	if _, used := d.pipes.modules[kernels.WinogradInput]; !used {
		t.Error("Winograd was not used")
	}
}

// TestWinogradAccuracy measures F(4,3)'s rounding at the largest channel
// count SD uses in 3x3 convs (512 in the VAE; the UNet's 1280-channel convs
// run at maps too small for Winograd) against a float64 direct conv, next
// to the direct kernel's, with weights scaled like trained ones (1/sqrt(fan
// in)). The bound is the suite's F32 one.
func TestWinogradAccuracy(t *testing.T) {
	d := device(t)
	const n, c, h, w, o = 1, 512, 24, 24, 64
	r := rand.New(rand.NewPCG(3, 4))
	xs := make([]float32, n*c*h*w)
	ws := make([]float32, o*c*9)
	for i := range xs {
		xs[i] = float32(r.NormFloat64())
	}
	for i := range ws {
		// Representable in F16, so that F32 and F16 weights are the same.
		ws[i] = float16.Fromfloat32(float32(r.NormFloat64() / math.Sqrt(9*c))).Float32()
	}
	want := make([]float64, n*o*h*w)
	for oc := range o {
		for y := range h {
			for xx := range w {
				var s float64
				for ic := range c {
					for ky := range 3 {
						for kx := range 3 {
							iy, ix := y+ky-1, xx+kx-1
							if iy >= 0 && iy < h && ix >= 0 && ix < w {
								s += float64(ws[((oc*c+ic)*3+ky)*3+kx]) * float64(xs[(ic*h+iy)*w+ix])
							}
						}
					}
				}
				want[(oc*h+y)*w+xx] = s
			}
		}
	}
	for _, run := range []struct {
		algo  ConvAlgo
		wdt   engine.DType
		bound float64
	}{
		{ConvWinograd, engine.F32, 1e-7},
		{ConvDirect, engine.F32, 1e-7},
		// F16 weights keep an F32 transformed U: an F16 U halves the
		// transform's bytes but measured NMSE 4.4e-6 here (the output
		// transform's coefficients up to 8 amplify its rounding) and no
		// faster on lavapipe (16-bit stores cost more).
		{ConvWinograd, engine.F16, 1e-7},
	} {
		algo := run.algo
		dev := openConv(t, algo)
		x := benchTensor(t, dev, "x", engine.F32, n, c, h, w)
		wt := benchTensor(t, dev, "w", run.wdt, o, c, 3, 3)
		y := benchTensor(t, dev, "y", engine.F32, n, o, h, w)
		if err := dev.Write(x, xs); err != nil {
			t.Fatal(err)
		}
		if err := dev.Write(wt, ws); err != nil {
			t.Fatal(err)
		}
		if err := dev.Conv2d(y, x, wt, nil, engine.Conv2dParams{Stride: 1, Pad: 1}); err != nil {
			t.Fatal(err)
		}
		got, err := dev.Read(y)
		if err != nil {
			t.Fatal(err)
		}
		var num, den float64
		for i, v := range want {
			num += (float64(got[i]) - v) * (float64(got[i]) - v)
			den += v * v
		}
		t.Logf("%v, %v weights: NMSE %.3g vs float64", algo, run.wdt, num/den)
		if num/den > run.bound || math.IsNaN(num) {
			t.Errorf("%v, %v weights: NMSE %.3g > %g", algo, run.wdt, num/den, run.bound)
		}
	}
	_ = d
}

// BenchmarkConv2dWinograd compares the two 3x3 stride-1 paths at UNet and
// VAE decoder shapes; GFLOP/s counts direct-conv FLOPs for both.
func BenchmarkConv2dWinograd(b *testing.B) {
	device(b)
	for _, algo := range []ConvAlgo{ConvWinograd, ConvDirect} {
		opts := DefaultOptions()
		opts.Conv = algo
		d, err := Open(opts)
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range []struct{ c, o, hw int }{
			{320, 320, 64}, // UNet down block 0
			{512, 512, 64}, // VAE decoder mid block
			{256, 256, 128},
			{128, 128, 256},
			{640, 640, 32}, // UNet down block 1
			{64, 64, 16},   // near ConvAuto's smallest Winograd shape
			{64, 64, 32},
			{128, 128, 16},
			{32, 32, 64},
		} {
			b.Run(fmt.Sprintf("%v/%dto%d_%dx%d_F16", algo, c.c, c.o, c.hw, c.hw), func(b *testing.B) {
				x := benchTensor(b, d, "x", engine.F32, 1, c.c, c.hw, c.hw)
				w := benchTensor(b, d, "w", engine.F16, c.o, c.c, 3, 3)
				bias := benchTensor(b, d, "bias", engine.F32, c.o)
				dst := benchTensor(b, d, "y", engine.F32, 1, c.o, c.hw, c.hw)
				flops := 2 * float64(c.o*c.hw*c.hw) * float64(c.c*9)
				runBench(b, d, flops, func() error { return d.Conv2d(dst, x, w, bias, engine.Conv2dParams{Stride: 1, Pad: 1}) })
			})
		}
		if err := d.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
