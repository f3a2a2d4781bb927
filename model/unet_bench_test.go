package model

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/gguf"
)

// Full-size UNet calls with synthetic F16 weights (the real configs from
// shared/real_configs) on the Vulkan device. Slow on lavapipe (tens of
// seconds per call): run with
//
//	go test ./model -run '^$' -bench UNet -benchtime=1x
//
// Metrics: s/op is the wall time of one call (inputs resident, weights
// resident, pipelines compiled by a tiny warm-up call); GFLOP/s counts
// convolutions, linears and attention matmuls (UNet.FLOPs); act-MB is the
// peak of device memory above the resident weights and inputs during the
// call; weights-MB the resident F16 weights. ZIMAGE_PROFILE=1 prints the
// per-kernel time table when the device closes.

func BenchmarkUNetSDTurbo64(b *testing.B)    { benchUNet(b, "stabilityai-sd-turbo", 64, 64, 1) }
func BenchmarkUNetSDTurbo64CFG(b *testing.B) { benchUNet(b, "stabilityai-sd-turbo", 64, 64, 2) }
func BenchmarkUNetSDXLTurbo64(b *testing.B)  { benchUNet(b, "stabilityai-sdxl-turbo", 64, 64, 1) }
func BenchmarkUNetSDXLTurbo128(b *testing.B) { benchUNet(b, "stabilityai-sdxl-turbo", 128, 128, 1) }

// The same calls with the weights zimage's default rules select quantized
// (as --weights TYPE would load them): F16 against the block types.
func BenchmarkUNetSDXLTurboQuant(b *testing.B) {
	for _, size := range []int{64, 128} {
		for _, typ := range []gguf.Type{gguf.F16, gguf.Q8_0, gguf.Q4_K} {
			b.Run(fmt.Sprintf("%d/%s", size, typ), func(b *testing.B) {
				benchUNetQ(b, "stabilityai-sdxl-turbo", size, size, 1, typ)
			})
		}
	}
}

func benchUNet(b *testing.B, model string, h, w, batch int) {
	benchUNetQ(b, model, h, w, batch, gguf.F16)
}

// quantizeSynthetic makes the synthetic source's entries that r selects
// blocks of r.Type, encoded when first read (as quantizeAtLoad does for a
// file's entries).
func quantizeSynthetic(s *Source, component string, r QuantizeRules) {
	synth := s.synth
	s.synth = func(key string, shape []int) *Entry {
		e := synth(key, shape)
		if r.Quantizes(component, key, shape, e.DType, e.Quant) {
			return quantizedEntry(e, r.Type, shape[len(shape)-1])
		}
		return e
	}
}

func benchUNetQ(b *testing.B, model string, h, w, batch int, typ gguf.Type) {
	const ctxLen = 77
	u := loadFullSizeUNetQ(b, model, typ)
	dev := openUNetVulkan(b)
	b.Logf("%s on %s", model, dev.Name())

	res := AllResident{B: dev}
	start := time.Now()
	for _, bl := range u.Blocks() {
		if err := res.Need(bl); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("uploaded %.0f MB of synthetic weights in %.1f s", float64(u.Bytes())/1e6, time.Since(start).Seconds())

	rec := engine.NewRec(dev)
	in := func(h, w int) (x, ctx *engine.Tensor, added *AddedCond) {
		r := rand.New(rand.NewPCG(1, 2))
		randn := func(n int) []float32 { return testref.Normal(r, n) }
		x = rec.Write("sample", randn(batch*u.Config.InChannels*h*w), batch, u.Config.InChannels, h, w)
		ctx = rec.Write("ctx", randn(batch*ctxLen*u.crossDim), batch, ctxLen, u.crossDim)
		if u.AddEmbedding != nil {
			added = &AddedCond{TextEmbeds: rec.Write("text_embeds", randn(batch*u.textEmbDim), batch, u.textEmbDim),
				TimeIDs: [][6]float64{{float64(8 * h), float64(8 * w), 0, 0, float64(8 * h), float64(8 * w)}}}
		}
		return x, ctx, added
	}
	call := func(x, ctx *engine.Tensor, added *AddedCond) {
		out := u.Forward(rec, res, x, 999, ctx, added)
		if err := rec.Err(); err != nil {
			b.Fatal(err)
		}
		if _, err := dev.Read(out); err != nil {
			b.Fatal(err)
		}
		rec.Free(out)
	}
	free := func(x, ctx *engine.Tensor, added *AddedCond) {
		rec.Free(x, ctx)
		if added != nil {
			rec.Free(added.TextEmbeds)
		}
	}

	// Warm-up on a tiny latent: compiles every pipeline the big call uses.
	x, ctx, added := in(8, 8)
	call(x, ctx, added)
	free(x, ctx, added)

	x, ctx, added = in(h, w)
	defer free(x, ctx, added)
	if err := dev.Flush(); err != nil {
		b.Fatal(err)
	}
	dev.ResetProfile()
	base := dev.MemStats().InUse
	dev.ResetPeak()
	b.ResetTimer()
	for range b.N {
		call(x, ctx, added)
	}
	b.StopTimer()
	sec := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(sec, "s/op")
	b.ReportMetric(u.FLOPs(h, w, batch, ctxLen)/sec/1e9, "GFLOP/s")
	b.ReportMetric(float64(dev.MemStats().Peak-base)/1e6, "act-MB")
	b.ReportMetric(float64(u.Bytes())/1e6, "weights-MB")
	logKernelRates(b, dev, u.FLOPCount(h, w, batch, ctxLen), b.N)
}

// logKernelRates prints the GFLOP/s of each kind of kernel when the device
// profiles (ZIMAGE_PROFILE=1): where the time goes.
func logKernelRates(b *testing.B, dev *vk.Device, f UNetFLOPs, n int) {
	rows, err := dev.Profile()
	if err != nil || rows == nil {
		return
	}
	// Convs run as direct kernels, Winograd (transforms + matmuls) or
	// im2col + matmul, sharing the matmul kernels with Linear: their time
	// is reported together, against the direct-equivalent FLOPs.
	var gemm, attn, other time.Duration
	for _, r := range rows {
		switch {
		case strings.HasPrefix(r.Kernel, "conv2d"), strings.HasPrefix(r.Kernel, "matmul"),
			strings.HasPrefix(r.Kernel, "winograd"), strings.HasPrefix(r.Kernel, "im2col"):
			gemm += r.Total
		case strings.HasPrefix(r.Kernel, "attention"):
			attn += r.Total
		default:
			other += r.Total
		}
	}
	rate := func(flop float64, d time.Duration) float64 { return flop * float64(n) / d.Seconds() / 1e9 }
	b.Logf("per call: conv+linear %.0f GFLOP in %.1f s (%.1f GFLOP/s), attention %.0f GFLOP in %.1f s (%.1f GFLOP/s), other kernels %.1f s",
		(f.Conv+f.Linear)/1e9, gemm.Seconds()/float64(n), rate(f.Conv+f.Linear, gemm),
		f.Attention/1e9, attn.Seconds()/float64(n), rate(f.Attention, attn), other.Seconds()/float64(n))
}
