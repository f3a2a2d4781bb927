package model

import (
	"fmt"
	"math"

	"github.com/zimage/zimage/engine"
)

// Forward runs one transformer call on a batch of items and returns each
// item's raw output [C, H, W] on the host (ZImagePipeline negates it before
// the scheduler step). Items may differ in latent size and caption length
// (a CFG batch, or the references' batch of two sizes): each sequence is
// padded to a multiple of 32 with the learned pad tokens, which attention
// sees like any token, and the batch is padded to its longest sequence with
// zeros that the attention masks out (AttentionOptions.KeyLens; no mask at
// all when every row has the same length). Patchify and unpatchify run on
// the host; everything else on the device. Nil on error (rec.Err()).
func (m *ZImageTransformer) Forward(rec *engine.Rec, res Residency, items []ZImageItem) [][]float32 {
	if rec.Err() != nil {
		return nil
	}
	lay, err := m.layout(items)
	if err != nil {
		rec.Fail(err)
		return nil
	}
	bsz, d := len(items), m.Config.Dim
	var lx, lc, lu int
	for _, l := range lay {
		lx, lc, lu = max(lx, l.imgPad), max(lc, l.capPad), max(lu, l.unifiedLen)
	}
	if !needBlock(rec, res, "transformer", m.blocks[0]) {
		return nil
	}
	adaln := m.timeEmbed(rec, items) // [B, min(dim, 256)]
	m.see("adaln_input", adaln)
	x := m.embedImage(rec, items, lay, lx) // [B, Lx, D]
	c := m.embedCaption(rec, items, lay, lc)
	m.see("noise_refiner_in", x)
	m.see("context_refiner_in", c)

	imgCos, imgSin := m.imageRope(lay, lx)
	capCos, capSin := m.captionRope(lay, lc)
	next := 1
	run := func(name string, blocks []*ZImageBlock, x *engine.Tensor, cos, sin []float32, lens []int, l int) {
		ct := rec.Write(name+".rope.cos", cos, bsz, l, m.headDim/2)
		st := rec.Write(name+".rope.sin", sin, bsz, l, m.headDim/2)
		for i, b := range blocks {
			if !needBlock(rec, res, "transformer", m.blocks[next]) {
				break
			}
			next++
			b.forward(rec, x, ct, st, keyLens(lens, l), adaln)
			m.see(fmt.Sprintf("%s.%d.out", name, i), x)
		}
		rec.Free(ct, st)
	}
	imgLens, capLens, uniLens := make([]int, bsz), make([]int, bsz), make([]int, bsz)
	for i, l := range lay {
		imgLens[i], capLens[i], uniLens[i] = l.imgPad, l.capPad, l.unifiedLen
	}
	run("noise_refiner", m.NoiseRefiner, x, imgCos, imgSin, imgLens, lx)
	run("context_refiner", m.ContextRefiner, c, capCos, capSin, capLens, lc)

	u := m.unify(rec, x, c, lay, lx, lc, lu) // [B, Lu, D]: image tokens, then caption tokens
	rec.Free(x, c)
	m.see("layers_in", u)
	uniCos, uniSin := unifyRope(imgCos, imgSin, capCos, capSin, lay, lx, lc, lu, m.headDim/2)
	run("layers", m.Layers, u, uniCos, uniSin, uniLens, lu)

	var out *engine.Tensor
	if needBlock(rec, res, "transformer", m.blocks[len(m.blocks)-1]) {
		out = m.FinalLayer.forward(rec, u, adaln, d) // [B, Lu, p*p*C]
		m.see("final_layer_out", out)
	}
	rec.Free(u, adaln)
	var host []float32
	if rec.Err() == nil {
		host, err = rec.B.Read(out)
		rec.Fail(err)
	}
	rec.Free(out)
	if rec.Err() != nil {
		return nil
	}
	if err := finiteFloats(host, out.Shape, "transformer output"); err != nil {
		rec.Fail(err)
		return nil
	}
	outs := make([][]float32, bsz)
	row := out.Shape[2]
	for i, l := range lay {
		outs[i] = m.unpatchify(host[i*lu*row:], l)
	}
	return outs
}

func (m *ZImageTransformer) see(name string, t *engine.Tensor) {
	if m.observe != nil && t != nil {
		m.observe(name, t)
	}
}

