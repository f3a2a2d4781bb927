// Package sched is the turbo runner: text encoding, the denoising loop with
// classifier-free guidance, and the (tiled) VAE decode, driving the model
// networks on an engine.Backend under a device-memory budget.
package sched

import (
	"context"
	"fmt"
	"image"
	"math"
	"time"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/tokenizer"
	"github.com/zimage/zimage/sched/rng"
	"github.com/zimage/zimage/sched/sampler"
)

// TextEncoder pairs a CLIP text encoder with its tokenizer.
type TextEncoder struct {
	Tokenizer *tokenizer.Tokenizer
	Net       *model.CLIPText
}

// Models are the networks of one pipeline, loaded but not necessarily
// resident on the device.
type Models struct {
	// Encoders: one for SD 1.x/2.x, two for SDXL (CLIP-L, then OpenCLIP-G).
	Encoders []TextEncoder
	UNet     *model.UNet
	VAE      *model.VAEDecoder
	// Encoder is the VAE encoder, which img2img, inpainting and 9-channel
	// inpainting UNets need; nil refuses them.
	Encoder *model.VAEEncoder
	// TAESD, when set, is the tiny decoder Params.TAESD and Params.Preview
	// use.
	TAESD *model.TAESD
	// Scheduler is the model's scheduler_config.json.
	Scheduler *model.SchedulerConfig
	// ForceZerosForEmptyPrompt: SDXL uses zero embeddings, not the encoded
	// empty string, as the unconditional input when no negative prompt is given.
	ForceZerosForEmptyPrompt bool
	// SDXL selects the SDXL conditioning (penultimate states of both
	// encoders, pooled projection and time ids).
	SDXL bool
}

// Tiling says whether the VAE decodes in tiles.
type Tiling uint8

const (
	TilingAuto Tiling = iota // tile when the untiled decode would not fit the budget
	TilingOn
	TilingOff
)

// ParseTiling reads "auto", "on" or "off".
func ParseTiling(s string) (Tiling, error) {
	switch s {
	case "", "auto":
		return TilingAuto, nil
	case "on":
		return TilingOn, nil
	case "off":
		return TilingOff, nil
	}
	return 0, fmt.Errorf("sched: vae tiling %q: want auto, on or off", s)
}

// Params are the settings of one generation.
type Params struct {
	Prompt, NegativePrompt string
	Width, Height          int // pixels, multiples of 8
	Steps                  int
	Guidance               float64 // <= 1 disables classifier-free guidance
	Seed                   uint64
	Batch                  int // images per prompt
	Sampler                string
	Karras                 bool
	// Noise, when set, replaces the seeded generator: the initial latents and
	// each ancestral step's draw.
	Noise *Noise
	// LongPrompts encodes prompts beyond 75 tokens in several windows.
	LongPrompts bool

	Offload Offload
	Budget  int64 // device bytes, 0 = unlimited
	Tiling  Tiling
	Tile    int // tile size in latent pixels, 0 = automatic

	// Progress is called after every denoising step with the model calls
	// done and due (PNDM makes one more call than Steps).
	Progress func(step, steps int)
	// OnStage, when set, is called as each stage ("text", "denoise",
	// "decode") starts, so that a caller can show where a run is.
	OnStage func(name string)
	// OnStep, when set, sees the latents after each step (0-based, counted
	// from the first step run); it must not keep the slice.
	OnStep func(step int, latents []float32)

	// Init, when set, starts from a picture: img2img, or inpainting with a
	// mask (see Init).
	Init *Init
	// TAESD decodes the final images with Models.TAESD instead of the VAE.
	TAESD bool
	// Preview, when set, receives the latents after every step but the
	// last, decoded by Models.TAESD (one image per batch image), after
	// Progress for that step.
	Preview func(step int, images []*image.RGBA)
}

// Stage is one stage's time and device-memory peak.
type Stage struct {
	Name     string
	Duration time.Duration
	PeakDev  int64
}

// Output is what Run produces.
type Output struct {
	Images      []*image.RGBA
	Stages      []Stage
	PeakDev     int64 // over the whole run
	Uploaded    int64 // weight bytes uploaded (more than the model size when streaming)
	Truncated   []int // tokens dropped per encoder for the prompt
	Timesteps   []float64
	SamplerName string
}

// Run generates p.Batch images.
func Run(ctx context.Context, b engine.Backend, m *Models, p Params) (*Output, error) {
	if err := validate(m, p); err != nil {
		return nil, err
	}
	r := &runner{ctx: ctx, b: b, m: m, p: p, out: &Output{}}
	defer r.releaseAll()
	b.ResetPeak()
	runStart := b.MemStats()
	if err := r.plan(); err != nil {
		return nil, err
	}
	stages := []stage{{"text", r.encode}}
	if p.Init != nil || r.unetCond() {
		stages = append(stages, stage{"encode", r.encodeInit})
	}
	stages = append(stages, stage{"denoise", r.denoise}, stage{"decode", r.decode})
	if err := runStages(b, p.OnStage, stages, runStart.InUse, r.out); err != nil {
		return nil, err
	}
	return r.out, nil
}

