package model

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/model/safetensors"
)

// TAESD is diffusers' AutoencoderTiny (autoencoder_tiny.py; EncoderTiny and
// DecoderTiny in vae.py; AutoencoderTinyBlock in unet_2d_blocks.py), the
// Tiny AutoEncoder for Stable Diffusion from madebyollin/taesd: plain 3x3
// convs, ReLU and nearest upsampling, no normalisation and no attention,
// about 1.2 M parameters per half at 64 channels. It works on the
// diffusion latents directly (scaling_factor 1.0) and maps images in
// [-1, 1] as the full VAE does.
type TAESD struct {
	Config  TAESDConfig
	Encoder []*TinyLayer // encoder.layers.<i>; nil when the files hold no encoder
	Decoder []*TinyLayer // decoder.layers.<i>; nil when they hold no decoder

	encBlock, decBlock *Block
	files              []*safetensors.File
}

// TAESDConfig is diffusers' AutoencoderTiny config.json.
type TAESDConfig struct {
	ClassName               string   `json:"_class_name"`
	InChannels              int      `json:"in_channels"`
	OutChannels             int      `json:"out_channels"`
	EncoderBlockOutChannels []int    `json:"encoder_block_out_channels"`
	DecoderBlockOutChannels []int    `json:"decoder_block_out_channels"`
	ActFn                   string   `json:"act_fn"`
	UpsampleFn              string   `json:"upsample_fn"`
	LatentChannels          int      `json:"latent_channels"`
	UpsamplingScalingFactor int      `json:"upsampling_scaling_factor"`
	NumEncoderBlocks        []int    `json:"num_encoder_blocks"`
	NumDecoderBlocks        []int    `json:"num_decoder_blocks"`
	LatentMagnitude         float64  `json:"latent_magnitude"`
	LatentShift             float64  `json:"latent_shift"`
	ScalingFactor           float64  `json:"scaling_factor"`
	ShiftFactor             *float64 `json:"shift_factor"`
}

// TinyLayer is one entry of EncoderTiny's or DecoderTiny's nn.Sequential:
// exactly one of a conv, a block, ReLU or a nearest 2x upsample.
type TinyLayer struct {
	Conv     *Conv2d    // layers.<i>.weight (and .bias)
	Block    *TinyBlock // layers.<i>.conv.*
	ReLU     bool
	Upsample bool
}

// TinyBlock is AutoencoderTinyBlock: relu(conv(relu(conv(relu(conv(x))))) +
// skip(x)) with 3x3 convs conv.0, conv.2, conv.4 and a 1x1 skip without
// bias when the channel count changes.
type TinyBlock struct {
	Conv [3]*Conv2d
	Skip *Conv2d
}

// taesdDefaults fills in AutoencoderTiny's defaults.
func taesdDefaults(cfg *TAESDConfig) TAESDConfig {
	c := *cfg
	if c.InChannels == 0 {
		c.InChannels = 3
	}
	if c.OutChannels == 0 {
		c.OutChannels = 3
	}
	if c.LatentChannels == 0 {
		c.LatentChannels = 4
	}
	if len(c.EncoderBlockOutChannels) == 0 {
		c.EncoderBlockOutChannels = []int{64, 64, 64, 64}
	}
	if len(c.DecoderBlockOutChannels) == 0 {
		c.DecoderBlockOutChannels = []int{64, 64, 64, 64}
	}
	if len(c.NumEncoderBlocks) == 0 {
		c.NumEncoderBlocks = []int{1, 3, 3, 3}
	}
	if len(c.NumDecoderBlocks) == 0 {
		c.NumDecoderBlocks = []int{3, 3, 3, 1}
	}
	if c.ActFn == "" {
		c.ActFn = "relu"
	}
	if c.UpsampleFn == "" {
		c.UpsampleFn = "nearest"
	}
	if c.UpsamplingScalingFactor == 0 {
		c.UpsamplingScalingFactor = 2
	}
	if c.LatentMagnitude == 0 {
		c.LatentMagnitude = 3
	}
	if c.LatentShift == 0 {
		c.LatentShift = 0.5
	}
	if c.ScalingFactor == 0 {
		c.ScalingFactor = 1
	}
	return c
}