// timeFreq is the sinusoidal embedding [B, 256] of t * t_scale with
// torch's float32 operations: f_k = exp(-ln(10^4) * k / 128), then
// cat(cos(t f), sin(t f)).
func (m *ZImageTransformer) timeFreq(items []ZImageItem) []float32 {
	const half = zimageFreqDim / 2
	freqs := make([]float32, half)
	a := float32(-math.Log(10000))
	for k := range freqs {
		freqs[k] = float32(math.Exp(float64((a * float32(k)) / half)))
	}
	out := make([]float32, 0, len(items)*zimageFreqDim)
	for _, it := range items {
		t := float32(it.T) * float32(m.Config.TScale)
		row := make([]float32, zimageFreqDim)
		for k, f := range freqs {
			arg := float64(t * f)
			row[k] = float32(math.Cos(arg))
			row[half+k] = float32(math.Sin(arg))
		}
		out = append(out, row...)
	}
	return out
}

// timeEmbed: the adaLN conditioning vector [B, min(dim, 256)].
func (m *ZImageTransformer) timeEmbed(rec *engine.Rec, items []ZImageItem) *engine.Tensor {
	tf := rec.Write("t_freq", m.timeFreq(items), len(items), zimageFreqDim)
	h := m.TEmbedder.Linear1.Forward(rec, tf) // [B, 1024]
	rec.Free(tf)
	rec.UnaryInPlace(h, engine.SiLU)
	out := m.TEmbedder.Linear2.Forward(rec, h)
	rec.Free(h)
	return out
}

// embedImage patchifies every item on the host ("c f pf h ph w pw -> (f h w)
// (pf ph pw c)"), embeds the patches and writes x_pad_token into each
// item's padding rows and zeros into the batch padding: [B, Lx, D].
func (m *ZImageTransformer) embedImage(rec *engine.Rec, items []ZImageItem, lay []itemLayout, lx int) *engine.Tensor {
	ch := m.Config.InChannels
	feat := zimagePatch * zimagePatch * ch
	host := make([]float32, len(items)*lx*feat)
	for i, it := range items {
		l := lay[i]
		w2 := l.w / zimagePatch
		for tok := 0; tok < l.imgTok; tok++ {
			hh, ww := tok/w2, tok%w2
			dst := host[(i*lx+tok)*feat:][:feat]
			for ph := 0; ph < zimagePatch; ph++ {
				for pw := 0; pw < zimagePatch; pw++ {
					for c := 0; c < ch; c++ {
						dst[(ph*zimagePatch+pw)*ch+c] = it.Latents[(c*l.h+hh*zimagePatch+ph)*l.w+ww*zimagePatch+pw]
					}
				}
			}
		}
	}
	p := rec.Write("patches", host, len(items), lx, feat)
	x := m.XEmbedder.Forward(rec, p) // [B, Lx, D]
	rec.Free(p)
	pads := make([][2]int, len(items))
	for i, l := range lay {
		pads[i] = [2]int{l.imgTok, l.imgPad}
	}
	m.fillPads(rec, x, lx, pads, m.XPadToken, "x_pad_token")
	return x
}

// embedCaption gathers the items' caption features into [B, Lc, cap_dim],
// embeds them (RMSNorm, Linear) and writes cap_pad_token into each item's
// padding rows and zeros into the batch padding: [B, Lc, D].
func (m *ZImageTransformer) embedCaption(rec *engine.Rec, items []ZImageItem, lay []itemLayout, lc int) *engine.Tensor {
	cd := m.Config.CapFeatDim
	raw := rec.Alloc("cap_feats", len(items), lc, cd)
	rows := rec.Reshape(raw, len(items)*lc, cd)
	for i, it := range items {
		l := lay[i]
		copyRows(rec, rows, i*lc, it.Caption, 0, l.capLen)
		// Rows past the caption are replaced after the embedder; zeros keep
		// them finite meanwhile.
		zeroRows(rec, rows, i*lc+l.capLen, (i+1)*lc)
	}
	n := m.CapEmbedder.Norm.Forward(rec, raw)
	rec.Free(raw)
	c := m.CapEmbedder.Linear.Forward(rec, n) // [B, Lc, D]
	rec.Free(n)
	pads := make([][2]int, len(items))
	for i, l := range lay {
		pads[i] = [2]int{l.capLen, l.capPad}
	}
	m.fillPads(rec, c, lc, pads, m.CapPadToken, "cap_pad_token")
	return c
}

// fillPads writes the pad token into rows [pads[i][0], pads[i][1]) of batch
// row i of x [B, L, D] and zeros into rows [pads[i][1], L).
func (m *ZImageTransformer) fillPads(rec *engine.Rec, x *engine.Tensor, l int, pads [][2]int, token *Param, name string) {
	if rec.Err() != nil {
		return
	}
	rows := rec.Reshape(x, len(pads)*l, m.Config.Dim)
	for i, p := range pads {
		if n := p[1] - p[0]; n > 0 {
			v := sliceRows(rec, rows, i*l+p[0], i*l+p[1])
			if v != nil {
				if err := rec.B.Embedding(v, token.T, make([]int32, n)); err != nil {
					rec.Fail(fmt.Errorf("model: transformer %s: %w", name, err))
				}
			}
		}
		zeroRows(rec, rows, i*l+p[1], (i+1)*l)
	}
}