// stage is one named part of a run.
type stage struct {
	name string
	fn   func() error
}

// runStages runs the stages in order, each finished on the device before
// the next, recording its time and device-memory peak in out (out.PeakDev
// also counts what was in use when the run began, inUse).
func runStages(b engine.Backend, onStage func(string), stages []stage, inUse int64, out *Output) error {
	for _, s := range stages {
		t0 := time.Now()
		b.ResetPeak()
		if onStage != nil {
			onStage(s.name)
		}
		if err := s.fn(); err != nil {
			return err
		}
		if err := b.Flush(); err != nil {
			return err
		}
		peak := b.MemStats().Peak
		out.Stages = append(out.Stages, Stage{Name: s.name, Duration: time.Since(t0), PeakDev: peak})
		out.PeakDev = max(out.PeakDev, peak, inUse)
	}
	return nil
}

func validate(m *Models, p Params) error {
	switch {
	case p.Width <= 0 || p.Height <= 0 || p.Width%8 != 0 || p.Height%8 != 0:
		return fmt.Errorf("sched: size %dx%d: width and height must be positive multiples of 8", p.Width, p.Height)
	case p.Steps < 1:
		return fmt.Errorf("sched: steps %d: want at least 1", p.Steps)
	case p.Batch < 1:
		return fmt.Errorf("sched: batch %d: want at least 1", p.Batch)
	case math.IsNaN(p.Guidance) || p.Guidance < 0:
		return fmt.Errorf("sched: guidance %v: want a number >= 0", p.Guidance)
	case len(m.Encoders) == 0 || m.UNet == nil || m.VAE == nil || m.Scheduler == nil:
		return fmt.Errorf("sched: the pipeline lacks a text encoder, UNet, VAE or scheduler")
	case m.SDXL && len(m.Encoders) != 2:
		return fmt.Errorf("sched: SDXL needs two text encoders, have %d", len(m.Encoders))
	}
	c := m.VAE.Config.LatentChannels
	if u := m.UNet.Config; u.OutChannels != c || (u.InChannels != c && u.InChannels != 2*c+1) {
		return fmt.Errorf("sched: the UNet takes %d channels and gives %d; with the VAE's %d latent channels it should take %d (or %d for inpainting) and give %d",
			u.InChannels, u.OutChannels, c, c, 2*c+1, c)
	}
	if m.UNet.Config.InChannels == 2*c+1 && m.Encoder == nil {
		return fmt.Errorf("sched: this inpainting UNet (%d input channels) needs the VAE encoder, and the pipeline has none", m.UNet.Config.InChannels)
	}
	if err := validateTAESD(m.TAESD, &p, c); err != nil {
		return err
	}
	return validateInit(&p, m.Encoder)
}

// validateTAESD checks that the tiny decoder a run asks for exists and
// fits the model's latents.
func validateTAESD(t *model.TAESD, p *Params, c int) error {
	if !p.TAESD && p.Preview == nil {
		return nil
	}
	if t == nil {
		return fmt.Errorf("sched: TAESD decoding or previews asked for, but the pipeline has no TAESD")
	}
	if t.Config.LatentChannels != c || t.Decoder == nil {
		return fmt.Errorf("sched: the TAESD decodes %d latent channels (decoder present: %v), this model has %d: use the TAESD made for this model family (taesd for SD 1.x/2.x, taesdxl for SDXL)",
			t.Config.LatentChannels, t.Decoder != nil, c)
	}
	return nil
}

type runner struct {
	ctx context.Context
	b   engine.Backend
	m   *Models
	p   Params
	out *Output

	cfg bool // classifier-free guidance on

	// Conditioning on the host, batch order [uncond..., cond...] with CFG.
	context []float32
	ctxLen  int
	ctxDim  int
	pooled  []float32
	pooledN int

	latents []float32 // [Batch, C, h, w]
	gen     *rng.Generator
	s       sampler.Scheduler
	start   *startState // from encodeInit; nil: txt2img

	// Residency per stage.
	textRes, unetRes, vaeRes, encRes, tinyRes *Streamer
}

// unetCond reports a 9-channel inpainting UNet.
func (r *runner) unetCond() bool {
	return r.m.UNet.Config.InChannels != r.m.VAE.Config.LatentChannels
}

