package model

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
)

func loadTestVAE(t testing.TB, model string) *VAEDecoder {
	t.Helper()
	var cfg VAEConfig
	src := openComponent(t, model, "vae", &cfg)
	v, err := LoadVAEDecoder(src.Source, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range src.Unused() {
		if len(k) < 8 || (k[:8] != "encoder." && k != "quant_conv.weight" && k != "quant_conv.bias") {
			t.Errorf("%s/vae: tensor %q not used by the decoder", model, k)
		}
	}
	return v
}

// fp16Section reads refs.json fp16_vs_fp32[section][name][field].
func fp16Section(r *testref.Refs, section, name, field string) float64 {
	sec, _ := r.JSON["fp16_vs_fp32"].(map[string]any)
	m, _ := sec[section].(map[string]any)
	e, _ := m[name].(map[string]any)
	if field != "" {
		e, _ = e[field].(map[string]any)
	}
	f, _ := e["max_abs"].(float64)
	return f
}

// checkUint8 compares our 8-bit image with the reference's: the README's
// bound for float32 implementations, within 1 level on fewer than 0.5 % of
// the values (float rounding can flip a value that sits on .5).
func checkUint8(t *testing.T, b engine.Backend, img *engine.Tensor, r *testref.Refs, name string) {
	t.Helper()
	rgba, err := ReadImages(b, img)
	if err != nil {
		t.Fatal(err)
	}
	want, shape := r.Ints(t, name)
	h, w := shape[0], shape[1]
	if len(rgba) != 1 || rgba[0].Rect.Dx() != w || rgba[0].Rect.Dy() != h {
		t.Fatalf("%s: image %v, want %dx%d", name, rgba[0].Rect, w, h)
	}
	off := 0
	for i, v := range want {
		y, x, c := i/(3*w), i/3%w, i%3
		d := int64(rgba[0].Pix[4*(y*w+x)+c]) - v
		if d < -1 || d > 1 {
			t.Fatalf("%s: pixel (%d,%d,%d) = %d, want %d", name, y, x, c, v+d, v)
		}
		if d != 0 {
			off++
		}
	}
	if float64(off) > 0.005*float64(len(want)) {
		t.Errorf("%s: %d of %d values differ by one level", name, off, len(want))
	}
	t.Logf("%s: %d of %d values off by one level", name, off, len(want))
}

func refsVAECases(r *testref.Refs) []string {
	var ids []string
	cases, _ := r.JSON["vae_cases"].([]any)
	for _, c := range cases {
		m, _ := c.(map[string]any)
		id, _ := m["id"].(string)
		ids = append(ids, id)
	}
	return ids
}

func refsRuns(r *testref.Refs) []string {
	var ids []string
	runs, _ := r.JSON["runs"].([]any)
	for _, c := range runs {
		m, _ := c.(map[string]any)
		id, _ := m["id"].(string)
		ids = append(ids, id)
	}
	return ids
}

// TestVAEDecode decodes every vae_case latent (diffusion space, through
// Decode) and every run's vae_input (decoder space, through DecodeRaw) and
// compares the float image and the 8-bit image with the references.
func TestVAEDecode(t *testing.T) {
	for _, model := range testref.Models {
		t.Run(model, func(t *testing.T) {
			r := testref.Open(t, model)
			v := loadTestVAE(t, model)
			forEachBackend(t, func(t *testing.T, b engine.Backend, res Residency) {
				rec := engine.NewRec(b)
				decode := func(input, image, uint8s string, raw bool, fp16 float64) {
					lat, shape := r.Floats(t, input)
					z := rec.Write(input, lat, shape...)
					var img *engine.Tensor
					if raw {
						img = v.DecodeRaw(rec, res, z)
					} else {
						img = v.Decode(rec, res, z)
					}
					if err := rec.Err(); err != nil {
						t.Fatal(err)
					}
					checkClose(t, b, img, r, image, fp16)
					checkUint8(t, b, img, r, uint8s)
					rec.Free(z, img)
				}
				for _, id := range refsVAECases(r) {
					p := "vae." + id + "."
					decode(p+"latent", p+"image", p+"uint8", false, fp16Section(r, "vae_decode", id, ""))
				}
				for _, id := range refsRuns(r) {
					p := "run." + id + "."
					decode(p+"vae_input", p+"image", p+"uint8", true, fp16Section(r, "pipeline", id, "image"))
				}
			})
		})
	}
}

// TestVAEDecodeBatch decodes two latents in one batch and checks each
// against its single decode: batch entries must not mix (GroupNorm and
// attention are per image).
func TestVAEDecodeBatch(t *testing.T) {
	const model = "tiny-sd-turbo"
	r := testref.Open(t, model)
	v := loadTestVAE(t, model)
	b := ref.New()
	defer b.Close()
	a, _ := r.Floats(t, "vae.lat8x8.latent")
	c, _ := r.Floats(t, "run.s1_g0_64x64.vae_input")
	for i := range c {
		c[i] *= float32(v.Config.ScalingFactor)
	}
	rec := engine.NewRec(b)
	z := rec.Write("z", append(append([]float32{}, a...), c...), 2, 4, 8, 8)
	img := v.Decode(rec, AllResident{B: b}, z)
	if err := rec.Err(); err != nil {
		t.Fatal(err)
	}
	got, _ := b.Read(img)
	want, _ := r.Floats(t, "vae.lat8x8.image")
	want2, _ := r.Floats(t, "run.s1_g0_64x64.image")
	for i, w := range [][]float32{want, want2} {
		d := testref.Compare(got[i*len(w):(i+1)*len(w)], w)
		if d.MaxAbs > 1e-4*(d.MaxRef+1) || d.NonFinite > 0 {
			t.Errorf("batch entry %d: max |diff| %.3g", i, d.MaxAbs)
		}
	}
}

// TestVAEDecodeNonFinite checks that NaN in the latents surfaces as a
// *NonFiniteOutputError from Decode, not as an image.
func TestVAEDecodeNonFinite(t *testing.T) {
	v := loadTestVAE(t, "tiny-sd15")
	b := ref.New()
	defer b.Close()
	lat := make([]float32, 4*8*8)
	lat[77] = float32(math.NaN())
	rec := engine.NewRec(b)
	z := rec.Write("z", lat, 1, 4, 8, 8)
	img := v.Decode(rec, AllResident{B: b}, z)
	var nf *NonFiniteOutputError
	if img != nil || !errors.As(rec.Err(), &nf) {
		t.Fatalf("NaN latent: got %v, %v; want a NonFiniteOutputError", img, rec.Err())
	}
	t.Log(rec.Err())
	rec = engine.NewRec(b)
	v.DecodeTiled(rec, AllResident{B: b}, z, TileOptions{Size: 4, Overlap: 1})
	if !errors.As(rec.Err(), &nf) {
		t.Fatalf("NaN latent, tiled: got %v; want a NonFiniteOutputError", rec.Err())
	}
	t.Log(rec.Err())
}

// TestVAELoadErrors checks that configs contradicting the checkpoint are
// reported with the tensor name.
func TestVAELoadErrors(t *testing.T) {
	var cfg VAEConfig
	src := openComponent(t, "tiny-sd15", "vae", &cfg)
	bad := cfg
	bad.LayersPerBlock = 2
	_, err := LoadVAEDecoder(src.Source, &bad)
	var me *MissingTensorError
	if !errors.As(err, &me) || me.Key != "decoder.up_blocks.0.resnets.2.norm1.weight" {
		t.Errorf("layers_per_block 2: got %v", err)
	}
	bad = cfg
	bad.BlockOutChannels = []int{32, 32, 64, 64}
	_, err = LoadVAEDecoder(src.Source, &bad)
	var se *ShapeError
	if !errors.As(err, &se) {
		t.Errorf("block_out_channels: got %v, want a ShapeError", err)
	} else {
		t.Log(err)
	}
	bad = cfg
	bad.UpBlockTypes = []string{"UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"}
	if _, err = LoadVAEDecoder(src.Source, &bad); err == nil {
		t.Errorf("AttnUpDecoderBlock2D: no error")
	}
	no := false
	bad = cfg
	bad.UsePostQuantConv = &no
	v, err := LoadVAEDecoder(src.Source, &bad)
	if err != nil || v.PostQuantConv != nil {
		t.Errorf("use_post_quant_conv false: %v", err)
	}
}

// TestImageToRGBA checks the float -> 8-bit conversion against the
// references exactly (fed the reference's own float images) and numpy's
// round-half-to-even on exact halves.
func TestImageToRGBA(t *testing.T) {
	for _, model := range testref.Models {
		r := testref.Open(t, model)
		for _, id := range refsVAECases(r) {
			img, shape := r.Floats(t, "vae."+id+".image")
			want, _ := r.Ints(t, "vae."+id+".uint8")
			rgba, err := ImagesToRGBA(img, shape)
			if err != nil {
				t.Fatal(err)
			}
			h, w := shape[2], shape[3]
			for i, v := range want {
				y, x, c := i/(3*w), i/3%w, i%3
				if got := rgba[0].Pix[4*(y*w+x)+c]; int64(got) != v {
					t.Fatalf("%s %s: pixel (%d,%d,%d) = %d, want %d (from %v)", model, id, y, x, c, got, v, img[(c*h+y)*w+x])
				}
			}
		}
	}
	// Exact halves after * 255 round to even, as numpy does; -1 -> 0,
	// 0 -> 127.5 -> 128, 1 -> 255, out of range clamps.
	for _, c := range []struct {
		x    float32
		want uint8
	}{{-1, 0}, {1, 255}, {-7, 0}, {3, 255}, {0, 128}} {
		if got := toByte(c.x); got != c.want {
			t.Errorf("toByte(%v) = %d, want %d", c.x, got, c.want)
		}
	}
	halves := 0
	for k := 64; k < 192; k++ {
		// Find a float32 v with v*255 == k + 0.5 exactly; x = 2(v - 0.5) is
		// exact for v >= 0.25, so toByte sees exactly that v.
		v := float32((float64(k) + 0.5) / 255)
		for range 4 {
			v = math.Nextafter32(v, 0)
		}
		for range 8 {
			if float32(v*255) == float32(k)+0.5 {
				break
			}
			v = math.Nextafter32(v, 2)
		}
		if float32(v*255) != float32(k)+0.5 {
			continue
		}
		halves++
		want := uint8(k + k%2)
		if got := toByte((v - 0.5) * 2); got != want {
			t.Errorf("toByte at %d.5: %d, want %d (half to even)", k, got, want)
		}
	}
	if halves < 10 {
		t.Errorf("only %d exact halves found to test", halves)
	}
	px := make([]float32, 3*2*2)
	px[5] = float32(math.Inf(1))
	if _, err := ImageToRGBA(px, 2, 2); err == nil {
		t.Errorf("Inf pixel: no error")
	} else {
		var nf *NonFiniteOutputError
		if !errors.As(err, &nf) || fmt.Sprint(nf.First) != "[1 0 1]" {
			t.Errorf("Inf pixel: %v", err)
		}
	}
	if _, err := ImageToRGBA(px, 3, 2); err == nil {
		t.Errorf("wrong size: no error")
	}
}

// TestVAELegacyAttentionNames loads a VAE whose mid-block attention uses
// the names of diffusers before 0.14 (query, key, value, proj_attn), as SD
// 1.5's published VAE still does, and checks it decodes the same.
func TestVAELegacyAttentionNames(t *testing.T) {
	const model = "tiny-sd15"
	r := testref.Open(t, model)
	var cfg VAEConfig
	fs := openComponent(t, model, "vae", &cfg)
	legacy := NewSource("vae")
	rename := map[string]string{"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
	const pre = "decoder.mid_block.attentions.0."
	f := fs.Files[0]
	for _, name := range f.Names() {
		key := name
		for from, to := range rename {
			if strings.HasPrefix(name, pre+from+".") {
				key = pre + to + strings.TrimPrefix(name, pre+from)
			}
		}
		legacy.AddTensor(key, f.Tensor(name), "legacy")
	}
	v, err := LoadVAEDecoder(legacy, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := ref.New()
	defer b.Close()
	rec := engine.NewRec(b)
	lat, shape := r.Floats(t, "vae.lat8x8.latent")
	z := rec.Write("z", lat, shape...)
	img := v.Decode(rec, AllResident{B: b}, z)
	if err := rec.Err(); err != nil {
		t.Fatal(err)
	}
	checkClose(t, b, img, r, "vae.lat8x8.image", fp16Section(r, "vae_decode", "lat8x8", ""))
}
