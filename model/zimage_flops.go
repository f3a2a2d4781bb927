package model

// ZImageFLOPs splits one transformer call's FLOPs (2 per multiply-add) by
// the kind of kernel that runs them: the Linears and the two attention
// matmuls (q·kᵀ and p·v). Norms, RoPE, activations and copies are left out
// (memory-bound, a few percent).
type ZImageFLOPs struct {
	Linear, Attention float64
}

// Total is the sum of all kinds.
func (f ZImageFLOPs) Total() float64 { return f.Linear + f.Attention }

// FLOPs of one Forward on batch items of an h x w latent with capLen
// caption tokens each, counted on the padded sequences the call runs.
func (m *ZImageTransformer) FLOPs(h, w, capLen, batch int) float64 {
	return m.FLOPCount(h, w, capLen, batch).Total()
}

// FLOPCount is FLOPs split by kind.
func (m *ZImageTransformer) FLOPCount(h, w, capLen, batch int) ZImageFLOPs {
	lx := roundUp((h/zimagePatch)*(w/zimagePatch), zimageSeqMulti)
	lc := roundUp(capLen, zimageSeqMulti)
	b := float64(batch)
	var f ZImageFLOPs
	f.Linear += linFLOPs(m.TEmbedder.Linear1, batch) + linFLOPs(m.TEmbedder.Linear2, batch)
	f.Linear += linFLOPs(m.XEmbedder, batch*lx) + linFLOPs(m.CapEmbedder.Linear, batch*lc)
	block := func(bl *ZImageBlock, l int) {
		a := bl.Attention
		rows := batch * l
		f.Linear += linFLOPs(a.ToQ, rows) + linFLOPs(a.ToK, rows) + linFLOPs(a.ToV, rows) + linFLOPs(a.ToOut, rows)
		f.Linear += linFLOPs(bl.FeedForward.W1, rows) + linFLOPs(bl.FeedForward.W2, rows) + linFLOPs(bl.FeedForward.W3, rows)
		if bl.AdaLNModulation != nil {
			f.Linear += linFLOPs(bl.AdaLNModulation, batch)
		}
		f.Attention += 4 * b * float64(l) * float64(l) * float64(m.Config.Dim)
	}
	for _, bl := range m.NoiseRefiner {
		block(bl, lx)
	}
	for _, bl := range m.ContextRefiner {
		block(bl, lc)
	}
	for _, bl := range m.Layers {
		block(bl, lx+lc)
	}
	f.Linear += linFLOPs(m.FinalLayer.AdaLNModulation, batch) + linFLOPs(m.FinalLayer.Linear, batch*(lx+lc))
	return f
}
