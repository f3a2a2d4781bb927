package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/zimage/zimage/engine"
)

// UNet is diffusers' UNet2DConditionModel (models/unets/unet_2d_condition.py)
// for the SD 1.x, SD 2.x / SD-Turbo and SDXL / SDXL-Turbo architectures.
// Fields mirror the checkpoint keys.
type UNet struct {
	Config *UNetConfig

	TimeEmbedding *TimestepEmbedding // time_embedding.linear_1/linear_2
	AddEmbedding  *TimestepEmbedding // add_embedding (text_time), else nil
	ConvIn        *Conv2d
	DownBlocks    []*UNetDownBlock
	MidBlock      *UNetMidBlock
	UpBlocks      []*UNetUpBlock
	ConvNormOut   *GroupNorm
	ConvOut       *Conv2d

	timeInDim   int // sinusoidal features of the timestep (block_out_channels[0])
	addTimeDim  int // sinusoidal features per time id (addition_time_embed_dim)
	textEmbDim  int // pooled text embedding width (projection input minus 6 time ids)
	crossDim    int
	blocks      []*Block
	headBlock   *Block // time embeddings and conv_in
	tailBlock   *Block // conv_norm_out and conv_out
	downsamples int    // number of downsamplers (2^n is the total downsampling)
}

// AddedCond is SDXL's added conditioning (addition_embed_type "text_time").
type AddedCond struct {
	TextEmbeds *engine.Tensor // pooled text embedding [B, P]
	// TimeIDs per batch row: (orig_h, orig_w, crop_top, crop_left,
	// target_h, target_w). One row is broadcast to every batch row.
	TimeIDs [][6]float64
}

// TimestepEmbedding is diffusers' TimestepEmbedding: linear_1, SiLU,
// linear_2.
type TimestepEmbedding struct {
	Linear1, Linear2 *Linear
}

func loadTimestepEmbedding(w *Weights, in, dim int) *TimestepEmbedding {
	return &TimestepEmbedding{
		Linear1: loadLinear(w.Sub("linear_1"), in, dim, true),
		Linear2: loadLinear(w.Sub("linear_2"), dim, dim, true),
	}
}

// Forward: x [B, in] -> [B, dim].
func (t *TimestepEmbedding) Forward(rec *engine.Rec, x *engine.Tensor) *engine.Tensor {
	h := t.Linear1.Forward(rec, x) // [B, dim]
	rec.UnaryInPlace(h, engine.SiLU)
	out := t.Linear2.Forward(rec, h)
	rec.Free(h)
	return out
}

