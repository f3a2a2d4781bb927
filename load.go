package zimage

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/tokenizer"
	"github.com/zimage/zimage/sched"
)

// Load opens a model (a diffusers folder or a single-file checkpoint) and a
// Vulkan device. Weights stay memory-mapped until a generation needs them.
func Load(path string, opts ...Option) (*Pipeline, error) {
	var o Options
	for _, f := range opts {
		f(&o)
	}
	oo := model.OpenOptions{TokenizerDir: o.TokenizerDir, ConfigDir: o.ConfigDir,
		TextEncoderPath: o.TextEncoderPath, VAEPath: o.VAEPath, UNet: o.UNet}
	if o.Weights != "" {
		typ, err := model.ParseQuantizeType(o.Weights)
		if err != nil {
			return nil, err
		}
		oo.Quantize = &model.QuantizeRules{Type: typ}
	}
	ck, err := model.OpenCheckpoint(path, oo)
	if err != nil {
		return nil, err
	}
	if o.LoRADir != "" {
		if st, err := os.Stat(o.LoRADir); err != nil || !st.IsDir() {
			ck.Close()
			return nil, fmt.Errorf("zimage: LoRA folder %s: not a folder", o.LoRADir)
		}
	}
	p := &Pipeline{opts: o, closers: []func() error{ck.Close}}
	if err := p.load(ck); err != nil {
		p.Close()
		return nil, err
	}
	if err := p.loadTAESD(path); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// loadTAESD opens the tiny decoder: the one Options.TAESD names (an error
// when it cannot be read or does not fit the model), else a taesd folder
// inside a diffusers model folder, which only previews use (skipped with a
// warning when it does not fit).
func (p *Pipeline) loadTAESD(modelPath string) error {
	c := p.latentChannels()
	if path := p.opts.TAESD; path != "" {
		t, err := model.OpenTAESD(path)
		if err != nil {
			return err
		}
		p.closers = append(p.closers, t.Close)
		if t.Config.LatentChannels != c || t.Decoder == nil {
			return fmt.Errorf("zimage: TAESD %s decodes %d latent channels (decoder present: %v); %s has %d: use the TAESD of this model family (taesd for SD 1.x/2.x, taesdxl for SDXL, taef1 for FLUX-VAE models such as Z-Image)",
				path, t.Config.LatentChannels, t.Decoder != nil, p.info.Arch, c)
		}
		p.setTAESD(t)
		return nil
	}
	names := []string{"taesd"}
	switch p.info.Arch {
	case "sdxl":
		names = []string{"taesdxl", "taesd"}
	case "z-image":
		names = []string{"taef1", "taesd"}
	}
	for _, n := range names {
		dir := filepath.Join(modelPath, n)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			continue
		}
		t, err := model.OpenTAESD(dir)
		if err != nil {
			p.Warnings = append(p.Warnings, fmt.Sprintf("%s: not used for previews: %v", dir, err))
			continue
		}
		if t.Config.LatentChannels != c || t.Decoder == nil {
			t.Close()
			p.Warnings = append(p.Warnings, fmt.Sprintf("%s: not used for previews: it decodes %d latent channels, the model has %d", dir, t.Config.LatentChannels, c))
			continue
		}
		p.closers = append(p.closers, t.Close)
		p.setTAESD(t)
		return nil
	}
	return nil
}

func (p *Pipeline) setTAESD(t *model.TAESD) {
	p.tiny = t
	if p.models != nil {
		p.models.TAESD = t
	} else {
		p.zimage.TAESD = t
	}
}

// latentChannels is the denoiser's latent channel count (the VAE's).
func (p *Pipeline) latentChannels() int {
	if p.zimage != nil {
		return p.zimage.VAE.Config.LatentChannels
	}
	return p.models.VAE.Config.LatentChannels
}

func (p *Pipeline) load(ck *model.Checkpoint) error {
	if err := ck.RequireTokenizers(); err != nil {
		return err
	}
	if ck.Arch == model.ZImage {
		if err := p.loadZImage(ck); err != nil {
			return err
		}
	} else if err := p.loadSD(ck); err != nil {
		return err
	}
	p.Warnings = append(p.Warnings, ck.Warnings...)
	for _, src := range ck.Sources() {
		// The VAE encoder is not used for text-to-image, nor are the Qwen
		// text encoder's last layer and final norm (the pipeline reads
		// hidden_states[-2]); they are expected to be unused and are not
		// worth a warning.
		var unused []string
		for _, k := range src.Unused() {
			if !expectedUnused(ck, src.Name, k) {
				unused = append(unused, k)
			}
		}
		if len(unused) > 0 {
			p.Warnings = append(p.Warnings, fmt.Sprintf("%s: %d tensors in the checkpoint are not used (first: %s)", src.Name, len(unused), unused[0]))
		}
	}
	p.info = describeModel(ck)
	p.model = describeWeights(ck, p.info)
	if p.opts.Backend != nil {
		p.backend = p.opts.Backend
		return nil
	}
	vo := vk.DefaultOptions()
	vo.Budget = p.opts.Budget
	if d := p.opts.Device; d != "" {
		if i, err := strconv.Atoi(d); err == nil {
			vo.DeviceIndex = i
		} else {
			vo.DeviceName = d
		}
	}
	dev, err := vk.Open(vo)
	if err != nil {
		return err
	}
	p.backend = dev
	p.closers = append(p.closers, dev.Close)
	return nil
}