// unify joins each item's image tokens and caption tokens (image first)
// into [B, Lu, D], zeros past each item's length.
func (m *ZImageTransformer) unify(rec *engine.Rec, x, c *engine.Tensor, lay []itemLayout, lx, lc, lu int) *engine.Tensor {
	d := m.Config.Dim
	u := rec.Alloc("unified", len(lay), lu, d)
	ur, xr, cr := rec.Reshape(u, len(lay)*lu, d), rec.Reshape(x, len(lay)*lx, d), rec.Reshape(c, len(lay)*lc, d)
	for i, l := range lay {
		copyRows(rec, ur, i*lu, sliceRows(rec, xr, i*lx, i*lx+l.imgPad), 0, l.imgPad)
		copyRows(rec, ur, i*lu+l.imgPad, sliceRows(rec, cr, i*lc, i*lc+l.capPad), 0, l.capPad)
		zeroRows(rec, ur, i*lu+l.unifiedLen, (i+1)*lu)
	}
	if rec.Err() != nil {
		rec.Free(u)
		return nil
	}
	return u
}

func sliceRows(rec *engine.Rec, t *engine.Tensor, from, to int) *engine.Tensor {
	if rec.Err() != nil {
		return nil
	}
	if t == nil {
		return rec.Fail(fmt.Errorf("model: slice of a nil tensor"))
	}
	v, err := t.SliceRows(from, to)
	if err != nil {
		return rec.Fail(err)
	}
	return v
}

// copyRows copies rows [from, from+n) of src [*, D] into dst [*, D] from
// row at.
func copyRows(rec *engine.Rec, dst *engine.Tensor, at int, src *engine.Tensor, from, n int) {
	if n <= 0 || rec.Err() != nil {
		return
	}
	d := sliceRows(rec, dst, at, at+n)
	s := sliceRows(rec, src, from, from+n)
	if rec.Err() == nil {
		if err := rec.B.Copy(d, s); err != nil {
			rec.Fail(err)
		}
	}
}

// zeroRows writes zeros into rows [from, to) of t [*, D].
func zeroRows(rec *engine.Rec, t *engine.Tensor, from, to int) {
	if to <= from || rec.Err() != nil {
		return
	}
	v := sliceRows(rec, t, from, to)
	if v != nil {
		if err := rec.B.Write(v, make([]float32, v.NumElem())); err != nil {
			rec.Fail(err)
		}
	}
}

// unpatchify turns one item's output rows [Lu, p*p*C] (image tokens
// first) into [C, H, W]: "f h w pf ph pw c -> c (f pf) (h ph) (w pw)".
func (m *ZImageTransformer) unpatchify(rows []float32, l itemLayout) []float32 {
	ch := m.Config.InChannels
	feat := zimagePatch * zimagePatch * ch
	w2 := l.w / zimagePatch
	out := make([]float32, ch*l.h*l.w)
	for tok := 0; tok < l.imgTok; tok++ {
		hh, ww := tok/w2, tok%w2
		src := rows[tok*feat:][:feat]
		for ph := 0; ph < zimagePatch; ph++ {
			for pw := 0; pw < zimagePatch; pw++ {
				for c := 0; c < ch; c++ {
					out[(c*l.h+hh*zimagePatch+ph)*l.w+ww*zimagePatch+pw] = src[(ph*zimagePatch+pw)*ch+c]
				}
			}
		}
	}
	return out
}

