package zimage

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/lora"
	"github.com/zimage/zimage/sched"
)

// LoRA is one LoRA file (kohya / AUTOMATIC1111 or diffusers / PEFT
// .safetensors) applied to a request.
type LoRA struct {
	Path string
	// Multiplier scales the LoRA's effect, as A1111's <lora:NAME:M>: 1 as
	// trained, 0 adds nothing, negative values push away from it. It is
	// used as given: the zero value applies nothing.
	Multiplier float64
	// TE and UNet, when set, replace Multiplier for the text encoders and
	// for the denoiser (A1111's <lora:NAME:TE:UNET>).
	TE, UNet *float64
}

// LoRAMode says how a Pipeline applies LoRAs (see Pipeline.loraModes for
// the automatic choice and the numbers behind it).
type LoRAMode uint8

const (
	// LoRAAuto merges into resident weights on GPUs, and on CPU devices
	// where merging costs the request less than the forward-pass terms;
	// streamed and quantized weights take the terms in the forward pass.
	LoRAAuto LoRAMode = iota
	// LoRAMerge merges wherever the weights stay resident (streamed and
	// quantized networks still take the terms in the forward pass).
	LoRAMerge
	// LoRAInForward never merges.
	LoRAInForward
)

func (m LoRAMode) String() string {
	switch m {
	case LoRAMerge:
		return "merge"
	case LoRAInForward:
		return "forward"
	}
	return "auto"
}

// ParseLoRAMode reads "auto", "merge" or "forward".
func ParseLoRAMode(s string) (LoRAMode, error) {
	switch s {
	case "", "auto":
		return LoRAAuto, nil
	case "merge":
		return LoRAMerge, nil
	case "forward", "in-forward":
		return LoRAInForward, nil
	}
	return 0, fmt.Errorf("zimage: LoRA mode %q: want auto, merge or forward", s)
}

// AppliedLoRA is a LoRA as a request applied it.
type AppliedLoRA struct {
	// Name is the name the prompt's tag used, or the file name without
	// extension for Request.LoRAs; the PNG's "Lora hashes" uses it.
	Name string  `json:"name"`
	Path string  `json:"path"`
	TE   float64 `json:"te"`
	UNet float64 `json:"unet"`
	// Hash is A1111's short hash of the file (12 hex digits).
	Hash string `json:"hash"`
}

// LoRAError reports a LoRA file that cannot be applied to this model: not
// a LoRA, a pickle, a LoRA for another architecture, bad shapes or values.
// Err is model/lora's typed error (*lora.PickleError,
// *lora.UnknownModuleError, *lora.ShapeError, ...).
type LoRAError struct {
	Name string // as the request named it
	Path string
	Err  error
}

func (e *LoRAError) Error() string { return fmt.Sprintf("zimage: LoRA %q: %v", e.Name, e.Err) }
func (e *LoRAError) Unwrap() error { return e.Err }

// loraState is a Pipeline's LoRA machinery: one Applier over its networks,
// the files it has opened (by absolute path, until Close), and the LoRA
// folder that prompt tags name files in.
type loraState struct {
	target  *lora.Target
	applier *lora.Applier
	files   map[string]*loraFile
	stale   []*lora.File // replaced on disk, closed after the next Apply
	dir     *lora.Dir
	applied bool // a non-empty set is applied
}

type loraFile struct {
	f    *lora.File
	hash string // A1111's short hash
	mod  time.Time
	size int64
}

// loraUse is one LoRA a request asks for.
type loraUse struct {
	name, path string
	te, unet   float64
}

// requestLoRAs lists the LoRAs of req (Request.LoRAs, then the prompt's
// tags in order, found in the LoRA folder) and returns the prompt without
// its extra-network tags, as A1111 strips them before tokenizing.
func (p *Pipeline) requestLoRAs(req Request) (string, []loraUse, error) {
	stripped, tags, _, err := lora.ParsePrompt(req.Prompt)
	if err != nil {
		return "", nil, err
	}
	var uses []loraUse
	for i, l := range req.LoRAs {
		if l.Path == "" {
			return "", nil, fmt.Errorf("zimage: Request.LoRAs[%d]: no path", i)
		}
		te, unet := l.Multiplier, l.Multiplier
		if l.TE != nil {
			te = *l.TE
		}
		if l.UNet != nil {
			unet = *l.UNet
		}
		if bad(te) || bad(unet) {
			return "", nil, fmt.Errorf("zimage: LoRA %s: multipliers %v / %v: want finite numbers", l.Path, te, unet)
		}
		name := strings.TrimSuffix(filepath.Base(l.Path), filepath.Ext(l.Path))
		uses = append(uses, loraUse{name: name, path: l.Path, te: te, unet: unet})
	}
	for _, t := range tags {
		path, err := p.findLoRA(t.Name)
		if err != nil {
			return "", nil, err
		}
		uses = append(uses, loraUse{name: t.Name, path: path, te: t.TE, unet: t.UNet})
	}
	return stripped, uses, nil
}

