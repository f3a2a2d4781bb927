package server_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"image"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/cli"
	"github.com/zimage/zimage/server"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json")

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func decodePNG(t *testing.T, b64 string) (image.Image, string) {
	t.Helper()
	data, err := base64.StdEncoding.DecodeString(b64)
	require.NoError(t, err)
	img, err := png.Decode(bytes.NewReader(data))
	require.NoError(t, err)
	text, err := zimage.ReadPNGText(bytes.NewReader(data))
	require.NoError(t, err)
	return img, text["parameters"]
}

func samePixels(t *testing.T, a, b image.Image) bool {
	t.Helper()
	if a.Bounds() != b.Bounds() {
		return false
	}
	r := a.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			r1, g1, b1, a1 := a.At(x, y).RGBA()
			r2, g2, b2, a2 := b.At(x, y).RGBA()
			if r1 != r2 || g1 != g2 || b1 != b2 || a1 != a2 {
				return false
			}
		}
	}
	return true
}

// TestTxt2imgGolden: A1111's field names and shapes, the info string, and
// images identical to what `zimage generate` writes for the same settings
// (image i of a batch is seed+i, as A1111 numbers them).
func TestTxt2imgGolden(t *testing.T) {
	ts := startServer(t, server.Config{}, nil)
	req := map[string]any{
		"prompt": "a lighthouse at dusk", "negative_prompt": "", "seed": 42, "steps": 2, "cfg_scale": 0,
		"width": 64, "height": 64, "batch_size": 2, "sampler_name": "Euler", "save_images": true,
		"subseed": -1, "restore_faces": false, "some_future_field": map[string]any{"x": 1}, // unknown fields are ignored
	}
	code, body, _ := ts.post(t, "/sdapi/v1/txt2img", req)
	require.Equal(t, 200, code, string(body))
	var resp map[string]any
	require.NoError(t, json.Unmarshal(body, &resp))
	require.Equal(t, []string{"images", "info", "parameters"}, keys(resp))
	images := resp["images"].([]any)
	require.Len(t, images, 2)
	var info map[string]any
	require.NoError(t, json.Unmarshal([]byte(resp["info"].(string)), &info), "info must be a JSON string")

	// Golden: everything but the pixels and the time.
	info["job_timestamp"] = "TIME"
	resp["info"] = info
	resp["images"] = []any{"PNG", "PNG"}
	got, _ := json.MarshalIndent(resp, "", "  ")
	golden := filepath.Join("testdata", "txt2img.golden.json")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(golden, append(got, '\n'), 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err, "run go test ./server -run TestTxt2imgGolden -update")
	assert.JSONEq(t, string(want), string(got))

	// The pixels and metadata equal the CLI's.
	dir := t.TempDir()
	for i, seed := range []string{"42", "43"} {
		img, params := decodePNG(t, images[i].(string))
		assert.Equal(t, info["infotexts"].([]any)[i], params, "PNG parameters chunk = info.infotexts[i]")
		out := filepath.Join(dir, "cli-"+seed+".png")
		var so, se bytes.Buffer
		code := cli.Main([]string{"zimage", "generate", "-m", pipeDir, "-p", "a lighthouse at dusk", "-W", "64", "-H", "64",
			"--steps", "2", "--cfg", "0", "--sampler", "euler", "-s", seed, "-o", out, "-q"}, &so, &se)
		require.Equal(t, 0, code, se.String())
		f, err := os.Open(out)
		require.NoError(t, err)
		want, err := png.Decode(f)
		f.Close()
		require.NoError(t, err)
		assert.True(t, samePixels(t, img, want), "image %d (seed %s) differs from zimage generate's", i, seed)
		cliText, _ := zimage.ReadPNGText(mustOpen(t, out))
		assert.Equal(t, cliText["parameters"], params, "same A1111 parameters text as the CLI")
	}
	// save_images wrote both, in A1111's layout, and said so in the log.
	saved, _ := filepath.Glob(filepath.Join(ts.out, "txt2img-images", "*", "*.png"))
	require.Len(t, saved, 2)
	assert.Regexp(t, regexp.MustCompile(`/\d{4}-\d{2}-\d{2}/00000-42\.png$`), filepath.ToSlash(saved[0]))
	assert.Contains(t, ts.logText(), "saved image to "+saved[0])
	assert.Contains(t, ts.logText(), "generation start")
}

func mustOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// TestBadRequests: every invalid body is a 422 naming the field, in
// FastAPI's shape; methods, sizes and unknown models get A1111's codes.
func TestBadRequests(t *testing.T) {
	ts := startServer(t, server.Config{}, nil)
	cases := map[string]struct {
		body  string
		field string
	}{
		"malformed":     {`{"prompt": "x",`, ""},
		"empty":         {``, ""},
		"trailing":      {`{"prompt": "x"} {}`, ""},
		"width":         {`{"width": 100}`, "width"},
		"height small":  {`{"height": 4}`, "height"},
		"height big":    {`{"height": 4096}`, "height"},
		"steps":         {`{"steps": 0}`, "steps"},
		"steps big":     {`{"steps": 151}`, "steps"},
		"cfg":           {`{"cfg_scale": 99}`, "cfg_scale"},
		"seed":          {`{"seed": -5}`, "seed"},
		"batch":         {`{"batch_size": 4, "n_iter": 5}`, "batch_size"},
		"sampler":       {`{"sampler_name": "Heun"}`, "sampler_name"},
		"sampler_index": {`{"sampler_index": "DPM adaptive"}`, "sampler_index"},
		"karras":        {`{"sampler_name": "DDIM Karras"}`, "sampler_name"},
		"scheduler":     {`{"scheduler": "exponential"}`, "scheduler"},
		"type":          {`{"width": "wide"}`, "width"},
		"script":        {`{"script_name": "x/y/z plot"}`, "script_name"},
	}
	for name, c := range cases {
		code, body, _ := ts.post(t, "/sdapi/v1/txt2img", c.body)
		if !assert.Equal(t, 422, code, "%s: %s", name, body) {
			continue
		}
		var e struct {
			Detail []struct {
				Loc  []any  `json:"loc"`
				Msg  string `json:"msg"`
				Type string `json:"type"`
			} `json:"detail"`
		}
		require.NoError(t, json.Unmarshal(body, &e), name)
		require.Len(t, e.Detail, 1, name)
		assert.Equal(t, "body", e.Detail[0].Loc[0], name)
		if c.field != "" {
			assert.Equal(t, c.field, e.Detail[0].Loc[len(e.Detail[0].Loc)-1], name)
			assert.Contains(t, e.Detail[0].Msg, c.field, name)
		}
	}
	code, body, _ := ts.post(t, "/sdapi/v1/txt2img", `{"override_settings": {"sd_model_checkpoint": "no-such-model"}}`)
	assert.Equal(t, 404, code, string(body))
	assert.Contains(t, string(body), "Model not found")

	resp, err := http.Get(ts.URL + "/sdapi/v1/txt2img")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	big := append([]byte(`{"prompt": "`), bytes.Repeat([]byte("a"), server.MaxBody)...)
	code, _, _ = ts.post(t, "/sdapi/v1/txt2img", append(big, `"}`...))
	assert.Equal(t, http.StatusRequestEntityTooLarge, code)

	// After all that the server still answers.
	code, body, _ = ts.post(t, "/sdapi/v1/txt2img", `{"prompt": "ok", "seed": 1, "send_images": false}`)
	require.Equal(t, 200, code, string(body))
	var ok struct{ Images []string }
	require.NoError(t, json.Unmarshal(body, &ok))
	assert.Empty(t, ok.Images, "send_images false")
}

