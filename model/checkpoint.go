package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/zimage/zimage/model/gguf"
	"github.com/zimage/zimage/model/safetensors"
)

// Arch is a model architecture family.
type Arch uint8

const (
	ArchUnknown Arch = iota
	SD1              // SD 1.x: CLIP ViT-L text encoder, 768-wide cross attention
	SD2              // SD 2.x and SD-Turbo: OpenCLIP ViT-H (last layer dropped), linear projections
	SDXL             // SDXL and SDXL-Turbo: CLIP ViT-L + OpenCLIP bigG, text_time conditioning
	ZImage           // Z-Image(-Turbo): S3-DiT transformer, Qwen3 text encoder, FLUX VAE, flow matching
)

func (a Arch) String() string {
	switch a {
	case SD1:
		return "SD1"
	case SD2:
		return "SD2"
	case SDXL:
		return "SDXL"
	case ZImage:
		return "z-image"
	}
	return "unknown"
}

// MarshalText writes the name, so JSON shows "SDXL" rather than a number.
func (a Arch) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// Format is the on-disk layout of a checkpoint.
type Format uint8

const (
	FormatDiffusers  Format = iota + 1 // a diffusers pipeline folder
	FormatSingleFile                   // one .safetensors file: an LDM-layout SD checkpoint, or a Z-Image transformer
	FormatGGUF                         // one GGUF file: an LDM-layout whole model (stable-diffusion.cpp's convert)
)

func (f Format) String() string {
	switch f {
	case FormatDiffusers:
		return "diffusers folder"
	case FormatSingleFile:
		return "single file"
	case FormatGGUF:
		return "GGUF file"
	}
	return "unknown"
}

// MarshalText writes the name.
func (f Format) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// OpenOptions tune OpenCheckpoint.
type OpenOptions struct {
	// TokenizerDir supplies the tokenizers a single file lacks: a diffusers
	// folder (its tokenizer/ and tokenizer_2/ are used) or one tokenizer
	// folder (vocab.json, merges.txt) used for every text encoder.
	TokenizerDir string
	// ConfigDir is a diffusers folder whose config files (model_index.json,
	// <component>/config.json, scheduler/scheduler_config.json) replace the
	// configs inferred for a single file (or read from a folder). Only the
	// files present there are used; its tokenizers are used when
	// TokenizerDir is empty.
	ConfigDir string
	// TextEncoderPath and VAEPath supply Z-Image's text encoder and VAE,
	// which a single transformer file lacks (the CLI's --text-encoder and
	// --vae), or replace a folder's own. Each is a diffusers pipeline folder
	// (its text_encoder/ or vae/ is used), a component folder (config.json
	// and weights, sharded or not), or one .safetensors file (configs
	// inferred from the tensors; the VAE in diffusers or original FLUX key
	// names). Stable Diffusion checkpoints refuse them.
	TextEncoderPath string
	VAEPath         string
	// UNet is a file holding the denoiser alone, used instead of the
	// checkpoint's own: a ComfyUI-GGUF .gguf (quantized), or a .gguf or
	// .safetensors UNet under LDM or diffusers names. The checkpoint
	// supplies everything else.
	UNet string
	// Quantize, when set, turns the weights the rules select (those a
	// conversion to GGUF would quantize: Linear and attention weights of the
	// denoiser and text encoders) into blocks of its type as they are
	// first uploaded (the CLI's --weights q8_0): the device then holds
	// them quantized. Tensors already quantized in the file stay as they
	// are.
	Quantize *QuantizeRules
}

// UNetComponent is the denoiser's config and weights (Stable Diffusion;
// zero for Z-Image).
type UNetComponent struct {
	Class  string // "UNet2DConditionModel"
	Config *UNetConfig
	Source *Source
}

// VAEComponent is the autoencoder's config and weights.
type VAEComponent struct {
	Class  string // "AutoencoderKL"
	Config *VAEConfig
	Source *Source
}

// TextEncoder is one text encoder with its tokenizer and the outputs the
// pipeline feeds the UNet.
type TextEncoder struct {
	Name   string // "text_encoder" or "text_encoder_2"
	Class  string // "CLIPTextModel" or "CLIPTextModelWithProjection"
	Config *CLIPTextConfig
	Source *Source
	// TokenizerDir holds vocab.json and merges.txt; empty when none was
	// found (RequireTokenizers reports it).
	TokenizerDir string
	// Want is what the pipeline uses: SD 1.x/2.x the final-normed last
	// hidden state; SDXL the penultimate hidden states of both encoders and
	// the second encoder's projected pooled output.
	Want CLIPWant
}

// TransformerComponent is a diffusion transformer's config and weights:
// Z-Image's S3-DiT.
type TransformerComponent struct {
	Class  string // "ZImageTransformer2DModel"
	Config *ZImageConfig
	Source *Source
}

