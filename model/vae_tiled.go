package model

import (
	"fmt"
	"math"

	"github.com/zimage/zimage/engine"
)

// Tiled decoding and encoding.
//
// The input is cut into overlapping tiles; each tile runs through the
// network on its own, so the device holds one tile's activations at a time
// and peak memory depends on the tile size, not the image size. The tiles'
// outputs are blended on the host and the sum is divided by the summed
// weights. Across an overlap of o pixels each tile's weight is 0 over the
// outer (o - r)/2 pixels, where zero padding at the tile's edge has
// corrupted it most, ramps over the middle r = 2 latent pixels with
// Perlin's smootherstep (6t⁵-15t⁴+10t³, flat at both ends, so the blend has
// no kink), and is 1 beyond: the two ramps of an overlap sum to one.
//
// What tiling changes: the untiled network is not local. Every GroupNorm
// normalises with statistics over the whole image, the mid block's
// attention lets every latent pixel attend to every other, and convolutions
// see zero padding only at the image border. A tile's attention runs over
// the tile's own pixels (nothing is done about it: global keys and values
// would grow with the image; on the test VAEs removing attention altogether
// moves the tiled PSNR by < 0.1 dB), its convolutions see zero padding at
// the tile edges, which the overlap and the dead zones of the blend hide,
// and its GroupNorms see the tile's statistics, which tileNorm (below)
// brings to the whole image's in three passes over the tiles.
// TileOptions.LocalNorm runs one pass instead, normalising each tile with
// the statistics of the tiles before it and its own.
//
// Measured on the tiny test VAEs (random weights: the worst case, one
// channel per group and a receptive field of ~13 latent pixels), PSNR of
// tiled against untiled decodes of N(0,1) latents at 256x256 with
// TileOverlap, tiles of 64 / 80 / 96 / 128 / 192 pixels: three passes
// 30-33 / 36-40 / 43-47 / 49-54 / 58-60 dB (the old two-pass decode with
// smootherstep over the whole overlap: 22-25 / 25-28 / 30-33 / 34-39 /
// 44-50 dB), one pass (LocalNorm) 26-29 / 29-31 / 30-33 / 34-35 / 40-41 dB
// (before: 21-22 / 23-25 / 27-29 / 32-34 / 40-41). Encoding, PSNR of the
// latent mean with the latents' range as the peak, three passes with
// EncodeTileOverlap: 128 / 160 / 192 px 42-44 / 45 / 52-53 dB. Decoding
// with the exact whole-image statistics of the untiled decode gives 43.5 /
// 49.8 dB at 96 / 128 px (tiny-sd-turbo), so the passes leave little to
// gain there; at 64 px even exact statistics give only 29-35 dB whatever
// the overlap: every pixel of such a tile is within the receptive field of
// its edges. Prefer the largest tile the budget allows (AutoTileSize).
// vae_tiled_sweep_test.go measures all of it (ZIMAGE_TILE_SWEEP=1).
//
// Cost: a pass runs every tile once, (sum of tile areas) / (image area)
// times the untiled work, about (size / (size - overlap))² on big images
// (1.56 for the 2x2 tiles of 40 latent pixels that lavapipe's binding limit
// asks for at 512x512); the default runs three passes, LocalNorm one. Each
// GroupNorm of a tile also reads its input back to the host for the
// statistics.

// TileOptions sets the tile edge and the overlap of neighbouring tiles, in
// latent pixels (TileOverlap recommends one).
type TileOptions struct {
	Size    int
	Overlap int
	// LocalNorm runs the tiles once, each normalised with running
	// statistics (the tiles before it and itself): a third of the work of
	// the default three passes, and 12-20 dB less faithful on small tiles.
	LocalNorm bool
}

// The smallest tiles (latent pixels) whose output stays >= 40 dB from the
// untiled network's on the test VAEs (see the measurements above): three
// statistics passes need 12 (96 px), the one-pass LocalNorm mode 24
// (192 px); the encoder, three passes, 16 (128 px). Callers keep tiles at
// least this large.
const (
	MinTile       = 12
	MinLocalTile  = 24
	MinEncodeTile = 16
)