func bad(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }

// findLoRA looks a tag's name up in the LoRA folder, listing the folder
// again on a miss (files added since are found without a restart).
func (p *Pipeline) findLoRA(name string) (string, error) {
	if p.opts.LoRADir == "" {
		return "", &lora.UnknownLoRAError{Name: name}
	}
	s := p.loraState()
	if s.dir != nil {
		if path, err := s.dir.Find(name); err == nil {
			return path, nil
		}
	}
	d, err := lora.OpenDir(p.opts.LoRADir)
	if err != nil {
		return "", fmt.Errorf("zimage: %w", err)
	}
	s.dir = d
	return d.Find(name)
}

func (p *Pipeline) loraState() *loraState {
	if p.lora == nil {
		var t *lora.Target
		if z := p.zimage; z != nil {
			t = lora.ZImageTarget(z.Transformer)
		} else {
			var encs []*model.CLIPText
			for _, e := range p.models.Encoders {
				encs = append(encs, e.Net)
			}
			t = lora.SDTarget(p.models.UNet, encs...)
		}
		p.lora = &loraState{target: t, files: map[string]*loraFile{},
			applier: lora.NewApplier(p.backend, t, lora.Options{IgnoreUnknown: p.opts.LoRAIgnoreUnknown})}
	}
	return p.lora
}

// open returns the file at path, opened once and kept until the Pipeline
// closes; a file changed on disk since (size or time) is opened again.
func (s *loraState) open(path string) (*loraFile, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, err
	}
	if lf := s.files[abs]; lf != nil {
		if lf.mod.Equal(st.ModTime()) && lf.size == st.Size() {
			return lf, nil
		}
		s.stale = append(s.stale, lf.f)
		delete(s.files, abs)
	}
	f, err := lora.Open(path)
	if err != nil {
		return nil, err
	}
	h, err := f.Hash()
	if err != nil {
		f.Close()
		return nil, err
	}
	lf := &loraFile{f: f, hash: lora.ShortHash(h), mod: st.ModTime(), size: st.Size()}
	s.files[abs] = lf
	return lf, nil
}

// applyLoRAs makes uses the applied set, each network in the mode
// loraModes picks for the request, and reports them.
func (p *Pipeline) applyLoRAs(uses []loraUse, params *sched.Params) ([]AppliedLoRA, lora.Modes, error) {
	s := p.loraState()
	defer s.closeStale()
	specs := make([]lora.Spec, 0, len(uses))
	out := make([]AppliedLoRA, 0, len(uses))
	for _, u := range uses {
		lf, err := s.open(u.path)
		if err == nil {
			// Map it onto the model first, so that a LoRA for another
			// model is reported by its name, with the applied set intact.
			_, err = s.applier.Resolve(lf.f)
		}
		if err != nil {
			return nil, lora.Modes{}, &LoRAError{Name: u.name, Path: u.path, Err: err}
		}
		specs = append(specs, lora.Spec{File: lf.f, TE: u.te, UNet: u.unet})
		out = append(out, AppliedLoRA{Name: u.name, Path: u.path, TE: u.te, UNet: u.unet, Hash: lf.hash})
	}
	modes := p.loraModes(s, specs, params)
	err := s.applier.Apply(specs, modes)
	s.applied = err == nil && len(specs) > 0
	if err != nil {
		return nil, modes, fmt.Errorf("zimage: applying LoRAs: %w", err)
	}
	return out, modes, nil
}

// closeStale closes files replaced on disk once nothing uses them.
func (s *loraState) closeStale() {
	for _, f := range s.stale {
		s.applier.Forget(f)
		f.Close()
	}
	s.stale = nil
}

// reset removes every LoRA after recorded work was dropped: nothing
// applied may be taken as done. Call it after the weights were evicted.
func (s *loraState) reset() error {
	s.applied = false
	return s.applier.Clear()
}

