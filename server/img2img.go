package server

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/gif" // A1111 clients send PNG, JPEG and GIF pictures
	_ "image/jpeg"
	_ "image/png"
	"net/http"
	"strings"

	"github.com/zimage/zimage"
)

// img2imgRequest is StableDiffusionProcessingImg2Img's API model:
// txt2img's fields plus the picture, the mask and their settings.
// A1111's defaults apply to what is left out: denoising_strength 0.75,
// mask_blur 4, inpainting_fill 0 ("fill"), resize_mode 0.
type img2imgRequest struct {
	txt2imgRequest
	InitImages             []string `json:"init_images"`
	ResizeMode             *int     `json:"resize_mode"`
	DenoisingStrength      *float64 `json:"denoising_strength"`
	ImageCFGScale          *float64 `json:"image_cfg_scale"`
	Mask                   *string  `json:"mask"`
	MaskBlurX              *int     `json:"mask_blur_x"`
	MaskBlurY              *int     `json:"mask_blur_y"`
	MaskBlur               *int     `json:"mask_blur"`
	MaskRound              *bool    `json:"mask_round"`
	InpaintingFill         *int     `json:"inpainting_fill"`
	InpaintFullRes         any      `json:"inpaint_full_res"` // A1111 takes a bool or 0/1
	InpaintFullResPadding  *int     `json:"inpaint_full_res_padding"`
	InpaintingMaskInvert   *int     `json:"inpainting_mask_invert"`
	InitialNoiseMultiplier *float64 `json:"initial_noise_multiplier"`
	LatentMask             *string  `json:"latent_mask"`
	IncludeInitImages      bool     `json:"include_init_images"`
}

// img2imgSpec is an img2img request's validated picture settings.
type img2imgSpec struct {
	init, mask image.Image
	strength   float64
	maskBlur   int
	fill       zimage.InpaintFill
	invert     bool
	resize     zimage.ResizeMode
	req        img2imgRequest // for the parameters echo
}

// a1111Fills maps inpainting_fill to zimage's fills.
var a1111Fills = []zimage.InpaintFill{zimage.FillColors, zimage.FillOriginal, zimage.FillLatentNoise, zimage.FillLatentNothing}

// parseImg2img decodes and validates an img2img body.
func parseImg2img(body []byte, mult, maxSide int) (spec, error) {
	var r img2imgRequest
	if err := decodeBody(body, &r); err != nil {
		return spec{}, err
	}
	sp, err := parseCommon(r.txt2imgRequest, mult, maxSide)
	if err != nil {
		return sp, err
	}
	i := &img2imgSpec{strength: zimage.DefaultStrength, maskBlur: 4, req: r}
	sp.i2i = i
	if len(r.InitImages) == 0 {
		return sp, fieldf("init_images", "want at least one picture (base64 PNG, JPEG or GIF)")
	}
	if len(r.InitImages) > 1 {
		sp.ignored = append(sp.ignored, "init_images[1:]")
	}
	if i.init, err = decodeImage(r.InitImages[0]); err != nil {
		return sp, fieldf("init_images", "%v", err)
	}
	if v := r.DenoisingStrength; v != nil {
		if !finite(*v) || *v <= 0 || *v > 1 {
			return sp, fieldf("denoising_strength", "%v: want more than 0 and at most 1", *v)
		}
		i.strength = *v
	}
	if v := r.ResizeMode; v != nil {
		switch *v {
		case 0, 1, 2:
			i.resize = zimage.ResizeMode(*v)
		case 3: // "Just resize (latent upscale)": resized in pixels here
			sp.ignored = append(sp.ignored, "resize_mode 3 (done as 0)")
		default:
			return sp, fieldf("resize_mode", "%d: want 0 (just resize), 1 (crop and resize), 2 (resize and fill) or 3", *v)
		}
	}
	if r.Mask == nil || *r.Mask == "" {
		return sp, nil
	}
	if i.mask, err = decodeImage(*r.Mask); err != nil {
		return sp, fieldf("mask", "%v", err)
	}
	for _, b := range []struct {
		name string
		v    *int
	}{{"mask_blur", r.MaskBlur}, {"mask_blur_x", r.MaskBlurX}, {"mask_blur_y", r.MaskBlurY}} {
		if b.v == nil {
			continue
		}
		if *b.v < 0 || *b.v > 256 {
			return sp, fieldf(b.name, "%d: want 0 to 256 pixels", *b.v)
		}
		// One blur for both axes: the last of mask_blur, _x, _y given
		// (A1111 sets both from mask_blur).
		i.maskBlur = *b.v
	}
	if r.MaskBlurX != nil && r.MaskBlurY != nil && *r.MaskBlurX != *r.MaskBlurY {
		sp.ignored = append(sp.ignored, "mask_blur_x != mask_blur_y (mask_blur_y used for both)")
	}
	if v := r.InpaintingFill; v != nil {
		if *v < 0 || *v >= len(a1111Fills) {
			return sp, fieldf("inpainting_fill", "%d: want 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)", *v)
		}
		i.fill = a1111Fills[*v]
	} else {
		i.fill = zimage.FillColors
	}
	if v := r.InpaintingMaskInvert; v != nil {
		if *v != 0 && *v != 1 {
			return sp, fieldf("inpainting_mask_invert", "%d: want 0 (inpaint masked) or 1 (inpaint not masked)", *v)
		}
		i.invert = *v == 1
	}
	// A1111's API default is "only masked" (inpaint_full_res true): a crop
	// around the mask, upscaled. zimage repaints at the whole picture's
	// resolution.
	if fr, ok := r.InpaintFullRes.(bool); (ok && fr) || r.InpaintFullRes == nil || r.InpaintFullRes == float64(1) {
		sp.ignored = append(sp.ignored, "inpaint_full_res (whole picture inpainted)")
	}
	if v := r.InitialNoiseMultiplier; v != nil && *v != 1 {
		sp.ignored = append(sp.ignored, "initial_noise_multiplier")
	}
	if r.LatentMask != nil && *r.LatentMask != "" {
		sp.ignored = append(sp.ignored, "latent_mask")
	}
	return sp, nil
}