// Validate reports the first setting of the config that the UNet does not
// implement, or a config that is inconsistent. Unset optional values take
// diffusers' defaults (see withDefaults).
func (c *UNetConfig) Validate() error {
	c = c.withDefaults()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("model: unet config: "+format, args...)
	}
	n := len(c.BlockOutChannels)
	if n == 0 || len(c.DownBlockTypes) != n || len(c.UpBlockTypes) != n {
		return bad("block_out_channels %v, down_block_types %v and up_block_types %v must have the same non-zero length",
			c.BlockOutChannels, c.DownBlockTypes, c.UpBlockTypes)
	}
	if c.InChannels <= 0 || c.OutChannels <= 0 || c.LayersPerBlock <= 0 || c.NormNumGroups <= 0 {
		return bad("in_channels %d, out_channels %d, layers_per_block %d and norm_num_groups %d must be positive",
			c.InChannels, c.OutChannels, c.LayersPerBlock, c.NormNumGroups)
	}
	for _, ch := range c.BlockOutChannels {
		if ch <= 0 || ch%c.NormNumGroups != 0 {
			return bad("block_out_channels %v must be positive multiples of norm_num_groups %d", c.BlockOutChannels, c.NormNumGroups)
		}
	}
	perBlock := func(name string, v IntOrList) error {
		if len(v) != 1 && len(v) != n {
			return bad("%s %v: want one value or one per block (%d)", name, []int(v), n)
		}
		for _, x := range v {
			if x <= 0 {
				return bad("%s %v: values must be positive", name, []int(v))
			}
		}
		return nil
	}
	if len(c.NumAttentionHeads) > 0 {
		// diffusers itself refuses it: its attention_head_dim already means
		// the head count, so a separate num_attention_heads is ambiguous.
		return bad("num_attention_heads %v is not supported (diffusers' UNet2DConditionModel rejects it too); set attention_head_dim", []int(c.NumAttentionHeads))
	}
	for _, p := range []struct {
		name string
		v    IntOrList
	}{{"attention_head_dim", c.AttentionHeadDim}, {"cross_attention_dim", c.CrossAttentionDim}, {"transformer_layers_per_block", c.TransformerLayersPerBlock}} {
		if err := perBlock(p.name, p.v); err != nil {
			return err
		}
	}
	for _, d := range c.CrossAttentionDim {
		if d != c.CrossAttentionDim[0] {
			return bad("cross_attention_dim %v: different widths per block are not supported", []int(c.CrossAttentionDim))
		}
	}
	for i, t := range c.DownBlockTypes {
		switch t {
		case "CrossAttnDownBlock2D":
			if heads := c.AttentionHeadDim.At(i); c.BlockOutChannels[i]%heads != 0 {
				return bad("down block %d: %d channels do not split into %d heads (attention_head_dim)", i, c.BlockOutChannels[i], heads)
			}
		case "DownBlock2D":
		default:
			return bad("down block type %q is not supported (want CrossAttnDownBlock2D or DownBlock2D)", t)
		}
	}
	for i, t := range c.UpBlockTypes {
		switch t {
		case "CrossAttnUpBlock2D":
			ch, heads := c.BlockOutChannels[n-1-i], c.AttentionHeadDim.At(n-1-i)
			if ch%heads != 0 {
				return bad("up block %d: %d channels do not split into %d heads (attention_head_dim)", i, ch, heads)
			}
		case "UpBlock2D":
		default:
			return bad("up block type %q is not supported (want CrossAttnUpBlock2D or UpBlock2D)", t)
		}
	}
	if c.MidBlockType == nil || *c.MidBlockType != "UNetMidBlock2DCrossAttn" {
		return bad("mid_block_type %s is not supported (want UNetMidBlock2DCrossAttn)", strOrNull(c.MidBlockType))
	}
	if c.BlockOutChannels[n-1]%c.AttentionHeadDim.At(n-1) != 0 {
		return bad("mid block: %d channels do not split into %d heads", c.BlockOutChannels[n-1], c.AttentionHeadDim.At(n-1))
	}
	if c.ConvInKernel%2 == 0 || c.ConvOutKernel%2 == 0 {
		return bad("conv_in_kernel %d / conv_out_kernel %d: want odd kernel sizes", c.ConvInKernel, c.ConvOutKernel)
	}
	if c.DownsamplePadding != 1 {
		return bad("downsample_padding %d is not supported (want 1)", c.DownsamplePadding)
	}
	if c.BlockOutChannels[0]%2 != 0 {
		return bad("block_out_channels[0] %d must be even (sinusoidal time embedding)", c.BlockOutChannels[0])
	}
	if c.AdditionEmbedType != nil {
		if *c.AdditionEmbedType != "text_time" {
			return bad("addition_embed_type %q is not supported (want null or text_time)", *c.AdditionEmbedType)
		}
		if c.AdditionTimeEmbedDim <= 0 || c.AdditionTimeEmbedDim%2 != 0 || c.ProjectionClassEmbedInputDim <= 6*c.AdditionTimeEmbedDim {
			return bad("text_time needs an even addition_time_embed_dim (%d) and projection_class_embeddings_input_dim (%d) > 6 x it",
				c.AdditionTimeEmbedDim, c.ProjectionClassEmbedInputDim)
		}
	}
	// Variants that change the computation and that no supported model uses.
	unsupported := []struct {
		bad  bool
		what string
	}{
		{c.ResnetTimeScaleShift != "default", fmt.Sprintf("resnet_time_scale_shift %q", c.ResnetTimeScaleShift)},
		{c.TimeCondProjDim != nil, "time_cond_proj_dim (LCM guidance embedding)"},
		{c.ClassEmbedType != nil, "class_embed_type " + strOrNull(c.ClassEmbedType)},
		{c.NumClassEmbeds != nil, "num_class_embeds"},
		{c.CenterInputSample, "center_input_sample"},
		{c.TimeEmbeddingType != "positional", fmt.Sprintf("time_embedding_type %q", c.TimeEmbeddingType)},
		{c.TimeEmbeddingDim != nil, "time_embedding_dim"},
		{c.TimeEmbeddingActFn != nil, "time_embedding_act_fn " + strOrNull(c.TimeEmbeddingActFn)},
		{c.TimestepPostAct != nil, "timestep_post_act " + strOrNull(c.TimestepPostAct)},
		{c.ActFn != "silu", fmt.Sprintf("act_fn %q", c.ActFn)},
		{c.EncoderHidDimType != nil, "encoder_hid_dim_type " + strOrNull(c.EncoderHidDimType)},
		{anyTrue(c.OnlyCrossAttention), "only_cross_attention"},
		{c.DualCrossAttention, "dual_cross_attention"},
		{c.MidBlockOnlyCrossAttention != nil && *c.MidBlockOnlyCrossAttention, "mid_block_only_cross_attention"},
		{c.MidBlockScaleFactor != nil && *c.MidBlockScaleFactor != 1, "mid_block_scale_factor != 1"},
		{c.ResnetOutScaleFactor != nil && *c.ResnetOutScaleFactor != 1, "resnet_out_scale_factor != 1"},
		{c.ResnetSkipTimeAct, "resnet_skip_time_act"},
		{c.CrossAttentionNorm != nil, "cross_attention_norm " + strOrNull(c.CrossAttentionNorm)},
		{c.AttentionType != "default", fmt.Sprintf("attention_type %q", c.AttentionType)},
		{len(c.ReverseTransformerLayersPerBlock) > 0 && string(c.ReverseTransformerLayersPerBlock) != "null", "reverse_transformer_layers_per_block"},
	}
	for _, u := range unsupported {
		if u.bad {
			return bad("%s is not supported", u.what)
		}
	}
	return nil
}

