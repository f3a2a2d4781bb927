package sched

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
)

// i2iRun is one img2img or inpainting run of refs_img2img.json.
type i2iRun struct {
	ID             string  `json:"id"`
	Prompt         string  `json:"prompt"`
	NegativePrompt *string `json:"negative_prompt"`
	Steps          int     `json:"num_inference_steps"`
	Strength       float64 `json:"strength"`
	Guidance       float64 `json:"guidance_scale"`
	Seed           uint64  `json:"generator_seed"`
	Height         int     `json:"height"`
	Width          int     `json:"width"`
	InputPNG       string  `json:"input_png"`
	MaskPNG        string  `json:"mask_png"`
	PNG            string  `json:"png"`
	UNetEvals      int     `json:"num_unet_evals"`
}

func i2iRuns(t *testing.T, r *testref.Refs, section string) []i2iRun {
	t.Helper()
	var out []i2iRun
	raw, _ := r.JSON[section].([]any)
	if section == "taesd" {
		sec, _ := r.JSON["taesd"].(map[string]any)
		raw, _ = sec["txt2img"].([]any)
	}
	b, err := json.Marshal(raw)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &out))
	require.NotEmpty(t, out, "%s: no %s runs in refs_img2img.json", r.Dir, section)
	return out
}

func readTestPNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err, path)
	return img
}

// i2iParams are a reference run's settings: the input PNG (and mask PNG)
// as the pipeline read them, the generator's seed.
func i2iParams(t *testing.T, dir string, rn i2iRun) Params {
	p := Params{Prompt: rn.Prompt, Width: rn.Width, Height: rn.Height, Steps: rn.Steps, Guidance: rn.Guidance,
		Seed: rn.Seed, Batch: 1}
	if rn.NegativePrompt != nil {
		p.NegativePrompt = *rn.NegativePrompt
	}
	if rn.InputPNG != "" {
		p.Init = &Init{Pixels: model.ImageToPixels(readTestPNG(t, filepath.Join(dir, rn.InputPNG))), Strength: rn.Strength}
	}
	if rn.MaskPNG != "" {
		m := readTestPNG(t, filepath.Join(dir, rn.MaskPNG)).(*image.Gray)
		p.Init.Mask = make([]float32, len(m.Pix))
		for i, v := range m.Pix {
			p.Init.Mask[i] = float32(v) / 255
		}
	}
	return p
}

var (
	i2iVKOnce sync.Once
	i2iVK     *vk.Device
	i2iVKErr  error
)

// i2iBackends: the reference backend, and the Vulkan device when there is
// one (outside -short).
func i2iBackends(t *testing.T) map[string]engine.Backend {
	out := map[string]engine.Backend{"ref": ref.New()}
	if testing.Short() {
		return out
	}
	i2iVKOnce.Do(func() { i2iVK, i2iVKErr = vk.Open(vk.DefaultOptions()) })
	switch {
	case errors.Is(i2iVKErr, vk.ErrNoDevice):
		t.Log("no Vulkan device: ref only")
	case i2iVKErr != nil:
		t.Fatal(i2iVKErr)
	default:
		out["vk"] = i2iVK
	}
	return out
}

// evictOnCleanup frees a model's weights from a device when the test ends.
func evictOnCleanup(t *testing.T, b engine.Backend, m *Models) {
	t.Cleanup(func() {
		for _, bl := range allBlocks(m) {
			bl.Evict(b)
		}
	})
}

