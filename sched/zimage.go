package sched

import (
	"context"
	"fmt"
	"image"
	"math"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/tokenizer"
	"github.com/zimage/zimage/sched/rng"
	"github.com/zimage/zimage/sched/sampler"
)

// The Z-Image runner: diffusers' ZImagePipeline (pipelines/z_image/
// pipeline_z_image.py). Qwen3 encodes the chat-templated prompt (and, with
// CFG, the negative prompt) into per-prompt features of their own length;
// the S3-DiT denoises with the flow-match Euler schedule, its output
// negated; the FLUX VAE decodes latents / 0.3611 + 0.1159.

// PromptTokenizer gives the token ids ZImagePipeline feeds its text
// encoder: the prompt wrapped in the model's chat template
// ("<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n"), untruncated
// and unpadded. The runner truncates to ZImageParams.MaxSequenceLength as
// the pipeline's tokenizer call does.
type PromptTokenizer interface {
	ChatIDs(prompt string) ([]int32, error)
}

// PromptTokenizerFunc adapts a function to PromptTokenizer.
type PromptTokenizerFunc func(prompt string) ([]int32, error)

// ChatIDs calls f.
func (f PromptTokenizerFunc) ChatIDs(prompt string) ([]int32, error) { return f(prompt) }

// QwenTokenizer adapts the Qwen2 tokenizer (its EncodePrompt applies the
// chat template) to PromptTokenizer.
func QwenTokenizer(q *tokenizer.Qwen2) PromptTokenizer {
	return PromptTokenizerFunc(func(prompt string) ([]int32, error) {
		ids, _ := q.EncodePrompt(prompt, 0)
		return ids, nil
	})
}

// ZImageModels are the networks of a Z-Image pipeline, loaded but not
// necessarily resident.
type ZImageModels struct {
	Tokenizer   PromptTokenizer
	TextEncoder *model.Qwen3
	Transformer *model.ZImageTransformer
	VAE         *model.VAEDecoder
	Scheduler   *model.SchedulerConfig // scheduler_config.json
	// Encoder is the FLUX VAE's encoder, for img2img and inpainting (nil
	// refuses them); TAESD an optional tiny decoder (a TAEF1) for
	// Params.TAESD and Params.Preview.
	Encoder *model.VAEEncoder
	TAESD   *model.TAESD
}

// ZImageParams are the settings of one Z-Image generation: Params (of
// which Karras and LongPrompts do not apply; the text encoder reads up to
// MaxSequenceLength tokens) plus the pipeline's own options.
type ZImageParams struct {
	Params
	// CFGTruncation, in (0, 1], turns guidance off for the steps whose
	// normalised time (1000 - timestep) / 1000 exceeds it (diffusers'
	// cfg_truncation); 0 never truncates (diffusers' default 1.0 does the
	// same).
	CFGTruncation float64
	// CFGNormalization > 0 caps the guided prediction's norm at that many
	// times the positive prediction's (diffusers' cfg_normalization; True
	// is 1); 0 is off.
	CFGNormalization float64
	// MaxSequenceLength caps the templated prompt's tokens; 0 means the
	// pipeline's 512.
	MaxSequenceLength int
	// Scheduler, when set, is the step schedule to use; otherwise
	// sampler.New builds one from Params.Sampler and the model's
	// scheduler config.
	Scheduler sampler.Scheduler
}

// zimageSizeMultiple: the pipeline requires sizes divisible by twice the
// VAE's factor (the latent is patchified 2x2).
const zimageSizeMultiple = 16

// RunZImage generates p.Batch images with a Z-Image pipeline.
func RunZImage(ctx context.Context, b engine.Backend, m *ZImageModels, p ZImageParams) (*Output, error) {
	if err := validateZImage(m, &p); err != nil {
		return nil, err
	}
	r := &zrunner{ctx: ctx, b: b, m: m, p: p, out: &Output{}}
	defer r.releaseAll()
	b.ResetPeak()
	runStart := b.MemStats()
	// Tokenize first: the activation estimates that size the budget's
	// shares depend on the caption lengths.
	if err := r.tokenize(); err != nil {
		return nil, err
	}
	if err := r.plan(); err != nil {
		return nil, err
	}
	stages := []stage{{"text", r.encode}}
	if p.Init != nil {
		stages = append(stages, stage{"encode", r.encodeInit})
	}
	stages = append(stages, stage{"denoise", r.denoise}, stage{"decode", r.decode})
	if err := runStages(b, p.OnStage, stages, runStart.InUse, r.out); err != nil {
		return nil, err
	}
	return r.out, nil
}