// withDefaults returns a copy with diffusers' defaults for values a
// config.json may omit (older files lack several keys).
func (c *UNetConfig) withDefaults() *UNetConfig {
	d := *c
	defInt := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	defInt(&d.LayersPerBlock, 2)
	defInt(&d.NormNumGroups, 32)
	defInt(&d.ConvInKernel, 3)
	defInt(&d.ConvOutKernel, 3)
	if d.NormEps == 0 {
		d.NormEps = 1e-5
	}
	if len(d.CrossAttentionDim) == 0 {
		d.CrossAttentionDim = IntOrList{1280}
	}
	if len(d.AttentionHeadDim) == 0 {
		d.AttentionHeadDim = IntOrList{8}
	}
	if len(d.TransformerLayersPerBlock) == 0 {
		d.TransformerLayersPerBlock = IntOrList{1}
	}
	if d.MidBlockType == nil {
		mid := "UNetMidBlock2DCrossAttn"
		d.MidBlockType = &mid
	}
	if d.ResnetTimeScaleShift == "" {
		d.ResnetTimeScaleShift = "default"
	}
	if d.TimeEmbeddingType == "" {
		d.TimeEmbeddingType = "positional"
	}
	if d.ActFn == "" {
		d.ActFn = "silu"
	}
	if d.AttentionType == "" {
		d.AttentionType = "default"
	}
	return &d
}

func strOrNull(s *string) string {
	if s == nil {
		return "null"
	}
	return fmt.Sprintf("%q", *s)
}

