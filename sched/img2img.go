package sched

import (
	"context"
	"fmt"
	"math"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/sched/rng"
	"github.com/zimage/zimage/sched/sampler"
)

// Image-to-image and inpainting, as diffusers 0.30's
// StableDiffusion[XL]Img2ImgPipeline and StableDiffusion[XL]InpaintPipeline
// run them (and 0.36's ZImageImg2ImgPipeline, 0.37's ZImageInpaintPipeline
// for Z-Image):
//
//   - strength picks the first timestep (sampler.Img2ImgStart; flow
//     matching: FlowImg2ImgStart), and the scheduler begins there;
//   - the picture is encoded by the VAE and sampled from its latent
//     distribution with the run's generator (draw 1), then noise is drawn
//     (draw 2) and added at the first timestep (add_noise / scale_noise),
//     even at strength 1. Inpainting at strength 1 with a Stable Diffusion
//     model starts from pure noise instead (noise * init_noise_sigma);
//   - inpainting binarizes the mask at 0.5 (white repaints), samples it at
//     latent resolution by nearest neighbour (latent pixel (i, j) = mask
//     pixel (8i, 8j)), and encodes the masked picture (the kept pixels,
//     zeros where it repaints), which takes draw 3 whether or not the
//     denoiser uses it. A regular (4-channel) UNet gets, after every step,
//     the kept area replaced by the encoded picture noised to the next
//     timestep with the same noise (none after the last); a 9-channel
//     inpainting UNet instead sees the mask and the masked picture's
//     latents concatenated to its input, and nothing is blended;
//   - later draws (ancestral steps) follow.
//
// All images of a batch share the encoded picture (one draw), as diffusers
// repeats it; the noise is drawn for the whole batch.

// Fill is what the area to repaint starts from before it is noised
// (AUTOMATIC1111's inpainting_fill, the latent-space kinds).
type Fill uint8

const (
	// FillOriginal keeps the encoded picture (diffusers, A1111 "original").
	FillOriginal Fill = iota
	// FillLatentNoise replaces it with N(0, 1) latents from a generator
	// seeded with the run's seed (A1111 "latent noise").
	FillLatentNoise
	// FillLatentNothing replaces it with zeros (A1111 "latent nothing").
	FillLatentNothing
)

// Init is the starting picture of an img2img or inpainting run.
type Init struct {
	// Pixels is the picture at the run's size, planar [3, Height, Width]
	// in [-1, 1] (model.ImageToPixels).
	Pixels []float32
	// Strength in (0, 1] is how much of the schedule runs, so how far the
	// result may move from the picture.
	Strength float64
	// Mask, when set, makes the run inpainting: [Height, Width] values in
	// [0, 1], those >= 0.5 repainted.
	Mask []float32
	// Fill is what the repainted area starts from (inpainting only).
	Fill Fill
}

// startState is how a denoising loop starts: the latents entering its
// first step and, for inpainting, what every step needs.
type startState struct {
	latents []float32 // [B, C, h, w]
	begin   int       // index of the first timestep run
	// Inpainting with a regular denoiser: the encoded picture, the noise
	// that re-noises it, and the latent mask (1 repaints) to blend with.
	image, noise, mask []float32
	// cond is a 9-channel UNet's extra input per batch image: the latent
	// mask then the masked picture's latents, [B, 1+C, h, w].
	cond []float32
}

// txt2imgStart is the start of a text-to-image run: the given noise, or
// the first draw of a torch-compatible CPU generator seeded with the
// run's seed (returned: later draws continue it), times sigma (the
// scheduler's init_noise_sigma).
func (p *Params) txt2imgStart(c, h, w int, sigma float32) (*startState, *rng.Generator, error) {
	st := &startState{}
	var gen *rng.Generator
	if p.Noise != nil {
		if err := p.Noise.check(p.Batch, c, h, w); err != nil {
			return nil, nil, err
		}
		st.latents = append([]float32(nil), p.Noise.Latents...)
	} else {
		gen = rng.NewTorchCPU(p.Seed)
		st.latents = gen.Randn(p.Batch, c, h, w)
	}
	for i := range st.latents {
		st.latents[i] *= sigma
	}
	return st, gen, nil
}

