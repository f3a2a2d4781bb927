// Package lora reads LoRA files (kohya / AUTOMATIC1111 and diffusers /
// PEFT safetensors), maps their keys onto the modules of a loaded model,
// and applies them: merged into resident weights on the device, or as a
// low-rank term in the forward pass for streamed weights. It also parses
// A1111's <lora:NAME:MULT> prompt tags and computes A1111's LoRA hashes.
//
// The merge is W' = W + Σ m·(alpha/rank)·up·down (float32, convolutions
// reshaped), as kohya, A1111 and diffusers define it: rank is lora_down's
// first dimension, a file without alpha has alpha = rank, and m is the
// text-encoder or the UNet multiplier depending on the module.
package lora

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/safetensors"
)

// Format says how a file names its tensors.
type Format uint8

const (
	// Kohya: "lora_unet_<path with _>.lora_down.weight", ".lora_up.weight",
	// ".alpha"; text encoders under lora_te_, lora_te1_, lora_te2_.
	Kohya Format = iota + 1
	// PEFT: "<component>.<module path>.lora_A.weight" (down) and
	// ".lora_B.weight" (up); also diffusers' older ".lora.down.weight" and
	// ".lora_linear_layer.down.weight" spellings.
	PEFT
	// Mixed: both in one file.
	Mixed
)

func (f Format) String() string {
	switch f {
	case Kohya:
		return "kohya"
	case PEFT:
		return "peft"
	case Mixed:
		return "mixed"
	}
	return "unknown"
}

// MarshalText writes the name.
func (f Format) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// Module is one adapted module as the file names it.
type Module struct {
	// Key is the name the file uses for the module: everything before
	// ".lora_down.weight" (kohya) or ".lora_A.weight" (PEFT).
	Key string
	// Component is the network: "unet", "text_encoder", "text_encoder_2"
	// (or "transformer" for PEFT files of a DiT).
	Component string
	// Name is the module's name within the component: the kohya name after
	// its prefix ("down_blocks_0_attentions_0_proj_in") or the PEFT path
	// ("down_blocks.0.attentions.0.proj_in").
	Name     string
	Format   Format
	Down, Up *safetensors.Tensor
	// Alpha is the file's alpha; HasAlpha is false when the file has none
	// (then alpha = rank and the scale is 1).
	Alpha    float64
	HasAlpha bool
	// RSLoRA: the scale is alpha / sqrt(rank) (PEFT's use_rslora).
	RSLoRA bool
}

// Rank is lora_down's first dimension.
func (m *Module) Rank() int { return m.Down.Shape[0] }

// Scale is alpha / rank (1 without alpha; alpha / sqrt(rank) for
// rank-stabilized LoRA).
func (m *Module) Scale() float64 {
	switch {
	case !m.HasAlpha:
		return 1
	case m.RSLoRA:
		return m.Alpha / math.Sqrt(float64(m.Rank()))
	}
	return m.Alpha / float64(m.Rank())
}

// Kind is "linear" (2-D tensors), or "conv1x1" / "conv3x3" / "convKxK"
// from lora_down's kernel.
func (m *Module) Kind() string {
	if len(m.Down.Shape) == 2 {
		return "linear"
	}
	return fmt.Sprintf("conv%dx%d", m.Down.Shape[2], m.Down.Shape[3])
}

// File is an open LoRA file. Tensor data stay memory-mapped until Close.
type File struct {
	Path string
	// Name is the file name without its extension: what A1111's
	// <lora:NAME:...> tags refer to.
	Name     string
	Format   Format
	Metadata map[string]string
	Modules  []*Module // sorted by Key
	// Unknown lists the tensors that are not part of any LoRA module the
	// reader knows; resolving against a model fails on them unless told to
	// ignore them.
	Unknown []string
	st      *safetensors.File
}

// Close unmaps the file.
func (f *File) Close() error {
	if f == nil || f.st == nil {
		return nil
	}
	err := f.st.Close()
	f.st = nil
	return err
}

// PickleError refuses a PyTorch pickle (.pt, .ckpt, .bin, ...): loading
// one can run arbitrary code.
type PickleError struct{ Path string }

func (e *PickleError) Error() string {
	return fmt.Sprintf("lora: %s: PyTorch pickle files are not supported (loading one can run arbitrary code); use a .safetensors LoRA or convert it", e.Path)
}

// NotLoRAError reports a safetensors file without any LoRA module.
type NotLoRAError struct {
	Path   string
	Sample []string // a few of its keys
}

