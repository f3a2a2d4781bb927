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
)

// encode runs the text encoders and keeps the conditioning on the host.
func (r *runner) encode() error {
	prompts := []string{r.p.Prompt}
	if r.cfg {
		prompts = []string{r.p.NegativePrompt, r.p.Prompt}
	}
	zeroUncond := r.cfg && r.m.SDXL && r.m.ForceZerosForEmptyPrompt && r.p.NegativePrompt == ""
	var states [][]float32 // per encoder: [len(prompts), tokens, dim]
	var dims []int
	tokens := 0
	for i, e := range r.m.Encoders {
		rows, perPrompt, truncated := r.tokenize(e.Tokenizer, prompts)
		r.out.Truncated = append(r.out.Truncated, truncated)
		rec := engine.NewRec(r.b)
		want := model.CLIPWant{LastHidden: !r.m.SDXL, Penultimate: r.m.SDXL, TextEmbeds: r.m.SDXL && i == 1}
		out := e.Net.Encode(rec, r.textRes, rows, want)
		if err := rec.Err(); err != nil {
			return fmt.Errorf("sched: text encoder %d: %w", i+1, err)
		}
		hidden := out.LastHidden
		if r.m.SDXL {
			hidden = out.Penultimate
		}
		h, err := r.b.Read(hidden)
		if err != nil {
			out.Free(rec)
			return err
		}
		if r.m.SDXL && i == 1 {
			pooled, err := r.b.Read(out.TextEmbeds)
			if err != nil {
				out.Free(rec)
				return err
			}
			// Pooled embeddings come from each prompt's first window.
			r.pooledN = out.TextEmbeds.Shape[1]
			r.pooled = nil
			for p := range prompts {
				r.pooled = append(r.pooled, pooled[p*perPrompt*r.pooledN:(p*perPrompt+1)*r.pooledN]...)
			}
		}
		out.Free(rec)
		if !r.keepResident() {
			r.textRes.Release()
		}
		dim := hidden.Shape[2]
		tokens = perPrompt * hidden.Shape[1]
		states = append(states, h)
		dims = append(dims, dim)
	}
	// Concatenate the encoders' states on the channel axis (SDXL: 768 + 1280).
	r.ctxLen = tokens
	r.ctxDim = 0
	for _, d := range dims {
		r.ctxDim += d
	}
	perPrompt := make([][]float32, len(prompts))
	for p := range prompts {
		row := make([]float32, 0, tokens*r.ctxDim)
		for t := 0; t < tokens; t++ {
			for e, s := range states {
				off := (p*tokens + t) * dims[e]
				row = append(row, s[off:off+dims[e]]...)
			}
		}
		perPrompt[p] = row
	}
	if zeroUncond {
		clear(perPrompt[0])
		clear(r.pooled[:r.pooledN])
	}
	// Repeat each prompt's conditioning Batch times: [uncond x B, cond x B].
	r.context = nil
	var pooled []float32
	for p := range prompts {
		for range r.p.Batch {
			r.context = append(r.context, perPrompt[p]...)
			if r.m.SDXL {
				pooled = append(pooled, r.pooled[p*r.pooledN:(p+1)*r.pooledN]...)
			}
		}
	}
	r.pooled = pooled
	return nil
}

// tokenize encodes prompts into 77-token rows: one row per prompt, or with
// LongPrompts as many windows as the longest prompt needs (shorter prompts
// padded with empty windows, as A1111 does). It returns the rows, windows per
// prompt and the tokens dropped from the positive prompt.
func (r *runner) tokenize(tok *tokenizer.Tokenizer, prompts []string) ([][]int32, int, int) {
	var encs [][]tokenizer.Encoding
	windows := 1
	for _, p := range prompts {
		var e []tokenizer.Encoding
		if r.p.LongPrompts {
			e = tok.EncodeChunks(p)
		} else {
			e = []tokenizer.Encoding{tok.Encode(p)}
		}
		windows = max(windows, len(e))
		encs = append(encs, e)
	}
	empty := tok.Encode("")
	var rows [][]int32
	for _, e := range encs {
		for w := 0; w < windows; w++ {
			enc := empty
			if w < len(e) {
				enc = e[w]
			}
			row := make([]int32, len(enc.IDs))
			for i, id := range enc.IDs {
				row[i] = int32(id)
			}
			rows = append(rows, row)
		}
	}
	last := encs[len(encs)-1]
	return rows, windows, last[len(last)-1].Truncated
}