// decodeImage reads a base64 picture, with or without a data: URL prefix.
func decodeImage(s string) (image.Image, error) {
	if strings.HasPrefix(s, "data:") {
		_, after, ok := strings.Cut(s, ",")
		if !ok {
			return nil, errors.New("a data: URL without a comma")
		}
		s = after
	}
	if strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") {
		return nil, errors.New("zimage takes pictures as base64, not URLs")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("not base64: %v", err)
	}
	img, format, err := image.Decode(bytes.NewReader(raw))
	switch {
	case errors.Is(err, image.ErrFormat):
		return nil, errors.New("not a PNG, JPEG or GIF picture")
	case err != nil:
		return nil, fmt.Errorf("unreadable %s: %v", format, err)
	}
	if b := img.Bounds(); b.Dx() < 1 || b.Dy() < 1 {
		return nil, fmt.Errorf("empty picture (%dx%d)", b.Dx(), b.Dy())
	}
	return img, nil
}

// apply puts the picture settings into a library request.
func (i *img2imgSpec) apply(req *zimage.Request) {
	req.InitImage, req.Strength, req.ResizeMode = i.init, i.strength, i.resize
	if i.mask != nil {
		req.Mask, req.MaskBlur, req.Fill, req.InvertMask = i.mask, i.maskBlur, i.fill, i.invert
	}
}

func (s *Server) img2img(w http.ResponseWriter, r *http.Request) {
	s.serveJob(w, r, parseImg2img, func(j *job, o *outcome) any { return s.img2imgAnswer(j, o) })
}

// img2imgAnswer is ImageToImageResponse: txt2img's answer with the
// img2img parameters echoed (init_images only when include_init_images).
func (s *Server) img2imgAnswer(j *job, o *outcome) map[string]any {
	t := s.txt2imgAnswer(j, o)
	params := map[string]any{}
	raw, _ := json.Marshal(t.Parameters)
	json.Unmarshal(raw, &params)
	i := j.spec.i2i
	var inits any
	if i.req.IncludeInitImages {
		inits = i.req.InitImages
	}
	params["init_images"] = inits
	params["denoising_strength"] = i.strength
	params["resize_mode"] = int(i.resize)
	params["mask"] = nil
	params["mask_blur"] = i.maskBlur
	params["inpainting_fill"] = 0
	for k, f := range a1111Fills {
		if f == i.fill {
			params["inpainting_fill"] = k
		}
	}
	params["inpainting_mask_invert"] = 0
	if i.invert {
		params["inpainting_mask_invert"] = 1
	}
	params["include_init_images"] = i.req.IncludeInitImages
	delete(params, "enable_hr")
	return map[string]any{"images": t.Images, "parameters": params, "info": t.Info}
}
