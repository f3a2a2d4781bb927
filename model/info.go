package model

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/zimage/zimage/model/safetensors"
)

// ComponentInfo summarises one component's weights.
type ComponentInfo struct {
	Name    string                    `json:"name"` // "unet", "vae", "text_encoder", "text_encoder_2", "transformer"
	Class   string                    `json:"class"`
	Tensors int                       `json:"tensors"`
	Params  int64                     `json:"params"`
	DTypes  map[safetensors.DType]int `json:"dtypes"` // tensor count per stored dtype or GGUF block type
	// FileBytes is the size of the weights as stored.
	FileBytes int64 `json:"file_bytes"`
	// DeviceBytes is what the pipeline uploads: matrices as F16, vectors as
	// F32, block-quantized Linear and Conv2d weights as their blocks (see
	// Weights.Param, ParamQ); for the VAE only the decoder half, for
	// Z-Image's Qwen3 text encoder all but the last layer and final norm
	// (the pipeline reads hidden_states[-2]).
	DeviceBytes int64 `json:"device_bytes"`
}

// Info describes a checkpoint for `zimage info`.
type Info struct {
	Path       string          `json:"path"`
	Format     Format          `json:"format"`
	Arch       Arch            `json:"arch"`
	Pipeline   string          `json:"pipeline"` // model_index.json _class_name
	Scheduler  string          `json:"scheduler"`
	Components []ComponentInfo `json:"components"`
	Params     int64           `json:"params"`
	FileBytes  int64           `json:"file_bytes"`
	// DeviceWeightBytes sums the components' DeviceBytes.
	DeviceWeightBytes int64 `json:"device_weight_bytes"`
	// ActivationBytes estimates the peak activation memory of one image of
	// ActivationSize² with ActivationRows batch rows: for Stable Diffusion
	// 512² with classifier-free guidance (2 rows, see activationBytes512),
	// for Z-Image its base size 1024² without guidance (1 row, as the
	// turbo model runs; see Memory).
	ActivationBytes int64 `json:"activation_bytes"`
	ActivationSize  int   `json:"activation_size"`
	ActivationRows  int   `json:"activation_rows"`
	// DeviceBytes = DeviceWeightBytes + ActivationBytes: the device memory
	// a fully resident run needs (offloading needs less).
	DeviceBytes int64 `json:"device_bytes"`
	// Memory breaks the estimate down by stage for several sizes (Z-Image
	// only).
	Memory   []MemoryEstimate `json:"memory,omitempty"`
	Warnings []string         `json:"warnings"`
}

// InfoSize is the image side the memory estimate assumes.
const InfoSize = 512

// Info summarises the checkpoint without reading tensor data.
func (c *Checkpoint) Info() *Info {
	in := &Info{Path: c.Path, Format: c.Format, Arch: c.Arch, Warnings: c.Warnings}
	if c.Index != nil {
		in.Pipeline = c.Index.ClassName
	}
	if c.Scheduler != nil {
		in.Scheduler = c.Scheduler.ClassName
	}
	if c.Arch == ZImage {
		c.zimageInfo(in)
		return in
	}
	for _, te := range c.TextEncoders {
		in.add(te.Name, te.Class, te.Source, nil)
	}
	in.add("unet", c.UNet.Class, c.UNet.Source, nil)
	in.add("vae", c.VAE.Class, c.VAE.Source, vaeDecoderKey)
	in.ActivationBytes, in.ActivationSize, in.ActivationRows = c.activationBytes512(), InfoSize, 2
	in.DeviceBytes = in.DeviceWeightBytes + in.ActivationBytes
	return in
}

// add summarises a component's weights; used (nil: all) selects those the
// pipeline uploads.
func (in *Info) add(name, class string, src *Source, used func(key string) bool) ComponentInfo {
	ci := ComponentInfo{Name: name, Class: class, DTypes: map[safetensors.DType]int{}}
	for _, k := range src.Keys() {
		e := src.Entry(k)
		n := int64(e.NumElem())
		ci.Tensors++
		ci.Params += n
		ci.DTypes[safetensors.DType(e.TypeName())]++ // a GGUF block type ("Q4_K") counts under its name
		ci.FileBytes += e.StoredBytes()
		if used == nil || used(k) {
			ci.DeviceBytes += deviceBytes(k, e)
		}
	}
	in.Components = append(in.Components, ci)
	in.Params += ci.Params
	in.FileBytes += ci.FileBytes
	in.DeviceWeightBytes += ci.DeviceBytes
	return ci
}

// deviceBytes is the device size of the entry under key by the networks'
// storage rules (Weights.Param, ParamQ): F16 for rank >= 2, F32 below, and
// a block-quantized matrix whose rows are whole blocks at its blocks'
// size. Only Linear and Conv2d weights stay quantized; the matrices loaded
// otherwise are embedding tables and pad tokens, told here by name.
func deviceBytes(key string, e *Entry) int64 {
	n := int64(e.NumElem())
	if len(e.Shape) < 2 {
		return 4 * n
	}
	if qd, ok := e.Quant.DType(); ok && e.NumElem()/e.Shape[0]%qd.BlockSize() == 0 &&
		!strings.Contains(key, "embedding") && !strings.Contains(key, "embed_tokens") && !strings.Contains(key, "pad_token") {
		return e.StoredBytes()
	}
	return 2 * n
}

