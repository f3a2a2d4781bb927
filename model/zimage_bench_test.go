package model

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/internal/testref"
)

// One full-size Z-Image-Turbo transformer call (the real config from
// shared/real_configs, seeded synthetic F16 weights: 12.3 GB resident) on
// the Vulkan device, a 256² image (32x32 latent, 256 image tokens) and a
// 64-token caption. Slow on lavapipe: run with
//
//	go test ./model -run '^$' -bench ZImageTransformer -benchtime=1x
//
// Metrics as in the UNet benchmark: s/op (weights resident, pipelines
// compiled by a small warm-up call), GFLOP/s against ZImageTransformer.FLOPs, act-MB
// (device memory above weights and inputs), weights-MB.
func BenchmarkZImageTransformer256(b *testing.B) { benchZImage(b, 32, 32, 64) }
func BenchmarkZImageTransformer512(b *testing.B) { benchZImage(b, 64, 64, 64) }

func loadFullSizeZImage(t testing.TB) *ZImageTransformer {
	t.Helper()
	root, _ := testref.Root()
	path := filepath.Join(root, "..", "real_configs", "Tongyi-MAI-Z-Image-Turbo", "transformer", "config.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("config %s not available", path)
	}
	var cfg ZImageConfig
	require.NoError(t, json.Unmarshal(raw, &cfg))
	m, err := LoadZImage(NewSyntheticSource("transformer", 1), &cfg)
	require.NoError(t, err)
	return m
}

func benchZImage(b *testing.B, h, w, capLen int) {
	m := loadFullSizeZImage(b)
	dev := openUNetVulkan(b)
	res := AllResident{B: dev}
	start := time.Now()
	for _, bl := range m.Blocks() {
		require.NoError(b, res.Need(bl))
	}
	b.Logf("uploaded %.0f MB of synthetic weights in %.1f s", float64(m.Bytes())/1e6, time.Since(start).Seconds())
	rec := engine.NewRec(dev)
	r := rand.New(rand.NewPCG(1, 2))
	item := func(h, w int) ZImageItem {
		return ZImageItem{Latents: testref.Normal(r, m.Config.InChannels*h*w), H: h, W: w, T: 0.5,
			Caption: rec.Write("cap", testref.Normal(r, capLen*m.Config.CapFeatDim), capLen, m.Config.CapFeatDim)}
	}
	call := func(it ZImageItem) {
		m.Forward(rec, res, []ZImageItem{it})
		require.NoError(b, rec.Err())
	}
	warm := item(4, 4)
	call(warm)
	rec.Free(warm.Caption)
	it := item(h, w)
	defer rec.Free(it.Caption)
	require.NoError(b, dev.Flush())
	base := dev.MemStats().InUse
	dev.ResetPeak()
	b.ResetTimer()
	for range b.N {
		call(it)
	}
	b.StopTimer()
	sec := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(sec, "s/op")
	b.ReportMetric(m.FLOPs(h, w, capLen, 1)/sec/1e9, "GFLOP/s")
	b.ReportMetric(float64(dev.MemStats().Peak-base)/1e6, "act-MB")
	b.ReportMetric(float64(m.Bytes())/1e6, "weights-MB")
}
