package model

import (
	"fmt"
	"image"
	"image/color"
	"math"

	"github.com/zimage/zimage/engine"
)

// NonFiniteOutputError reports NaN or Inf in a network's output: the
// failure that other engines turn into a silently black image.
type NonFiniteOutputError struct {
	What       string
	Count      int   // non-finite elements
	First      []int // index of the first one, per dimension
	FirstValue float32
}

func (e *NonFiniteOutputError) Error() string {
	return fmt.Sprintf("model: %s has %d non-finite values (first %v at %v); the image would be black or garbage",
		e.What, e.Count, e.FirstValue, e.First)
}

// finiteFloats returns a *NonFiniteOutputError when data holds NaN or Inf.
func finiteFloats(data []float32, shape []int, what string) error {
	first, count := -1, 0
	for i, x := range data {
		if x-x != 0 { // NaN and ±Inf, without float64 conversions
			if first < 0 {
				first = i
			}
			count++
		}
	}
	if count == 0 {
		return nil
	}
	idx := make([]int, len(shape))
	r := first
	for d := len(shape) - 1; d >= 0; d-- {
		if shape[d] > 0 {
			idx[d] = r % shape[d]
			r /= shape[d]
		}
	}
	return &NonFiniteOutputError{What: what, Count: count, First: idx, FirstValue: data[first]}
}

// ImageToRGBA converts one decoded image, planar [3, height, width] floats
// nominally in [-1, 1], to 8-bit RGBA exactly as diffusers does:
// round(clamp(x/2 + 0.5, 0, 1) * 255) in float32, rounding half to even
// like numpy. NaN or Inf is an error, never a black image.
func ImageToRGBA(px []float32, height, width int) (*image.RGBA, error) {
	if height <= 0 || width <= 0 || len(px) != 3*height*width {
		return nil, fmt.Errorf("model: image of %d values, want 3 x %d x %d", len(px), height, width)
	}
	if err := finiteFloats(px, []int{3, height, width}, "decoded image"); err != nil {
		return nil, err
	}
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	plane := height * width
	for i := range plane {
		o := 4 * i
		img.Pix[o] = toByte(px[i])
		img.Pix[o+1] = toByte(px[plane+i])
		img.Pix[o+2] = toByte(px[2*plane+i])
		img.Pix[o+3] = 255
	}
	return img, nil
}

// ImagesToRGBA converts a batch [B, 3, H, W] of decoded images.
func ImagesToRGBA(px []float32, shape engine.Shape) ([]*image.RGBA, error) {
	if len(shape) != 4 || shape[1] != 3 || shape.Valid() != nil || len(px) != shape.NumElem() {
		return nil, fmt.Errorf("model: %d image values of shape %v, want [B, 3, H, W]", len(px), shape)
	}
	per := 3 * shape[2] * shape[3]
	out := make([]*image.RGBA, shape[0])
	for b := range out {
		img, err := ImageToRGBA(px[b*per:(b+1)*per], shape[2], shape[3])
		if err != nil {
			return nil, fmt.Errorf("image %d of %d: %w", b+1, shape[0], err)
		}
		out[b] = img
	}
	return out, nil
}

// ReadImages reads a decoded [B, 3, H, W] tensor and converts it.
func ReadImages(b engine.Backend, t *engine.Tensor) ([]*image.RGBA, error) {
	px, err := b.Read(t)
	if err != nil {
		return nil, fmt.Errorf("model: read image %s: %w", t.Name, err)
	}
	return ImagesToRGBA(px, t.Shape)
}

// toByte is diffusers' denormalize + numpy_to_pil on one float32 value. The
// explicit float32 conversions keep every step rounded to float32 (Go may
// otherwise fuse the multiply-add), as torch and numpy compute it.
func toByte(x float32) uint8 {
	v := float32(x/2) + 0.5
	v = min(max(v, 0), 1)
	v = float32(v * 255)
	return uint8(math.RoundToEven(float64(v)))
}

// ImageToPixels converts an image to the VAE encoder's input, planar [3,
// height, width] floats in [-1, 1], as diffusers' VaeImageProcessor
// preprocesses a PIL RGB image: u8 / 255 * 2 - 1 in float32. Any
// image.Image is read through its 8-bit RGB values (gray is replicated, a
// palette looked up, 16-bit channels keep their high byte); alpha is
// dropped as PIL's convert("RGB") drops it, so callers that want
// transparent pixels composited or refused must do that first.
func ImageToPixels(img image.Image) []float32 {
	r := img.Bounds()
	w, h := r.Dx(), r.Dy()
	plane := w * h
	out := make([]float32, 3*plane)
	set := func(i int, c [3]uint8) {
		for k, v := range c {
			x := float32(v) / 255
			out[k*plane+i] = float32(2*x) - 1
		}
	}
	switch m := img.(type) {
	case *image.NRGBA: // what image/png returns for 8-bit RGB(A)
		for y := range h {
			row := m.Pix[(y+r.Min.Y-m.Rect.Min.Y)*m.Stride+(r.Min.X-m.Rect.Min.X)*4:]
			for x := range w {
				set(y*w+x, [3]uint8{row[4*x], row[4*x+1], row[4*x+2]})
			}
		}
	default:
		for y := range h {
			for x := range w {
				c := color.NRGBA64Model.Convert(img.At(r.Min.X+x, r.Min.Y+y)).(color.NRGBA64)
				set(y*w+x, [3]uint8{uint8(c.R >> 8), uint8(c.G >> 8), uint8(c.B >> 8)})
			}
		}
	}
	return out
}
