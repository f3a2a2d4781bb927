package model

import (
	"fmt"
	"math"

	"github.com/zimage/zimage/engine"
)

// VAEDecoder is the decoding half of diffusers' AutoencoderKL
// (diffusers/models/autoencoders/autoencoder_kl.py and vae.py: Decoder,
// UNetMidBlock2D, UpDecoderBlock2D, ResnetBlock2D). Fields mirror the keys:
// post_quant_conv.* and decoder.*. Activations stay F32 throughout, so the
// SDXL VAE, which overflows in fp16, needs no special path.
type VAEDecoder struct {
	Config        VAEConfig // with diffusers' defaults filled in
	PostQuantConv *Conv2d   // nil when use_post_quant_conv is false
	ConvIn        *Conv2d   // decoder.conv_in
	MidBlock      *VAEMidBlock
	UpBlocks      []*VAEUpBlock // decoder.up_blocks.<i>, widest first
	ConvNormOut   *GroupNorm
	ConvOut       *Conv2d

	blocks []*Block
}

// VAEMidBlock is UNetMidBlock2D without time embedding: resnet, attention,
// resnet (no attention when mid_block_add_attention is false).
type VAEMidBlock struct {
	Resnets    []*VAEResnet
	Attentions []*VAEAttention // zero or one
}

// VAEUpBlock is UpDecoderBlock2D: layers_per_block+1 resnets, then a
// nearest 2x upsample and a 3x3 conv (all but the last block).
type VAEUpBlock struct {
	Resnets    []*VAEResnet
	Upsamplers []*Conv2d // upsamplers.0.conv
}

// VAEResnet is ResnetBlock2D without time embedding.
type VAEResnet struct {
	Norm1, Norm2 *GroupNorm
	Conv1, Conv2 *Conv2d
	ConvShortcut *Conv2d // 1x1, when in != out channels
}

// VAEAttention is the mid block's single-head self-attention over all
// pixels, with a residual connection.
type VAEAttention struct {
	GroupNorm     *GroupNorm
	ToQ, ToK, ToV *Linear
	ToOut         *Linear // to_out.0
}

// vaeEps is the GroupNorm epsilon diffusers' Decoder hard-codes.
const vaeEps = 1e-6

// vaeDefaults fills in what diffusers defaults when a config omits it
// (old configs such as SD 1.5's carry no scaling_factor).
func vaeDefaults(cfg *VAEConfig) VAEConfig {
	c := *cfg
	if c.LatentChannels == 0 {
		c.LatentChannels = 4
	}
	if c.OutChannels == 0 {
		c.OutChannels = 3
	}
	if c.InChannels == 0 {
		c.InChannels = 3
	}
	if c.NormNumGroups == 0 {
		c.NormNumGroups = 32
	}
	if c.LayersPerBlock == 0 {
		c.LayersPerBlock = 1
	}
	if c.ScalingFactor == 0 {
		c.ScalingFactor = 0.18215
	}
	if len(c.BlockOutChannels) == 0 {
		c.BlockOutChannels = []int{64}
	}
	return c
}

