package lora

import (
	"errors"
	"fmt"
	"strings"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/safetensors"
)

// Mode says how a network gets its LoRA terms.
//
// Measured on lavapipe (BenchmarkSDXLTurboAttentionLoRA: SDXL-Turbo, rank
// 32 on all 560 attention projections): merging costs 46-115 s (three
// memory-bound passes over 1.9 GB of weights per merge, slow on a CPU
// device; a GPU does them in well under a second) and nothing per step;
// the forward-pass terms cost about a second to attach and +6-15% per UNet
// call at a 16x16 latent. On CPU devices with turbo step counts, or when
// the LoRA set changes between requests, InForward is cheaper; Merge pays
// off for a set kept over many steps on a GPU. Streamed (and quantized)
// weights always need InForward.
type Mode uint8

const (
	// Merge adds the terms into the resident weights on the device
	// (W' = W + Σ m·s·up·down, float32 math, stored in the weight's
	// dtype). Runs then cost nothing extra. Only for weights that stay
	// resident: a merged weight that is evicted and uploaded again is the
	// base weight (Apply notices and merges again).
	Merge Mode = iota
	// InForward keeps the weights as they are and adds m·s·up(down(x)) in
	// the forward pass (model.LowRank): for streamed and quantized weights.
	InForward
)

func (m Mode) String() string {
	if m == InForward {
		return "in-forward"
	}
	return "merge"
}

// Modes chooses the Mode per component ("unet", "text_encoder", ...).
type Modes struct {
	Default    Mode
	Components map[string]Mode // overrides Default
}

func (ms Modes) of(component string) Mode {
	if m, ok := ms.Components[component]; ok {
		return m
	}
	return ms.Default
}

// Spec is one LoRA to apply.
type Spec struct {
	File *File
	// TE multiplies the text-encoder modules, UNet every other module
	// (A1111's <lora:NAME:TE:UNET>; <lora:NAME:M> sets both).
	TE, UNet float64
}

// Options are the Applier's settings.
type Options struct {
	// IgnoreUnknown skips keys that match no module instead of failing.
	IgnoreUnknown bool
}

// Stats describes what an Applier holds.
type Stats struct {
	Merged    int // modules with merged weights
	InForward int // modules with a forward-pass term
	// ForwardBytes is the device memory of the forward-pass terms.
	ForwardBytes int64
	// Restored counts the bytes of base weights uploaded again to undo
	// merges, over the Applier's life.
	Restored int64
}

// Applier applies a set of LoRAs to the networks of a Target on one
// backend and switches between sets: only the modules whose terms change
// are touched, a merged module is restored by uploading its base weight
// again from the checkpoint (bit-identical to a fresh load; the files on
// disk and in the page cache are only read), and forward-pass terms are
// attached to and detached from model.Linear / model.Conv2d.
//
// Files in the applied set must stay open until the set changes (Apply
// may merge again from them). Not safe for concurrent use; nothing may run
// the networks during Apply.
type Applier struct {
	b        engine.Backend
	t        *Target
	opts     Options
	resolved map[*File]*Resolved
	state    map[string]*applied // by "<component>:<path>"
	restored int64
}

// term is one LoRA's contribution to a module.
type term struct {
	file  *File
	src   *Module
	scale float64 // multiplier · alpha / rank
}

// applied is a module's wanted or current terms.
type applied struct {
	component string
	mod       model.Module
	mode      Mode
	terms     []term
	merged    *engine.Tensor // the weight tensor the merge wrote (Merge)
	lr        *model.LowRank // the attached term (InForward)
}

func (a *applied) same(b *applied) bool {
	if a.mode != b.mode || len(a.terms) != len(b.terms) {
		return false
	}
	for i, t := range a.terms {
		if t != b.terms[i] {
			return false
		}
	}
	return true
}

// NewApplier starts with no LoRA applied.
func NewApplier(b engine.Backend, t *Target, opts Options) *Applier {
	return &Applier{b: b, t: t, opts: opts, resolved: map[*File]*Resolved{}, state: map[string]*applied{}}
}

// Resolve maps f onto the target (cached per file).
func (a *Applier) Resolve(f *File) (*Resolved, error) {
	if r := a.resolved[f]; r != nil {
		return r, nil
	}
	r, err := a.t.Resolve(f, a.opts.IgnoreUnknown)
	if err != nil {
		return nil, err
	}
	a.resolved[f] = r
	return r, nil
}

