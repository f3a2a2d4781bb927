package cli

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/signal"
	"sort"
	"strings"

	ucli "github.com/urfave/cli/v2"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/lora"
	"github.com/zimage/zimage/sched"
	"github.com/zimage/zimage/sched/sampler"
)

var presets = map[string][2]float64{"1:1": {1, 1}, "4:3": {4, 3}, "3:4": {3, 4}, "16:9": {16, 9}, "9:16": {9, 16}, "3:2": {3, 2}, "2:3": {2, 3}}

func generateCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "generate",
		Aliases:   []string{"gen"},
		Usage:     "generate images from a prompt",
		ArgsUsage: " ",
		Description: `Turbo models (SD-Turbo, SDXL-Turbo) make a good image in 1-4 steps without guidance (--cfg 0);
   Z-Image-Turbo in 9 steps without guidance, at 1024x1024, from English or Chinese prompts;
   classic models (SD 1.5, SD 2.1, SDXL) want 20-30 steps and --cfg 5-8.`,
		Flags: append([]ucli.Flag{
			&ucli.StringFlag{Name: "model", Aliases: []string{"m"}, Required: true, Usage: "diffusers model folder, single-file .safetensors checkpoint, or .gguf (a whole SD model, or a Z-Image transformer)"},
			&ucli.StringFlag{Name: "prompt", Aliases: []string{"p"}, Usage: "what to draw"},
			&ucli.StringFlag{Name: "negative-prompt", Aliases: []string{"n"}, Usage: "what to avoid (used only when --cfg > 1)"},
			&ucli.IntFlag{Name: "width", Aliases: []string{"W"}, Usage: "image width in pixels, a multiple of 8 (the latent is 1/8 of the image; Z-Image: a multiple of 16)", DefaultText: "the model's base size"},
			&ucli.IntFlag{Name: "height", Aliases: []string{"H"}, Usage: "image height in pixels, a multiple of 8 (Z-Image: 16)", DefaultText: "the model's base size"},
			&ucli.StringFlag{Name: "preset", Usage: "aspect ratio over the model's base size (512 for SD-Turbo, SDXL-Turbo and SD 1.x, 1024 for SDXL and Z-Image): 1:1, 4:3, 3:4, 3:2, 2:3, 16:9, 9:16"},
			&ucli.IntFlag{Name: "steps", Usage: "denoising steps, 1-150", DefaultText: "1 for SD turbo models, 9 for Z-Image-Turbo, 25 otherwise"},
			&ucli.Float64Flag{Name: "cfg", Value: -1, DefaultText: "0 for turbo models, 7.5 otherwise (SDXL 5)", Usage: "guidance scale: how strongly to follow the prompt; <= 1 turns guidance off and halves the work (classic models: 5-8)"},
			&ucli.Float64Flag{Name: "cfg-truncation", Usage: "Z-Image: stop guiding once the normalised time (0 at noise, 1 at the image) passes this value, 0-1 (0 = never)"},
			&ucli.Float64Flag{Name: "cfg-normalization", Usage: "Z-Image: cap the guided prediction's norm at this many times the unguided one's (0 = off, 1 = diffusers' True)"},
			&ucli.Int64Flag{Name: "seed", Aliases: []string{"s"}, Value: -1, Usage: "noise seed, torch.randn-compatible; -1 picks a random one (always printed)"},
			&ucli.IntFlag{Name: "batch", Aliases: []string{"b"}, Value: 1, Usage: "images per prompt, 1-16"},
			&ucli.StringFlag{Name: "sampler", Usage: "euler, euler_a, pndm, ddim, lcm, dpmpp_2m (default: the model's scheduler)"},
			&ucli.StringFlag{Name: "scheduler", Value: "default", Usage: "sigma schedule: default or karras"},
			&ucli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "zimage-{seed}.png", Usage: "output PNG; {seed}, {n}, {prompt} and {date} are replaced"},
			&ucli.StringFlag{Name: "noise", Usage: "safetensors file with explicit noise: latents [B,4,h,w] and noise.0, noise.1, ... for ancestral samplers"},
			&ucli.StringFlag{Name: "unet", Usage: "file with the UNet alone (e.g. a quantized ComfyUI-GGUF .gguf) to use instead of the model's"},
			&ucli.StringSliceFlag{Name: "lora", KeepSpace: true, Usage: "apply a LoRA file (kohya/A1111 or diffusers/PEFT .safetensors) at a multiplier, FILE or FILE:MULT (default 1); repeat for several"},
			&ucli.BoolFlag{Name: "long-prompts", Usage: "encode prompts over 75 tokens in several windows (A1111 style) instead of truncating"},
			&ucli.BoolFlag{Name: "json", Usage: "print a machine-readable summary on stdout"},
			&ucli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress on stderr"},
		}, append(append(deviceFlags(), loraFlags()...), img2imgFlags()...)...),
		Action: runGenerate,
	}
}

