package zimage_test

import (
	"context"
	"fmt"
	"image"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/gguf"
)

// TestWeightsQuantized runs every tiny SD model with its
// weights quantized at load time (WithWeights) to every type zimage
// encodes, on Vulkan, where the quantized kernels run: each image is
// byte-identical to the run of the model converted to a GGUF of that type
// (the same blocks reach the device either way), and the table logs each
// type's PSNR against the 16-bit run, the cost of the quantization.
func TestWeightsQuantized(t *testing.T) {
	b := vulkan(t)
	var table []string
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			r := testref.Open(t, name)
			base := runAll(t, r, r.Dir, b)
			for _, typ := range model.QuantizeTypes {
				tn := strings.ToLower(typ.String())
				if testing.Short() && tn != "q8_0" && tn != "q4_k" {
					continue
				}
				got := runAll(t, r, r.Dir, b, zimage.WithWeights(tn))
				ck, err := model.OpenCheckpoint(r.Dir, model.OpenOptions{})
				require.NoError(t, err)
				// The name keeps the model's: turbo defaults follow "turbo" in it.
				path := filepath.Join(t.TempDir(), name+"."+tn+".gguf")
				_, err = model.Convert(ck, path, model.QuantizeRules{Type: typ}, nil)
				ck.Close()
				require.NoError(t, err)
				conv := runAll(t, r, path, b, zimage.WithTokenizer(r.Dir), zimage.WithConfigDir(r.Dir))
				for _, id := range sortedIDs(got) {
					if db := psnr(t, got[id], conv[id]); !math.IsInf(db, 1) {
						t.Errorf("%s %s %s: --weights and the converted GGUF differ (%.1f dB)", name, tn, id, db)
					}
					db := psnr(t, got[id], base[id])
					if math.IsNaN(db) {
						t.Errorf("%s %s %s: NaN PSNR", name, tn, id)
					}
					table = append(table, fmt.Sprintf("%-20s %-5s %-16s %6.1f dB", name, tn, id, db))
				}
			}
		})
	}
	t.Logf("PSNR of each run with weights quantized at load (zimage's default rules) vs the 16-bit run, on %s:\n%s", b.Name(), strings.Join(table, "\n"))
}

// TestConvertZImage converts the tiny Z-Image model's transformer to a
// Q8_0 and a Q4_K GGUF (ComfyUI-GGUF's layout: original key names,
// general.architecture lumina2; model's TestConvertZImageMatchesLoadTime
// checks its tensors) and runs it on Vulkan with the folder's text encoder
// and VAE, and the folder with its weights quantized at load (the Qwen3
// text encoder too): both PSNRs against the 16-bit run are logged.
func TestConvertZImage(t *testing.T) {
	b := vulkan(t)
	r := testref.Open(t, "tiny-z-image-turbo")
	var run zimageRun
	for _, rn := range zimageRuns(t, r) {
		if rn.Steps == 1 || run.ID == "" {
			run = rn
		}
	}
	gen := func(path string, opts ...zimage.Option) image.Image {
		p, err := zimage.Load(path, append(opts, zimage.WithBackend(b))...)
		require.NoError(t, err)
		defer p.Close()
		g := run.Guidance
		res, err := p.Generate(context.Background(), zimage.Request{Prompt: run.Prompt, Width: run.Width, Height: run.Height,
			Steps: run.Steps, Guidance: &g, Seed: run.Seed})
		require.NoError(t, err)
		return res.Images[0]
	}
	base := gen(r.Dir)
	for _, typ := range []gguf.Type{gguf.Q8_0, gguf.Q4_K} {
		ck, err := model.OpenCheckpoint(r.Dir, model.OpenOptions{})
		require.NoError(t, err)
		path := filepath.Join(t.TempDir(), "z_image_turbo."+strings.ToLower(typ.String())+".gguf")
		sum, err := model.Convert(ck, path, model.QuantizeRules{Type: typ}, nil)
		ck.Close()
		require.NoError(t, err)
		f, err := gguf.Open(path)
		require.NoError(t, err)
		require.Equal(t, "lumina2", f.Metadata.String("general.architecture"))
		require.NotNil(t, f.Tensor("layers.0.attention.qkv.weight"), "original key names, q/k/v fused")
		f.Close()
		conv := gen(path, zimage.WithTextEncoder(r.Dir), zimage.WithVAE(r.Dir))
		atLoad := gen(r.Dir, zimage.WithWeights(strings.ToLower(typ.String())))
		for what, img := range map[string]image.Image{"converted transformer": conv, "--weights": atLoad} {
			if db := psnr(t, img, base); math.IsNaN(db) {
				t.Errorf("%s %s: NaN PSNR", typ, what)
			}
		}
		t.Logf("%s: %s; %s vs the 16-bit run: converted transformer %.1f dB, weights quantized at load (text encoder too) %.1f dB",
			typ, sum, run.ID, psnr(t, conv, base), psnr(t, atLoad, base))
	}
}
