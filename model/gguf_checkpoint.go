package model

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/zimage/zimage/model/gguf"
)

// GGUF files come in two shapes for image models:
//   - stable-diffusion.cpp's convert writes a whole model under its LDM
//     single-file names (model.diffusion_model.*, first_stage_model.*,
//     cond_stage_model.* or conditioner.embedders.*) with no metadata;
//     those open like a single .safetensors file, through the same name
//     table (singlefile.go, names.go);
//   - ComfyUI-GGUF publishes the denoiser alone under its original key
//     names (LDM names without the model.diffusion_model. prefix, or
//     diffusers names), with general.architecture ("sd1", "sdxl", "flux",
//     ...). Such a file is the UNet of another model (OpenOptions.UNet);
//     a Z-Image transformer ("lumina2") opens like a .safetensors one, with
//     the text encoder and VAE from OpenOptions.
// Anything else (FLUX, SD3, language models, ...) is refused by name.

// isGGUF reports whether the file at path starts with the GGUF magic.
func isGGUF(path string) bool {
	fh, err := os.Open(path)
	if err != nil {
		return false
	}
	defer fh.Close()
	var b [4]byte
	if _, err := io.ReadFull(fh, b[:]); err != nil {
		return false
	}
	return gguf.IsGGUF(b[:])
}

// UnsupportedModelError reports a checkpoint of an architecture zimage does
// not run, saying what it is when the file tells.
type UnsupportedModelError struct {
	Path string
	What string // "a FLUX transformer", "a llama language model", ...
}

func (e *UnsupportedModelError) Error() string {
	return fmt.Sprintf("model: %s: %s: zimage runs SD 1.x, SD 2.x, SDXL (SD-Turbo, SDXL-Turbo) and Z-Image models", e.Path, e.What)
}

// ggufKind is what a GGUF file holds.
type ggufKind uint8

const (
	ggufWholeLDM      ggufKind = iota + 1 // every component under LDM single-file names
	ggufUNetLDM                           // an LDM UNet alone (prefixed or not)
	ggufUNetDiffusers                     // a diffusers UNet alone
)

// foreignLayouts recognise other architectures by a tensor they always
// have (after any "model.diffusion_model." prefix), as ComfyUI's model
// detection does.
var foreignLayouts = []struct{ key, what string }{
	{"double_blocks.0.img_attn.proj.weight", "a FLUX transformer"},
	{"transformer_blocks.0.attn.norm_added_k.weight", "a FLUX transformer (diffusers layout)"},
	{"joint_blocks.0.x_block.attn.qkv.weight", "an SD3 transformer"},
	{"transformer_blocks.0.attn.add_q_proj.weight", "an SD3 transformer (diffusers layout)"},
	{"cap_embedder.1.weight", "a Lumina 2-style transformer without Z-Image's blocks (layers.N.adaLN_modulation)"},
	{"double_layers.3.modX.1.weight", "an AuraFlow transformer"},
	{"blocks.0.self_attn.norm_q.weight", "a Wan video transformer"},
	{"double_blocks.0.img_attn_proj.weight", "a HunyuanVideo transformer"},
	{"adaln_single.emb.timestep_embedder.linear_2.weight", "an LTX-Video transformer"},
	{"token_embd.weight", "a language model (llama.cpp tensor names)"},
	{"enc.blk.0.attn_q.weight", "a T5 text encoder (llama.cpp tensor names)"},
	{"text_model.encoder.layers.0.self_attn.q_proj.weight", "a CLIP text encoder alone"},
	{"encoder.block.0.layer.0.SelfAttention.q.weight", "a T5 text encoder alone"},
	{"decoder.up_blocks.0.resnets.0.conv1.weight", "a VAE alone"},
	{"decoder.up.0.block.0.conv1.weight", "a VAE alone"},
}

