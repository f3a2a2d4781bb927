package lora

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/safetensors"
)

// ComponentInfo summarises the modules a LoRA adapts in one network.
type ComponentInfo struct {
	Name    string         `json:"name"` // "unet", "text_encoder", ...; "" for keys of no known network
	Modules int            `json:"modules"`
	Kinds   map[string]int `json:"kinds"` // "linear", "conv1x1", "conv3x3"
	// Targets counts modules by what they are: "attention", "feed-forward",
	// "projection", "resnet", "sampler", "time-embedding", "other".
	Targets map[string]int `json:"targets"`
}

// Info describes a LoRA file for `zimage info`.
type Info struct {
	Path   string     `json:"path"`
	Name   string     `json:"name"` // what <lora:NAME> tags use
	Format Format     `json:"format"`
	Arch   model.Arch `json:"arch"`
	// ArchFrom says what the architecture was read from.
	ArchFrom   string                    `json:"arch_from"`
	Components []ComponentInfo           `json:"components"`
	Modules    int                       `json:"modules"`
	Ranks      []int                     `json:"ranks"`
	Alphas     []float64                 `json:"alphas"`   // distinct alphas of the modules that have one
	NoAlpha    int                       `json:"no_alpha"` // modules without alpha (alpha = rank)
	Tensors    int                       `json:"tensors"`
	Params     int64                     `json:"params"`
	DTypes     map[safetensors.DType]int `json:"dtypes"`
	FileBytes  int64                     `json:"file_bytes"`
	Hash       string                    `json:"hash"` // A1111's (sshs_model_hash or addnet)
	ShortHash  string                    `json:"short_hash"`
	// Metadata holds the training metadata worth showing (ss_*, modelspec.*).
	Metadata map[string]string `json:"metadata"`
	Unknown  []string          `json:"unknown"` // tensors of no LoRA module
}

// IsLoRA reports whether a safetensors file's keys are those of a LoRA
// (kohya or PEFT), so that `zimage info` can tell LoRAs from checkpoints
// by the header alone.
func IsLoRA(names []string) bool {
	for _, n := range names {
		for _, s := range suffixes {
			if s.p != partAlpha && strings.HasSuffix(n, s.s) {
				return true
			}
		}
	}
	return false
}

// shownMetadata are the metadata keys Info keeps.
var shownMetadata = []string{"ss_output_name", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
	"ss_base_model_version", "ss_sd_model_name", "ss_training_comment", "modelspec.architecture", "modelspec.title", "modelspec.trigger_phrase"}

// Inspect summarises an open LoRA file.
func Inspect(f *File) (*Info, error) {
	in := &Info{Path: f.Path, Name: f.Name, Format: f.Format, Modules: len(f.Modules), DTypes: map[safetensors.DType]int{},
		Metadata: map[string]string{}, Unknown: f.Unknown}
	for _, k := range shownMetadata {
		if v, ok := f.Metadata[k]; ok {
			in.Metadata[k] = v
		}
	}
	comps := map[string]*ComponentInfo{}
	ranks := map[int]bool{}
	alphas := map[float64]bool{}
	for _, m := range f.Modules {
		c := comps[m.Component]
		if c == nil {
			c = &ComponentInfo{Name: m.Component, Kinds: map[string]int{}, Targets: map[string]int{}}
			comps[m.Component] = c
		}
		c.Modules++
		c.Kinds[m.Kind()]++
		c.Targets[targetOf(m)]++
		ranks[m.Rank()] = true
		if m.HasAlpha {
			alphas[m.Alpha] = true
		} else {
			in.NoAlpha++
		}
	}
	for _, t := range f.st.Tensors() {
		in.Tensors++
		in.Params += t.NumElem()
		in.DTypes[t.DType]++
		in.FileBytes += t.Bytes()
	}
	names := make([]string, 0, len(comps))
	for n := range comps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		in.Components = append(in.Components, *comps[n])
	}
	for r := range ranks {
		in.Ranks = append(in.Ranks, r)
	}
	sort.Ints(in.Ranks)
	for a := range alphas {
		in.Alphas = append(in.Alphas, a)
	}
	sort.Float64s(in.Alphas)
	in.Arch, in.ArchFrom = guessArch(f)
	var err error
	if in.Hash, err = f.Hash(); err != nil {
		return nil, err
	}
	in.ShortHash = ShortHash(in.Hash)
	return in, nil
}