// TestImg2ImgRuns replays the img2img, inpainting and TAESD txt2img runs of
// refs_img2img with the recorded generator seeds and checks the timesteps
// run, the latents after every step (inpainting: after the mask blend)
// and the 8-bit image. The reference backend runs only the 2-step runs
// (one img2img, one full-strength inpainting, the TAESD run per model);
// Vulkan runs all of them.
//
// Bounds: latents 1e-4 x (max|ref| + 1), the README's suggestion for
// float32 implementations of the same maths; images >= 50 dB PSNR against
// the float32 reference PNG (the bound).
func TestImg2ImgRuns(t *testing.T) {
	for name, b := range i2iBackends(t) {
		t.Run(name, func(t *testing.T) {
			for _, m := range testref.Models {
				t.Run(m, func(t *testing.T) {
					r := testref.OpenSet(t, m, "refs_img2img")
					models := loadModels(t, r.Dir)
					tiny, err := model.OpenTAESD(filepath.Join(r.Dir, "taesd"))
					require.NoError(t, err)
					t.Cleanup(func() { tiny.Close() })
					models.TAESD = tiny
					evictOnCleanup(t, b, models)
					for _, sec := range []struct{ json, prefix string }{{"img2img", "i2i"}, {"inpaint", "inp"}, {"taesd", "taesd.t2i"}} {
						for _, rn := range i2iRuns(t, r, sec.json) {
							if name == "ref" && rn.Steps > 2 {
								continue
							}
							testI2IRun(t, b, models, r, sec.prefix, rn)
						}
					}
				})
			}
		})
	}
}

func testI2IRun(t *testing.T, b engine.Backend, m *Models, r *testref.Refs, prefix string, rn i2iRun) {
	key := prefix + "." + rn.ID + "."
	p := i2iParams(t, r.Dir, rn)
	p.TAESD = prefix == "taesd.t2i"
	var fails []string
	steps := 0
	p.OnStep = func(k int, lat []float32) {
		steps++
		name := fmt.Sprintf("%sstep%d.latents", key, k)
		want, _ := r.Floats(t, name)
		d := testref.Compare(lat, want)
		if bound := 1e-4 * (d.MaxRef + 1); d.Mismatched || d.NonFinite > 0 || d.MaxAbs > bound {
			fails = append(fails, fmt.Sprintf("%s: %+v, bound %.3g", name, d, bound))
		}
	}
	out, err := Run(context.Background(), b, m, p)
	require.NoError(t, err, key)
	for _, f := range fails {
		t.Error(f)
	}
	if rn.UNetEvals > 0 {
		assert.Equal(t, rn.UNetEvals, steps, key+"UNet calls")
	}
	if r.Has(key + "timesteps") {
		want := refTimesteps(t, r, key+"timesteps")
		assert.Equal(t, want, out.Timesteps, key+"timesteps")
	}
	want := readTestPNG(t, filepath.Join(r.Dir, rn.PNG))
	db := rgbaPSNR(out.Images[0], want)
	t.Logf("%s: %d steps, PSNR %.1f dB vs %s", strings.TrimSuffix(key, "."), steps, db, rn.PNG)
	assert.GreaterOrEqual(t, db, 50.0, "%s vs %s", key, rn.PNG)
}

