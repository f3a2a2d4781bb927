package zimage_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"image"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/lora"
	"github.com/zimage/zimage/model/safetensors"
	"github.com/zimage/zimage/sched"
)

// loraRequest is a LoRA reference run as an A1111 user writes it: the
// prompt with its <lora:...> tags and the seed (zimage's noise is
// torch.randn's for a seed, so the reference's generator draws are
// reproduced without its noise tensors).
func loraRequest(rn testref.LoRARun) zimage.Request {
	g := rn.Guidance
	req := zimage.Request{Prompt: rn.PromptA1111, Width: rn.Width, Height: rn.Height, Steps: rn.Steps, Guidance: &g, Seed: rn.Seed}
	if rn.NegativePrompt != nil {
		req.NegativePrompt = *rn.NegativePrompt
	}
	return req
}

// checkLoRARun compares a run with the reference's fp32 image and its
// metadata with what A1111 writes: the tags stay in the prompt, and "Lora
// hashes" is refs_lora.json's a1111_lora_hashes, also after a round trip
// through the PNG.
func checkLoRARun(t *testing.T, r *testref.LoRARefs, rn testref.LoRARun, res *zimage.Result) float64 {
	t.Helper()
	want := readPNG(t, filepath.Join(r.Dir, rn.PNG))
	db := psnr(t, res.Images[0], want)
	require.GreaterOrEqual(t, db, 50.0, "%s: PSNR vs %s", rn.ID, rn.PNG)
	require.Len(t, res.LoRAs, len(rn.LoRAs), rn.ID)
	for i, l := range rn.LoRAs {
		assert.Equal(t, l.Name, res.LoRAs[i].Name, rn.ID)
		assert.Equal(t, []float64{l.TE, l.UNet}, []float64{res.LoRAs[i].TE, res.LoRAs[i].UNet}, rn.ID)
	}
	var buf bytes.Buffer
	require.NoError(t, zimage.EncodePNG(&buf, res.Images[0], res.Metadata))
	text, err := zimage.ReadPNGText(&buf)
	require.NoError(t, err)
	back, err := zimage.ParseParameters(text["parameters"])
	require.NoError(t, err)
	assert.Equal(t, rn.PromptA1111, back.Prompt, rn.ID)
	assert.Equal(t, rn.Hashes, back.LoRAHashes, rn.ID)
	if rn.Hashes == "" {
		assert.NotContains(t, res.Metadata, "Lora hashes", rn.ID)
	}
	return db
}

// TestLoRARunsMatchReference runs every LoRA reference run of the three SD
// test models through the library on Vulkan, one Pipeline per model with
// the model's loras/ as the LoRA folder, in the reference's order (base,
// one LoRA at 1.0 and 0.5, two stacked, LoCon, PEFT, separate TE/UNet
// multipliers, then base again): >= 50 dB against the fp32 images, and
// switching sets never reloads the model: in the forward pass it uploads
// nothing, merged it restores only the modules merged before, and the
// last base image is bit-identical to the first. lavapipe is a CPU device,
// so the UNet is merged only where that costs the run less (tiny-sd15's
// 8 UNet calls with the larger sets) and the text encoders never are. The
// reference backend runs two of the runs.
func TestLoRARunsMatchReference(t *testing.T) {
	backends := []struct {
		name string
		b    func(*testing.T) engine.Backend
		runs map[string]bool // nil = all
	}{
		{"vk", func(t *testing.T) engine.Backend { return vulkan(t) }, nil},
		{"ref", func(*testing.T) engine.Backend { return ref.New() }, map[string]bool{"a0.7_b0.4": true, "locon1.0": true}},
	}
	for _, bk := range backends {
		t.Run(bk.name, func(t *testing.T) {
			b := bk.b(t)
			for _, m := range testref.Models {
				if bk.runs != nil && m != "tiny-sd15" {
					continue
				}
				t.Run(m, func(t *testing.T) {
					r := testref.OpenLoRA(t, m)
					p, err := zimage.Load(r.Dir, zimage.WithBackend(b), zimage.WithLoRADir(filepath.Join(r.Dir, "loras")))
					require.NoError(t, err)
					defer p.Close()
					var base *image.RGBA
					var model int64
					prevMerged := false
					for i, rn := range r.Runs {
						if bk.runs != nil && !bk.runs[rn.ID] {
							continue
						}
						res, err := p.Generate(context.Background(), loraRequest(rn))
						require.NoError(t, err, rn.ID)
						db := checkLoRARun(t, r, rn, res)
						var lstage float64
						for _, s := range res.Stages {
							if s.Name == "lora" {
								lstage = s.Duration.Seconds()
							}
						}
						t.Logf("%s %-17s %5.1f dB  lora stage %.3f s  uploaded %d B  %v  %d in-forward modules, %d B of terms",
							m, rn.ID, db, lstage, res.Uploaded, res.LoRAModes, res.LoRAStats.InForward, res.LoRAStats.ForwardBytes)
						if rn.ID == "base" {
							base, model = res.Images[0], res.Uploaded
						}
						merged := res.LoRAStats.Merged > 0
						if i > 0 && bk.runs == nil {
							if !merged && !prevMerged {
								assert.Zero(t, res.Uploaded, "%s: switching LoRAs in the forward pass uploaded weights", rn.ID)
							}
							assert.Less(t, res.Uploaded, model/4, "%s: a switch re-uploads only the merged modules", rn.ID)
						}
						prevMerged = merged
						for c, mode := range res.LoRAModes {
							if strings.HasPrefix(c, "text_encoder") {
								assert.Equal(t, "in-forward", mode, "%s %s on a CPU device", rn.ID, c)
							}
						}
					}
					if base == nil {
						return
					}
					res, err := p.Generate(context.Background(), loraRequest(r.Run(t, "base")))
					require.NoError(t, err)
					assert.Equal(t, base.Pix, res.Images[0].Pix, "base after the LoRA runs differs from the first base")
					assert.Equal(t, lora.Stats{Restored: res.LoRAStats.Restored}, res.LoRAStats, "LoRA terms left after the set was cleared")
				})
			}
		})
	}
}