// TileOverlap is the overlap (latent pixels) that tiles of size need: a
// 2-pixel blend ramp between dead zones of 2 pixels, so that no output
// pixel comes from within 2 latent pixels of a tile edge (the test VAEs
// lose 5 dB at 96-pixel tiles with an overlap of 4), and a quarter of the
// tile on big tiles as before.
func TileOverlap(size int) int { return max(min(6, size/2), size/4) }

// EncodeTileOverlap is TileOverlap for the encoder, whose output is at
// latent resolution and whose receptive field lies mostly in its last,
// latent-resolution layers: it needs wider dead zones (the test VAEs: 38 dB
// at 128-pixel tiles with an overlap of 8, 42.5 dB with 10).
func EncodeTileOverlap(size int) int { return max(min(10, size*5/8), size/4) }

// blendRamp is the width (latent pixels) of the blend between tiles: 2
// measured 0.2-0.3 dB better than 1 and 3.5 dB better than ramping over
// the whole overlap.
const blendRamp = 2.0

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
	if latents == nil || len(latents.Shape) != 4 || latents.Shape[1] != v.Config.LatentChannels {
		rec.Fail(fmt.Errorf("model: VAE tiled decode: latents %v, want [B, %d, h, w]", latents, v.Config.LatentChannels))
		return nil, nil
	}
	g := newTileGrid(rec, "VAE tiled decode", latents, 1, opt)
	if g == nil {
		return nil, nil
	}
	return g.run(rec, opt, v.Config.OutChannels, v.Scale(), "VAE decoder output", func(z *engine.Tensor, tn *tileNorm) *engine.Tensor {
		return v.decode(rec, res, z, true, tn)
	})
}

// EncodeTiled is Encode tile by tile (see the top of this file), for
// images [B, 3, H, W] whose sides are multiples of Scale(): the device
// holds one tile's activations at a time. Images that fit in one tile are
// encoded whole.
func (e *VAEEncoder) EncodeTiled(rec *engine.Rec, res Residency, pixels *engine.Tensor, opt TileOptions) *LatentDist {
	if rec.Err() != nil {
		return nil
	}
	s := e.Scale()
	if pixels == nil || len(pixels.Shape) != 4 || pixels.Shape[1] != e.Config.InChannels || pixels.Shape[2]%s != 0 || pixels.Shape[3]%s != 0 {
		rec.Fail(fmt.Errorf("model: VAE tiled encode: pixels %v, want [B, %d, H, W] with H and W multiples of %d", pixels, e.Config.InChannels, s))
		return nil
	}
	g := newTileGrid(rec, "VAE tiled encode", pixels, s, opt)
	if g == nil {
		return nil
	}
	m, shape := g.run(rec, opt, 2*e.Config.LatentChannels, 1, "VAE encoder output", func(x *engine.Tensor, tn *tileNorm) *engine.Tensor {
		return e.encode(rec, res, x, tn)
	})
	if m == nil {
		return nil
	}
	d, err := NewLatentDist(m, shape)
	if err != nil {
		rec.Fail(err)
		return nil
	}
	return d
}

// tileGrid is the layout of the tiles over a host copy of the input [b, c,
// h*s, w*s]; h, w, the tiles and their starts count latent pixels, s input
// pixels per latent pixel (1 to decode, the VAE's scale to encode).
type tileGrid struct {
	b, c, h, w, s int
	in            []float32
	ys, xs        []int // tile starts
	th, tw        int   // tile size
}

// newTileGrid reads x and lays the tiles out, or records an error.
func newTileGrid(rec *engine.Rec, what string, x *engine.Tensor, s int, opt TileOptions) *tileGrid {
	if err := opt.check(); err != nil {
		rec.Fail(err)
		return nil
	}
	in, err := rec.B.Read(x)
	if err != nil {
		rec.Fail(fmt.Errorf("model: %s: read input: %w", what, err))
		return nil
	}
	g := &tileGrid{b: x.Shape[0], c: x.Shape[1], h: x.Shape[2] / s, w: x.Shape[3] / s, s: s, in: in}
	g.ys, g.xs = tileStarts(g.h, opt.Size, opt.Overlap), tileStarts(g.w, opt.Size, opt.Overlap)
	g.th, g.tw = min(opt.Size, g.h), min(opt.Size, g.w)
	return g
}

