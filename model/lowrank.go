package model

import (
	"fmt"

	"github.com/zimage/zimage/engine"
)

// LowRank is the term a LoRA adds to a Linear or Conv2d in the forward
// pass, for weights that cannot be merged (streamed, later quantized):
// y = W x + Up(Down(x)). Several LoRAs on one module are concatenated along
// the rank, and their multipliers and alpha/rank scales are folded into
// Up's columns, so any number of them costs three dispatches.
//
// Shapes (R = the summed rank):
//   - Linear (also the 1x1-conv projections that run as one): Down [R, in],
//     Up [out, R].
//   - Conv2d: Down [R, in, kh, kw] with the module's own kernel, stride and
//     padding (LoCon: a 3x3 down over a stride-2 downsampler too), Up
//     [out, R, 1, 1].
//
// The tensors belong to whoever attached them (model/lora), which frees
// them after detaching.
type LowRank struct {
	Down, Up *engine.Tensor
}

// addLinear adds Up(Down(x)) to y [..., out]; x is [..., in].
func (a *LowRank) addLinear(rec *engine.Rec, y, x *engine.Tensor) {
	if y == nil || rec.Err() != nil {
		return
	}
	t := rec.Linear(a.Down.Name, x, a.Down, nil) // [..., R]
	u := rec.Linear(a.Up.Name, t, a.Up, nil)     // [..., out]
	rec.Free(t)
	rec.AddInPlace(y, u)
	rec.Free(u)
}

// addConv adds Up(Down(x)) to y [N, out, H', W']; Down runs with the
// module's stride and padding, Up is 1x1.
func (a *LowRank) addConv(rec *engine.Rec, y, x *engine.Tensor, stride, pad int) {
	if y == nil || rec.Err() != nil {
		return
	}
	t := rec.Conv2d(a.Down.Name, x, a.Down, nil, stride, pad) // [N, R, H', W']
	u := rec.Conv2d(a.Up.Name, t, a.Up, nil, 1, 0)            // [N, out, H', W']
	rec.Free(t)
	rec.AddInPlace(y, u)
	rec.Free(u)
}

// Module is one Linear or Conv2d of a network: what a LoRA can adapt.
// Exactly one of Linear and Conv is set.
type Module struct {
	// Path is the canonical (diffusers) module path: the weight's key
	// without ".weight", e.g. "down_blocks.0.attentions.0.proj_in".
	Path   string
	Linear *Linear
	Conv   *Conv2d
}

// Weight is the module's weight parameter.
func (m Module) Weight() *Param {
	if m.Conv != nil {
		return m.Conv.Weight
	}
	return m.Linear.Weight
}

// Kernel is the convolution kernel size, 0 for a Linear (including the
// 1x1-conv projections that run as a Linear).
func (m Module) Kernel() int {
	if m.Conv != nil {
		return m.Weight().Shape[2]
	}
	return 0
}

// In and Out are the input and output features (channels).
func (m Module) In() int  { return m.Weight().Shape[1] }
func (m Module) Out() int { return m.Weight().Shape[0] }

// LoRA returns the attached low-rank term, or nil.
func (m Module) LoRA() *LowRank {
	if m.Conv != nil {
		return m.Conv.LoRA
	}
	return m.Linear.LoRA
}

// SetLoRA attaches a (nil: detaches the) low-rank term, checking its
// shapes against the module.
func (m Module) SetLoRA(a *LowRank) error {
	if a != nil {
		if err := m.checkLowRank(a); err != nil {
			return err
		}
	}
	if m.Conv != nil {
		m.Conv.LoRA = a
	} else {
		m.Linear.LoRA = a
	}
	return nil
}

func (m Module) checkLowRank(a *LowRank) error {
	if a.Down == nil || a.Up == nil || len(a.Down.Shape) == 0 {
		return fmt.Errorf("model: %s: low-rank term without down or up tensor", m.Path)
	}
	r := a.Down.Shape[0]
	want := [2]engine.Shape{{r, m.In()}, {m.Out(), r}}
	if k := m.Kernel(); k > 0 {
		want = [2]engine.Shape{{r, m.In(), k, k}, {m.Out(), r, 1, 1}}
	}
	for i, t := range []*engine.Tensor{a.Down, a.Up} {
		if !t.Shape.Equal(want[i]) {
			return &engine.ShapeError{Op: "lora " + m.Path, Tensor: t.Name, Got: t.Shape.String(), Want: want[i].String()}
		}
	}
	return nil
}

