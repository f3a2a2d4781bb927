package server_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"image"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/server"
)

func fileB64(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(b)
}

// TestImg2img: POST /sdapi/v1/img2img with A1111's fields gives the
// reference runs' images (img2img at strength 0.5; inpainting at strength
// 1 with the mask as a data: URL, inpainting_fill 1 and mask_blur 0, which
// is diffusers' pipeline), A1111's parameters echo and infotext, and saves
// under img2img-images.
func TestImg2img(t *testing.T) {
	ts := startServer(t, server.Config{}, nil)
	dir := filepath.Join(pipeDir, "images_img2img")
	prompt := "a cozy wooden cabin in a snowy pine forest, warm light"
	code, body, _ := ts.post(t, "/sdapi/v1/img2img", map[string]any{
		"prompt": prompt, "init_images": []string{fileB64(t, filepath.Join(dir, "input_in0.png"))},
		"denoising_strength": 0.5, "steps": 2, "cfg_scale": 0, "seed": 2101, "save_images": true,
	})
	require.Equal(t, 200, code, string(body))
	var resp struct {
		Images     []string       `json:"images"`
		Parameters map[string]any `json:"parameters"`
		Info       string         `json:"info"`
	}
	require.NoError(t, json.Unmarshal(body, &resp))
	require.Len(t, resp.Images, 1)
	img, params := decodePNG(t, resp.Images[0])
	want := readPNGFile(t, filepath.Join(dir, "i2i_s2_st0.5_in0.fp32.png"))
	assert.GreaterOrEqual(t, testref.ImagePSNR(img, want), 50.0)
	assert.Contains(t, params, "Denoising strength: 0.5")
	assert.Equal(t, 0.5, resp.Parameters["denoising_strength"])
	assert.Nil(t, resp.Parameters["init_images"], "init_images echoed only with include_init_images")
	var info map[string]any
	require.NoError(t, json.Unmarshal([]byte(resp.Info), &info))
	assert.Equal(t, 0.5, info["denoising_strength"])
	assert.EqualValues(t, 64, info["width"])
	saved, _ := filepath.Glob(filepath.Join(ts.out, "img2img-images", "*", "*.png"))
	assert.Len(t, saved, 1)

	code, body, _ = ts.post(t, "/sdapi/v1/img2img", map[string]any{
		"prompt": prompt, "init_images": []string{fileB64(t, filepath.Join(dir, "input_in0.png"))},
		"mask":               "data:image/png;base64," + fileB64(t, filepath.Join(dir, "mask_m0.png")),
		"denoising_strength": 1, "steps": 2, "cfg_scale": 0, "seed": 3101, "mask_blur": 0, "inpainting_fill": 1,
		"include_init_images": true,
	})
	require.Equal(t, 200, code, string(body))
	require.NoError(t, json.Unmarshal(body, &resp))
	img, params = decodePNG(t, resp.Images[0])
	want = readPNGFile(t, filepath.Join(dir, "inp_s2_st1.0_in0.fp32.png"))
	assert.GreaterOrEqual(t, testref.ImagePSNR(img, want), 50.0)
	assert.Contains(t, params, "Denoising strength: 1, Mask blur: 0")
	assert.Len(t, resp.Parameters["init_images"], 1)
	assert.EqualValues(t, 1, resp.Parameters["inpainting_fill"])
	assert.Contains(t, ts.logText(), "inpaint_full_res")

	// A1111's defaults: inpainting_fill 0 (fill), mask_blur 4, a mask of
	// another size, crop-and-resize to another size.
	code, body, _ = ts.post(t, "/sdapi/v1/img2img", map[string]any{
		"prompt": "a window", "init_images": []string{fileB64(t, filepath.Join(dir, "input_in1.png"))},
		"mask": fileB64(t, filepath.Join(dir, "mask_m0.png")), "width": 48, "height": 80, "resize_mode": 1,
		"steps": 2, "seed": 4, "inpainting_mask_invert": 1,
	})
	require.Equal(t, 200, code, string(body))
	require.NoError(t, json.Unmarshal(body, &resp))
	img, params = decodePNG(t, resp.Images[0])
	assert.Equal(t, image.Rect(0, 0, 48, 80), img.Bounds())
	assert.Contains(t, params, "Mask blur: 4")
}