// TestLoRAMergedSwitch: WithLoRAMode(LoRAMerge) merges into the resident
// weights; switching sets restores only the modules it merged (far less
// than the model) and reaches the same images, and clearing the set gives
// the base image back bit for bit. The flag form (Request.LoRAs, with
// separate multipliers) gives the tag form's image.
func TestLoRAMergedSwitch(t *testing.T) {
	r := testref.OpenLoRA(t, "tiny-sd15")
	p, err := zimage.Load(r.Dir, zimage.WithBackend(vulkan(t)), zimage.WithLoRADir(filepath.Join(r.Dir, "loras")),
		zimage.WithLoRAMode(zimage.LoRAMerge))
	require.NoError(t, err)
	defer p.Close()
	first, err := p.Generate(context.Background(), loraRequest(r.Run(t, "base")))
	require.NoError(t, err)
	model := first.Uploaded
	for i, id := range []string{"locon1.0", "a_te0.25_unet1.0"} {
		rn := r.Run(t, id)
		res, err := p.Generate(context.Background(), loraRequest(rn))
		require.NoError(t, err, id)
		db := checkLoRARun(t, r, rn, res)
		for c, mode := range res.LoRAModes {
			assert.Equal(t, "merge", mode, c)
		}
		assert.Positive(t, res.LoRAStats.Merged)
		assert.Zero(t, res.LoRAStats.ForwardBytes)
		if i > 0 {
			// From none to a set nothing is restored (the weights are
			// resident already); from one set to another the modules
			// merged before are.
			assert.Positive(t, res.Uploaded, "a switch restores merged modules")
		}
		assert.Less(t, res.Uploaded, model/2, "a switch re-uploads only the adapted modules")
		t.Logf("merged %s: %.1f dB, %d modules, uploaded %d of the model's %d B", id, db, res.LoRAStats.Merged, res.Uploaded, model)
	}
	// The same run from Request.LoRAs instead of a tag.
	rn := r.Run(t, "a_te0.25_unet1.0")
	te, unet := 0.25, 1.0
	req := loraRequest(r.Run(t, "base"))
	req.Prompt = rn.PromptEncoded
	req.LoRAs = []zimage.LoRA{{Path: filepath.Join(r.Dir, rn.LoRAs[0].File), TE: &te, UNet: &unet}}
	res, err := p.Generate(context.Background(), req)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, psnr(t, res.Images[0], readPNG(t, filepath.Join(r.Dir, rn.PNG))), 50.0)
	assert.Equal(t, rn.Hashes, res.Parameters.LoRAHashes)
	assert.Zero(t, res.Uploaded, "the same set again: nothing to do")

	res, err = p.Generate(context.Background(), loraRequest(r.Run(t, "base")))
	require.NoError(t, err)
	assert.Equal(t, first.Images[0].Pix, res.Images[0].Pix, "base after merged LoRAs")
	assert.Equal(t, lora.Stats{Restored: res.LoRAStats.Restored}, res.LoRAStats)
}