// targetOf groups a module by its role, from its name in either naming.
func targetOf(m *Module) string {
	n := strings.ReplaceAll(m.Name, ".", "_")
	has := func(s ...string) bool {
		for _, x := range s {
			if strings.Contains(n, x) {
				return true
			}
		}
		return false
	}
	switch {
	case has("attn1_", "attn2_", "self_attn_", "_attn_"):
		return "attention"
	case has("_ff_", "ff_net", "mlp_"):
		return "feed-forward"
	case has("proj_in", "proj_out", "text_projection"):
		return "projection"
	case has("downsamplers", "upsamplers", "_op", "_conv") && !has("resnets", "_layers_", "skip_connection", "conv_shortcut"):
		return "sampler"
	case has("resnets", "in_layers", "out_layers", "emb_layers", "skip_connection", "conv1", "conv2", "time_emb_proj", "conv_shortcut"):
		return "resnet"
	case has("time_embed", "label_emb", "add_embedding"):
		return "time-embedding"
	}
	return "other"
}

// guessArch reads the family from the training metadata, else from the
// keys: a second text encoder means SDXL; the width of the cross
// attention's key input (768 SD 1.x, 1024 SD 2.x, 2048 SDXL) or of the
// text encoder tells the rest.
func guessArch(f *File) (model.Arch, string) {
	md := f.Metadata
	if v := md["modelspec.architecture"]; v != "" {
		switch {
		case strings.HasPrefix(v, "stable-diffusion-xl"):
			return model.SDXL, "modelspec.architecture " + v
		case strings.HasPrefix(v, "stable-diffusion-v2"):
			return model.SD2, "modelspec.architecture " + v
		case strings.HasPrefix(v, "stable-diffusion-v1"):
			return model.SD1, "modelspec.architecture " + v
		}
		return model.ArchUnknown, "modelspec.architecture " + v
	}
	if v := md["ss_base_model_version"]; v != "" {
		switch {
		case strings.HasPrefix(v, "sdxl"):
			return model.SDXL, "ss_base_model_version " + v
		case strings.HasPrefix(v, "sd_v2"):
			return model.SD2, "ss_base_model_version " + v
		case strings.HasPrefix(v, "sd_v1"):
			return model.SD1, "ss_base_model_version " + v
		}
	}
	if v, err := strconv.ParseBool(md["ss_v2"]); err == nil && v {
		return model.SD2, "ss_v2"
	}
	for _, m := range f.Modules {
		if m.Component == "text_encoder_2" {
			return model.SDXL, "a second text encoder (" + m.Key + ")"
		}
	}
	for _, m := range f.Modules {
		n := strings.ReplaceAll(m.Name, ".", "_")
		if m.Component == "unet" && strings.HasSuffix(n, "attn2_to_k") {
			switch m.Down.Shape[1] {
			case 768:
				return model.SD1, "cross-attention width 768"
			case 1024:
				return model.SD2, "cross-attention width 1024"
			case 2048:
				return model.SDXL, "cross-attention width 2048"
			}
		}
	}
	for _, m := range f.Modules {
		if m.Component == "text_encoder" && strings.HasSuffix(m.Name, "q_proj") {
			switch m.Down.Shape[1] {
			case 768:
				return model.SD1, "text encoder width 768"
			case 1024:
				return model.SD2, "text encoder width 1024"
			}
		}
	}
	return model.ArchUnknown, "neither metadata nor tensor widths say"
}

// String is the human-readable summary.
func (in *Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: LoRA (%s format), <lora:%s>\n", in.Path, in.Format, in.Name)
	arch := in.Arch.String()
	fmt.Fprintf(&b, "architecture: %s (from %s)\n", arch, in.ArchFrom)
	fmt.Fprintf(&b, "modules: %d, ranks %v", in.Modules, in.Ranks)
	if len(in.Alphas) > 0 {
		fmt.Fprintf(&b, ", alphas %v", in.Alphas)
	}
	if in.NoAlpha > 0 {
		fmt.Fprintf(&b, ", %d without alpha (alpha = rank)", in.NoAlpha)
	}
	fmt.Fprintf(&b, "\ntensors: %d, %s parameters, %s %s\n", in.Tensors, model.FormatCount(in.Params), model.FormatBytes(in.FileBytes), formatDTypes(in.DTypes))
	fmt.Fprintf(&b, "hash: %s (A1111 short hash %s)\n", in.Hash, in.ShortHash)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "component\tmodules\tkinds\ttargets")
	for _, c := range in.Components {
		name := c.Name
		if name == "" {
			name = "(unknown)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", name, c.Modules, formatCounts(c.Kinds), formatCounts(c.Targets))
	}
	tw.Flush()
	if len(in.Metadata) > 0 {
		keys := make([]string, 0, len(in.Metadata))
		for k := range in.Metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "%s: %s\n", k, in.Metadata[k])
		}
	}
	if len(in.Unknown) > 0 {
		fmt.Fprintf(&b, "%d tensors of no LoRA module (e.g. %s)\n", len(in.Unknown), in.Unknown[0])
	}
	return b.String()
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func formatDTypes(m map[safetensors.DType]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, string(k))
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s x%d", k, m[safetensors.DType(k)])
	}
	return "(" + strings.Join(parts, ", ") + ")"
}