// anyTrue reads a bool-or-list-of-bools config value.
func anyTrue(raw json.RawMessage) bool {
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return b
	}
	var l []bool
	if json.Unmarshal(raw, &l) == nil {
		for _, v := range l {
			if v {
				return true
			}
		}
	}
	return false
}

// LoadUNet builds the UNet that cfg describes from src, checking every
// tensor's shape against the config and that no checkpoint tensor is left
// over. Weights stay on the host until a Residency makes them resident.
func LoadUNet(src *Source, cfg *UNetConfig) (*UNet, error) {
	if cfg == nil {
		return nil, errors.New("model: unet: nil config")
	}
	c := cfg.withDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	n := len(c.BlockOutChannels)
	ch0 := c.BlockOutChannels[0]
	temb := 4 * ch0
	u := &UNet{Config: c, timeInDim: ch0, crossDim: c.CrossAttentionDim.At(0)}
	w := NewWeights(src)

	u.headBlock = w.BeginBlock("time_embedding+conv_in")
	u.TimeEmbedding = loadTimestepEmbedding(w.Sub("time_embedding"), ch0, temb)
	if c.AdditionEmbedType != nil {
		u.addTimeDim = c.AdditionTimeEmbedDim
		u.textEmbDim = c.ProjectionClassEmbedInputDim - 6*c.AdditionTimeEmbedDim
		u.AddEmbedding = loadTimestepEmbedding(w.Sub("add_embedding"), c.ProjectionClassEmbedInputDim, temb)
	}
	u.ConvIn = loadConv2d(w.Sub("conv_in"), c.InChannels, ch0, c.ConvInKernel, 1, c.ConvInKernel/2)

	// diffusers' naming quirk: num_attention_heads defaults to
	// attention_head_dim, so the config's "attention_head_dim" is the number
	// of heads (SD 1.x: 8 heads of 40..160 dims; SD 2.x/XL: 64-dim heads).
	ua := unetAttnArgs{groups: c.NormNumGroups, eps: c.NormEps, crossDim: u.crossDim, linear: c.UseLinearProjection}
	out := ch0
	for i, typ := range c.DownBlockTypes {
		in := out
		out = c.BlockOutChannels[i]
		a := ua
		a.heads, a.layers = c.AttentionHeadDim.At(i), c.TransformerLayersPerBlock.At(i)
		last := i == n-1
		u.DownBlocks = append(u.DownBlocks, loadUNetDownBlock(w.Subf("down_blocks.%d", i), in, out, temb,
			c.LayersPerBlock, typ == "CrossAttnDownBlock2D", !last, a))
		if !last {
			u.downsamples++
		}
	}
	top := c.BlockOutChannels[n-1]
	ma := ua
	ma.heads, ma.layers = c.AttentionHeadDim.At(n-1), c.TransformerLayersPerBlock.At(n-1)
	u.MidBlock = loadUNetMidBlock(w.Sub("mid_block"), top, temb, ma)

	out = top
	for i, typ := range c.UpBlockTypes {
		r := n - 1 - i // the down block this up block mirrors
		prev := out
		out = c.BlockOutChannels[r]
		in := c.BlockOutChannels[max(r-1, 0)]
		a := ua
		a.heads, a.layers = c.AttentionHeadDim.At(r), c.TransformerLayersPerBlock.At(r)
		u.UpBlocks = append(u.UpBlocks, loadUNetUpBlock(w.Subf("up_blocks.%d", i), in, out, prev, temb,
			c.LayersPerBlock+1, typ == "CrossAttnUpBlock2D", i != n-1, a))
	}

	u.tailBlock = w.BeginBlock("conv_norm_out+conv_out")
	u.ConvNormOut = loadGroupNorm(w.Sub("conv_norm_out"), c.NormNumGroups, ch0, c.NormEps)
	u.ConvOut = loadConv2d(w.Sub("conv_out"), ch0, c.OutChannels, c.ConvOutKernel, 1, c.ConvOutKernel/2)

	if err := w.Err(); err != nil {
		return nil, err
	}
	if left := src.Unused(); len(left) > 0 {
		show := left
		if len(show) > 5 {
			show = append(show[:5:5], fmt.Sprintf("... (%d in all)", len(left)))
		}
		return nil, fmt.Errorf("model: %s: %d tensors the config does not account for: %s", src.Name, len(left), strings.Join(show, ", "))
	}
	u.blocks = w.Blocks()
	return u, nil
}

