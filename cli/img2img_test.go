package cli

import (
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

// TestImg2ImgUsageErrors: every img2img flag mistake is exit 2 with one
// line naming the flag, before any model loads.
func TestImg2ImgUsageErrors(t *testing.T) {
	dir := testref.Dir(t, "tiny-sd-turbo")
	model := t.TempDir()
	in := filepath.Join(dir, "images_img2img", "input_in0.png")
	notImage := filepath.Join(model, "notes.txt")
	require.NoError(t, os.WriteFile(notImage, []byte("hello"), 0o644))
	gen := func(extra ...string) []string {
		return append([]string{"generate", "-m", model, "-p", "x", "-o", filepath.Join(model, "a.png")}, extra...)
	}
	for flag, args := range map[string][]string{
		"--init-img":     gen("--init-img", "/nonexistent/in.png"),
		"--init-img ":    gen("--init-img", notImage),
		"--strength":     gen("--init-img", in, "--strength", "0"),
		"--strength ":    gen("--init-img", in, "--strength", "1.5"),
		"--strength  ":   gen("--strength", "0.5"),
		"--strength   ":  gen("--init-img", in, "--strength", "0.2", "--steps", "4"),
		"--mask":         gen("--mask", in),
		"--mask ":        gen("--init-img", in, "--mask", notImage),
		"--mask-blur":    gen("--init-img", in, "--mask", in, "--mask-blur", "-1"),
		"--mask-blur ":   gen("--init-img", in, "--mask-blur", "4"),
		"--resize-mode":  gen("--init-img", in, "--resize-mode", "squash"),
		"--inpaint-fill": gen("--init-img", in, "--mask", in, "--inpaint-fill", "blue"),
		"--taesd":        gen("--taesd", "/nonexistent/taesd"),
		"--tile-size":    gen("--tile-size", "64"),
		"--width":        gen("-W", "4"),
	} {
		code, _, stderr := run(args...)
		assert.Equal(t, 2, code, "%v: %s", args, stderr)
		assert.Contains(t, stderr, strings.TrimSpace(flag), args)
		assert.Zero(t, strings.Count(strings.TrimSpace(stderr), "\n"), "%v: more than one line: %q", args, stderr)
	}
}

func readParams(t *testing.T, path string) zimage.Parameters {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	text, err := zimage.ReadPNGText(f)
	require.NoError(t, err)
	p, err := zimage.ParseParameters(text["parameters"])
	require.NoError(t, err)
	return p
}

// TestGenerateImg2Img: img2img and inpainting from files on the Vulkan
// device: the reference run's image (>= 50 dB), A1111's Denoising
// strength and Mask blur in the PNG, the size from the picture; TAESD
// decoding with previews (the preview file is gone at the end); the
// small sizes 48x80 and 8x8.
func TestGenerateImg2Img(t *testing.T) {
	if _, err := vk.ListDevices(); err != nil {
		t.Skipf("no Vulkan: %v", err)
	}
	dir := testref.Dir(t, "tiny-sd-turbo")
	out := t.TempDir()
	img := filepath.Join(dir, "images_img2img")
	// i2i.s2_st0.5_in0: 2 steps at strength 0.5, generator seed 2101.
	path := filepath.Join(out, "i2i.png")
	code, _, stderr := run("generate", "-m", dir, "-p", "a cozy wooden cabin in a snowy pine forest, warm light",
		"--init-img", filepath.Join(img, "input_in0.png"), "--strength", "0.5", "--steps", "2", "--seed", "2101", "-o", path, "-q")
	require.Equal(t, 0, code, stderr)
	db := testref.ImagePSNR(decodeTestPNG(t, path), decodeTestPNG(t, filepath.Join(img, "i2i_s2_st0.5_in0.fp32.png")))
	assert.GreaterOrEqual(t, db, 50.0)
	p := readParams(t, path)
	assert.Equal(t, 0.5, p.DenoisingStrength)
	assert.Nil(t, p.MaskBlur)
	assert.Equal(t, 64, p.Width)

	path = filepath.Join(out, "inp.png")
	code, _, stderr = run("generate", "-m", dir, "-p", "a red door", "--init-img", filepath.Join(img, "input_in1.png"),
		"--mask", filepath.Join(img, "mask_m1.png"), "--mask-blur", "4", "--steps", "3", "--seed", "7", "-o", path, "-q")
	require.Equal(t, 0, code, stderr)
	p = readParams(t, path)
	require.NotNil(t, p.MaskBlur)
	assert.Equal(t, 4, *p.MaskBlur)
	assert.Equal(t, 0.75, p.DenoisingStrength)
	assert.Equal(t, image.Rect(0, 0, 96, 64), decodeTestPNG(t, path).Bounds())

	path = filepath.Join(out, "tiny.png")
	code, _, stderr = run("generate", "-m", dir, "-p", "a boat", "--taesd", filepath.Join(dir, "taesd"), "--preview",
		"--steps", "3", "-W", "48", "-H", "80", "-o", path, "-q")
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, image.Rect(0, 0, 48, 80), decodeTestPNG(t, path).Bounds())
	_, err := os.Stat(previewPath(path))
	assert.True(t, os.IsNotExist(err), "the preview file is left: %v", err)

	path = filepath.Join(out, "dot.png")
	code, _, stderr = run("generate", "-m", dir, "-p", "a dot", "-W", "8", "-H", "8", "-o", path, "-q")
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, image.Rect(0, 0, 8, 8), decodeTestPNG(t, path).Bounds())
}

func decodeTestPNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err, path)
	return img
}