// QwenTextEncoder is Z-Image's text encoder, a Qwen3Model, with its
// tokenizer. The pipeline feeds the transformer hidden_states[-2] (the
// output of the second-to-last layer, no final norm), so the last layer
// and the final norm are in Source but not needed (see FeatureLayers).
type QwenTextEncoder struct {
	Name   string // "text_encoder"
	Class  string // "Qwen3Model"
	Config *Qwen3Config
	Source *Source
	// TokenizerDir holds the Qwen2 tokenizer's vocab.json, merges.txt and
	// tokenizer_config.json (chat template, added tokens); empty when no
	// folder with a vocab.json was found (RequireTokenizers reports it and
	// a folder lacking the other files).
	TokenizerDir string
}

// FeatureLayers is how many decoder layers produce hidden_states[-2].
func (q *QwenTextEncoder) FeatureLayers() int { return max(q.Config.NumHiddenLayers-1, 0) }

// Checkpoint is an opened model: configs, and weights under canonical
// diffusers keys, memory-mapped and not yet read. Stable Diffusion fills
// UNet and TextEncoders; Z-Image fills Transformer and Qwen instead (UNet
// is zero, TextEncoders empty). VAE and Scheduler serve both.
type Checkpoint struct {
	Path         string
	Format       Format
	Arch         Arch
	Index        *ModelIndex
	UNet         UNetComponent
	VAE          VAEComponent
	TextEncoders []TextEncoder         // SD's CLIP encoders in pipeline order (text_encoder, text_encoder_2)
	Transformer  *TransformerComponent // Z-Image; nil otherwise
	Qwen         *QwenTextEncoder      // Z-Image; nil otherwise
	Scheduler    *SchedulerConfig
	// ForceZerosForEmptyPrompt: the unconditional embedding of an empty
	// negative prompt is zeros (SDXL's model_index.json).
	ForceZerosForEmptyPrompt bool
	// Warnings are problems that did not stop loading: unrecognised keys,
	// guessed configs, fallbacks.
	Warnings []string

	files []*safetensors.File
	ggufs []*gguf.File
}

// MissingComponentError reports a component the pipeline needs that the
// checkpoint lacks (or that lacks its config or weights).
type MissingComponentError struct {
	Path      string
	Component string
	Detail    string
}

func (e *MissingComponentError) Error() string {
	return fmt.Sprintf("model: %s: component %s: %s", e.Path, e.Component, e.Detail)
}

// OpenCheckpoint opens a diffusers pipeline folder, a single-file LDM
// .safetensors checkpoint or a GGUF file of a whole model. It maps the
// weight files and reads their headers only. Close releases the mappings.
func OpenCheckpoint(path string, opts OpenOptions) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("model: open checkpoint: %w", err)
	}
	var c *Checkpoint
	switch {
	case st.IsDir():
		c, err = openFolder(path, opts)
	case isGGUF(path):
		c, err = openGGUF(path, opts)
	default:
		c, err = openSingleFile(path, opts)
	}
	if err != nil {
		return c, err
	}
	if opts.UNet != "" {
		if err := c.useUNetFile(opts.UNet); err != nil {
			c.Close()
			return nil, err
		}
	}
	if opts.Quantize != nil {
		if _, err := c.quantizeAtLoad(opts.Quantize); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Close unmaps every weight file; the Sources' bytes become invalid.
func (c *Checkpoint) Close() error {
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	for _, f := range c.ggufs {
		errs = append(errs, f.Close())
	}
	c.files, c.ggufs = nil, nil
	return errors.Join(errs...)
}

// TokenizerFilesError reports a tokenizer folder that lacks files its
// tokenizer needs (a Qwen2 tokenizer reads vocab.json, merges.txt and
// tokenizer_config.json).
type TokenizerFilesError struct {
	Dir     string
	Missing []string
}

func (e *TokenizerFilesError) Error() string {
	return fmt.Sprintf("model: tokenizer folder %s lacks %s", e.Dir, strings.Join(e.Missing, ", "))
}

// ShardIndexError reports a sharded component whose
// *.safetensors.index.json does not match its shard files: a listed shard
// that is missing (Tensor empty; errors.Is(err, fs.ErrNotExist) holds), or
// a tensor the index maps to a shard that lacks it.
type ShardIndexError struct {
	Component string
	Index     string // the index file
	Shard     string // the shard file
	Tensor    string
}

func (e *ShardIndexError) Error() string {
	if e.Tensor == "" {
		return fmt.Sprintf("model: %s: shard %s listed in %s is missing", e.Component, e.Shard, e.Index)
	}
	return fmt.Sprintf("model: %s: the shard index %s maps %q to %s, which lacks it", e.Component, e.Index, e.Tensor, e.Shard)
}

func (e *ShardIndexError) Unwrap() error {
	if e.Tensor == "" {
		return fs.ErrNotExist
	}
	return nil
}

// qwenTokenizerFiles are what the Qwen2 tokenizer reads.
var qwenTokenizerFiles = []string{"vocab.json", "merges.txt", "tokenizer_config.json"}

// RequireTokenizers reports a text encoder without a tokenizer folder, or
// (Z-Image) a tokenizer folder without the files its tokenizer reads.
func (c *Checkpoint) RequireTokenizers() error {
	if q := c.Qwen; q != nil {
		if q.TokenizerDir == "" {
			return fmt.Errorf("model: %s: no tokenizer for %s: pass the model's diffusers folder or its tokenizer/ folder (--tokenizer)", c.Path, q.Name)
		}
		var missing []string
		for _, f := range qwenTokenizerFiles {
			if !isFile(filepath.Join(q.TokenizerDir, f)) {
				missing = append(missing, f)
			}
		}
		if len(missing) > 0 {
			return &TokenizerFilesError{Dir: q.TokenizerDir, Missing: missing}
		}
	}
	for _, te := range c.TextEncoders {
		if te.TokenizerDir == "" {
			return fmt.Errorf("model: %s: no tokenizer for %s: single-file checkpoints carry no vocabulary; "+
				"pass a tokenizer folder or a diffusers model folder of the same family (--tokenizer)", c.Path, te.Name)
		}
	}
	return nil
}

// Sources lists every component's source in pipeline order.
func (c *Checkpoint) Sources() []*Source {
	out := []*Source{}
	for _, te := range c.TextEncoders {
		out = append(out, te.Source)
	}
	if c.Qwen != nil {
		out = append(out, c.Qwen.Source)
	}
	if c.UNet.Source != nil {
		out = append(out, c.UNet.Source)
	}
	if c.Transformer != nil {
		out = append(out, c.Transformer.Source)
	}
	return append(out, c.VAE.Source)
}

func (c *Checkpoint) warnf(format string, args ...any) {
	c.Warnings = append(c.Warnings, fmt.Sprintf(format, args...))
}

// wantFor is what the pipeline of arch reads from text encoder i.
func wantFor(arch Arch, i int) CLIPWant {
	if arch != SDXL {
		return CLIPWant{LastHidden: true}
	}
	if i == 0 {
		return CLIPWant{Penultimate: true}
	}
	return CLIPWant{Penultimate: true, TextEmbeds: true}
}

// readJSON decodes a config file; errors name the file.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("model: %s: %w", path, err)
	}
	return nil
}