// run runs net on every tile, in the passes that opt asks for (see
// tileNorm), and blends the last pass's outputs [b, oc, th*scale,
// tw*scale] into [b, oc, h*scale, w*scale] on the host; NaN or Inf in a
// tile's output is an error that names the tile.
func (g *tileGrid) run(rec *engine.Rec, opt TileOptions, oc, scale int, what string, net func(x *engine.Tensor, tn *tileNorm) *engine.Tensor) ([]float32, engine.Shape) {
	var tn *tileNorm
	if len(g.ys)*len(g.xs) > 1 {
		tn = &tileNorm{th: g.th, tw: g.tw}
		sched := passSchedule(opt)
		for _, p := range sched[:len(sched)-1] {
			tn.startPass(p, true)
			g.each(rec, func(iy, ix int, x *engine.Tensor) bool {
				tn.begin(g, iy, ix)
				rec.Free(net(x, tn))
				return rec.Err() == nil
			})
		}
		tn.startPass(sched[len(sched)-1], false)
	}

	H, W := g.h*scale, g.w*scale
	acc := make([]float32, g.b*oc*H*W)
	wsum := make([]float32, H*W)
	g.each(rec, func(iy, ix int, x *engine.Tensor) bool {
		y0, x0 := g.ys[iy], g.xs[ix]
		if tn != nil {
			tn.begin(g, iy, ix)
		}
		out := net(x, tn) // [B, oc, th*scale, tw*scale]
		if rec.Err() != nil {
			return false
		}
		px, err := rec.B.Read(out)
		rec.Free(out)
		if err == nil {
			err = finiteFloats(px, out.Shape, fmt.Sprintf("%s (tile at latent y=%d x=%d)", what, y0, x0))
		}
		if err != nil {
			rec.Fail(err)
			return false
		}
		wy, wx := blendWeights(g.ys, iy, g.th, scale), blendWeights(g.xs, ix, g.tw, scale)
		TH, TW := g.th*scale, g.tw*scale
		for y := range TH {
			gy := y0*scale + y
			for x := range TW {
				wt := wy[y] * wx[x]
				if wt == 0 {
					continue
				}
				gx := x0*scale + x
				wsum[gy*W+gx] += wt
				for p := range g.b * oc {
					acc[(p*H+gy)*W+gx] += wt * px[(p*TH+y)*TW+x]
				}
			}
		}
		return true
	})
	if rec.Err() != nil {
		return nil, nil
	}
	for i, ws := range wsum {
		if ws <= 0 { // tileStarts and blendWeights rule it out
			panic(fmt.Sprintf("model: tiles leave output pixel %d without weight", i))
		}
	}
	for p := range g.b * oc {
		for i, ws := range wsum {
			acc[p*H*W+i] /= ws
		}
	}
	return acc, engine.Shape{g.b, oc, H, W}
}

// each uploads every tile's input in turn and calls f, freeing the tile
// afterwards; f returns false to stop.
func (g *tileGrid) each(rec *engine.Rec, f func(iy, ix int, x *engine.Tensor) bool) {
	s := g.s
	TH, TW, W, H := g.th*s, g.tw*s, g.w*s, g.h*s
	tile := make([]float32, g.b*g.c*TH*TW)
	for iy, y0 := range g.ys {
		for ix, x0 := range g.xs {
			for bc := range g.b * g.c { // cut the tile out of [B, C, H, W]
				for y := range TH {
					src := g.in[(bc*H+y0*s+y)*W+x0*s:]
					copy(tile[(bc*TH+y)*TW:(bc*TH+y+1)*TW], src[:TW])
				}
			}
			x := rec.Write(fmt.Sprintf("vae.tile[%d,%d]", y0, x0), tile, g.b, g.c, TH, TW)
			ok := rec.Err() == nil && f(iy, ix, x)
			rec.Free(x)
			if !ok {
				return
			}
		}
	}
}

// core is tile i's share of an axis (tile-local, latent pixels): the tiles'
// cores split every overlap at its middle, so they partition the axis.
func core(starts []int, i, size, n int) (from, to int) {
	from, to = 0, size
	if i > 0 {
		from = (starts[i]+starts[i-1]+size)/2 - starts[i]
	}
	if i < len(starts)-1 {
		to = (starts[i+1]+starts[i]+size)/2 - starts[i]
	}
	return from, to
}

// passNorm is how one pass over the tiles normalises its GroupNorms.
type passNorm uint8