func TestInfoRoutes(t *testing.T) {
	ts := startServer(t, server.Config{Flags: map[string]any{"port": 7860, "api_auth": nil}}, nil)
	getJSON := func(path string, v any) {
		t.Helper()
		code, b := ts.get(t, path)
		require.Equal(t, 200, code, "%s: %s", path, b)
		require.NoError(t, json.Unmarshal(b, v), path)
	}
	var models []map[string]any
	getJSON("/sdapi/v1/sd-models", &models)
	require.Len(t, models, 1)
	assert.Equal(t, []string{"config", "filename", "hash", "model_name", "sha256", "title"}, keys(models[0]))
	assert.Regexp(t, `^tiny-sd-turbo \[[0-9a-f]{8}\]$`, models[0]["title"])

	var samplers []map[string]any
	getJSON("/sdapi/v1/samplers", &samplers)
	var names []string
	for _, s := range samplers {
		assert.Equal(t, []string{"aliases", "name", "options"}, keys(s))
		names = append(names, s["name"].(string))
	}
	assert.Equal(t, []string{"Euler a", "Euler", "DPM++ 2M", "DDIM", "PLMS", "LCM"}, names)

	var scheds []map[string]any
	getJSON("/sdapi/v1/schedulers", &scheds)
	require.Len(t, scheds, 2)
	assert.Equal(t, []string{"aliases", "default_rho", "label", "name", "need_inner_model"}, keys(scheds[0]))

	var opts map[string]any
	getJSON("/sdapi/v1/options", &opts)
	assert.Equal(t, models[0]["title"], opts["sd_model_checkpoint"])
	code, body, _ := ts.post(t, "/sdapi/v1/options", map[string]any{"sd_model_checkpoint": "tiny-sd-turbo", "samples_format": "png"})
	assert.Equal(t, 200, code, string(body))
	code, body, _ = ts.post(t, "/sdapi/v1/options", map[string]any{"sd_model_checkpoint": "nope"})
	assert.Equal(t, 404, code, string(body))
	code, _, _ = ts.post(t, "/sdapi/v1/refresh-checkpoints", "")
	assert.Equal(t, 200, code)

	var mem map[string]any
	getJSON("/sdapi/v1/memory", &mem)
	assert.Equal(t, []string{"cuda", "ram"}, keys(mem))
	assert.Positive(t, mem["ram"].(map[string]any)["total"])

	var flags map[string]any
	getJSON("/sdapi/v1/cmd-flags", &flags)
	assert.EqualValues(t, 7860, flags["port"])

	var prog map[string]any
	getJSON("/sdapi/v1/progress", &prog)
	assert.Equal(t, []string{"current_image", "eta_relative", "progress", "state", "textinfo"}, keys(prog))
	assert.Equal(t, []string{"interrupted", "job", "job_count", "job_no", "job_timestamp", "sampling_step", "sampling_steps", "skipped"},
		keys(prog["state"].(map[string]any)))
	assert.Nil(t, prog["current_image"])

	code, body, _ = ts.post(t, "/sdapi/v1/skip", "")
	assert.Equal(t, 200, code, string(body))
	code, body, _ = ts.post(t, "/sdapi/v1/interrupt", "")
	assert.Equal(t, 200, code, string(body))

	code, body = ts.get(t, "/healthz")
	assert.Equal(t, 200, code, string(body))
	code, body = ts.get(t, "/readyz")
	assert.Equal(t, 200, code, string(body))

	// Generate one image, then read it back through png-info, the gallery
	// and /outputs/.
	code, body, _ = ts.post(t, "/sdapi/v1/txt2img", map[string]any{"prompt": "红色的立方体, a red cube", "negative_prompt": "blurry", "seed": 7, "save_images": true})
	require.Equal(t, 200, code, string(body))
	var r struct {
		Images []string
		Info   string
	}
	require.NoError(t, json.Unmarshal(body, &r))
	code, body, _ = ts.post(t, "/sdapi/v1/png-info", map[string]any{"image": "data:image/png;base64," + r.Images[0]})
	require.Equal(t, 200, code, string(body))
	var pi struct {
		Info       string
		Items      map[string]any
		Parameters map[string]any
	}
	require.NoError(t, json.Unmarshal(body, &pi))
	assert.Equal(t, "红色的立方体, a red cube", pi.Parameters["Prompt"])
	assert.Equal(t, "blurry", pi.Parameters["Negative prompt"])
	assert.Equal(t, "7", pi.Parameters["Seed"])
	assert.Equal(t, "64", pi.Parameters["Size-1"])
	assert.Equal(t, "1", pi.Parameters["Steps"])
	assert.Contains(t, pi.Info, "Seed: 7, Size: 64x64")
	code, body, _ = ts.post(t, "/sdapi/v1/png-info", map[string]any{"image": "bm90IGEgcG5n"})
	assert.Equal(t, 422, code, string(body))

	var gal struct {
		Total int
		Items []struct{ URL, Name string }
	}
	getJSON("/zimage/v1/gallery", &gal)
	require.Equal(t, 1, gal.Total)
	code, img := ts.get(t, gal.Items[0].URL)
	require.Equal(t, 200, code)
	raw, _ := base64.StdEncoding.DecodeString(r.Images[0])
	assert.Equal(t, raw, img, "the saved file is the returned PNG")

	var info map[string]any
	getJSON("/zimage/v1/info", &info)
	assert.Equal(t, "tiny-sd-turbo", info["model"].(map[string]any)["name"])
	assert.NotNil(t, info["last_run"])
	assert.EqualValues(t, 64, info["defaults"].(map[string]any)["width"])

	code, metrics := ts.get(t, "/metrics")
	require.Equal(t, 200, code)
	for _, m := range []string{"zimage_queue_waiting 0", `zimage_jobs_total{outcome="ok"} 1`, "zimage_stage_seconds_bucket{stage=\"decode\"",
		"zimage_peak_device_bytes", "zimage_model_loaded 1", "go_goroutines"} {
		assert.Contains(t, string(metrics), m)
	}

	// The UI: English or Chinese by Accept-Language, assets from the binary.
	for lang, want := range map[string]string{"zh-CN,zh;q=0.9,en;q=0.8": `lang="zh-CN"`, "en-US,en;q=0.9": `lang="en"`, "de": `lang="en"`} {
		req, _ := http.NewRequest("GET", ts.URL+"/", nil)
		req.Header.Set("Accept-Language", lang)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		assert.Contains(t, b.String(), want, lang)
	}
	for _, p := range []string{"/static/app.js", "/static/style.css", "/static/icon.svg"} {
		code, _ := ts.get(t, p)
		assert.Equal(t, 200, code, p)
	}
}

