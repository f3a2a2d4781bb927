package vk

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/x448/float16"
	"github.com/zimage/zimage/engine"
)

// quantBenchTensor allocates w [n, k] of dtype dt: random F16 values, or
// random blocks with scales that keep values near [-1, 1].
func quantBenchTensor(b *testing.B, d *Device, dt engine.DType, n, k int) *engine.Tensor {
	b.Helper()
	if !dt.Quantized() {
		return benchTensor(b, d, "w", dt, n, k)
	}
	t, err := d.Alloc("w", dt, engine.Shape{n, k})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Free(t) })
	r := rand.New(rand.NewPCG(1, 2))
	raw := make([]byte, t.Bytes())
	for i := range raw {
		raw[i] = byte(r.Uint32())
	}
	// Small finite halves wherever a block keeps its d (and dmin).
	for off := 0; off < len(raw); off += dt.BlockBytes() {
		for _, h := range []int{0, 2} {
			binary.LittleEndian.PutUint16(raw[off+h:], float16.Fromfloat32(0.001*(r.Float32()+0.5)).Bits())
		}
	}
	if err := d.WriteRaw(t, raw, dt); err != nil {
		b.Fatal(err)
	}
	return t
}

// BenchmarkLinearQuant times Linear with F16 and block-quantized weights
// at the SDXL UNet's transformer shapes (64² latents: 4096 tokens at 640
// channels, 1024 at 1280; the GEGLU feed-forward 1280 -> 10240 and 5120
// -> 1280) and the Z-Image DiT's at 512² (1056 tokens, 3840 channels).
func BenchmarkLinearQuant(b *testing.B) {
	d := device(b)
	for _, c := range []struct{ m, k, n int }{
		{4096, 640, 640},
		{1024, 1280, 1280},
		{1024, 1280, 10240},
		{1024, 5120, 1280},
		{1056, 3840, 3840},
		{1056, 3840, 10240},
	} {
		for _, dt := range []engine.DType{engine.F16, engine.Q8_0, engine.Q4_0, engine.Q4_K, engine.Q6_K} {
			if c.k%dt.BlockSize() != 0 {
				continue
			}
			b.Run(fmt.Sprintf("%dx%d_to_%d_%v", c.m, c.k, c.n, dt), func(b *testing.B) {
				x := benchTensor(b, d, "x", engine.F32, c.m, c.k)
				w := quantBenchTensor(b, d, dt, c.n, c.k)
				bias := benchTensor(b, d, "bias", engine.F32, c.n)
				dst := benchTensor(b, d, "y", engine.F32, c.m, c.n)
				runBench(b, d, 2*float64(c.m)*float64(c.n)*float64(c.k), func() error {
					return d.Linear(dst, x, w, bias)
				})
			})
		}
	}
}

// BenchmarkFirstDispatchQuant times the first Linear with weights of each
// block type on a fresh device (see BenchmarkFirstDispatch: run it with
// MESA_SHADER_CACHE_DISABLE=true for cold LLVM compiles), against F16.
func BenchmarkFirstDispatchQuant(b *testing.B) {
	device(b)
	d, err := Open(DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	a := benchTensor(b, d, "a", engine.F32, 1, 64, 256)
	y := benchTensor(b, d, "y", engine.F32, 1, 64, 64)
	for _, dt := range append([]engine.DType{engine.F16}, engine.BlockTypes...) {
		w := quantBenchTensor(b, d, dt, 64, 256)
		start := time.Now()
		if err := d.Linear(y, a, w, nil); err != nil {
			b.Fatal(err)
		}
		if err := d.Flush(); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), dt.String()+"-s")
	}
}

// BenchmarkLinearQuantBest interleaves Linear calls with F16, Q8_0, Q4_0
// and Q4_K weights (plus Q6_K) in rounds and reports each type's fastest
// call (GFLOP/s): on a shared, loaded machine the best of several
// interleaved rounds compares the kernels where single timings do not.
// ZIMAGE_BENCH_ROUNDS sets the rounds (default 5).
func BenchmarkLinearQuantBest(b *testing.B) {
	d := device(b)
	rounds := 5
	if v, err := strconv.Atoi(os.Getenv("ZIMAGE_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	types := []engine.DType{engine.F16, engine.Q8_0, engine.Q4_0, engine.Q4_K, engine.Q6_K}
	for _, c := range []struct{ m, k, n int }{
		{4096, 640, 640},    // SDXL attention at 64² latents
		{1024, 1280, 1280},  // SDXL attention at 32²
		{1024, 1280, 10240}, // SDXL GEGLU up at 32²
		{1056, 3840, 3840},  // Z-Image attention at 512²
		{1056, 10240, 3840}, // Z-Image feed-forward down at 512²
	} {
		b.Run(fmt.Sprintf("%dx%d_to_%d", c.m, c.k, c.n), func(b *testing.B) {
			x := benchTensor(b, d, "x", engine.F32, c.m, c.k)
			bias := benchTensor(b, d, "bias", engine.F32, c.n)
			dst := benchTensor(b, d, "y", engine.F32, c.m, c.n)
			ws := map[engine.DType]*engine.Tensor{}
			best := map[engine.DType]time.Duration{}
			for _, dt := range types {
				if c.k%dt.BlockSize() == 0 {
					ws[dt] = quantBenchTensor(b, d, dt, c.n, c.k)
					if err := d.Linear(dst, x, ws[dt], bias); err != nil { // compile
						b.Fatal(err)
					}
				}
			}
			if err := d.Flush(); err != nil {
				b.Fatal(err)
			}
			for range b.N * rounds {
				for _, dt := range types {
					if ws[dt] == nil {
						continue
					}
					start := time.Now()
					if err := d.Linear(dst, x, ws[dt], bias); err != nil {
						b.Fatal(err)
					}
					if err := d.Flush(); err != nil {
						b.Fatal(err)
					}
					if el := time.Since(start); best[dt] == 0 || el < best[dt] {
						best[dt] = el
					}
				}
			}
			flops := 2 * float64(c.m) * float64(c.n) * float64(c.k)
			for _, dt := range types {
				if best[dt] > 0 {
					b.ReportMetric(flops/best[dt].Seconds()/1e9, dt.String()+"-GFLOP/s")
				}
			}
		})
	}
}