func validateZImage(m *ZImageModels, p *ZImageParams) error {
	if p.MaxSequenceLength == 0 {
		p.MaxSequenceLength = 512
	}
	switch {
	case m == nil || m.Tokenizer == nil || m.TextEncoder == nil || m.Transformer == nil || m.VAE == nil:
		return fmt.Errorf("sched: the Z-Image pipeline lacks a tokenizer, text encoder, transformer or VAE")
	case m.Scheduler == nil && p.Scheduler == nil:
		return fmt.Errorf("sched: the Z-Image pipeline has no scheduler config")
	case p.Width <= 0 || p.Height <= 0 || p.Width%zimageSizeMultiple != 0 || p.Height%zimageSizeMultiple != 0:
		return fmt.Errorf("sched: size %dx%d: Z-Image needs width and height that are positive multiples of %d", p.Width, p.Height, zimageSizeMultiple)
	case m.VAE.Scale() != 8:
		return fmt.Errorf("sched: the VAE scales by %d, Z-Image expects 8", m.VAE.Scale())
	case m.VAE.Config.LatentChannels != m.Transformer.Config.InChannels:
		return fmt.Errorf("sched: the VAE has %d latent channels, the transformer %d", m.VAE.Config.LatentChannels, m.Transformer.Config.InChannels)
	case m.TextEncoder.Config.HiddenSize != m.Transformer.Config.CapFeatDim:
		return fmt.Errorf("sched: the text encoder's hidden size %d is not the transformer's cap_feat_dim %d", m.TextEncoder.Config.HiddenSize, m.Transformer.Config.CapFeatDim)
	case p.Steps < 1:
		return fmt.Errorf("sched: steps %d: want at least 1", p.Steps)
	case p.Batch < 1:
		return fmt.Errorf("sched: batch %d: want at least 1", p.Batch)
	case math.IsNaN(p.Guidance) || p.Guidance < 0:
		return fmt.Errorf("sched: guidance %v: want a number >= 0", p.Guidance)
	case math.IsNaN(p.CFGTruncation) || p.CFGTruncation < 0:
		return fmt.Errorf("sched: cfg truncation %v: want a number >= 0", p.CFGTruncation)
	case math.IsNaN(p.CFGNormalization) || p.CFGNormalization < 0:
		return fmt.Errorf("sched: cfg normalization %v: want a number >= 0", p.CFGNormalization)
	case p.MaxSequenceLength < 1:
		return fmt.Errorf("sched: max sequence length %d: want at least 1", p.MaxSequenceLength)
	}
	if err := validateTAESD(m.TAESD, &p.Params, m.VAE.Config.LatentChannels); err != nil {
		return err
	}
	return validateInit(&p.Params, m.Encoder)
}

type zrunner struct {
	ctx context.Context
	b   engine.Backend
	m   *ZImageModels
	p   ZImageParams
	out *Output

	cfg bool // classifier-free guidance requested (guidance > 1)
	// Token ids of the prompt and (with CFG) the negative prompt.
	posIDs, negIDs []int32
	// Caption features on the host, [L, hidden] each: positive, negative.
	pos, neg       []float32
	posLen, negLen int
	latents        []float32 // [Batch, C, h, w]
	gen            *rng.Generator
	s              sampler.Scheduler
	start          *startState // from encodeInit; nil: text-to-image

	textRes, ditRes, vaeRes, encRes, tinyRes *Streamer
}