// expectedUnused reports checkpoint tensors that text-to-image never reads.
func expectedUnused(ck *model.Checkpoint, component, key string) bool {
	switch {
	case component == "vae":
		return strings.HasPrefix(key, "encoder.") || strings.HasPrefix(key, "quant_conv.")
	case ck.Qwen != nil && component == ck.Qwen.Source.Name:
		last := fmt.Sprintf("model.layers.%d.", ck.Qwen.Config.NumHiddenLayers-1)
		return strings.HasPrefix(key, last) || strings.HasPrefix(key, "model.norm.") || strings.HasPrefix(key, "lm_head.")
	}
	return false
}

// loadZImage builds the Z-Image networks: the Qwen2 tokenizer and Qwen3
// text encoder, the S3-DiT and the FLUX VAE decoder.
func (p *Pipeline) loadZImage(ck *model.Checkpoint) error {
	tok, err := tokenizer.LoadQwen2(ck.Qwen.TokenizerDir)
	if err != nil {
		return err
	}
	m := &sched.ZImageModels{Tokenizer: sched.QwenTokenizer(tok), Scheduler: ck.Scheduler}
	if m.TextEncoder, err = model.LoadQwen3(ck.Qwen.Source, ck.Qwen.Config); err != nil {
		return fmt.Errorf("zimage: %s: %w", ck.Qwen.Name, err)
	}
	if m.Transformer, err = model.LoadZImage(ck.Transformer.Source, ck.Transformer.Config); err != nil {
		return fmt.Errorf("zimage: transformer: %w", err)
	}
	if m.VAE, err = model.LoadVAEDecoder(ck.VAE.Source, ck.VAE.Config); err != nil {
		return fmt.Errorf("zimage: vae: %w", err)
	}
	m.Encoder = p.loadEncoder(ck)
	p.zimage = m
	return nil
}

// loadEncoder builds the VAE encoder img2img and inpainting need; a
// checkpoint without a usable one (a decoder-only VAE file) still loads,
// and the reason is kept for the img2img request that would need it.
func (p *Pipeline) loadEncoder(ck *model.Checkpoint) *model.VAEEncoder {
	enc, err := model.LoadVAEEncoder(ck.VAE.Source, ck.VAE.Config)
	if err != nil {
		p.encErr = err
		return nil
	}
	return enc
}

// loadSD builds the Stable Diffusion networks: CLIP tokenizers and text
// encoders, the UNet and the VAE decoder.
func (p *Pipeline) loadSD(ck *model.Checkpoint) error {
	m := &sched.Models{
		Scheduler:                ck.Scheduler,
		ForceZerosForEmptyPrompt: ck.ForceZerosForEmptyPrompt,
		SDXL:                     ck.Arch == model.SDXL,
	}
	for _, te := range ck.TextEncoders {
		tok, err := tokenizer.Load(te.TokenizerDir)
		if err != nil {
			return err
		}
		net, err := model.LoadCLIPText(te.Source, te.Config)
		if err != nil {
			return fmt.Errorf("zimage: %s: %w", te.Name, err)
		}
		m.Encoders = append(m.Encoders, sched.TextEncoder{Tokenizer: tok, Net: net})
	}
	var err error
	if m.UNet, err = model.LoadUNet(ck.UNet.Source, ck.UNet.Config); err != nil {
		return fmt.Errorf("zimage: unet: %w", err)
	}
	if m.VAE, err = model.LoadVAEDecoder(ck.VAE.Source, ck.VAE.Config); err != nil {
		return fmt.Errorf("zimage: vae: %w", err)
	}
	m.Encoder = p.loadEncoder(ck)
	if m.Encoder == nil && m.UNet.Config.InChannels != m.VAE.Config.LatentChannels {
		return fmt.Errorf("zimage: this inpainting UNet (%d input channels) needs the VAE encoder: %w", m.UNet.Config.InChannels, p.encErr)
	}
	p.models = m
	return nil
}

