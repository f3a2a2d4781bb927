package sched

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
)

// syntheticModels writes (once, into $TMPDIR/zimage-bench-v2-<name>) a
// full-size model from a real model's configs (../shared/real_configs) with
// seeded random F16 weights, and loads it from disk as a user's model would
// be: memory-mapped, uploaded from the mapping. Text encoders use zimage's
// byte-level vocabulary, so their embedding tables are smaller than the
// real ones (514 rows instead of 49408).
func syntheticModels(b *testing.B, name string) *Models {
	root, ok := testref.Root()
	cfg := filepath.Join(root, "..", "real_configs", "reconstructed", name)
	if _, err := os.Stat(cfg); !ok || err != nil {
		b.Skipf("real configs not found at %s", cfg)
	}
	// v2: the VAE file holds the encoder too (img2img).
	dir := filepath.Join(os.TempDir(), "zimage-bench-v2-"+name)
	if _, err := os.Stat(filepath.Join(dir, "model_index.json")); err != nil {
		arch := "sd-turbo"
		if strings.Contains(name, "sdxl") {
			arch = "sdxl-turbo"
		}
		b.Logf("writing a synthetic %s model to %s (kept for later runs)", name, dir)
		if err := model.WriteSyntheticModel(dir, model.SyntheticSpec{Arch: arch, ConfigDir: cfg, Seed: 1}); err != nil {
			os.RemoveAll(dir)
			b.Fatal(err)
		}
	}
	return loadModels(b, dir)
}

// BenchmarkPipeline runs a whole one-step generation of the full-size
// SD-Turbo and SDXL-Turbo architectures on the Vulkan device, resident and
// streamed under budgets of 1, 2 and 4 GB, and reports seconds per stage,
// peak device memory and bytes uploaded. Slow on lavapipe: run with
// -benchtime 1x. ZIMAGE_BENCH_SIZE sets the image size (default 512).
func BenchmarkPipeline(b *testing.B) {
	size := 512
	if s := os.Getenv("ZIMAGE_BENCH_SIZE"); s != "" {
		fmt.Sscan(s, &size)
	}
	cases := []struct {
		offload Offload
		budget  int64
	}{{OffloadNone, 0}, {OffloadLayer, 1 << 30}, {OffloadLayer, 2 << 30}, {OffloadLayer, 4 << 30}}
	for _, name := range []string{"stabilityai-sd-turbo", "stabilityai-sdxl-turbo"} {
		for _, c := range cases {
			label := fmt.Sprintf("%s/%dpx/%s", name, size, c.offload)
			if c.budget > 0 {
				label += fmt.Sprintf("-%dGiB", c.budget>>30)
			}
			b.Run(label, func(b *testing.B) {
				m := syntheticModels(b, name)
				opts := vk.DefaultOptions()
				opts.Budget = c.budget
				dev, err := vk.Open(opts)
				if err != nil {
					b.Skipf("no Vulkan device: %v", err)
				}
				defer dev.Close()
				p := Params{Prompt: "a lighthouse at dusk", Width: size, Height: size, Steps: 1, Batch: 1,
					Seed: 1, Offload: c.offload, Budget: c.budget}
				var out *Output
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if out, err = Run(context.Background(), dev, m, p); err != nil {
						b.Fatal(err)
					}
				}
				reportStages(b, out)
			})
		}
	}
}

// BenchmarkImg2Img runs full-size SD-Turbo at 512² (ZIMAGE_BENCH_SIZE):
// text-to-image in one step, img2img at strength 0.5 of two steps (one
// UNet call, as SD-Turbo's model card runs it) decoded by the VAE, and the
// same with a full-size TAESD (AutoencoderTiny's default channels, seeded
// random weights) as the decoder; weights resident, VAE tiled as the
// binding limit asks. Run with -benchtime 1x.
func BenchmarkImg2Img(b *testing.B) {
	size := 512
	if s := os.Getenv("ZIMAGE_BENCH_SIZE"); s != "" {
		fmt.Sscan(s, &size)
	}
	pixels := make([]float32, 3*size*size)
	for i := range pixels { // a smooth picture in [-1, 1]
		x, y := i%size, i/size%size
		pixels[i] = float32(x+y)/float32(size) - 1
	}
	cases := []struct {
		name  string
		init  bool
		taesd bool
	}{{"txt2img-1step-vae", false, false}, {"img2img-0.5-vae", true, false}, {"img2img-0.5-taesd", true, true}}
	for _, c := range cases {
		b.Run(fmt.Sprintf("%dpx/%s", size, c.name), func(b *testing.B) {
			m := syntheticModels(b, "stabilityai-sd-turbo")
			dev, err := vk.Open(vk.DefaultOptions())
			if err != nil {
				b.Skipf("no Vulkan device: %v", err)
			}
			defer dev.Close()
			if c.taesd {
				if m.TAESD, err = model.LoadTAESD(model.NewSyntheticSource("taesd", 1), &model.TAESDConfig{}); err != nil {
					b.Fatal(err)
				}
			}
			p := Params{Prompt: "a lighthouse at dusk", Width: size, Height: size, Steps: 1, Batch: 1, Seed: 1, TAESD: c.taesd}
			if c.init {
				p.Steps, p.Init = 2, &Init{Pixels: pixels, Strength: 0.5}
			}
			var out *Output
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if out, err = Run(context.Background(), dev, m, p); err != nil {
					b.Fatal(err)
				}
			}
			reportStages(b, out)
		})
	}
}

func reportStages(b *testing.B, out *Output) {
	for _, s := range out.Stages {
		b.ReportMetric(s.Duration.Seconds(), s.Name+"-s")
	}
	b.ReportMetric(float64(out.PeakDev)/(1<<20), "peak-MiB")
	b.ReportMetric(float64(out.Uploaded)/(1<<20), "uploaded-MiB")
}

var _ engine.Backend = (*vk.Device)(nil)