const (
	// normLocal: each tile's own statistics (the plain op; what diffusers'
	// and stable-diffusion.cpp's tiled decoders do).
	normLocal passNorm = iota
	// normRunning: the statistics of the tile cores met so far in this
	// pass together with the current tile's, so that every tile after the
	// first is normalised with a growing share of the image.
	normRunning
	// normRelative: the tile's current statistics moved by what the
	// previous pass measured between the whole image and this tile: mean +
	// (mean_image - mean_tile), variance * (var_image / var_tile).
	normRelative
	// normAbsolute: the whole image's statistics as the previous pass
	// measured them.
	normAbsolute
)

// passSchedule lists the passes of a tiled run: LocalNorm one pass, else
// the statistics passes and the output pass (see tileNorm).
func passSchedule(opt TileOptions) []passNorm {
	if opt.LocalNorm {
		return []passNorm{normRunning}
	}
	return []passNorm{normRunning, normRelative, normAbsolute}
}

// tileNorm gives the tiles' GroupNorms statistics close to the whole
// image's without holding more than one tile. Each pass over the tiles
// normalises as its passNorm says and (all but the last) records, for
// every GroupNorm, the tile's own moments per (image, group) and the
// moments over the tile's core; the cores partition the image, so they sum
// to that pass's whole-image statistics.
//
// The default schedule is running, relative, absolute. Applying a pass's
// image statistics directly in the next pass is only right when both
// passes normalised alike: a pass of tile-local statistics followed by an
// absolute one compounds the difference over ~30 GroupNorms (measured
// 23-29 dB on the test VAEs). The running pass starts close to the image
// statistics, the relative pass keeps each tile self-consistent while
// moving it to the image, and the activations of that pass are close
// enough to the final ones that its image statistics can be used as they
// are.
type tileNorm struct {
	pass               passNorm
	gather             bool
	tile, layer        int // current tile, GroupNorm calls so far in it
	th, tw             int
	cy0, cy1, cx0, cx1 int           // current tile's core, latent pixels
	image              []*gnMoments  // this pass, per layer: core moments of the tiles so far
	local              [][]gnMoments // this pass, per tile, per layer: the tile's moments
	prevImage          []*gnMoments  // the previous pass's
	prevLocal          [][]gnMoments
}

// startPass begins a pass normalising by p, recording statistics when
// gather is set; the statistics of the pass before become prev.
func (tn *tileNorm) startPass(p passNorm, gather bool) {
	if tn.image != nil {
		tn.prevImage, tn.prevLocal = tn.image, tn.local
	}
	tn.image, tn.local = nil, nil
	tn.pass, tn.gather = p, gather
}

// gnMoments accumulates per (image, group) sums.
type gnMoments struct {
	n          float64 // elements per (image, group)
	sum, sumSq []float64
}

func newMoments(n int) *gnMoments {
	return &gnMoments{sum: make([]float64, n), sumSq: make([]float64, n)}
}

func (m *gnMoments) meanVar(k int) (mean, vr float64) {
	mean = m.sum[k] / m.n
	return mean, max(m.sumSq[k]/m.n-mean*mean, 0)
}

func (tn *tileNorm) begin(g *tileGrid, iy, ix int) {
	tn.tile, tn.layer = iy*len(g.xs)+ix, 0
	tn.cy0, tn.cy1 = core(g.ys, iy, g.th, g.h)
	tn.cx0, tn.cx1 = core(g.xs, ix, g.tw, g.w)
	if tn.gather && tn.tile == len(tn.local) {
		tn.local = append(tn.local, nil)
	}
}

