package zimage

import (
	"fmt"
	"image"
	"image/color"
	"math"
)

// Input pictures for img2img and inpainting are brought to what the
// pipelines expect the way AUTOMATIC1111 brings them (modules/images.py and
// processing.py there), which is also what diffusers' VaeImageProcessor does
// for an 8-bit RGB picture:
//
//   - colour: any image.Image becomes 8-bit RGB. Transparent pixels are
//     composited over white (A1111's flatten with its default
//     img2img_background_color), grey is replicated, palettes are looked
//     up, JPEG's YCbCr and CMYK are converted by Go's decoders, and 16-bit
//     channels keep their high byte (PIL reads 16-bit RGB PNGs so; for
//     16-bit grey PIL clips at 255, which would turn most pictures white:
//     zimage scales instead);
//   - size: resampled with PIL's Lanczos filter (support 3, widened when
//     shrinking, fixed-point 8-bit arithmetic, horizontal pass first) in
//     one of A1111's resize modes;
//   - masks: a mask with transparency uses its alpha (opaque repaints,
//     binarized at 128, A1111's create_binary_mask), any other its
//     luminance (ITU-R 601, PIL's "L"); white repaints. It is resized like
//     the picture, optionally inverted and blurred, and binarized at 0.5 by
//     the runner (diffusers' mask processor).

// ResizeMode fits an init image (and its mask) of another size than the
// request's to that size, as A1111's resize_mode does.
type ResizeMode uint8

const (
	// ResizeStretch stretches to the size (A1111 0, "Just resize").
	ResizeStretch ResizeMode = iota
	// ResizeCrop scales to cover the size and crops the middle (A1111 1,
	// "Crop and resize").
	ResizeCrop
	// ResizeFill scales to fit inside the size and fills the bands left
	// with the stretched edge rows or columns (A1111 2, "Resize and fill").
	ResizeFill
)

// InpaintFill is what the area to repaint starts from (A1111's
// inpainting_fill).
type InpaintFill uint8

const (
	// FillOriginal starts from the picture (A1111 1, "original"; diffusers).
	FillOriginal InpaintFill = iota
	// FillColors replaces the area with colours spread from around it
	// before encoding (A1111 0, "fill": blurred layers of the kept pixels).
	FillColors
	// FillLatentNoise starts the area from N(0, 1) latents (A1111 2).
	FillLatentNoise
	// FillLatentNothing starts the area from zero latents (A1111 3).
	FillLatentNothing
)

// InputError is a bad init image or mask: it names which and why.
type InputError struct {
	What string // "init image" or "mask"
	Err  error
}

func (e *InputError) Error() string { return fmt.Sprintf("zimage: %s: %v", e.What, e.Err) }
func (e *InputError) Unwrap() error { return e.Err }

// toRGB converts any picture to opaque 8-bit RGB (in an NRGBA), alpha
// composited over white with PIL's rounding (paste with a mask:
// (bg*(255-a) + c*a + 128) / 255 the fast way).
func toRGB(img image.Image) *image.NRGBA {
	r := img.Bounds()
	out := image.NewNRGBA(image.Rect(0, 0, r.Dx(), r.Dy()))
	for y := range r.Dy() {
		for x := range r.Dx() {
			c := color.NRGBA64Model.Convert(img.At(r.Min.X+x, r.Min.Y+y)).(color.NRGBA64)
			a := uint32(c.A >> 8)
			o := out.PixOffset(x, y)
			for k, v := range []uint16{c.R, c.G, c.B} {
				v8 := uint32(v >> 8)
				if a < 255 {
					t := 255*(255-a) + v8*a + 128
					v8 = ((t >> 8) + t) >> 8
				}
				out.Pix[o+k] = uint8(v8)
			}
			out.Pix[o+3] = 255
		}
	}
	return out
}

// maskGray converts a mask to one 8-bit channel, 255 = repaint: the alpha
// channel binarized at 128 when the mask has transparency, else PIL's
// luminance L = (299 R + 587 G + 114 B) / 1000.
func maskGray(img image.Image) *image.Gray {
	r := img.Bounds()
	out := image.NewGray(image.Rect(0, 0, r.Dx(), r.Dy()))
	if g, ok := img.(*image.Gray); ok {
		for y := range r.Dy() {
			copy(out.Pix[y*out.Stride:(y+1)*out.Stride], g.Pix[g.PixOffset(r.Min.X, r.Min.Y+y):])
		}
		return out
	}
	alpha := false
	if _, opaque := img.(interface{ Opaque() bool }); opaque {
		alpha = !img.(interface{ Opaque() bool }).Opaque()
	}
	for y := range r.Dy() {
		for x := range r.Dx() {
			c := color.NRGBA64Model.Convert(img.At(r.Min.X+x, r.Min.Y+y)).(color.NRGBA64)
			var v uint8
			if alpha {
				if c.A>>8 > 128 {
					v = 255
				}
			} else {
				// PIL's L conversion in fixed point: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16.
				l := (uint32(c.R>>8)*19595 + uint32(c.G>>8)*38470 + uint32(c.B>>8)*7471 + 0x8000) >> 16
				v = uint8(l)
			}
			out.Pix[y*out.Stride+x] = v
		}
	}
	return out
}