func TestAuth(t *testing.T) {
	ts := startServer(t, server.Config{Auth: map[string]string{"ann": "s3cret", "bob": "pw2"}}, nil)
	for _, c := range []struct {
		user, pass string
		want       int
	}{{"", "", 401}, {"ann", "wrong", 401}, {"eve", "s3cret", 401}, {"ann", "s3cret", 200}, {"bob", "pw2", 200}} {
		req, _ := http.NewRequest("GET", ts.URL+"/sdapi/v1/sd-models", nil)
		if c.user != "" {
			req.SetBasicAuth(c.user, c.pass)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, c.want, resp.StatusCode, "%s:%s", c.user, c.pass)
		if c.want == 401 {
			assert.Contains(t, resp.Header.Get("WWW-Authenticate"), "Basic")
		}
	}
	for _, p := range []string{"/", "/metrics", "/outputs/txt2img-images/2024-01-01/00000-1.png"} {
		code, _ := ts.get(t, p)
		assert.Equal(t, 401, code, p)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		code, _ := ts.get(t, p)
		assert.Equal(t, 200, code, "%s is for probes, without auth", p)
	}
}

func TestCrossOrigin(t *testing.T) {
	ts := startServer(t, server.Config{CORSOrigins: []string{"https://app.example"}}, nil)
	send := func(method, origin string, hdr map[string]string) *http.Response {
		req, _ := http.NewRequest(method, ts.URL+"/sdapi/v1/interrupt", nil)
		req.Header.Set("Origin", origin)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp
	}
	r := send("POST", "https://evil.example", map[string]string{"Sec-Fetch-Site": "cross-site"})
	assert.Equal(t, 403, r.StatusCode, "a page on another origin must not drive the server")
	r = send("POST", "https://evil.example", nil)
	assert.Equal(t, 403, r.StatusCode, "Origin alone, older browsers")
	r = send("POST", "https://app.example", map[string]string{"Sec-Fetch-Site": "cross-site"})
	assert.Equal(t, 200, r.StatusCode)
	assert.Equal(t, "https://app.example", r.Header.Get("Access-Control-Allow-Origin"))
	r = send("OPTIONS", "https://app.example", map[string]string{"Access-Control-Request-Method": "POST"})
	assert.Equal(t, 204, r.StatusCode)
	assert.Contains(t, r.Header.Get("Access-Control-Allow-Methods"), "POST")
	r = send("POST", ts.URL, map[string]string{"Sec-Fetch-Site": "same-origin"})
	assert.Equal(t, 200, r.StatusCode, "the server's own page")
}

