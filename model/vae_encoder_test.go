package model

import (
	"errors"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/gguf"
	"github.com/zimage/zimage/sched/rng"
)

func loadTestVAEEncoder(t testing.TB, model string) *VAEEncoder {
	t.Helper()
	var cfg VAEConfig
	src := openComponent(t, model, "vae", &cfg)
	e, err := LoadVAEEncoder(src.Source, &cfg)
	require.NoError(t, err)
	for _, k := range src.Unused() {
		if !strings.HasPrefix(k, "decoder.") && !strings.HasPrefix(k, "post_quant_conv.") {
			t.Errorf("%s/vae: tensor %q not used by the encoder", model, k)
		}
	}
	return e
}

// encoderCase is one refs_img2img.json encoder_cases entry.
type encoderCase struct {
	image string
	seed  uint64
}

func encoderCases(t testing.TB, r *testref.Refs) []encoderCase {
	var out []encoderCase
	cases, _ := r.JSON["encoder_cases"].([]any)
	for _, c := range cases {
		m, _ := c.(map[string]any)
		img, _ := m["image"].(string)
		seed, _ := m["generator_seed"].(float64)
		out = append(out, encoderCase{img, uint64(seed)})
	}
	require.NotEmpty(t, out, "refs_img2img.json has no encoder_cases")
	return out
}

// checkHost compares host values with a reference tensor under the bound
// checkClose uses (float32 sums in another order).
func checkHost(t *testing.T, got []float32, r *testref.Refs, name string) {
	t.Helper()
	want, _ := r.Floats(t, name)
	d := testref.Compare(got, want)
	bound := 1e-4 * (d.MaxRef + 1)
	if d.Mismatched || d.NonFinite > 0 || d.MaxAbs > bound {
		t.Errorf("%s: max |diff| %.3g (bound %.3g, max |ref| %.3g), %d non-finite, length mismatch %v", name, d.MaxAbs, bound, d.MaxRef, d.NonFinite, d.Mismatched)
	}
	t.Logf("%s: max |diff| %.3g (bound %.3g)", name, d.MaxAbs, bound)
}

// readPixels reads a test model's input PNG and checks it against the
// reference's uint8 and preprocessed tensors (exactly: both are integer
// and float32 arithmetic on the same bytes).
func readPixels(t *testing.T, r *testref.Refs, in string) ([]float32, engine.Shape) {
	t.Helper()
	f, err := os.Open(filepath.Join(r.Dir, "images_img2img", "input_"+in+".png"))
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	px := ImageToPixels(img)
	u8, ushape := r.Ints(t, "enc."+in+".uint8")
	h, w := ushape[0], ushape[1]
	require.Equal(t, []int{h, w}, []int{img.Bounds().Dy(), img.Bounds().Dx()})
	want, shape := r.Floats(t, "enc."+in+".pixels")
	require.Len(t, px, len(want))
	for i, v := range u8 {
		y, x, c := i/(3*w), i/3%w, i%3
		if got := px[(c*h+y)*w+x]; got != want[(c*h+y)*w+x] || float32(v)/255*2-1 != want[(c*h+y)*w+x] {
			t.Fatalf("%s pixel (%d,%d,%d): %v, want %v (uint8 %d)", in, y, x, c, got, want[(c*h+y)*w+x], v)
		}
	}
	return px, engine.Shape(shape)
}

// TestVAEEncode encodes every reference input and compares the
// distribution, the torch-compatible noise of latent_dist.sample, the
// sample and the scaled latents with diffusers'.
func TestVAEEncode(t *testing.T) {
	for _, model := range testref.Models {
		t.Run(model, func(t *testing.T) {
			r := testref.OpenSet(t, model, "refs_img2img")
			e := loadTestVAEEncoder(t, model)
			forEachBackend(t, func(t *testing.T, b engine.Backend, res Residency) {
				for _, c := range encoderCases(t, r) {
					px, shape := readPixels(t, r, c.image)
					rec := engine.NewRec(b)
					x := rec.Write("pixels", px, shape...)
					d := e.Encode(rec, res, x)
					rec.Free(x)
					require.NoError(t, rec.Err())
					p := "enc." + c.image + "."
					checkHost(t, d.Mean, r, p+"mean")
					checkHost(t, d.LogVar, r, p+"logvar")
					checkHost(t, d.Std, r, p+"std")

					sample, noise := d.Sample(rng.NewTorchCPU(c.seed))
					wantNoise, _ := r.Floats(t, p+"sample_noise")
					require.Equal(t, wantNoise, noise, "%s: noise of latent_dist.sample(generator seed %d)", c.image, c.seed)
					checkHost(t, sample, r, p+"sample")
					checkHost(t, e.ToLatents(sample), r, p+"latents_sample")
					checkHost(t, e.ToLatents(d.Mode()), r, p+"latents_mode")
				}
			})
		})
	}
}

