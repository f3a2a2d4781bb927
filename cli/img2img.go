package cli

import (
	"errors"
	"fmt"
	"image"
	_ "image/gif" // init pictures may be GIFs
	_ "image/jpeg"
	_ "image/png"
	"math"
	"os"
	"strings"

	ucli "github.com/urfave/cli/v2"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/sched/sampler"
)

// img2imgFlags are generate's flags for starting from a picture,
// inpainting and the tiny decoder.
func img2imgFlags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.StringFlag{Name: "init-img", Usage: "start from this picture (PNG, JPEG or GIF; img2img); the size defaults to the picture's, rounded down to the model's multiple, and another -W/-H resamples it (see --resize-mode)"},
		&ucli.Float64Flag{Name: "strength", Value: zimage.DefaultStrength, Usage: "img2img: how much of the schedule runs, more than 0 and at most 1 (low: close to the picture; 1: only its layout survives); steps x strength must reach 1 (SD-Turbo: --steps 2 --strength 0.5 is one UNet call)"},
		&ucli.StringFlag{Name: "mask", Usage: "inpaint: repaint where this picture is white (or opaque, in a PNG with transparency) and keep where it is black; any size"},
		&ucli.IntFlag{Name: "mask-blur", Usage: "inpaint: blur the mask by this many pixels and paste the result over the picture through it, as AUTOMATIC1111 does (0: the pipeline's output as diffusers gives it)"},
		&ucli.BoolFlag{Name: "invert-mask", Usage: "inpaint: repaint where the mask is black"},
		&ucli.StringFlag{Name: "inpaint-fill", Value: "original", Usage: "inpaint: what the masked area starts from: original, fill (colours from around it), latent-noise, latent-nothing (AUTOMATIC1111's inpainting fill)"},
		&ucli.StringFlag{Name: "resize-mode", Value: "stretch", Usage: "how a picture of another size than -W/-H is fitted: stretch, crop (scale to cover, cut the middle), fill (scale to fit, stretch the edges into the rest)"},
		&ucli.StringFlag{Name: "taesd", Usage: "decode with this tiny autoencoder (a taesd, taesdxl or taef1 diffusers folder, or taesd*_decoder.safetensors): a fraction of the VAE's time, softer details"},
		&ucli.BoolFlag{Name: "preview", Usage: "write a TAESD preview of the latents after every step to OUTPUT.preview.png, removed at the end (needs --taesd, or a taesd folder in the model folder)"},
	}
}

var resizeModes = map[string]zimage.ResizeMode{"stretch": zimage.ResizeStretch, "crop": zimage.ResizeCrop, "fill": zimage.ResizeFill}

var inpaintFills = map[string]zimage.InpaintFill{"original": zimage.FillOriginal, "fill": zimage.FillColors,
	"latent-noise": zimage.FillLatentNoise, "latent-nothing": zimage.FillLatentNothing}

// img2imgFromFlags reads the picture and mask and validates the img2img
// flags before the model loads.
func img2imgFromFlags(c *ucli.Context, req *zimage.Request) ([]zimage.Option, error) {
	var opts []zimage.Option
	if path := c.String("taesd"); path != "" {
		if _, err := os.Stat(path); err != nil {
			return nil, usagef("--taesd: %v", err)
		}
		opts = append(opts, zimage.WithTAESD(path))
		req.TAESD = true
	}
	req.Preview = c.Bool("preview")
	init := c.String("init-img")
	if init == "" {
		for _, f := range []string{"strength", "mask", "mask-blur", "invert-mask", "inpaint-fill", "resize-mode"} {
			if c.IsSet(f) {
				return nil, usagef("--%s needs a picture to start from (--init-img)", f)
			}
		}
		return opts, nil
	}
	img, err := decodePicture(init)
	if err != nil {
		return nil, usagef("--init-img: %v", err)
	}
	req.InitImage = img
	s := c.Float64("strength")
	if math.IsNaN(s) || s <= 0 || s > 1 {
		return nil, usagef("--strength %v: want more than 0 and at most 1", s)
	}
	req.Strength = s
	if c.IsSet("steps") {
		if _, err := sampler.Img2ImgStart(c.Int("steps"), s); err != nil {
			return nil, usagef("--strength %v with --steps %d runs no step: steps x strength must reach 1", s, c.Int("steps"))
		}
	}
	mode, ok := resizeModes[c.String("resize-mode")]
	if !ok {
		return nil, usagef("--resize-mode %q: want stretch, crop or fill", c.String("resize-mode"))
	}
	req.ResizeMode = mode
	mask := c.String("mask")
	if mask == "" {
		for _, f := range []string{"mask-blur", "invert-mask", "inpaint-fill"} {
			if c.IsSet(f) {
				return nil, usagef("--%s needs a mask (--mask)", f)
			}
		}
		return opts, nil
	}
	if req.Mask, err = decodePicture(mask); err != nil {
		return nil, usagef("--mask: %v", err)
	}
	if b := c.Int("mask-blur"); b < 0 || b > 256 {
		return nil, usagef("--mask-blur %d: want 0 to 256 pixels", b)
	}
	req.MaskBlur, req.InvertMask = c.Int("mask-blur"), c.Bool("invert-mask")
	fill, ok := inpaintFills[c.String("inpaint-fill")]
	if !ok {
		return nil, usagef("--inpaint-fill %q: want original, fill, latent-noise or latent-nothing", c.String("inpaint-fill"))
	}
	req.Fill = fill
	return opts, nil
}

// readImage decodes a PNG, JPEG or GIF file.
func decodePicture(path string) (image.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, format, err := image.Decode(f)
	switch {
	case errors.Is(err, image.ErrFormat):
		return nil, fmt.Errorf("%s: not a PNG, JPEG or GIF picture", path)
	case err != nil:
		return nil, fmt.Errorf("%s: unreadable %s: %v", path, format, err)
	}
	if b := img.Bounds(); b.Dx() < 1 || b.Dy() < 1 {
		return nil, fmt.Errorf("%s: empty picture (%dx%d)", path, b.Dx(), b.Dy())
	}
	return img, nil
}

// checkStrength refuses, once the model is known, a strength that keeps
// no step of its schedule (the SD pipelines count int(steps x strength),
// the flow-matching ones int(steps - steps x strength)).
func checkStrength(p *zimage.Pipeline, req zimage.Request) error {
	if req.InitImage == nil || req.Steps == 0 {
		return nil
	}
	start := sampler.Img2ImgStart
	if p.Arch() == "z-image" {
		start = sampler.FlowImg2ImgStart
	}
	if _, err := start(req.Steps, req.Strength); err != nil {
		return usagef("--strength %v with --steps %d runs no step: steps x strength must reach 1", req.Strength, req.Steps)
	}
	return nil
}

// previewPath is where --preview writes: OUTPUT.preview.png.
func previewPath(output string) string {
	return strings.TrimSuffix(output, ".png") + ".preview.png"
}
