package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
)

func run(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = Main(append([]string{"zimage"}, args...), &o, &e)
	return code, o.String(), e.String()
}

func TestUsageErrorsExitTwoWithOneLine(t *testing.T) {
	model := t.TempDir()
	cases := map[string][]string{
		"--width":             {"generate", "-m", model, "-p", "x", "-W", "100"},
		"--height":            {"generate", "-m", model, "-p", "x", "-H", "36"},
		"--steps":             {"generate", "-m", model, "-p", "x", "--steps", "0"},
		"--cfg":               {"generate", "-m", model, "-p", "x", "--cfg", "99"},
		"--sampler":           {"generate", "-m", model, "-p", "x", "--sampler", "heun++"},
		"--vram":              {"generate", "-m", model, "-p", "x", "--vram", "lots"},
		"--offload":           {"generate", "-m", model, "-p", "x", "--offload", "disk"},
		"--output":            {"generate", "-m", model, "-p", "x", "-o", "/nonexistent/dir/a.png"},
		"--model":             {"generate", "-m", "/nonexistent/model", "-p", "x"},
		"--preset":            {"generate", "-m", model, "-p", "x", "--preset", "5:4"},
		"--seed":              {"generate", "-m", model, "-p", "x", "--seed", "-5"},
		"-bogus":              {"generate", "-m", model, "-p", "x", "--bogus"},
		"--tile-size":         {"generate", "-m", model, "-p", "x", "--tile-size", "12"},
		"--arch":              {"make-model", "--arch", "sd3", "-o", model},
		"--cfg-truncation":    {"generate", "-m", model, "-p", "x", "--cfg-truncation", "2"},
		"--cfg-normalization": {"generate", "-m", model, "-p", "x", "--cfg-normalization", "-1"},
		"--text-encoder":      {"generate", "-m", model, "-p", "x", "--text-encoder", "/nonexistent/te"},
	}
	for flag, args := range cases {
		code, _, stderr := run(args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, stderr)
		}
		if lines := strings.Count(strings.TrimSpace(stderr), "\n"); lines != 0 || !strings.Contains(stderr, flag) {
			t.Errorf("%v: want one line naming %s, got %q", args, flag, stderr)
		}
	}
}

func TestRuntimeErrorExitsOne(t *testing.T) {
	dir := t.TempDir() // exists, but is no model
	code, _, stderr := run("generate", "-m", dir, "-p", "x", "-o", filepath.Join(dir, "a.png"))
	if code != 1 || strings.Count(strings.TrimSpace(stderr), "\n") > 1 || !strings.Contains(stderr, "model_index.json") {
		t.Fatalf("exit %d, stderr %q; want 1 and a message naming model_index.json", code, stderr)
	}
}

