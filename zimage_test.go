package zimage_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
)

var update = flag.Bool("update", false, "rewrite testdata/golden with this device's output")

// One Vulkan device per test binary: device setup and pipeline creation
// are slow on lavapipe.
var (
	vkOnce sync.Once
	vkDev  *vk.Device
	vkErr  error
)

func vulkan(t *testing.T) *vk.Device {
	t.Helper()
	vkOnce.Do(func() { vkDev, vkErr = vk.Open(vk.DefaultOptions()) })
	if vkErr != nil {
		t.Skipf("no Vulkan device: %v", vkErr)
	}
	return vkDev
}

func TestMain(m *testing.M) {
	code := m.Run()
	if vkDev != nil {
		vkDev.Close()
	}
	os.Exit(code)
}

func request(r *testref.Refs, rn testref.Run) zimage.Request {
	g := rn.Guidance
	req := zimage.Request{
		Prompt: rn.Prompt, Width: rn.Width, Height: rn.Height, Steps: rn.Steps, Guidance: &g,
		NoiseFile: r.NoiseFile(rn),
	}
	if rn.NegativePrompt != nil {
		req.NegativePrompt = *rn.NegativePrompt
	}
	return req
}

func readPNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return img
}

// psnr of two 8-bit RGB images in dB (+Inf when identical).
func psnr(t *testing.T, a, b image.Image) float64 {
	t.Helper()
	if a.Bounds() != b.Bounds() {
		t.Fatalf("image bounds %v vs %v", a.Bounds(), b.Bounds())
	}
	return testref.ImagePSNR(a, b)
}

// TestGenerateMatchesReference runs every pipeline run recorded in the
// reference models (1 step without guidance, 4 steps with guidance 7.5 and a
// negative prompt, two sizes, SDXL also without a negative prompt) with the
// reference's exact noise, and compares the 8-bit images with the fp32
// reference PNGs. The bound, 50 dB, is the issue's; the reference's own fp16
// pipeline reaches 58-65 dB against the same images.
func TestGenerateMatchesReference(t *testing.T) {
	backends := map[string]func(*testing.T) engine.Backend{
		"ref": func(*testing.T) engine.Backend { return ref.New() },
		"vk":  func(t *testing.T) engine.Backend { return vulkan(t) },
	}
	for _, name := range []string{"ref", "vk"} {
		t.Run(name, func(t *testing.T) {
			b := backends[name](t)
			for _, m := range testref.Models {
				t.Run(m, func(t *testing.T) {
					r := testref.Open(t, m)
					p, err := zimage.Load(r.Dir, zimage.WithBackend(b))
					if err != nil {
						t.Fatal(err)
					}
					defer p.Close()
					for _, rn := range r.Runs(t) {
						if testing.Short() && rn.Steps > 1 {
							continue
						}
						res, err := p.Generate(context.Background(), request(r, rn))
						if err != nil {
							t.Fatalf("%s: %v", rn.ID, err)
						}
						want := readPNG(t, filepath.Join(r.Dir, rn.PNG.FP32))
						db := psnr(t, res.Images[0], want)
						t.Logf("%s %s: PSNR %.1f dB vs the fp32 reference", m, rn.ID, db)
						if db < 50 {
							t.Errorf("%s %s: PSNR %.1f dB vs %s, want >= 50", m, rn.ID, db, rn.PNG.FP32)
						}
						if name == "vk" {
							checkGolden(t, b, fmt.Sprintf("%s_%s", m, rn.ID), res.Images[0])
						}
					}
				})
			}
		})
	}
}

// checkGolden compares with zimage's own committed output. The goldens are
// made on lavapipe, where the same binary must reproduce them exactly; other
// devices order their float sums differently, so they get a PSNR bound.
func checkGolden(t *testing.T, b engine.Backend, name string, img image.Image) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name+".png")
	lavapipe := strings.Contains(b.Name(), "llvmpipe")
	if *update && lavapipe {
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("golden %s missing: run go test -run TestGenerateMatchesReference -update on lavapipe", path)
	}
	want := readPNG(t, path)
	db := psnr(t, img, want)
	switch {
	case lavapipe && !math.IsInf(db, 1):
		t.Errorf("%s: output differs from the golden made on lavapipe (PSNR %.1f dB): a regression, or run with -update after an intended change", name, db)
	case !lavapipe && db < 50:
		t.Errorf("%s: PSNR %.1f dB vs the lavapipe golden, want >= 50 on other devices", name, db)
	}
}

// TestConcurrentGenerate: a Pipeline serializes concurrent requests, and
// each gets the image it would get alone.
func TestConcurrentGenerate(t *testing.T) {
	r := testref.Open(t, "tiny-sd-turbo")
	p, err := zimage.Load(r.Dir, zimage.WithBackend(ref.New()))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	seeds := []uint64{1, 2, 3}
	alone := map[uint64][]byte{}
	for _, s := range seeds {
		res, err := p.Generate(context.Background(), zimage.Request{Prompt: "a red cube", Seed: s})
		if err != nil {
			t.Fatal(err)
		}
		alone[s] = res.Images[0].Pix
	}
	var wg sync.WaitGroup
	errs := make([]error, len(seeds))
	for i, s := range seeds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := p.Generate(context.Background(), zimage.Request{Prompt: "a red cube", Seed: s})
			if err == nil && !bytes.Equal(res.Images[0].Pix, alone[s]) {
				err = fmt.Errorf("seed %d: concurrent result differs from the serial one", s)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if bytes.Equal(alone[1], alone[2]) {
		t.Error("different seeds gave the same image")
	}
}
