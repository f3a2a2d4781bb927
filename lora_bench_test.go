package zimage_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/safetensors"
)

// BenchmarkLoRASwitch measures LoRAs through the library on the Vulkan
// device: the full-size SD-Turbo architecture (seeded random F16 weights
// from the real configs, written once to $TMPDIR/zimage-bench-v2-<name> as
// sched's benchmarks do) with rank-32 kohya LoRAs on every attention
// projection of the UNet (attn1/attn2 to_q, to_k, to_v, to_out.0), one
// step at ZIMAGE_BENCH_SIZE pixels (default 128), in the forward pass and
// merged. It reports the first apply, a switch to another LoRA, and the
// denoise step without and with a LoRA (the best of two each). Slow on
// lavapipe:
//
//	go test -run '^$' -bench LoRASwitch -benchtime 1x -timeout 60m .
func BenchmarkLoRASwitch(b *testing.B) {
	size := 128
	if s := os.Getenv("ZIMAGE_BENCH_SIZE"); s != "" {
		fmt.Sscan(s, &size)
	}
	dir := syntheticModel(b, "stabilityai-sd-turbo")
	loras := b.TempDir()
	n := writeAttentionLoRAs(b, dir, loras, 32)
	for _, mode := range []zimage.LoRAMode{zimage.LoRAInForward, zimage.LoRAMerge} {
		b.Run(mode.String(), func(b *testing.B) {
			p, err := zimage.Load(dir, zimage.WithLoRADir(loras), zimage.WithLoRAMode(mode))
			if err != nil {
				b.Skipf("no Vulkan device or model: %v", err)
			}
			defer p.Close()
			g := 0.0
			// run makes one image and returns the wall and CPU seconds of
			// its "lora" and "denoise" stages. CPU time (the process's,
			// lavapipe's threads included) is what compares on a shared,
			// busy machine, where wall times vary by a third between runs.
			type cost struct{ loraWall, loraCPU, stepWall, stepCPU float64 }
			run := func(prompt string) cost {
				var c cost
				var mark float64
				req := zimage.Request{Prompt: prompt, Width: size, Height: size, Steps: 1, Guidance: &g, Seed: 1,
					Progress: func(e zimage.Progress) {
						switch {
						case e.Stage == "lora" || (e.Stage == "denoise" && e.Step == 0):
							mark = cpuSeconds()
						case e.Stage == "text" && mark > 0:
							c.loraCPU, mark = cpuSeconds()-mark, 0
						case e.Stage == "decode":
							c.stepCPU = cpuSeconds() - mark
						}
					}}
				res, err := p.Generate(context.Background(), req)
				if err != nil {
					b.Fatal(err)
				}
				for _, s := range res.Stages {
					switch s.Name {
					case "lora":
						c.loraWall = s.Duration.Seconds()
					case "denoise":
						c.stepWall = s.Duration.Seconds()
					}
				}
				return c
			}
			b.ResetTimer()
			run("a lighthouse") // uploads the weights
			apply := run("a lighthouse <lora:style_a:1>")
			sw := run("a lighthouse <lora:style_b:1>")
			remove := run("a lighthouse")
			// The step without and with a LoRA, best of three each; in
			// the forward pass interleaved (switching costs little), so
			// that a busy machine slows both alike.
			inf := math.Inf(1)
			base, with := cost{stepWall: inf, stepCPU: inf}, cost{stepWall: inf, stepCPU: inf}
			best := func(c *cost, n cost) { c.stepWall, c.stepCPU = min(c.stepWall, n.stepWall), min(c.stepCPU, n.stepCPU) }
			for range 3 {
				best(&base, run("a lighthouse"))
				if mode == zimage.LoRAInForward {
					best(&with, run("a lighthouse <lora:style_b:1>"))
				}
			}
			if mode == zimage.LoRAMerge {
				// In a row: each switch would merge again.
				for range 3 {
					best(&with, run("a lighthouse <lora:style_b:1>"))
				}
			}
			b.Logf("%s, %d modules of rank 32, %dx%d: apply %.2f s (%.2f CPU-s), switch %.2f s (%.2f CPU-s), remove %.2f s; "+
				"UNet step %.2f s / %.2f CPU-s without, %.2f s / %.2f CPU-s with (%+.1f%% CPU)",
				mode, n, size, size, apply.loraWall, apply.loraCPU, sw.loraWall, sw.loraCPU, remove.loraWall,
				base.stepWall, base.stepCPU, with.stepWall, with.stepCPU, 100*(with.stepCPU/base.stepCPU-1))
			b.ReportMetric(apply.loraWall, "apply-s")
			b.ReportMetric(sw.loraWall, "switch-s")
			b.ReportMetric(base.stepCPU, "step-base-cpu-s")
			b.ReportMetric(with.stepCPU, "step-lora-cpu-s")
		})
	}
}

