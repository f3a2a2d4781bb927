package model

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/zimage/zimage/engine"
)

// VAEEncoder is the encoding half of diffusers' AutoencoderKL
// (diffusers/models/autoencoders/vae.py: Encoder, DownEncoderBlock2D,
// Downsample2D; autoencoder_kl.py: quant_conv and
// DiagonalGaussianDistribution). Fields mirror the keys encoder.* and
// quant_conv.* of the checkpoint the decoder reads. Everything comes from
// the config, so the same code serves SD 1.x/2.x, SDXL and the FLUX VAE
// (16 latent channels, no quant_conv, a shift_factor).
type VAEEncoder struct {
	Config      VAEConfig // with diffusers' defaults filled in
	ConvIn      *Conv2d   // encoder.conv_in
	DownBlocks  []*VAEDownBlock
	MidBlock    *VAEMidBlock
	ConvNormOut *GroupNorm
	ConvOut     *Conv2d // to 2*latent_channels: mean and log-variance
	QuantConv   *Conv2d // nil when use_quant_conv is false

	blocks []*Block
}

// VAEDownBlock is DownEncoderBlock2D: layers_per_block resnets, then (all
// but the last block) Downsample2D's stride-2 3x3 conv.
type VAEDownBlock struct {
	Resnets []*VAEResnet
	// Downsamplers holds downsamplers.0.conv. diffusers pads its input by
	// one pixel at the bottom and right only (F.pad (0, 1, 0, 1)); the
	// engine's convolutions pad symmetrically, so the 3x3 kernel is stored
	// as 4x4 with a zero first row and column and run with padding 1,
	// which reads exactly the same pixels (see loadDownsampler).
	Downsamplers []*Conv2d
}

// vaeLogVarMin and vaeLogVarMax are DiagonalGaussianDistribution's clamp.
const vaeLogVarMin, vaeLogVarMax = -30, 20

// LoadVAEEncoder builds the encoder from src (a whole AutoencoderKL
// checkpoint; decoder keys stay unused), checking every tensor against cfg.
func LoadVAEEncoder(src *Source, cfg *VAEConfig) (*VAEEncoder, error) {
	if cfg == nil {
		return nil, fmt.Errorf("model: %s: no VAE config", src.Name)
	}
	c := vaeDefaults(cfg)
	if err := checkVAEConfig(src, &c); err != nil {
		return nil, err
	}
	for i, t := range c.DownBlockTypes {
		if t != "DownEncoderBlock2D" {
			return nil, fmt.Errorf("model: %s: config down_block_types[%d] %q not supported (want DownEncoderBlock2D)", src.Name, i, t)
		}
	}
	if len(c.DownBlockTypes) != 0 && len(c.DownBlockTypes) != len(c.BlockOutChannels) {
		return nil, fmt.Errorf("model: %s: config has %d down_block_types for %d block_out_channels", src.Name, len(c.DownBlockTypes), len(c.BlockOutChannels))
	}
	g := c.NormNumGroups
	lc := c.LatentChannels
	n := len(c.BlockOutChannels)
	top := c.BlockOutChannels[n-1]

	w := NewWeights(src)
	e := &VAEEncoder{Config: c}
	d := w.Sub("encoder")
	e.blocks = append(e.blocks, w.BeginBlock("encoder.conv_in"))
	e.ConvIn = loadConv2d(d.Sub("conv_in"), c.InChannels, c.BlockOutChannels[0], 3, 1, 1)

	prev := c.BlockOutChannels[0]
	for i, out := range c.BlockOutChannels {
		bw := d.Subf("down_blocks.%d", i)
		e.blocks = append(e.blocks, w.BeginBlock(bw.Prefix()))
		db := &VAEDownBlock{}
		for j := range c.LayersPerBlock {
			in := out
			if j == 0 {
				in = prev
			}
			db.Resnets = append(db.Resnets, loadVAEResnet(bw.Subf("resnets.%d", j), in, out, g))
		}
		if i < n-1 {
			db.Downsamplers = []*Conv2d{loadDownsampler(bw.Sub("downsamplers.0.conv"), out)}
		}
		e.DownBlocks = append(e.DownBlocks, db)
		prev = out
	}

	e.blocks = append(e.blocks, w.BeginBlock("encoder.mid_block"))
	e.MidBlock = loadVAEMidBlock(d.Sub("mid_block"), &c, top)

	e.blocks = append(e.blocks, w.BeginBlock("encoder.conv_out"))
	e.ConvNormOut = loadGroupNorm(d.Sub("conv_norm_out"), g, top, vaeEps)
	e.ConvOut = loadConv2d(d.Sub("conv_out"), top, 2*lc, 3, 1, 1)
	if c.UseQuantConv == nil || *c.UseQuantConv {
		e.QuantConv = loadConv2d(w.Sub("quant_conv"), 2*lc, 2*lc, 1, 1, 0)
	}
	if err := w.Err(); err != nil {
		return nil, err
	}
	return e, nil
}

