package model

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
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

// benchBackend opens the backend to benchmark on. The pure-Go reference
// takes most of an hour per 512x512 decode, so it runs only when asked for
// with ZIMAGE_BENCH_REF=1.
func benchBackend(b *testing.B) engine.Backend {
	if os.Getenv("ZIMAGE_BENCH_REF") == "" {
		b.Skip("no Vulkan backend yet; set ZIMAGE_BENCH_REF=1 to benchmark the reference backend")
	}
	return ref.New()
}

// BenchmarkVAEDecode decodes with the full-size SD (2.x/turbo) VAE
// architecture, seeded random weights, at 512² (whole and tiled) and at
// 1024² and 2048² (tiled), reporting seconds per decode and the device's
// peak memory (weights included) and activations alone.
func BenchmarkVAEDecode(b *testing.B) {
	cfg := benchVAEConfig(b, "reconstructed/stabilityai-sd-turbo")
	for _, c := range []struct {
		px   int
		tile int // latent pixels; 0 = whole
	}{{512, 0}, {512, 32}, {1024, 64}, {2048, 64}} {
		name := fmt.Sprintf("%dpx/whole", c.px)
		if c.tile > 0 {
			name = fmt.Sprintf("%dpx/tile%d", c.px, c.tile)
		}
		b.Run(name, func(b *testing.B) {
			be := benchBackend(b)
			defer be.Close()
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
			}
			h := c.px / 8
			rec := engine.NewRec(be)
			z := rec.Write("z", randLatents(1, 4*h*h), 1, 4, h, h)
			if err := rec.Err(); err != nil {
				b.Fatal(err)
			}
			be.ResetPeak()
			base := be.MemStats().InUse
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				var img *engine.Tensor
				if c.tile > 0 {
					img = v.DecodeTiled(rec, res, z, TileOptions{Size: c.tile, Overlap: c.tile / 4})
				} else {
					img = v.Decode(rec, res, z)
				}
				if err := rec.Err(); err != nil {
					b.Fatal(err)
				}
				rec.Free(img)
			}
			b.StopTimer()
			peak := be.MemStats().Peak
			b.ReportMetric(time.Since(start).Seconds()/float64(b.N), "s/decode")
			b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
			b.ReportMetric(float64(peak-base)/(1<<20), "act-MiB")
			b.ReportMetric(float64(weights)/(1<<20), "weights-MiB")
			rec.Free(z)
		})
	}
}
