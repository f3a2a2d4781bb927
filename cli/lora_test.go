package cli

import (
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
)

func readImage(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err, path)
	return img
}

// runArgs are a LoRA reference run's settings as generate flags.
func runArgs(rn testref.LoRARun, prompt, out string) []string {
	args := []string{"generate", "-p", prompt, "-W", fmt.Sprint(rn.Width), "-H", fmt.Sprint(rn.Height),
		"--steps", fmt.Sprint(rn.Steps), "--cfg", fmt.Sprint(rn.Guidance), "--seed", fmt.Sprint(rn.Seed), "-o", out, "--json", "-q"}
	if rn.NegativePrompt != nil {
		args = append(args, "-n", *rn.NegativePrompt)
	}
	return args
}

// checkPNG compares a written PNG with the run's fp32 reference and reads
// its "Lora hashes" back.
func checkPNG(t *testing.T, r *testref.LoRARefs, rn testref.LoRARun, path string) float64 {
	t.Helper()
	db := testref.ImagePSNR(readImage(t, path), readImage(t, filepath.Join(r.Dir, rn.PNG)))
	assert.GreaterOrEqual(t, db, 50.0, "%s: PSNR vs %s", rn.ID, rn.PNG)
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	text, err := zimage.ReadPNGText(f)
	require.NoError(t, err)
	p, err := zimage.ParseParameters(text["parameters"])
	require.NoError(t, err)
	assert.Equal(t, rn.Hashes, p.LoRAHashes, rn.ID)
	return db
}

// TestGenerateLoRAReference runs every LoRA reference run of the three SD
// test models in its --lora FILE:MULT form (refs_lora.json's "cli", paths
// relative to the model folder, the prompt without tags), and one run in
// the tag form with --lora-dir: >= 50 dB against the fp32 images, and the
// PNG's "Lora hashes" is A1111's.
func TestGenerateLoRAReference(t *testing.T) {
	if _, err := vk.ListDevices(); err != nil {
		t.Skipf("no Vulkan: %v", err)
	}
	out := t.TempDir()
	for _, m := range testref.Models {
		r := testref.OpenLoRA(t, m)
		t.Chdir(r.Dir)
		for _, rn := range r.Runs {
			if rn.CLI == nil {
				continue // no LoRA, or TE and UNet multipliers that differ
			}
			png := filepath.Join(out, m+"-"+rn.ID+".png")
			args := append(runArgs(rn, rn.PromptEncoded, png), "-m", r.Dir)
			args = append(args, strings.Fields(*rn.CLI)...)
			code, stdout, stderr := run(args...)
			require.Equal(t, 0, code, "%s %s: %s", m, *rn.CLI, stderr)
			var sum genSummary
			require.NoError(t, json.Unmarshal([]byte(stdout), &sum))
			require.Len(t, sum.LoRAs, len(rn.LoRAs))
			db := checkPNG(t, r, rn, png)
			t.Logf("%s %-10s %-72s %5.1f dB", m, rn.ID, *rn.CLI, db)
		}
	}
	r := testref.OpenLoRA(t, "tiny-sd15")
	rn := r.Run(t, "a0.7_b0.4")
	png := filepath.Join(out, "tags.png")
	code, _, stderr := run(append(runArgs(rn, rn.PromptA1111, png), "-m", r.Dir, "--lora-dir", filepath.Join(r.Dir, "loras"))...)
	require.Equal(t, 0, code, stderr)
	t.Logf("tiny-sd15 %s with tags: %.1f dB", rn.ID, checkPNG(t, r, rn, png))
}

// TestLoRAUsageErrors: a bad --lora value, folder or mode, and a prompt tag
// that --lora-dir cannot resolve are usage errors (exit 2, one line naming
// the flag), found before the model loads.
func TestLoRAUsageErrors(t *testing.T) {
	model := t.TempDir()
	loras := t.TempDir()
	cases := map[string][]string{
		"--lora":      {"generate", "-m", model, "-p", "x", "--lora", "/nonexistent/style.safetensors:0.8"},
		"--lora ":     {"generate", "-m", model, "-p", "x", "--lora", loras},
		"--lora-dir":  {"generate", "-m", model, "-p", "x", "--lora-dir", "/nonexistent/loras"},
		"--lora-mode": {"generate", "-m", model, "-p", "x", "--lora-mode", "fast"},
		"--prompt":    {"generate", "-m", model, "-p", "x <lora:style_a:1>"},
		"--prompt ":   {"generate", "-m", model, "-p", "x <lora:missing_style:1>", "--lora-dir", loras},
		"--prompt  ":  {"generate", "-m", model, "-p", "x <lora:style_a:lots>", "--lora-dir", loras},
	}
	for flag, args := range cases {
		code, _, stderr := run(args...)
		assert.Equal(t, 2, code, "%v: stderr %q", args, stderr)
		assert.Zero(t, strings.Count(strings.TrimSpace(stderr), "\n"), "%v: %q", args, stderr)
		assert.Contains(t, stderr, strings.TrimSpace(flag), args)
	}
	_, _, stderr := run(cases["--prompt "]...)
	assert.Contains(t, stderr, "missing_style")
	_, _, stderr = run("serve", "-m", model, "--lora-dir", "/nonexistent/loras")
	assert.Contains(t, stderr, "--lora-dir")
}

// TestLoRARuntimeErrors: files that exist but cannot be applied fail with
// exit 1 and a message naming the file and the reason.
func TestLoRARuntimeErrors(t *testing.T) {
	if _, err := vk.ListDevices(); err != nil {
		t.Skipf("no Vulkan: %v", err)
	}
	r := testref.OpenLoRA(t, "tiny-sd-turbo")
	dir := t.TempDir()
	pickle := filepath.Join(dir, "old_style.pt")
	require.NoError(t, os.WriteFile(pickle, []byte("PK\x03\x04 a torch.save zip"), 0o644))
	xl := filepath.Join(testref.Dir(t, "tiny-sdxl-turbo"), "loras", "style_a.safetensors")
	for file, want := range map[string]string{pickle: "pickle", xl: "match no module of this model"} {
		code, _, stderr := run("generate", "-m", r.Dir, "-p", "x", "-W", "64", "-H", "64", "--lora", file+":0.8",
			"-o", filepath.Join(dir, "a.png"), "-q")
		assert.Equal(t, 1, code, stderr)
		assert.Contains(t, stderr, file)
		assert.Contains(t, stderr, want)
	}
}

// TestInfoLoRA: zimage info recognises a LoRA file and says which
// architecture and modules it targets, as text and JSON.
func TestInfoLoRA(t *testing.T) {
	path := filepath.Join(testref.Dir(t, "tiny-sdxl-turbo"), "loras", "locon_c.safetensors")
	code, out, stderr := run("info", path)
	require.Equal(t, 0, code, stderr)
	for _, s := range []string{"LoRA (kohya format), <lora:locon_c>", "architecture: SDXL", "text_encoder_2", "conv3x3", "5cd31fa62fdf"} {
		assert.Contains(t, out, s)
	}
	code, out, stderr = run("info", "--json", path)
	require.Equal(t, 0, code, stderr)
	var in struct {
		Name       string `json:"name"`
		Format     string `json:"format"`
		ShortHash  string `json:"short_hash"`
		Components []struct {
			Name    string `json:"name"`
			Modules int    `json:"modules"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &in), out)
	assert.Equal(t, "locon_c", in.Name)
	assert.Equal(t, "kohya", in.Format)
	assert.Equal(t, "5cd31fa62fdf", in.ShortHash)
	require.Len(t, in.Components, 3)
	assert.Equal(t, "unet", in.Components[2].Name)
}