// vaeDecoderKey reports the VAE weights text-to-image uses.
func vaeDecoderKey(k string) bool {
	return strings.HasPrefix(k, "decoder.") || strings.HasPrefix(k, "post_quant_conv.")
}

// activationBytes512 estimates the largest F32 working set of the three
// stages at InfoSize x InfoSize with 2 rows (guidance: negative and
// positive prompt); stages run one after another, so the peak is the
// largest of them. The counts follow sched's budget estimates, plus one
// head's attention score matrix where attention is widest:
//   - text encoder: 77 tokens x (8 x hidden + 2 x intermediate) per row;
//   - UNet: the skip connections of every level plus ~18 tensors of the
//     first level's width at latent size, and a tokens x tokens score matrix
//     at the first attention level;
//   - VAE decoder: four tensors at the widest full- or half-resolution
//     stage, and the mid block's score matrix at latent size.
func (c *Checkpoint) activationBytes512() int64 {
	const rows, f32 = 2, 4
	var text int64
	for _, te := range c.TextEncoders {
		cfg := te.Config
		text = max(text, rows*77*f32*int64(8*cfg.HiddenSize+2*cfg.IntermediateSize))
	}

	vcfg := c.VAE.Config
	scale := 1 << max(len(vcfg.BlockOutChannels)-1, 0)
	lat := InfoSize / scale

	var unet int64
	if u := c.UNet.Config; len(u.BlockOutChannels) > 0 {
		var skips, scores int64
		hw := int64(lat * lat)
		for i, ch := range u.BlockOutChannels {
			skips += int64(u.LayersPerBlock+1) * int64(ch) * hw
			if scores == 0 && i < len(u.DownBlockTypes) && strings.HasPrefix(u.DownBlockTypes[i], "CrossAttn") {
				scores = hw * hw
			}
			hw /= 4
		}
		work := int64(lat*lat) * int64(u.BlockOutChannels[0]) * 18
		unet = rows * f32 * (skips + work + scores)
	}

	var vae int64
	if len(vcfg.BlockOutChannels) > 0 {
		widest := 0
		for _, ch := range vcfg.BlockOutChannels {
			widest = max(widest, ch)
		}
		full := int64(InfoSize*InfoSize) * int64(vcfg.BlockOutChannels[0])
		half := int64(InfoSize*InfoSize/4) * int64(widest)
		tokens := int64(lat * lat)
		vae = f32 * (4*max(full, half) + tokens*tokens)
	}
	return max(text, unet, vae)
}

// String renders the summary as `zimage info` prints it.
func (in *Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "path:          %s\n", in.Path)
	fmt.Fprintf(&b, "format:        %s\n", in.Format)
	fmt.Fprintf(&b, "architecture:  %s\n", in.Arch)
	if in.Pipeline != "" {
		fmt.Fprintf(&b, "pipeline:      %s\n", in.Pipeline)
	}
	if in.Scheduler != "" {
		fmt.Fprintf(&b, "scheduler:     %s\n", in.Scheduler)
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "component\tclass\ttensors\tparams\tdtypes\tstored\tdevice\t")
	for _, c := range in.Components {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t\n", c.Name, c.Class, c.Tensors, FormatCount(c.Params),
			formatDTypes(c.DTypes), FormatBytes(c.FileBytes), FormatBytes(c.DeviceBytes))
	}
	fmt.Fprintf(tw, "total\t\t\t%s\t\t%s\t%s\t\n", FormatCount(in.Params), FormatBytes(in.FileBytes), FormatBytes(in.DeviceWeightBytes))
	tw.Flush()
	if len(in.Memory) > 0 {
		in.writeMemory(&b)
	} else {
		fmt.Fprintf(&b, "\nestimated device memory at %dx%d: %s (weights %s as stored on the device + activations ~%s, guidance batch of 2, all weights resident)\n",
			InfoSize, InfoSize, FormatBytes(in.DeviceBytes), FormatBytes(in.DeviceWeightBytes), FormatBytes(in.ActivationBytes))
	}
	if len(in.Warnings) > 0 {
		b.WriteString("\nwarnings:\n")
		for _, w := range in.Warnings {
			fmt.Fprintf(&b, "  - %s\n", w)
		}
	}
	return b.String()
}

func formatDTypes(m map[safetensors.DType]int) string {
	names := make([]string, 0, len(m))
	for d := range m {
		names = append(names, string(d))
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s:%d", n, m[safetensors.DType(n)])
	}
	return strings.Join(parts, " ")
}

// FormatBytes renders a byte count with a binary unit ("1.5 GiB").
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[i])
}

// FormatCount renders a parameter count ("865.9M").
func FormatCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