// LoadVAEDecoder builds the decoder from src (a whole AutoencoderKL
// checkpoint; encoder keys stay unused), checking every tensor against cfg.
func LoadVAEDecoder(src *Source, cfg *VAEConfig) (*VAEDecoder, error) {
	if cfg == nil {
		return nil, fmt.Errorf("model: %s: no VAE config", src.Name)
	}
	c := vaeDefaults(cfg)
	if err := checkVAEConfig(src, &c); err != nil {
		return nil, err
	}
	for i, t := range c.UpBlockTypes {
		if t != "UpDecoderBlock2D" {
			return nil, fmt.Errorf("model: %s: config up_block_types[%d] %q not supported (want UpDecoderBlock2D)", src.Name, i, t)
		}
	}
	if len(c.UpBlockTypes) != 0 && len(c.UpBlockTypes) != len(c.BlockOutChannels) {
		return nil, fmt.Errorf("model: %s: config has %d up_block_types for %d block_out_channels", src.Name, len(c.UpBlockTypes), len(c.BlockOutChannels))
	}
	g := c.NormNumGroups

	w := NewWeights(src)
	v := &VAEDecoder{Config: c}
	lc := c.LatentChannels
	top := c.BlockOutChannels[len(c.BlockOutChannels)-1]

	v.blocks = append(v.blocks, w.BeginBlock("decoder.conv_in"))
	if c.UsePostQuantConv == nil || *c.UsePostQuantConv {
		v.PostQuantConv = loadConv2d(w.Sub("post_quant_conv"), lc, lc, 1, 1, 0)
	}
	d := w.Sub("decoder")
	v.ConvIn = loadConv2d(d.Sub("conv_in"), lc, top, 3, 1, 1)

	v.blocks = append(v.blocks, w.BeginBlock("decoder.mid_block"))
	v.MidBlock = loadVAEMidBlock(d.Sub("mid_block"), &c, top)

	prev := top
	n := len(c.BlockOutChannels)
	for i := range n {
		out := c.BlockOutChannels[n-1-i]
		uw := d.Subf("up_blocks.%d", i)
		v.blocks = append(v.blocks, w.BeginBlock(uw.Prefix()))
		ub := &VAEUpBlock{}
		for j := 0; j <= c.LayersPerBlock; j++ {
			in := out
			if j == 0 {
				in = prev
			}
			ub.Resnets = append(ub.Resnets, loadVAEResnet(uw.Subf("resnets.%d", j), in, out, g))
		}
		if i < n-1 {
			ub.Upsamplers = []*Conv2d{loadConv2d(uw.Sub("upsamplers.0.conv"), out, out, 3, 1, 1)}
		}
		v.UpBlocks = append(v.UpBlocks, ub)
		prev = out
	}

	v.blocks = append(v.blocks, w.BeginBlock("decoder.conv_out"))
	v.ConvNormOut = loadGroupNorm(d.Sub("conv_norm_out"), g, c.BlockOutChannels[0], vaeEps)
	v.ConvOut = loadConv2d(d.Sub("conv_out"), c.BlockOutChannels[0], c.OutChannels, 3, 1, 1)
	if err := w.Err(); err != nil {
		return nil, err
	}
	return v, nil
}

// checkVAEConfig checks what the encoder and decoder share.
func checkVAEConfig(src *Source, c *VAEConfig) error {
	g := c.NormNumGroups
	for _, ch := range c.BlockOutChannels {
		if ch <= 0 || ch%g != 0 {
			return fmt.Errorf("model: %s: config block_out_channels %v: each must be a positive multiple of norm_num_groups %d", src.Name, c.BlockOutChannels, g)
		}
	}
	if c.ScalingFactor <= 0 || math.IsInf(c.ScalingFactor, 0) || math.IsNaN(c.ScalingFactor) {
		return fmt.Errorf("model: %s: config scaling_factor %v must be positive", src.Name, c.ScalingFactor)
	}
	return nil
}

// loadVAEMidBlock loads an encoder's or decoder's mid block from mw
// (<part>.mid_block).
func loadVAEMidBlock(mw *Weights, c *VAEConfig, top int) *VAEMidBlock {
	g := c.NormNumGroups
	mb := &VAEMidBlock{Resnets: []*VAEResnet{loadVAEResnet(mw.Sub("resnets.0"), top, top, g)}}
	if c.MidBlockAddAttention == nil || *c.MidBlockAddAttention {
		aw := mw.Sub("attentions.0")
		q, k, val, out := "to_q", "to_k", "to_v", "to_out.0"
		if !aw.Has("to_q.weight") && aw.Has("query.weight") {
			// diffusers before 0.14 named them so, and files such as SD
			// 1.5's VAE still do (diffusers renames them on load).
			q, k, val, out = "query", "key", "value", "proj_attn"
		}
		mb.Attentions = []*VAEAttention{{
			GroupNorm: loadGroupNorm(aw.Sub("group_norm"), g, top, vaeEps),
			ToQ:       loadLinear(aw.Sub(q), top, top, true),
			ToK:       loadLinear(aw.Sub(k), top, top, true),
			ToV:       loadLinear(aw.Sub(val), top, top, true),
			ToOut:     loadLinear(aw.Sub(out), top, top, true),
		}}
	}
	mb.Resnets = append(mb.Resnets, loadVAEResnet(mw.Sub("resnets.1"), top, top, g))
	return mb
}

