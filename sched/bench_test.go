package sched

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/tokenizer"
)

// syntheticModels builds a full-size pipeline from a real model's configs
// (../shared/real_configs) with seeded random F16 weights: the cost of a
// real run without downloading one. Text encoders use zimage's byte-level
// vocabulary (token ids < 514 index the real-size embedding table).
func syntheticModels(b *testing.B, name string) *Models {
	root, ok := testref.Root()
	dir := filepath.Join(root, "..", "real_configs", "reconstructed", name)
	if _, err := os.Stat(dir); !ok || err != nil {
		b.Skipf("real configs not found at %s", dir)
	}
	read := func(rel string, v any) {
		data, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			b.Fatal(err)
		}
		if err := json.Unmarshal(data, v); err != nil {
			b.Fatalf("%s: %v", rel, err)
		}
	}
	var idx model.ModelIndex
	read("model_index.json", &idx)
	m := &Models{Scheduler: &model.SchedulerConfig{}, ForceZerosForEmptyPrompt: idx.ForceZerosForEmptyPrompt}
	read("scheduler/scheduler_config.json", m.Scheduler)
	encoders := []string{"text_encoder"}
	if _, ok := idx.Components["text_encoder_2"]; ok {
		encoders = append(encoders, "text_encoder_2")
		m.SDXL = true
	}
	for i, enc := range encoders {
		var cfg model.CLIPTextConfig
		read(enc+"/config.json", &cfg)
		pad := "<|endoftext|>"
		if i == 1 || !m.SDXL {
			pad = "!" // the OpenCLIP tokenizers
		}
		tdir := b.TempDir()
		if _, err := tokenizer.WriteByteLevel(tdir, pad); err != nil {
			b.Fatal(err)
		}
		tok, err := tokenizer.Load(tdir)
		if err != nil {
			b.Fatal(err)
		}
		net, err := model.LoadCLIPText(model.NewSyntheticSource(enc, 1), &cfg)
		if err != nil {
			b.Fatal(err)
		}
		m.Encoders = append(m.Encoders, TextEncoder{Tokenizer: tok, Net: net})
	}
	var ucfg model.UNetConfig
	read("unet/config.json", &ucfg)
	var err error
	if m.UNet, err = model.LoadUNet(model.NewSyntheticSource("unet", 1), &ucfg); err != nil {
		b.Fatal(err)
	}
	var vcfg model.VAEConfig
	read("vae/config.json", &vcfg)
	if m.VAE, err = model.LoadVAEDecoder(model.NewSyntheticSource("vae", 1), &vcfg); err != nil {
		b.Fatal(err)
	}
	return m
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

func reportStages(b *testing.B, out *Output) {
	for _, s := range out.Stages {
		b.ReportMetric(s.Duration.Seconds(), s.Name+"-s")
	}
	b.ReportMetric(float64(out.PeakDev)/(1<<20), "peak-MiB")
	b.ReportMetric(float64(out.Uploaded)/(1<<20), "uploaded-MiB")
}

var _ engine.Backend = (*vk.Device)(nil)