func (c *TAESDConfig) check(name string) error {
	switch {
	case c.ClassName != "" && c.ClassName != "AutoencoderTiny":
		return fmt.Errorf("model: %s: config _class_name %q, want AutoencoderTiny", name, c.ClassName)
	case c.ActFn != "relu":
		return fmt.Errorf("model: %s: config act_fn %q not supported (want relu)", name, c.ActFn)
	case c.UpsampleFn != "nearest" || c.UpsamplingScalingFactor != 2:
		return fmt.Errorf("model: %s: config upsample_fn %q x%d not supported (want nearest x2)", name, c.UpsampleFn, c.UpsamplingScalingFactor)
	case len(c.EncoderBlockOutChannels) != len(c.NumEncoderBlocks) || len(c.DecoderBlockOutChannels) != len(c.NumDecoderBlocks):
		return fmt.Errorf("model: %s: config block_out_channels and num_*_blocks differ in length", name)
	case c.ScalingFactor <= 0:
		return fmt.Errorf("model: %s: config scaling_factor %v must be positive", name, c.ScalingFactor)
	}
	for _, ch := range append(append([]int{}, c.EncoderBlockOutChannels...), c.DecoderBlockOutChannels...) {
		if ch <= 0 {
			return fmt.Errorf("model: %s: config block_out_channels must be positive", name)
		}
	}
	return nil
}

// LoadTAESD builds the halves that src holds under diffusers' keys
// (encoder.layers.* and/or decoder.layers.*), checking every tensor
// against cfg. A source with neither is an error.
func LoadTAESD(src *Source, cfg *TAESDConfig) (*TAESD, error) {
	if cfg == nil {
		return nil, fmt.Errorf("model: %s: no TAESD config", src.Name)
	}
	c := taesdDefaults(cfg)
	if err := c.check(src.Name); err != nil {
		return nil, err
	}
	hasEnc, hasDec := hasPrefix(src, "encoder.layers."), hasPrefix(src, "decoder.layers.")
	if src.synth != nil { // NewSyntheticSource invents both halves
		hasEnc, hasDec = true, true
	}
	if !hasEnc && !hasDec {
		return nil, fmt.Errorf("model: %s: no encoder.layers.* or decoder.layers.* tensors: not a TAESD (AutoencoderTiny) checkpoint", src.Name)
	}
	w := NewWeights(src)
	t := &TAESD{Config: c}
	if hasEnc {
		t.encBlock = w.BeginBlock("taesd.encoder")
		t.Encoder = loadTinyEncoder(w.Sub("encoder.layers"), &c)
	}
	if hasDec {
		t.decBlock = w.BeginBlock("taesd.decoder")
		t.Decoder = loadTinyDecoder(w.Sub("decoder.layers"), &c)
	}
	if err := w.Err(); err != nil {
		return nil, err
	}
	if un := src.Unused(); len(un) > 0 {
		return nil, fmt.Errorf("model: %s: %d tensors are not part of an AutoencoderTiny with this config (first %q)", src.Name, len(un), un[0])
	}
	return t, nil
}

// loadTinyEncoder follows EncoderTiny: per stage a conv (stride 2 without
// bias after the first) and its blocks, then a conv to the latent.
func loadTinyEncoder(w *Weights, c *TAESDConfig) []*TinyLayer {
	var ls []*TinyLayer
	next := func() *Weights { return w.Subf("%d", len(ls)) }
	for i, nb := range c.NumEncoderBlocks {
		ch := c.EncoderBlockOutChannels[i]
		if i == 0 {
			ls = append(ls, &TinyLayer{Conv: loadConv2d(next(), c.InChannels, ch, 3, 1, 1)})
		} else {
			ls = append(ls, &TinyLayer{Conv: loadConv2dNoBias(next(), ch, ch, 3, 2, 1)})
		}
		for range nb {
			ls = append(ls, &TinyLayer{Block: loadTinyBlock(next(), ch, ch)})
		}
	}
	top := c.EncoderBlockOutChannels[len(c.EncoderBlockOutChannels)-1]
	return append(ls, &TinyLayer{Conv: loadConv2d(next(), top, c.LatentChannels, 3, 1, 1)})
}