// forward runs resnet, attention, resnet on x [B, C, h, w] (consumed).
func (mb *VAEMidBlock) forward(rec *engine.Rec, h *engine.Tensor, tn *tileNorm) *engine.Tensor {
	h = mb.Resnets[0].forward(rec, h, tn)
	for _, a := range mb.Attentions {
		h = a.forward(rec, h, tn)
	}
	return mb.Resnets[1].forward(rec, h, tn)
}

func loadVAEResnet(w *Weights, in, out, groups int) *VAEResnet {
	r := &VAEResnet{
		Norm1: loadGroupNorm(w.Sub("norm1"), groups, in, vaeEps),
		Conv1: loadConv2d(w.Sub("conv1"), in, out, 3, 1, 1),
		Norm2: loadGroupNorm(w.Sub("norm2"), groups, out, vaeEps),
		Conv2: loadConv2d(w.Sub("conv2"), out, out, 3, 1, 1),
	}
	if in != out {
		r.ConvShortcut = loadConv2d(w.Sub("conv_shortcut"), in, out, 1, 1, 0)
	}
	return r
}

// Blocks lists the offload blocks in execution order: conv_in (with
// post_quant_conv), the mid block, each up block, conv_out.
func (v *VAEDecoder) Blocks() []*Block { return v.blocks }

// Decode turns diffusion-space latents [B, latent_channels, h, w] into the
// image [B, out_channels, 8h, 8w] (for four blocks), nominally in [-1, 1]
// and not clamped. It applies 1/scaling_factor and shift_factor itself,
// leaves latents to the caller, and fails (rather than returning a black
// image later) when the output holds NaN or Inf.
func (v *VAEDecoder) Decode(rec *engine.Rec, res Residency, latents *engine.Tensor) *engine.Tensor {
	img := v.decode(rec, res, latents, true, nil)
	if img != nil {
		if err := checkFinite(rec.B, img, "VAE decoder output"); err != nil {
			rec.Free(img)
			return rec.Fail(err)
		}
	}
	return img
}

// DecodeRaw decodes z that is already in the decoder's space (latents /
// scaling_factor + shift_factor: what diffusers passes to vae.decode).
func (v *VAEDecoder) DecodeRaw(rec *engine.Rec, res Residency, z *engine.Tensor) *engine.Tensor {
	img := v.decode(rec, res, z, false, nil)
	if img != nil {
		if err := checkFinite(rec.B, img, "VAE decoder output"); err != nil {
			rec.Free(img)
			return rec.Fail(err)
		}
	}
	return img
}

// Scale is the factor from the image to the latent: 2^(blocks-1).
func (v *VAEDecoder) Scale() int { return 1 << (len(v.UpBlocks) - 1) }

