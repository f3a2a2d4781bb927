package sched

import (
	"context"
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/sched/rng"
	"github.com/zimage/zimage/sched/sampler"
)

// TestInpaintingUNet runs a tiny 9-channel inpainting UNet of our own
// (tiny-sd-turbo's UNet config with in_channels 9, seeded random weights)
// and checks every step against diffusers' StableDiffusionInpaintPipeline
// formula, written out here on the model API: the UNet input is the scaled
// latents, the nearest-sampled mask and the masked picture's latents
// concatenated on the channel axis; nothing is blended; at strength < 1 the
// draws are picture sample, noise, masked-picture sample, at strength 1
// the picture is not encoded (noise, masked-picture sample) and the start
// is noise * init_noise_sigma. Text-to-image on the same UNet conditions
// on an all-ones mask and the encoded all-zero picture's mean (A1111's
// txt2img conditioning for inpainting models).
func TestInpaintingUNet(t *testing.T) {
	r := testref.OpenSet(t, "tiny-sd-turbo", "refs_img2img")
	m := loadModels(t, r.Dir)
	cfg := *m.UNet.Config
	cfg.InChannels = 9
	var err error
	m.UNet, err = model.LoadUNet(model.NewSyntheticSource("unet9", 9), &cfg)
	require.NoError(t, err)
	require.Equal(t, 9, m.UNet.ConvIn.Weight.Shape[1])
	var rn i2iRun
	for _, x := range i2iRuns(t, r, "inpaint") {
		if x.Steps == 4 {
			rn = x
		}
	}
	// The prompt's conditioning, as the pipeline gave it to the UNet.
	cond, shape := r.Floats(t, "inp."+rn.ID+".unet.encoder_hidden_states")
	for _, c := range []struct {
		name     string
		strength float64
		mask     bool
	}{{"strength 0.75", 0.75, true}, {"strength 1", 1, true}, {"txt2img", 0, false}} {
		t.Run(c.name, func(t *testing.T) {
			p := i2iParams(t, r.Dir, rn)
			if c.mask {
				p.Init.Strength = c.strength
			} else {
				p.Init = nil
			}
			b := ref.New()
			var got [][]float32
			p.OnStep = func(_ int, lat []float32) { got = append(got, append([]float32(nil), lat...)) }
			_, err := Run(context.Background(), b, m, p)
			require.NoError(t, err)
			want := inpaintFormula(t, b, m, p, cond, shape)
			require.Len(t, got, len(want))
			for k := range want {
				d := testref.Compare(got[k], want[k])
				require.LessOrEqual(t, d.MaxAbs, 1e-6*(d.MaxRef+1), "step %d: %+v", k, d)
			}
		})
	}
}

// inpaintFormula is diffusers' inpainting loop for a 9-channel UNet
// without CFG, on the model API; it returns the latents after each step.
func inpaintFormula(t *testing.T, b engine.Backend, m *Models, p Params, cond []float32, condShape []int) [][]float32 {
	const c, h, w = 4, 8, 12
	res := model.AllResident{B: b}
	gen := rng.NewTorchCPU(p.Seed)
	encode := func(px []float32, sample bool) []float32 {
		rec := engine.NewRec(b)
		x := rec.Write("pixels", px, 1, 3, 8*h, 8*w)
		d := m.Encoder.Encode(rec, res, x)
		rec.Free(x)
		require.NoError(t, rec.Err())
		z := d.Mean
		if sample {
			z, _ = d.Sample(gen)
		}
		return m.Encoder.ToLatents(z)
	}
	s, err := sampler.New("", m.Scheduler, sampler.Options{})
	require.NoError(t, err)
	require.NoError(t, s.SetTimesteps(p.Steps))
	start := 0
	var image, masked []float32
	mask := make([]float32, h*w)
	if p.Init != nil {
		start, err = sampler.Img2ImgStart(p.Steps, p.Init.Strength)
		require.NoError(t, err)
		if p.Init.Strength < 1 {
			image = encode(p.Init.Pixels, true)
		}
	}
	noise := gen.Randn(1, c, h, w)
	if p.Init != nil {
		for i := range mask {
			if p.Init.Mask[(8*(i/w))*8*w+8*(i%w)] >= 0.5 {
				mask[i] = 1
			}
		}
		px := make([]float32, len(p.Init.Pixels))
		for i, v := range p.Init.Pixels {
			if p.Init.Mask[i%(64*h*w)] < 0.5 {
				px[i] = v
			}
		}
		masked = encode(px, true)
	} else {
		for i := range mask {
			mask[i] = 1
		}
		masked = encode(make([]float32, 3*64*h*w), false)
	}
	require.NoError(t, s.Begin(start))
	lat := make([]float32, len(noise))
	if image != nil {
		require.NoError(t, s.AddNoise(lat, image, noise, start))
	} else {
		for i, v := range noise {
			lat[i] = v * float32(s.InitNoiseSigma())
		}
	}
	var out [][]float32
	ts := s.Timesteps()
	for step := start; step < len(ts); step++ {
		x := append([]float32(nil), lat...)
		s.ScaleModelInput(x, step)
		in := append(append(x, mask...), masked...) // [1, 9, h, w]
		rec := engine.NewRec(b)
		xt := rec.Write("x", in, 1, 9, h, w)
		ct := rec.Write("ctx", cond, condShape...)
		y := m.UNet.Forward(rec, res, xt, ts[step], ct, nil)
		require.NoError(t, rec.Err(), fmt.Sprintf("step %d", step))
		o, err := b.Read(y)
		require.NoError(t, err)
		rec.Free(xt, ct, y)
		require.NoError(t, s.Step(o, lat, step, nil))
		for _, v := range lat {
			require.False(t, math.IsNaN(float64(v)))
		}
		out = append(out, append([]float32(nil), lat...))
	}
	return out
}