// TestVAEEncodeBatch encodes in0 and a second image as one batch and
// checks each against its single encode: batch entries must not mix
// (GroupNorm and attention are per image).
func TestVAEEncodeBatch(t *testing.T) {
	const model = "tiny-sd15"
	r := testref.OpenSet(t, model, "refs_img2img")
	e := loadTestVAEEncoder(t, model)
	b := ref.New()
	defer b.Close()
	px, shape := readPixels(t, r, "in0")
	flip := make([]float32, len(px)) // a second, different image
	for i, v := range px {
		flip[len(px)-1-i] = v
	}
	rec := engine.NewRec(b)
	x := rec.Write("pixels", append(append([]float32{}, px...), flip...), 2, shape[1], shape[2], shape[3])
	d := e.Encode(rec, AllResident{B: b}, x)
	require.NoError(t, rec.Err())
	require.Equal(t, engine.Shape{2, 4, 8, 8}, d.Shape)
	n := len(d.Mean) / 2
	checkHost(t, d.Mean[:n], r, "enc.in0.mean")
	checkHost(t, d.LogVar[:n], r, "enc.in0.logvar")
	x1 := rec.Write("pixels1", flip, shape...)
	d1 := e.Encode(rec, AllResident{B: b}, x1)
	require.NoError(t, rec.Err())
	diff := testref.Compare(d.Mean[n:], d1.Mean)
	require.LessOrEqual(t, diff.MaxAbs, 1e-4*(diff.MaxRef+1), "batch entry 2 vs its single encode")
}

// TestVAEDownsamplerPadding checks the 4x4 stand-in for Downsample2D's
// asymmetric padding against a direct evaluation of the 3x3 conv on the
// input padded at the bottom and right, on even and odd sizes.
func TestVAEDownsamplerPadding(t *testing.T) {
	b := ref.New()
	defer b.Close()
	const ch = 2
	src := NewSyntheticSource("vae", 3)
	w := NewWeights(src)
	conv := loadDownsampler(w.Sub("down"), ch)
	require.NoError(t, w.Err())
	require.NoError(t, AllResident{B: b}.Need(w.Blocks()[0]))
	w3, bias := f16Entry(src.Entry("down.weight")), f16Entry(src.Entry("down.bias"))
	for _, hw := range [][2]int{{6, 8}, {7, 5}, {2, 3}} {
		h, wd := hw[0], hw[1]
		in := randLatents(uint64(h*10+wd), ch*h*wd)
		rec := engine.NewRec(b)
		x := rec.Write("x", in, 1, ch, h, wd)
		y := conv.Forward(rec, x)
		require.NoError(t, rec.Err())
		got, err := b.Read(y)
		require.NoError(t, err)
		oh, ow := (h+1-3)/2+1, (wd+1-3)/2+1
		require.Equal(t, engine.Shape{1, ch, oh, ow}, y.Shape)
		at := func(c, yy, xx int) float64 {
			if yy >= h || xx >= wd { // F.pad (0, 1, 0, 1): zeros below and right
				return 0
			}
			return float64(in[(c*h+yy)*wd+xx])
		}
		for o := range ch {
			for i := range oh {
				for j := range ow {
					s := float64(bias[o])
					for c := range ch {
						for ky := range 3 {
							for kx := range 3 {
								s += float64(w3[((o*ch+c)*3+ky)*3+kx]) * at(c, 2*i+ky, 2*j+kx)
							}
						}
					}
					require.InDelta(t, s, got[(o*oh+i)*ow+j], 1e-5, "%dx%d out (%d,%d,%d)", h, wd, o, i, j)
				}
			}
		}
		rec.Free(x, y)
	}
}

// TestLatentDist checks the clamp of the log-variance, NaN detection and
// the sample arithmetic.
func TestLatentDist(t *testing.T) {
	m := []float32{1, 2, -50, 40} // [1, 4, 1, 1]: means 1, 2; log-variances -50, 40
	_, err := NewLatentDist(m[:3], engine.Shape{1, 3, 1, 1})
	require.Error(t, err, "an odd channel count cannot split into mean and log-variance")
	d, err := NewLatentDist(m, engine.Shape{1, 4, 1, 1})
	require.NoError(t, err)
	require.Equal(t, engine.Shape{1, 2, 1, 1}, d.Shape)
	require.Equal(t, []float32{1, 2}, d.Mean)
	require.Equal(t, []float32{-30, 20}, d.LogVar) // clamped
	require.InDelta(t, math.Exp(-15), d.Std[0], 1e-12)
	require.InDelta(t, math.Exp(10), d.Std[1], 1e-2)
	s, err := d.SampleWith([]float32{1, -1})
	require.NoError(t, err)
	require.InDelta(t, 2-math.Exp(10), s[1], 1e-2)
	_, err = d.SampleWith([]float32{1})
	require.Error(t, err)
	m[0] = float32(math.NaN())
	_, err = NewLatentDist(m, engine.Shape{1, 4, 1, 1})
	var nf *NonFiniteOutputError
	require.True(t, errors.As(err, &nf), "NaN moments: %v", err)
}