// plane is one 8-bit channel image, or several interleaved (n channels).
type plane struct {
	w, h, n int
	pix     []uint8
}

func rgbPlane(m *image.NRGBA) plane {
	p := plane{w: m.Rect.Dx(), h: m.Rect.Dy(), n: 3, pix: make([]uint8, 3*m.Rect.Dx()*m.Rect.Dy())}
	for y := range p.h {
		for x := range p.w {
			o := m.PixOffset(x, y)
			copy(p.pix[3*(y*p.w+x):], m.Pix[o:o+3])
		}
	}
	return p
}

func (p plane) nrgba() *image.NRGBA {
	out := image.NewNRGBA(image.Rect(0, 0, p.w, p.h))
	for i := range p.w * p.h {
		copy(out.Pix[4*i:4*i+3], p.pix[3*i:3*i+3])
		out.Pix[4*i+3] = 255
	}
	return out
}

func grayPlane(g *image.Gray) plane {
	return plane{w: g.Rect.Dx(), h: g.Rect.Dy(), n: 1, pix: append([]uint8(nil), g.Pix...)}
}

func (p plane) gray() *image.Gray {
	return &image.Gray{Pix: p.pix, Stride: p.w, Rect: image.Rect(0, 0, p.w, p.h)}
}

// lanczos is PIL's Lanczos (a = 3) kernel.
func lanczos(x float64) float64 {
	if x <= -3 || x >= 3 {
		return 0
	}
	return sinc(x) * sinc(x/3)
}

func sinc(x float64) float64 {
	if x == 0 {
		return 1
	}
	x *= math.Pi
	return math.Sin(x) / x
}

// precisionBits is PIL's fixed-point precision for 8-bit resampling.
const precisionBits = 32 - 8 - 2

// coeffs are PIL's precompute_coeffs for one axis from in to out pixels:
// per output pixel the first input pixel and the fixed-point weights.
func coeffs(in, out int) (starts []int, weights [][]int32) {
	scale := float64(in) / float64(out)
	fs := max(scale, 1)
	support := 3 * fs
	starts = make([]int, out)
	weights = make([][]int32, out)
	for o := range out {
		center := (float64(o) + 0.5) * scale
		lo := max(int(center-support+0.5), 0)
		hi := min(int(center+support+0.5), in)
		k := make([]float64, hi-lo)
		var sum float64
		for i := range k {
			k[i] = lanczos((float64(i+lo) - center + 0.5) / fs)
			sum += k[i]
		}
		w := make([]int32, len(k))
		for i, v := range k {
			if sum != 0 {
				v /= sum
			}
			if v < 0 {
				w[i] = int32(math.Trunc(-0.5 + v*(1<<precisionBits)))
			} else {
				w[i] = int32(math.Trunc(0.5 + v*(1<<precisionBits)))
			}
		}
		starts[o], weights[o] = lo, w
	}
	return starts, weights
}

func clip8(v int64) uint8 {
	v >>= precisionBits
	return uint8(min(max(v, 0), 255))
}

// resize resamples p to w x h with PIL's Lanczos: the horizontal pass, then
// the vertical one, each only when its size changes.
func (p plane) resize(w, h int) plane {
	if w != p.w {
		starts, ws := coeffs(p.w, w)
		out := plane{w: w, h: p.h, n: p.n, pix: make([]uint8, w*p.h*p.n)}
		for y := range p.h {
			for x := range w {
				for c := range p.n {
					s := int64(1) << (precisionBits - 1)
					for i, k := range ws[x] {
						s += int64(p.pix[(y*p.w+starts[x]+i)*p.n+c]) * int64(k)
					}
					out.pix[(y*w+x)*p.n+c] = clip8(s)
				}
			}
		}
		p = out
	}
	if h != p.h {
		starts, ws := coeffs(p.h, h)
		out := plane{w: p.w, h: h, n: p.n, pix: make([]uint8, p.w*h*p.n)}
		for y := range h {
			for x := range p.w {
				for c := range p.n {
					s := int64(1) << (precisionBits - 1)
					for i, k := range ws[y] {
						s += int64(p.pix[((starts[y]+i)*p.w+x)*p.n+c]) * int64(k)
					}
					out.pix[(y*p.w+x)*p.n+c] = clip8(s)
				}
			}
		}
		p = out
	}
	return p
}

