package model

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
)

// TestTiledSweep logs the PSNR of tiled against untiled decodes (N(0,1)
// latents) and encodes (noise images) at 256x256 for every model, tile
// size and mode: the numbers behind the comment at the top of
// vae_tiled.go. Set ZIMAGE_TILE_SWEEP=1 (tens of minutes on lavapipe);
// ZIMAGE_TILE_WHAT=encode sweeps the encoder, ZIMAGE_TILE_SIZES (latent
// pixels, comma-separated), ZIMAGE_TILE_MODELS, ZIMAGE_TILE_OVERLAP and
// ZIMAGE_TILE_HW (latent <h>x<w>) narrow or change it. The Vulkan device runs it when there is one.
func TestTiledSweep(t *testing.T) {
	if os.Getenv("ZIMAGE_TILE_SWEEP") == "" {
		t.Skip("set ZIMAGE_TILE_SWEEP=1 to measure tiled quality over tile sizes and modes")
	}
	sizes := []int{8, 10, 12, 16, 24}
	if s := os.Getenv("ZIMAGE_TILE_SIZES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("ZIMAGE_TILE_SIZES: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	models := testref.Models
	if m := os.Getenv("ZIMAGE_TILE_MODELS"); m != "" {
		models = strings.Split(m, ",")
	}
	overlap := TileOverlap
	if os.Getenv("ZIMAGE_TILE_WHAT") == "encode" {
		overlap = EncodeTileOverlap
	}
	if o := os.Getenv("ZIMAGE_TILE_OVERLAP"); o != "" {
		n, err := strconv.Atoi(o)
		if err != nil {
			t.Fatalf("ZIMAGE_TILE_OVERLAP: %v", err)
		}
		overlap = func(int) int { return n }
	}
	h, w := 32, 32
	if s := os.Getenv("ZIMAGE_TILE_HW"); s != "" {
		if _, err := fmt.Sscanf(s, "%dx%d", &h, &w); err != nil {
			t.Fatalf("ZIMAGE_TILE_HW %q: want <h>x<w> latent pixels", s)
		}
	}
	for _, model := range models {
		t.Run(model, func(t *testing.T) {
			var run func(b engine.Backend, res Residency) func(opt TileOptions) (float64, string)
			if os.Getenv("ZIMAGE_TILE_WHAT") == "encode" {
				e := loadTestVAEEncoder(t, model)
				run = func(b engine.Backend, res Residency) func(TileOptions) (float64, string) {
					rec := engine.NewRec(b)
					x := rec.Write("x", testPixels(h, w), 1, 3, 8*h, 8*w)
					whole := e.Encode(rec, res, x)
					if err := rec.Err(); err != nil {
						t.Fatal(err)
					}
					return func(opt TileOptions) (float64, string) {
						d := e.EncodeTiled(rec, res, x, opt)
						if err := rec.Err(); err != nil {
							t.Fatal(err)
						}
						return latentPSNR(whole.Mean, d.Mean), fmt.Sprintf("(log-variance %.1f dB)", latentPSNR(whole.LogVar, d.LogVar))
					}
				}
			} else {
				v := loadTestVAE(t, model)
				run = func(b engine.Backend, res Residency) func(TileOptions) (float64, string) {
					rec := engine.NewRec(b)
					z := rec.Write("z", randLatents(uint64(h*1000+w), 4*h*w), 1, 4, h, w)
					img := v.Decode(rec, res, z)
					if err := rec.Err(); err != nil {
						t.Fatal(err)
					}
					whole, _ := b.Read(img)
					rec.Free(img)
					return func(opt TileOptions) (float64, string) {
						tiled, _ := v.DecodeTiledHost(rec, res, z, opt)
						if err := rec.Err(); err != nil {
							t.Fatal(err)
						}
						return psnr(whole, tiled), ""
					}
				}
			}
			b, res := fastBackend(t)
			measure := run(b, res)
			for _, size := range sizes {
				for _, local := range []bool{false, true} {
					opt := TileOptions{Size: size, Overlap: overlap(size), LocalNorm: local}
					start := time.Now()
					p, extra := measure(opt)
					passes := 3
					if local {
						passes = 1
					}
					ny := len(tileStarts(h, size, opt.Overlap)) * min(size, h)
					nx := len(tileStarts(w, size, opt.Overlap)) * min(size, w)
					work := float64(passes*ny*nx) / float64(h*w)
					t.Logf("%s %dx%d px, tile %d px overlap %d local=%v: %.1f dB %s(%.1f s, %.1fx the untiled work)",
						model, 8*h, 8*w, 8*size, 8*opt.Overlap, local, p, extra, time.Since(start).Seconds(), work)
				}
			}
		})
	}
}

// fastBackend is the Vulkan device when there is one (several times faster
// than the reference on these networks), else the reference backend.
func fastBackend(t *testing.T) (engine.Backend, Residency) {
	for _, cb := range cvBackends {
		if cb.name == "vk" {
			cvVulkanOnce.Do(func() { cvVulkan, cvVulkanErr = vk.Open(vk.DefaultOptions()) })
			if cvVulkanErr == nil {
				res := &evictingResidency{b: cvVulkan}
				t.Cleanup(res.evictAll)
				return cvVulkan, res
			}
		}
	}
	b := ref.New()
	t.Cleanup(func() { b.Close() })
	return b, AllResident{B: b}
}

// latentPSNR is the PSNR of a tiled encode's latents against the untiled
// ones, with the untiled latents' range as the peak.
func latentPSNR(want, got []float32) float64 {
	lo, hi := want[0], want[0]
	var se float64
	for i, v := range want {
		lo, hi = min(lo, v), max(hi, v)
		d := float64(got[i] - v)
		se += d * d
	}
	r := float64(hi - lo)
	return 10 * math.Log10(r*r/(se/float64(len(want))))
}

// testPixels is a seeded image [1, 3, 8h, 8w] in [-1, 1]: N(0, 0.5²) noise,
// clamped.
func testPixels(h, w int) []float32 {
	px := randLatents(uint64(h*77+w), 3*64*h*w)
	for i, v := range px {
		px[i] = min(max(v/2, -1), 1)
	}
	return px
}