// loadDownsampler loads Downsample2D's conv (padding 0, stride 2, input
// padded by F.pad (0, 1, 0, 1)) as a 4x4 stride-2 conv with padding 1
// whose first row and column are zero: output pixel i then reads padded
// rows 2i..2i+3, that is input rows 2i-1..2i+2, and the zero row drops row
// 2i-1, leaving rows 2i..2i+2 with the bottom pad where diffusers has it.
// Sizes agree too: floor((H+1-3)/2)+1 = floor((H+2-4)/2)+1. The padded
// copy costs 16/9 of the conv's multiplies (three convs of the encoder,
// about 4 % of its work at SD sizes) and needs no pad op in the engine.
func loadDownsampler(w *Weights, ch int) *Conv2d {
	c := loadConv2d(w, ch, ch, 3, 2, 0)
	padKernelTopLeft(c.Weight)
	c.Pad = 1
	return c
}

// padKernelTopLeft makes p, a [O, C, 3, 3] conv weight, a [O, C, 4, 4] one
// with a zero first row and column; the checkpoint is read (and padded)
// at upload. A block-quantized (GGUF) weight is decoded first. A weight
// that is missing or misshapen is left alone: loading has recorded the
// error.
func padKernelTopLeft(p *Param) {
	e := p.src
	if e == nil || len(e.Shape) != 4 || e.Shape[2] != 3 || e.Shape[3] != 3 {
		return
	}
	o, c := e.Shape[0], e.Shape[1]
	pe := &Entry{Key: e.Key, DType: e.DType, Shape: []int{o, c, 4, 4}, File: e.File}
	// pad copies the 3x3 taps of elements of es bytes into a zeroed 4x4
	// layout (zero is all-zero bytes in F16, BF16 and F32); nil when the
	// file is closed.
	pad := func(src []byte, es int) []byte {
		if len(src) < o*c*9*es {
			return nil
		}
		out := make([]byte, o*c*16*es)
		for k := range o * c {
			for y := range 3 {
				from := (k*9 + y*3) * es
				to := (k*16 + (y+1)*4 + 1) * es
				copy(out[to:to+3*es], src[from:from+3*es])
			}
		}
		return out
	}
	if e.Quantized() {
		pe = e.decoded(pe, func(v []float32) []float32 {
			b := pad(float32Bytes(v), 4)
			out := make([]float32, len(b)/4)
			for i := range out {
				out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			}
			return out
		})
	} else {
		es := e.DType.Size()
		pe.data = func() []byte { return pad(e.Bytes(), es) }
	}
	p.src = pe
	p.Shape = engine.Shape{o, c, 4, 4}
}

// Blocks lists the offload blocks in execution order: conv_in, each down
// block, the mid block, conv_out (with quant_conv).
func (e *VAEEncoder) Blocks() []*Block { return e.blocks }

// Scale is the factor from the image to the latent: 2^(blocks-1).
func (e *VAEEncoder) Scale() int { return 1 << (len(e.DownBlocks) - 1) }

// Encode runs the encoder on images [B, in_channels, H, W] in [-1, 1] (see
// ImageToPixels) and returns the latent distribution on the host, or nil
// after an error (recorded in rec; NaN or Inf in the output is a
// *NonFiniteOutputError). H and W should be multiples of Scale(), as the
// pipelines make them; others are encoded as diffusers would (the
// downsampling floors).
func (e *VAEEncoder) Encode(rec *engine.Rec, res Residency, pixels *engine.Tensor) *LatentDist {
	m := e.encode(rec, res, pixels, nil)
	if m == nil {
		return nil
	}
	data, err := rec.B.Read(m)
	rec.Free(m)
	if err != nil {
		rec.Fail(fmt.Errorf("model: VAE encode: read output: %w", err))
		return nil
	}
	d, err := NewLatentDist(data, m.Shape)
	if err != nil {
		rec.Fail(err)
		return nil
	}
	return d
}

