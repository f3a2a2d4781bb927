package model

import (
	"fmt"

	"github.com/zimage/zimage/engine"
)

// Tiled decoding.
//
// The latent is cut into overlapping square tiles; each tile is decoded on
// its own, so the device holds one tile's activations at a time and peak
// memory depends on the tile size, not the image size. The decoded tiles
// are blended on the host: inside an overlap each tile's weight ramps from
// ~0 at its own edge to 1 with Perlin's smootherstep (6t⁵-15t⁴+10t³, flat
// at both ends so the blend has no kink), and the accumulated image is
// divided by the accumulated weight.
//
// What tiling changes: the untiled decoder is not local. Every GroupNorm
// normalises with statistics over the whole image, and the mid block's
// attention lets every latent pixel attend to every other. A tile sees only
// itself: its GroupNorm statistics are those of the tile, its attention runs
// over the tile's pixels, and its convolutions see zero padding at the tile
// edges (the decoder's receptive field is wide: ~70 latent pixels). This
// decoder does nothing to restore global statistics (that would need every
// tile's activations at every GroupNorm, i.e. memory growing with the image,
// or a second full pass); it relies on the overlap to hide the edge effects
// and on statistics of a tile being close to those of the whole image,
// which holds when tiles are not tiny. The difference is measured by the
// tests (TestDecodeTiledMatchesUntiled: PSNR of tiled vs untiled decodes;
// TestDecodeTiledSeams: gradient energy on tile borders vs the interior).

// TileOptions sets the tile edge and the overlap of neighbouring tiles, in
// latent pixels.
type TileOptions struct {
	Size    int
	Overlap int
}

func (o TileOptions) check() error {
	if o.Size < 1 || o.Overlap < 0 || o.Overlap >= o.Size {
		return fmt.Errorf("model: VAE tiles of %d latent pixels with overlap %d: want size >= 1 and 0 <= overlap < size", o.Size, o.Overlap)
	}
	return nil
}

// DecodeTiled decodes diffusion-space latents [B, C, h, w] tile by tile (see
// above) and returns the image [B, 3, 8h, 8w] on the device. Latents that
// fit in one tile are decoded whole.
func (v *VAEDecoder) DecodeTiled(rec *engine.Rec, res Residency, latents *engine.Tensor, opt TileOptions) *engine.Tensor {
	px, shape := v.DecodeTiledHost(rec, res, latents, opt)
	if px == nil {
		return nil
	}
	return rec.Write("vae.image", px, shape...)
}

// DecodeTiledHost is DecodeTiled keeping the assembled image on the host,
// so that not even the output occupies device memory: [B, 3, H, W] values
// and their shape, or nil after an error (recorded in rec).
func (v *VAEDecoder) DecodeTiledHost(rec *engine.Rec, res Residency, latents *engine.Tensor, opt TileOptions) ([]float32, engine.Shape) {
	if rec.Err() != nil {
		return nil, nil
	}
	if err := opt.check(); err != nil {
		rec.Fail(err)
		return nil, nil
	}
	if latents == nil || len(latents.Shape) != 4 || latents.Shape[1] != v.Config.LatentChannels {
		rec.Fail(fmt.Errorf("model: VAE tiled decode: latents %v, want [B, %d, h, w]", latents, v.Config.LatentChannels))
		return nil, nil
	}
	lat, err := rec.B.Read(latents)
	if err != nil {
		rec.Fail(fmt.Errorf("model: VAE tiled decode: read latents: %w", err))
		return nil, nil
	}
	b, c, h, w := latents.Shape[0], latents.Shape[1], latents.Shape[2], latents.Shape[3]
	s := v.Scale()
	oc := v.Config.OutChannels
	H, W := h*s, w*s
	ys, xs := tileStarts(h, opt.Size, opt.Overlap), tileStarts(w, opt.Size, opt.Overlap)
	th, tw := min(opt.Size, h), min(opt.Size, w)

	acc := make([]float32, b*oc*H*W)
	wsum := make([]float32, H*W)
	tile := make([]float32, b*c*th*tw)
	for iy, y0 := range ys {
		wy := blendWeights(ys, iy, th, s)
		for ix, x0 := range xs {
			wx := blendWeights(xs, ix, tw, s)
			for bc := range b * c { // cut the tile out of [B, C, h, w]
				for y := range th {
					src := lat[(bc*h+y0+y)*w+x0:]
					copy(tile[(bc*th+y)*tw:(bc*th+y+1)*tw], src[:tw])
				}
			}
			z := rec.Write(fmt.Sprintf("vae.tile[%d,%d]", y0, x0), tile, b, c, th, tw)
			img := v.decode(rec, res, z, true) // [B, 3, th*s, tw*s]
			rec.Free(z)
			if rec.Err() != nil {
				return nil, nil
			}
			px, err := rec.B.Read(img)
			rec.Free(img)
			if err == nil {
				err = finiteFloats(px, img.Shape, fmt.Sprintf("VAE decoder output (tile at latent y=%d x=%d)", y0, x0))
			}
			if err != nil {
				rec.Fail(err)
				return nil, nil
			}
			TH, TW := th*s, tw*s
			for y := range TH {
				gy := y0*s + y
				for x := range TW {
					wt := wy[y] * wx[x]
					gx := x0*s + x
					wsum[gy*W+gx] += wt
					for p := range b * oc {
						acc[(p*H+gy)*W+gx] += wt * px[(p*TH+y)*TW+x]
					}
				}
			}
		}
	}
	for p := range b * oc {
		for i, ws := range wsum {
			acc[p*H*W+i] /= ws
		}
	}
	return acc, engine.Shape{b, oc, H, W}
}