// initJob prepares a start; the SD and Z-Image runners share it.
type initJob struct {
	ctx     context.Context
	b       engine.Backend
	enc     *model.VAEEncoder
	res     *Streamer
	p       *Params
	s       sampler.Scheduler
	gen     *rng.Generator
	c, h, w int
	// flow: a flow-matching pipeline (the strength cut of
	// FlowImg2ImgStart, and always scale_noise, also at strength 1).
	flow bool
	// unetCond: the denoiser takes the mask and masked picture as input.
	unetCond bool
}

// validateInit checks an Init against the run's size and settings.
func validateInit(p *Params, enc *model.VAEEncoder) error {
	in := p.Init
	if in == nil {
		return nil
	}
	switch {
	case enc == nil:
		return fmt.Errorf("sched: img2img needs the VAE encoder, and this pipeline has none")
	case len(in.Pixels) != 3*p.Width*p.Height:
		return fmt.Errorf("sched: init image has %d values, want 3x%dx%d (planar RGB at the run's size)", len(in.Pixels), p.Height, p.Width)
	case in.Mask != nil && len(in.Mask) != p.Width*p.Height:
		return fmt.Errorf("sched: mask has %d values, want %dx%d (the run's size)", len(in.Mask), p.Height, p.Width)
	case p.Noise != nil:
		return fmt.Errorf("sched: explicit noise (--noise) does not combine with an init image")
	case in.Fill > FillLatentNothing:
		return fmt.Errorf("sched: unknown inpainting fill %d", in.Fill)
	}
	if math.IsNaN(in.Strength) || in.Strength <= 0 || in.Strength > 1 {
		return fmt.Errorf("sched: strength %v: want more than 0 and at most 1", in.Strength)
	}
	for i, v := range in.Pixels {
		if math.IsNaN(float64(v)) || v < -1 || v > 1 {
			return fmt.Errorf("sched: init image value %d is %v, want [-1, 1]", i, v)
		}
	}
	return nil
}

// beginStep is the first timestep an Init runs from.
func beginStep(p *Params, steps int, flow bool) (int, error) {
	if p.Init == nil {
		return 0, nil
	}
	if flow {
		return sampler.FlowImg2ImgStart(steps, p.Init.Strength)
	}
	return sampler.Img2ImgStart(steps, p.Init.Strength)
}