// loadTinyDecoder follows DecoderTiny: conv and ReLU, then per stage its
// blocks, a 2x upsample and a conv without bias (the last stage: no
// upsample, a conv with bias to the image).
func loadTinyDecoder(w *Weights, c *TAESDConfig) []*TinyLayer {
	ch := c.DecoderBlockOutChannels
	ls := []*TinyLayer{{Conv: loadConv2d(w.Sub("0"), c.LatentChannels, ch[0], 3, 1, 1)}, {ReLU: true}}
	next := func() *Weights { return w.Subf("%d", len(ls)) }
	for i, nb := range c.NumDecoderBlocks {
		for range nb {
			ls = append(ls, &TinyLayer{Block: loadTinyBlock(next(), ch[i], ch[i])})
		}
		if i < len(c.NumDecoderBlocks)-1 {
			ls = append(ls, &TinyLayer{Upsample: true})
			ls = append(ls, &TinyLayer{Conv: loadConv2dNoBias(next(), ch[i], ch[i], 3, 1, 1)})
		} else {
			ls = append(ls, &TinyLayer{Conv: loadConv2d(next(), ch[i], c.OutChannels, 3, 1, 1)})
		}
	}
	return ls
}

func loadTinyBlock(w *Weights, in, out int) *TinyBlock {
	b := &TinyBlock{Conv: [3]*Conv2d{
		loadConv2d(w.Sub("conv.0"), in, out, 3, 1, 1),
		loadConv2d(w.Sub("conv.2"), out, out, 3, 1, 1),
		loadConv2d(w.Sub("conv.4"), out, out, 3, 1, 1),
	}}
	if in != out {
		b.Skip = loadConv2dNoBias(w.Sub("skip"), in, out, 1, 1, 0)
	}
	return b
}

// Blocks lists the offload blocks: the encoder's and the decoder's (each
// one block: a few MB).
func (t *TAESD) Blocks() []*Block {
	var out []*Block
	for _, b := range []*Block{t.encBlock, t.decBlock} {
		if b != nil {
			out = append(out, b)
		}
	}
	return out
}

// Scale is the factor from the image to the latent: 2^(decoder stages-1).
func (t *TAESD) Scale() int { return 1 << (len(t.Config.NumDecoderBlocks) - 1) }

// Close unmaps the weight files (after which nothing can be uploaded).
func (t *TAESD) Close() error {
	var errs []error
	for _, f := range t.files {
		errs = append(errs, f.Close())
	}
	t.files = nil
	return errors.Join(errs...)
}

// Decode turns diffusion-space latents [B, latent_channels, h, w] into the
// image [B, 3, 8h, 8w] nominally in [-1, 1], unclamped: the contract of
// VAEDecoder.Decode, so that either can feed ImageToRGBA. It applies
// 1/scaling_factor and shift_factor (identity for TAESD's 1.0 and 0) and
// DecoderTiny's tanh(z/3)*3; NaN or Inf in the output is a
// *NonFiniteOutputError.
func (t *TAESD) Decode(rec *engine.Rec, res Residency, latents *engine.Tensor) *engine.Tensor {
	img := t.decode(rec, res, latents, 0, len(t.Decoder))
	if img != nil {
		if err := checkFinite(rec.B, img, "TAESD decoder output"); err != nil {
			rec.Free(img)
			return rec.Fail(err)
		}
	}
	return img
}

