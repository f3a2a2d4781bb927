package model

import (
	"fmt"
	"math"

	"github.com/zimage/zimage/engine"
)

// The UNet's building blocks, after diffusers' models/resnet.py,
// models/attention.py, models/transformers/transformer_2d.py,
// models/upsampling.py, models/downsampling.py and
// models/unets/unet_2d_blocks.py. Forward methods never free their inputs:
// the caller knows whether an input is a skip connection that must live on.

// unetAttnArgs are the Transformer2DModel settings a block passes down.
type unetAttnArgs struct {
	heads, layers int // attention heads (config "attention_head_dim"), transformer_layers_per_block
	groups        int
	eps           float32
	crossDim      int
	linear        bool // use_linear_projection
}

// UNetResnet is ResnetBlock2D with a time-embedding projection:
// out = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(temb)))).
type UNetResnet struct {
	Norm1        *GroupNorm
	Conv1        *Conv2d
	TimeEmbProj  *Linear
	Norm2        *GroupNorm
	Conv2        *Conv2d
	ConvShortcut *Conv2d // 1x1, only when in != out
	block        *Block
}

func loadUNetResnet(w *Weights, in, out, temb int, a unetAttnArgs) *UNetResnet {
	r := &UNetResnet{block: w.BeginBlock(w.Prefix())}
	r.Norm1 = loadGroupNorm(w.Sub("norm1"), a.groups, in, a.eps)
	r.Conv1 = loadConv2d(w.Sub("conv1"), in, out, 3, 1, 1)
	r.TimeEmbProj = loadLinear(w.Sub("time_emb_proj"), temb, out, true)
	r.Norm2 = loadGroupNorm(w.Sub("norm2"), a.groups, out, a.eps)
	r.Conv2 = loadConv2d(w.Sub("conv2"), out, out, 3, 1, 1)
	if in != out {
		r.ConvShortcut = loadConv2d(w.Sub("conv_shortcut"), in, out, 1, 1, 0)
	}
	return r
}

// Forward: x [B, in, H, W], temb = SiLU(time embedding) [B, T] -> [B, out, H, W].
func (r *UNetResnet) Forward(rec *engine.Rec, res Residency, x, temb *engine.Tensor) *engine.Tensor {
	if !needBlock(rec, res, "unet", r.block) {
		return nil
	}
	n := r.Norm1.Forward(rec, x, true) // [B, in, H, W]
	h := r.Conv1.Forward(rec, n)       // [B, out, H, W]
	rec.Free(n)
	t := r.TimeEmbProj.Forward(rec, temb) // [B, out]
	if t != nil {
		rec.AddInPlace(h, rec.Reshape(t, t.Shape[0], t.Shape[1], 1, 1))
	}
	rec.Free(t)
	n = r.Norm2.Forward(rec, h, true)
	rec.Free(h)
	out := r.Conv2.Forward(rec, n) // [B, out, H, W]
	rec.Free(n)
	if r.ConvShortcut != nil {
		s := r.ConvShortcut.Forward(rec, x) // [B, out, H, W]
		rec.AddInPlace(out, s)
		rec.Free(s)
	} else {
		rec.AddInPlace(out, x)
	}
	return out
}

// UNetTransformer is Transformer2DModel for continuous inputs: GroupNorm
// (eps 1e-6), proj_in, BasicTransformerBlocks on the tokens, proj_out, plus
// the input. proj_in/proj_out are 1x1 convolutions (SD 1.x) or linears
// (use_linear_projection); both are the same per-pixel matrix, so both run
// as a linear on the token layout.
type UNetTransformer struct {
	Norm              *GroupNorm
	ProjIn            *Linear
	TransformerBlocks []*BasicTransformerBlock
	ProjOut           *Linear
	conv              bool // proj weights are [C, C, 1, 1]
	inBlock, outBlock *Block
}