// encode runs the encoder and quant_conv, returning the moments [B,
// 2*latent_channels, h, w] (mean, then log-variance); tn (nil outside
// tiled encoding) takes over the GroupNorms.
func (e *VAEEncoder) encode(rec *engine.Rec, res Residency, x *engine.Tensor, tn *tileNorm) *engine.Tensor {
	if rec.Err() != nil {
		return nil
	}
	if x == nil || len(x.Shape) != 4 || x.Shape[1] != e.Config.InChannels || x.Shape[2] < 1 || x.Shape[3] < 1 {
		got := "nil"
		if x != nil {
			got = x.Shape.String()
		}
		return rec.Fail(fmt.Errorf("model: VAE encode: pixels are %s, want [B, %d, H, W]", got, e.Config.InChannels))
	}
	if !needBlock(rec, res, "VAE encoder", e.blocks[0]) {
		return nil
	}
	h := e.ConvIn.Forward(rec, x) // [B, C_0, H, W]
	for i, db := range e.DownBlocks {
		if !needBlock(rec, res, "VAE encoder", e.blocks[1+i]) {
			rec.Free(h)
			return nil
		}
		for _, r := range db.Resnets {
			h = r.forward(rec, h, tn) // [B, C_i, H_i, W_i]
		}
		for _, down := range db.Downsamplers {
			y := down.Forward(rec, h) // [B, C_i, H_i/2, W_i/2]
			rec.Free(h)
			h = y
		}
	}
	if !needBlock(rec, res, "VAE encoder", e.blocks[len(e.blocks)-2]) {
		rec.Free(h)
		return nil
	}
	h = e.MidBlock.forward(rec, h, tn)
	if !needBlock(rec, res, "VAE encoder", e.blocks[len(e.blocks)-1]) {
		rec.Free(h)
		return nil
	}
	n := tn.norm(rec, e.ConvNormOut, h, true) // GroupNorm + SiLU
	rec.Free(h)
	m := e.ConvOut.Forward(rec, n) // [B, 2C, h, w]
	rec.Free(n)
	if e.QuantConv != nil {
		q := e.QuantConv.Forward(rec, m)
		rec.Free(m)
		m = q
	}
	if rec.Err() != nil {
		rec.Free(m)
		return nil
	}
	return m
}

// ToLatents maps a sample (or the mode) of the distribution to the
// diffusion model's latent space, as the img2img pipelines do:
// (z - shift_factor) * scaling_factor. It is the inverse of what Decode
// applies.
func (e *VAEEncoder) ToLatents(z []float32) []float32 {
	shift := 0.0
	if e.Config.ShiftFactor != nil {
		shift = *e.Config.ShiftFactor
	}
	out := make([]float32, len(z))
	sf, sh := float32(e.Config.ScalingFactor), float32(shift)
	for i, v := range z {
		out[i] = float32(v-sh) * sf
	}
	return out
}

// LatentDist is diffusers' DiagonalGaussianDistribution of one encode, on
// the host: per element of [B, C, h, w], the mean, the log-variance clamped
// to [-30, 20], and std = exp(logvar / 2).
type LatentDist struct {
	Shape             engine.Shape // [B, C, h, w]
	Mean, LogVar, Std []float32
}

// NewLatentDist splits moments [B, 2C, h, w] (the encoder's output: C
// means, then C log-variances) into a distribution. NaN or Inf is a
// *NonFiniteOutputError.
func NewLatentDist(moments []float32, shape engine.Shape) (*LatentDist, error) {
	if len(shape) != 4 || shape[1]%2 != 0 || shape.Valid() != nil || len(moments) != shape.NumElem() {
		return nil, fmt.Errorf("model: VAE moments: %d values of shape %v, want [B, 2C, h, w]", len(moments), shape)
	}
	if err := finiteFloats(moments, shape, "VAE encoder output"); err != nil {
		return nil, err
	}
	b, c2, hw := shape[0], shape[1], shape[2]*shape[3]
	c := c2 / 2
	d := &LatentDist{Shape: engine.Shape{b, c, shape[2], shape[3]}}
	n := b * c * hw
	d.Mean, d.LogVar, d.Std = make([]float32, n), make([]float32, n), make([]float32, n)
	for i := range b {
		src := moments[i*c2*hw:]
		copy(d.Mean[i*c*hw:(i+1)*c*hw], src[:c*hw])
		copy(d.LogVar[i*c*hw:(i+1)*c*hw], src[c*hw:2*c*hw])
	}
	for i, lv := range d.LogVar {
		lv = min(max(lv, vaeLogVarMin), vaeLogVarMax)
		d.LogVar[i] = lv
		d.Std[i] = float32(math.Exp(float64(0.5 * lv)))
	}
	return d, nil
}