func (e *NotLoRAError) Error() string {
	return fmt.Sprintf("lora: %s: not a LoRA file: no lora_down/lora_up (kohya) or lora_A/lora_B (PEFT) tensors (keys such as %s)",
		e.Path, strings.Join(e.Sample, ", "))
}

// MissingPartError reports a module with only one half of its pair.
type MissingPartError struct {
	Path    string
	Module  string // the file's module key
	Missing string // "lora_up", "lora_down"
}

func (e *MissingPartError) Error() string {
	have := "lora_down"
	if e.Missing == "lora_down" {
		have = "lora_up"
	}
	return fmt.Sprintf("lora: %s: module %q has a %s but no %s tensor", e.Path, e.Module, have, e.Missing)
}

// ShapeError reports a LoRA tensor whose shape does not fit: the pair
// disagrees on the rank, a dimension count is wrong, or (when resolving)
// the module of the model has other sizes.
type ShapeError struct {
	Path   string
	Tensor string
	Module string // the model's module, when resolving
	Got    []int
	Want   string
}

func (e *ShapeError) Error() string {
	if e.Module != "" {
		return fmt.Sprintf("lora: %s: %q has shape %v, which does not fit the model's %s (want %s): a LoRA for another model?", e.Path, e.Tensor, e.Got, e.Module, e.Want)
	}
	return fmt.Sprintf("lora: %s: %q has shape %v, want %s", e.Path, e.Tensor, e.Got, e.Want)
}

// UnsupportedError reports tensors of a LoRA variant this reader does not
// implement (LyCORIS LoHa/LoKr, DoRA, Tucker-decomposed convs, full diffs).
type UnsupportedError struct {
	Path, Tensor, Kind string
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("lora: %s: %q is a %s tensor, which is not supported (plain LoRA and LoCon only)", e.Path, e.Tensor, e.Kind)
}

// pickleExts are extensions of PyTorch's pickle-based formats.
var pickleExts = map[string]bool{".pt": true, ".pth": true, ".ckpt": true, ".bin": true, ".pkl": true, ".pickle": true}

