package model

import "math"

// Z-Image's rotary embedding: every token has a position on three axes
// (frame, row, column); head element pairs (2i, 2i+1) turn by the angle of
// their axis (axes_dims [32, 48, 48] split the 64 pairs of a 128-wide head
// 16/24/24). Positions, as ZImageTransformer2DModel.patchify_and_embed
// assigns them:
//   - caption token i (padding included): (1 + i, 0, 0);
//   - image token (h, w): (cap_padded + 1, h, w), cap_padded being the
//     item's caption length rounded up to 32;
//   - image padding: (0, 0, 0), which turns nothing;
//   - batch padding: pad_sequence fills the complex factors with 0 (cos =
//     sin = 0); those rows are masked keys and unread outputs.
// Tables are computed on the host the way RopeEmbedder does: frequencies
// theta^(-2k/d) and angles pos * freq in float64, the angle rounded to
// float32, then cos and sin (torch.polar in complex64).

// ropeAngles returns, per axis, the float64 frequencies of its pairs.
func (m *ZImageTransformer) ropeFreqs() [][]float64 {
	c := m.Config
	out := make([][]float64, len(c.AxesDims))
	for a, d := range c.AxesDims {
		f := make([]float64, d/2)
		for k := range f {
			f[k] = 1 / math.Pow(c.RopeTheta, float64(2*k)/float64(d))
		}
		out[a] = f
	}
	return out
}

// ropeRow writes the cos/sin of the pairs of one token at pos.
func ropeRow(freqs [][]float64, pos [3]int, cos, sin []float32) {
	i := 0
	for a, f := range freqs {
		for _, fk := range f {
			ang := float64(float32(float64(pos[a]) * fk))
			cos[i] = float32(math.Cos(ang))
			sin[i] = float32(math.Sin(ang))
			i++
		}
	}
}

// imageRope returns the tables [B, Lx, head/2] of the image tokens.
func (m *ZImageTransformer) imageRope(lay []itemLayout, lx int) (cos, sin []float32) {
	half := m.headDim / 2
	freqs := m.ropeFreqs()
	cos, sin = make([]float32, len(lay)*lx*half), make([]float32, len(lay)*lx*half)
	for i, l := range lay {
		w2 := l.w / zimagePatch
		for t := 0; t < l.imgPad; t++ {
			pos := [3]int{}
			if t < l.imgTok {
				pos = [3]int{l.capPad + 1, t / w2, t % w2}
			}
			o := (i*lx + t) * half
			ropeRow(freqs, pos, cos[o:o+half], sin[o:o+half])
		}
	}
	return cos, sin
}

// captionRope returns the tables [B, Lc, head/2] of the caption tokens.
func (m *ZImageTransformer) captionRope(lay []itemLayout, lc int) (cos, sin []float32) {
	half := m.headDim / 2
	freqs := m.ropeFreqs()
	cos, sin = make([]float32, len(lay)*lc*half), make([]float32, len(lay)*lc*half)
	for i, l := range lay {
		for t := 0; t < l.capPad; t++ {
			o := (i*lc + t) * half
			ropeRow(freqs, [3]int{1 + t, 0, 0}, cos[o:o+half], sin[o:o+half])
		}
	}
	return cos, sin
}

// unifyRope joins the image and caption tables as unify joins the tokens.
func unifyRope(ic, is, cc, cs []float32, lay []itemLayout, lx, lc, lu, half int) (cos, sin []float32) {
	cos, sin = make([]float32, len(lay)*lu*half), make([]float32, len(lay)*lu*half)
	for i, l := range lay {
		o := i * lu * half
		copy(cos[o:], ic[i*lx*half:(i*lx+l.imgPad)*half])
		copy(sin[o:], is[i*lx*half:(i*lx+l.imgPad)*half])
		o += l.imgPad * half
		copy(cos[o:], cc[i*lc*half:(i*lc+l.capPad)*half])
		copy(sin[o:], cs[i*lc*half:(i*lc+l.capPad)*half])
	}
	return cos, sin
}