// TestLoRABadInput: an unknown tag name, a tag without a LoRA folder, a
// pickle file, a LoRA for another architecture and a bad tag get named,
// typed errors; the Pipeline keeps working after each.
func TestLoRABadInput(t *testing.T) {
	r := testref.OpenLoRA(t, "tiny-sd-turbo")
	xl := testref.Dir(t, "tiny-sdxl-turbo")
	dir := t.TempDir()
	pickle := filepath.Join(dir, "old_style.pt")
	require.NoError(t, os.WriteFile(pickle, []byte("PK\x03\x04 a torch.save zip"), 0o644))
	b := ref.New()
	p, err := zimage.Load(r.Dir, zimage.WithBackend(b), zimage.WithLoRADir(filepath.Join(r.Dir, "loras")))
	require.NoError(t, err)
	defer p.Close()
	g := 0.0
	req := func(prompt string, loras ...zimage.LoRA) zimage.Request {
		return zimage.Request{Prompt: prompt, Width: 64, Height: 64, Steps: 1, Guidance: &g, Seed: 1, LoRAs: loras}
	}
	ok, err := p.Generate(context.Background(), req("a fox"))
	require.NoError(t, err)

	_, err = p.Generate(context.Background(), req("a fox <lora:no_such_style:0.8>"))
	var unknown *lora.UnknownLoRAError
	require.ErrorAs(t, err, &unknown)
	assert.Equal(t, "no_such_style", unknown.Name)
	assert.ErrorContains(t, err, "no_such_style")

	_, err = p.Generate(context.Background(), req("a fox <lora:style_a:x>"))
	var tagErr *lora.TagError
	require.ErrorAs(t, err, &tagErr)

	_, err = p.Generate(context.Background(), req("a fox", zimage.LoRA{Path: pickle, Multiplier: 1}))
	var le *zimage.LoRAError
	var pe *lora.PickleError
	require.ErrorAs(t, err, &le)
	require.ErrorAs(t, err, &pe)
	assert.ErrorContains(t, err, "old_style.pt")

	// An SDXL LoRA on SD-Turbo: the second text encoder's keys match
	// nothing here.
	other := filepath.Join(xl, "loras", "style_a.safetensors")
	_, err = p.Generate(context.Background(), req("a fox <lora:style_a:1>", zimage.LoRA{Path: other, Multiplier: 1}))
	var um *lora.UnknownModuleError
	require.ErrorAs(t, err, &le)
	require.ErrorAs(t, err, &um)
	assert.ErrorContains(t, err, other)

	// Nothing of the failed requests stays applied.
	again, err := p.Generate(context.Background(), req("a fox"))
	require.NoError(t, err)
	assert.Equal(t, ok.Images[0].Pix, again.Images[0].Pix)
	assert.Zero(t, again.Uploaded)

	noDir, err := zimage.Load(r.Dir, zimage.WithBackend(b))
	require.NoError(t, err)
	defer noDir.Close()
	_, err = noDir.Generate(context.Background(), req("a fox <lora:style_a:1>"))
	require.ErrorAs(t, err, &unknown)
	assert.ErrorContains(t, err, "--lora-dir")

	_, err = zimage.Load(r.Dir, zimage.WithBackend(b), zimage.WithLoRADir(filepath.Join(dir, "missing")))
	assert.ErrorContains(t, err, "missing")
}

// writeZImageLoRA writes a diffusers/PEFT LoRA (rank 4, float32) for the
// tiny Z-Image transformer on every third Linear of its modules.
func writeZImageLoRA(t *testing.T, dir, path string) {
	t.Helper()
	ck, err := model.OpenCheckpoint(dir, model.OpenOptions{})
	require.NoError(t, err)
	defer ck.Close()
	dit, err := model.LoadZImage(ck.Transformer.Source, ck.Transformer.Config)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(17, 1))
	f32 := func(n int, std float64) []byte {
		out := make([]byte, 4*n)
		for i := range n {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(float32(rng.NormFloat64()*std)))
		}
		return out
	}
	const rank = 4
	var ts []safetensors.WriteTensor
	for i, m := range dit.Modules() {
		if i%3 != 0 {
			continue
		}
		key := "transformer." + m.Path
		ts = append(ts,
			safetensors.WriteTensor{Name: key + ".lora_A.weight", DType: safetensors.F32, Shape: []int{rank, m.In()}, Data: f32(rank*m.In(), 1/math.Sqrt(float64(m.In())))},
			safetensors.WriteTensor{Name: key + ".lora_B.weight", DType: safetensors.F32, Shape: []int{m.Out(), rank}, Data: f32(m.Out()*rank, 0.2)})
	}
	require.NoError(t, safetensors.WriteFile(path, ts, nil))
}