type genSummary struct {
	Images      []genImage           `json:"images"`
	Width       int                  `json:"width"`
	Height      int                  `json:"height"`
	Steps       int                  `json:"steps"`
	CFG         float64              `json:"cfg"`
	Sampler     string               `json:"sampler"`
	Seed        uint64               `json:"seed"`
	Stages      map[string]float64   `json:"stage_seconds"`
	TotalSec    float64              `json:"total_seconds"`
	PeakDevice  int64                `json:"peak_device_bytes"`
	PeakHostRSS int64                `json:"peak_host_rss_bytes"`
	Truncated   int                  `json:"truncated_tokens"`
	Parameters  string               `json:"parameters"`
	LoRAs       []zimage.AppliedLoRA `json:"loras,omitempty"`
	LoRAModes   map[string]string    `json:"lora_modes,omitempty"`
}

type genImage struct {
	Path string `json:"path"`
	Seed uint64 `json:"seed"`
}

func runGenerate(c *ucli.Context) error {
	if c.Args().Len() > 0 {
		return usagef("generate: unexpected argument %q (quote the prompt and pass it with -p)", c.Args().First())
	}
	req, opts, err := requestFromFlags(c)
	if err != nil {
		return err
	}
	pattern := c.String("output")
	if err := checkWritable(outputPath(pattern, 0, 1, 1, req.Prompt)); err != nil {
		return usagef("--output: %v", err)
	}
	bar := newProgressBar(c.App.ErrWriter, c.Bool("quiet"))
	preview := previewPath(outputPath(pattern, 0, 1, 1, req.Prompt))
	var previewErr error
	opts = append(opts, zimage.WithProgress(func(p zimage.Progress) {
		switch {
		case len(p.Previews) > 0 && previewErr == nil:
			// The first image of the batch; a failed write stops the
			// previews, not the run.
			if previewErr = writePNG(preview, p.Previews[0], ""); previewErr != nil {
				bar.printf("preview: %v\n", previewErr)
			}
		case p.Stage == "denoise" && p.Step > 0:
			bar.step("denoise", p.Step, p.Steps)
		}
	}))
	if req.Preview {
		defer os.Remove(preview)
	}
	bar.printf("loading %s\n", c.String("model"))
	p, err := zimage.Load(c.String("model"), opts...)
	if err != nil {
		return err
	}
	defer p.Close()
	for _, w := range p.Warnings {
		bar.printf("warning: %s\n", w)
	}
	if err := applyPreset(c, p, &req); err != nil {
		return err
	}
	if m := p.SizeMultiple(); req.Width%m != 0 || req.Height%m != 0 {
		return usagef("size %dx%d: %s wants a width and height that are multiples of %d (--width, --height)", req.Width, req.Height, p.Arch(), m)
	}
	if err := checkStrength(p, req); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt)
	defer stop()
	res, err := p.Generate(ctx, req)
	var unknown *lora.UnknownLoRAError
	if errors.As(err, &unknown) {
		// Checked before loading too; here when the folder changed since.
		return usagef("--prompt: %v", err)
	}
	if err != nil {
		return err
	}
	bar.printf("seed %d\n", res.Parameters.Seed)
	for _, l := range res.LoRAs {
		bar.printf("lora %s (%s): te %g, unet %g, hash %s\n", l.Name, l.Path, l.TE, l.UNet, l.Hash)
	}
	if st := res.LoRAStats; len(res.LoRAs) > 0 {
		bar.printf("  %d modules merged, %d in the forward pass (%s on the device); %s\n", st.Merged, st.InForward,
			model.FormatBytes(st.ForwardBytes), formatModes(res.LoRAModes))
	}
	if res.Truncated > 0 {
		if p.Arch() == "z-image" {
			bar.printf("prompt truncated: %d tokens beyond the text encoder's 512-token limit were dropped\n", res.Truncated)
		} else {
			bar.printf("prompt truncated: %d tokens beyond the 75-token limit were dropped (use --long-prompts)\n", res.Truncated)
		}
	}
	sum := genSummary{Width: res.Parameters.Width, Height: res.Parameters.Height, Steps: res.Parameters.Steps,
		CFG: res.Parameters.CFGScale, Sampler: res.Parameters.Sampler, Seed: res.Parameters.Seed,
		Stages: map[string]float64{}, TotalSec: res.Total.Seconds(), PeakDevice: res.PeakDevice,
		PeakHostRSS: res.PeakHostRSS, Truncated: res.Truncated, Parameters: res.Metadata,
		LoRAs: res.LoRAs, LoRAModes: res.LoRAModes}
	for i, img := range res.Images {
		path := outputPath(pattern, res.Seeds[i], i+1, len(res.Images), req.Prompt)
		if err := writePNG(path, img, res.Metadata); err != nil {
			return err
		}
		sum.Images = append(sum.Images, genImage{Path: path, Seed: res.Seeds[i]})
		bar.printf("wrote %s\n", path)
	}
	for _, s := range res.Stages {
		sum.Stages[s.Name] = s.Duration.Seconds()
		bar.printf("  %-8s %7.2fs  peak device %s\n", s.Name, s.Duration.Seconds(), model.FormatBytes(s.PeakDev))
	}
	bar.printf("  total    %7.2fs  peak device %s, peak host RSS %s\n", res.Total.Seconds(),
		model.FormatBytes(res.PeakDevice), model.FormatBytes(res.PeakHostRSS))
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(sum)
	}
	return nil
}

