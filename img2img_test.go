package zimage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/jpeg"
	"math"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
)

// i2iRun is one img2img, inpainting or TAESD run of refs_img2img.json.
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
}

func i2iRuns(t *testing.T, r *testref.Refs) (out []i2iRun) {
	t.Helper()
	tsd, _ := r.JSON["taesd"].(map[string]any)
	for _, raw := range []any{r.JSON["img2img"], r.JSON["inpaint"], tsd["txt2img"]} {
		b, err := json.Marshal(raw)
		require.NoError(t, err)
		var runs []i2iRun
		require.NoError(t, json.Unmarshal(b, &runs))
		out = append(out, runs...)
	}
	return out
}

func i2iRequest(t *testing.T, dir string, rn i2iRun) zimage.Request {
	g := rn.Guidance
	req := zimage.Request{Prompt: rn.Prompt, Steps: rn.Steps, Guidance: &g, Seed: rn.Seed}
	if rn.NegativePrompt != nil {
		req.NegativePrompt = *rn.NegativePrompt
	}
	if rn.InputPNG == "" {
		req.Width, req.Height, req.TAESD = rn.Width, rn.Height, true
		return req
	}
	// No size: the picture's.
	req.InitImage, req.Strength = readPNG(t, filepath.Join(dir, rn.InputPNG)), rn.Strength
	if rn.MaskPNG != "" {
		req.Mask = readPNG(t, filepath.Join(dir, rn.MaskPNG))
	}
	return req
}

// TestImg2ImgMatchesReference runs the img2img, inpainting and TAESD
// reference runs through the library from the PNGs as a user passes them
// (size from the picture, the generator seed) and compares the 8-bit
// images with diffusers' fp32 PNGs (>= 50 dB, the bound). Vulkan
// runs every run; the reference backend only tiny-sd-turbo's 2-step ones
// (the sched tests cover every model there).
func TestImg2ImgMatchesReference(t *testing.T) {
	backends := map[string]func(*testing.T) engine.Backend{
		"ref": func(*testing.T) engine.Backend { return ref.New() },
		"vk":  func(t *testing.T) engine.Backend { return vulkan(t) },
	}
	for _, name := range []string{"ref", "vk"} {
		t.Run(name, func(t *testing.T) {
			b := backends[name](t)
			for _, m := range testref.Models {
				if name == "ref" && m != "tiny-sd-turbo" {
					continue
				}
				t.Run(m, func(t *testing.T) {
					r := testref.OpenSet(t, m, "refs_img2img")
					p, err := zimage.Load(r.Dir, zimage.WithBackend(b), zimage.WithTAESD(filepath.Join(r.Dir, "taesd")))
					require.NoError(t, err)
					defer p.Close()
					for _, rn := range i2iRuns(t, r) {
						if name == "ref" && rn.Steps > 2 {
							continue
						}
						res, err := p.Generate(context.Background(), i2iRequest(t, r.Dir, rn))
						require.NoError(t, err, rn.ID)
						want := readPNG(t, filepath.Join(r.Dir, rn.PNG))
						db := psnr(t, res.Images[0], want)
						t.Logf("%s %s: PSNR %.1f dB vs the fp32 reference", m, rn.PNG, db)
						assert.GreaterOrEqual(t, db, 50.0, "%s %s", m, rn.PNG)
						if rn.InputPNG != "" {
							assert.Contains(t, res.Metadata, ", Denoising strength: "+strconv.FormatFloat(rn.Strength, 'f', -1, 64))
						}
						if rn.MaskPNG != "" {
							assert.Contains(t, res.Metadata, ", Mask blur: 0")
						}
					}
				})
			}
		})
	}
}

