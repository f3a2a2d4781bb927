// Package zimage generates images from text with Stable Diffusion models
// (SD 1.x, SD 2.x / SD-Turbo, SDXL / SDXL-Turbo) on any Vulkan device,
// including lavapipe on the CPU. No Python, no CUDA.
//
//	p, err := zimage.Load("models/sd-turbo")
//	...
//	res, err := p.Generate(ctx, zimage.Request{Prompt: "a lighthouse at dusk", Seed: 42})
//
// A Pipeline is safe for concurrent use: Generate calls are serialized,
// because one device runs one generation at a time.
package zimage

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"strings"
	"sync"
	"time"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/lora"
	"github.com/zimage/zimage/sched"
)

// Version is the zimage release recorded in image metadata.
const Version = "0.1.0"

// Options configure Load.
type Options struct {
	// Device picks the Vulkan device by index ("0") or name substring;
	// empty uses $ZIMAGE_DEVICE, else the first device.
	Device string
	// Budget caps device memory in bytes (0 = unlimited).
	Budget int64
	// Offload says how weights reach the device (default auto).
	Offload sched.Offload
	// TokenizerDir is needed for single-file checkpoints, which carry no
	// vocabulary: a diffusers model folder or a tokenizer folder.
	TokenizerDir string
	// ConfigDir optionally overrides the configs inferred for a single file.
	ConfigDir string
	// TextEncoderPath and VAEPath supply the Qwen3 text encoder and the VAE
	// that a single Z-Image transformer file lacks (a Z-Image diffusers
	// folder, the component's folder, or one .safetensors file).
	TextEncoderPath, VAEPath string
	// UNet is a file with the denoiser alone (e.g. a ComfyUI-GGUF .gguf)
	// used instead of the model's own.
	UNet string
	// Weights quantizes the weights at load time to a block type ("q8_0",
	// "q4_0", "q4_1", "q5_0", "q5_1", "q4_k"): the tensors a conversion to
	// GGUF would quantize (the Linear and attention weights of the
	// denoiser and text encoders) are encoded as they are first uploaded
	// and stay quantized on the device. "" keeps the stored types.
	Weights string
	// Progress receives progress events (never stdout).
	Progress func(Progress)
	// Backend runs the networks on this backend instead of opening a Vulkan
	// device; the Pipeline then does not close it.
	Backend engine.Backend
	// LoRADir is the folder that A1111's <lora:NAME:MULT> prompt tags find
	// LoRA files in (NAME.safetensors in any subfolder, or a file whose
	// ss_output_name is NAME).
	LoRADir string
	// LoRAIgnoreUnknown applies the modules of a LoRA that match this model
	// and skips the rest, instead of failing on a LoRA with keys this model
	// has no module for.
	LoRAIgnoreUnknown bool
	// LoRAMode overrides how LoRAs are applied (default LoRAAuto).
	LoRAMode LoRAMode
	// TAESD is a tiny decoder (a diffusers taesd/taesdxl/taef1 folder or
	// madebyollin's taesd*_decoder.safetensors) for Request.TAESD and
	// Request.Preview. Without it a taesd folder inside the model folder
	// serves previews; nothing changes the default decoder.
	TAESD string
}

// Option sets an Option field.
type Option func(*Options)

// WithDevice selects the Vulkan device by index or name.
func WithDevice(d string) Option { return func(o *Options) { o.Device = d } }

// WithBudget caps device memory (bytes).
func WithBudget(bytes int64) Option { return func(o *Options) { o.Budget = bytes } }

// WithOffload sets the weight offload mode.
func WithOffload(m sched.Offload) Option { return func(o *Options) { o.Offload = m } }

// WithTokenizer names the tokenizer folder for single-file checkpoints.
func WithTokenizer(dir string) Option { return func(o *Options) { o.TokenizerDir = dir } }

// WithConfigDir overrides the configs inferred for a single-file checkpoint.
func WithConfigDir(dir string) Option { return func(o *Options) { o.ConfigDir = dir } }

// WithTextEncoder names the text encoder a single Z-Image transformer file
// lacks.
func WithTextEncoder(path string) Option { return func(o *Options) { o.TextEncoderPath = path } }

// WithVAE names the VAE a single Z-Image transformer file lacks.
func WithVAE(path string) Option { return func(o *Options) { o.VAEPath = path } }