// f16Entry decodes a synthetic (F16) entry.
func f16Entry(e *Entry) []float32 {
	raw := e.Bytes()
	out := make([]float32, len(raw)/2)
	for i := range out {
		out[i] = F16Value(uint16(raw[2*i]) | uint16(raw[2*i+1])<<8)
	}
	return out
}

// TestVAEEncoderLoadErrors checks that configs contradicting the
// checkpoint are reported with the tensor name, and that use_quant_conv
// false (the FLUX VAE) drops quant_conv.
func TestVAEEncoderLoadErrors(t *testing.T) {
	var cfg VAEConfig
	src := openComponent(t, "tiny-sd15", "vae", &cfg)
	bad := cfg
	bad.LayersPerBlock = 2
	_, err := LoadVAEEncoder(src.Source, &bad)
	var me *MissingTensorError
	require.True(t, errors.As(err, &me), "layers_per_block 2: %v", err)
	require.Equal(t, "encoder.down_blocks.0.resnets.1.norm1.weight", me.Key)
	bad = cfg
	bad.LatentChannels = 8
	_, err = LoadVAEEncoder(src.Source, &bad)
	var se *ShapeError
	require.True(t, errors.As(err, &se), "latent_channels 8: %v", err)
	t.Log(err)
	bad = cfg
	bad.DownBlockTypes = []string{"DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"}
	_, err = LoadVAEEncoder(src.Source, &bad)
	require.ErrorContains(t, err, "AttnDownEncoderBlock2D")
	no := false
	bad = cfg
	bad.UseQuantConv = &no
	e, err := LoadVAEEncoder(src.Source, &bad)
	require.NoError(t, err)
	require.Nil(t, e.QuantConv)
}

// TestPadKernelQuantized pads a block-quantized (GGUF Q8_0) 3x3 weight:
// it is decoded and stored as F32 with the zero first row and column.
func TestPadKernelQuantized(t *testing.T) {
	const o, c = 4, 8
	v := randLatents(11, o*c*9)
	q := make([]byte, 9*34) // 288 values: 9 Q8_0 blocks of 32 (2-byte scale + 32 bytes)
	require.NoError(t, gguf.Quantize(gguf.Q8_0, v, q))
	e := &Entry{Key: "w", Quant: gguf.Q8_0, Shape: []int{o, c, 3, 3}, File: "f", data: func() []byte { return q }}
	want, err := e.Float32s()
	require.NoError(t, err)
	p := &Param{Key: "w", Shape: engine.Shape{o, c, 3, 3}, src: e}
	padKernelTopLeft(p)
	require.Equal(t, engine.Shape{o, c, 4, 4}, p.Shape)
	got, err := p.src.Float32s()
	require.NoError(t, err)
	for k := range o * c {
		for y := range 4 {
			for x := range 4 {
				w := float32(0)
				if y > 0 && x > 0 {
					w = want[k*9+(y-1)*3+x-1]
				}
				require.Equal(t, w, got[k*16+y*4+x], "tap (%d, %d, %d)", k, y, x)
			}
		}
	}
}

// TestVAEEncoderFLUX loads the encoder of the Z-Image test model's VAE (the
// FLUX layout: 16 latent channels, no quant_conv, a shift_factor), encodes
// an image and checks ToLatents against the decoder's inverse mapping.
// There are no diffusers references for this encoder; the SD ones cover
// the arithmetic.
func TestVAEEncoderFLUX(t *testing.T) {
	e := loadTestVAEEncoder(t, "tiny-z-image-turbo")
	require.Nil(t, e.QuantConv)
	require.Equal(t, 16, e.Config.LatentChannels)
	b := ref.New()
	defer b.Close()
	rec := engine.NewRec(b)
	x := rec.Write("x", testPixels(8, 12), 1, 3, 64, 96)
	d := e.Encode(rec, AllResident{B: b}, x)
	require.NoError(t, rec.Err())
	require.Equal(t, engine.Shape{1, 16, 8, 12}, d.Shape)
	lat := e.ToLatents(d.Mode())
	sf, shift := float32(e.Config.ScalingFactor), float32(*e.Config.ShiftFactor)
	for i, m := range d.Mean {
		require.InDelta(t, m, lat[i]/sf+shift, 1e-5, "latent %d: Decode's z/scaling_factor + shift_factor must undo ToLatents", i)
	}
}