// decode runs decoder layers [from, to) on x: from 0, x is the latent
// (prepared as Decode says); up to the end, the output is mapped to
// [-1, 1]. x is consumed unless from is 0.
func (t *TAESD) decode(rec *engine.Rec, res Residency, x *engine.Tensor, from, to int) *engine.Tensor {
	if rec.Err() != nil {
		return nil
	}
	if t.Decoder == nil {
		return rec.Fail(errors.New("model: TAESD decode: the checkpoint has no decoder (a taesd_encoder file alone?)"))
	}
	if from == 0 && (x == nil || len(x.Shape) != 4 || x.Shape[1] != t.Config.LatentChannels) {
		got := "nil"
		if x != nil {
			got = x.Shape.String()
		}
		return rec.Fail(fmt.Errorf("model: TAESD decode: latents are %s, want [B, %d, h, w]", got, t.Config.LatentChannels))
	}
	if !needBlock(rec, res, "TAESD", t.decBlock) {
		return nil
	}
	if from == 0 {
		shift := 0.0
		if t.Config.ShiftFactor != nil {
			shift = *t.Config.ShiftFactor
		}
		// (z / scaling_factor + shift) / 3, then tanh, then * 3: the
		// Clamp that keeps wild latents from blowing up the convs.
		x = rec.Scale("taesd.clamp", x, float32(1/(3*t.Config.ScalingFactor)), float32(shift/3))
		rec.UnaryInPlace(x, engine.Tanh)
		scaleInPlace(rec, x, 3, 0)
	}
	x = runTiny(rec, "taesd.decoder", t.Decoder[from:to], x)
	if to == len(t.Decoder) {
		scaleInPlace(rec, x, 2, -1) // [0, 1] -> [-1, 1]
	}
	if rec.Err() != nil {
		rec.Free(x)
		return nil
	}
	return x
}

// Encode maps images [B, 3, H, W] in [-1, 1] (H and W multiples of 8) to
// diffusion-space latents [B, latent_channels, H/8, W/8]: EncoderTiny on
// (x + 1) / 2, times scaling_factor (1.0), deterministic (no sampling).
func (t *TAESD) Encode(rec *engine.Rec, res Residency, pixels *engine.Tensor) *engine.Tensor {
	if rec.Err() != nil {
		return nil
	}
	if t.Encoder == nil {
		return rec.Fail(errors.New("model: TAESD encode: the checkpoint has no encoder (a taesd_decoder file alone?)"))
	}
	if pixels == nil || len(pixels.Shape) != 4 || pixels.Shape[1] != t.Config.InChannels {
		return rec.Fail(fmt.Errorf("model: TAESD encode: pixels are %v, want [B, %d, H, W]", pixels, t.Config.InChannels))
	}
	if !needBlock(rec, res, "TAESD", t.encBlock) {
		return nil
	}
	x := rec.Scale("taesd.encoder.in", pixels, 0.5, 0.5)
	x = runTiny(rec, "taesd.encoder", t.Encoder, x)
	if sf := float32(t.Config.ScalingFactor); sf != 1 {
		scaleInPlace(rec, x, sf, 0)
	}
	if rec.Err() == nil {
		if err := checkFinite(rec.B, x, "TAESD encoder output"); err != nil {
			rec.Fail(err)
		}
	}
	if rec.Err() != nil {
		rec.Free(x)
		return nil
	}
	return x
}

// runTiny runs layers on x, consuming it.
func runTiny(rec *engine.Rec, name string, layers []*TinyLayer, x *engine.Tensor) *engine.Tensor {
	for _, l := range layers {
		if rec.Err() != nil {
			break
		}
		switch {
		case l.Conv != nil:
			y := l.Conv.Forward(rec, x)
			rec.Free(x)
			x = y
		case l.Block != nil:
			x = l.Block.forward(rec, x)
		case l.ReLU:
			rec.UnaryInPlace(x, engine.ReLU)
		case l.Upsample:
			y := rec.Upsample2x(name+".upsample", x) // [B, C, 2H, 2W]
			rec.Free(x)
			x = y
		}
	}
	return x
}

// forward consumes x [B, in, H, W] and returns [B, out, H, W].
func (b *TinyBlock) forward(rec *engine.Rec, x *engine.Tensor) *engine.Tensor {
	h := b.Conv[0].Forward(rec, x)
	rec.UnaryInPlace(h, engine.ReLU)
	h2 := b.Conv[1].Forward(rec, h)
	rec.Free(h)
	rec.UnaryInPlace(h2, engine.ReLU)
	h = b.Conv[2].Forward(rec, h2)
	rec.Free(h2)
	if b.Skip != nil {
		s := b.Skip.Forward(rec, x)
		rec.Free(x)
		x = s
	}
	rec.AddInPlace(h, x)
	rec.Free(x)
	rec.UnaryInPlace(h, engine.ReLU)
	return h
}

// scaleInPlace is x = a*x + b, recorded in rec.
func scaleInPlace(rec *engine.Rec, x *engine.Tensor, a, b float32) {
	if rec.Err() != nil || x == nil {
		return
	}
	if err := rec.B.Scale(x, x, a, b); err != nil {
		rec.Fail(fmt.Errorf("model: scale %s: %w", x.Name, err))
	}
}