// WithUNet runs the model with the denoiser of another file (a UNet
// alone, such as a quantized ComfyUI-GGUF file).
func WithUNet(path string) Option { return func(o *Options) { o.UNet = path } }

// WithWeights quantizes the weights at load time to the block type typ
// (see Options.Weights).
func WithWeights(typ string) Option { return func(o *Options) { o.Weights = typ } }

// WithProgress installs a progress callback.
func WithProgress(f func(Progress)) Option { return func(o *Options) { o.Progress = f } }

// WithBackend runs on an existing backend (tests, the reference backend).
func WithBackend(b engine.Backend) Option { return func(o *Options) { o.Backend = b } }

// WithLoRADir names the folder that <lora:NAME:MULT> prompt tags find LoRA
// files in.
func WithLoRADir(dir string) Option { return func(o *Options) { o.LoRADir = dir } }

// WithLoRAIgnoreUnknown applies the matching modules of LoRAs that also
// carry keys this model has no module for (e.g. a text-encoder part for
// another encoder), instead of failing.
func WithLoRAIgnoreUnknown(ignore bool) Option {
	return func(o *Options) { o.LoRAIgnoreUnknown = ignore }
}

// WithTAESD loads a tiny decoder for Request.TAESD and previews.
func WithTAESD(path string) Option { return func(o *Options) { o.TAESD = path } }

// WithLoRAMode sets how LoRAs are applied: merged into the weights, in the
// forward pass, or chosen per network and device (LoRAAuto, the default).
func WithLoRAMode(m LoRAMode) Option { return func(o *Options) { o.LoRAMode = m } }

// Progress is one progress event: one as each stage starts, one after
// every denoising step, and "done" at the end. Step counts the denoising
// steps finished so far (Steps at "decode"). With Request.Preview a second
// "denoise" event follows each step's but the last, with the same Step and
// Previews set.
type Progress struct {
	Stage   string // "text", "encode" (img2img), "denoise", "decode", "done"
	Image   int    // 1-based image of the batch being worked on
	Step    int    // denoising steps done
	Steps   int
	Elapsed time.Duration
	// Previews are TAESD decodes of the latents after Step, one per image
	// of the batch (Request.Preview); the receiver may keep them.
	Previews []*image.RGBA
}

// Request describes one generation. Zero fields take the model's defaults.
type Request struct {
	Prompt         string
	NegativePrompt string
	Width, Height  int // multiples of Pipeline.SizeMultiple (8; 16 for Z-Image); 0 = the model's default size
	Steps          int // 0 = model default (1 for turbo models)
	// Guidance is the classifier-free guidance scale; nil = model default
	// (0 for turbo models, 7.5 otherwise). Values <= 1 turn guidance off.
	Guidance *float64
	// Seed of the noise; torch.randn-compatible. RandomSeed picks one.
	Seed       uint64
	RandomSeed bool
	Batch      int    // images; 0 = 1
	Sampler    string // "" = the model's scheduler
	Karras     bool
	// NoiseFile replaces the seeded noise (see sched.LoadNoise).
	NoiseFile string
	// LongPrompts encodes prompts over 75 tokens in several windows.
	LongPrompts bool
	// CFGTruncation and CFGNormalization are Z-Image's guidance options
	// (ZImagePipeline's cfg_truncation and cfg_normalization): guidance
	// stops once the normalised time exceeds CFGTruncation (0 = never), and
	// CFGNormalization > 0 caps the guided prediction's norm at that many
	// times the positive one's. Stable Diffusion models ignore them.
	CFGTruncation, CFGNormalization float64
	// VAETiling: sched.TilingAuto (default), TilingOn or TilingOff; Tile is
	// the tile size in output pixels (multiple of 8), 0 = automatic.
	VAETiling sched.Tiling
	Tile      int
	// LoRAs are applied in order, before the LoRAs the prompt's
	// <lora:NAME:MULT> tags name (found in Options.LoRADir; A1111's
	// syntax, <lora:NAME:TE:UNET> for separate multipliers). The tags are
	// removed from the prompt before it is tokenized, exactly as A1111
	// removes them, and kept in the metadata's prompt; the negative prompt
	// is not searched for tags. Switching LoRAs between requests touches
	// only the adapted modules: the model is not loaded again.
	LoRAs []LoRA
	// Progress, when set, receives this request's progress events (as
	// well as the pipeline-wide WithProgress callback), on the goroutine
	// that called Generate; it must return quickly.
	Progress func(Progress)

	// InitImage, when set, makes the run img2img: the picture is encoded,
	// noised to Strength and denoised (see imageprep.go for how any
	// picture is converted). Its size is the default Width and Height,
	// rounded down to SizeMultiple; a picture of another size than the
	// request's is resampled (Lanczos) as ResizeMode says.
	InitImage image.Image
	// Strength in (0, 1] is how much of the schedule runs (A1111's
	// denoising strength): 1 keeps only the picture's composition in
	// noise, small values change little. 0 means 0.75, A1111's default.
	// Steps x Strength must reach one step.
	Strength   float64
	ResizeMode ResizeMode
	// Mask, with InitImage, makes the run inpainting: white (or, in a mask
	// with transparency, opaque) repaints, black keeps. Any size: it is
	// resampled like the picture. InvertMask swaps the two.
	Mask       image.Image
	InvertMask bool
	// MaskBlur > 0 blurs the mask (a Gaussian of that many pixels, as
	// A1111) and pastes the result over the original picture through it;
	// 0 gives diffusers' output.
	MaskBlur int
	// Fill is what the masked area starts from (A1111's inpainting_fill).
	Fill InpaintFill
	// TAESD decodes the final images with the pipeline's tiny decoder
	// (WithTAESD) instead of the VAE: a fraction of the time, softer.
	TAESD bool
	// Preview adds TAESD decodes of the latents to the progress events
	// after every step but the last (WithTAESD, or a taesd folder in the
	// model folder).
	Preview bool
}