// Close releases the device and unmaps the weights.
func (p *Pipeline) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	if (p.models != nil || p.zimage != nil) && p.backend != nil {
		for _, bl := range p.allBlocks() {
			bl.Evict(p.backend)
		}
	}
	// After the eviction: merged weights need no restoring upload then.
	if p.lora != nil {
		errs = append(errs, p.lora.close())
		p.lora = nil
	}
	// Release in reverse order: the device before the mappings it read.
	for i := len(p.closers) - 1; i >= 0; i-- {
		errs = append(errs, p.closers[i]())
	}
	p.closers, p.models, p.zimage = nil, nil, nil
	return errors.Join(errs...)
}

func (p *Pipeline) allBlocks() []*model.Block {
	var out []*model.Block
	var enc *model.VAEEncoder
	if z := p.zimage; z != nil {
		out = append(out, z.TextEncoder.Blocks()...)
		out = append(out, z.Transformer.Blocks()...)
		out = append(out, z.VAE.Blocks()...)
		enc = z.Encoder
	} else {
		for _, e := range p.models.Encoders {
			out = append(out, e.Net.Blocks()...)
		}
		out = append(out, p.models.UNet.Blocks()...)
		out = append(out, p.models.VAE.Blocks()...)
		enc = p.models.Encoder
	}
	if enc != nil {
		out = append(out, enc.Blocks()...)
	}
	if p.tiny != nil {
		out = append(out, p.tiny.Blocks()...)
	}
	return out
}

// describeModel derives the defaults and metadata of a checkpoint.
func describeModel(ck *model.Checkpoint) modelInfo {
	name := strings.TrimSuffix(filepath.Base(filepath.Clean(ck.Path)), filepath.Ext(ck.Path))
	info := modelInfo{Name: name, Arch: strings.ToLower(ck.Arch.String())}
	// Turbo models (adversarial diffusion distillation) ship schedulers
	// with trailing timesteps, which the classic checkpoints do not use. A
	// single file carries no scheduler (model.OpenCheckpoint assumes the
	// family's turbo one), so there only the name can tell; a classic SD 2.x
	// or SDXL file gets the classic leading spacing back.
	byName := strings.Contains(strings.ToLower(name), "turbo")
	info.Turbo = byName || (ck.Format == model.FormatDiffusers && ck.Scheduler != nil && ck.Scheduler.TimestepSpacing == "trailing")
	if ck.Format != model.FormatDiffusers && !byName && ck.Scheduler != nil && ck.Scheduler.TimestepSpacing == "trailing" {
		ck.Scheduler.TimestepSpacing = "leading"
	}
	// diffusers' default size: the UNet's sample_size in latent pixels.
	info.BaseSize = 512
	if ck.UNet.Config != nil && ck.UNet.Config.SampleSize > 0 {
		info.BaseSize = ck.UNet.Config.SampleSize * 8
	}
	if ck.Arch == model.ZImage {
		// ZImagePipeline's default: 1024x1024; Z-Image-Turbo is distilled
		// for 8 transformer calls (9 steps, the last of which has dt = 0)
		// without guidance.
		info.BaseSize, info.Turbo = 1024, true
	}
	info.Hash = modelHash(ck)
	return info
}

// ModelHash is AUTOMATIC1111's short model hash of the checkpoint at path
// (see modelHash), read without loading the model; "" when it cannot be
// read. Servers use it to list checkpoints under A1111's titles.
func ModelHash(path string, opts ...Option) string {
	var o Options
	for _, f := range opts {
		f(&o)
	}
	ck, err := model.OpenCheckpoint(path, model.OpenOptions{TokenizerDir: o.TokenizerDir, ConfigDir: o.ConfigDir})
	if err != nil {
		return ""
	}
	defer ck.Close()
	return modelHash(ck)
}

// modelHash is AUTOMATIC1111's short "model hash": the first 8 hex digits
// of the SHA-256 of 64 KiB read at offset 1 MiB of the weights file. It
// reads 64 KiB instead of hashing gigabytes, and matches what A1111 shows
// for the same single file. For a diffusers folder the denoiser's (first)
// file is hashed.
func modelHash(ck *model.Checkpoint) string {
	path := ck.Path
	if ck.Format == model.FormatDiffusers {
		den := ck.UNet.Source
		if ck.Transformer != nil {
			den = ck.Transformer.Source
		}
		if den == nil {
			return ""
		}
		keys := den.Keys()
		if len(keys) == 0 {
			return ""
		}
		path = den.Entry(keys[0]).File
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := f.Seek(0x100000, io.SeekStart); err != nil {
		return ""
	}
	io.CopyN(h, f, 0x10000)
	return hex.EncodeToString(h.Sum(nil))[:8]
}

var _ engine.Backend = (*vk.Device)(nil)
