package sched

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/sched/rng"
	"github.com/zimage/zimage/sched/sampler"
)

// recordingScheduler wraps a scheduler and keeps what img2img asks of it:
// the AddNoise calls and the sample each Step produced.
type recordingScheduler struct {
	sampler.Scheduler
	begin   int
	adds    []addCall
	stepped [][]float32 // sample after Step, before any blend
	stepIdx []int
	firstIn []float32 // the sample entering the first Step
}

type addCall struct {
	x, noise []float32
	step     int
}

func (s *recordingScheduler) Begin(step int) error {
	s.begin = step
	return s.Scheduler.Begin(step)
}

func (s *recordingScheduler) AddNoise(dst, x, noise []float32, step int) error {
	s.adds = append(s.adds, addCall{append([]float32(nil), x...), append([]float32(nil), noise...), step})
	return s.Scheduler.AddNoise(dst, x, noise, step)
}

func (s *recordingScheduler) Step(out, sample []float32, step int, noise []float32) error {
	if s.firstIn == nil {
		s.firstIn = append([]float32(nil), sample...)
	}
	err := s.Scheduler.Step(out, sample, step, noise)
	s.stepped = append(s.stepped, append([]float32(nil), sample...))
	s.stepIdx = append(s.stepIdx, step)
	return err
}

// TestZImageImg2Img checks the Z-Image img2img and inpainting runs against
// the formulas of diffusers' ZImageImg2ImgPipeline (0.36) and
// ZImageInpaintPipeline (0.37), there being no reference tensors for them:
// the strength cut int(steps - steps*strength); the picture's latents
// (z - shift) * scale from a sample of the encoder's distribution (the
// generator's first draw), noise from the second; start latents
// sigma*noise + (1-sigma)*image at the first timestep kept; inpainting
// keeps the unmasked latents at the picture scale_noise'd to the next
// timestep after every step, and at the picture itself after the last.
func TestZImageImg2Img(t *testing.T) {
	m, _ := loadZImageModels(t)
	var vc model.VAEConfig
	var err error
	zdir := testref.Dir(t, tinyZImage)
	m.Encoder, err = model.LoadVAEEncoder(openZImageComponent(t, zdir, "vae", &vc).Source, &vc)
	require.NoError(t, err)
	sd := testref.Dir(t, "tiny-sd-turbo")
	pixels := model.ImageToPixels(readTestPNG(t, filepath.Join(sd, "images_img2img", "input_in1.png"))) // 64x96
	mask := readTestPNG(t, filepath.Join(sd, "images_img2img", "mask_m1.png"))
	const seed = 77
	b := ref.New()

	// The picture's latents and the noise, as the pipeline draws them.
	gen := rng.NewTorchCPU(seed)
	rec := engine.NewRec(b)
	x := rec.Write("pixels", pixels, 1, 3, 64, 96)
	d := m.Encoder.Encode(rec, model.AllResident{B: b}, x)
	require.NoError(t, rec.Err())
	rec.Free(x)
	z, _ := d.Sample(gen)
	image := m.Encoder.ToLatents(z)
	noise := gen.Randn(1, 16, 8, 12)

	for _, inpaint := range []bool{false, true} {
		s, err := sampler.New("", m.Scheduler, sampler.ZImageOptions(4*6))
		require.NoError(t, err)
		rs := &recordingScheduler{Scheduler: s}
		p := ZImageParams{Params: Params{Prompt: "a red barn", Width: 96, Height: 64, Steps: 4, Seed: seed, Batch: 1,
			Init: &Init{Pixels: pixels, Strength: 0.6}}, Scheduler: rs}
		var latentMask []float32
		if inpaint {
			p.Init.Mask = make([]float32, 64*96)
			for i := range p.Init.Mask {
				r, _, _, _ := mask.At(i%96, i/96).RGBA()
				p.Init.Mask[i] = float32(r>>8) / 255
			}
			latentMask = make([]float32, 8*12)
			for i := range latentMask {
				latentMask[i] = p.Init.Mask[(8*(i/12))*96+8*(i%12)]
			}
		}
		var after [][]float32
		p.OnStep = func(_ int, lat []float32) { after = append(after, append([]float32(nil), lat...)) }
		out, err := RunZImage(context.Background(), b, m, p)
		require.NoError(t, err)
		require.Len(t, out.Images, 1)

		// int(4 - 4*0.6) = 1: three of the four steps run.
		require.Equal(t, 1, rs.begin)
		require.Len(t, rs.stepped, 3)
		assert.Equal(t, []int{1, 2, 3}, rs.stepIdx)
		require.NotEmpty(t, rs.adds)
		assert.Equal(t, 1, rs.adds[0].step)
		assert.Equal(t, image, rs.adds[0].x, "the picture's latents: (sample - shift) * scale")
		assert.Equal(t, noise, rs.adds[0].noise, "noise: the generator's second draw")
		sig := s.Sigmas()
		start := make([]float32, len(image))
		for i := range start {
			start[i] = float32(sig[1])*noise[i] + (1-float32(sig[1]))*image[i]
		}
		assert.Equal(t, start, rs.firstIn, "start latents: scale_noise at the first timestep kept")
		if !inpaint {
			assert.Len(t, rs.adds, 1)
			continue
		}
		for k, lat := range after {
			step := 1 + k
			kept := image
			if step < 3 {
				kept = make([]float32, len(image))
				for i := range kept {
					kept[i] = float32(sig[step+1])*noise[i] + (1-float32(sig[step+1]))*image[i]
				}
			}
			for i, v := range lat {
				want := kept[i]
				if latentMask[i%96] >= 0.5 {
					want = rs.stepped[k][i]
				}
				if v != want {
					t.Fatalf("step %d latent %d: %v, want %v (mask %v)", k, i, v, want, latentMask[i%96])
				}
			}
		}
	}
}
