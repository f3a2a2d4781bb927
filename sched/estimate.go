package sched

import "github.com/zimage/zimage/model"

// Activation estimates decide, before anything runs, whether a network can
// stay resident and how many bytes the budget must leave free for
// activations. They are deliberately generous upper bounds counted from the
// networks' shapes (F32 activations); the allocator's budget check stays the
// final word.

// textActivationBytes: hidden states, q/k/v and the 4x MLP of one layer for
// every row, plus the outputs kept.
func textActivationBytes(m *Models, rows int) int64 {
	var n int64
	for _, e := range m.Encoders {
		c := e.Net.Config
		per := int64(rows) * int64(c.MaxPositionEmbeddings) * 4
		n = max(n, per*int64(8*c.HiddenSize+2*c.IntermediateSize))
	}
	return n
}

// unetActivationBytes: the skip connections of every level plus the largest
// transformer's working set (q/k/v/out, and the GEGLU feed-forward at 8x the
// width) at the first level, for every row.
func unetActivationBytes(u *model.UNet, rows, h, w int) int64 {
	c := u.Config.BlockOutChannels
	var skips int64
	hh, ww := h, w
	for i, ch := range c {
		skips += int64(u.Config.LayersPerBlock+1) * int64(ch*hh*ww)
		if i < len(c)-1 {
			hh, ww = (hh+1)/2, (ww+1)/2
		}
	}
	work := int64(h*w) * int64(c[0]) * (6 + 12)
	return int64(rows) * 4 * (skips + work)
}

// vaeActivationBytes is the untiled decoder's working set.
func (r *runner) vaeActivationBytes() int64 { return vaeActivationBytes(r.m.VAE, &r.p) }

func vaeActivationBytes(vae *model.VAEDecoder, p *Params) int64 {
	return model.VAEDecodeBytes(&vae.Config, 1, p.Height/8, p.Width/8)
}