// Blocks lists the offload units in the order Forward needs them.
func (u *UNet) Blocks() []*Block { return u.blocks }

// Bytes is the device size of all weights.
func (u *UNet) Bytes() int64 {
	var n int64
	for _, b := range u.blocks {
		n += b.Bytes()
	}
	return n
}

// Downsampling is the factor between the latent and the smallest feature
// map (2^number of downsamplers).
func (u *UNet) Downsampling() int { return 1 << u.downsamples }

// Forward predicts the noise (or v) for latents x [B, in_channels, h, w] at
// timestep, given context [B, L, cross_attention_dim] (B = 2 for
// classifier-free guidance: uncond and cond rows in one call). added is
// required when the config has addition_embed_type "text_time" and must be
// nil otherwise. The result is [B, out_channels, h, w]; rec holds the first
// error. Any h and w work: when they are not multiples of Downsampling, the
// upsamplers resize to the skip connections' sizes as diffusers does.
func (u *UNet) Forward(rec *engine.Rec, res Residency, x *engine.Tensor, timestep float64,
	context *engine.Tensor, added *AddedCond) *engine.Tensor {
	if rec.Err() != nil {
		return nil
	}
	if x == nil || context == nil {
		return rec.Fail(errors.New("model: unet: nil sample or context"))
	}
	c := u.Config
	if len(x.Shape) != 4 || x.Shape[1] != c.InChannels {
		return rec.Fail(&engine.ShapeError{Op: "unet", Tensor: x.Name, Got: x.Shape.String(),
			Want: fmt.Sprintf("[B, %d, h, w]", c.InChannels)})
	}
	b := x.Shape[0]
	if len(context.Shape) != 3 || context.Shape[0] != b || context.Shape[2] != u.crossDim {
		return rec.Fail(&engine.ShapeError{Op: "unet", Tensor: context.Name, Got: context.Shape.String(),
			Want: fmt.Sprintf("[%d, L, %d]", b, u.crossDim)})
	}

	if !needBlock(rec, res, "unet", u.headBlock) {
		return nil
	}
	emb := u.timeEmbedding(rec, b, timestep, added) // [B, 4*ch0], already through SiLU
	defer rec.Free(emb)

	h := u.ConvIn.Forward(rec, x) // [B, ch0, h, w]
	skips := []*engine.Tensor{h}
	for _, d := range u.DownBlocks {
		var s []*engine.Tensor
		h, s = d.Forward(rec, res, h, emb, context) // [B, ch_i, h/2^i, w/2^i]
		skips = append(skips, s...)
		if rec.Err() != nil {
			rec.Free(skips...)
			return nil
		}
	}
	h = u.MidBlock.Forward(rec, res, h, emb, context) // [B, ch_top, h/2^n, w/2^n]

	for i, up := range u.UpBlocks {
		k := len(up.Resnets)
		mine := skips[len(skips)-k:]
		skips = skips[:len(skips)-k]
		var size [2]int
		if i < len(u.UpBlocks)-1 && len(skips) > 0 && skips[len(skips)-1] != nil {
			// Upsample to the next skip's size: 2x, or 2x-1 when the map
			// there had an odd side (diffusers' upsample_size).
			s := skips[len(skips)-1].Shape
			size = [2]int{s[2], s[3]}
		}
		h = up.Forward(rec, res, h, mine, emb, context, size)
		if rec.Err() != nil {
			rec.Free(skips...)
			return nil
		}
	}

	if !needBlock(rec, res, "unet", u.tailBlock) {
		rec.Free(h)
		return nil
	}
	n := u.ConvNormOut.Forward(rec, h, true) // [B, ch0, h, w]
	rec.Free(h)
	out := u.ConvOut.Forward(rec, n) // [B, out_channels, h, w]
	rec.Free(n)
	return out
}