// OpenTAESD opens a TAESD (AutoencoderTiny) checkpoint: a diffusers folder
// (config.json and diffusion_pytorch_model[.fp16].safetensors, such as
// madebyollin/taesd or taesdxl, or a model folder's taesd/), or a single
// .safetensors file as madebyollin/taesd publishes them
// (taesd_decoder.safetensors, taesd_encoder.safetensors, taesdxl_*,
// taesd3_*, taef1_*: keys without prefix, the decoder's numbered one
// higher than diffusers' because taesd.py's Sequential starts with its
// Clamp). Given one half's file, the other half's file beside it
// (..._encoder / ..._decoder) is loaded too when present. A single-file
// checkpoint has no config: AutoencoderTiny's defaults are used, with the
// channel counts read from the tensors. Close the result when done.
func OpenTAESD(path string) (*TAESD, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("model: TAESD: %w", err)
	}
	if st.IsDir() {
		return openTAESDFolder(path)
	}
	paths := []string{path}
	for _, pair := range [][2]string{{"_decoder.safetensors", "_encoder.safetensors"}, {"_encoder.safetensors", "_decoder.safetensors"}} {
		if strings.HasSuffix(path, pair[0]) {
			if other := strings.TrimSuffix(path, pair[0]) + pair[1]; isFile(other) {
				paths = append(paths, other)
			}
		}
	}
	src := NewSource("taesd")
	t := &TAESD{}
	fail := func(err error) (*TAESD, error) {
		t.Close()
		return nil, err
	}
	for _, p := range paths {
		f, err := safetensors.Open(p)
		if err != nil {
			return fail(fmt.Errorf("model: TAESD: %w", err))
		}
		t.files = append(t.files, f)
		if err := addTinyFile(src, f, p); err != nil {
			return fail(err)
		}
	}
	cfg := TAESDConfig{}
	for _, k := range []string{"decoder.layers.0.weight", "encoder.layers.0.weight"} {
		if s := shapeOf(src, k); len(s) == 4 {
			if k[0] == 'd' {
				cfg.LatentChannels = s[1]
				cfg.DecoderBlockOutChannels = []int{s[0], s[0], s[0], s[0]}
			} else {
				cfg.InChannels = s[1]
				cfg.EncoderBlockOutChannels = []int{s[0], s[0], s[0], s[0]}
			}
		}
	}
	if cfg.LatentChannels == 0 { // encoder alone: its last conv makes the latent
		if s := shapeOf(src, lastTinyConv(src, "encoder.layers.")); len(s) == 4 {
			cfg.LatentChannels = s[0]
		}
	}
	c, err := LoadTAESD(src, &cfg)
	if err != nil {
		return fail(fmt.Errorf("%w (%s)", err, strings.Join(paths, ", ")))
	}
	c.files = t.files
	return c, nil
}

// addTinyFile adds a taesd.py state dict (keys "<i>.weight",
// "<i>.conv.0.weight", ...) under diffusers' keys, or a file that already
// has them. The decoder's Sequential starts with a parameterless Clamp, so
// its layer i is diffusers' i-1; the encoder's first layer is a conv ("0.").
func addTinyFile(src *Source, f *safetensors.File, path string) error {
	names := f.Names()
	part := ""
	switch {
	case f.Tensor("0.weight") != nil:
		part = "encoder.layers."
	case f.Tensor("1.weight") != nil:
		part = "decoder.layers."
	}
	for _, name := range names {
		key := name
		if part != "" {
			i, rest, ok := strings.Cut(name, ".")
			n, err := strconv.Atoi(i)
			if !ok || err != nil {
				return fmt.Errorf("model: TAESD: %s: tensor %q: want taesd.py's numbered layer keys", path, name)
			}
			if part == "decoder.layers." {
				n--
			}
			key = part + strconv.Itoa(n) + "." + rest
		} else if !strings.HasPrefix(name, "encoder.layers.") && !strings.HasPrefix(name, "decoder.layers.") {
			return fmt.Errorf("model: TAESD: %s: tensor %q is neither taesd.py's nor diffusers' AutoencoderTiny layout", path, name)
		}
		if prev := src.Entry(key); prev != nil {
			return fmt.Errorf("model: TAESD: tensor %q is in both %s and %s", key, prev.File, path)
		}
		src.AddTensor(key, f.Tensor(name), path)
	}
	return nil
}

