package model

// FLOP counts of one UNet call, walking the loaded structure with the same
// shapes Forward produces. A FLOP is half a multiply-add; only convolutions,
// linears and the two attention matmuls count (norms, activations, softmax
// and copies are a few percent of the work and memory-bound anyway).

// UNetFLOPs splits a call's FLOPs by the kind of kernel that runs them.
type UNetFLOPs struct {
	Conv, Linear, Attention float64
}

// Total is the sum of all kinds.
func (f UNetFLOPs) Total() float64 { return f.Conv + f.Linear + f.Attention }

func convFLOPs(c *Conv2d, b, oh, ow int) float64 {
	return 2 * float64(b) * float64(c.Weight.Shape.NumElem()) * float64(oh) * float64(ow)
}

func linFLOPs(l *Linear, rows int) float64 {
	return 2 * float64(rows) * float64(l.Weight.Shape.NumElem())
}

// FLOPs of one Forward on latents [batch, in, h, w] with ctxLen context
// tokens.
func (u *UNet) FLOPs(h, w, batch, ctxLen int) float64 {
	return u.FLOPCount(h, w, batch, ctxLen).Total()
}

// FLOPCount is FLOPs split by kind.
func (u *UNet) FLOPCount(h, w, batch, ctxLen int) UNetFLOPs {
	var f UNetFLOPs
	f.Linear = linFLOPs(u.TimeEmbedding.Linear1, batch) + linFLOPs(u.TimeEmbedding.Linear2, batch)
	if u.AddEmbedding != nil {
		f.Linear += linFLOPs(u.AddEmbedding.Linear1, batch) + linFLOPs(u.AddEmbedding.Linear2, batch)
	}
	f.Conv += convFLOPs(u.ConvIn, batch, h, w)
	sizes := [][2]int{{h, w}}
	for _, d := range u.DownBlocks {
		for i, r := range d.Resnets {
			r.flops(&f, batch, h, w)
			if d.Attentions != nil {
				d.Attentions[i].flops(&f, batch, h, w, ctxLen)
			}
			sizes = append(sizes, [2]int{h, w})
		}
		if d.Downsampler != nil {
			h, w = (h-1)/2+1, (w-1)/2+1
			f.Conv += convFLOPs(d.Downsampler.Conv, batch, h, w)
			sizes = append(sizes, [2]int{h, w})
		}
	}
	u.MidBlock.Resnets[0].flops(&f, batch, h, w)
	for i, a := range u.MidBlock.Attentions {
		a.flops(&f, batch, h, w, ctxLen)
		u.MidBlock.Resnets[i+1].flops(&f, batch, h, w)
	}
	for _, up := range u.UpBlocks {
		sizes = sizes[:len(sizes)-len(up.Resnets)]
		for i, r := range up.Resnets {
			r.flops(&f, batch, h, w)
			if up.Attentions != nil {
				up.Attentions[i].flops(&f, batch, h, w, ctxLen)
			}
		}
		if up.Upsampler != nil && len(sizes) > 0 {
			s := sizes[len(sizes)-1]
			h, w = s[0], s[1]
			f.Conv += convFLOPs(up.Upsampler.Conv, batch, h, w)
		}
	}
	f.Conv += convFLOPs(u.ConvOut, batch, h, w)
	return f
}

func (r *UNetResnet) flops(f *UNetFLOPs, b, h, w int) {
	f.Conv += convFLOPs(r.Conv1, b, h, w) + convFLOPs(r.Conv2, b, h, w)
	f.Linear += linFLOPs(r.TimeEmbProj, b)
	if r.ConvShortcut != nil {
		f.Conv += convFLOPs(r.ConvShortcut, b, h, w)
	}
}

func (t *UNetTransformer) flops(f *UNetFLOPs, b, h, w, ctxLen int) {
	l := b * h * w
	f.Linear += linFLOPs(t.ProjIn, l) + linFLOPs(t.ProjOut, l)
	for _, tb := range t.TransformerBlocks {
		dim := float64(tb.Attn1.ToQ.Weight.Shape[0])
		f.Linear += linFLOPs(tb.Attn1.ToQ, l) + linFLOPs(tb.Attn1.ToK, l) + linFLOPs(tb.Attn1.ToV, l) + linFLOPs(tb.Attn1.ToOut, l)
		f.Linear += linFLOPs(tb.Attn2.ToQ, l) + linFLOPs(tb.Attn2.ToK, b*ctxLen) + linFLOPs(tb.Attn2.ToV, b*ctxLen) + linFLOPs(tb.Attn2.ToOut, l)
		f.Linear += linFLOPs(tb.FF.Proj, l) + linFLOPs(tb.FF.Out, l)
		// q·kᵀ and p·v over all heads, self- then cross-attention.
		f.Attention += 4*float64(b)*float64(h*w)*float64(h*w)*dim + 4*float64(b)*float64(h*w)*float64(ctxLen)*dim
	}
}