// TestZImageLoRA: a diffusers/PEFT LoRA on the Z-Image transformer, named
// by a prompt tag, changes the image; the base image comes back bit for
// bit once the tag is gone (one small step).
func TestZImageLoRA(t *testing.T) {
	dir := testref.Dir(t, "tiny-z-image-turbo")
	loras := t.TempDir()
	writeZImageLoRA(t, dir, filepath.Join(loras, "zi_style.safetensors"))
	p, err := zimage.Load(dir, zimage.WithBackend(vulkan(t)), zimage.WithLoRADir(loras))
	require.NoError(t, err)
	defer p.Close()
	g := 0.0
	req := zimage.Request{Prompt: "a red fox", Width: 32, Height: 32, Steps: 1, Guidance: &g, Seed: 3}
	base, err := p.Generate(context.Background(), req)
	require.NoError(t, err)
	req.Prompt = "a red fox <lora:zi_style:0.8>"
	res, err := p.Generate(context.Background(), req)
	require.NoError(t, err)
	require.Len(t, res.LoRAs, 1)
	assert.Equal(t, map[string]string{"transformer": "in-forward"}, res.LoRAModes)
	assert.Positive(t, res.LoRAStats.InForward)
	assert.Contains(t, res.Metadata, `Lora hashes: "zi_style: `)
	db := psnr(t, base.Images[0], res.Images[0])
	t.Logf("Z-Image with the LoRA: %.1f dB from the base image; stages %v", db, res.Stages)
	assert.Less(t, db, 40.0, "the LoRA changed (almost) nothing")
	req.Prompt = "a red fox"
	again, err := p.Generate(context.Background(), req)
	require.NoError(t, err)
	assert.Equal(t, base.Images[0].Pix, again.Images[0].Pix)
}

// TestLoRAStreamed: with the weights streamed under a budget, LoRAs go in
// the forward pass even when merging is asked for (a streamed block comes
// back from the checkpoint without the merge), they match the reference,
// and the run's budget leaves room for their terms: a budget the model
// alone just fits is refused with them, naming their share.
func TestLoRAStreamed(t *testing.T) {
	r := testref.OpenLoRA(t, "tiny-sd-turbo")
	rn := r.Run(t, "a0.7_b0.4")
	load := func(budget int64) *zimage.Pipeline {
		p, err := zimage.Load(r.Dir, zimage.WithBackend(vulkan(t)), zimage.WithLoRADir(filepath.Join(r.Dir, "loras")),
			zimage.WithOffload(sched.OffloadLayer), zimage.WithBudget(budget), zimage.WithLoRAMode(zimage.LoRAMerge))
		require.NoError(t, err)
		t.Cleanup(func() { p.Close() })
		return p
	}
	const budget = 6 << 20
	p := load(budget)
	for _, id := range []string{"a0.7_b0.4", "locon1.0"} {
		rn := r.Run(t, id)
		res, err := p.Generate(context.Background(), loraRequest(rn))
		require.NoError(t, err)
		db := checkLoRARun(t, r, rn, res)
		for c, mode := range res.LoRAModes {
			assert.Equal(t, "in-forward", mode, c)
		}
		assert.GreaterOrEqual(t, res.Uploaded, p.Model().DeviceWeightBytes, "streamed weights are uploaded for every request")
		assert.LessOrEqual(t, res.PeakDevice, int64(budget))
		t.Logf("%s streamed under %d B: %.1f dB, peak %d B with %d B of LoRA terms, uploaded %d B", id, budget, db, res.PeakDevice, res.LoRAStats.ForwardBytes, res.Uploaded)
	}

	// The UNet's largest block (3 MiB here) with its activations just fits
	// 3.3 MiB, but not beside the 374 KiB of a0.7_b0.4's terms.
	p = load(3<<20 + 300<<10)
	_, err := p.Generate(context.Background(), loraRequest(r.Run(t, "base")))
	require.NoError(t, err)
	_, err = p.Generate(context.Background(), loraRequest(rn))
	require.Error(t, err)
	assert.ErrorContains(t, err, "taken by the LoRAs' forward-pass terms")
	t.Log(err)
}