// encodeInit is the "encode" stage: the VAE encoder on the init picture
// (and the masked picture), the generator's first draws, and the latents
// the loop starts from.
func (r *runner) encodeInit() error {
	h, w := r.p.Height/8, r.p.Width/8
	r.gen = rng.NewTorchCPU(r.p.Seed)
	j := &initJob{ctx: r.ctx, b: r.b, enc: r.m.Encoder, res: r.encRes, p: &r.p, s: r.s, gen: r.gen,
		c: r.m.VAE.Config.LatentChannels, h: h, w: w, unetCond: r.unetCond()}
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

// denoise runs the sampler loop on the host latents, one UNet call per step.
func (r *runner) denoise() error {
	s := r.s
	h, w := r.p.Height/8, r.p.Width/8
	c := r.m.VAE.Config.LatentChannels
	n := r.p.Batch * c * h * w
	st := r.start
	if st == nil {
		var err error
		if st, r.gen, err = r.p.txt2imgStart(c, h, w, float32(s.InitNoiseSigma())); err != nil {
			return err
		}
	}
	r.latents = st.latents
	ts := s.Timesteps()
	r.out.Timesteps = ts[st.begin:]
	r.out.SamplerName = s.Name()
	rows := r.p.Batch
	if r.cfg {
		rows *= 2
	}
	for step := st.begin; step < len(ts); step++ {
		t := ts[step]
		if err := r.ctx.Err(); err != nil {
			return err
		}
		x := make([]float32, 0, rows*c*h*w)
		x = append(x, r.latents...)
		if r.cfg {
			x = append(x, r.latents...)
		}
		s.ScaleModelInput(x, step)
		in, cin := st.unetInput(x, rows, r.p.Batch, c, h*w)
		out, err := r.unet(in, rows, cin, h, w, t)
		if err != nil {
			return fmt.Errorf("sched: step %d (t=%g): %w", step-st.begin+1, t, err)
		}
		if err := finite("UNet output", out); err != nil {
			return fmt.Errorf("sched: step %d (t=%g): %w", step-st.begin+1, t, err)
		}
		guided := out[:n]
		if r.cfg {
			g := float32(r.p.Guidance)
			uncond, cond := out[:n], out[n:]
			for i := range guided {
				guided[i] = uncond[i] + g*(cond[i]-uncond[i])
			}
		}
		var noise []float32
		if s.NeedsNoise(step) {
			if noise, err = r.stepNoise(step-st.begin, n); err != nil {
				return err
			}
		}
		if err := s.Step(guided, r.latents, step, noise); err != nil {
			return err
		}
		if st.image != nil {
			if err := st.blend(s, r.latents, step, len(ts)-1); err != nil {
				return err
			}
		}
		if r.p.OnStep != nil {
			r.p.OnStep(step-st.begin, r.latents)
		}
		// PNDM (skip_prk_steps) calls the UNet once more than the steps
		// asked for: count calls, so progress never passes 100%.
		if err := progress(r.ctx, r.b, r.m.TAESD, r.tinyRes, &r.p, step-st.begin+1, len(ts)-st.begin, r.latents, c); err != nil {
			return err
		}
	}
	if !r.keepResident() {
		r.unetRes.Release()
	}
	return finite("latents", r.latents)
}

// progress reports a finished step, then (before the last) decodes the
// latents with TAESD for p.Preview.
func progress(ctx context.Context, b engine.Backend, t *model.TAESD, res *Streamer, p *Params, done, due int, latents []float32, c int) error {
	if p.Progress != nil {
		p.Progress(done, due)
	}
	if p.Preview == nil || done >= due {
		return nil
	}
	imgs, err := taesdImages(ctx, b, t, res, p, latents, c)
	if err != nil {
		return fmt.Errorf("sched: preview after step %d: %w", done, err)
	}
	p.Preview(done, imgs)
	return nil
}

func (r *runner) stepNoise(step, n int) ([]float32, error) {
	if r.p.Noise != nil {
		return r.p.Noise.step(step, n)
	}
	h, w := r.p.Height/8, r.p.Width/8
	return r.gen.Randn(r.p.Batch, r.m.VAE.Config.LatentChannels, h, w), nil
}

// unet runs one batched UNet call and returns its output on the host.
func (r *runner) unet(in []float32, rows, c, h, w int, t float64) ([]float32, error) {
	rec := engine.NewRec(r.b)
	x := rec.Write("latents", in, rows, c, h, w)
	ctx := rec.Write("encoder_hidden_states", r.context, rows, r.ctxLen, r.ctxDim)
	var added *model.AddedCond
	if r.m.SDXL {
		// (original size, crop top-left, target size), as the SDXL pipeline
		// passes them by default.
		hh, ww := float64(r.p.Height), float64(r.p.Width)
		added = &model.AddedCond{
			TextEmbeds: rec.Write("text_embeds", r.pooled, rows, r.pooledN),
			TimeIDs:    [][6]float64{{hh, ww, 0, 0, hh, ww}},
		}
	}
	if err := rec.Err(); err != nil {
		rec.Free(x, ctx) // the uploads that succeeded
		if added != nil {
			rec.Free(added.TextEmbeds)
		}
		return nil, err
	}
	y := r.m.UNet.Forward(rec, r.unetRes, x, t, ctx, added)
	var out []float32
	if err := rec.Err(); err == nil {
		out, err = r.b.Read(y)
		rec.Fail(err)
	}
	rec.Free(x, ctx, y)
	if added != nil {
		rec.Free(added.TextEmbeds)
	}
	return out, rec.Err()
}

// decode turns the final latents into 8-bit images.
func (r *runner) decode() error {
	decode := decodeImages
	if r.p.TAESD {
		decode = func(ctx context.Context, b engine.Backend, _ *model.VAEDecoder, _ *Streamer, p *Params, latents []float32, c int) ([]*image.RGBA, error) {
			return taesdImages(ctx, b, r.m.TAESD, r.tinyRes, p, latents, c)
		}
	}
	imgs, err := decode(r.ctx, r.b, r.m.VAE, r.vaeRes, &r.p, r.latents, r.m.VAE.Config.LatentChannels)
	r.out.Images = append(r.out.Images, imgs...)
	if err != nil {
		return err
	}
	if !r.keepResident() {
		r.vaeRes.Release()
	}
	return nil
}

// decodeImages decodes latents [p.Batch, c, H/8, W/8] (diffusion space) one
// image at a time, so that the decoder's activations never hold more than
// one picture, tiling as p asks or the budget needs. The SD and Z-Image
// runners share it.
func decodeImages(ctx context.Context, b engine.Backend, vae *model.VAEDecoder, res *Streamer, p *Params, latents []float32, c int) ([]*image.RGBA, error) {
	h, w := p.Height/8, p.Width/8
	per := c * h * w
	tile := tileSize(b, vae, p)
	var out []*image.RGBA
	for i := 0; i < p.Batch; i++ {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		rec := engine.NewRec(b)
		z := rec.Write("vae_input", latents[i*per:(i+1)*per], 1, c, h, w)
		var img *engine.Tensor
		if tile > 0 {
			// Auto mode tiles only to fit memory, in one pass (running
			// GroupNorm statistics: about (tile / (tile - overlap))² the
			// untiled work, 1.56x for the 40-latent tiles lavapipe's
			// binding limit asks for at 512x512) where its tiles are large
			// enough to stay >= 40 dB from the untiled decode, else in the
			// three statistics passes that "on" always runs (three times
			// that work, >= 40 dB from 96-pixel tiles).
			opt := model.TileOptions{Size: tile, Overlap: model.TileOverlap(tile),
				LocalNorm: p.Tiling == TilingAuto && tile >= model.MinLocalTile}
			img = vae.DecodeTiled(rec, res, z, opt)
		} else {
			img = vae.Decode(rec, res, z)
		}
		rgba, err := readPicture(b, rec, z, img, "VAE", i, p)
		if err != nil {
			return out, err
		}
		out = append(out, rgba)
	}
	return out, nil
}

// readPicture reads the decoded image i of the batch from the device as
// RGBA and frees it and its input z (decoder names the network in errors).
func readPicture(b engine.Backend, rec *engine.Rec, z, img *engine.Tensor, decoder string, i int, p *Params) (*image.RGBA, error) {
	var px []float32
	if err := rec.Err(); err == nil {
		px, err = b.Read(img)
		rec.Fail(err)
	}
	rec.Free(z, img)
	if err := rec.Err(); err != nil {
		return nil, fmt.Errorf("sched: %s decode of image %d: %w", decoder, i+1, err)
	}
	rgba, err := model.ImageToRGBA(px, p.Height, p.Width)
	if err != nil {
		return nil, fmt.Errorf("sched: image %d: %w", i+1, err)
	}
	return rgba, nil
}

// tileSize returns the VAE tile in latent pixels, or 0 to decode whole.
func tileSize(b engine.Backend, vae *model.VAEDecoder, p *Params) int {
	h, w := p.Height/8, p.Width/8
	cfg := &vae.Config
	var limit int64 // largest tensor the device can bind, 0 = none
	if l, ok := b.(engine.TensorLimiter); ok {
		limit = l.MaxTensorBytes()
	}
	room := int64(1) << 62
	if p.Budget > 0 {
		room = p.Budget - BlocksBytes(vae.Blocks())
	}
	switch p.Tiling {
	case TilingOff:
		return 0
	case TilingOn:
		if p.Tile > 0 {
			return max(p.Tile, model.MinTile)
		}
		return min(model.AutoTileSizeLimit(room, limit, cfg), max(h, w))
	}
	if p.Tile > 0 {
		return max(p.Tile, model.MinTile)
	}
	// Auto: decode whole when it fits the budget and the device's binding
	// limit; tiles keep the activations flat at any size.
	fits := vaeActivationBytes(vae, p) <= room && (limit <= 0 || model.VAEMaxTensorBytes(cfg, 1, h, w) <= limit)
	if fits {
		return 0
	}
	return model.AutoTileSizeLimit(room, limit, cfg)
}

func finite(what string, v []float32) error {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return fmt.Errorf("sched: %s has a non-finite value (%v) at element %d", what, x, i)
		}
	}
	return nil
}

