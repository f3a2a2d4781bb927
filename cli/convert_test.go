package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
)

// TestConvertAndWeights: zimage convert writes a Q8_0 GGUF of tiny
// SD-Turbo that info reads as such and generate runs; generate --weights
// q8_0 quantizes the folder at load and makes the same picture (the same
// blocks reach the device); mistakes are one-line usage errors.
func TestConvertAndWeights(t *testing.T) {
	r := testref.Open(t, "tiny-sd-turbo")
	dir := t.TempDir()
	gg := filepath.Join(dir, "tiny-sd-turbo.q8_0.gguf")

	for flag, args := range map[string][]string{
		"--type":    {"convert", "-m", r.Dir, "-t", "q3_x", "-o", gg},
		"--output":  {"convert", "-m", r.Dir, "-t", "q8_0", "-o", filepath.Join(dir, "x.safetensors")},
		"--model":   {"convert", "-m", "/nonexistent/model", "-t", "q8_0", "-o", gg},
		"--keep":    {"convert", "-m", r.Dir, "-t", "q8_0", "-o", gg, "--keep", "("},
		"--weights": {"generate", "-m", r.Dir, "-p", "x", "--weights", "q9"},
	} {
		code, _, stderr := run(args...)
		assert.Equal(t, 2, code, "%v: %s", args, stderr)
		assert.Contains(t, stderr, flag, args)
		assert.Zero(t, strings.Count(strings.TrimSpace(stderr), "\n"), "%v: one line, got %q", args, stderr)
	}

	code, stdout, stderr := run("convert", "-m", r.Dir, "-t", "q8_0", "-o", gg, "-q")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "quantized")

	code, stdout, stderr = run("info", "--tokenizer", r.Dir, "--config", r.Dir, "--json", gg)
	require.Equal(t, 0, code, stderr)
	var info struct{ Components []model.ComponentInfo }
	require.NoError(t, json.Unmarshal([]byte(stdout), &info))
	var unet *model.ComponentInfo
	for i := range info.Components {
		if info.Components[i].Name == "unet" {
			unet = &info.Components[i]
		}
	}
	require.NotNil(t, unet, stdout)
	assert.Positive(t, unet.DTypes["Q8_0"], "UNet tensors in Q8_0: %v", unet.DTypes)
	assert.Less(t, unet.DeviceBytes, unet.Params*2, "device bytes count Q8_0 blocks")

	if _, err := vk.ListDevices(); err != nil {
		t.Skipf("no Vulkan: %v", err)
	}
	gen := func(name string, args ...string) string {
		out := filepath.Join(dir, name+".png")
		code, _, stderr := run(append([]string{"generate", "-p", "a red cube", "-W", "64", "-H", "64", "--seed", "1", "-o", out, "--quiet"}, args...)...)
		require.Equal(t, 0, code, stderr)
		return out
	}
	fromFile := readImage(t, gen("file", "-m", gg, "--tokenizer", r.Dir, "--config", r.Dir))
	atLoad := readImage(t, gen("load", "-m", r.Dir, "--weights", "q8_0"))
	assert.Greater(t, testref.ImagePSNR(fromFile, atLoad), 99.0, "converted file and --weights q8_0 give the same picture")
}