// norm is g.Forward for the untiled network (tn nil), and GroupNorm i of
// the current tile and pass otherwise.
func (tn *tileNorm) norm(rec *engine.Rec, g *GroupNorm, x *engine.Tensor, silu bool) *engine.Tensor {
	if tn == nil {
		return g.Forward(rec, x, silu)
	}
	if rec.Err() != nil {
		return nil
	}
	i := tn.layer
	tn.layer++
	bsz, h, w := x.Shape[0], x.Shape[2], x.Shape[3]
	f := h / tn.th
	if f*tn.th != h || f*tn.tw != w {
		return rec.Fail(fmt.Errorf("model: VAE tiles: %s input %v is not a multiple of the %dx%d tile", g.Weight.Key, x.Shape, tn.th, tn.tw))
	}
	if tn.pass == normLocal && !tn.gather {
		return g.Forward(rec, x, silu)
	}
	if tn.pass == normAbsolute && !tn.gather {
		if i >= len(tn.prevImage) {
			return rec.Fail(fmt.Errorf("model: VAE tiles: GroupNorm %d (%s) has no statistics from the pass before", i, g.Weight.Key))
		}
		return tn.affine(rec, g, x, silu, func(k int) (float64, float64) { return tn.prevImage[i].meanVar(k) })
	}
	data, err := rec.B.Read(x)
	if err != nil {
		return rec.Fail(fmt.Errorf("model: VAE tiles: %s: %w", g.Weight.Key, err))
	}
	nk := bsz * g.Groups
	whole := newMoments(nk)
	whole.add(data, x.Shape, g.Groups, 0, h, 0, w)
	if tn.gather || tn.pass == normRunning {
		if i == len(tn.image) {
			tn.image = append(tn.image, newMoments(nk))
		}
		tn.image[i].add(data, x.Shape, g.Groups, tn.cy0*f, tn.cy1*f, tn.cx0*f, tn.cx1*f)
	}
	if tn.gather {
		tn.local[tn.tile] = append(tn.local[tn.tile], *whole)
	}
	switch tn.pass {
	case normLocal:
		return g.Forward(rec, x, silu)
	case normRunning:
		// The cores before this tile (tn.image holds this tile's core too:
		// take it out) and the whole of this tile.
		run := tn.image[i].plus(whole, -1, data, x.Shape, g.Groups, tn.cy0*f, tn.cy1*f, tn.cx0*f, tn.cx1*f)
		return tn.affine(rec, g, x, silu, run.meanVar)
	case normAbsolute:
		return tn.affine(rec, g, x, silu, func(k int) (float64, float64) { return tn.prevImage[i].meanVar(k) })
	}
	if tn.tile >= len(tn.prevLocal) || i >= len(tn.prevLocal[tn.tile]) || i >= len(tn.prevImage) {
		return rec.Fail(fmt.Errorf("model: VAE tiles: GroupNorm %d (%s) of tile %d has no statistics from the pass before", i, g.Weight.Key, tn.tile))
	}
	return tn.affine(rec, g, x, silu, func(k int) (float64, float64) {
		mNow, vNow := whole.meanVar(k)
		mImage, vImage := tn.prevImage[i].meanVar(k)
		mTile, vTile := tn.prevLocal[tn.tile][i].meanVar(k)
		vr := vNow
		if vTile > 0 {
			vr = vNow * vImage / vTile
		}
		return mNow + mImage - mTile, vr
	})
}

// affine applies GroupNorm g to x with the statistics stats(k) of (image,
// group) k, as a per-channel multiply-add (and SiLU).
func (tn *tileNorm) affine(rec *engine.Rec, g *GroupNorm, x *engine.Tensor, silu bool, stats func(k int) (mean, vr float64)) *engine.Tensor {
	gamma, err := rec.B.Read(g.Weight.T)
	if err == nil {
		var beta []float32
		if beta, err = rec.B.Read(g.Bias.T); err == nil {
			bsz, c := x.Shape[0], x.Shape[1]
			a, sh := make([]float32, bsz*c), make([]float32, bsz*c)
			per := c / g.Groups
			for bc := range bsz * c {
				mean, vr := stats(bc/c*g.Groups + bc%c/per)
				r := float64(gamma[bc%c]) / math.Sqrt(vr+float64(g.Eps))
				a[bc] = float32(r)
				sh[bc] = float32(float64(beta[bc%c]) - mean*r)
			}
			sc := rec.Write(g.Weight.Key+".tile_scale", a, bsz, c, 1, 1)
			st := rec.Write(g.Weight.Key+".tile_shift", sh, bsz, c, 1, 1)
			y := rec.Binary(g.Weight.Key, x, sc, engine.Mul) // [B, C, H, W] * [B, C, 1, 1]
			rec.AddInPlace(y, st)
			rec.Free(sc, st)
			if silu {
				rec.UnaryInPlace(y, engine.SiLU)
			}
			return y
		}
	}
	return rec.Fail(fmt.Errorf("model: VAE tiles: %s: %w", g.Weight.Key, err))
}