// plan chooses, per network, how much of its weights may stay resident.
func (r *runner) plan() error {
	r.cfg = r.p.Guidance > 1
	budget := r.p.Budget
	var textBlocks []*model.Block
	for _, e := range r.m.Encoders {
		textBlocks = append(textBlocks, e.Net.Blocks()...)
	}
	limit := func(blocks []*model.Block, reserve int64) (int64, error) {
		return residentLimit(r.p.Offload, budget, blocks, reserve)
	}
	h, w := r.p.Height/8, r.p.Width/8
	batch := r.p.Batch
	if r.cfg {
		batch *= 2
	}
	tl, err := limit(textBlocks, textActivationBytes(r.m, batch))
	if err != nil {
		return err
	}
	ul, err := limit(r.m.UNet.Blocks(), unetActivationBytes(r.m.UNet, batch, h, w))
	if err != nil {
		return err
	}
	var vl int64
	if !r.p.TAESD {
		if vl, err = limit(r.m.VAE.Blocks(), r.vaeActivationBytes()); err != nil {
			return err
		}
	}
	r.textRes = NewStreamer(r.ctx, r.b, tl)
	r.unetRes = NewStreamer(r.ctx, r.b, ul)
	r.vaeRes = NewStreamer(r.ctx, r.b, vl)
	// The UNet and the VAE need every block in Blocks() order; the text
	// encoders may skip their last layer, which a prefetch would upload.
	r.unetRes.SetOrder(r.m.UNet.Blocks())
	r.vaeRes.SetOrder(r.m.VAE.Blocks())
	if r.encRes, err = planEncoder(r.ctx, r.b, r.m.Encoder, &r.p, r.p.Init != nil || r.unetCond()); err != nil {
		return err
	}
	// TAESD is a few MiB: resident while the run needs it.
	r.tinyRes = NewStreamer(r.ctx, r.b, 0)
	r.s, err = newRunScheduler(r.p.Sampler, r.m.Scheduler, sampler.Options{Karras: r.p.Karras}, r.p.Steps)
	return err
}

// planEncoder sizes the VAE encoder's residency when a run needs it (nil
// otherwise).
func planEncoder(ctx context.Context, b engine.Backend, enc *model.VAEEncoder, p *Params, need bool) (*Streamer, error) {
	if !need {
		return nil, nil
	}
	l, err := residentLimit(p.Offload, p.Budget, enc.Blocks(), encodeActivationBytes(b, enc, p))
	if err != nil {
		return nil, fmt.Errorf("%w (VAE encoder)", err)
	}
	s := NewStreamer(ctx, b, l)
	s.SetOrder(enc.Blocks())
	return s, nil
}

// newRunScheduler builds the scheduler and its timesteps before anything
// runs, so that a bad sampler or step count fails first.
func newRunScheduler(name string, cfg *model.SchedulerConfig, opt sampler.Options, steps int) (sampler.Scheduler, error) {
	s, err := sampler.New(name, cfg, opt)
	if err != nil {
		return nil, err
	}
	if err := s.SetTimesteps(steps); err != nil {
		return nil, err
	}
	return s, nil
}

// residentLimit is how many bytes of a network's weights may be resident at
// once under the budget (0: no limit, the network stays resident), given
// the activations it needs beside them; an error when even its largest
// block cannot fit.
func residentLimit(mode Offload, budget int64, blocks []*model.Block, reserve int64) (int64, error) {
	total := BlocksBytes(blocks)
	if budget == 0 || mode == OffloadNone {
		if budget > 0 && total+reserve > budget {
			return 0, fmt.Errorf("sched: offload none: weights need %s plus about %s of activations, over the %s budget (use --offload layer or auto)",
				model.FormatBytes(total), model.FormatBytes(reserve), model.FormatBytes(budget))
		}
		return 0, nil
	}
	if mode == OffloadAuto && total+reserve <= budget {
		return 0, nil
	}
	room := budget - reserve
	if big := LargestBlock(blocks); room < big {
		return 0, fmt.Errorf("sched: a %s budget cannot run this model: its largest block needs %s of weights plus about %s of activations",
			model.FormatBytes(budget), model.FormatBytes(big), model.FormatBytes(reserve))
	}
	return room, nil
}

// releaseAll ends a run: streamed weights leave the device, while weights
// that may stay resident are kept for the next run of the same models (a
// library user generating again pays no second upload; Pipeline.Close
// frees them).
func (r *runner) releaseAll() {
	keep := r.keepResident()
	for _, s := range []*Streamer{r.textRes, r.unetRes, r.vaeRes, r.encRes, r.tinyRes} {
		if s != nil {
			r.out.Uploaded += s.Uploaded
			if !keep {
				s.Release()
			}
		}
	}
}

// keepResident reports whether a stage's weights may stay on the device
// after the stage: only when nothing streams and no budget asks to make room.
func (r *runner) keepResident() bool {
	return r.p.Offload == OffloadNone || (r.p.Offload == OffloadAuto && r.p.Budget == 0)
}