// taesdImages decodes latents [p.Batch, c, H/8, W/8] with TAESD, one
// image at a time; maps too large for the device's binding limit (or a
// quarter of the budget's room) are split where the decoder allows it
// without changing a value (TAESD.DecodeLimited).
func taesdImages(ctx context.Context, b engine.Backend, t *model.TAESD, res *Streamer, p *Params, latents []float32, c int) ([]*image.RGBA, error) {
	h, w := p.Height/8, p.Width/8
	per := c * h * w
	var limit int64
	if l, ok := b.(engine.TensorLimiter); ok {
		limit = l.MaxTensorBytes()
	}
	if p.Budget > 0 {
		room := max((p.Budget-b.MemStats().InUse-BlocksBytes(t.Blocks()))/4, 1)
		if limit <= 0 || room < limit {
			limit = room
		}
	}
	var out []*image.RGBA
	for i := 0; i < p.Batch; i++ {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		rec := engine.NewRec(b)
		z := rec.Write("taesd_input", latents[i*per:(i+1)*per], 1, c, h, w)
		img := t.DecodeLimited(rec, res, z, limit)
		rgba, err := readPicture(b, rec, z, img, "TAESD", i, p)
		if err != nil {
			return out, err
		}
		out = append(out, rgba)
	}
	return out, nil
}
