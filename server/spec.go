package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Limits of one txt2img request (the CLI's, except the side length: the
// web UI's slider stops at 2048, and one 2048² image already takes minutes
// on a CPU device).
const (
	MaxImages = 16 // batch_size × n_iter
	MaxSteps  = 150
	MaxCFG    = 30
	MinSide   = 8
)

// spec is a validated txt2img request. Zero sizes and steps and a nil cfg
// take the model's defaults when the job runs (the model may switch before
// then).
type spec struct {
	prompt, negative     string
	width, height, steps int
	cfg                  *float64
	seed                 int64 // -1 = random
	batch, iter          int
	sampler              string // zimage's name, "" = the model's
	karras               bool
	checkpoint           string // override_settings.sd_model_checkpoint
	save, send           bool
	req                  txt2imgRequest // for the parameters echo
	ignored              []string       // fields given that zimage cannot honour
	loadOnly             bool           // only switch the model (POST /sdapi/v1/options)
	i2i                  *img2imgSpec   // nil for txt2img
}

// parseTxt2img decodes and validates a txt2img body. mult is the size
// multiple of the loaded model (8 before any model loads; the worker checks
// again against the model that runs the job).
func parseTxt2img(body []byte, mult, maxSide int) (spec, error) {
	var r txt2imgRequest
	if err := decodeBody(body, &r); err != nil {
		return spec{}, err
	}
	return parseCommon(r, mult, maxSide)
}

// parseCommon validates the fields txt2img and img2img share.
func parseCommon(r txt2imgRequest, mult, maxSide int) (spec, error) {
	sp := spec{prompt: r.Prompt, negative: r.NegativePrompt, seed: -1, batch: 1, iter: 1, send: true, save: r.SaveImages, req: r}
	for _, f := range []struct {
		name string
		v    *int
		dst  *int
	}{{"width", r.Width, &sp.width}, {"height", r.Height, &sp.height}} {
		if f.v == nil {
			continue
		}
		if v := *f.v; v < MinSide || v > maxSide || v%mult != 0 {
			return sp, fieldf(f.name, "%d: want a multiple of %d (this model's size step) from %d to %d", v, mult, MinSide, maxSide)
		}
		*f.dst = *f.v
	}
	if r.Steps != nil {
		if *r.Steps < 1 || *r.Steps > MaxSteps {
			return sp, fieldf("steps", "%d: want 1 to %d (turbo models: 1-4)", *r.Steps, MaxSteps)
		}
		sp.steps = *r.Steps
	}
	if r.CFGScale != nil {
		g := *r.CFGScale
		if !finite(g) || g < 0 || g > MaxCFG {
			return sp, fieldf("cfg_scale", "%v: want 0 to %d (<= 1 turns guidance off; 5-8 is typical for classic models)", g, MaxCFG)
		}
		sp.cfg = &g
	}
	if r.Seed != nil {
		if *r.Seed < -1 {
			return sp, fieldf("seed", "%d: want a non-negative number, or -1 for a random seed", *r.Seed)
		}
		sp.seed = *r.Seed
	}
	if r.BatchSize != nil {
		sp.batch = *r.BatchSize
	}
	if r.NIter != nil {
		sp.iter = *r.NIter
	}
	if sp.batch < 1 || sp.iter < 1 || sp.batch*sp.iter > MaxImages {
		return sp, fieldf("batch_size", "%d × n_iter %d: want 1 to %d images in all", sp.batch, sp.iter, MaxImages)
	}
	field, name := "sampler_name", r.SamplerName
	if name == "" {
		field, name = "sampler_index", r.SamplerIndex
	}
	var ok bool
	if sp.sampler, sp.karras, ok = resolveSampler(name); !ok {
		return sp, fieldf(field, "%q: want one of %s (optionally with \" Karras\")", name, samplerLabels())
	}
	switch strings.ToLower(r.Scheduler) {
	case "", "automatic":
	case "karras":
		sp.karras = true
	default:
		return sp, fieldf("scheduler", "%q: want automatic or karras", r.Scheduler)
	}
	if sp.karras && sp.sampler != "" && !karrasSamplers[sp.sampler] {
		return sp, fieldf(field, "%q: Karras sigmas work with Euler and DPM++ 2M only", name)
	}
	if r.SendImages != nil {
		sp.send = *r.SendImages
	}
	if v, ok := r.OverrideSettings["sd_model_checkpoint"]; ok {
		s, isStr := v.(string)
		if !isStr {
			return sp, fieldf("override_settings", "sd_model_checkpoint: want a string, got %T", v)
		}
		sp.checkpoint = s
	}
	if r.ScriptName != nil && *r.ScriptName != "" {
		return sp, fieldf("script_name", "%q: zimage has no scripts", *r.ScriptName)
	}
	for name := range r.AlwaysOnScripts {
		return sp, fieldf("alwayson_scripts", "always on script %s not found (zimage has no scripts)", name)
	}
	// Accepted for compatibility, without effect.
	if r.EnableHR {
		sp.ignored = append(sp.ignored, "enable_hr")
	}
	if r.RestoreFaces != nil && *r.RestoreFaces {
		sp.ignored = append(sp.ignored, "restore_faces")
	}
	if r.Tiling != nil && *r.Tiling {
		sp.ignored = append(sp.ignored, "tiling")
	}
	if r.SubseedStrength != nil && *r.SubseedStrength != 0 {
		sp.ignored = append(sp.ignored, "subseed_strength")
	}
	if len(r.Styles) > 0 {
		sp.ignored = append(sp.ignored, "styles")
	}
	return sp, nil
}

func samplerLabels() string {
	var names []string
	for _, s := range samplers {
		names = append(names, s.label)
	}
	return strings.Join(names, ", ")
}

// decodeBody reads one JSON object; a syntax or type error becomes a
// fieldError naming where it is, and trailing data is refused.
func decodeBody(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te):
			return fieldf(te.Field, "want a JSON %s, got %s", te.Type, te.Value)
		case errors.As(err, &se):
			return fieldf("", "malformed JSON at byte %d: %v", se.Offset, err)
		case errors.Is(err, io.EOF):
			return fieldf("", "empty body: want a JSON object")
		}
		return fieldf("", "malformed JSON: %v", err)
	}
	if dec.More() {
		return fieldf("", "malformed JSON: data after the object")
	}
	return nil
}

// String of a spec for the "generation start" log line.
func (sp spec) String() string {
	cfg := "default"
	if sp.cfg != nil {
		cfg = fmt.Sprint(*sp.cfg)
	}
	return fmt.Sprintf("%dx%d steps %d cfg %s sampler %q seed %d images %d", sp.width, sp.height, sp.steps, cfg, sp.sampler, sp.seed, sp.batch*sp.iter)
}