// Forget drops the Applier's resolution of f, so that a caller may close
// f (a file replaced on disk, say). f must not be in the applied set.
func (a *Applier) Forget(f *File) { delete(a.resolved, f) }

// Stats reports the current state.
func (a *Applier) Stats() Stats {
	s := Stats{Restored: a.restored}
	for _, st := range a.state {
		if st.lr != nil {
			s.InForward++
			s.ForwardBytes += st.lr.Down.Bytes() + st.lr.Up.Bytes()
		} else if st.merged != nil {
			s.Merged++
		}
	}
	return s
}

// Apply makes specs the applied set, in order (several LoRAs add up in
// that order), each network in the mode modes gives it. Modules whose
// terms are unchanged are left alone, except merged ones whose weight was
// evicted since (those are merged again). On failure every LoRA is removed
// and the error returned.
func (a *Applier) Apply(specs []Spec, modes Modes) error {
	want := map[string]*applied{}
	var order []string
	for i, s := range specs {
		if s.File == nil {
			return fmt.Errorf("lora: spec %d has no file", i)
		}
		r, err := a.Resolve(s.File)
		if err != nil {
			return err
		}
		for _, bd := range r.Bindings {
			m := s.UNet
			if strings.HasPrefix(bd.Component, "text_encoder") {
				m = s.TE
			}
			if m == 0 {
				continue // adds exactly nothing
			}
			key := bd.Component + ":" + bd.Module.Path
			w := want[key]
			if w == nil {
				w = &applied{component: bd.Component, mod: bd.Module, mode: modes.of(bd.Component)}
				want[key] = w
				order = append(order, key)
			}
			w.terms = append(w.terms, term{file: s.File, src: bd.Src, scale: m * bd.Src.Scale()})
		}
	}
	// Undo first, so that memory is free before new terms take it.
	for key, cur := range a.state {
		if w := want[key]; w == nil || !w.same(cur) {
			if err := a.undo(cur); err != nil {
				return a.fail(err)
			}
			delete(a.state, key)
		}
	}
	for _, key := range order {
		w := want[key]
		if cur := a.state[key]; cur != nil {
			if cur.mode != Merge || cur.merged == cur.mod.Weight().T {
				continue
			}
			w = cur // evicted since the merge: merge again
		}
		if err := a.do(w); err != nil {
			return a.fail(err)
		}
		a.state[key] = w
	}
	return nil
}

// Clear removes every LoRA.
func (a *Applier) Clear() error { return a.Apply(nil, Modes{}) }

// Close removes every LoRA; the Applier must not be used after.
func (a *Applier) Close() error {
	err := a.Clear()
	a.resolved = nil
	return err
}

// fail removes whatever is applied after err.
func (a *Applier) fail(err error) error {
	var errs []error
	for key, cur := range a.state {
		if e := a.undo(cur); e != nil {
			errs = append(errs, e)
		}
		delete(a.state, key)
	}
	return errors.Join(append([]error{err}, errs...)...)
}

func (a *Applier) do(w *applied) error {
	var err error
	if w.mode == InForward {
		err = a.attach(w)
	} else {
		err = a.merge(w)
	}
	if err != nil {
		return fmt.Errorf("lora: %s %s: %w", w.component, w.mod.Path, err)
	}
	return nil
}

// undo restores a module's base weight or detaches its term.
func (a *Applier) undo(cur *applied) error {
	if cur.mode == InForward {
		if cur.lr != nil {
			if err := cur.mod.SetLoRA(nil); err != nil {
				return err
			}
			a.b.Free(cur.lr.Down)
			a.b.Free(cur.lr.Up)
			cur.lr = nil
		}
		return nil
	}
	p := cur.mod.Weight()
	if p.T == nil || p.T != cur.merged {
		return nil // evicted since: the next upload reads the base weight
	}
	p.Evict(a.b)
	if err := p.Upload(a.b); err != nil {
		return fmt.Errorf("lora: restore %s: %w", p.Key, err)
	}
	a.restored += p.Bytes()
	return nil
}