// tokenize gets the templated ids of the prompt and, with CFG, of the
// negative prompt (the empty string when none is given, as the pipeline
// does), truncated to MaxSequenceLength.
func (r *zrunner) tokenize() error {
	r.cfg = r.p.Guidance > 1
	get := func(prompt, what string) ([]int32, int, error) {
		ids, err := r.m.Tokenizer.ChatIDs(prompt)
		if err != nil {
			return nil, 0, fmt.Errorf("sched: tokenizing the %s: %w", what, err)
		}
		if len(ids) == 0 {
			return nil, 0, fmt.Errorf("sched: the tokenizer gave no ids for the %s", what)
		}
		if n := len(ids) - r.p.MaxSequenceLength; n > 0 {
			return ids[:r.p.MaxSequenceLength], n, nil
		}
		return ids, 0, nil
	}
	var err error
	var truncated int
	if r.posIDs, truncated, err = get(r.p.Prompt, "prompt"); err != nil {
		return err
	}
	r.out.Truncated = []int{truncated}
	if r.cfg {
		if r.negIDs, _, err = get(r.p.NegativePrompt, "negative prompt"); err != nil {
			return err
		}
	}
	return nil
}

// plan chooses, per network, how much of its weights may stay resident.
func (r *zrunner) plan() error {
	rows := r.p.Batch
	if r.cfg {
		rows *= 2
	}
	capLen := max(len(r.posIDs), len(r.negIDs))
	te, dit := r.m.TextEncoder, r.m.Transformer
	tl, err := residentLimit(r.p.Offload, r.p.Budget, te.EncodeBlocks(), qwen3ActivationBytes(te, capLen))
	if err != nil {
		return fmt.Errorf("%w (text encoder)", err)
	}
	dl, err := residentLimit(r.p.Offload, r.p.Budget, dit.Blocks(),
		zimageActivationBytes(dit, rows, r.p.Height/8, r.p.Width/8, capLen))
	if err != nil {
		return fmt.Errorf("%w (transformer)", err)
	}
	var vl int64
	if !r.p.TAESD {
		if vl, err = residentLimit(r.p.Offload, r.p.Budget, r.m.VAE.Blocks(), vaeActivationBytes(r.m.VAE, &r.p.Params)); err != nil {
			return fmt.Errorf("%w (VAE)", err)
		}
	}
	r.textRes = NewStreamer(r.ctx, r.b, tl)
	r.ditRes = NewStreamer(r.ctx, r.b, dl)
	r.vaeRes = NewStreamer(r.ctx, r.b, vl)
	r.textRes.SetOrder(te.EncodeBlocks())
	r.ditRes.SetOrder(dit.Blocks())
	r.vaeRes.SetOrder(r.m.VAE.Blocks())
	if r.encRes, err = planEncoder(r.ctx, r.b, r.m.Encoder, &r.p.Params, r.p.Init != nil); err != nil {
		return err
	}
	r.tinyRes = NewStreamer(r.ctx, r.b, 0)
	if r.s = r.p.Scheduler; r.s == nil {
		// ZImagePipeline sets sigma_min = 0 and passes the image token
		// count for dynamic shifting.
		opt := sampler.ZImageOptions((r.p.Height / 16) * (r.p.Width / 16))
		opt.Karras = r.p.Karras
		r.s, err = newRunScheduler(r.p.Sampler, r.m.Scheduler, opt, r.p.Steps)
		return err
	}
	return r.s.SetTimesteps(r.p.Steps)
}

// encodeInit is the "encode" stage: the FLUX VAE encodes the init picture
// (and the masked one), and the start latents are noised by scale_noise.
func (r *zrunner) encodeInit() error {
	r.gen = rng.NewTorchCPU(r.p.Seed)
	j := &initJob{ctx: r.ctx, b: r.b, enc: r.m.Encoder, res: r.encRes, p: &r.p.Params, s: r.s, gen: r.gen,
		c: r.m.Transformer.Config.InChannels, h: r.p.Height / 8, w: r.p.Width / 8, flow: true}
	st, err := j.run()
	if err != nil {
		return err
	}
	r.start = st
	if !r.keepResident() {
		r.encRes.Release()
	}
	return nil
}

func (r *zrunner) keepResident() bool {
	return r.p.Offload == OffloadNone || (r.p.Offload == OffloadAuto && r.p.Budget == 0)
}