// lastTinyConv returns the plain conv key with the highest layer index
// under prefix.
func lastTinyConv(src *Source, prefix string) string {
	var idx []int
	for _, k := range src.Keys() {
		if rest, ok := strings.CutPrefix(k, prefix); ok && strings.HasSuffix(rest, ".weight") && strings.Count(rest, ".") == 1 {
			if n, err := strconv.Atoi(strings.TrimSuffix(rest, ".weight")); err == nil {
				idx = append(idx, n)
			}
		}
	}
	if len(idx) == 0 {
		return ""
	}
	sort.Ints(idx)
	return fmt.Sprintf("%s%d.weight", prefix, idx[len(idx)-1])
}

func openTAESDFolder(dir string) (*TAESD, error) {
	var cfg TAESDConfig
	if err := readJSON(filepath.Join(dir, "config.json"), &cfg); err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("model: TAESD: %s has no config.json (want a diffusers AutoencoderTiny folder or a taesd_*.safetensors file)", dir)
		}
		return nil, err
	}
	var path string
	for _, cand := range weightCandidates("diffusion_pytorch_model") {
		if p := filepath.Join(dir, cand); !strings.HasSuffix(cand, ".json") && isFile(p) {
			path = p
			break
		}
	}
	if path == "" {
		return nil, fmt.Errorf("model: TAESD: %s: no diffusion_pytorch_model[.fp16].safetensors", dir)
	}
	fs, err := OpenFileSource("taesd", path)
	if err != nil {
		return nil, err
	}
	t, err := LoadTAESD(fs.Source, &cfg)
	if err != nil {
		fs.Close()
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	t.files = fs.Files
	return t, nil
}

// DecodeLimited is Decode for devices that cannot hold or bind the
// full-resolution maps: TAESD's full-size decoder holds 64-channel maps at
// the output resolution, 256 MiB each at 1024x1024, more than many devices
// bind at once (128 MiB on lavapipe and some GPUs). The decoder runs whole
// up to the first layer whose output would exceed maxTensorBytes; the
// remaining layers run on tiles of that map with margins as wide as their
// receptive field, and each tile's core is cropped into the image on the
// host. TAESD has no normalisation and no attention, so this equals the
// whole decode (up to float summation order): no seams, no blending.
// maxTensorBytes <= 0, or an image that fits, decodes whole.
func (t *TAESD) DecodeLimited(rec *engine.Rec, res Residency, latents *engine.Tensor, maxTensorBytes int64) *engine.Tensor {
	if rec.Err() != nil {
		return nil
	}
	if t.Decoder == nil || latents == nil || len(latents.Shape) != 4 {
		return t.Decode(rec, res, latents) // reports the error
	}
	b, h, w := latents.Shape[0], latents.Shape[2], latents.Shape[3]
	split, _ := t.splitAt(b, h, w, maxTensorBytes)
	if split == len(t.Decoder) {
		return t.Decode(rec, res, latents)
	}
	x := t.decode(rec, res, latents, 0, split) // [B, C, scale*h, scale*w]
	if x == nil {
		return nil
	}
	head, err := rec.B.Read(x)
	rec.Free(x)
	if err != nil {
		return rec.Fail(fmt.Errorf("model: TAESD decode: %w", err))
	}
	px, shape := t.decodeTail(rec, res, head, x.Shape, split, maxTensorBytes)
	if px == nil {
		return nil
	}
	if err := finiteFloats(px, shape, "TAESD decoder output"); err != nil {
		return rec.Fail(err)
	}
	return rec.Write("taesd.image", px, shape...)
}