// close removes every LoRA term and closes the files. Call it after the
// weights were evicted: merged weights then need no restoring upload.
func (s *loraState) close() error {
	errs := []error{s.applier.Close()}
	s.closeStale()
	for _, lf := range s.files {
		errs = append(errs, lf.f.Close())
	}
	s.files = nil
	return errors.Join(errs...)
}

// mergeCostMACs is what one weight element of a merge costs on a CPU
// device, in multiply-adds of forward-pass terms. Measured on lavapipe
// (BenchmarkLoRASwitch: full-size SD-Turbo at 128x128 with a rank-32 LoRA
// on its 128 attention projections, CPU seconds, which compare on a busy
// machine): merging took 3.35 CPU-s for 1.0e8 weight elements (33 ns
// each), the terms 0.29 CPU-s per UNet call for 4.3e8 multiply-adds (0.67
// ns each). The same constants predict SDXL-Turbo's 560 attention modules
// (model/lora BenchmarkSDXLTurboAttentionLoRA): a 32 s merge against 0.63
// s per UNet call at a 16x16 latent, where that benchmark measured 46-115 s
// and 0.7-1.0 s of wall time on the busy machine.
const mergeCostMACs = 50

// loraModes chooses, per network, how it takes its LoRA terms:
//
//   - In the forward pass wherever the weights do not stay resident for
//     the whole run: streamed blocks (offload layer, or auto under a
//     budget) are uploaded again from the checkpoint, which would silently
//     drop a merge. Likewise for quantized (GGUF) weights, which quantized
//     kernels will keep in blocks on the device.
//   - Else merged on GPUs: merging is a few bandwidth-bound passes over the
//     adapted weights (1.9 GB for a rank-32 LoRA on all of SDXL's
//     attention projections: milliseconds at a GPU's hundreds of GB/s), and
//     then every step runs at the base model's speed.
//   - Else, on CPU devices (lavapipe, the reference backend), whichever
//     costs this request less: a merge costs mergeCostMACs per adapted
//     weight element, the terms cost rank·(in+out) multiply-adds per
//     token of every denoiser call. Small images and few steps take the
//     forward pass (SD-Turbo, all attention at rank 32: 1 step at 128² adds
//     0.3 CPU-s where a merge costs 3.4), large ones merge (at 512² one
//     step of terms already costs more than the merge; SDXL-Turbo merges
//     from 4 steps at 512², 1 at 1024²). Text encoders run once per
//     request and always take the forward pass on CPUs. The choice
//     depends on the request and the set only, not on what was applied
//     before, so a request gives the same pixels whatever ran before it.
//
// WithLoRAMode(LoRAMerge) or (LoRAInForward) overrides the cost rule.
func (p *Pipeline) loraModes(s *loraState, specs []lora.Spec, params *sched.Params) lora.Modes {
	o := p.opts
	resident := o.Offload == sched.OffloadNone || (o.Offload == sched.OffloadAuto && o.Budget == 0)
	cpu := p.cpuDevice()
	ms := lora.Modes{Default: lora.InForward, Components: map[string]lora.Mode{}}
	for _, n := range s.target.Networks() {
		m := lora.InForward
		text := strings.HasPrefix(n.Component, "text_encoder")
		switch {
		case !resident || quantized(n.Modules) || o.LoRAMode == LoRAInForward:
		case o.LoRAMode == LoRAMerge || !cpu:
			m = lora.Merge
		case !text:
			fwd, merge := s.work(specs, n.Component, p.tokens(params))
			if fwd >= mergeCostMACs*merge {
				m = lora.Merge
			}
		}
		ms.Components[n.Component] = m
	}
	return ms
}

// tokens returns the denoiser's tokens per request at a module path, all
// calls together: latent pixels at the module's resolution level (halved
// per UNet level) times images per call times calls.
func (p *Pipeline) tokens(params *sched.Params) func(path string) float64 {
	calls := float64(params.Steps * max(params.Batch, 1))
	if params.Guidance > 1 {
		calls *= 2
	}
	px := float64(params.Width/8) * float64(params.Height/8)
	if p.zimage != nil {
		return func(string) float64 { return calls * px / 4 } // 2x2 patches
	}
	levels := len(p.models.UNet.Config.BlockOutChannels)
	return func(path string) float64 {
		level := 0
		block, rest, _ := strings.Cut(path, ".")
		idx, _, _ := strings.Cut(rest, ".")
		i, _ := strconv.Atoi(idx)
		switch block {
		case "down_blocks":
			level = i
		case "up_blocks":
			level = levels - 1 - i
		case "mid_block":
			level = levels - 1
		}
		return calls * px / float64(int64(1)<<(2*level))
	}
}