// run encodes what the run starts from and draws its noise, in diffusers'
// order, and computes the latents entering the first step.
func (j *initJob) run() (*startState, error) {
	p, in := j.p, j.p.Init
	per := j.c * j.h * j.w
	st := &startState{}
	var err error
	if st.begin, err = beginStep(p, p.Steps, j.flow); err != nil {
		return nil, err
	}
	if err := j.s.Begin(st.begin); err != nil {
		return nil, err
	}
	var bin []float32 // the full-size mask, binarized
	if in != nil && in.Mask != nil {
		bin = make([]float32, len(in.Mask))
		for i, v := range in.Mask {
			if v >= 0.5 {
				bin[i] = 1
			}
		}
		st.mask = make([]float32, j.h*j.w)
		for y := range j.h {
			for x := range j.w {
				st.mask[y*j.w+x] = bin[(8*y)*p.Width+8*x]
			}
		}
	}
	// Draw 1: the picture's latent sample (skipped by a 9-channel
	// inpainting UNet at strength 1, which starts from noise alone).
	strengthMax := in != nil && in.Strength == 1
	var image []float32
	if in != nil && (j.flow || !j.unetCond || !strengthMax) {
		one, err := j.encode(in.Pixels, true)
		if err != nil {
			return nil, fmt.Errorf("sched: encoding the init image: %w", err)
		}
		image = repeat(one, p.Batch)
	}
	// Draw 2: the noise (txt2img's initial latents).
	st.noise = j.gen.Randn(p.Batch, j.c, j.h, j.w)
	// Draw 3: the masked picture's sample, which only a 9-channel UNet
	// uses; the draw is made either way.
	var masked []float32
	switch {
	case bin != nil && j.unetCond:
		px := make([]float32, len(in.Pixels))
		plane := p.Width * p.Height
		for i, v := range in.Pixels {
			if bin[i%plane] < 0.5 {
				px[i] = v
			}
		}
		one, err := j.encode(px, true)
		if err != nil {
			return nil, fmt.Errorf("sched: encoding the masked image: %w", err)
		}
		masked = repeat(one, p.Batch)
	case bin != nil:
		j.gen.Normal(make([]float32, per))
	case j.unetCond:
		// No mask (txt2img, or img2img of the whole picture on an
		// inpainting model): everything is repainted, and the "masked"
		// picture is all zeros, encoded to its distribution's mean so
		// that no draw moves (AUTOMATIC1111 conditions these the same way).
		one, err := j.encode(make([]float32, 3*p.Width*p.Height), false)
		if err != nil {
			return nil, fmt.Errorf("sched: encoding the empty masked image: %w", err)
		}
		masked = repeat(one, p.Batch)
		st.mask = make([]float32, j.h*j.w)
		for i := range st.mask {
			st.mask[i] = 1
		}
	}
	if masked != nil {
		st.cond = make([]float32, 0, p.Batch*(1+j.c)*j.h*j.w)
		for i := range p.Batch {
			st.cond = append(st.cond, st.mask...)
			st.cond = append(st.cond, masked[i*per:(i+1)*per]...)
		}
	}
	if bin != nil && in.Fill != FillOriginal {
		fillMasked(image, st.mask, in.Fill, p.Seed, p.Batch, j.c, j.h, j.w)
	}
	st.latents = make([]float32, len(st.noise))
	switch {
	case in == nil || (!j.flow && bin != nil && strengthMax) || (j.unetCond && strengthMax && !j.flow):
		// txt2img, and SD inpainting at full strength: pure noise.
		sigma := float32(j.s.InitNoiseSigma())
		for i, v := range st.noise {
			st.latents[i] = v * sigma
		}
	default:
		if err := j.s.AddNoise(st.latents, image, st.noise, st.begin); err != nil {
			return nil, err
		}
	}
	if bin != nil && !j.unetCond {
		st.image = image
	} else {
		st.mask = nil // only the blend reads it (the 9-channel UNet has it in cond)
	}
	return st, finite("start latents", st.latents)
}

// encode runs the VAE encoder on one picture [3, H, W] and returns the
// diffusion-space latents [C, h, w]: a sample drawn from the run's
// generator, or the distribution's mean.
func (j *initJob) encode(px []float32, sample bool) ([]float32, error) {
	if err := j.ctx.Err(); err != nil {
		return nil, err
	}
	d, err := encodePixels(j.b, j.enc, j.res, j.p, px)
	if err != nil {
		return nil, err
	}
	if got := (engine.Shape{1, j.c, j.h, j.w}); !d.Shape.Equal(got) {
		return nil, fmt.Errorf("sched: the VAE encoder gave latents %v, want %v", d.Shape, got)
	}
	z := d.Mean
	if sample {
		z, _ = d.Sample(j.gen)
	}
	return j.enc.ToLatents(z), nil
}

// encodePixels encodes one picture [3, H, W] whole, or in tiles when the
// whole encode would not fit the budget or the device's binding limit (or
// tiling is on).
func encodePixels(b engine.Backend, enc *model.VAEEncoder, res *Streamer, p *Params, px []float32) (*model.LatentDist, error) {
	rec := engine.NewRec(b)
	x := rec.Write("pixels", px, 1, 3, p.Height, p.Width)
	var d *model.LatentDist
	if tile := encodeTileSize(b, enc, p); tile > 0 {
		d = enc.EncodeTiled(rec, res, x, model.TileOptions{Size: tile, Overlap: model.EncodeTileOverlap(tile)})
	} else {
		d = enc.Encode(rec, res, x)
	}
	rec.Free(x)
	if err := rec.Err(); err != nil {
		return nil, err
	}
	return d, nil
}