// splitAt returns the first decoder layer whose output for [b, C, h, w]
// latents would exceed limit bytes (len(Decoder) when none does, or limit
// is <= 0) and the resolution factor of its input.
func (t *TAESD) splitAt(b, h, w int, limit int64) (split, scale int) {
	scale = 1
	ch := t.Config.LatentChannels
	for i, l := range t.Decoder {
		next, nch := scale, ch
		switch {
		case l.Upsample:
			next = 2 * scale
		case l.Conv != nil:
			nch = l.Conv.Weight.Shape[0]
		case l.Block != nil:
			nch = l.Block.Conv[2].Weight.Shape[0]
		}
		if limit > 0 && 4*int64(b)*int64(max(ch, nch))*int64(h*next)*int64(w*next) > limit {
			return i, scale
		}
		scale, ch = next, nch
	}
	return len(t.Decoder), scale
}

// decodeTail runs decoder layers [split, end) on the host map head [B, C,
// H, W] in tiles with margins covering their receptive field, and returns
// the image.
func (t *TAESD) decodeTail(rec *engine.Rec, res Residency, head []float32, shape engine.Shape, split int, limit int64) ([]float32, engine.Shape) {
	tail := t.Decoder[split:]
	// Receptive radius of the tail in input pixels, and its upscale.
	f, radius := 1, 0.0
	width := shape[1]
	for _, l := range tail {
		switch {
		case l.Upsample:
			f *= 2
		case l.Conv != nil:
			radius += float64(l.Conv.Weight.Shape[2]/2) / float64(f)
			width = max(width, l.Conv.Weight.Shape[0])
		case l.Block != nil:
			radius += 3 / float64(f)
			width = max(width, l.Block.Conv[0].Weight.Shape[0])
		}
	}
	m := int(math.Ceil(radius))
	bsz, c, H, W := shape[0], shape[1], shape[2], shape[3]
	// The largest tile (input pixels, margins included) whose widest map
	// fits the limit.
	side := int(math.Sqrt(float64(limit) / float64(4*bsz*width*f*f)))
	core := side - 2*m
	if core < 1 {
		rec.Fail(fmt.Errorf("model: TAESD decode: no tile fits %d bytes per tensor", limit))
		return nil, nil
	}
	oc := t.Config.OutChannels
	out := make([]float32, bsz*oc*H*f*W*f)
	for y0 := 0; y0 < H; y0 += core {
		for x0 := 0; x0 < W; x0 += core {
			y1, x1 := min(y0+core, H), min(x0+core, W)
			ty0, tx0, ty1, tx1 := max(y0-m, 0), max(x0-m, 0), min(y1+m, H), min(x1+m, W)
			th, tw := ty1-ty0, tx1-tx0
			in := make([]float32, bsz*c*th*tw)
			for bc := range bsz * c {
				for y := range th {
					copy(in[(bc*th+y)*tw:(bc*th+y+1)*tw], head[(bc*H+ty0+y)*W+tx0:])
				}
			}
			x := rec.Write(fmt.Sprintf("taesd.tile[%d,%d]", y0, x0), in, bsz, c, th, tw)
			img := t.decode(rec, res, x, split, len(t.Decoder)) // consumes x
			if rec.Err() != nil {
				return nil, nil
			}
			px, err := rec.B.Read(img)
			rec.Free(img)
			if err != nil {
				rec.Fail(fmt.Errorf("model: TAESD decode: %w", err))
				return nil, nil
			}
			// Crop the core [y0, y1) x [x0, x1) (times f) out of the tile.
			TH, TW, OW := th*f, tw*f, W*f
			for p := range bsz * oc {
				for y := (y0 - ty0) * f; y < (y1-ty0)*f; y++ {
					gy := ty0*f + y
					copy(out[(p*H*f+gy)*OW+x0*f:(p*H*f+gy)*OW+x1*f], px[(p*TH+y)*TW+(x0-tx0)*f:])
				}
			}
		}
	}
	return out, engine.Shape{bsz, oc, H * f, W * f}
}

// MaxTensorBytes is the largest single activation of Decode on [batch, C,
// h, w] latents (a 64-channel map at the output resolution for the
// published TAESDs).
func (t *TAESD) MaxTensorBytes(batch, h, w int) int64 {
	s := int64(t.Scale())
	var ch int
	for _, c := range t.Config.DecoderBlockOutChannels {
		ch = max(ch, c)
	}
	return 4 * int64(batch) * int64(max(ch, t.Config.OutChannels)) * int64(h) * s * int64(w) * s
}
