package server_test

import (
	"encoding/json"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/server"
)

// loraLoader opens the tiny SD-Turbo model with a LoRA folder, on the
// shared pipeline's device (as zimage serve --lora-dir does with its own).
func loraLoader(t *testing.T, dir string) server.LoadFunc {
	t.Helper()
	b := tinyModel(t).Backend()
	return func(path string) (server.Model, error) {
		p, err := zimage.Load(path, zimage.WithBackend(b), zimage.WithLoRADir(dir))
		if err != nil {
			return nil, err
		}
		return p, nil
	}
}

// copyFile copies src to dst.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.Create(dst)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
}

// TestLoRAs: GET /sdapi/v1/loras lists the folder as A1111 does (name,
// alias, path, metadata with JSON values decoded), refresh-loras picks up
// a file copied in, a txt2img with <lora:...> tags matches the reference
// image with "Lora hashes" in its infotext and extra_generation_params,
// and an unknown name, a pickle and an SDXL LoRA get 422s naming them.
func TestLoRAs(t *testing.T) {
	r := testref.OpenLoRA(t, "tiny-sd-turbo")
	dir := t.TempDir()
	for _, n := range []string{"style_a", "style_b", "locon_c"} {
		copyFile(t, filepath.Join(r.Dir, "loras", n+".safetensors"), filepath.Join(dir, n+".safetensors"))
	}
	ts := startServer(t, server.Config{LoRADir: dir, Load: loraLoader(t, dir)}, nil)

	code, body := ts.get(t, "/sdapi/v1/loras")
	require.Equal(t, 200, code, string(body))
	var list []map[string]any
	require.NoError(t, json.Unmarshal(body, &list))
	require.Len(t, list, 3)
	assert.Equal(t, []string{"alias", "metadata", "name", "path"}, keys(list[0]))
	names := []string{}
	for _, it := range list {
		names = append(names, it["name"].(string))
	}
	assert.Equal(t, []string{"locon_c", "style_a", "style_b"}, names)
	locon := list[0]
	assert.Equal(t, "locon_c", locon["alias"])
	assert.Equal(t, filepath.Join(dir, "locon_c.safetensors"), locon["path"])
	md := locon["metadata"].(map[string]any)
	assert.Equal(t, "networks.lora", md["ss_network_module"])
	assert.Equal(t, map[string]any{"conv_dim": "4", "conv_alpha": "3.0"}, md["ss_network_args"], "JSON metadata values are decoded, as A1111 does")

	// A file copied in: listed after refresh-loras (A1111 answers null).
	copyFile(t, filepath.Join(r.Dir, "loras", "pytorch_lora_weights.safetensors"), filepath.Join(dir, "pytorch_lora_weights.safetensors"))
	code, body, _ = ts.post(t, "/sdapi/v1/refresh-loras", "")
	require.Equal(t, 200, code)
	assert.Equal(t, "null", strings.TrimSpace(string(body)))
	_, body = ts.get(t, "/sdapi/v1/loras")
	require.NoError(t, json.Unmarshal(body, &list))
	assert.Len(t, list, 4)

	// The reference run with two stacked LoRAs, as an API client sends it.
	rn := r.Run(t, "a0.7_b0.4")
	req := map[string]any{"prompt": rn.PromptA1111, "seed": rn.Seed, "steps": rn.Steps, "cfg_scale": rn.Guidance,
		"width": rn.Width, "height": rn.Height}
	code, body, _ = ts.post(t, "/sdapi/v1/txt2img", req)
	require.Equal(t, 200, code, string(body))
	var resp struct {
		Images     []string       `json:"images"`
		Parameters map[string]any `json:"parameters"`
		Info       string         `json:"info"`
	}
	require.NoError(t, json.Unmarshal(body, &resp))
	var info struct {
		Prompt    string         `json:"prompt"`
		Infotexts []string       `json:"infotexts"`
		Extra     map[string]any `json:"extra_generation_params"`
	}
	require.NoError(t, json.Unmarshal([]byte(resp.Info), &info))
	assert.Equal(t, rn.PromptA1111, info.Prompt, "the tags stay in the prompt")
	assert.Equal(t, rn.Hashes, info.Extra["Lora hashes"])
	img, params := decodePNG(t, resp.Images[0])
	assert.Equal(t, info.Infotexts[0], params)
	assert.Contains(t, params, `Lora hashes: "`+rn.Hashes+`"`)
	f := mustOpen(t, filepath.Join(r.Dir, rn.PNG))
	want, err := png.Decode(f)
	require.NoError(t, err)
	db := testref.ImagePSNR(img, want)
	t.Logf("txt2img %s: %.1f dB vs the fp32 reference", rn.ID, db)
	assert.GreaterOrEqual(t, db, 50.0)

	// Bad names and files: 422 with FastAPI's shape, naming the LoRA.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "old_style.pt"), []byte("PK\x03\x04 a torch.save zip"), 0o644))
	copyFile(t, filepath.Join(testref.Dir(t, "tiny-sdxl-turbo"), "loras", "style_a.safetensors"), filepath.Join(dir, "xl_style.safetensors"))
	for tag, wantMsg := range map[string]string{
		"<lora:no_such_style:1>": `no LoRA named "no_such_style"`,
		"<lora:style_a:heavy>":   "not a number",
		"<lora:old_style:1>":     "pickle",
		"<lora:xl_style:1>":      "match no module of this model",
	} {
		code, body, _ := ts.post(t, "/sdapi/v1/txt2img", map[string]any{"prompt": "a fox " + tag, "steps": 1, "width": 64, "height": 64})
		require.Equal(t, 422, code, "%s: %s", tag, body)
		var d struct {
			Detail []struct {
				Loc []string `json:"loc"`
				Msg string   `json:"msg"`
			} `json:"detail"`
		}
		require.NoError(t, json.Unmarshal(body, &d), string(body))
		require.Len(t, d.Detail, 1)
		assert.Equal(t, []string{"body", "prompt"}, d.Detail[0].Loc, tag)
		assert.Contains(t, d.Detail[0].Msg, wantMsg, tag)
	}
	// The server still works after them, without the LoRAs.
	code, body, _ = ts.post(t, "/sdapi/v1/txt2img", map[string]any{"prompt": "a fox", "steps": 1, "width": 64, "height": 64})
	require.Equal(t, 200, code, string(body))
	assert.NotContains(t, string(body), "Lora hashes")
	assert.Equal(t, int32(1), ts.loads.Load(), "LoRAs switch without loading the model again")

	code, body = ts.get(t, "/zimage/v1/info")
	require.Equal(t, 200, code)
	var ui struct {
		LoRAs []struct {
			Name string `json:"name"`
		} `json:"loras"`
		LoRADir string `json:"lora_dir"`
	}
	require.NoError(t, json.Unmarshal(body, &ui))
	assert.Equal(t, dir, ui.LoRADir)
	assert.Len(t, ui.LoRAs, 6)
}

// TestLoRAsWithoutFolder: a tag on a server without --lora-dir is a 422
// that says so; the list is empty.
func TestLoRAsWithoutFolder(t *testing.T) {
	ts := startServer(t, server.Config{}, nil)
	code, body := ts.get(t, "/sdapi/v1/loras")
	require.Equal(t, 200, code)
	assert.Equal(t, "[]", strings.TrimSpace(string(body)))
	code, body, _ = ts.post(t, "/sdapi/v1/txt2img", map[string]any{"prompt": "a fox <lora:style_a:1>", "steps": 1})
	require.Equal(t, 422, code)
	assert.Contains(t, string(body), "--lora-dir")
}