// Result is what Generate returns.
type Result struct {
	Images []*image.RGBA
	// Seeds[i] is the seed of Images[i]'s batch (all images of one request
	// share the request's noise tensor, as diffusers does).
	Seeds       []uint64
	Parameters  Parameters
	Metadata    string // Parameters rendered for the PNG "parameters" chunk
	Stages      []sched.Stage
	PeakDevice  int64 // bytes
	PeakHostRSS int64 // bytes, the process's high-water mark
	Uploaded    int64 // weight bytes uploaded during the request
	Truncated   int   // prompt tokens dropped by the first tokenizer
	Total       time.Duration
	// LoRAs are the LoRAs applied, in order (Request.LoRAs, then the
	// prompt's tags); LoRAModes says how each network took them ("merge"
	// or "in-forward"); LoRAStats counts the merged and forward-pass
	// modules and the device bytes of the forward-pass terms (which the
	// run's budget leaves room for). Uploaded includes the weights a
	// merge uploaded or restored; the "lora" stage in Stages is the time
	// the LoRA set took to apply or switch.
	LoRAs     []AppliedLoRA
	LoRAModes map[string]string
	LoRAStats lora.Stats
}

// Pipeline is a loaded model on a device.
type Pipeline struct {
	mu      sync.Mutex
	opts    Options
	backend engine.Backend
	ownsB   bool
	models  *sched.Models       // Stable Diffusion; nil for Z-Image
	zimage  *sched.ZImageModels // Z-Image; nil for Stable Diffusion
	info    modelInfo
	closers []func() error
	lora    *loraState // nil until a request uses a LoRA
	model   ModelInfo
	// lost is set once the device is lost: every later Generate fails
	// with it at once.
	lost error
	// tiny is the TAESD for Request.TAESD and previews (nil: none);
	// encErr is why the VAE encoder could not be loaded (img2img is
	// refused then).
	tiny   *model.TAESD
	encErr error
	// Warnings are problems found while loading that did not stop it
	// (unused tensors, guessed configs).
	Warnings []string
}

// ErrDeviceLost is what a Generate error wraps once the Vulkan device is
// lost (a driver reset, a hung or removed GPU): the Pipeline cannot run
// again; Close it and Load the model again. Match it with errors.Is.
var ErrDeviceLost = vk.ErrDeviceLost

// modelInfo is what requests default to and metadata records.
type modelInfo struct {
	Name     string
	Hash     string
	Arch     string
	Turbo    bool
	BaseSize int
	Sampler  string
}