// Modules lists every Linear and Conv2d of the UNet in execution order.
func (u *UNet) Modules() []Module {
	var ms moduleList
	ms.linear(u.TimeEmbedding.Linear1, u.TimeEmbedding.Linear2)
	if u.AddEmbedding != nil {
		ms.linear(u.AddEmbedding.Linear1, u.AddEmbedding.Linear2)
	}
	ms.conv(u.ConvIn)
	for _, d := range u.DownBlocks {
		for i, r := range d.Resnets {
			ms.resnet(r)
			if d.Attentions != nil {
				ms.transformer(d.Attentions[i])
			}
		}
		if d.Downsampler != nil {
			ms.conv(d.Downsampler.Conv)
		}
	}
	ms.resnet(u.MidBlock.Resnets[0])
	for i, a := range u.MidBlock.Attentions {
		ms.transformer(a)
		ms.resnet(u.MidBlock.Resnets[i+1])
	}
	for _, up := range u.UpBlocks {
		for i, r := range up.Resnets {
			ms.resnet(r)
			if up.Attentions != nil {
				ms.transformer(up.Attentions[i])
			}
		}
		if up.Upsampler != nil {
			ms.conv(up.Upsampler.Conv)
		}
	}
	ms.conv(u.ConvOut)
	return ms
}

// LDMNames maps each module path of Modules to its name in the LDM/SGM
// layout (the single-file one, without "model.diffusion_model."), e.g.
// "down_blocks.1.attentions.0.proj_in" -> "input_blocks.4.1.proj_in":
// kohya writes SDXL LoRAs with these names. Read through names.go's table.
func (u *UNet) LDMNames() map[string]string {
	c := u.Config
	l := unetLayout{levels: len(c.BlockOutChannels), layers: c.LayersPerBlock, upAttn: make([]bool, len(c.UpBlockTypes))}
	for i, t := range c.UpBlockTypes {
		l.upAttn[i] = t == "CrossAttnUpBlock2D"
	}
	t := newNameTable(unetRules(l))
	out := map[string]string{}
	for _, m := range u.Modules() {
		if f, _, _, ok := t.toFile(m.Path + ".weight"); ok {
			out[m.Path] = f[len(ldmUNet) : len(f)-len(".weight")]
		}
	}
	return out
}

// Modules lists every Linear of the text encoder in execution order.
func (m *CLIPText) Modules() []Module {
	var ms moduleList
	for _, l := range m.Layers {
		a := l.SelfAttn
		ms.linear(a.QProj, a.KProj, a.VProj, a.OutProj, l.MLP.FC1, l.MLP.FC2)
	}
	if m.TextProjection != nil {
		ms.linear(m.TextProjection)
	}
	return ms
}

type moduleList []Module

func modulePath(p *Param) string { return p.Key[:len(p.Key)-len(".weight")] }

func (ms *moduleList) linear(ls ...*Linear) {
	for _, l := range ls {
		*ms = append(*ms, Module{Path: modulePath(l.Weight), Linear: l})
	}
}

func (ms *moduleList) conv(cs ...*Conv2d) {
	for _, c := range cs {
		if c != nil {
			*ms = append(*ms, Module{Path: modulePath(c.Weight), Conv: c})
		}
	}
}

func (ms *moduleList) resnet(r *UNetResnet) {
	ms.conv(r.Conv1)
	ms.linear(r.TimeEmbProj)
	ms.conv(r.Conv2, r.ConvShortcut)
}

func (ms *moduleList) transformer(t *UNetTransformer) {
	ms.linear(t.ProjIn)
	for _, tb := range t.TransformerBlocks {
		for _, a := range []*UNetAttention{tb.Attn1, tb.Attn2} {
			ms.linear(a.ToQ, a.ToK, a.ToV, a.ToOut)
		}
		ms.linear(tb.FF.Proj, tb.FF.Out)
	}
	ms.linear(t.ProjOut)
}

// Modules lists every Linear of the Z-Image transformer in execution
// order (diffusers/PEFT Z-Image LoRAs name them under "transformer.").
func (m *ZImageTransformer) Modules() []Module {
	var ms moduleList
	ms.linear(m.TEmbedder.Linear1, m.TEmbedder.Linear2, m.XEmbedder, m.CapEmbedder.Linear)
	for _, group := range [][]*ZImageBlock{m.NoiseRefiner, m.ContextRefiner, m.Layers} {
		for _, b := range group {
			if b.AdaLNModulation != nil {
				ms.linear(b.AdaLNModulation)
			}
			a := b.Attention
			ms.linear(a.ToQ, a.ToK, a.ToV, a.ToOut, b.FeedForward.W1, b.FeedForward.W3, b.FeedForward.W2)
		}
	}
	ms.linear(m.FinalLayer.AdaLNModulation, m.FinalLayer.Linear)
	return ms
}