// overrideJSON reads ConfigDir/rel into v when that file exists.
func overrideJSON(opts OpenOptions, rel string, v any) (bool, error) {
	if opts.ConfigDir == "" {
		return false, nil
	}
	p := filepath.Join(opts.ConfigDir, rel)
	if _, err := os.Stat(p); err != nil {
		return false, nil
	}
	if err := readJSON(p, v); err != nil {
		return false, err
	}
	return true, nil
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// tokenizerDir finds encoder i's tokenizer: the checkpoint folder's own,
// then TokenizerDir, then ConfigDir. A plain tokenizer folder serves every
// encoder.
func (c *Checkpoint) tokenizerDir(own string, i int, opts OpenOptions) string {
	name := "tokenizer"
	if i > 0 {
		name = fmt.Sprintf("tokenizer_%d", i+1)
	}
	if own != "" && isFile(filepath.Join(own, name, "vocab.json")) {
		return filepath.Join(own, name)
	}
	for _, d := range []string{opts.TokenizerDir, opts.ConfigDir} {
		if d == "" {
			continue
		}
		if isFile(filepath.Join(d, name, "vocab.json")) {
			return filepath.Join(d, name)
		}
		if isFile(filepath.Join(d, "vocab.json")) {
			if i > 0 {
				c.warnf("%s uses the single tokenizer folder %s; SDXL's second tokenizer pads with \"!\", pass a diffusers folder with tokenizer_2 if outputs differ", encoderName(i), d)
			}
			return d
		}
	}
	return ""
}

func encoderName(i int) string {
	if i == 0 {
		return "text_encoder"
	}
	return fmt.Sprintf("text_encoder_%d", i+1)
}

// transpose swaps the axes of a row-major [rows, cols] matrix of size-byte
// elements.
func transpose(in []byte, rows, cols, size int) []byte {
	out := make([]byte, len(in))
	for r := range rows {
		for c := range cols {
			copy(out[(c*rows+r)*size:(c*rows+r+1)*size], in[(r*cols+c)*size:(r*cols+c+1)*size])
		}
	}
	return out
}

// shapeOf returns the shape of a source entry, or nil.
func shapeOf(src *Source, key string) []int {
	if e := src.Entry(key); e != nil {
		return e.Shape
	}
	return nil
}

// countIndexed counts n = 0, 1, ... while some key of src starts with
// fmt.Sprintf(format, n).
func countIndexed(src *Source, format string) int {
	n := 0
	for hasPrefix(src, fmt.Sprintf(format, n)) {
		n++
	}
	return n
}

func hasPrefix(src *Source, prefix string) bool {
	for k := range src.entries {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}