// Open reads a LoRA file: its keys are grouped into modules, each checked
// for both halves, consistent shapes, supported dtypes and finite values
// (which reads every tensor once; LoRA files are small).
func Open(path string) (_ *File, err error) {
	if pickleExts[strings.ToLower(filepath.Ext(path))] {
		return nil, &PickleError{Path: path}
	}
	st, err := safetensors.Open(path)
	if err != nil {
		if isPickle(path) {
			return nil, &PickleError{Path: path}
		}
		return nil, fmt.Errorf("lora: %w", err)
	}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	f := &File{Path: path, Name: strings.TrimSuffix(filepath.Base(path), filepath.Ext(path)), Metadata: st.Metadata, st: st}
	if err := f.group(); err != nil {
		return nil, err
	}
	if err := f.peftConfig(); err != nil {
		return nil, err
	}
	if len(f.Modules) == 0 {
		names := st.Names()
		return nil, &NotLoRAError{Path: path, Sample: names[:min(len(names), 3)]}
	}
	for _, m := range f.Modules {
		if err := f.check(m); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// isPickle looks at the first bytes of a file that is not safetensors: a
// zip archive (torch.save since 1.6) or a raw pickle stream (protocol 2+
// starts with 0x80). A safetensors header length can start with the same
// bytes, so this is only asked after the file failed to parse.
func isPickle(path string) bool {
	fh, err := os.Open(path)
	if err != nil {
		return false
	}
	defer fh.Close()
	head := make([]byte, 4)
	n, _ := fh.Read(head)
	head = head[:n]
	return bytes.HasPrefix(head, []byte("PK\x03\x04")) || (n >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5)
}

// kohyaPrefixes are the component prefixes of kohya keys, longest first
// so that lora_te1_ is not read as lora_te_.
var kohyaPrefixes = []struct{ prefix, component string }{
	{"lora_unet_", "unet"},
	{"lora_transformer_", "transformer"},
	{"lora_te1_", "text_encoder"},
	{"lora_te2_", "text_encoder_2"},
	{"lora_te_", "text_encoder"},
}

// peftComponents are the first path element of PEFT keys.
var peftComponents = map[string]bool{"unet": true, "text_encoder": true, "text_encoder_2": true, "transformer": true}

// part is which tensor of a module a key holds.
type part uint8

const (
	partDown part = iota + 1
	partUp
	partAlpha
)

// suffixes maps the ends of keys to parts. PEFT's adapter-named variant
// ("lora_A.default.weight") comes from peft's own save without a name
// filter.
var suffixes = []struct {
	s      string
	p      part
	format Format
}{
	{".lora_down.weight", partDown, Kohya},
	{".lora_up.weight", partUp, Kohya},
	{".lora_A.weight", partDown, PEFT},
	{".lora_B.weight", partUp, PEFT},
	{".lora_A.default.weight", partDown, PEFT},
	{".lora_B.default.weight", partUp, PEFT},
	{".lora.down.weight", partDown, PEFT},
	{".lora.up.weight", partUp, PEFT},
	{".lora_linear_layer.down.weight", partDown, PEFT},
	{".lora_linear_layer.up.weight", partUp, PEFT},
	{".alpha", partAlpha, 0},
}

// unsupportedParts are tensor names of LoRA variants we refuse by name.
var unsupportedParts = []struct{ s, kind string }{
	{".hada_", "LyCORIS LoHa"},
	{".lokr_", "LyCORIS LoKr"},
	{".lora_mid.", "LyCORIS LoCon Tucker (lora_mid)"},
	{".dora_scale", "DoRA"},
	{".lora_magnitude_vector", "DoRA"},
	{".oft_", "OFT"},
	{".lora_B.bias", "LoRA bias"},
	{".diff", "full weight difference"},
	{".w_norm", "norm-layer LyCORIS"},
	{".b_norm", "norm-layer LyCORIS"},
}

// group sorts the tensors into modules.
func (f *File) group() error {
	byKey := map[string]*Module{}
	formats := map[Format]bool{}
	for _, t := range f.st.Tensors() {
		name := t.Name
		var sp part
		var format Format
		var key string
		for _, s := range suffixes {
			if k, ok := strings.CutSuffix(name, s.s); ok && k != "" {
				sp, format, key = s.p, s.format, k
				break
			}
		}
		if sp == 0 {
			for _, u := range unsupportedParts {
				if strings.Contains(name, u.s) && (isKohya(name) || peftComponents[firstElem(name)]) {
					return &UnsupportedError{Path: f.Path, Tensor: name, Kind: u.kind}
				}
			}
			f.Unknown = append(f.Unknown, name)
			continue
		}
		m := byKey[key]
		if m == nil {
			m = &Module{Key: key}
			byKey[key] = m
		}
		switch sp {
		case partDown:
			m.Down, m.Format = t, format
		case partUp:
			m.Up, m.Format = t, format
		case partAlpha:
			v, err := scalar(f.Path, t)
			if err != nil {
				return err
			}
			m.Alpha, m.HasAlpha = v, true
		}
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		m := byKey[k]
		switch {
		case m.Down == nil && m.Up == nil:
			// An alpha alone: part of no module we read.
			f.Unknown = append(f.Unknown, k+".alpha")
			continue
		case m.Down == nil:
			return &MissingPartError{Path: f.Path, Module: k, Missing: "lora_down"}
		case m.Up == nil:
			return &MissingPartError{Path: f.Path, Module: k, Missing: "lora_up"}
		}
		// The naming decides the format: some trainers write kohya names
		// with PEFT's lora_A/lora_B.
		m.Component, m.Name = "", k
		if isKohya(k) {
			m.Format = Kohya
			for _, p := range kohyaPrefixes {
				if rest, ok := strings.CutPrefix(k, p.prefix); ok {
					m.Component, m.Name = p.component, rest
					break
				}
			}
		} else if c := firstElem(k); peftComponents[c] {
			m.Format, m.Component, m.Name = PEFT, c, k[len(c)+1:]
		}
		formats[m.Format] = true
		f.Modules = append(f.Modules, m)
	}
	switch {
	case formats[Kohya] && formats[PEFT]:
		f.Format = Mixed
	case formats[Kohya]:
		f.Format = Kohya
	case formats[PEFT]:
		f.Format = PEFT
	}
	sort.Strings(f.Unknown)
	return nil
}

func isKohya(key string) bool { return strings.HasPrefix(key, "lora_") }

func firstElem(key string) string {
	if i := strings.IndexByte(key, '.'); i > 0 {
		return key[:i]
	}
	return key
}

// scalar reads an alpha: a 0-dim (or one-element) float tensor.
func scalar(path string, t *safetensors.Tensor) (float64, error) {
	if t.NumElem() != 1 {
		return 0, &ShapeError{Path: path, Tensor: t.Name, Got: t.Shape, Want: "a scalar"}
	}
	v, err := floats(path, t)
	if err != nil {
		return 0, err
	}
	return float64(v[0]), nil
}

// floats decodes a tensor to float32, refusing non-float dtypes and
// non-finite values.
func floats(path string, t *safetensors.Tensor) ([]float32, error) {
	switch t.DType {
	case safetensors.F16, safetensors.BF16, safetensors.F32, safetensors.F64:
	default:
		return nil, fmt.Errorf("lora: %s: %q has dtype %s, want F16, BF16, F32 or F64", path, t.Name, t.DType)
	}
	v, err := safetensors.Float32s(t)
	if err != nil {
		return nil, fmt.Errorf("lora: %s: %w", path, err)
	}
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return nil, &model.NonFiniteError{Key: t.Name, File: path, Index: i}
		}
	}
	return v, nil
}

