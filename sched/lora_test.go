package sched

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/lora"
)

// The LoRA runs of the reference models, driven through Run with the LoRAs
// attached by model/lora: merged into resident weights, and in the forward
// pass while the weights stream under a budget.

var (
	loraVKOnce sync.Once
	loraVK     *vk.Device
	loraVKErr  error
)

func loraBackends(t *testing.T) []struct {
	name string
	b    engine.Backend
} {
	out := []struct {
		name string
		b    engine.Backend
	}{{"ref", ref.New()}}
	if testing.Short() {
		return out
	}
	loraVKOnce.Do(func() { loraVK, loraVKErr = vk.Open(vk.DefaultOptions()) })
	switch {
	case errors.Is(loraVKErr, vk.ErrNoDevice):
		t.Log("no Vulkan device: ref only")
	case loraVKErr != nil:
		t.Fatal(loraVKErr)
	default:
		out = append(out, struct {
			name string
			b    engine.Backend
		}{"vk", loraVK})
	}
	return out
}

// loraTarget indexes the networks of m for LoRAs.
func loraTarget(m *Models) *lora.Target {
	var encs []*model.CLIPText
	for _, e := range m.Encoders {
		encs = append(encs, e.Net)
	}
	return lora.SDTarget(m.UNet, encs...)
}

// loraParams are a reference run's settings with its recorded noise.
func loraParams(t *testing.T, r *testref.LoRARefs, rn testref.LoRARun) Params {
	t.Helper()
	lat, shape := r.Floats(t, fmt.Sprintf("lora.%s.rng.0", rn.ID))
	noise := &Noise{Path: "refs_lora " + rn.ID, Latents: lat, Shape: shape}
	for k := 1; k < len(rn.RNGDraws); k++ {
		v, _ := r.Floats(t, fmt.Sprintf("lora.%s.rng.%d", rn.ID, k))
		noise.Steps = append(noise.Steps, v)
	}
	p := Params{Prompt: rn.PromptEncoded, Width: rn.Width, Height: rn.Height, Steps: rn.Steps,
		Guidance: rn.Guidance, Batch: 1, Noise: noise}
	if rn.NegativePrompt != nil {
		p.NegativePrompt = *rn.NegativePrompt
	}
	return p
}

func loraSpecs(t *testing.T, dir string, rn testref.LoRARun) []lora.Spec {
	t.Helper()
	var specs []lora.Spec
	for _, l := range rn.LoRAs {
		f, err := lora.Open(filepath.Join(dir, l.File))
		require.NoError(t, err)
		t.Cleanup(func() { f.Close() })
		specs = append(specs, lora.Spec{File: f, TE: l.TE, UNet: l.UNet})
	}
	return specs
}

func readPNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err, path)
	return img
}

// evictModels frees every weight of m on b.
func evictModels(m *Models, b engine.Backend) {
	for _, bl := range allBlocks(m) {
		bl.Evict(b)
	}
}

// TestLoRARuns replays every LoRA run of the three reference models on
// every backend, with the LoRAs merged into resident weights and with them
// in the forward pass while the weights stream, and compares the image
// with the reference fp32 image: >= 50 dB PSNR (diffusers itself puts the
// unmerged forward 130-138 dB from the merged one; F16 storage of merged
// weights costs more, see the logged values). One Applier per backend
// switches between the runs' LoRA sets without reloading anything.
func TestLoRARuns(t *testing.T) {
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			r := testref.OpenLoRA(t, name)
			m := loadModels(t, r.Dir)
			target := loraTarget(m)
			for _, be := range loraBackends(t) {
				b := be.b
				a := lora.NewApplier(b, target, lora.Options{})
				for _, mode := range []lora.Mode{lora.Merge, lora.InForward} {
					// Streaming starts from nothing resident.
					evictModels(m, b)
					for _, rn := range r.Runs {
						p := loraParams(t, r, rn)
						require.NoError(t, a.Apply(loraSpecs(t, r.Dir, rn), lora.Modes{Default: mode}), rn.ID)
						if mode == lora.Merge {
							p.Offload = OffloadNone
						} else {
							// Stream: a budget of half the UNet's weights.
							p.Offload = OffloadLayer
							p.Budget = BlocksBytes(m.UNet.Blocks())/2 + unetActivationBytes(m.UNet, 2, rn.Height/8, rn.Width/8) + LargestBlock(allBlocks(m))
						}
						out, err := Run(context.Background(), b, m, p)
						require.NoError(t, err, "%s %s %s", be.name, mode, rn.ID)
						if mode == lora.InForward {
							require.Greater(t, out.Uploaded, BlocksBytes(m.UNet.Blocks()), "weights did not stream")
						}
						want := readPNG(t, filepath.Join(r.Dir, rn.PNG))
						db := testref.ImagePSNR(out.Images[0], want)
						st := a.Stats()
						t.Logf("%s %-10s %-17s %5.1f dB (merged %d, in-forward %d modules)", be.name, mode, rn.ID, db, st.Merged, st.InForward)
						require.GreaterOrEqual(t, db, 50.0, "%s %s %s", be.name, mode, rn.ID)
					}
				}
				require.NoError(t, a.Close())
				evictModels(m, b)
				require.Zero(t, b.MemStats().InUse, "%s: device memory left after the LoRAs and weights are gone", be.name)
			}
		})
	}
}