func loadUNetTransformer(w *Weights, ch int, a unetAttnArgs) *UNetTransformer {
	t := &UNetTransformer{conv: !a.linear, inBlock: w.BeginBlock(w.Prefix() + ".proj_in")}
	t.Norm = loadGroupNorm(w.Sub("norm"), a.groups, ch, 1e-6)
	t.ProjIn = loadProj(w.Sub("proj_in"), ch, ch, t.conv)
	for i := range a.layers {
		bw := w.Subf("transformer_blocks.%d", i)
		blk := bw.BeginBlock(bw.Prefix())
		tb := loadBasicTransformerBlock(bw, ch, a.heads, a.crossDim)
		tb.block = blk
		t.TransformerBlocks = append(t.TransformerBlocks, tb)
	}
	t.outBlock = w.BeginBlock(w.Prefix() + ".proj_out")
	t.ProjOut = loadProj(w.Sub("proj_out"), ch, ch, t.conv)
	return t
}

func loadProj(w *Weights, in, out int, conv bool) *Linear {
	if !conv {
		return loadLinear(w, in, out, true)
	}
	return &Linear{Weight: w.Param("weight", out, in, 1, 1), Bias: w.Param("bias", out)}
}

// proj applies a 1x1-conv or linear projection to tokens x [B, L, in].
func (t *UNetTransformer) proj(rec *engine.Rec, l *Linear, x *engine.Tensor) *engine.Tensor {
	wt := l.Weight.T
	if t.conv && wt != nil {
		wt = rec.Reshape(wt, wt.Shape[0], wt.Shape[1]) // [out, in, 1, 1] -> [out, in]
	}
	y := rec.Linear(l.Weight.Key, x, wt, tensorOf(l.Bias))
	if l.LoRA != nil {
		l.LoRA.addLinear(rec, y, x)
	}
	return y
}

// Forward: x [B, C, H, W], context [B, L, crossDim] -> [B, C, H, W].
func (t *UNetTransformer) Forward(rec *engine.Rec, res Residency, x, context *engine.Tensor) *engine.Tensor {
	if !needBlock(rec, res, "unet", t.inBlock) {
		return nil
	}
	b, c, hh, ww := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	n := t.Norm.Forward(rec, x, false)                             // [B, C, H, W]
	tok := rec.Permute(t.Norm.Weight.Key+".tokens", n, 0, 2, 3, 1) // [B, H, W, C]
	rec.Free(n)
	h := t.proj(rec, t.ProjIn, rec.Reshape(tok, b, hh*ww, c)) // [B, HW, C]
	rec.Free(tok)
	for _, tb := range t.TransformerBlocks {
		if !needBlock(rec, res, "unet", tb.block) {
			rec.Free(h)
			return nil
		}
		tb.Forward(rec, h, context) // updates h in place
	}
	if !needBlock(rec, res, "unet", t.outBlock) {
		rec.Free(h)
		return nil
	}
	o := t.proj(rec, t.ProjOut, h) // [B, HW, C]
	rec.Free(h)
	out := rec.Permute(t.ProjOut.Weight.Key+".nchw", rec.Reshape(o, b, hh, ww, c), 0, 3, 1, 2) // [B, C, H, W]
	rec.Free(o)
	rec.AddInPlace(out, x)
	return out
}

// BasicTransformerBlock: self-attention, cross-attention and a GEGLU
// feed-forward, each after a LayerNorm and added to the residual stream.
type BasicTransformerBlock struct {
	Norm1 *LayerNorm
	Attn1 *UNetAttention
	Norm2 *LayerNorm
	Attn2 *UNetAttention
	Norm3 *LayerNorm
	FF    *GEGLUFeedForward
	block *Block
}

func loadBasicTransformerBlock(w *Weights, dim, heads, crossDim int) *BasicTransformerBlock {
	return &BasicTransformerBlock{
		Norm1: loadLayerNorm(w.Sub("norm1"), dim, 1e-5),
		Attn1: loadUNetAttention(w.Sub("attn1"), dim, dim, heads),
		Norm2: loadLayerNorm(w.Sub("norm2"), dim, 1e-5),
		Attn2: loadUNetAttention(w.Sub("attn2"), dim, crossDim, heads),
		Norm3: loadLayerNorm(w.Sub("norm3"), dim, 1e-5),
		FF:    loadGEGLUFeedForward(w.Sub("ff"), dim, 4*dim),
	}
}