// TestZImageInfoAndMakeModel: make-model writes a tiny Z-Image folder
// that info reads, as text and JSON; a single transformer file needs
// --text-encoder and --vae.
func TestZImageInfoAndMakeModel(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "z")
	code, _, stderr := run("make-model", "--arch", "z-image-turbo", "-o", dir)
	if code != 0 {
		t.Fatalf("make-model: exit %d: %s", code, stderr)
	}
	code, out, stderr := run("info", dir)
	if code != 0 || !strings.Contains(out, "z-image") || !strings.Contains(out, "ZImageTransformer2DModel") || !strings.Contains(out, "1024x1024") {
		t.Fatalf("info: exit %d, stderr %q, out:\n%s", code, stderr, out)
	}
	code, out, _ = run("info", "--json", dir)
	var info struct {
		Arch   string `json:"arch"`
		Memory []any  `json:"memory"`
	}
	if err := json.Unmarshal([]byte(out), &info); code != 0 || err != nil || info.Arch != "z-image" || len(info.Memory) == 0 {
		t.Fatalf("info --json: exit %d, %v, %+v", code, err, info)
	}
	// The transformer alone, as one file (diffusers names): the text
	// encoder and VAE come from the folder.
	shards, _ := filepath.Glob(filepath.Join(dir, "transformer", "*-of-*.safetensors"))
	if len(shards) < 2 {
		t.Fatalf("transformer not sharded: %v", shards)
	}
	code, _, stderr = run("info", shards[0])
	if code != 1 || !strings.Contains(stderr, "one shard") {
		t.Errorf("a shard alone: exit %d, stderr %q", code, stderr)
	}
	// The tiny reference transformer is one whole file.
	ref := testref.Dir(t, "tiny-z-image-turbo")
	single := filepath.Join(ref, "transformer", "diffusion_pytorch_model.safetensors")
	code, _, stderr = run("info", single)
	if code != 1 || !strings.Contains(stderr, "--text-encoder") {
		t.Errorf("a transformer file alone: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = run("info", "--vae", "/nonexistent/vae", single)
	if code != 2 || !strings.Contains(stderr, "--vae") {
		t.Errorf("--vae missing: exit %d, stderr %q", code, stderr)
	}
	code, out, stderr = run("info", "--text-encoder", ref, "--vae", filepath.Join(ref, "vae"), single)
	if code != 0 || !strings.Contains(out, "single file") || !strings.Contains(out, "12.9M") {
		t.Errorf("transformer file with --text-encoder and --vae: exit %d, stderr %q, out:\n%s", code, stderr, out)
	}
}

func TestInfoBadFile(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.safetensors")
	os.WriteFile(bad, []byte("abc"), 0o644)
	code, _, stderr := run("info", bad)
	if code != 1 || !strings.Contains(stderr, "bad.safetensors") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// TestTokenizeJSON checks the tokenize tool against the reference ids of
// every tokenizer of every model.
func TestTokenizeJSON(t *testing.T) {
	for _, m := range testref.Models {
		r := testref.Open(t, m)
		prompts, _ := r.JSON["prompts"].([]any)
		for _, p := range prompts {
			pm := p.(map[string]any)
			code, out, stderr := run("tokenize", "-m", r.Dir, "--json", pm["text"].(string))
			if code != 0 {
				t.Fatalf("%s: exit %d: %s", m, code, stderr)
			}
			var got []tokenizeResult
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("%s: %v in %q", m, err, out)
			}
			toks := pm["tokenizers"].(map[string]any)
			if len(got) != len(toks) {
				t.Fatalf("%s: %d tokenizers, want %d", m, len(got), len(toks))
			}
			for _, g := range got {
				want := toks[g.Tokenizer].(map[string]any)
				ids, _ := json.Marshal(want["ids_unpadded_ftfy"])
				gids, _ := json.Marshal(g.IDs)
				if string(ids) != string(gids) {
					t.Errorf("%s %s %q: ids %s, want %s", m, g.Tokenizer, pm["text"], gids, ids)
				}
				n := int(want["n_tokens_untruncated_ftfy"].(float64))
				if wantTrunc := max(0, n-77); g.Truncated != wantTrunc {
					t.Errorf("%s %s: truncated %d, want %d", m, g.Tokenizer, g.Truncated, wantTrunc)
				}
			}
		}
	}
}

// TestGenerateWritesPNGWithMetadata runs the command end to end on a
// reference model with the reference's noise, and reads the A1111
// parameters back from the PNG.
func TestGenerateWritesPNGWithMetadata(t *testing.T) {
	if _, err := vk.ListDevices(); err != nil {
		t.Skipf("no Vulkan: %v", err)
	}
	r := testref.Open(t, "tiny-sdxl-turbo")
	out := t.TempDir()
	code, stdout, stderr := run("generate", "-m", r.Dir, "-p", "a photo of an astronaut riding a horse on mars",
		"-W", "96", "-H", "64", "--steps", "1", "--cfg", "0", "--seed", "3",
		"--noise", filepath.Join(r.Dir, "noise", "s1_g0_64x96.safetensors"),
		"-o", filepath.Join(out, "{prompt}-{seed}.png"), "--json", "--quiet")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if stderr != "" {
		t.Errorf("--quiet printed %q", stderr)
	}
	var sum genSummary
	if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
		t.Fatalf("--json output %q: %v", stdout, err)
	}
	want := filepath.Join(out, "a-photo-of-an-astronaut-riding-a-horse-on-mars-3.png")
	if len(sum.Images) != 1 || sum.Images[0].Path != want || sum.Width != 96 || sum.Height != 64 {
		t.Fatalf("summary %+v", sum)
	}
	f, err := os.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	text, err := zimage.ReadPNGText(f)
	if err != nil {
		t.Fatal(err)
	}
	p, err := zimage.ParseParameters(text["parameters"])
	if err != nil {
		t.Fatal(err)
	}
	if p.Seed != 3 || p.Steps != 1 || p.Width != 96 || p.Height != 64 || p.Sampler != "Euler a" || p.Model != "tiny-sdxl-turbo" {
		t.Fatalf("parameters %+v", p)
	}
}

// TestZImageTokenizeAndSizes: zimage tokenize shows the chat-templated ids
// ZImagePipeline feeds Qwen3 (the reference ids), and a Z-Image size that
// is no multiple of 16 is a usage error naming the size.
func TestZImageTokenizeAndSizes(t *testing.T) {
	r := testref.Open(t, "tiny-z-image-turbo")
	prompts := r.JSON["tokenizer"].(map[string]any)["prompts"].([]any)
	for _, pr := range prompts {
		pm := pr.(map[string]any)
		name := pm["name"].(string)
		code, out, stderr := run("tokenize", "-m", r.Dir, "--json", pm["prompt"].(string))
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", name, code, stderr)
		}
		var res []struct {
			IDs       []int `json:"ids"`
			Truncated int   `json:"truncated"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil || len(res) != 1 {
			t.Fatalf("%s: %v: %s", name, err, out)
		}
		want, _ := r.Ints(t, name+".input_ids")
		valid := int(pm["n_valid"].(float64))
		if len(res[0].IDs) != valid {
			t.Fatalf("%s: %d ids, want %d", name, len(res[0].IDs), valid)
		}
		for i, id := range res[0].IDs {
			if int64(id) != want[i] {
				t.Fatalf("%s: id %d is %d, want %v", name, i, id, want[i])
			}
		}
		if untrunc := int(pm["n_tokens_untruncated"].(float64)); res[0].Truncated != untrunc-valid {
			t.Errorf("%s: truncated %d, want %d", name, res[0].Truncated, untrunc-valid)
		}
	}
	code, _, stderr := run("generate", "-m", r.Dir, "-p", "x", "-W", "72", "-H", "64", "-o", filepath.Join(t.TempDir(), "a.png"))
	if code != 2 || !strings.Contains(stderr, "72x64") || !strings.Contains(stderr, "16") {
		t.Errorf("72x64 on Z-Image: exit %d, stderr %q; want 2 naming the size and 16", code, stderr)
	}
}