// requestFromFlags validates every flag before the model loads, so that a
// typo costs nothing. Sizes and steps left at zero take the model's
// defaults later.
func requestFromFlags(c *ucli.Context) (zimage.Request, []zimage.Option, error) {
	var req zimage.Request
	var opts []zimage.Option
	req.Prompt = c.String("prompt")
	req.NegativePrompt = c.String("negative-prompt")
	for _, f := range []string{"width", "height"} {
		v := c.Int(f)
		if c.IsSet(f) && (v < 8 || v > 8192 || v%8 != 0) {
			return req, nil, usagef("--%s %d: want a multiple of 8 from 8 to 8192 (the model works on a latent 1/8 of the image; Z-Image: of 16)", f, v)
		}
	}
	req.Width, req.Height = c.Int("width"), c.Int("height")
	if p := c.String("preset"); p != "" {
		if _, ok := presets[p]; !ok {
			return req, nil, usagef("--preset %q: want one of 1:1, 4:3, 3:4, 3:2, 2:3, 16:9, 9:16", p)
		}
	}
	if c.IsSet("steps") && (c.Int("steps") < 1 || c.Int("steps") > 150) {
		return req, nil, usagef("--steps %d: want 1 to 150 (turbo models: 1-4)", c.Int("steps"))
	}
	req.Steps = c.Int("steps")
	if c.IsSet("cfg") {
		g := c.Float64("cfg")
		if math.IsNaN(g) || g < 0 || g > 30 {
			return req, nil, usagef("--cfg %v: want 0 to 30 (<= 1 turns guidance off; 5-8 is typical for classic models)", g)
		}
		req.Guidance = &g
	}
	switch seed := c.Int64("seed"); {
	case seed == -1:
		req.RandomSeed = true
	case seed < 0:
		return req, nil, usagef("--seed %d: want a non-negative number, or -1 for a random seed", seed)
	default:
		req.Seed = uint64(seed)
	}
	if b := c.Int("batch"); b < 1 || b > 16 {
		return req, nil, usagef("--batch %d: want 1 to 16", b)
	}
	req.Batch = c.Int("batch")
	req.Sampler = strings.ToLower(c.String("sampler"))
	if req.Sampler != "" && !validSampler(req.Sampler) {
		return req, nil, usagef("--sampler %q: want one of %s", req.Sampler, strings.Join(sampler.Names(), ", "))
	}
	switch c.String("scheduler") {
	case "default", "":
	case "karras":
		req.Karras = true
	default:
		return req, nil, usagef("--scheduler %q: want default or karras", c.String("scheduler"))
	}
	dev, err := deviceFromFlags(c)
	if err != nil {
		return req, nil, err
	}
	opts = dev.opts
	req.VAETiling, req.Tile = dev.tiling, dev.tile
	if n := c.String("noise"); n != "" {
		if _, err := os.Stat(n); err != nil {
			return req, nil, usagef("--noise: %v", err)
		}
		req.NoiseFile = n
	}
	if v := c.Float64("cfg-truncation"); math.IsNaN(v) || v < 0 || v > 1 {
		return req, nil, usagef("--cfg-truncation %v: want 0 to 1 (0 = never truncate)", v)
	}
	if v := c.Float64("cfg-normalization"); math.IsNaN(v) || v < 0 || v > 100 {
		return req, nil, usagef("--cfg-normalization %v: want 0 (off) to 100", v)
	}
	req.CFGTruncation, req.CFGNormalization = c.Float64("cfg-truncation"), c.Float64("cfg-normalization")
	if u := c.String("unet"); u != "" {
		if _, err := os.Stat(u); err != nil {
			return req, nil, usagef("--unet: %v", err)
		}
		opts = append(opts, zimage.WithUNet(u))
	}
	req.LongPrompts = c.Bool("long-prompts")
	if req.LoRAs, err = lorasFromFlags(c); err != nil {
		return req, nil, err
	}
	ls, err := loraFromFlags(c)
	if err != nil {
		return req, nil, err
	}
	opts = append(opts, ls.opts...)
	if err := checkPromptLoRAs(req.Prompt, ls.dir); err != nil {
		return req, nil, err
	}
	io, err := img2imgFromFlags(c, &req)
	if err != nil {
		return req, nil, err
	}
	opts = append(opts, io...)
	if _, err := os.Stat(c.String("model")); err != nil {
		return req, nil, usagef("--model: %v", err)
	}
	return req, opts, nil
}