// Forward updates h [B, L, dim] in place; context is [B, Lc, crossDim].
func (tb *BasicTransformerBlock) Forward(rec *engine.Rec, h, context *engine.Tensor) {
	n := tb.Norm1.Forward(rec, h)
	a := tb.Attn1.Forward(rec, n, n) // [B, L, dim]
	rec.Free(n)
	rec.AddInPlace(h, a)
	rec.Free(a)

	n = tb.Norm2.Forward(rec, h)
	a = tb.Attn2.Forward(rec, n, context)
	rec.Free(n)
	rec.AddInPlace(h, a)
	rec.Free(a)

	n = tb.Norm3.Forward(rec, h)
	a = tb.FF.Forward(rec, n)
	rec.Free(n)
	rec.AddInPlace(h, a)
	rec.Free(a)
}

// UNetAttention is diffusers' Attention as the UNet uses it: bias-free
// to_q/to_k/to_v, to_out.0 with bias, scale 1/sqrt(head dim).
type UNetAttention struct {
	ToQ, ToK, ToV, ToOut *Linear
	Heads                int
}

func loadUNetAttention(w *Weights, dim, kvDim, heads int) *UNetAttention {
	return &UNetAttention{
		ToQ:   loadLinear(w.Sub("to_q"), dim, dim, false),
		ToK:   loadLinear(w.Sub("to_k"), kvDim, dim, false),
		ToV:   loadLinear(w.Sub("to_v"), kvDim, dim, false),
		ToOut: loadLinear(w.Sub("to_out.0"), dim, dim, true),
		Heads: heads,
	}
}

// Forward: x [B, L, dim] attends to kv [B, Lk, kvDim] -> [B, L, dim].
func (a *UNetAttention) Forward(rec *engine.Rec, x, kv *engine.Tensor) *engine.Tensor {
	q := a.ToQ.Forward(rec, x)  // [B, L, dim]
	k := a.ToK.Forward(rec, kv) // [B, Lk, dim]
	v := a.ToV.Forward(rec, kv) // [B, Lk, dim]
	var o *engine.Tensor
	if q != nil {
		headDim := q.Shape[2] / a.Heads
		o = rec.Attention(a.ToOut.Weight.Key+".attn", q, k, v, engine.AttentionOptions{Heads: a.Heads, Scale: float32(1 / math.Sqrt(float64(headDim)))})
	}
	rec.Free(q, k, v)
	out := a.ToOut.Forward(rec, o) // [B, L, dim]
	rec.Free(o)
	return out
}

// GEGLUFeedForward is diffusers' FeedForward with GEGLU: net.0.proj
// [dim -> 2 inner], x * gelu(gate), net.2 [inner -> dim].
type GEGLUFeedForward struct {
	Proj *Linear // net.0.proj
	Out  *Linear // net.2
}

func loadGEGLUFeedForward(w *Weights, dim, inner int) *GEGLUFeedForward {
	return &GEGLUFeedForward{
		Proj: loadLinear(w.Sub("net.0.proj"), dim, 2*inner, true),
		Out:  loadLinear(w.Sub("net.2"), inner, dim, true),
	}
}

// Forward: x [B, L, dim] -> [B, L, dim].
func (f *GEGLUFeedForward) Forward(rec *engine.Rec, x *engine.Tensor) *engine.Tensor {
	p := f.Proj.Forward(rec, x) // [B, L, 2*inner]
	g := rec.GEGLU(f.Proj.Weight.Key+".geglu", p)
	rec.Free(p)
	out := f.Out.Forward(rec, g) // [B, L, dim]
	rec.Free(g)
	return out
}

// UNetSampler is Downsample2D (3x3 conv, stride 2, pad 1) or Upsample2D
// (nearest resize, then 3x3 conv).
type UNetSampler struct {
	Conv  *Conv2d
	block *Block
}

func loadUNetSampler(w *Weights, ch, stride int) *UNetSampler {
	s := &UNetSampler{block: w.BeginBlock(w.Prefix())}
	s.Conv = loadConv2d(w.Sub("conv"), ch, ch, 3, stride, 1)
	return s
}