// plus returns m + o - (the moments of data over rows [y0, y1) and columns
// [x0, x1)) when sign is -1.
func (m *gnMoments) plus(o *gnMoments, sign float64, data []float32, shape engine.Shape, groups, y0, y1, x0, x1 int) *gnMoments {
	r := newMoments(len(m.sum))
	sub := newMoments(len(m.sum))
	sub.add(data, shape, groups, y0, y1, x0, x1)
	r.n = m.n + o.n + sign*sub.n
	for k := range r.sum {
		r.sum[k] = m.sum[k] + o.sum[k] + sign*sub.sum[k]
		r.sumSq[k] = m.sumSq[k] + o.sumSq[k] + sign*sub.sumSq[k]
	}
	return r
}

// add accumulates the moments of data [B, C, H, W] over rows [y0, y1) and
// columns [x0, x1), per (image, group).
func (m *gnMoments) add(data []float32, shape engine.Shape, groups, y0, y1, x0, x1 int) {
	bsz, c, h, w := shape[0], shape[1], shape[2], shape[3]
	per := c / groups
	for bc := range bsz * c {
		k := bc/c*groups + bc%c/per
		var s, ss float64
		for y := y0; y < y1; y++ {
			for _, v := range data[(bc*h+y)*w+x0 : (bc*h+y)*w+x1] {
				s += float64(v)
				ss += float64(v) * float64(v)
			}
		}
		m.sum[k] += s
		m.sumSq[k] += ss
	}
	m.n += float64(per * (y1 - y0) * (x1 - x0))
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

// blendWeights is the 1-D weight of tile i over its size*scale output
// pixels: 0 in the dead zones, smootherstep ramps across the middle of the
// overlaps with the previous and next tiles, 1 elsewhere (see the top of
// the file).
func blendWeights(starts []int, i, size, scale int) []float32 {
	n := size * scale
	in, out := 0, 0
	if i > 0 {
		in = (starts[i-1] + size - starts[i]) * scale
	}
	if i < len(starts)-1 {
		out = (starts[i] + size - starts[i+1]) * scale
	}
	// Each overlap of o pixels: weight 0 over the outer (o - r) / 2, a
	// smootherstep ramp over the middle r, 1 beyond.
	lo := func(o int) (dead, r float64) {
		r = min(float64(o), blendRamp*float64(scale))
		return (float64(o) - r) / 2, r
	}
	w := make([]float32, n)
	for j := range w {
		v := 1.0
		if j < in {
			d, r := lo(in)
			v = min(v, smootherstep((float64(j)+0.5-d)/r))
		}
		if n-j <= out {
			d, r := lo(out)
			v = min(v, smootherstep((float64(n-j)-0.5-d)/r))
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
	return AutoTileSizeLimit(budgetBytes, 0, cfg)
}

// AutoTileSizeLimit is AutoTileSize on a device that cannot bind a tensor
// over maxTensorBytes (Vulkan's maxStorageBufferRange; 0: no limit).
func AutoTileSizeLimit(budgetBytes, maxTensorBytes int64, cfg *VAEConfig) int {
	best := 16
	for s := 16; s <= 256; s += 8 {
		if VAEDecodeBytes(cfg, 1, s, s) <= budgetBytes &&
			(maxTensorBytes <= 0 || VAEMaxTensorBytes(cfg, 1, s, s) <= maxTensorBytes) {
			best = s
		}
	}
	return best
}

// VAEMaxTensorBytes is the largest single activation the decoder allocates
// for [batch, C, h, w] latents: with block_out_channels (128, 256, 512, 512)
// the second-to-last block's upsampled output, 256 channels at full
// resolution (256 MiB at 512x512, over the 128 MiB a Vulkan device may
// bind as one buffer).
func VAEMaxTensorBytes(cfg *VAEConfig, batch, h, w int) int64 {
	c := vaeDefaults(cfg)
	n := len(c.BlockOutChannels)
	pixels := int64(batch) * int64(h) * int64(w)
	big := int64(c.BlockOutChannels[n-1]) * pixels
	prev := c.BlockOutChannels[n-1]
	for i := range n {
		out := c.BlockOutChannels[n-1-i]
		big = max(big, int64(max(prev, out))*pixels)
		if i < n-1 {
			pixels *= 4
			big = max(big, int64(out)*pixels)
		}
		prev = out
	}
	return 4 * big
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