// formatModes shows how each network took its LoRAs, sorted.
func formatModes(m map[string]string) string {
	var parts []string
	for c, mode := range m {
		parts = append(parts, c+" "+mode)
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// deviceFlags are the flags of every command that loads a model onto a
// device (generate, serve).
func deviceFlags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.StringFlag{Name: "vram", Usage: "device memory budget such as 512MB, 4GB, 3.5GiB (default: no limit)"},
		&ucli.StringFlag{Name: "offload", Value: "auto", Usage: "weights: none (all on the device), layer (stream block by block), auto (stream only when over --vram)"},
		&ucli.StringFlag{Name: "vae-tiling", Value: "auto", Usage: "VAE in tiles, which keep memory flat at any size: auto (only when a whole decode would not fit --vram or the device's binding limit; one pass over tiles of 192 px and more, ~1.56x the untiled work for lavapipe's 320-px tiles at 512x512, else the three passes of on), on (always, three passes that bring every tile's normalisation to the whole image's: 3x a pass, >= 40 dB from the untiled picture), off"},
		&ucli.IntFlag{Name: "tile-size", Usage: "VAE tile size in output pixels, a multiple of 8 from 96 (smaller tiles fall below 40 dB from the untiled picture)", DefaultText: "chosen from the budget"},
		&ucli.StringFlag{Name: "device", Aliases: []string{"d"}, Usage: "Vulkan device index or name (see 'zimage devices'; also $ZIMAGE_DEVICE)"},
		&ucli.StringFlag{Name: "tokenizer", Usage: "tokenizer folder for single-file checkpoints (a diffusers model folder works)"},
		&ucli.StringFlag{Name: "config", Usage: "diffusers folder whose configs override those inferred for a single-file checkpoint"},
		&ucli.StringFlag{Name: "text-encoder", Usage: "Z-Image: the Qwen3 text encoder a single transformer file lacks (a Z-Image diffusers folder, its text_encoder folder or a .safetensors file)"},
		&ucli.StringFlag{Name: "vae", Usage: "Z-Image: the VAE a single transformer file lacks (a Z-Image diffusers folder, its vae folder or a .safetensors file)"},
		&ucli.StringFlag{Name: "weights", Usage: "quantize the weights at load time and keep them quantized on the device: q8_0, q5_1, q5_0, q4_1, q4_0 or q4_k (the tensors 'zimage convert' would quantize; default: as stored)"},
	}
}