// Downsample: x [B, C, H, W] -> [B, C, ceil(H/2), ceil(W/2)].
func (s *UNetSampler) Downsample(rec *engine.Rec, res Residency, x *engine.Tensor) *engine.Tensor {
	if !needBlock(rec, res, "unet", s.block) {
		return nil
	}
	return s.Conv.Forward(rec, x)
}

// Upsample: x [B, C, H, W] -> [B, C, size] (size zero: 2H x 2W); frees x.
func (s *UNetSampler) Upsample(rec *engine.Rec, res Residency, x *engine.Tensor, size [2]int) *engine.Tensor {
	if !needBlock(rec, res, "unet", s.block) {
		rec.Free(x)
		return nil
	}
	u := resizeNearest(rec, s.Conv.Weight.Key+".upsample", x, size)
	rec.Free(x)
	out := s.Conv.Forward(rec, u)
	rec.Free(u)
	return out
}

// resizeNearest is torch's interpolate(mode="nearest"): 2x through
// Upsample2x, any other size as a gather with torch's source index
// floor(dst * in/out) (computed in float32 as torch does).
func resizeNearest(rec *engine.Rec, name string, x *engine.Tensor, size [2]int) *engine.Tensor {
	if x == nil || rec.Err() != nil {
		return nil
	}
	n, c, h, w := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	oh, ow := size[0], size[1]
	if oh == 0 && ow == 0 || oh == 2*h && ow == 2*w {
		return rec.Upsample2x(name, x)
	}
	if oh <= 0 || ow <= 0 || n*c*h*w > math.MaxInt32 {
		return rec.Fail(fmt.Errorf("model: resize %s %v to %dx%d: bad size", x.Name, x.Shape, oh, ow))
	}
	src := func(d, in, out int) int {
		if in == out {
			return d
		}
		return min(int(float32(d)*(float32(in)/float32(out))), in-1)
	}
	ids := make([]int32, 0, n*c*oh*ow)
	for p := range n * c {
		for y := range oh {
			row := p*h*w + src(y, h, oh)*w
			for xx := range ow {
				ids = append(ids, int32(row+src(xx, w, ow)))
			}
		}
	}
	dst := rec.Alloc(name, n, c, oh, ow)
	if dst == nil {
		return nil
	}
	// Gather single elements: the table is x as [N*C*H*W, 1].
	if err := rec.B.Embedding(rec.Reshape(dst, n*c*oh*ow, 1), rec.Reshape(x, n*c*h*w, 1), ids); err != nil {
		rec.Free(dst)
		return rec.Fail(fmt.Errorf("model: resize %s: %w", x.Name, err))
	}
	return dst
}

// UNetDownBlock is CrossAttnDownBlock2D (Attentions set) or DownBlock2D.
type UNetDownBlock struct {
	Resnets     []*UNetResnet
	Attentions  []*UNetTransformer // nil for DownBlock2D
	Downsampler *UNetSampler       // downsamplers.0, nil in the last block
}

func loadUNetDownBlock(w *Weights, in, out, temb, layers int, cross, down bool, a unetAttnArgs) *UNetDownBlock {
	d := &UNetDownBlock{}
	for i := range layers {
		d.Resnets = append(d.Resnets, loadUNetResnet(w.Subf("resnets.%d", i), in, out, temb, a))
		in = out
		if cross {
			d.Attentions = append(d.Attentions, loadUNetTransformer(w.Subf("attentions.%d", i), out, a))
		}
	}
	if down {
		d.Downsampler = loadUNetSampler(w.Sub("downsamplers.0"), out, 2)
	}
	return d
}

// Forward: h [B, in, H, W] -> [B, out, H', W'] and the skip connections
// (every layer's output and the downsampled map; the last one is the result).
func (d *UNetDownBlock) Forward(rec *engine.Rec, res Residency, h, temb, context *engine.Tensor) (*engine.Tensor, []*engine.Tensor) {
	var skips []*engine.Tensor
	for i, r := range d.Resnets {
		y := r.Forward(rec, res, h, temb) // [B, out, H, W]
		if d.Attentions != nil {
			z := d.Attentions[i].Forward(rec, res, y, context)
			rec.Free(y)
			y = z
		}
		skips = append(skips, y)
		h = y
	}
	if d.Downsampler != nil {
		h = d.Downsampler.Downsample(rec, res, h) // [B, out, ceil(H/2), ceil(W/2)]
		skips = append(skips, h)
	}
	return h, skips
}

