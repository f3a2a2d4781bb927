package zimage_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
)

// zimageRun is one whole ZImagePipeline run of the tiny Z-Image
// reference (refs.json "runs"), seeded with torch.Generator().manual_seed.
type zimageRun struct {
	ID       string  `json:"id"`
	Prompt   string  `json:"prompt_text"`
	Negative *string `json:"negative"`
	Height   int     `json:"height"`
	Width    int     `json:"width"`
	Steps    int     `json:"steps"`
	Guidance float64 `json:"guidance"`
	Seed     uint64  `json:"seed"`
}

func zimageRuns(t *testing.T, r *testref.Refs) []zimageRun {
	t.Helper()
	raw, err := json.Marshal(r.JSON["runs"])
	require.NoError(t, err)
	var runs []zimageRun
	require.NoError(t, json.Unmarshal(raw, &runs))
	require.NotEmpty(t, runs)
	return runs
}

// TestZImageGenerateMatchesReference drives the tiny Z-Image model through
// the library as a user would: the seed alone (torch-compatible noise),
// the model's own tokenizer, scheduler and defaults. The bound is the
// issue's: >= 50 dB against diffusers' fp32 PNGs (F16 weights give 61-63 dB
// here; sched's runner tests explain the per-step errors).
func TestZImageGenerateMatchesReference(t *testing.T) {
	r := testref.Open(t, "tiny-z-image-turbo")
	runs := zimageRuns(t, r)
	for _, bk := range []struct {
		name string
		b    func(t *testing.T) engine.Backend
	}{
		{"ref", func(*testing.T) engine.Backend { return ref.New() }},
		{"vk", func(t *testing.T) engine.Backend { return vulkan(t) }},
	} {
		t.Run(bk.name, func(t *testing.T) {
			p, err := zimage.Load(r.Dir, zimage.WithBackend(bk.b(t)))
			require.NoError(t, err)
			defer p.Close()
			require.Equal(t, "z-image", p.Arch())
			require.Equal(t, 16, p.SizeMultiple())
			w, h, steps, g := p.Defaults()
			require.Equal(t, []any{1024, 1024, 9, 0.0}, []any{w, h, steps, g})
			require.Empty(t, p.Warnings)
			for _, rn := range runs {
				if bk.name == "ref" && rn.Steps > 2 {
					continue // the 9-step run takes a minute on the reference backend; vk runs it
				}
				t.Run(rn.ID, func(t *testing.T) {
					g := rn.Guidance
					req := zimage.Request{Prompt: rn.Prompt, Width: rn.Width, Height: rn.Height, Steps: rn.Steps, Guidance: &g, Seed: rn.Seed}
					if rn.Negative != nil {
						req.NegativePrompt = *rn.Negative
					}
					res, err := p.Generate(context.Background(), req)
					require.NoError(t, err)
					require.Len(t, res.Images, 1)
					want := readPNG(t, filepath.Join(r.Dir, "images", rn.ID+".png"))
					db := psnr(t, res.Images[0], want)
					t.Logf("%s: %.1f dB", rn.ID, db)
					require.GreaterOrEqual(t, db, 50.0)
					require.Contains(t, res.Metadata, "Sampler: Euler, CFG scale: ")
				})
			}
		})
	}
}

// TestZImageSizeMultiple: Z-Image sizes come in multiples of 16; others
// are refused with an error naming the size.
func TestZImageSizeMultiple(t *testing.T) {
	dir := testref.Dir(t, "tiny-z-image-turbo")
	p, err := zimage.Load(dir, zimage.WithBackend(ref.New()))
	require.NoError(t, err)
	defer p.Close()
	g := 0.0
	_, err = p.Generate(context.Background(), zimage.Request{Prompt: "x", Width: 72, Height: 64, Steps: 1, Guidance: &g})
	require.ErrorContains(t, err, "72")
	require.ErrorContains(t, err, "16")
}