func TestOutputsTraversal(t *testing.T) {
	ts := startServer(t, server.Config{}, nil)
	secret := filepath.Join(t.TempDir(), "secret.png")
	require.NoError(t, os.WriteFile(secret, []byte("secret"), 0o644))
	day := filepath.Join(ts.out, "txt2img-images", "2024-01-01")
	require.NoError(t, os.MkdirAll(day, 0o755))
	// A link inside the folder that points out of it, named like an image.
	require.NoError(t, os.Symlink(secret, filepath.Join(day, "00001-1.png")))
	require.NoError(t, os.WriteFile(filepath.Join(day, "00002-2.png"), []byte("png"), 0o644))
	for _, p := range []string{
		"/outputs/../../../../etc/passwd", "/outputs/..%2f..%2fetc%2fpasswd", "/outputs/txt2img-images/2024-01-01/..%2f..%2f..%2fsecret.png",
		"/outputs/%2e%2e/%2e%2e/etc/passwd", "/outputs/txt2img-images/2024-01-01/00001-1.png", "/outputs/", "/outputs/txt2img-images/2024-01-01/",
		"/outputs//etc/passwd", "/outputs/txt2img-images/2024-01-01/00002-2.png.bak",
	} {
		code, body := ts.get(t, p)
		assert.NotEqual(t, 200, code, "%s served %q", p, body)
		assert.NotContains(t, string(body), "secret", p)
		assert.NotContains(t, string(body), "root:", p)
	}
	code, body := ts.get(t, "/outputs/txt2img-images/2024-01-01/00002-2.png")
	assert.Equal(t, 200, code)
	assert.Equal(t, "png", string(body))
}

func TestFailedJobsKeepServing(t *testing.T) {
	var h *hooked
	ts := startServer(t, server.Config{}, func(m server.Model) server.Model { h = &hooked{innerModel: m}; return h })
	nan := error(&nonFinite{})
	h.fail.Store(&nan)
	code, body, _ := ts.post(t, "/sdapi/v1/txt2img", `{"prompt": "x"}`)
	assert.Equal(t, 500, code)
	assert.Contains(t, string(body), "NaN")
	assert.NotContains(t, string(body), `"images"`, "a NaN output is never returned as an image")

	lost := error(errDeviceLost())
	h.fail.Store(&lost)
	code, body, _ = ts.post(t, "/sdapi/v1/txt2img", `{"prompt": "x"}`)
	assert.Equal(t, 500, code, string(body))
	assert.Contains(t, string(body), "device lost")
	assert.EqualValues(t, 1, ts.loads.Load())

	h.fail.Store(nil) // the reloaded model is a fresh hooked wrapper
	code, body, _ = ts.post(t, "/sdapi/v1/txt2img", `{"prompt": "x", "seed": 3}`)
	assert.Equal(t, 200, code, string(body))
	assert.EqualValues(t, 2, ts.loads.Load(), "a lost device is reopened for the next job")
	_, metrics := ts.get(t, "/metrics")
	assert.Contains(t, string(metrics), `zimage_jobs_total{outcome="failed"} 2`)
	assert.Contains(t, string(metrics), `zimage_jobs_total{outcome="ok"} 1`)
}

func TestShapeOfRandomSeed(t *testing.T) {
	ts := startServer(t, server.Config{}, nil)
	code, body, _ := ts.post(t, "/sdapi/v1/txt2img", `{"prompt": "x", "seed": -1, "sampler_index": "k_euler_a", "scheduler": "Automatic"}`)
	require.Equal(t, 200, code, string(body))
	var r struct {
		Parameters map[string]any
		Info       string
	}
	require.NoError(t, json.Unmarshal(body, &r))
	var info map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.Info), &info))
	seed := info["seed"].(float64)
	assert.True(t, seed >= 0 && seed < 4294967294, "random seed %v in A1111's range", seed)
	assert.EqualValues(t, -1, r.Parameters["seed"], "parameters echo the request")
	assert.Equal(t, "Euler a", r.Parameters["sampler_name"])
	assert.Contains(t, strings.Join(toStrings(info["infotexts"]), ""), "Sampler: Euler a")
}

func toStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}