// syntheticModel writes (once) a full-size model from a real model's
// configs with seeded random weights and returns its folder.
func syntheticModel(b *testing.B, name string) string {
	root, ok := testref.Root()
	cfg := filepath.Join(root, "..", "real_configs", "reconstructed", name)
	if _, err := os.Stat(cfg); !ok || err != nil {
		b.Skipf("real configs not found at %s", cfg)
	}
	dir := filepath.Join(os.TempDir(), "zimage-bench-v2-"+name)
	if _, err := os.Stat(filepath.Join(dir, "model_index.json")); err != nil {
		b.Logf("writing a synthetic %s model to %s (kept for later runs)", name, dir)
		if err := model.WriteSyntheticModel(dir, model.SyntheticSpec{Arch: "sd-turbo", ConfigDir: cfg, Seed: 1}); err != nil {
			os.RemoveAll(dir)
			b.Fatal(err)
		}
	}
	return dir
}

// writeAttentionLoRAs writes style_a and style_b: kohya LoRAs of the given
// rank (F16, alpha rank/2) on every attention projection of the model's
// UNet. It returns the number of modules.
func writeAttentionLoRAs(b *testing.B, modelDir, dir string, rank int) int {
	ck, err := model.OpenCheckpoint(modelDir, model.OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer ck.Close()
	u, err := model.LoadUNet(ck.UNet.Source, ck.UNet.Config)
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for seed, name := range []string{"style_a", "style_b"} {
		rng := rand.New(rand.NewPCG(uint64(seed), 9))
		f16 := func(n int, std float64) []byte {
			out := make([]byte, 2*n)
			for i := range n {
				binary.LittleEndian.PutUint16(out[2*i:], model.F16Bits(float32(rng.NormFloat64()*std)))
			}
			return out
		}
		var ts []safetensors.WriteTensor
		n = 0
		for _, m := range u.Modules() {
			if !strings.Contains(m.Path, ".attn1.") && !strings.Contains(m.Path, ".attn2.") {
				continue
			}
			key := "lora_unet_" + strings.ReplaceAll(m.Path, ".", "_")
			in, out := m.In(), m.Out()
			ts = append(ts,
				safetensors.WriteTensor{Name: key + ".lora_down.weight", DType: safetensors.F16, Shape: []int{rank, in}, Data: f16(rank*in, 1/math.Sqrt(float64(in)))},
				safetensors.WriteTensor{Name: key + ".lora_up.weight", DType: safetensors.F16, Shape: []int{out, rank}, Data: f16(out*rank, 0.01)},
				safetensors.WriteTensor{Name: key + ".alpha", DType: safetensors.F16, Shape: []int{}, Data: f16Scalar(float32(rank) / 2)})
			n++
		}
		if err := safetensors.WriteFile(filepath.Join(dir, name+".safetensors"), ts, map[string]string{"ss_network_dim": fmt.Sprint(rank)}); err != nil {
			b.Fatal(err)
		}
	}
	return n
}

// cpuSeconds is the process's user and system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func f16Scalar(v float32) []byte {
	out := make([]byte, 2)
	binary.LittleEndian.PutUint16(out, model.F16Bits(v))
	return out
}
