package zimage

import (
	"errors"
	"fmt"
	"image"
	"math"

	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/sched"
)

// MinTileSize is the smallest VAE tile (output pixels) a Request may ask
// for: smaller tiles fall below 40 dB PSNR from the untiled decode (see
// model.MinTile).
const MinTileSize = 8 * model.MinTile

// DefaultStrength is the strength of an img2img request that leaves it 0
// (A1111's default denoising strength).
const DefaultStrength = 0.75

// Img2ImgSteps is the default step count of an img2img request: the
// model's, raised until the strength keeps one step (SD-Turbo's model card:
// 2 steps at strength 0.5, one UNet call; a 1-step turbo default at the
// default strength 0.75 would run nothing).
func Img2ImgSteps(steps int, strength float64) int {
	if strength <= 0 || strength > 1 || math.IsNaN(strength) {
		strength = DefaultStrength
	}
	for int(float64(steps)*strength) < 1 {
		steps++
	}
	return steps
}

// initPrep is a request's init picture and mask, prepared for the runner,
// and what the images need afterwards.
type initPrep struct {
	init *sched.Init
	orig plane // the picture at the run's size, before any fill
	mask plane // the (blurred) mask at the run's size, 255 = repaint
	blur int
}

// initSize is the default size of an img2img run: the picture's, rounded
// down to the model's size multiple (as diffusers' image processor does).
func (p *Pipeline) initSize(img image.Image) (w, h int) {
	m := p.SizeMultiple()
	r := img.Bounds()
	return max(r.Dx()/m*m, m), max(r.Dy()/m*m, m)
}

// prepareInit converts, fits and checks a request's init picture and mask
// for a w x h run; nil when the request has no picture.
func (p *Pipeline) prepareInit(req *Request, w, h int) (*initPrep, error) {
	if req.InitImage == nil {
		switch {
		case req.Mask != nil:
			return nil, &InputError{What: "mask", Err: errors.New("a mask needs an init image (InitImage)")}
		case req.Strength != 0:
			return nil, fmt.Errorf("zimage: strength %v without an init image (InitImage)", req.Strength)
		}
		return nil, nil
	}
	s := req.Strength
	if s == 0 {
		s = DefaultStrength
	}
	if math.IsNaN(s) || s < 0 || s > 1 {
		return nil, fmt.Errorf("zimage: strength %v: want more than 0 and at most 1", req.Strength)
	}
	if req.MaskBlur < 0 || req.MaskBlur > 256 {
		return nil, &InputError{What: "mask", Err: fmt.Errorf("mask blur %d: want 0 to 256 pixels", req.MaskBlur)}
	}
	if req.ResizeMode > ResizeFill || req.Fill > FillLatentNothing {
		return nil, fmt.Errorf("zimage: resize mode %d or inpainting fill %d unknown", req.ResizeMode, req.Fill)
	}
	if p.encoder() == nil {
		return nil, fmt.Errorf("zimage: img2img needs the model's VAE encoder, which could not be loaded: %w", p.encErr)
	}
	b := req.InitImage.Bounds()
	if b.Dx() < 1 || b.Dy() < 1 {
		return nil, &InputError{What: "init image", Err: fmt.Errorf("empty (%dx%d)", b.Dx(), b.Dy())}
	}
	ip := &initPrep{orig: rgbPlane(toRGB(req.InitImage)).fit(w, h, req.ResizeMode), blur: req.MaskBlur}
	in := &sched.Init{Strength: s}
	px := ip.orig
	if req.Mask != nil {
		mb := req.Mask.Bounds()
		if mb.Dx() < 1 || mb.Dy() < 1 {
			return nil, &InputError{What: "mask", Err: fmt.Errorf("empty (%dx%d)", mb.Dx(), mb.Dy())}
		}
		m := grayPlane(maskGray(req.Mask)).fit(w, h, req.ResizeMode)
		if req.InvertMask {
			for i, v := range m.pix {
				m.pix[i] = 255 - v
			}
		}
		m = m.gaussianBlur(float64(req.MaskBlur))
		ip.mask = m
		in.Mask = make([]float32, len(m.pix))
		for i, v := range m.pix {
			in.Mask[i] = float32(v) / 255
		}
		switch req.Fill {
		case FillColors:
			px = fillColors(px, m)
		case FillLatentNoise:
			in.Fill = sched.FillLatentNoise
		case FillLatentNothing:
			in.Fill = sched.FillLatentNothing
		}
	}
	in.Pixels = model.ImageToPixels(px.nrgba())
	ip.init = in
	return ip, nil
}

// finish pastes the original picture back outside a blurred mask, as
// A1111 does (diffusers' output is kept with no blur).
func (ip *initPrep) finish(images []*image.RGBA) {
	if ip.init.Mask == nil || ip.blur == 0 {
		return
	}
	for _, img := range images {
		overlay(img, ip.orig, ip.mask)
	}
}

func (p *Pipeline) encoder() *model.VAEEncoder {
	if p.zimage != nil {
		return p.zimage.Encoder
	}
	return p.models.Encoder
}

// HasTAESD reports whether the pipeline has a tiny decoder for
// Request.TAESD and Request.Preview.
func (p *Pipeline) HasTAESD() bool { return p.tiny != nil }

// checkTAESD refuses TAESD decoding or previews without a tiny decoder.
func (p *Pipeline) checkTAESD(req Request) error {
	if p.tiny != nil || (!req.TAESD && !req.Preview) {
		return nil
	}
	what := "TAESD decoding"
	if !req.TAESD {
		what = "previews"
	}
	return fmt.Errorf("zimage: %s asked for, but no TAESD is loaded: load the model with WithTAESD (zimage --taesd PATH), or put a taesd folder (taesdxl for SDXL) in the model folder", what)
}