// fit brings p to w x h in a resize mode, as A1111's resize_image does.
func (p plane) fit(w, h int, mode ResizeMode) plane {
	if p.w == w && p.h == h {
		return p
	}
	if mode == ResizeStretch {
		return p.resize(w, h)
	}
	ratio, src := float64(w)/float64(h), float64(p.w)/float64(p.h)
	var sw, sh int
	if mode == ResizeCrop {
		sw, sh = p.w*h/p.h, h
		if ratio > src {
			sw, sh = w, p.h*w/p.w
		}
	} else {
		sw, sh = w, p.h*w/p.w
		if ratio > src {
			sw, sh = p.w*h/p.h, h
		}
	}
	sw, sh = max(sw, 1), max(sh, 1)
	rs := p.resize(sw, sh)
	out := plane{w: w, h: h, n: p.n, pix: make([]uint8, w*h*p.n)}
	ox, oy := w/2-sw/2, h/2-sh/2
	for y := range h {
		for x := range w {
			// Outside the resized picture: the crop has nothing there; the
			// fill stretches the nearest edge row or column.
			sx, sy := x-ox, y-oy
			if mode == ResizeCrop && (sx < 0 || sy < 0 || sx >= sw || sy >= sh) {
				continue
			}
			sx, sy = min(max(sx, 0), sw-1), min(max(sy, 0), sh-1)
			copy(out.pix[(y*w+x)*p.n:(y*w+x+1)*p.n], rs.pix[(sy*sw+sx)*p.n:])
		}
	}
	return out
}

// gaussianBlur is OpenCV's GaussianBlur of an 8-bit plane with sigma s on
// both axes, the kernel A1111 uses for the mask blur (2*int(2.5s+0.5)+1
// taps, reflected borders without repeating the edge), rounded to 8 bits.
func (p plane) gaussianBlur(s float64) plane {
	if s <= 0 {
		return p
	}
	r := int(2.5*s + 0.5)
	k := gaussianKernel(s, r)
	reflect := func(i, n int) int {
		if n == 1 {
			return 0
		}
		for i < 0 || i >= n {
			if i < 0 {
				i = -i
			}
			if i >= n {
				i = 2*(n-1) - i
			}
		}
		return i
	}
	tmp := make([]float64, len(p.pix))
	for y := range p.h {
		for x := range p.w {
			for c := range p.n {
				var v float64
				for i, kv := range k {
					v += kv * float64(p.pix[(y*p.w+reflect(x+i-r, p.w))*p.n+c])
				}
				tmp[(y*p.w+x)*p.n+c] = v
			}
		}
	}
	out := plane{w: p.w, h: p.h, n: p.n, pix: make([]uint8, len(p.pix))}
	for y := range p.h {
		for x := range p.w {
			for c := range p.n {
				var v float64
				for i, kv := range k {
					v += kv * tmp[(reflect(y+i-r, p.h)*p.w+x)*p.n+c]
				}
				out.pix[(y*p.w+x)*p.n+c] = uint8(min(max(math.Round(v), 0), 255))
			}
		}
	}
	return out
}

// fillColors is A1111's masking.fill: the area to repaint (mask >= 128)
// gets colours spread from the kept pixels, as layers of ever less blurred
// copies of the kept pixels (premultiplied by their coverage: Gaussian
// blurs with standard deviations 256, 64, 16, 4, 2, 0, the later ones
// composited over the earlier ones as often as A1111 does). Large blurs
// run on a box-downsampled copy, which they cannot tell apart.
func fillColors(rgb plane, mask plane) plane {
	w, h := rgb.w, rgb.h
	n := w * h
	pre := make([]float64, 4*n) // premultiplied colour and coverage, 0-1
	for i := range n {
		if mask.pix[i] < 128 {
			for c := range 3 {
				pre[4*i+c] = float64(rgb.pix[3*i+c]) / 255
			}
			pre[4*i+3] = 1
		}
	}
	acc := make([]float64, 4*n) // premultiplied result
	for _, layer := range []struct {
		sigma   float64
		repeats int
	}{{256, 1}, {64, 1}, {16, 2}, {4, 4}, {2, 2}, {0, 1}} {
		bl := blurFloat(pre, w, h, 4, layer.sigma)
		for range layer.repeats {
			for i := range n {
				sa := bl[4*i+3]
				for c := range 4 {
					acc[4*i+c] = bl[4*i+c] + acc[4*i+c]*(1-sa)
				}
			}
		}
	}
	// The layers' straight colour (PIL's RGBA to RGB drops the alpha).
	out := plane{w: w, h: h, n: 3, pix: make([]uint8, 3*n)}
	for i := range n {
		if a := acc[4*i+3]; a > 0 {
			for c := range 3 {
				out.pix[3*i+c] = uint8(min(max(math.Round(acc[4*i+c]/a*255), 0), 255))
			}
		}
	}
	return out
}