// merge writes W + Σ scale·up·down into the module's resident weight:
// the weight is widened to float32, each term is one MatMul (with the
// scale as its alpha) added in, and the sum is stored back in the
// weight's dtype; the base weight never leaves the device.
func (a *Applier) merge(w *applied) error {
	p := w.mod.Weight()
	if err := p.Upload(a.b); err != nil {
		return err
	}
	if p.T.DType != engine.F16 && p.T.DType != engine.F32 {
		return fmt.Errorf("cannot merge into %s weights; apply this network in the forward pass", p.T.DType)
	}
	out := p.Shape[0]
	k := p.Shape.NumElem() / out
	flat, err := p.T.Reshape(out, k)
	if err != nil {
		return err
	}
	rec := engine.NewRec(a.b)
	acc := rec.Copy(p.Key+".lora_merge", flat) // [out, k] F32
	if err := a.addTerms(rec, acc, w.terms); err != nil {
		rec.Free(acc)
		return err
	}
	if err := rec.Err(); err != nil {
		rec.Free(acc)
		return err
	}
	err = a.b.Copy(flat, acc)
	rec.Free(acc)
	if err != nil {
		return err
	}
	w.merged = p.T
	return nil
}

// addTerms adds scale·up·down of each term to acc [out, k] (F32) in
// order, as float32 sums like the reference's W + d1 + d2.
func (a *Applier) addTerms(rec *engine.Rec, acc *engine.Tensor, terms []term) error {
	if acc == nil {
		return rec.Err()
	}
	out, k := acc.Shape[0], acc.Shape[1]
	for _, t := range terms {
		down, up, err := t.file.downUp(t.src)
		if err != nil {
			return err
		}
		r := t.src.Rank()
		if len(down) != r*k || len(up) != out*r {
			return fmt.Errorf("%s: %d x %d and %d x %d do not make a [%d %d] weight", t.src.Key, out, len(up)/max(out, 1), r, len(down)/r, out, k)
		}
		u := rec.Write(t.src.Up.Name, up, 1, out, r)
		d := rec.Write(t.src.Down.Name, down, 1, r, k)
		delta := rec.MatMul(t.src.Key+".delta", u, d, false, float32(t.scale)) // [1, out, k]
		rec.Free(u, d)
		if delta != nil {
			rec.AddInPlace(acc, rec.Reshape(delta, out, k))
		}
		rec.Free(delta)
	}
	return rec.Err()
}

// attach uploads the terms as one model.LowRank (ranks concatenated,
// scales folded into up's columns) and hooks it into the module.
func (a *Applier) attach(w *applied) error {
	in, out, kk := w.mod.In(), w.mod.Out(), w.mod.Kernel()
	row := in * max(kk, 1) * max(kk, 1)
	rank := 0
	for _, t := range w.terms {
		rank += t.src.Rank()
	}
	down := make([]float32, 0, rank*row)
	up := make([]float32, out*rank)
	col := 0
	for _, t := range w.terms {
		d, u, err := t.file.downUp(t.src)
		if err != nil {
			return err
		}
		r := t.src.Rank()
		if len(d) != r*row || len(u) != out*r {
			return fmt.Errorf("%s: tensors do not fit [%d %d] / [%d %d]", t.src.Key, r, row, out, r)
		}
		down = append(down, d...)
		s := float32(t.scale)
		for o := range out {
			for j := range r {
				up[o*rank+col+j] = s * u[o*r+j]
			}
		}
		col += r
	}
	ds, us := engine.Shape{rank, in}, engine.Shape{out, rank}
	if kk > 0 {
		ds, us = engine.Shape{rank, in, kk, kk}, engine.Shape{out, rank, 1, 1}
	}
	// lora_down keeps F16 storage when every file stores it so (exact,
	// and a third less memory); up carries the float32 scales.
	ddt := engine.F16
	for _, t := range w.terms {
		if t.src.Down.DType != safetensors.F16 {
			ddt = engine.F32
		}
	}
	name := "lora:" + w.component + "." + w.mod.Path
	dt, err := a.upload(name+".down", ddt, ds, down)
	if err != nil {
		return err
	}
	ut, err := a.upload(name+".up", engine.F32, us, up)
	if err != nil {
		a.b.Free(dt)
		return err
	}
	lr := &model.LowRank{Down: dt, Up: ut}
	if err := w.mod.SetLoRA(lr); err != nil {
		a.b.Free(dt)
		a.b.Free(ut)
		return err
	}
	w.lr = lr
	return nil
}

func (a *Applier) upload(name string, dt engine.DType, s engine.Shape, v []float32) (*engine.Tensor, error) {
	t, err := a.b.Alloc(name, dt, s)
	if err != nil {
		return nil, err
	}
	if err := a.b.Write(t, v); err != nil {
		a.b.Free(t)
		return nil, err
	}
	return t, nil
}