// NormalSource draws standard normal values; sched/rng's torch-compatible
// Generator is one (its Normal fills a slice as torch.randn of that many
// elements would).
type NormalSource interface {
	Normal(dst []float32)
}

// Sample is latent_dist.sample(generator): mean + std * noise, with the
// noise drawn from g as one torch.randn(mean.shape, generator=g) (one draw
// for the whole batch, as diffusers' randn_tensor makes with a single
// generator). It returns the sample and the noise.
func (d *LatentDist) Sample(g NormalSource) (sample, noise []float32) {
	noise = make([]float32, len(d.Mean))
	g.Normal(noise)
	s, _ := d.SampleWith(noise)
	return s, noise
}

// SampleWith is mean + std * noise for given noise of the mean's size.
func (d *LatentDist) SampleWith(noise []float32) ([]float32, error) {
	if len(noise) != len(d.Mean) {
		return nil, fmt.Errorf("model: VAE latent sample: %d noise values for %d latents %v", len(noise), len(d.Mean), d.Shape)
	}
	out := make([]float32, len(d.Mean))
	for i, m := range d.Mean {
		out[i] = m + float32(d.Std[i]*noise[i]) // torch rounds the product before the sum
	}
	return out, nil
}

// Mode is latent_dist.mode(): the mean (what retrieve_latents(...,
// sample_mode="argmax") returns).
func (d *LatentDist) Mode() []float32 { return append([]float32(nil), d.Mean...) }

// VAEEncodeMaxTensorBytes is the largest single activation Encode
// allocates for [batch, 3, H, W] pixels: the first block's maps at full
// resolution (block_out_channels[0] channels: 128 MiB at 512x512 for SD's
// 128, the binding limit of many Vulkan devices), or a deeper block's.
func VAEEncodeMaxTensorBytes(cfg *VAEConfig, batch, height, width int) int64 {
	c := vaeDefaults(cfg)
	pixels := int64(batch) * int64(height) * int64(width)
	var big int64
	prev := c.BlockOutChannels[0]
	for i, ch := range c.BlockOutChannels {
		big = max(big, int64(max(prev, ch))*pixels)
		if i < len(c.BlockOutChannels)-1 {
			pixels = int64(batch) * int64((height+1)>>(i+1)) * int64((width+1)>>(i+1))
		}
		prev = ch
	}
	return 4 * big
}

// VAEEncodeBytes estimates the peak device bytes of activations when Encode
// runs on [batch, 3, H, W] pixels, as VAEDecodeBytes does for the decoder:
// a resnet holding its input, a normalised copy and a convolution output at
// each level, the downsampler's input and output, and the mid block's
// attention with a materialised [B, hw, hw] score matrix.
func VAEEncodeBytes(cfg *VAEConfig, batch, height, width int) int64 {
	c := vaeDefaults(cfg)
	n := len(c.BlockOutChannels)
	px := func(level int) int64 {
		return int64(batch) * int64((height+(1<<level)-1)>>level) * int64((width+(1<<level)-1)>>level)
	}
	resnet := func(in, out int, pixels int64) int64 {
		return max(int64(2*in+out), int64(in+2*out)) * pixels
	}
	peak := int64(c.InChannels+c.BlockOutChannels[0]) * px(0)
	prev := c.BlockOutChannels[0]
	for i, ch := range c.BlockOutChannels {
		peak = max(peak, resnet(prev, ch, px(i)))
		if i < n-1 {
			peak = max(peak, int64(ch)*(px(i)+px(i+1)))
		}
		prev = ch
	}
	top := c.BlockOutChannels[n-1]
	low := px(n - 1)
	if c.MidBlockAddAttention == nil || *c.MidBlockAddAttention {
		hw := low / int64(batch)
		peak = max(peak, int64(top)*low*4+int64(batch)*hw*hw)
	}
	return 4 * peak
}
