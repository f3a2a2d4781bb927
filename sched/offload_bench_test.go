package sched

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/safetensors"
)

// BenchmarkUNetOffload times one full-size SD-Turbo UNet call (synthetic
// weights, 32x32 latent) with every weight resident and streamed block by
// block under a 1 GiB device budget, with and without prefetching the next
// block: the cost of layer-wise offload. ZIMAGE_BENCH_LATENT sets the latent
// size (default 32); small latents make the uploads' share visible. The weights are materialised in host
// memory first, as a memory-mapped checkpoint would be, so that uploads copy
// bytes instead of inventing them. Run with -benchtime 1x.
//
// Metrics: s/op is the timed call (after a warm-up call on an 8x8 latent that
// compiles the pipelines), uploaded-MiB the weights copied during it,
// peak-MiB the device memory high-water mark, need-s the host time spent in
// Residency.Need (uploads, and before uploads stopped waiting, the device's
// work recorded before them).
func BenchmarkUNetOffload(b *testing.B) {
	size := 32
	if s := os.Getenv("ZIMAGE_BENCH_LATENT"); s != "" {
		fmt.Sscan(s, &size)
	}
	u := memoryUNet(b, "stabilityai-sd-turbo")
	const budget = 1 << 30
	crossDim := 1024 // SD-Turbo's OpenCLIP-H hidden size
	cases := []struct {
		name     string
		budget   int64
		prefetch bool
	}{{"none", 0, false}, {"layer-1GiB", budget, false}, {"layer-1GiB-prefetch", budget, true}}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			opts := vk.DefaultOptions()
			opts.Budget = c.budget
			dev, err := vk.Open(opts)
			if err != nil {
				b.Skipf("no Vulkan device: %v", err)
			}
			defer dev.Close()
			var inner model.Residency = model.AllResident{B: dev}
			var st *Streamer
			if c.budget > 0 {
				st = NewStreamer(context.Background(), dev, c.budget-unetActivationBytes(u, 1, size, size))
				if c.prefetch {
					st.SetOrder(u.Blocks())
				}
				defer st.Close()
				inner = st
			}
			res := &timedResidency{r: inner}
			call := func(h, w int) {
				rec := engine.NewRec(dev)
				r := rand.New(rand.NewPCG(1, 2))
				randn := func(n int) []float32 { return testref.Normal(r, n) }
				c := u.Config.InChannels
				x := rec.Write("sample", randn(c*h*w), 1, c, h, w)
				ctx := rec.Write("ctx", randn(77*crossDim), 1, 77, crossDim)
				y := u.Forward(rec, res, x, 999, ctx, nil)
				if err := rec.Err(); err != nil {
					b.Fatal(err)
				}
				if _, err := dev.Read(y); err != nil {
					b.Fatal(err)
				}
				rec.Free(x, ctx, y)
			}
			call(8, 8)
			var up0 int64
			if st != nil {
				up0 = st.Uploaded
			}
			dev.ResetPeak()
			res.spent = 0
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				call(size, size)
			}
			b.StopTimer()
			b.ReportMetric(time.Since(start).Seconds()/float64(b.N), "s/op")
			b.ReportMetric(res.spent.Seconds()/float64(b.N), "need-s")
			if st != nil {
				b.ReportMetric(float64(st.Uploaded-up0)/float64(b.N)/(1<<20), "uploaded-MiB")
			}
			b.ReportMetric(float64(dev.MemStats().Peak)/(1<<20), "peak-MiB")
			if c.budget > 0 && dev.MemStats().Peak > c.budget {
				b.Errorf("peak %d bytes over the %d budget", dev.MemStats().Peak, c.budget)
			}
			if st != nil {
				st.Release()
			} else {
				for _, bl := range u.Blocks() {
					bl.Evict(dev)
				}
			}
		})
	}
}

// timedResidency sums the time spent in Need.
type timedResidency struct {
	r     model.Residency
	spent time.Duration
}

func (t *timedResidency) Need(bl *model.Block) error {
	start := time.Now()
	err := t.r.Need(bl)
	t.spent += time.Since(start)
	return err
}

// memoryUNet loads a full-size UNet whose synthetic weights are generated
// once into an in-memory safetensors image.
func memoryUNet(b *testing.B, name string) *model.UNet {
	root, ok := testref.Root()
	path := filepath.Join(root, "..", "real_configs", "reconstructed", name, "unet", "config.json")
	raw, err := os.ReadFile(path)
	if !ok || err != nil {
		b.Skipf("config %s not available", path)
	}
	var cfg model.UNetConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		b.Fatalf("%s: %v", path, err)
	}
	synth := model.NewSyntheticSource("unet", 1)
	if _, err := model.LoadUNet(synth, &cfg); err != nil {
		b.Fatal(err)
	}
	var wts []safetensors.WriteTensor
	for _, k := range synth.Keys() {
		e := synth.Entry(k)
		wts = append(wts, safetensors.WriteTensor{Name: k, DType: e.DType, Shape: e.Shape})
	}
	hdr, n, err := safetensors.EncodeHeader(wts, nil)
	if err != nil {
		b.Fatal(err)
	}
	img := make([]byte, int64(len(hdr))+n)
	off := copy(img, hdr)
	for _, w := range wts {
		off += copy(img[off:], synth.Entry(w.Name).Bytes())
	}
	f, err := safetensors.FromBytes("<memory>", img)
	if err != nil {
		b.Fatal(err)
	}
	src := model.NewSource("unet")
	for _, k := range f.Names() {
		src.AddTensor(k, f.Tensor(k), "<memory>")
	}
	u, err := model.LoadUNet(src, &cfg)
	if err != nil {
		b.Fatal(err)
	}
	return u
}
