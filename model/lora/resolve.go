package lora

import (
	"fmt"
	"strings"

	"github.com/zimage/zimage/model"
)

// Network is one network of a pipeline that LoRAs can adapt.
type Network struct {
	// Component is the diffusers component name ("unet", "text_encoder",
	// "text_encoder_2"); PEFT keys start with it.
	Component string
	Modules   []model.Module
	// KohyaPrefixes are the prefixes of kohya keys for this network
	// ("lora_unet_"); the module path follows with "." written as "_".
	KohyaPrefixes []string
	// Aliases are other paths kohya files use for a module (the UNet's
	// LDM/SGM names, which kohya writes for SDXL), by module path.
	Aliases map[string]string
}

// Target indexes the modules of a loaded pipeline by every name LoRA
// files use for them.
type Target struct {
	nets  []Network
	byKey map[string]model.Module // "<component>:<path>"
	kohya map[string]binding      // full kohya module key
	peft  map[string]binding      // "<component>.<path>"
}

type binding struct {
	component string
	mod       model.Module
}

// NewTarget indexes the networks.
func NewTarget(nets ...Network) *Target {
	t := &Target{nets: nets, byKey: map[string]model.Module{}, kohya: map[string]binding{}, peft: map[string]binding{}}
	for _, n := range nets {
		for _, m := range n.Modules {
			r := binding{component: n.Component, mod: m}
			t.byKey[n.Component+":"+m.Path] = m
			t.peft[n.Component+"."+m.Path] = r
			names := []string{m.Path}
			if a, ok := n.Aliases[m.Path]; ok && a != m.Path {
				names = append(names, a)
			}
			for _, p := range n.KohyaPrefixes {
				for _, name := range names {
					t.kohya[p+strings.ReplaceAll(name, ".", "_")] = r
				}
			}
		}
	}
	return t
}

// SDTarget is the Target of a Stable Diffusion pipeline: the UNet (kohya
// names in the diffusers and the LDM/SGM layout) and its text encoders in
// pipeline order (text_encoder: lora_te_ or lora_te1_; SDXL's
// text_encoder_2: lora_te2_).
func SDTarget(unet *model.UNet, encoders ...*model.CLIPText) *Target {
	nets := []Network{{Component: "unet", Modules: unet.Modules(), KohyaPrefixes: []string{"lora_unet_"}, Aliases: unet.LDMNames()}}
	for i, e := range encoders {
		n := Network{Component: "text_encoder", Modules: e.Modules(), KohyaPrefixes: []string{"lora_te_", "lora_te1_"}}
		if i == 1 {
			n.Component, n.KohyaPrefixes = "text_encoder_2", []string{"lora_te2_"}
		}
		nets = append(nets, n)
	}
	return NewTarget(nets...)
}

// ZImageTarget is the Target of a Z-Image pipeline: the transformer,
// under diffusers/PEFT "transformer." keys or kohya-style "lora_unet_"
// names. (The Qwen3 text encoder is not a LoRA target.)
func ZImageTarget(dit *model.ZImageTransformer) *Target {
	return NewTarget(Network{Component: "transformer", Modules: dit.Modules(), KohyaPrefixes: []string{"lora_unet_", "lora_transformer_"}})
}

// Networks lists the indexed networks.
func (t *Target) Networks() []Network { return t.nets }

// Binding is one module of a file bound to the model's module.
type Binding struct {
	Component string
	Module    model.Module
	Src       *Module
}

// Resolved is a file mapped onto a Target.
type Resolved struct {
	File     *File
	Bindings []Binding
	// Skipped lists the file's keys that matched nothing (only with
	// ignoreUnknown).
	Skipped []string
}

// UnknownModuleError reports keys of a file that match no module of the
// model: usually a LoRA for another architecture.
type UnknownModuleError struct {
	Path    string
	Keys    []string // every unmatched key
	Matched int      // modules that did match
}

func (e *UnknownModuleError) Error() string {
	show := e.Keys[:min(len(e.Keys), 4)]
	more := ""
	if len(e.Keys) > len(show) {
		more = fmt.Sprintf(" and %d more", len(e.Keys)-len(show))
	}
	hint := "a LoRA for another architecture?"
	if e.Matched > 0 {
		hint = fmt.Sprintf("%d other modules match; a LoRA for another architecture? ignore-unknown (--lora-ignore-unknown) applies the matching ones", e.Matched)
	}
	return fmt.Sprintf("lora: %s: %d keys match no module of this model (%s%s): %s", e.Path, len(e.Keys), strings.Join(show, ", "), more, hint)
}

// Resolve maps every module of f onto the model. Keys that match nothing
// fail with *UnknownModuleError unless ignoreUnknown (a file that matches
// nothing at all always fails); tensors whose shapes do not fit their
// module fail with *ShapeError.
func (t *Target) Resolve(f *File, ignoreUnknown bool) (*Resolved, error) {
	r := &Resolved{File: f}
	unknown := append([]string(nil), f.Unknown...)
	seen := map[string]string{}
	var shapeErr error // reported after unknown keys, the likelier cause
	for _, m := range f.Modules {
		var b binding
		var ok bool
		if m.Format == Kohya {
			b, ok = t.kohya[m.Key]
		} else {
			b, ok = t.peft[m.Key]
		}
		if !ok {
			unknown = append(unknown, m.Key)
			continue
		}
		id := b.component + ":" + b.mod.Path
		if prev, dup := seen[id]; dup {
			return nil, fmt.Errorf("lora: %s: %q and %q both adapt %s %s", f.Path, prev, m.Key, b.component, b.mod.Path)
		}
		seen[id] = m.Key
		if err := fits(f.Path, m, b.component, b.mod); err != nil {
			if shapeErr == nil {
				shapeErr = err
			}
			continue
		}
		r.Bindings = append(r.Bindings, Binding{Component: b.component, Module: b.mod, Src: m})
	}
	if len(unknown) > 0 && (!ignoreUnknown || len(r.Bindings) == 0) {
		return nil, &UnknownModuleError{Path: f.Path, Keys: unknown, Matched: len(r.Bindings)}
	}
	if shapeErr != nil {
		return nil, shapeErr
	}
	r.Skipped = unknown
	return r, nil
}

// fits checks the pair's shapes against the module: a Linear takes
// [r, in] / [out, r] (or the same as 1x1 convs); a KxK conv takes a KxK
// lora_down and a 1x1 lora_up.
func fits(path string, m *Module, component string, mod model.Module) error {
	in, out, k := mod.In(), mod.Out(), mod.Kernel()
	r := m.Rank()
	d, u := m.Down.Shape, m.Up.Shape
	where := component + " " + mod.Path
	var downOK bool
	var want string
	switch {
	case k == 0 || k == 1:
		downOK = d[1] == in && (len(d) == 2 || d[2] == 1 && d[3] == 1)
		want = fmt.Sprintf("[%d %d] or [%d %d 1 1]", r, in, r, in)
	default:
		downOK = len(d) == 4 && d[1] == in && d[2] == k && d[3] == k
		want = fmt.Sprintf("[%d %d %d %d]", r, in, k, k)
	}
	if !downOK {
		return &ShapeError{Path: path, Tensor: m.Down.Name, Module: where, Got: d, Want: want}
	}
	if u[0] != out {
		return &ShapeError{Path: path, Tensor: m.Up.Name, Module: where, Got: u, Want: fmt.Sprintf("[%d %d] or [%d %d 1 1]", out, r, out, r)}
	}
	return nil
}