// deviceSettings are deviceFlags, validated.
type deviceSettings struct {
	opts   []zimage.Option
	tiling sched.Tiling
	tile   int
}

func deviceFromFlags(c *ucli.Context) (deviceSettings, error) {
	var d deviceSettings
	if v := c.String("vram"); v != "" {
		n, err := ParseByteSize(v)
		if err != nil {
			return d, usagef("--vram: %v", err)
		}
		d.opts = append(d.opts, zimage.WithBudget(n))
	}
	off, err := sched.ParseOffload(c.String("offload"))
	if err != nil {
		return d, usagef("--offload %q: want none, layer or auto", c.String("offload"))
	}
	d.opts = append(d.opts, zimage.WithOffload(off))
	if d.tiling, err = sched.ParseTiling(c.String("vae-tiling")); err != nil {
		return d, usagef("--vae-tiling %q: want auto, on or off", c.String("vae-tiling"))
	}
	if t := c.Int("tile-size"); c.IsSet("tile-size") && (t < zimage.MinTileSize || t%8 != 0) {
		return d, usagef("--tile-size %d: want a multiple of 8, at least %d pixels (smaller tiles fall below 40 dB from the untiled picture)", t, zimage.MinTileSize)
	}
	d.tile = c.Int("tile-size")
	if v := c.String("device"); v != "" {
		d.opts = append(d.opts, zimage.WithDevice(v))
	}
	if t := c.String("tokenizer"); t != "" {
		d.opts = append(d.opts, zimage.WithTokenizer(t))
	}
	if v := c.String("config"); v != "" {
		d.opts = append(d.opts, zimage.WithConfigDir(v))
	}
	for _, f := range []string{"text-encoder", "vae"} {
		if v := c.String(f); v != "" {
			if _, err := os.Stat(v); err != nil {
				return d, usagef("--%s: %v", f, err)
			}
		}
	}
	if v := c.String("text-encoder"); v != "" {
		d.opts = append(d.opts, zimage.WithTextEncoder(v))
	}
	if v := c.String("vae"); v != "" {
		d.opts = append(d.opts, zimage.WithVAE(v))
	}
	if v := c.String("weights"); v != "" {
		if _, err := model.ParseQuantizeType(v); err != nil {
			return d, usagef("--weights: %v", err)
		}
		d.opts = append(d.opts, zimage.WithWeights(v))
	}
	return d, nil
}

func validSampler(name string) bool {
	for _, n := range sampler.Names() {
		if n == name {
			return true
		}
	}
	return false
}

// applyPreset turns --preset into a size over the model's base size,
// keeping about the base's pixel count; explicit --width/--height win.
func applyPreset(c *ucli.Context, p *zimage.Pipeline, req *zimage.Request) error {
	preset := c.String("preset")
	if preset == "" {
		return nil
	}
	base, _, _, _ := p.Defaults()
	r := presets[preset]
	ratio := math.Sqrt(r[0] / r[1])
	m := float64(p.SizeMultiple())
	round := func(v float64) int { return max(64, int(math.Round(v/m)*m)) }
	if req.Width == 0 {
		req.Width = round(float64(base) * ratio)
	}
	if req.Height == 0 {
		req.Height = round(float64(base) / ratio)
	}
	return nil
}