// refTimesteps reads an int64 (PNDM) or float32 timestep tensor.
func refTimesteps(t *testing.T, r *testref.Refs, name string) []float64 {
	if st := r.File.Tensor(name); st.DType.Size() == 8 {
		v, _ := r.Ints(t, name)
		out := make([]float64, len(v))
		for i, x := range v {
			out[i] = float64(x)
		}
		return out
	}
	v, _ := r.Floats(t, name)
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// TestImg2ImgCancelAndPreview: cancelling while the picture is encoded
// stops the run with context.Canceled and leaves only resident weights
// allocated; a preview arrives after every step but the last, one TAESD
// image per batch image at the run's size.
func TestImg2ImgCancelAndPreview(t *testing.T) {
	r := testref.OpenSet(t, "tiny-sd-turbo", "refs_img2img")
	m := loadModels(t, r.Dir)
	tiny, err := model.OpenTAESD(filepath.Join(r.Dir, "taesd"))
	require.NoError(t, err)
	t.Cleanup(func() { tiny.Close() })
	m.TAESD = tiny
	var rn i2iRun
	for _, x := range i2iRuns(t, r, "inpaint") {
		if x.Steps == 4 {
			rn = x
		}
	}
	b := ref.New()
	ctx, cancel := context.WithCancel(context.Background())
	p := i2iParams(t, r.Dir, rn)
	p.OnStage = func(s string) {
		if s == "encode" {
			cancel()
		}
	}
	_, err = Run(ctx, b, m, p)
	require.ErrorIs(t, err, context.Canceled)
	var weights int64
	for _, bl := range allBlocks(m) {
		if bl.Resident() {
			weights += bl.Bytes()
		}
	}
	assert.Equal(t, weights, b.MemStats().InUse, "only resident weights stay allocated")

	p = i2iParams(t, r.Dir, rn)
	p.Batch = 2
	var previews []int
	p.Preview = func(step int, imgs []*image.RGBA) {
		previews = append(previews, step)
		require.Len(t, imgs, 2)
		assert.Equal(t, image.Rect(0, 0, rn.Width, rn.Height), imgs[0].Rect)
	}
	out, err := Run(context.Background(), b, m, p)
	require.NoError(t, err)
	assert.Equal(t, []int{1, 2}, previews, "previews after steps 1 and 2 of 3")
	require.Len(t, out.Images, 2)
	// The batch shares the encoded picture but not the noise.
	assert.False(t, string(out.Images[0].Pix) == string(out.Images[1].Pix), "the two images of the batch are identical")
}

// TestImg2ImgStreamed: streaming every network (the VAE encoder too) under
// a budget below the weights changes no byte of an inpainting run and stays
// under the budget.
func TestImg2ImgStreamed(t *testing.T) {
	r := testref.OpenSet(t, "tiny-sdxl-turbo", "refs_img2img")
	m := loadModels(t, r.Dir)
	rn := i2iRuns(t, r, "inpaint")[0]
	p := i2iParams(t, r.Dir, rn)
	full, err := Run(context.Background(), ref.New(), m, p)
	require.NoError(t, err)
	unet := BlocksBytes(m.UNet.Blocks())
	budget := unet/2 + unetActivationBytes(m.UNet, 2, 8, 8) + LargestBlock(allBlocks(m))
	b := ref.New(ref.WithBudget(budget))
	p.Offload, p.Budget = OffloadLayer, budget
	streamed, err := Run(context.Background(), b, m, p)
	require.NoError(t, err)
	assert.LessOrEqual(t, streamed.PeakDev, budget)
	assert.Greater(t, streamed.Uploaded, unet, "blocks re-uploaded every step")
	assert.True(t, string(full.Images[0].Pix) == string(streamed.Images[0].Pix), "streamed run differs from the resident one")
	assert.Zero(t, b.MemStats().InUse, "bytes left allocated")
	var names []string
	for _, s := range streamed.Stages {
		names = append(names, s.Name)
	}
	assert.Equal(t, []string{"text", "encode", "denoise", "decode"}, names)
}

// limited is a backend that binds at most max bytes per tensor.
type limited struct {
	engine.Backend
	max int64
}

func (l limited) MaxTensorBytes() int64 { return l.max }

// TestEncodeTileSize: the encoder encodes whole when it fits; under a
// binding limit or a budget it tiles, never below model.MinEncodeTile;
// tiling off never tiles.
func TestEncodeTileSize(t *testing.T) {
	r := testref.Open(t, "tiny-sd-turbo")
	m := loadModels(t, r.Dir)
	p := &Params{Width: 1024, Height: 768}
	assert.Zero(t, encodeTileSize(ref.New(), m.Encoder, p))
	// The tiny encoder's first block has 32 channels: 96 MiB at 1024x768.
	lim := limited{ref.New(), 32 << 20}
	tile := encodeTileSize(lim, m.Encoder, p)
	assert.GreaterOrEqual(t, tile, model.MinEncodeTile)
	assert.Less(t, tile, 128)
	assert.LessOrEqual(t, model.VAEEncodeMaxTensorBytes(&m.Encoder.Config, 1, 8*tile, 8*tile), int64(32<<20))
	p.Tiling = TilingOff
	assert.Zero(t, encodeTileSize(lim, m.Encoder, p))
	p.Tiling, p.Tile = TilingOn, 4
	assert.Equal(t, model.MinEncodeTile, encodeTileSize(ref.New(), m.Encoder, p), "tiles below the quality floor are raised to it")
}