// tinyPipeline loads tiny-sd-turbo on the reference backend.
func tinyPipeline(t *testing.T, opts ...zimage.Option) (*zimage.Pipeline, string) {
	t.Helper()
	dir := testref.Dir(t, "tiny-sd-turbo")
	p, err := zimage.Load(dir, append([]zimage.Option{zimage.WithBackend(ref.New())}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p, dir
}

// TestInitImageFormats: pictures that are not 8-bit RGB are converted as
// A1111 converts them: grey replicated, palettes looked up, 16-bit to the
// high byte, transparency composited over white, JPEG decoded; each gives
// the image its 8-bit RGB equivalent gives.
func TestInitImageFormats(t *testing.T) {
	p, _ := tinyPipeline(t)
	run := func(img image.Image) []byte {
		t.Helper()
		res, err := p.Generate(context.Background(), zimage.Request{Prompt: "a cat", Seed: 3, InitImage: img, Strength: 1})
		require.NoError(t, err)
		require.Equal(t, image.Rect(0, 0, 32, 24), res.Images[0].Rect)
		return res.Images[0].Pix
	}
	const w, h = 32, 24
	rgb := image.NewNRGBA(image.Rect(0, 0, w, h))
	gray := image.NewGray(rgb.Rect)
	gray16 := image.NewGray16(rgb.Rect)
	rgb64 := image.NewRGBA64(rgb.Rect)
	pal := image.NewPaletted(rgb.Rect, color.Palette{color.NRGBA{10, 200, 30, 255}, color.NRGBA{250, 5, 90, 255}})
	palRGB := image.NewNRGBA(rgb.Rect)
	clear := image.NewNRGBA(rgb.Rect)
	white := image.NewNRGBA(rgb.Rect)
	for y := range h {
		for x := range w {
			v := uint8(x*7 + y*3)
			rgb.SetNRGBA(x, y, color.NRGBA{v, v, v, 255})
			gray.SetGray(x, y, color.Gray{v})
			gray16.SetGray16(x, y, color.Gray16{uint16(v)<<8 | 0x7f})
			c := color.NRGBA{v, 255 - v, v / 2, 255}
			rgb64.SetRGBA64(x, y, color.RGBA64{uint16(c.R)<<8 | 0xff, uint16(c.G) << 8, uint16(c.B)<<8 | 0x80, 0xffff})
			i := uint8((x + y) % 2)
			pal.SetColorIndex(x, y, i)
			palRGB.Set(x, y, pal.Palette[i])
			clear.SetNRGBA(x, y, color.NRGBA{v, 0, 0, 0})
			white.SetNRGBA(x, y, color.NRGBA{255, 255, 255, 255})
		}
	}
	base := run(rgb)
	assert.Equal(t, base, run(gray), "grey")
	assert.Equal(t, base, run(gray16), "16-bit grey")
	rgb8 := image.NewNRGBA(rgb.Rect)
	for y := range h {
		for x := range w {
			c := rgb64.RGBA64At(x, y)
			rgb8.SetNRGBA(x, y, color.NRGBA{uint8(c.R >> 8), uint8(c.G >> 8), uint8(c.B >> 8), 255})
		}
	}
	assert.Equal(t, run(rgb8), run(rgb64), "16-bit RGB")
	assert.Equal(t, run(palRGB), run(pal), "palette")
	assert.Equal(t, run(white), run(clear), "fully transparent pixels are white")
	var buf bytes.Buffer
	require.NoError(t, jpeg.Encode(&buf, rgb, &jpeg.Options{Quality: 95}))
	jp, err := jpeg.Decode(&buf)
	require.NoError(t, err)
	run(jp) // YCbCr
}

// TestImg2ImgRequests: sizes, resizing, masks of another size and the
// refusals.
func TestImg2ImgRequests(t *testing.T) {
	p, dir := tinyPipeline(t)
	in := readPNG(t, filepath.Join(dir, "images_img2img", "input_in1.png")) // 96x64
	mask := readPNG(t, filepath.Join(dir, "images_img2img", "mask_m0.png")) // 64x64
	gen := func(req zimage.Request) (*zimage.Result, error) {
		req.Prompt, req.Seed = "a house", 5
		return p.Generate(context.Background(), req)
	}
	// An odd-sized picture: the default size rounds down to 8.
	odd := image.NewNRGBA(image.Rect(0, 0, 70, 45))
	res, err := gen(zimage.Request{InitImage: odd})
	require.NoError(t, err)
	assert.Equal(t, image.Rect(0, 0, 64, 40), res.Images[0].Rect)
	assert.Contains(t, res.Metadata, "Size: 64x40")
	assert.Contains(t, res.Metadata, "Denoising strength: 0.75")
	// Another size than the picture's, every resize mode; a mask of a
	// third size is resampled too.
	for _, mode := range []zimage.ResizeMode{zimage.ResizeStretch, zimage.ResizeCrop, zimage.ResizeFill} {
		res, err = gen(zimage.Request{InitImage: in, Mask: mask, Width: 48, Height: 80, ResizeMode: mode, MaskBlur: 2})
		require.NoError(t, err)
		assert.Equal(t, image.Rect(0, 0, 48, 80), res.Images[0].Rect)
		assert.Contains(t, res.Metadata, "Mask blur: 2")
	}
	for _, c := range []struct {
		req  zimage.Request
		want string
	}{
		{zimage.Request{InitImage: in, Strength: 1.5}, "strength 1.5"},
		{zimage.Request{InitImage: in, Strength: -0.2}, "strength -0.2"},
		{zimage.Request{InitImage: in, Strength: math.NaN()}, "strength NaN"},
		{zimage.Request{InitImage: in, Strength: 0.2, Steps: 4}, "runs no step"},
		{zimage.Request{Mask: mask}, "mask needs an init image"},
		{zimage.Request{Strength: 0.5}, "without an init image"},
		{zimage.Request{InitImage: in, Mask: mask, MaskBlur: -1}, "mask blur -1"},
		{zimage.Request{InitImage: image.NewNRGBA(image.Rect(0, 0, 0, 5))}, "init image: empty"},
		{zimage.Request{InitImage: in, VAETiling: 1, Tile: 64}, "tile size 64"},
	} {
		_, err := gen(c.req)
		assert.ErrorContains(t, err, c.want)
	}
	// No TAESD: tiny-z-image-turbo has no taesd folder.
	z, err := zimage.Load(testref.Dir(t, "tiny-z-image-turbo"), zimage.WithBackend(ref.New()))
	require.NoError(t, err)
	defer z.Close()
	_, err = z.Generate(context.Background(), zimage.Request{Prompt: "x", Preview: true})
	assert.ErrorContains(t, err, "previews asked for, but no TAESD is loaded")
	_, err = z.Generate(context.Background(), zimage.Request{Prompt: "x", TAESD: true})
	assert.ErrorContains(t, err, "TAESD decoding asked for")
	var ie *zimage.InputError
	_, err = gen(zimage.Request{InitImage: in, Mask: image.NewGray(image.Rect(0, 0, 3, 0))})
	require.ErrorAs(t, err, &ie)
	assert.Equal(t, "mask", ie.What)
}

// TestPreviews: with a taesd folder in the model folder, Preview adds a
// TAESD picture to the progress after every step but the last; the final
// image still comes from the full VAE unless TAESD is asked for.
func TestPreviews(t *testing.T) {
	p, _ := tinyPipeline(t)
	var previews []int
	req := zimage.Request{Prompt: "a boat", Seed: 9, Steps: 3, Preview: true, Width: 48, Height: 80,
		Progress: func(e zimage.Progress) {
			if e.Previews != nil {
				previews = append(previews, e.Step)
				require.Len(t, e.Previews, 1)
				assert.Equal(t, image.Rect(0, 0, 48, 80), e.Previews[0].Rect)
			}
		}}
	full, err := p.Generate(context.Background(), req)
	require.NoError(t, err)
	assert.Equal(t, []int{1, 2}, previews)
	req.Preview, req.Progress = false, nil
	plain, err := p.Generate(context.Background(), req)
	require.NoError(t, err)
	assert.Equal(t, plain.Images[0].Pix, full.Images[0].Pix, "previews change the image")
	req.TAESD = true
	tiny, err := p.Generate(context.Background(), req)
	require.NoError(t, err)
	assert.NotEqual(t, plain.Images[0].Pix, tiny.Images[0].Pix, "TAESD decode is the VAE's")
}

// TestSmallSizes: every multiple of 8 is a size, as diffusers accepts it:
// 8x8 (a 1x1 latent) and 48x80.
func TestSmallSizes(t *testing.T) {
	p, _ := tinyPipeline(t)
	for _, sz := range [][2]int{{8, 8}, {48, 80}} {
		res, err := p.Generate(context.Background(), zimage.Request{Prompt: "a dot", Seed: 1, Width: sz[0], Height: sz[1]})
		require.NoError(t, err, "%v", sz)
		assert.Equal(t, image.Rect(0, 0, sz[0], sz[1]), res.Images[0].Rect)
	}
}