// UNetMidBlock is UNetMidBlock2DCrossAttn: resnet, (attention, resnet).
type UNetMidBlock struct {
	Resnets    []*UNetResnet
	Attentions []*UNetTransformer
}

func loadUNetMidBlock(w *Weights, ch, temb int, a unetAttnArgs) *UNetMidBlock {
	m := &UNetMidBlock{Resnets: []*UNetResnet{loadUNetResnet(w.Sub("resnets.0"), ch, ch, temb, a)}}
	m.Attentions = append(m.Attentions, loadUNetTransformer(w.Sub("attentions.0"), ch, a))
	m.Resnets = append(m.Resnets, loadUNetResnet(w.Sub("resnets.1"), ch, ch, temb, a))
	return m
}

// Forward: h [B, C, H, W] -> [B, C, H, W]; h (a skip) is kept.
func (m *UNetMidBlock) Forward(rec *engine.Rec, res Residency, h, temb, context *engine.Tensor) *engine.Tensor {
	y := m.Resnets[0].Forward(rec, res, h, temb)
	for i, at := range m.Attentions {
		z := at.Forward(rec, res, y, context)
		rec.Free(y)
		y = m.Resnets[i+1].Forward(rec, res, z, temb)
		rec.Free(z)
	}
	return y
}

// UNetUpBlock is CrossAttnUpBlock2D (Attentions set) or UpBlock2D.
type UNetUpBlock struct {
	Resnets    []*UNetResnet
	Attentions []*UNetTransformer
	Upsampler  *UNetSampler // upsamplers.0, nil in the last block
}

// loadUNetUpBlock: resnet i takes prev (i = 0) or out channels, plus its
// skip: in channels for the last resnet, out channels otherwise.
func loadUNetUpBlock(w *Weights, in, out, prev, temb, layers int, cross, up bool, a unetAttnArgs) *UNetUpBlock {
	u := &UNetUpBlock{}
	for i := range layers {
		skip := out
		if i == layers-1 {
			skip = in
		}
		rin := out
		if i == 0 {
			rin = prev
		}
		u.Resnets = append(u.Resnets, loadUNetResnet(w.Subf("resnets.%d", i), rin+skip, out, temb, a))
		if cross {
			u.Attentions = append(u.Attentions, loadUNetTransformer(w.Subf("attentions.%d", i), out, a))
		}
	}
	if up {
		u.Upsampler = loadUNetSampler(w.Sub("upsamplers.0"), out, 1)
	}
	return u
}

// Forward: h [B, prev, H, W] with skips (consumed last first) -> [B, out,
// size] when upsampling (size zero: 2H x 2W), else [B, out, H, W]. Frees h
// and the skips.
func (u *UNetUpBlock) Forward(rec *engine.Rec, res Residency, h *engine.Tensor, skips []*engine.Tensor,
	temb, context *engine.Tensor, size [2]int) *engine.Tensor {
	for i, r := range u.Resnets {
		s := skips[len(skips)-1-i]
		cat := rec.Concat(r.Norm1.Weight.Key+".in", h, s) // [B, Ch+Cs, H, W]
		rec.Free(h, s)
		skips[len(skips)-1-i] = nil
		h = r.Forward(rec, res, cat, temb) // [B, out, H, W]
		rec.Free(cat)
		if u.Attentions != nil {
			z := u.Attentions[i].Forward(rec, res, h, context)
			rec.Free(h)
			h = z
		}
	}
	if rec.Err() != nil {
		rec.Free(h)
		rec.Free(skips...)
		return nil
	}
	if u.Upsampler != nil {
		h = u.Upsampler.Upsample(rec, res, h, size) // [B, out, size]
	}
	return h
}
