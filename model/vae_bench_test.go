package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
)

// benchVAEConfig reads a real VAE config.json from ../shared/real_configs.
func benchVAEConfig(b *testing.B, model string) *VAEConfig {
	root, ok := testref.Root()
	if !ok {
		b.Skipf("shared folder not found at %s", root)
	}
	p := filepath.Join(root, "..", "real_configs", model, "vae", "config.json")
	raw, err := os.ReadFile(p)
	if err != nil {
		b.Skip(err)
	}
	var cfg VAEConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		b.Fatalf("%s: %v", p, err)
	}
	return &cfg
}

// benchBackend returns the Vulkan device (shared with the tests), or the
// pure-Go reference when ZIMAGE_BENCH_REF=1 (most of an hour per 512x512
// decode), and what to call when done.
func benchBackend(b *testing.B) (engine.Backend, func()) {
	if os.Getenv("ZIMAGE_BENCH_REF") != "" {
		r := ref.New()
		return r, func() { r.Close() }
	}
	cvVulkanOnce.Do(func() { cvVulkan, cvVulkanErr = vk.Open(vk.DefaultOptions()) })
	if errors.Is(cvVulkanErr, vk.ErrNoDevice) {
		b.Skip("no Vulkan device; set ZIMAGE_BENCH_REF=1 to benchmark the reference backend")
	}
	if cvVulkanErr != nil {
		b.Fatal(cvVulkanErr)
	}
	return cvVulkan, func() {}
}

// BenchmarkVAEDecode decodes with the full-size SD (2.x/turbo) VAE
// architecture, seeded random weights and N(0,1) latents, at 512² (whole
// and tiled) and at 1024² and 2048² (tiled: three passes for the GroupNorm
// statistics, "local" one pass), reporting seconds per decode, the
// device's peak memory (weights included) and the activations' share of
// it.
func BenchmarkVAEDecode(b *testing.B) {
	cfg := benchVAEConfig(b, "reconstructed/stabilityai-sd-turbo")
	// Tiled cases (tile -1) use the largest tile the device can bind (what
	// zimage's auto mode picks without a memory budget): 40 on lavapipe.
	var limit int64
	be, done := benchBackend(b)
	if l, ok := be.(engine.TensorLimiter); ok {
		limit = l.MaxTensorBytes()
	}
	done()
	for _, c := range []struct {
		px    int
		tile  int // latent pixels; 0 = whole
		local bool
	}{{256, 0, false}, {512, 0, false}, {512, -1, false}, {512, -1, true}, {1024, -1, false}, {1024, -1, true}, {2048, -1, false}, {2048, -1, true}} {
		if c.tile < 0 {
			c.tile = AutoTileSizeLimit(1<<62, limit, cfg)
		}
		name := fmt.Sprintf("%dpx/whole", c.px)
		if c.tile > 0 {
			name = fmt.Sprintf("%dpx/tile%d", c.px, c.tile)
		}
		if c.local {
			name += "-local"
		}
		b.Run(name, func(b *testing.B) {
			be, done := benchBackend(b)
			defer done()
			v, err := LoadVAEDecoder(NewSyntheticSource("vae", 1), cfg)
			if err != nil {
				b.Fatal(err)
			}
			res := AllResident{B: be}
			var weights int64
			for _, bl := range v.Blocks() {
				if err := res.Need(bl); err != nil {
					b.Fatal(err)
				}
				weights += bl.Bytes()
				defer bl.Evict(be)
			}
			h := c.px / 8
			rec := engine.NewRec(be)
			z := rec.Write("z", randLatents(1, 4*h*h), 1, 4, h, h)
			if err := rec.Err(); err != nil {
				b.Fatal(err)
			}
			defer rec.Free(z)
			be.ResetPeak()
			base := be.MemStats().InUse
			vd, profiling := be.(*vk.Device)
			if profiling {
				vd.ResetProfile()
			}
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				var img *engine.Tensor
				if c.tile > 0 {
					img = v.DecodeTiled(rec, res, z, TileOptions{Size: c.tile, Overlap: TileOverlap(c.tile), LocalNorm: c.local})
				} else {
					img = v.Decode(rec, res, z)
				}
				var re *vk.RangeError
				if err := rec.Err(); errors.As(err, &re) {
					b.Skipf("does not fit this device: %v", err)
				} else if err != nil {
					b.Fatal(err)
				}
				rec.Free(img)
			}
			b.StopTimer()
			if profiling {
				var sb strings.Builder
				if err := vd.WriteProfile(&sb); err == nil && sb.Len() > 0 {
					b.Log("\n" + sb.String())
				}
			}
			peak := be.MemStats().Peak
			b.ReportMetric(time.Since(start).Seconds()/float64(b.N), "s/decode")
			b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
			b.ReportMetric(float64(peak-base)/(1<<20), "act-MiB")
			b.ReportMetric(float64(weights)/(1<<20), "weights-MiB")
			side := h // what the device decodes at once
			if c.tile > 0 {
				side = min(h, c.tile)
			}
			b.ReportMetric(float64(VAEDecodeBytes(cfg, 1, side, side))/(1<<20), "est-act-MiB")
		})
	}
}

// BenchmarkTAESDDecode decodes with the full-size TAESD (AutoencoderTiny
// defaults: 64 channels; seeded random weights) at 512² and 1024², through
// DecodeLimited under the device's binding limit, for comparison with
// BenchmarkVAEDecode (the full SD VAE).
func BenchmarkTAESDDecode(b *testing.B) {
	var limit int64
	be, done := benchBackend(b)
	if l, ok := be.(engine.TensorLimiter); ok {
		limit = l.MaxTensorBytes()
	}
	done()
	for _, px := range []int{256, 512, 1024} {
		b.Run(fmt.Sprintf("%dpx", px), func(b *testing.B) {
			be, done := benchBackend(b)
			defer done()
			m, err := LoadTAESD(NewSyntheticSource("taesd", 1), &TAESDConfig{})
			if err != nil {
				b.Fatal(err)
			}
			res := AllResident{B: be}
			for _, bl := range m.Blocks() {
				if err := res.Need(bl); err != nil {
					b.Fatal(err)
				}
				defer bl.Evict(be)
			}
			h := px / 8
			rec := engine.NewRec(be)
			z := rec.Write("z", randLatents(1, 4*h*h), 1, 4, h, h)
			if err := rec.Err(); err != nil {
				b.Fatal(err)
			}
			defer rec.Free(z)
			be.ResetPeak()
			base := be.MemStats().InUse
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				img := m.DecodeLimited(rec, res, z, limit)
				if err := rec.Err(); err != nil {
					b.Fatal(err)
				}
				rec.Free(img)
			}
			b.StopTimer()
			split, _ := m.splitAt(1, h, h, limit)
			b.ReportMetric(time.Since(start).Seconds()/float64(b.N), "s/decode")
			b.ReportMetric(float64(be.MemStats().Peak-base)/(1<<20), "act-MiB")
			b.ReportMetric(float64(split), "split-layer")
		})
	}
}