func (r *zrunner) releaseAll() {
	keep := r.keepResident()
	for _, s := range []*Streamer{r.textRes, r.ditRes, r.vaeRes, r.encRes, r.tinyRes} {
		if s != nil {
			r.out.Uploaded += s.Uploaded
			if !keep {
				s.Release()
			}
		}
	}
}

// encode runs the text encoder on the prompt and, with CFG, the negative
// prompt, then releases its weights unless everything stays resident.
func (r *zrunner) encode() error {
	var err error
	if r.pos, r.posLen, err = r.encodeOne(r.posIDs, "prompt"); err != nil {
		return err
	}
	if r.cfg {
		if r.neg, r.negLen, err = r.encodeOne(r.negIDs, "negative prompt"); err != nil {
			return err
		}
	}
	if !r.keepResident() {
		r.textRes.Release()
	}
	return nil
}

func (r *zrunner) encodeOne(ids []int32, what string) (feat []float32, n int, err error) {
	rec := engine.NewRec(r.b)
	x := r.m.TextEncoder.Encode(rec, r.textRes, ids)
	if err := rec.Err(); err == nil {
		feat, err = r.b.Read(x)
		rec.Fail(err)
	}
	rec.Free(x)
	if err := rec.Err(); err != nil {
		return nil, 0, fmt.Errorf("sched: text encoder (%s): %w", what, err)
	}
	if err := finite("text features of the "+what, feat); err != nil {
		return nil, 0, err
	}
	return feat, len(ids), nil
}

// denoise runs the flow-match loop on the host latents, one transformer
// call per step.
func (r *zrunner) denoise() error {
	s := r.s
	h, w := r.p.Height/8, r.p.Width/8
	c := r.m.Transformer.Config.InChannels
	per := c * h * w
	n := r.p.Batch * per
	st := r.start
	if st == nil {
		// prepare_latents applies no init_noise_sigma (1 for flow
		// matching anyway).
		var err error
		if st, r.gen, err = r.p.txt2imgStart(c, h, w, 1); err != nil {
			return err
		}
	}
	r.latents = st.latents
	all := s.Timesteps()
	r.out.Timesteps = all[st.begin:]
	r.out.SamplerName = s.Name()

	hidden := r.m.TextEncoder.Config.HiddenSize
	rec := engine.NewRec(r.b)
	pos := rec.Write("prompt_embeds", r.pos, r.posLen, hidden)
	var neg *engine.Tensor
	if r.cfg {
		neg = rec.Write("negative_prompt_embeds", r.neg, r.negLen, hidden)
	}
	defer rec.Free(pos, neg)
	if err := rec.Err(); err != nil {
		return err
	}

	g := float32(r.p.Guidance)
	for step := st.begin; step < len(all); step++ {
		ts, k := all[step], step-st.begin // k counts the steps run
		if err := r.ctx.Err(); err != nil {
			return err
		}
		// timestep = (1000 - t) / 1000 in float32, as the pipeline computes it.
		tn := float32(1000-float32(ts)) / 1000
		apply := r.cfg && g > 0 && !(r.p.CFGTruncation > 0 && r.p.CFGTruncation <= 1 && float64(tn) > r.p.CFGTruncation)
		// The pipeline's batch order: every positive item, then every negative.
		items := make([]model.ZImageItem, 0, 2*r.p.Batch)
		for i := range r.p.Batch {
			items = append(items, model.ZImageItem{Latents: r.latents[i*per : (i+1)*per], H: h, W: w, T: float64(tn), Caption: pos})
		}
		if apply {
			for i := range r.p.Batch {
				items = append(items, model.ZImageItem{Latents: r.latents[i*per : (i+1)*per], H: h, W: w, T: float64(tn), Caption: neg})
			}
		}
		outs := r.m.Transformer.Forward(rec, r.ditRes, items)
		if err := rec.Err(); err != nil {
			return fmt.Errorf("sched: step %d (t=%g): %w", k+1, ts, err)
		}
		pred := make([]float32, 0, n)
		for i := range r.p.Batch {
			p := outs[i]
			if apply {
				p = guide(p, outs[r.p.Batch+i], g, float32(r.p.CFGNormalization))
			}
			pred = append(pred, p...)
		}
		for i, v := range pred {
			pred[i] = -v // the transformer predicts noise minus image; the scheduler wants the velocity
		}
		var noise []float32
		if s.NeedsNoise(step) {
			var err error
			if noise, err = r.stepNoise(k, n, c, h, w); err != nil {
				return err
			}
		}
		if err := s.Step(pred, r.latents, step, noise); err != nil {
			return err
		}
		if st.image != nil {
			// ZImageInpaintPipeline (diffusers 0.37): the kept area is the
			// picture scale_noise'd to the next timestep.
			if err := st.blend(s, r.latents, step, len(all)-1); err != nil {
				return err
			}
		}
		if err := finite("latents", r.latents); err != nil {
			return fmt.Errorf("sched: step %d (t=%g): %w", k+1, ts, err)
		}
		if r.p.OnStep != nil {
			r.p.OnStep(k, r.latents)
		}
		if err := progress(r.ctx, r.b, r.m.TAESD, r.tinyRes, &r.p.Params, k+1, len(all)-st.begin, r.latents, c); err != nil {
			return err
		}
	}
	if !r.keepResident() {
		r.ditRes.Release()
	}
	return nil
}