// decode runs the decoder; tn (nil outside tiled decoding) takes over the
// GroupNorms.
func (v *VAEDecoder) decode(rec *engine.Rec, res Residency, z *engine.Tensor, scaled bool, tn *tileNorm) *engine.Tensor {
	if rec.Err() != nil {
		return nil
	}
	if z == nil || len(z.Shape) != 4 || z.Shape[1] != v.Config.LatentChannels {
		got := "nil"
		if z != nil {
			got = z.Shape.String()
		}
		return rec.Fail(fmt.Errorf("model: VAE decode: latents are %s, want [B, %d, h, w]", got, v.Config.LatentChannels))
	}
	if !needBlock(rec, res, "VAE", v.blocks[0]) {
		return nil
	}
	x := z
	if scaled {
		shift := 0.0
		if v.Config.ShiftFactor != nil {
			shift = *v.Config.ShiftFactor
		}
		x = rec.Scale("vae.unscale", z, float32(1/v.Config.ScalingFactor), float32(shift)) // [B, 4, h, w]
	}
	if v.PostQuantConv != nil {
		y := v.PostQuantConv.Forward(rec, x) // [B, 4, h, w]
		if x != z {
			rec.Free(x)
		}
		x = y
	}
	h := v.ConvIn.Forward(rec, x) // [B, C_top, h, w]
	if x != z {
		rec.Free(x)
	}

	if !needBlock(rec, res, "VAE", v.blocks[1]) {
		rec.Free(h)
		return nil
	}
	h = v.MidBlock.forward(rec, h, tn)

	for i, ub := range v.UpBlocks {
		if !needBlock(rec, res, "VAE", v.blocks[2+i]) {
			rec.Free(h)
			return nil
		}
		for _, r := range ub.Resnets {
			h = r.forward(rec, h, tn) // [B, C_i, H_i, W_i]
		}
		for _, up := range ub.Upsamplers {
			u := rec.Upsample2x("upsample", h) // [B, C_i, 2H_i, 2W_i]
			rec.Free(h)
			h = up.Forward(rec, u)
			rec.Free(u)
		}
	}

	if !needBlock(rec, res, "VAE", v.blocks[len(v.blocks)-1]) {
		rec.Free(h)
		return nil
	}
	n := tn.norm(rec, v.ConvNormOut, h, true) // GroupNorm + SiLU
	rec.Free(h)
	img := v.ConvOut.Forward(rec, n) // [B, 3, H, W]
	rec.Free(n)
	if rec.Err() != nil {
		rec.Free(img)
		return nil
	}
	return img
}

// forward consumes x [B, in, H, W] and returns [B, out, H, W].
func (r *VAEResnet) forward(rec *engine.Rec, x *engine.Tensor, tn *tileNorm) *engine.Tensor {
	h := tn.norm(rec, r.Norm1, x, true)
	t := r.Conv1.Forward(rec, h)
	rec.Free(h)
	h = tn.norm(rec, r.Norm2, t, true)
	rec.Free(t)
	t = r.Conv2.Forward(rec, h)
	rec.Free(h)
	if r.ConvShortcut != nil {
		s := r.ConvShortcut.Forward(rec, x)
		rec.Free(x)
		x = s
	}
	rec.AddInPlace(t, x) // output_scale_factor is 1 in the VAE
	rec.Free(x)
	return t
}

// forward consumes x [B, C, H, W] and returns x + attention(norm(x)) with
// one head over all H*W pixels.
func (a *VAEAttention) forward(rec *engine.Rec, x *engine.Tensor, tn *tileNorm) *engine.Tensor {
	if rec.Err() != nil {
		rec.Free(x)
		return nil
	}
	b, c, hh, ww := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	n := tn.norm(rec, a.GroupNorm, x, false)
	tok := rec.Permute("mid_block.attentions.0.tokens", rec.Reshape(n, b, c, hh*ww), 0, 2, 1) // [B, HW, C]
	rec.Free(n)
	q := a.ToQ.Forward(rec, tok)
	k := a.ToK.Forward(rec, tok)
	v := a.ToV.Forward(rec, tok)
	rec.Free(tok)
	o := rec.Attention("mid_block.attentions.0", q, k, v, engine.AttentionOptions{Heads: 1, Scale: float32(1 / math.Sqrt(float64(c)))}) // [B, HW, C]
	rec.Free(q, k, v)
	p := a.ToOut.Forward(rec, o)
	rec.Free(o)
	y := rec.Alloc("mid_block.attentions.0.out", b, c, hh, ww)
	if yv := rec.Reshape(y, b, c, hh*ww); yv != nil { // [B, C, HW] view of y
		if err := rec.B.Permute(yv, p, []int{0, 2, 1}); err != nil {
			rec.Fail(fmt.Errorf("model: VAE mid-block attention output: %w", err))
		}
	}
	rec.Free(p)
	rec.AddInPlace(y, x) // residual; rescale_output_factor is 1
	rec.Free(x)
	if rec.Err() != nil {
		rec.Free(y)
		return nil
	}
	return y
}

// checkFinite reads t and reports NaN/Inf with its position.
func checkFinite(b engine.Backend, t *engine.Tensor, what string) error {
	data, err := b.Read(t)
	if err != nil {
		return fmt.Errorf("model: %s: %w", what, err)
	}
	return finiteFloats(data, t.Shape, what)
}