// check validates one module's shapes and values.
func (f *File) check(m *Module) error {
	d, u := m.Down, m.Up
	switch {
	case len(d.Shape) != 2 && len(d.Shape) != 4:
		return &ShapeError{Path: f.Path, Tensor: d.Name, Got: d.Shape, Want: "[rank, in] or [rank, in, kh, kw]"}
	case len(u.Shape) != 2 && !(len(u.Shape) == 4 && u.Shape[2] == 1 && u.Shape[3] == 1):
		return &ShapeError{Path: f.Path, Tensor: u.Name, Got: u.Shape, Want: "[out, rank] or [out, rank, 1, 1]"}
	case d.Shape[0] == 0 || u.Shape[1] != d.Shape[0]:
		return &ShapeError{Path: f.Path, Tensor: u.Name, Got: u.Shape, Want: fmt.Sprintf("[out, %d] (the rank of %s)", d.Shape[0], d.Name)}
	}
	for _, t := range []*safetensors.Tensor{d, u} {
		for _, n := range t.Shape {
			if n <= 0 {
				return &ShapeError{Path: f.Path, Tensor: t.Name, Got: t.Shape, Want: "positive dimensions"}
			}
		}
		if _, err := floats(f.Path, t); err != nil {
			return err
		}
	}
	if m.HasAlpha && (math.IsNaN(m.Alpha) || math.IsInf(m.Alpha, 0)) {
		return &model.NonFiniteError{Key: m.Key + ".alpha", File: f.Path}
	}
	return nil
}

// downUp decodes a module's tensors as float32 matrices: down [rank,
// in*kh*kw], up [out, rank].
func (f *File) downUp(m *Module) (down, up []float32, err error) {
	if f.st == nil {
		return nil, nil, fmt.Errorf("lora: %s is closed", f.Path)
	}
	if down, err = floats(f.Path, m.Down); err != nil {
		return nil, nil, err
	}
	up, err = floats(f.Path, m.Up)
	return down, up, err
}

// peftConfig applies diffusers' lora_adapter_metadata: the LoraConfig of
// each component as JSON, keys prefixed "<component>." (lora_alpha,
// alpha_pattern, use_rslora), which recent diffusers and peft write instead
// of alpha tensors. PEFT picks a module's alpha from the first
// alpha_pattern key (in the file's sorted order) that matches the end of
// its name as a regular expression, else lora_alpha.
func (f *File) peftConfig() error {
	raw := f.Metadata["lora_adapter_metadata"]
	if raw == "" {
		return nil
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		return fmt.Errorf("lora: %s: metadata lora_adapter_metadata is not a JSON object: %w", f.Path, err)
	}
	get := func(component, key string, v any) bool {
		r, ok := cfg[component+"."+key]
		return ok && json.Unmarshal(r, v) == nil
	}
	for _, m := range f.Modules {
		if m.Format != PEFT || m.HasAlpha || m.Component == "" {
			continue
		}
		var alpha float64
		if !get(m.Component, "lora_alpha", &alpha) {
			continue
		}
		var patterns map[string]float64
		if get(m.Component, "alpha_pattern", &patterns) {
			keys := make([]string, 0, len(patterns))
			for k := range patterns {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				re, err := regexp.Compile(`^(.*\.)?(` + k + `)$`)
				if err != nil {
					return fmt.Errorf("lora: %s: alpha_pattern %q: %w", f.Path, k, err)
				}
				if re.MatchString(m.Name) {
					alpha = patterns[k]
					break
				}
			}
		}
		var rs bool
		get(m.Component, "use_rslora", &rs)
		if math.IsNaN(alpha) || math.IsInf(alpha, 0) {
			return &model.NonFiniteError{Key: m.Key + " lora_alpha", File: f.Path}
		}
		m.Alpha, m.HasAlpha, m.RSLoRA = alpha, true, rs
	}
	return nil
}