// Defaults returns the width, height, steps and guidance a Request gets
// when it leaves them zero.
func (p *Pipeline) Defaults() (width, height, steps int, guidance float64) {
	steps, guidance = 25, 7.5
	if p.info.Arch == "sdxl" {
		guidance = 5 // the SDXL pipeline's default
	}
	if p.info.Turbo {
		steps, guidance = 1, 0
	}
	if p.zimage != nil {
		steps = 9 // ZImagePipeline's example and the model card: 8 transformer calls
	}
	return p.info.BaseSize, p.info.BaseSize, steps, guidance
}

// SizeMultiple is the step image sizes come in: 8 (the VAE's factor) for
// Stable Diffusion, 16 for Z-Image (its latent is patchified 2x2).
func (p *Pipeline) SizeMultiple() int {
	if p.zimage != nil {
		return 16
	}
	return 8
}

// Arch names the detected architecture ("sd1", "sd2", "sdxl", "z-image").
func (p *Pipeline) Arch() string { return p.info.Arch }

// Turbo reports whether the model is a few-step distilled one (defaults of
// 1 step and no guidance).
func (p *Pipeline) Turbo() bool { return p.info.Turbo }

// Backend is the device the pipeline runs on.
func (p *Pipeline) Backend() engine.Backend { return p.backend }

// Generate runs one request. ctx cancels between steps and blocks.
func (p *Pipeline) Generate(ctx context.Context, req Request) (*Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.models == nil && p.zimage == nil {
		return nil, fmt.Errorf("zimage: pipeline is closed")
	}
	if p.lost != nil {
		return nil, p.lost
	}
	start := time.Now()
	w, h, steps, g := p.Defaults()
	if req.InitImage != nil {
		w, h = p.initSize(req.InitImage)
	}
	if req.Width != 0 {
		w = req.Width
	}
	if req.Height != 0 {
		h = req.Height
	}
	if req.Steps != 0 {
		steps = req.Steps
	} else if req.InitImage != nil {
		steps = Img2ImgSteps(steps, req.Strength)
	}
	if req.Guidance != nil {
		g = *req.Guidance
	}
	batch := max(req.Batch, 1)
	seed := req.Seed
	if req.RandomSeed {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("zimage: random seed: %w", err)
		}
		seed = binary.LittleEndian.Uint64(b[:]) >> 1 // keep it positive as an int64 for other tools
	}
	if req.Tile%8 != 0 || (req.Tile != 0 && req.Tile < MinTileSize) {
		return nil, fmt.Errorf("zimage: tile size %d: want a multiple of 8 pixels, at least %d (smaller tiles fall below 40 dB from the untiled decode)", req.Tile, MinTileSize)
	}
	in, err := p.prepareInit(&req, w, h)
	if err != nil {
		return nil, err
	}
	if err := p.checkTAESD(req); err != nil {
		return nil, err
	}
	prompt, uses, err := p.requestLoRAs(req)
	if err != nil {
		return nil, err
	}
	params := sched.Params{
		Prompt: prompt, NegativePrompt: req.NegativePrompt,
		Width: w, Height: h, Steps: steps, Guidance: g, Seed: seed, Batch: batch,
		Sampler: req.Sampler, Karras: req.Karras, LongPrompts: req.LongPrompts,
		Offload: p.opts.Offload, Budget: p.opts.Budget, Tiling: req.VAETiling, Tile: req.Tile / 8,
		TAESD: req.TAESD,
	}
	if in != nil {
		params.Init = in.init
	}
	if req.NoiseFile != "" {
		n, err := sched.LoadNoise(req.NoiseFile)
		if err != nil {
			return nil, err
		}
		params.Noise = n
	}
	emit := func(Progress) {}
	if f, g := p.opts.Progress, req.Progress; f != nil || g != nil {
		emit = func(e Progress) {
			e.Elapsed = time.Since(start)
			if f != nil {
				f(e)
			}
			if g != nil {
				g(e)
			}
		}
	}
	// Steps finished and due, carried by the stage events that follow (due
	// is the model calls: PNDM makes one more than steps).
	done, due := 0, steps
	params.Progress = func(step, calls int) {
		done, due = step, calls
		emit(Progress{Stage: "denoise", Step: step, Steps: calls})
	}
	params.OnStage = func(name string) { emit(Progress{Stage: name, Step: done, Steps: due}) }
	if req.Preview {
		params.Preview = func(step int, imgs []*image.RGBA) {
			emit(Progress{Stage: "denoise", Step: step, Steps: due, Previews: imgs})
		}
	}
	// The LoRAs are applied inside run: work a failed submit drops there
	// (a merge) must be undone like the run's own.
	var lst loraRun
	out, err := p.run(func() (*sched.Output, error) {
		var err error
		if lst, err = p.runLoRAs(uses, &params, params.OnStage); err != nil {
			return nil, err
		}
		if p.zimage != nil {
			return sched.RunZImage(ctx, p.backend, p.zimage, sched.ZImageParams{
				Params: params, CFGTruncation: req.CFGTruncation, CFGNormalization: req.CFGNormalization})
		}
		return sched.Run(ctx, p.backend, p.models, params)
	})
	if err != nil {
		if fb := lst.stats.ForwardBytes; fb > 0 && p.opts.Budget > 0 && ctx.Err() == nil {
			return nil, fmt.Errorf("zimage: with %s of the budget taken by the LoRAs' forward-pass terms: %w", model.FormatBytes(fb), err)
		}
		return nil, err
	}
	sampler := a1111SamplerName(out.SamplerName, req.Karras)
	pm := Parameters{
		Prompt: req.Prompt, NegativePrompt: req.NegativePrompt, Steps: steps, Sampler: sampler,
		CFGScale: g, Seed: seed, Width: w, Height: h, ModelHash: p.info.Hash, Model: p.info.Name,
		LoRAHashes: loraHashes(lst.applied), Version: "zimage " + Version,
	}
	if in != nil {
		pm.DenoisingStrength = in.init.Strength
		if req.Mask != nil {
			blur := req.MaskBlur
			pm.MaskBlur = &blur
		}
		in.finish(out.Images)
	}
	res := &Result{
		Images: out.Images, Parameters: pm, Metadata: pm.String(), Stages: append(lst.stages, out.Stages...),
		PeakDevice: max(out.PeakDev, lst.peak), PeakHostRSS: sched.PeakRSS(), Uploaded: out.Uploaded + lst.uploaded,
		Total: time.Since(start), LoRAs: lst.applied, LoRAModes: lst.modes, LoRAStats: lst.stats,
	}
	for range out.Images {
		res.Seeds = append(res.Seeds, seed)
	}
	if len(out.Truncated) > 0 {
		res.Truncated = out.Truncated[0]
	}
	emit(Progress{Stage: "done", Steps: steps, Step: steps})
	return res, nil
}