// guide returns pos + g*(pos - neg) in float32 as the pipeline computes it,
// its norm capped at norm times pos's when norm > 0 (cfg_normalization).
func guide(pos, neg []float32, g, norm float32) []float32 {
	out := make([]float32, len(pos))
	for i := range out {
		out[i] = pos[i] + g*(pos[i]-neg[i])
	}
	if norm > 0 {
		np, no := l2(pos), l2(out)
		if limit := np * norm; no > limit {
			f := limit / no
			for i := range out {
				out[i] *= f
			}
		}
	}
	return out
}

// l2 is torch.linalg.vector_norm of a float32 tensor (accumulated in
// float64 here; the result rounded to float32).
func l2(v []float32) float32 {
	var s float64
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	return float32(math.Sqrt(s))
}

func (r *zrunner) stepNoise(step, n, c, h, w int) ([]float32, error) {
	if r.p.Noise != nil {
		return r.p.Noise.step(step, n)
	}
	return r.gen.Randn(r.p.Batch, c, h, w), nil
}

// decode turns the final latents into 8-bit images through the shared
// decode path (tiling, budget); the VAE applies latents / scaling + shift.
func (r *zrunner) decode() error {
	c := r.m.Transformer.Config.InChannels
	var imgs []*image.RGBA
	var err error
	if r.p.TAESD {
		imgs, err = taesdImages(r.ctx, r.b, r.m.TAESD, r.tinyRes, &r.p.Params, r.latents, c)
	} else {
		imgs, err = decodeImages(r.ctx, r.b, r.m.VAE, r.vaeRes, &r.p.Params, r.latents, c)
	}
	r.out.Images = append(r.out.Images, imgs...)
	if err != nil {
		return err
	}
	if !r.keepResident() {
		r.vaeRes.Release()
	}
	return nil
}

// qwen3ActivationBytes: one layer's working set for l tokens (hidden states,
// norms, q/k/v/o, the two MLP halves) plus the rotary tables.
func qwen3ActivationBytes(m *model.Qwen3, l int) int64 {
	c := m.Config
	per := 6*c.HiddenSize + 3*c.NumAttentionHeads*c.HeadDim + 3*c.NumKeyValueHeads*c.HeadDim + 3*c.IntermediateSize + c.HeadDim
	return 4 * int64(l) * int64(per)
}

// zimageActivationBytes: one block's working set on the longest unified
// sequence of rows items (an h x w latent and a capLen caption each):
// the sequence, its norm, q/k/v and the attention output, the two SwiGLU
// halves, the image and caption sequences held beside it, rotary tables.
func zimageActivationBytes(m *model.ZImageTransformer, rows, h, w, capLen int) int64 {
	c := m.Config
	lx := (h/2*(w/2) + 31) / 32 * 32
	lc := (capLen + 31) / 32 * 32
	lu := lx + lc
	ffn := int(float64(c.Dim) / 3 * 8)
	per := 8*c.Dim + 2*ffn + c.Dim/c.NHeads
	return 4 * int64(rows) * (int64(lu)*int64(per) + int64(lx+lc)*int64(c.Dim))
}