// tileStarts spreads tiles of size (overlapping by at least overlap) evenly
// over n pixels; the first starts at 0 and the last ends at n.
func tileStarts(n, size, overlap int) []int {
	if n <= size {
		return []int{0}
	}
	stride := size - overlap
	count := (n - overlap + stride - 1) / stride
	out := make([]int, count)
	for i := range out {
		out[i] = (i*(n-size) + (count-1)/2) / (count - 1) // rounded
	}
	return out
}

// blendWeights is the 1-D weight of tile i over its size*scale image
// pixels: smootherstep ramps across the overlaps with the previous and next
// tiles, 1 elsewhere. Pixel centres keep every weight above 0.
func blendWeights(starts []int, i, size, scale int) []float32 {
	n := size * scale
	in, out := 0, 0
	if i > 0 {
		in = (starts[i-1] + size - starts[i]) * scale
	}
	if i < len(starts)-1 {
		out = (starts[i] + size - starts[i+1]) * scale
	}
	w := make([]float32, n)
	for j := range w {
		v := 1.0
		if j < in {
			v = min(v, smootherstep((float64(j)+0.5)/float64(in)))
		}
		if n-j <= out {
			v = min(v, smootherstep((float64(n-j)-0.5)/float64(out)))
		}
		w[j] = float32(v)
	}
	return w
}

func smootherstep(t float64) float64 {
	t = min(max(t, 0), 1)
	return t * t * t * (t*(6*t-15) + 10)
}

// AutoTileSize picks the largest tile edge (latent pixels, a multiple of 8
// from 16 to 256) whose decode fits budgetBytes of activations (weights not
// included), from the decoder's shapes; 16 when even that does not fit.
func AutoTileSize(budgetBytes int64, cfg *VAEConfig) int {
	best := 16
	for s := 16; s <= 256; s += 8 {
		if VAEDecodeBytes(cfg, 1, s, s) <= budgetBytes {
			best = s
		}
	}
	return best
}

// VAEDecodeBytes estimates the peak device bytes of activations when Decode
// runs on [batch, C, h, w] latents, following the decoder's allocation
// order (see VAEResnet.forward): the widest moment is a resnet holding its
// input, a normalised copy and a convolution output, or the mid block's
// attention with its q, k, v and the score matrix a backend without fused
// attention materialises ([B, hw, hw] F32).
func VAEDecodeBytes(cfg *VAEConfig, batch, h, w int) int64 {
	c := vaeDefaults(cfg)
	n := len(c.BlockOutChannels)
	top := c.BlockOutChannels[n-1]
	px := int64(batch) * int64(h) * int64(w)
	resnet := func(in, out int, pixels int64) int64 {
		a := int64(2*in+out) * pixels // x, norm1(x), conv1
		b := int64(in+2*out) * pixels // x, conv1/norm2, conv2
		if in != out {
			b = max(b, int64(in+2*out)*pixels) // x, conv2, shortcut
		}
		return max(a, b)
	}
	peak := resnet(top, top, px)
	if c.MidBlockAddAttention == nil || *c.MidBlockAddAttention {
		hw := int64(h) * int64(w)
		peak = max(peak, int64(top)*px*4+int64(batch)*hw*hw) // x, q, k, v + scores
	}
	prev := top
	pixels := px
	for i := range n {
		out := c.BlockOutChannels[n-1-i]
		peak = max(peak, resnet(prev, out, pixels))
		if i < n-1 {
			peak = max(peak, int64(out)*pixels*5) // x and its 4x upsampled copy
			pixels *= 4
			peak = max(peak, int64(out)*pixels*2) // upsampled copy and conv
		}
		prev = out
	}
	peak = max(peak, int64(2*c.BlockOutChannels[0]+c.OutChannels)*pixels)
	return 4 * peak
}