// forward updates x [B, L, D] in place. adaln [B, min(dim,256)] drives the
// modulation of modulated blocks; lens masks the batch padding (nil: none).
func (b *ZImageBlock) forward(rec *engine.Rec, x, cos, sin *engine.Tensor, lens []int, adaln *engine.Tensor) {
	if rec.Err() != nil {
		return
	}
	bsz, d := x.Shape[0], x.Shape[2]
	var mod *engine.Tensor
	var scaleMSA, gateMSA, scaleMLP, gateMLP *engine.Tensor
	if b.AdaLNModulation != nil {
		// [B, 4D] -> four [B, 1, D] views: scale_msa, gate_msa, scale_mlp,
		// gate_mlp; scales become 1 + scale, gates tanh(gate).
		mm := b.AdaLNModulation.Forward(rec, adaln)
		mod = rec.Permute(b.AdaLNModulation.Weight.Key, rec.Reshape(mm, bsz, 4, d), 1, 0, 2) // [4, B, D]
		rec.Free(mm)
		chunk := func(i int) *engine.Tensor { return rec.Reshape(sliceRows(rec, mod, i, i+1), bsz, 1, d) }
		scaleMSA, gateMSA, scaleMLP, gateMLP = chunk(0), chunk(1), chunk(2), chunk(3)
		for _, s := range []*engine.Tensor{scaleMSA, scaleMLP} {
			if rec.Err() == nil {
				rec.Fail(rec.B.Scale(s, s, 1, 1))
			}
		}
		rec.UnaryInPlace(gateMSA, engine.Tanh)
		rec.UnaryInPlace(gateMLP, engine.Tanh)
	}
	h := b.AttentionNorm1.Forward(rec, x)
	if scaleMSA != nil {
		mulInPlace(rec, h, scaleMSA)
	}
	a := b.Attention.forward(rec, h, cos, sin, lens)
	rec.Free(h)
	a2 := b.AttentionNorm2.Forward(rec, a)
	rec.Free(a)
	if gateMSA != nil {
		mulInPlace(rec, a2, gateMSA)
	}
	rec.AddInPlace(x, a2)
	rec.Free(a2)

	h = b.FFNNorm1.Forward(rec, x)
	if scaleMLP != nil {
		mulInPlace(rec, h, scaleMLP)
	}
	f := b.FeedForward.forward(rec, h)
	rec.Free(h)
	f2 := b.FFNNorm2.Forward(rec, f)
	rec.Free(f)
	if gateMLP != nil {
		mulInPlace(rec, f2, gateMLP)
	}
	rec.AddInPlace(x, f2)
	rec.Free(f2, mod)
}

// forward: h [B, L, D] -> [B, L, D].
func (a *ZImageAttention) forward(rec *engine.Rec, h, cos, sin *engine.Tensor, lens []int) *engine.Tensor {
	q := a.ToQ.Forward(rec, h)
	k := a.ToK.Forward(rec, h)
	v := a.ToV.Forward(rec, h)
	if a.NormQ != nil {
		qn := a.NormQ.forwardHeads(rec, q, a.Heads)
		kn := a.NormK.forwardHeads(rec, k, a.Heads)
		rec.Free(q, k)
		q, k = qn, kn
	}
	rec.RopeInPlace(q, cos, sin, a.Heads, engine.RopeInterleaved)
	rec.RopeInPlace(k, cos, sin, a.Heads, engine.RopeInterleaved)
	hd := a.ToQ.Weight.Shape[0] / a.Heads
	o := rec.Attention("attention", q, k, v, engine.AttentionOptions{
		Heads: a.Heads, Scale: float32(1 / math.Sqrt(float64(hd))), KeyLens: lens,
	})
	rec.Free(q, k, v)
	out := a.ToOut.Forward(rec, o)
	rec.Free(o)
	return out
}

// forward: x [B, L, D] -> [B, L, D].
func (f *ZImageFeedForward) forward(rec *engine.Rec, x *engine.Tensor) *engine.Tensor {
	g := f.W1.Forward(rec, x) // [B, L, hidden]
	u := f.W3.Forward(rec, x)
	rec.SwiGLUInPlace(g, u)
	rec.Free(u)
	out := f.W2.Forward(rec, g)
	rec.Free(g)
	return out
}

// forward: LayerNorm(x) * (1 + adaLN(silu(c))), then the output Linear.
func (f *ZImageFinalLayer) forward(rec *engine.Rec, x, c *engine.Tensor, d int) *engine.Tensor {
	if rec.Err() != nil {
		return nil
	}
	ones := make([]float32, d)
	for i := range ones {
		ones[i] = 1
	}
	g := rec.Write("norm_final.ones", ones, d)
	z := rec.Write("norm_final.zeros", make([]float32, d), d)
	n := rec.LayerNorm("norm_final", x, g, z, zimageFinalEps)
	rec.Free(g, z)
	s := rec.Unary("final.silu", c, engine.SiLU)
	sc := f.AdaLNModulation.Forward(rec, s) // [B, D]
	rec.Free(s)
	if rec.Err() == nil {
		rec.Fail(rec.B.Scale(sc, sc, 1, 1))
	}
	mulInPlace(rec, n, rec.Reshape(sc, c.Shape[0], 1, d))
	rec.Free(sc)
	out := f.Linear.Forward(rec, n)
	rec.Free(n)
	return out
}