// gaussianKernel is the normalised Gaussian of standard deviation s over
// the 2r+1 taps -r..r.
func gaussianKernel(s float64, r int) []float64 {
	k := make([]float64, 2*r+1)
	var sum float64
	for i := range k {
		d := float64(i - r)
		k[i] = math.Exp(-d * d / (2 * s * s))
		sum += k[i]
	}
	for i := range k {
		k[i] /= sum
	}
	return k
}

// blurFloat is a Gaussian blur with standard deviation sigma of n
// interleaved float channels, on a copy box-downsampled by sigma/4 (then
// bilinearly upsampled) when sigma is large.
func blurFloat(src []float64, w, h, n int, sigma float64) []float64 {
	if sigma <= 0 {
		return src
	}
	f := max(1, int(sigma/4))
	dw, dh := (w+f-1)/f, (h+f-1)/f
	small := make([]float64, dw*dh*n)
	cnt := make([]float64, dw*dh)
	for y := range h {
		for x := range w {
			j := (y/f)*dw + x/f
			cnt[j]++
			for c := range n {
				small[j*n+c] += src[(y*w+x)*n+c]
			}
		}
	}
	for j, k := range cnt {
		for c := range n {
			small[j*n+c] /= k
		}
	}
	s := sigma / float64(f)
	r := int(3*s + 0.5)
	k := gaussianKernel(s, r)
	// Beyond the border the blur sees nothing (zero coverage), as a
	// premultiplied blur of a transparent surround would.
	pass := func(in []float64, horizontal bool) []float64 {
		out := make([]float64, len(in))
		for y := range dh {
			for x := range dw {
				for i, kv := range k {
					xx, yy := x, y
					if horizontal {
						xx += i - r
					} else {
						yy += i - r
					}
					if xx < 0 || yy < 0 || xx >= dw || yy >= dh {
						continue
					}
					for c := range n {
						out[(y*dw+x)*n+c] += kv * in[(yy*dw+xx)*n+c]
					}
				}
			}
		}
		return out
	}
	small = pass(pass(small, true), false)
	if f == 1 {
		return small
	}
	out := make([]float64, w*h*n)
	for y := range h {
		fy := min(max((float64(y)+0.5)/float64(f)-0.5, 0), float64(dh-1))
		y0 := int(fy)
		y1, ty := min(y0+1, dh-1), fy-float64(y0)
		for x := range w {
			fx := min(max((float64(x)+0.5)/float64(f)-0.5, 0), float64(dw-1))
			x0 := int(fx)
			x1, tx := min(x0+1, dw-1), fx-float64(x0)
			for c := range n {
				a := small[(y0*dw+x0)*n+c]*(1-tx) + small[(y0*dw+x1)*n+c]*tx
				b := small[(y1*dw+x0)*n+c]*(1-tx) + small[(y1*dw+x1)*n+c]*tx
				out[(y*w+x)*n+c] = a*(1-ty) + b*ty
			}
		}
	}
	return out
}

// overlay pastes the original picture over the generated one outside the
// (blurred) mask, as A1111's apply_overlay does with mask_for_overlay =
// min(2 * mask, 255): out = gen * m + orig * (1 - m).
func overlay(gen *image.RGBA, orig plane, mask plane) {
	for y := range orig.h {
		for x := range orig.w {
			m := min(2*uint32(mask.pix[y*mask.w+x]), 255)
			o := gen.PixOffset(x, y)
			for c := range 3 {
				v := uint32(gen.Pix[o+c])*m + uint32(orig.pix[(y*orig.w+x)*3+c])*(255-m) + 127
				gen.Pix[o+c] = uint8(v / 255)
			}
		}
	}
}