// TestImg2imgBadRequests: each mistake is a 422 naming its field.
func TestImg2imgBadRequests(t *testing.T) {
	ts := startServer(t, server.Config{}, nil)
	in := fileB64(t, filepath.Join(pipeDir, "images_img2img", "input_in0.png"))
	txt := base64.StdEncoding.EncodeToString([]byte("not a picture"))
	for field, req := range map[string]map[string]any{
		"init_images":            {"prompt": "x"},
		"init_images ":           {"init_images": []string{"%%%"}},
		"init_images  ":          {"init_images": []string{txt}},
		"init_images   ":         {"init_images": []string{"https://example.com/a.png"}},
		"denoising_strength":     {"init_images": []string{in}, "denoising_strength": 0},
		"denoising_strength ":    {"init_images": []string{in}, "denoising_strength": 1.5},
		"denoising_strength  ":   {"init_images": []string{in}, "denoising_strength": 0.1, "steps": 4},
		"mask":                   {"init_images": []string{in}, "mask": txt},
		"mask_blur":              {"init_images": []string{in}, "mask": in, "mask_blur": -1},
		"inpainting_fill":        {"init_images": []string{in}, "mask": in, "inpainting_fill": 7},
		"inpainting_mask_invert": {"init_images": []string{in}, "mask": in, "inpainting_mask_invert": 2},
		"resize_mode":            {"init_images": []string{in}, "resize_mode": 9},
		"width":                  {"init_images": []string{in}, "width": 12},
	} {
		code, body, _ := ts.post(t, "/sdapi/v1/img2img", req)
		if !assert.Equal(t, 422, code, "%s: %s", field, body) {
			continue
		}
		var e struct {
			Detail []struct {
				Loc []any  `json:"loc"`
				Msg string `json:"msg"`
			} `json:"detail"`
		}
		require.NoError(t, json.Unmarshal(body, &e))
		require.Len(t, e.Detail, 1)
		assert.Equal(t, strings.TrimSpace(field), e.Detail[0].Loc[len(e.Detail[0].Loc)-1], "%s: %s", field, body)
	}
}

// previewGate holds a model's run after its first preview until released.
type previewGate struct {
	shared
	seen, release chan struct{}
}

func (g *previewGate) Generate(ctx context.Context, req zimage.Request) (*zimage.Result, error) {
	orig := req.Progress
	first := true
	req.Progress = func(e zimage.Progress) {
		orig(e)
		if e.Previews != nil && first {
			first = false
			close(g.seen)
			<-g.release
		}
	}
	return g.shared.Generate(ctx, req)
}

// TestLivePreviews: with previews on, a running job shows its TAESD
// preview as /sdapi/v1/progress's current_image and /internal/progress's
// live_preview (only when newer than the client's id_live_preview), and
// the options report live_previews_enable.
func TestLivePreviews(t *testing.T) {
	p := tinyModel(t)
	g := &previewGate{shared: shared{p}, seen: make(chan struct{}), release: make(chan struct{})}
	ts := startServer(t, server.Config{Previews: true, Load: func(string) (server.Model, error) { return g, nil }}, nil)
	code, b := ts.get(t, "/sdapi/v1/options")
	require.Equal(t, 200, code)
	assert.Contains(t, string(b), `"live_previews_enable":true`)
	done := make(chan int)
	go func() {
		code, _, _ := ts.post(t, "/sdapi/v1/txt2img", map[string]any{"prompt": "a boat", "steps": 3, "seed": 1,
			"width": 48, "height": 80, "force_task_id": "task-preview"})
		done <- code
	}()
	select {
	case <-g.seen:
	case <-time.After(60 * time.Second):
		t.Fatal("no preview within 60 s")
	}
	waitFor(t, 10*time.Second, "current_image", func() bool { return progress(t, ts)["current_image"] != nil })
	img, _ := decodePNG(t, progress(t, ts)["current_image"].(string))
	assert.Equal(t, image.Rect(0, 0, 48, 80), img.Bounds())
	code, body, _ := ts.post(t, "/internal/progress", map[string]any{"id_task": "task-preview", "id_live_preview": -1})
	require.Equal(t, 200, code)
	var tp map[string]any
	require.NoError(t, json.Unmarshal(body, &tp))
	assert.True(t, strings.HasPrefix(tp["live_preview"].(string), "data:image/png;base64,"))
	assert.EqualValues(t, 1, tp["id_live_preview"])
	_, body, _ = ts.post(t, "/internal/progress", map[string]any{"id_task": "task-preview", "id_live_preview": 1})
	require.NoError(t, json.Unmarshal(body, &tp))
	assert.Nil(t, tp["live_preview"], "no preview newer than the client's")
	close(g.release)
	assert.Equal(t, 200, <-done)
	// Turned off through the options, as A1111's setting.
	code, _, _ = ts.post(t, "/sdapi/v1/options", map[string]any{"live_previews_enable": false})
	require.Equal(t, 200, code)
	_, b = ts.get(t, "/sdapi/v1/options")
	assert.Contains(t, string(b), `"live_previews_enable":false`)
}

func readPNGFile(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	img, _, err := image.Decode(f)
	require.NoError(t, err)
	return img
}