// timeEmbedding computes SiLU(time_embedding(t) [+ add_embedding(text,
// time_ids)]) [B, 4*ch0]: every resnet applies SiLU to the embedding before
// its projection, so it is done once here.
func (u *UNet) timeEmbedding(rec *engine.Rec, b int, t float64, added *AddedCond) *engine.Tensor {
	feat := timestepFeatures(t, u.timeInDim, u.Config.FlipSinToCos, u.Config.FreqShift)
	rows := make([]float32, 0, b*len(feat))
	for range b {
		rows = append(rows, feat...)
	}
	f := rec.Write("unet.time_proj", rows, b, u.timeInDim) // [B, ch0]
	emb := u.TimeEmbedding.Forward(rec, f)                 // [B, 4*ch0]
	rec.Free(f)

	switch {
	case u.AddEmbedding == nil && added != nil:
		rec.Free(emb)
		return rec.Fail(errors.New("model: unet: added conditioning given, but the config has no addition_embed_type"))
	case u.AddEmbedding != nil:
		a := u.addedEmbedding(rec, b, added)
		rec.AddInPlace(emb, a)
		rec.Free(a)
	}
	return rec.UnaryInPlace(emb, engine.SiLU)
}

// addedEmbedding is SDXL's add_embedding(concat(text_embeds, time id
// features)) [B, 4*ch0].
func (u *UNet) addedEmbedding(rec *engine.Rec, b int, added *AddedCond) *engine.Tensor {
	if added == nil || added.TextEmbeds == nil {
		return rec.Fail(errors.New("model: unet: addition_embed_type text_time needs text_embeds and time_ids"))
	}
	te := added.TextEmbeds
	if err := engine.WantShape("unet text_embeds", te, b, u.textEmbDim); err != nil {
		return rec.Fail(err)
	}
	if len(added.TimeIDs) != 1 && len(added.TimeIDs) != b {
		return rec.Fail(fmt.Errorf("model: unet: %d rows of time_ids for batch %d", len(added.TimeIDs), b))
	}
	d := u.addTimeDim
	ids := make([]float32, 0, b*6*d)
	for i := range b {
		row := added.TimeIDs[min(i, len(added.TimeIDs)-1)]
		for _, v := range row {
			ids = append(ids, timestepFeatures(v, d, u.Config.FlipSinToCos, u.Config.FreqShift)...)
		}
	}
	tf := rec.Write("unet.add_time_proj", ids, b, 6*d) // [B, 6*d]
	cat := rec.Concat("unet.add_embeds", te, tf)       // [B, P + 6*d]
	rec.Free(tf)
	a := u.AddEmbedding.Forward(rec, cat) // [B, 4*ch0]
	rec.Free(cat)
	return a
}

// timestepFeatures is diffusers' get_timestep_embedding for one value,
// rounded to float32 at the steps where torch computes in float32, so that
// large timesteps give the same phases: exponent_i = -ln(10000) i /
// (half - shift), features = [sin(t e^exponent), cos(...)] (cos first when
// flip).
func timestepFeatures(t float64, dim int, flip bool, shift float64) []float32 {
	half := dim / 2
	out := make([]float32, dim)
	tf := float32(t)
	for i := range half {
		e := float32(float32(-math.Log(10000)) * float32(i))
		e = e / float32(float64(half)-shift)
		freq := float32(math.Exp(float64(e)))
		arg := float64(tf * freq)
		s, c := float32(math.Sin(arg)), float32(math.Cos(arg))
		if flip {
			out[i], out[half+i] = c, s
		} else {
			out[i], out[half+i] = s, c
		}
	}
	return out
}
