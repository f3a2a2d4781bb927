package vk

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/zimage/zimage/engine"
)

// Benchmarks at Stable Diffusion shapes. Each iteration records the op and
// waits for it (Flush), so times include one submit. Pipelines are built
// before the timer starts; whether Mesa's shader cache was warm does not
// matter after that.

func benchTensor(b testing.TB, d *Device, name string, dt engine.DType, shape ...int) *engine.Tensor {
	b.Helper()
	t, err := d.Alloc(name, dt, shape)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Free(t) })
	r := rand.New(rand.NewPCG(1, 2))
	v := make([]float32, t.NumElem())
	for i := range v {
		v[i] = r.Float32()*2 - 1
	}
	if err := d.Write(t, v); err != nil {
		b.Fatal(err)
	}
	return t
}

// runBench times op, reporting GFLOP/s for flops per call.
func runBench(b *testing.B, d *Device, flops float64, op func() error) {
	b.Helper()
	if err := op(); err != nil { // warm-up: pipeline creation
		b.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	cpu0 := processCPU()
	for i := 0; i < b.N; i++ {
		if err := op(); err != nil {
			b.Fatal(err)
		}
		if err := d.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu := processCPU() - cpu0
	if flops > 0 {
		b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		// On a CPU device (lavapipe) other processes steal cores and inflate
		// the wall time; the process's CPU time, spread over the cores the
		// driver uses, estimates the uncontended rate.
		if d.Info().Type == "cpu" && cpu > 0 {
			cores := float64(runtime.NumCPU())
			b.ReportMetric(flops*float64(b.N)/(cpu.Seconds()/cores)/1e9, "cpuGFLOP/s")
		}
	}
}

// runBenchBytes times a bandwidth-bound op that reads and writes bytes per
// call, reporting GB/s and, on CPU devices, cpuGB/s (as cpuGFLOP/s).
func runBenchBytes(b *testing.B, d *Device, bytes float64, op func() error) {
	b.Helper()
	cpu0 := processCPU()
	runBench(b, d, 0, op)
	cpu := processCPU() - cpu0
	b.ReportMetric(bytes*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
	if d.Info().Type == "cpu" && cpu > 0 {
		// cpu includes the warm-up call.
		b.ReportMetric(bytes*float64(b.N+1)/(cpu.Seconds()/float64(runtime.NumCPU()))/1e9, "cpuGB/s")
	}
}

func BenchmarkMatMul(b *testing.B) {
	d := device(b)
	for _, c := range []struct {
		m, n, k int
		transB  bool
		wdt     engine.DType
	}{
		{4096, 4096, 320, false, engine.F32}, // attention-sized product, plain B
		{4096, 4096, 320, true, engine.F32},  // q·kᵀ layout
		{4096, 4096, 320, true, engine.F16},
	} {
		b.Run(fmt.Sprintf("%dx%dx%d_transB=%v_%v", c.m, c.n, c.k, c.transB, c.wdt), func(b *testing.B) {
			a := benchTensor(b, d, "a", engine.F32, 1, c.m, c.k)
			bs := []int{1, c.k, c.n}
			if c.transB {
				bs = []int{1, c.n, c.k}
			}
			bt := benchTensor(b, d, "b", c.wdt, bs...)
			dst := benchTensor(b, d, "c", engine.F32, 1, c.m, c.n)
			runBench(b, d, 2*float64(c.m)*float64(c.n)*float64(c.k), func() error {
				return d.MatMul(dst, a, bt, c.transB, 1)
			})
		})
	}
}

func BenchmarkLinear(b *testing.B) {
	d := device(b)
	for _, c := range []struct{ m, k, n int }{
		{4096, 320, 320},  // attention projections at 64x64 latents
		{4096, 320, 2560}, // GEGLU feed-forward up
		{4096, 1280, 320}, // feed-forward down
	} {
		b.Run(fmt.Sprintf("%dx%d_to_%d_F16", c.m, c.k, c.n), func(b *testing.B) {
			x := benchTensor(b, d, "x", engine.F32, c.m, c.k)
			w := benchTensor(b, d, "w", engine.F16, c.n, c.k)
			bias := benchTensor(b, d, "bias", engine.F32, c.n)
			dst := benchTensor(b, d, "y", engine.F32, c.m, c.n)
			runBench(b, d, 2*float64(c.m)*float64(c.n)*float64(c.k), func() error {
				return d.Linear(dst, x, w, bias)
			})
		})
	}
}

func BenchmarkConv2d(b *testing.B) {
	d := device(b)
	for _, c := range []struct{ c, o, hw, k, stride int }{
		{320, 320, 64, 3, 1},  // UNet down block 0
		{512, 512, 64, 3, 1},  // VAE decoder mid block
		{320, 320, 64, 3, 2},  // downsampler
		{512, 512, 64, 1, 1},  // 1x1 (shortcut-like)
		{1280, 1280, 8, 3, 1}, // UNet innermost resnets (im2col + matmul)
	} {
		b.Run(fmt.Sprintf("%dto%d_%dx%d_k%d_s%d_F16", c.c, c.o, c.hw, c.hw, c.k, c.stride), func(b *testing.B) {
			pad := c.k / 2
			x := benchTensor(b, d, "x", engine.F32, 1, c.c, c.hw, c.hw)
			w := benchTensor(b, d, "w", engine.F16, c.o, c.c, c.k, c.k)
			bias := benchTensor(b, d, "bias", engine.F32, c.o)
			p := engine.Conv2dParams{Stride: c.stride, Pad: pad}
			oh := (c.hw+2*pad-c.k)/c.stride + 1
			dst := benchTensor(b, d, "y", engine.F32, 1, c.o, oh, oh)
			flops := 2 * float64(c.o*oh*oh) * float64(c.c*c.k*c.k)
			runBench(b, d, flops, func() error { return d.Conv2d(dst, x, w, bias, p) })
		})
	}
}

func BenchmarkAttention(b *testing.B) {
	d := device(b)
	for _, c := range []struct {
		lq, lk, heads, dim int
		causal             bool
	}{
		{4096, 4096, 5, 64, false}, // SD 1.x/2.x self-attention at 64x64
		{4096, 77, 5, 64, false},   // cross-attention
		{1024, 1024, 10, 64, false},
		{77, 77, 20, 64, true}, // OpenCLIP-H text encoder
	} {
		b.Run(fmt.Sprintf("q%d_k%d_h%dx%d_causal=%v", c.lq, c.lk, c.heads, c.dim, c.causal), func(b *testing.B) {
			q := benchTensor(b, d, "q", engine.F32, 1, c.lq, c.heads*c.dim)
			k := benchTensor(b, d, "k", engine.F32, 1, c.lk, c.heads*c.dim)
			v := benchTensor(b, d, "v", engine.F32, 1, c.lk, c.heads*c.dim)
			dst := benchTensor(b, d, "o", engine.F32, 1, c.lq, c.heads*c.dim)
			flops := 4 * float64(c.lq) * float64(c.lk) * float64(c.heads*c.dim)
			runBench(b, d, flops, func() error {
				return d.Attention(dst, q, k, v, engine.AttentionOptions{Heads: c.heads, Scale: 0.125, Causal: c.causal})
			})
		})
	}
}

// BenchmarkLinearDiT times Linear at the Z-Image DiT's shapes with F16
// weights: 1056 tokens (1024 image + 32 caption, 512²) and 4160 (4096 +
// 64, 1024²); attention projections 3840 -> 3840, the feed-forward up
// 3840 -> 10240 and down 10240 -> 3840. At 4160 tokens the 10240-wide
// activation (170 MB) is over lavapipe's binding limit and runs in pieces.
func BenchmarkLinearDiT(b *testing.B) {
	d := device(b)
	for _, m := range []int{1024 + 32, 4096 + 64} {
		for _, c := range []struct{ k, n int }{{3840, 3840}, {3840, 10240}, {10240, 3840}} {
			b.Run(fmt.Sprintf("%dx%d_to_%d", m, c.k, c.n), func(b *testing.B) {
				x := benchTensor(b, d, "x", engine.F32, m, c.k)
				w := benchTensor(b, d, "w", engine.F16, c.n, c.k)
				bias := benchTensor(b, d, "bias", engine.F32, c.n)
				dst := benchTensor(b, d, "y", engine.F32, m, c.n)
				runBench(b, d, 2*float64(m)*float64(c.n)*float64(c.k), func() error {
					return d.Linear(dst, x, w, bias)
				})
			})
		}
	}
}

// BenchmarkAttentionTransformer times attention at the Z-Image DiT's
// shapes (30 heads of 128 over image + caption tokens; batch 2 is a CFG
// batch whose rows attend to different caption lengths) and the Qwen3-4B
// text encoder's (512 tokens, 32 query heads over 8 key/value heads,
// causal). FLOPs count the unmasked keys of every row.
func BenchmarkAttentionTransformer(b *testing.B) {
	d := device(b)
	for _, c := range []struct {
		batch, l, heads, kv int
		causal              bool
		lens                []int
	}{
		{1, 1056, 30, 30, false, nil},
		{2, 1056, 30, 30, false, []int{1056, 1040}},
		{1, 4160, 30, 30, false, nil},
		{2, 4160, 30, 30, false, []int{4160, 4128}},
		{1, 512, 32, 8, true, nil},
	} {
		b.Run(fmt.Sprintf("b%d_l%d_h%d_kv%dx128_causal=%v_lens%v", c.batch, c.l, c.heads, c.kv, c.causal, c.lens), func(b *testing.B) {
			q := benchTensor(b, d, "q", engine.F32, c.batch, c.l, c.heads*128)
			k := benchTensor(b, d, "k", engine.F32, c.batch, c.l, c.kv*128)
			v := benchTensor(b, d, "v", engine.F32, c.batch, c.l, c.kv*128)
			dst := benchTensor(b, d, "o", engine.F32, c.batch, c.l, c.heads*128)
			var keys float64
			for r := 0; r < c.batch; r++ {
				n := c.l
				if c.lens != nil {
					n = c.lens[r]
				}
				keys += float64(n)
			}
			flops := 4 * float64(c.l) * keys * float64(c.heads*128)
			if c.causal {
				flops /= 2
			}
			o := engine.AttentionOptions{Heads: c.heads, KVHeads: c.kv, Scale: 0.088, Causal: c.causal, KeyLens: c.lens}
			runBench(b, d, flops, func() error { return d.Attention(dst, q, k, v, o) })
		})
	}
}

// BenchmarkTransformerOps times the bandwidth-bound transformer ops at the
// DiT's 1024² shapes (GB/s of tensor bytes read and written): RMSNorm over
// the hidden dim and per head (q/k norm), the interleaved rope of q, and
// SwiGLU over the 10240-wide activation (170 MB: in pieces on lavapipe).
func BenchmarkTransformerOps(b *testing.B) {
	d := device(b)
	const tokens, dim, heads, hidden = 4160, 3840, 30, 10240
	x := benchTensor(b, d, "x", engine.F32, 1, tokens, dim)
	g := benchTensor(b, d, "gamma", engine.F32, dim)
	g128 := benchTensor(b, d, "gamma128", engine.F32, 128)
	cos := benchTensor(b, d, "cos", engine.F32, 1, tokens, 64)
	gate := benchTensor(b, d, "gate", engine.F32, tokens, hidden)
	up := benchTensor(b, d, "up", engine.F32, tokens, hidden)
	xh, err := x.Reshape(tokens*heads, 128)
	if err != nil {
		b.Fatal(err)
	}
	xb := float64(2 * x.Bytes())
	for _, c := range []struct {
		name  string
		bytes float64
		op    func() error
	}{
		{"RMSNorm_4160x3840", xb, func() error { return d.RMSNorm(x, x, g, 1e-6) }},
		{"RMSNorm_heads_124800x128", xb, func() error { return d.RMSNorm(xh, xh, g128, 1e-6) }},
		{"Rope_interleaved_4160x30x128", xb, func() error { return d.Rope(x, x, cos, cos, heads, engine.RopeInterleaved) }},
		{"Rope_half_4160x30x128", xb, func() error { return d.Rope(x, x, cos, cos, heads, engine.RopeHalf) }},
		{"SwiGLU_4160x10240", 3 * float64(gate.Bytes()), func() error { return d.SwiGLU(gate, gate, up) }},
	} {
		b.Run(c.name, func(b *testing.B) { runBenchBytes(b, d, c.bytes, c.op) })
	}
}

// processCPU is the user+system CPU time of this process (all threads,
// lavapipe's workers included).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkMemoryBound times the bandwidth-bound ops at VAE decoder sizes
// (GB/s of tensor bytes read and written).
func BenchmarkMemoryBound(b *testing.B) {
	d := device(b)
	for _, s := range []engine.Shape{{1, 512, 64, 64}, {1, 128, 512, 512}} {
		x := benchTensor(b, d, "x", engine.F32, s...)
		y := benchTensor(b, d, "y", engine.F32, s...)
		gamma := benchTensor(b, d, "gamma", engine.F32, s[1])
		beta := benchTensor(b, d, "beta", engine.F32, s[1])
		bytes := float64(2 * x.Bytes())
		for _, c := range []struct {
			name string
			op   func() error
		}{
			{"GroupNormSiLU", func() error { return d.GroupNorm(y, x, gamma, beta, 32, 1e-6, true) }},
			{"SiLU", func() error { return d.Unary(y, x, engine.SiLU) }},
			{"Add", func() error { return d.Binary(y, x, y, engine.Add) }},
		} {
			b.Run(fmt.Sprintf("%s_%v", c.name, s), func(b *testing.B) {
				runBench(b, d, 0, c.op)
				b.ReportMetric(bytes*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
			})
		}
	}
}

// BenchmarkLayout times the data-movement ops at UNet and VAE shapes (GB/s
// of tensor bytes read and written).
func BenchmarkLayout(b *testing.B) {
	d := device(b)
	x := benchTensor(b, d, "x", engine.F32, 1, 320, 64, 64)
	xt := benchTensor(b, d, "xt", engine.F32, 1, 64*64, 320)
	up := benchTensor(b, d, "up", engine.F32, 1, 320, 128, 128)
	cat := benchTensor(b, d, "cat", engine.F32, 1, 640, 64, 64)
	g := benchTensor(b, d, "g", engine.F32, 320)
	bytes := float64(2 * x.Bytes())
	xt4, err := xt.Reshape(1, 64, 64, 320)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		bytes float64
		op    func() error
	}{
		{"Permute_NCHW_to_NHWC", bytes, func() error { return d.Permute(xt4, x, []int{0, 2, 3, 1}) }},
		{"LayerNorm_4096x320", bytes, func() error { return d.LayerNorm(xt, xt, g, g, 1e-5) }},
		{"Upsample2x_320x64x64", 5 * float64(x.Bytes()), func() error { return d.Upsample2x(up, x) }},
		{"Concat_320+320x64x64", 2 * bytes, func() error { return d.Concat(cat, x, x) }},
		{"Copy_F32_320x64x64", bytes, func() error { return d.Copy(xt, xt) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			runBench(b, d, 0, c.op)
			b.ReportMetric(c.bytes*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		})
	}
}