// work sums, over the modules of one network that specs adapt, the
// multiply-adds their forward-pass terms add to a request and the weight
// elements a merge passes over.
func (s *loraState) work(specs []lora.Spec, component string, tokens func(string) float64) (fwd, merge float64) {
	seen := map[string]bool{}
	for _, sp := range specs {
		r, err := s.applier.Resolve(sp.File) // cached; applyLoRAs resolved it
		if err != nil || sp.UNet == 0 {
			continue
		}
		for _, bd := range r.Bindings {
			if bd.Component != component {
				continue
			}
			k := max(bd.Module.Kernel(), 1)
			in, out := float64(bd.Module.In()*k*k), float64(bd.Module.Out())
			fwd += float64(bd.Src.Rank()) * (in + out) * tokens(bd.Module.Path)
			if !seen[bd.Module.Path] {
				seen[bd.Module.Path] = true
				merge += in * out
			}
		}
	}
	return fwd, merge
}

// cpuDevice reports whether the networks run on the CPU: a Vulkan CPU
// device (lavapipe) or a backend that is not Vulkan (the reference one).
func (p *Pipeline) cpuDevice() bool {
	t := p.Device().Type
	return t == "cpu" || t == ""
}

func quantized(mods []model.Module) bool {
	for _, m := range mods {
		if m.Weight().Quantized() {
			return true
		}
	}
	return false
}

// residentBytes sums the weights resident on the device, to count what a
// merge uploads.
func (p *Pipeline) residentBytes() int64 {
	var n int64
	for _, bl := range p.allBlocks() {
		for _, pr := range bl.Params {
			if pr.ResidentOn(p.backend) {
				n += pr.Bytes()
			}
		}
	}
	return n
}

// loraHashes is A1111's "Lora hashes" value: one entry per name (a name
// given twice keeps its first place, as A1111's dict does).
func loraHashes(applied []AppliedLoRA) string {
	var items []lora.Named
	seen := map[string]bool{}
	clean := strings.NewReplacer(":", "", ",", "")
	for _, a := range applied {
		if k := clean.Replace(a.Name); seen[k] {
			continue
		} else {
			seen[k] = true
		}
		items = append(items, lora.Named{Name: a.Name, ShortHash: a.Hash})
	}
	return lora.HashesInfotext(items)
}

// loraModeNames reports the mode each network got, for Result.
func loraModeNames(ms lora.Modes) map[string]string {
	out := map[string]string{}
	for c, m := range ms.Components {
		out[c] = m.String()
	}
	return out
}

// loraRun is what applying a request's LoRAs did.
type loraRun struct {
	applied  []AppliedLoRA
	modes    map[string]string
	stats    lora.Stats
	stages   []sched.Stage // "lora", when a set was applied or removed
	uploaded int64         // weight bytes a merge uploaded or restored
	peak     int64
}

// runLoRAs applies uses before the run, as its own "lora" stage, and
// leaves the run's budget the room the forward-pass terms do not take.
func (p *Pipeline) runLoRAs(uses []loraUse, params *sched.Params, onStage func(string)) (loraRun, error) {
	var r loraRun
	if len(uses) == 0 && (p.lora == nil || !p.lora.applied) {
		return r, nil
	}
	onStage("lora")
	t0 := time.Now()
	b := p.backend
	b.ResetPeak()
	s := p.loraState()
	before, restored := p.residentBytes(), s.applier.Stats().Restored
	applied, modes, err := p.applyLoRAs(uses, params)
	if err != nil {
		return r, err
	}
	if err := b.Flush(); err != nil {
		return r, err
	}
	r.applied, r.stats = applied, s.applier.Stats()
	if len(applied) > 0 {
		r.modes = loraModeNames(modes)
	}
	r.uploaded = max(0, p.residentBytes()-before) + r.stats.Restored - restored
	r.peak = b.MemStats().Peak
	r.stages = []sched.Stage{{Name: "lora", Duration: time.Since(t0), PeakDev: r.peak}}
	if fb := r.stats.ForwardBytes; params.Budget > 0 && fb > 0 {
		if fb >= params.Budget {
			return r, fmt.Errorf("zimage: the LoRAs' forward-pass terms need %s of device memory, the whole %s budget",
				model.FormatBytes(fb), model.FormatBytes(params.Budget))
		}
		// The terms stay on the device through the run: the weights and
		// activations get the rest.
		params.Budget -= fb
	}
	return r, nil
}