// run runs the request (run) and leaves the Pipeline ready for the
// next one whatever happened: after a lost device it fails fast from then
// on, and when the device dropped recorded work (a failed submit), weights
// kept resident are evicted, since uploads among that work never landed,
// and the LoRAs are removed, since merges and uploads of forward-pass
// terms may have been among it (the next request applies its set anew).
func (p *Pipeline) run(run func() (*sched.Output, error)) (*sched.Output, error) {
	dev, _ := p.backend.(*vk.Device)
	var abandoned int64
	if dev != nil {
		abandoned = dev.Counters().Abandoned
	}
	out, err := run()
	if err == nil {
		return out, nil
	}
	if errors.Is(err, vk.ErrDeviceLost) {
		p.lost = fmt.Errorf("zimage: the Vulkan device was lost, so this Pipeline cannot generate again: Close it and Load the model again (%w)", err)
		return nil, p.lost
	}
	if dev != nil && dev.Counters().Abandoned != abandoned {
		// The flush reports the dropped work again (err already did).
		dev.Flush()
		for _, bl := range p.allBlocks() {
			bl.Evict(p.backend)
		}
		if p.lora != nil {
			// With the weights evicted, removing merges uploads nothing.
			if cerr := p.lora.reset(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}
	return nil, err
}

// a1111SamplerName maps our sampler names to the names A1111 metadata uses.
func a1111SamplerName(name string, karras bool) string {
	n := map[string]string{
		"euler": "Euler", "euler_a": "Euler a", "pndm": "PLMS", "ddim": "DDIM",
		"lcm": "LCM", "dpmpp_2m": "DPM++ 2M", "flowmatch_euler": "Euler",
	}[strings.ToLower(name)]
	if n == "" {
		n = name
	}
	if karras {
		n += " Karras"
	}
	return n
}