// classifyGGUF tells what f holds from its tensor names, and checks them
// against general.architecture when the file has it.
func classifyGGUF(path string, f *gguf.File) (ggufKind, error) {
	names := f.Names()
	has := func(k string) bool { return f.Tensor(k) != nil || f.Tensor(ldmUNet+k) != nil }
	hasPrefix := func(p string) bool {
		for _, n := range names {
			if strings.HasPrefix(n, p) {
				return true
			}
		}
		return false
	}
	arch := f.Metadata.String("general.architecture")
	describe := func(what string) string {
		if d := f.Metadata.Describe(); d != "" {
			return what + " (" + d + ")"
		}
		return what
	}
	switch {
	case hasPrefix(ldmUNet) && (hasPrefix("cond_stage_model.") || hasPrefix("conditioner.embedders.")):
		return ggufWholeLDM, nil
	case has("input_blocks.1.0.in_layers.0.weight") || has("input_blocks.0.0.weight"):
		return ggufUNetLDM, nil
	case f.Tensor("conv_in.weight") != nil && hasPrefix("down_blocks.0.resnets."):
		return ggufUNetDiffusers, nil
	}
	for _, l := range foreignLayouts {
		if has(l.key) {
			return 0, &UnsupportedModelError{Path: path, What: describe("the file holds " + l.what)}
		}
	}
	if arch != "" {
		return 0, &UnsupportedModelError{Path: path, What: describe("the file's model is not a Stable Diffusion UNet")}
	}
	return 0, &UnsupportedModelError{Path: path, What: fmt.Sprintf("no metadata and no known tensor layout (%d tensors, e.g. %s)", len(names), strings.Join(names[:min(3, len(names))], ", "))}
}

// ggufTensor returns the entry of a GGUF tensor under key. ComfyUI-GGUF
// stores tensors whose rows are not whole 256-element super-blocks
// flattened to [n/256, 256], with the shape in comfy.gguf.orig_shape.<name>;
// the bytes are the same row-major data, so the entry takes that shape.
func ggufTensor(f *gguf.File, name, key string) (*Entry, error) {
	t := f.Tensor(name)
	if t == nil {
		return nil, nil
	}
	shape := t.Shape()
	if v, ok := f.Metadata.Get("comfy.gguf.orig_shape." + name); ok {
		dims, ok := v.Ints()
		n := int64(1)
		for _, d := range dims {
			n *= d
		}
		if !ok || len(dims) == 0 || n != t.NumElem() {
			return nil, fmt.Errorf("model: %s: comfy.gguf.orig_shape.%s is %v, not a shape of the tensor's %d elements", f.Path, name, dims, t.NumElem())
		}
		shape = make([]int, len(dims))
		for i, d := range dims {
			shape[i] = int(d)
		}
	}
	return ggufEntry(key, t, f.Path, shape), nil
}

// openGGUF opens a GGUF file of a whole SD model in the LDM layout, or a
// Z-Image transformer (ComfyUI-GGUF's, original key names) whose text
// encoder and VAE come from OpenOptions as for a .safetensors one.
func openGGUF(path string, opts OpenOptions) (*Checkpoint, error) {
	f, err := gguf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("model: open checkpoint: %w", err)
	}
	if prefix, original, ok := zimageFileLayout(f.Names()); ok {
		c := &Checkpoint{Path: path, Format: FormatGGUF, ggufs: []*gguf.File{f}}
		tensor := func(key string) (*Entry, error) { return ggufTensor(f, key, key) }
		if err := c.openZImageFile(f.Names(), tensor, prefix, original, opts); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	kind, err := classifyGGUF(path, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if kind != ggufWholeLDM {
		f.Close()
		return nil, &MissingComponentError{Path: path, Component: "text_encoder",
			Detail: "the file holds a UNet alone (a ComfyUI-GGUF denoiser): open a model that has the text encoders and VAE and pass this file as its UNet (OpenOptions.UNet, zimage --unet)"}
	}
	c := &Checkpoint{Path: path, Format: FormatGGUF, ggufs: []*gguf.File{f}}
	return c.openLDM(f.Names(), func(key string) (*Entry, error) { return ggufTensor(f, key, key) }, opts)
}

// sd2TextLayers is how many of an SD 2.x file's n OpenCLIP blocks the
// text encoder uses: the published checkpoints hold the whole tower and
// the pipeline stops one block short (diffusers' config has n-1 layers),
// but a file converted back from diffusers holds only those; ConfigDir's
// text_encoder config, when given, says which.
func sd2TextLayers(n int, opts OpenOptions) int {
	if opts.ConfigDir != "" {
		var cfg CLIPTextConfig
		if err := readJSON(filepath.Join(opts.ConfigDir, "text_encoder", "config.json"), &cfg); err == nil &&
			cfg.NumHiddenLayers >= 1 && cfg.NumHiddenLayers <= n {
			return cfg.NumHiddenLayers
		}
	}
	return n - 1
}
