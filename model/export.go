package model

import (
	"fmt"
	"sort"

	"github.com/zimage/zimage/model/gguf"
	"github.com/zimage/zimage/model/safetensors"
)

// ExportTensor is one tensor of a checkpoint under the name a single-file
// checkpoint gives it: the LDM names of Stable Diffusion's original
// checkpoints (as diffusers' convert_diffusers_to_original_stable_diffusion
// writes them, and stable-diffusion.cpp reads them), or the original
// Z-Image transformer names (as ComfyUI loads them). Its data is built
// from the canonical entries on demand: fused q/k/v put back together, the
// VAE's attention projections back to 1x1 convolutions, OpenCLIP's
// projection transposed back.
type ExportTensor struct {
	Name      string
	Component string // "unet", "vae", "text_encoder", "text_encoder_2", "transformer"
	Shape     []int  // in the file's layout
	conv      conversion
	parts     []*Entry // one, or q, k and v of a fused tensor
}

// ldmTables are the name tables of an SD checkpoint's components.
func (c *Checkpoint) ldmTables() (map[string]*nameTable, error) {
	if c.UNet.Source == nil || c.VAE.Source == nil || c.UNet.Config == nil || c.VAE.Config == nil {
		return nil, fmt.Errorf("model: %s: no UNet or VAE to name", c.Path)
	}
	u := c.UNet.Config
	ul := unetLayout{levels: len(u.BlockOutChannels), layers: u.LayersPerBlock}
	for _, typ := range u.UpBlockTypes {
		ul.upAttn = append(ul.upAttn, typ == "CrossAttnUpBlock2D")
	}
	tables := map[string]*nameTable{
		"unet": newNameTable(unetRules(ul)),
		"vae":  newNameTable(vaeRules(ldmVAE, len(c.VAE.Config.BlockOutChannels), c.VAE.Config.LayersPerBlock+1)),
	}
	switch c.Arch {
	case SD1:
		tables["text_encoder"] = newNameTable(hfCLIPRules(ldmCLIP))
	case SD2:
		tables["text_encoder"] = newNameTable(openCLIPRules(ldmOpenCLIP, c.TextEncoders[0].Config.NumHiddenLayers, false))
	case SDXL:
		tables["text_encoder"] = newNameTable(hfCLIPRules(ldmXLCLIP1))
		tables["text_encoder_2"] = newNameTable(openCLIPRules(ldmXLCLIP2, c.TextEncoders[1].Config.NumHiddenLayers, true))
	default:
		return nil, fmt.Errorf("model: %s: no single-file names for %s", c.Path, c.Arch)
	}
	return tables, nil
}

// ExportTensors lists the checkpoint's tensors under single-file names,
// sorted by name: every component of a Stable Diffusion model, or a
// Z-Image model's transformer (ComfyUI-GGUF publishes it alone).
func (c *Checkpoint) ExportTensors() ([]*ExportTensor, error) {
	tables := map[string]*nameTable{}
	srcs := map[string]*Source{}
	if c.Arch == ZImage {
		cfg := c.Transformer.Config
		if len(cfg.AllPatchSize) == 0 || len(cfg.AllFPatchSize) == 0 {
			return nil, fmt.Errorf("model: %s: transformer config without patch sizes", c.Path)
		}
		patch := fmt.Sprintf("%d-%d", cfg.AllPatchSize[0], cfg.AllFPatchSize[0])
		tables["transformer"] = newNameTable(zimageRules("", patch, [3]int{cfg.NRefinerLayers, cfg.NRefinerLayers, cfg.NLayers}))
		srcs["transformer"] = c.Transformer.Source
	} else {
		var err error
		if tables, err = c.ldmTables(); err != nil {
			return nil, err
		}
		srcs["unet"], srcs["vae"] = c.UNet.Source, c.VAE.Source
		for _, te := range c.TextEncoders {
			srcs[te.Name] = te.Source
		}
	}
	var out []*ExportTensor
	fused := map[string]*ExportTensor{}
	for comp, src := range srcs {
		tab := tables[comp]
		if tab == nil {
			return nil, fmt.Errorf("model: %s: no single-file names for component %s", c.Path, comp)
		}
		for _, key := range src.Keys() {
			e := src.Entry(key)
			file, conv, part, ok := tab.toFile(key)
			if !ok {
				return nil, fmt.Errorf("model: %s: %s: no single-file name for %q", c.Path, comp, key)
			}
			x := &ExportTensor{Name: file, Component: comp, Shape: append([]int(nil), e.Shape...), conv: conv, parts: []*Entry{e}}
			switch conv {
			case convLinearFrom1x1:
				x.Shape = append(x.Shape, 1, 1)
			case convTranspose:
				x.Shape = []int{e.Shape[1], e.Shape[0]}
			case convSplitQKV:
				f := fused[file]
				if f == nil {
					f = &ExportTensor{Name: file, Component: comp, Shape: append([]int{3 * e.Shape[0]}, e.Shape[1:]...), conv: conv, parts: make([]*Entry, 3)}
					fused[file] = f
					out = append(out, f)
				}
				f.parts[part] = e
				continue
			}
			out = append(out, x)
		}
	}
	for _, f := range fused {
		for i, p := range f.parts {
			if p == nil {
				return nil, fmt.Errorf("model: %s: %s: part %d of the fused tensor %s is missing", c.Path, f.Component, i, f.Name)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// NumElem is the tensor's element count.
func (x *ExportTensor) NumElem() int {
	n := 1
	for _, d := range x.Shape {
		n *= d
	}
	return n
}

// Stored returns the tensor's bytes as they are stored, when no
// conversion needs the values: one entry in the file's order (renamed or
// reshaped), or the q, k and v thirds of one stored type concatenated
// (blocks stay whole: each third is whole rows). ok is false for a
// transposed tensor or parts of mixed types.
func (x *ExportTensor) Stored() (dtype safetensors.DType, quant gguf.Type, raw []byte, ok bool) {
	if x.conv == convTranspose {
		return "", 0, nil, false
	}
	p0 := x.parts[0]
	for _, p := range x.parts[1:] {
		if p.DType != p0.DType || p.Quant != p0.Quant {
			return "", 0, nil, false
		}
	}
	if len(x.parts) == 1 {
		return p0.DType, p0.Quant, p0.Bytes(), true
	}
	for _, p := range x.parts {
		raw = append(raw, p.Bytes()...)
	}
	return p0.DType, p0.Quant, raw, true
}

// Float32s returns the tensor's values in the file's layout.
func (x *ExportTensor) Float32s() ([]float32, error) {
	var out []float32
	for _, p := range x.parts {
		v, err := p.Float32s()
		if err != nil {
			return nil, err
		}
		out = append(out, v...)
	}
	if x.conv == convTranspose {
		rows, cols := x.Shape[1], x.Shape[0] // the entry's shape
		t := make([]float32, len(out))
		for r := range rows {
			for c := range cols {
				t[c*rows+r] = out[r*cols+c]
			}
		}
		out = t
	}
	return out, nil
}