// encodeTileSize is the encoder's tile edge in latent pixels, or 0 to
// encode whole. Encoder tiles always run the three statistics passes: the
// encoder is a sixth of the decoder's work, and its one-pass tiles fall
// short of 40 dB.
func encodeTileSize(b engine.Backend, enc *model.VAEEncoder, p *Params) int {
	h, w := p.Height/8, p.Width/8
	cfg := &enc.Config
	var limit int64
	if l, ok := b.(engine.TensorLimiter); ok {
		limit = l.MaxTensorBytes()
	}
	room := int64(1) << 62
	if p.Budget > 0 {
		room = p.Budget - BlocksBytes(enc.Blocks())
	}
	fits := func(th, tw int) bool {
		return model.VAEEncodeBytes(cfg, 1, 8*th, 8*tw) <= room &&
			(limit <= 0 || model.VAEEncodeMaxTensorBytes(cfg, 1, 8*th, 8*tw) <= limit)
	}
	switch {
	case p.Tiling == TilingOff:
		return 0
	case p.Tiling == TilingAuto && fits(h, w):
		return 0
	}
	tile := max(h, w)
	if p.Tile > 0 {
		tile = p.Tile
	} else {
		for tile > model.MinEncodeTile && !fits(tile, tile) {
			tile -= 2
		}
	}
	tile = max(tile, model.MinEncodeTile)
	if tile >= max(h, w) {
		return 0
	}
	return tile
}

// encodeActivationBytes is the encoder's working set at the run's size
// (a tile's when encoding in tiles).
func encodeActivationBytes(b engine.Backend, enc *model.VAEEncoder, p *Params) int64 {
	h, w := p.Height, p.Width
	if t := encodeTileSize(b, enc, p); t > 0 {
		h, w = 8*t, 8*t
	}
	return model.VAEEncodeBytes(&enc.Config, 1, h, w)
}

// repeat concatenates n copies of v.
func repeat(v []float32, n int) []float32 {
	out := make([]float32, 0, n*len(v))
	for range n {
		out = append(out, v...)
	}
	return out
}

// fillMasked replaces the area to repaint of image latents [B, C, h, w]
// as fill says.
func fillMasked(image, mask []float32, fill Fill, seed uint64, batch, c, h, w int) {
	var noise []float32
	if fill == FillLatentNoise {
		noise = rng.NewTorchCPU(seed).Randn(batch, c, h, w)
	}
	hw := h * w
	for i := range image {
		if mask[i%hw] < 0.5 {
			continue
		}
		if noise != nil {
			image[i] = noise[i]
		} else {
			image[i] = 0
		}
	}
}

// blend is the inpainting step of a regular denoiser: the kept area
// becomes the encoded picture noised to the next timestep (the picture
// itself after the last step), latents = (1 - mask) * kept + mask *
// latents, in float32 as the pipelines compute it.
func (st *startState) blend(s sampler.Scheduler, latents []float32, step, last int) error {
	kept := st.image
	if step < last {
		kept = make([]float32, len(st.image))
		if err := s.AddNoise(kept, st.image, st.noise, step+1); err != nil {
			return err
		}
	}
	hw := len(st.mask)
	for i, v := range latents {
		m := st.mask[i%hw]
		latents[i] = float32((1-m)*kept[i]) + float32(m*v)
	}
	return nil
}

// unetInput builds one UNet call's input from the scaled latents x [rows,
// C, h, w]: x itself, or with cond each row's latents, mask and masked
// picture latents ([rows, 2C+1, h, w]; row r takes batch image r mod B).
func (st *startState) unetInput(x []float32, rows, batch, c, hw int) ([]float32, int) {
	if st.cond == nil {
		return x, c
	}
	per := (1 + c) * hw
	out := make([]float32, 0, rows*(2*c+1)*hw)
	for r := range rows {
		out = append(out, x[r*c*hw:(r+1)*c*hw]...)
		i := r % batch
		out = append(out, st.cond[i*per:(i+1)*per]...)
	}
	return out, 2*c + 1
}
