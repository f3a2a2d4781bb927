package model

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/x448/float16"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/model/gguf"
	"github.com/zimage/zimage/model/safetensors"
)

// Entry is one checkpoint tensor under its canonical (diffusers) key: a
// whole safetensors or GGUF tensor, or a contiguous row range of one
// (single-file checkpoints fuse q/k/v projections that diffusers keeps
// apart). See entry.go.
type Entry struct {
	Key   string
	DType safetensors.DType // element type; empty for a block-quantized entry
	// Quant is the ggml block type (Q8_0, Q4_K, ...) of a block-quantized
	// entry read from a GGUF file, whose Bytes are then whole blocks in
	// row-major order of Shape; the zero value (a plain type) otherwise.
	Quant gguf.Type
	Shape []int
	File  string
	data  func() []byte
	// mapped is set when data returns bytes of a read-only file mapping
	// (not a copy on the heap), whose pages release may drop.
	mapped bool
	// drop, when set, forgets a copy computed on first read (see release).
	drop func()
}

// Bytes returns the raw little-endian elements, straight from the mapping.
func (e *Entry) Bytes() []byte { return e.data() }

// NumElem is the element count.
func (e *Entry) NumElem() int {
	n := 1
	for _, d := range e.Shape {
		n *= d
	}
	return n
}

// Source holds the tensors of one network (a diffusers component) under
// canonical keys, and remembers which ones a network asked for.
type Source struct {
	Name    string // component, for messages: "unet", "vae", ...
	entries map[string]*Entry
	used    map[string]bool
	synth   func(key string, shape []int) *Entry
	// StoreF32 keeps every parameter F32 on the device (twice the memory
	// of F16 matrices): conformance tests use it to check a network's
	// arithmetic against a float32 reference apart from F16 rounding.
	StoreF32 bool
}

// NewSource returns an empty source.
func NewSource(name string) *Source {
	return &Source{Name: name, entries: map[string]*Entry{}, used: map[string]bool{}}
}

// AddTensor adds a whole safetensors tensor under key.
func (s *Source) AddTensor(key string, t *safetensors.Tensor, file string) {
	s.entries[key] = tensorEntry(key, t, file)
}

// AddRows adds rows [from, to) of the first axis of t under key, with the
// given shape (whose element count must equal the rows' elements).
func (s *Source) AddRows(key string, t *safetensors.Tensor, file string, from, to int, shape []int) error {
	e, err := tensorEntry(t.Name, t, file).rows(key, from, to, shape)
	if err != nil {
		return err
	}
	s.entries[key] = e
	return nil
}

// AddReshaped adds t under key with a new shape of the same element count
// (LDM stores some linear weights as 1x1 convolutions).
func (s *Source) AddReshaped(key string, t *safetensors.Tensor, file string, shape []int) error {
	if len(t.Shape) == 0 {
		return fmt.Errorf("model: %s in %s: scalar cannot be reshaped", t.Name, file)
	}
	return s.AddRows(key, t, file, 0, t.Shape[0], shape)
}

// Entry returns the tensor under key, or nil.
func (s *Source) Entry(key string) *Entry { return s.entries[key] }

// Keys lists every key, sorted.
func (s *Source) Keys() []string {
	keys := make([]string, 0, len(s.entries))
	for k := range s.entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Unused lists keys no network asked for, sorted.
func (s *Source) Unused() []string {
	var out []string
	for _, k := range s.Keys() {
		if !s.used[k] {
			out = append(out, k)
		}
	}
	return out
}

// MissingTensorError reports a tensor a network needs that the checkpoint
// lacks.
type MissingTensorError struct {
	Component string
	Key       string
}

func (e *MissingTensorError) Error() string {
	return fmt.Sprintf("model: %s: missing tensor %q", e.Component, e.Key)
}

// ShapeError reports a checkpoint tensor whose shape differs from what the
// config implies.
type ShapeError struct {
	Component string
	Key       string
	File      string
	Got, Want []int
}

func (e *ShapeError) Error() string {
	return fmt.Sprintf("model: %s: %q in %s: shape %v, want %v", e.Component, e.Key, e.File, e.Got, e.Want)
}

// NonFiniteError reports NaN or Inf values in a weight.
type NonFiniteError struct {
	Key, File string
	Index     int
}

func (e *NonFiniteError) Error() string {
	return fmt.Sprintf("model: %q in %s: non-finite value at element %d", e.Key, e.File, e.Index)
}

// Param is one weight of a network: where it comes from, the shape the
// config implies, and its device copy while resident.
type Param struct {
	Key   string // canonical key, with the component's prefix path
	Shape engine.Shape
	// DType is the device storage: F16 for matrices, F32 for vectors, and
	// for the weight of a Linear or Conv2d (Weights.ParamQ) whose entry is
	// block-quantized with rows of whole blocks, that block type: the
	// blocks upload unchanged and the kernels decode them.
	DType engine.DType
	src   *Entry
	T     *engine.Tensor // nil unless resident
	// Widened is set when the first upload found values outside F16's
	// range in a tensor that would be stored F16: it is stored F32.
	Widened bool
	on      engine.Backend // the backend T lives on
	checked bool
}

// Bytes is the device size of the parameter.
func (p *Param) Bytes() int64 { return p.DType.RowBytes(p.Shape.NumElem()) }

// Upload makes p resident on b (no-op when it already is). A copy on
// another backend is freed first. The first upload checks the values for
// NaN/Inf. The bytes are read from the file's mapping under
// safetensors.Guard: a file truncated since it was opened gives an error
// wrapping safetensors.ErrFileChanged, not a crash.
func (p *Param) Upload(b engine.Backend) error {
	if p.T != nil && p.on == b {
		return nil
	}
	p.Evict(nil)
	if p.DType.Quantized() {
		if engine.SupportsBlocks(b, p.DType) {
			return p.guarded(b, p.writeBlocks)
		}
		// A backend without kernels for the type gets the decoded
		// values in F16, like any matrix.
		p.DType = engine.F16
	}
	return p.guarded(b, p.writeValues)
}

// guarded allocates p on b and fills it with write, reading the mapping
// under safetensors.Guard; on failure the allocation is freed (also when
// the copy faulted half way).
func (p *Param) guarded(b engine.Backend, write func(b engine.Backend, alloc func() (*engine.Tensor, error)) error) error {
	var t *engine.Tensor
	alloc := func() (*engine.Tensor, error) {
		var err error
		if t, err = b.Alloc(p.Key, p.DType, p.Shape); err != nil {
			return nil, fmt.Errorf("model: upload %s: %w", p.Key, err)
		}
		return t, nil
	}
	err := safetensors.Guard(p.src.File, func() error { return write(b, alloc) })
	if err != nil {
		if t != nil {
			b.Free(t)
		}
		if errors.Is(err, safetensors.ErrFileChanged) || t != nil {
			return fmt.Errorf("model: upload %s from %s: %w", p.Key, p.src.File, err)
		}
		return err
	}
	p.T, p.on = t, b
	return nil
}

// writeValues uploads p's values as p.DType (F16 or F32); the first upload
// checks them for NaN/Inf.
func (p *Param) writeValues(b engine.Backend, alloc func() (*engine.Tensor, error)) error {
	raw, dtype := p.src.Bytes(), p.src.DType
	if p.src.Quantized() {
		// Blocks the device does not keep: it holds the exact dequantized
		// values, converted to p.DType (16-bit for matrices).
		v, err := p.src.Float32s()
		if err != nil {
			return fmt.Errorf("model: upload %s: %w", p.Key, err)
		}
		raw, dtype = float32Bytes(v), safetensors.F32
	}
	if !p.checked {
		if i := firstNonFinite(raw, dtype); i >= 0 {
			return &NonFiniteError{Key: p.Key, File: p.src.File, Index: i}
		}
		// A BF16 or F32 value beyond F16's largest finite value (65504)
		// would become Inf on the device, and an Inf weight NaN in the
		// activations. Such a parameter stays F32 instead: twice the
		// memory for that one tensor, exact values, and no silent change
		// of the model. (Scaling the matrix into range would need a rescale
		// op after every product; clamping would change the network.) The
		// check runs once, on the first upload, so Bytes grows from then
		// on; Widened reports it.
		if p.DType == engine.F16 && dtype != safetensors.F16 && firstOutsideF16(raw, dtype) >= 0 {
			p.DType, p.Widened = engine.F32, true
		}
		p.checked = true
	}
	t, err := alloc()
	if err != nil {
		return err
	}
	src := engine.F16
	switch dtype {
	case safetensors.F32:
		src = engine.F32
	case safetensors.BF16:
		raw, src = bf16ToF32(raw), engine.F32
	}
	return b.WriteRaw(t, raw, src)
}

// writeBlocks uploads a block-quantized parameter's blocks unchanged; the
// first upload checks every block's scales for NaN/Inf.
func (p *Param) writeBlocks(b engine.Backend, alloc func() (*engine.Tensor, error)) error {
	raw := p.src.Bytes()
	if int64(len(raw)) != p.Bytes() {
		return fmt.Errorf("model: upload %s from %s: %d bytes of %v blocks, want %d (file closed?)", p.Key, p.src.File, len(raw), p.DType, p.Bytes())
	}
	if !p.checked {
		if i := engine.FirstNonFiniteBlock(p.DType, raw); i >= 0 {
			return &NonFiniteError{Key: p.Key, File: p.src.File, Index: i * p.DType.BlockSize()}
		}
		p.checked = true
	}
	t, err := alloc()
	if err != nil {
		return err
	}
	return b.WriteRaw(t, raw, p.DType)
}

// ReleaseHost drops the host copy of p's source once the device holds it
// for good (weights kept resident): the file pages of a memory-mapped
// tensor leave the process's resident set (they are read again, from the
// page cache or the disk, should p be uploaded again), and a copy computed
// at load (a quantized, transposed or decoded tensor) is dropped and
// recomputed if needed. On unified memory (integrated GPUs, lavapipe) the
// device copy is host memory too: releasing the host copy holds each
// weight once.
func (p *Param) ReleaseHost() {
	if p.src != nil && p.T != nil {
		p.src.release(true)
	}
}

// ReleasePages drops only the file pages of p's memory-mapped source
// (ReleaseHost keeps computed copies, which streaming uploads again).
func (p *Param) ReleasePages() {
	if p.src != nil && p.T != nil {
		p.src.release(false)
	}
}

// Evict frees the device copy (on whichever backend holds it; b is
// accepted for symmetry with Upload).
func (p *Param) Evict(b engine.Backend) {
	if p.T != nil {
		p.on.Free(p.T)
		p.T, p.on = nil, nil
	}
}

// Quantized reports whether p is stored in ggml blocks (a GGUF file):
// such weights cannot take a merged LoRA once quantized kernels keep them
// in blocks on the device.
func (p *Param) Quantized() bool { return p.src != nil && p.src.Quantized() }

// ResidentOn reports whether p's device copy lives on b.
func (p *Param) ResidentOn(b engine.Backend) bool { return p.T != nil && p.on == b }

func bf16ToF32(raw []byte) []byte {
	out := make([]byte, len(raw)*2)
	for i := 0; i+1 < len(raw); i += 2 {
		binary.LittleEndian.PutUint32(out[2*i:], uint32(binary.LittleEndian.Uint16(raw[i:]))<<16)
	}
	return out
}

// firstNonFinite returns the index of the first NaN/Inf element, or -1.
func firstNonFinite(raw []byte, dt safetensors.DType) int {
	switch dt {
	case safetensors.F16:
		for i := 0; i+1 < len(raw); i += 2 {
			if binary.LittleEndian.Uint16(raw[i:])&0x7c00 == 0x7c00 {
				return i / 2
			}
		}
	case safetensors.BF16:
		for i := 0; i+1 < len(raw); i += 2 {
			if binary.LittleEndian.Uint16(raw[i:])&0x7f80 == 0x7f80 {
				return i / 2
			}
		}
	case safetensors.F32:
		for i := 0; i+3 < len(raw); i += 4 {
			if binary.LittleEndian.Uint32(raw[i:])&0x7f800000 == 0x7f800000 {
				return i / 4
			}
		}
	}
	return -1
}

// f16Max is the largest finite F16 value.
const f16Max = 65504

// firstOutsideF16 returns the index of the first element whose magnitude
// exceeds F16's largest finite value, or -1 (non-finite values are
// reported separately by firstNonFinite).
func firstOutsideF16(raw []byte, dt safetensors.DType) int {
	switch dt {
	case safetensors.BF16:
		for i := 0; i+1 < len(raw); i += 2 {
			v := math.Float32frombits(uint32(binary.LittleEndian.Uint16(raw[i:])) << 16)
			if v > f16Max || v < -f16Max {
				return i / 2
			}
		}
	case safetensors.F32:
		for i := 0; i+3 < len(raw); i += 4 {
			v := math.Float32frombits(binary.LittleEndian.Uint32(raw[i:]))
			if v > f16Max || v < -f16Max {
				return i / 4
			}
		}
	}
	return -1
}

// Rows gathers rows of a 2-D parameter on the host as float32, straight
// from the checkpoint: an embedding table read a few rows at a time never
// needs a device copy (Qwen3's is 778 MB at F16). Ids must be in range;
// NaN/Inf in a gathered row is an error.
func (p *Param) Rows(ids []int32) ([]float32, error) {
	if p.src == nil || len(p.Shape) != 2 {
		return nil, fmt.Errorf("model: rows of %s: not a loaded 2-D parameter", p.Key)
	}
	n, d := p.Shape[0], p.Shape[1]
	raw := p.src.Bytes()
	if p.src.Quantized() {
		return p.blockRows(ids, raw)
	}
	size := p.src.DType.Size()
	out := make([]float32, 0, len(ids)*d)
	for i, id := range ids {
		if id < 0 || int(id) >= n {
			return nil, fmt.Errorf("model: rows of %s: id %d (position %d) outside [0, %d)", p.Key, id, i, n)
		}
		row := raw[int(id)*d*size : (int(id)+1)*d*size]
		for j := 0; j < d; j++ {
			var v float32
			switch p.src.DType {
			case safetensors.F32:
				v = math.Float32frombits(binary.LittleEndian.Uint32(row[4*j:]))
			case safetensors.BF16:
				v = math.Float32frombits(uint32(binary.LittleEndian.Uint16(row[2*j:])) << 16)
			case safetensors.F16:
				v = F16Value(binary.LittleEndian.Uint16(row[2*j:]))
			default:
				return nil, fmt.Errorf("model: rows of %s in %s: dtype %s", p.Key, p.src.File, p.src.DType)
			}
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, &NonFiniteError{Key: p.Key, File: p.src.File, Index: int(id)*d + j}
			}
			out = append(out, v)
		}
	}
	return out, nil
}

// blockRows is Rows for a block-quantized table whose rows are whole
// blocks: only the rows asked for are decoded.
func (p *Param) blockRows(ids []int32, raw []byte) ([]float32, error) {
	n, d := p.Shape[0], p.Shape[1]
	rb, ok := p.src.Quant.RowBytes(d)
	if !ok || len(raw) != n*rb {
		return nil, fmt.Errorf("model: rows of %s in %s: rows of %d elements are not whole %s blocks (or the file is closed)", p.Key, p.src.File, d, p.src.Quant)
	}
	out := make([]float32, len(ids)*d)
	for i, id := range ids {
		if id < 0 || int(id) >= n {
			return nil, fmt.Errorf("model: rows of %s: id %d (position %d) outside [0, %d)", p.Key, id, i, n)
		}
		row := out[i*d : (i+1)*d]
		if err := gguf.Dequantize(p.src.Quant, raw[int(id)*rb:(int(id)+1)*rb], row); err != nil {
			return nil, fmt.Errorf("model: rows of %s in %s: %w", p.Key, p.src.File, err)
		}
		for j, v := range row {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, &NonFiniteError{Key: p.Key, File: p.src.File, Index: int(id)*d + j}
			}
		}
	}
	return out, nil
}

// Block is a group of parameters that is made resident together: the unit
// of layer-wise offload.
type Block struct {
	Name   string
	Params []*Param
}

// Bytes is the device size of the block's parameters.
func (bl *Block) Bytes() int64 {
	var n int64
	for _, p := range bl.Params {
		n += p.Bytes()
	}
	return n
}

// ReleaseHost drops the host copies of the block's resident parameters
// (Param.ReleaseHost).
func (bl *Block) ReleaseHost() {
	for _, p := range bl.Params {
		p.ReleaseHost()
	}
}

// ReleasePages drops the file pages of the block's resident parameters
// (Param.ReleasePages).
func (bl *Block) ReleasePages() {
	for _, p := range bl.Params {
		p.ReleasePages()
	}
}

// Upload makes every parameter resident.
func (bl *Block) Upload(b engine.Backend) error {
	for _, p := range bl.Params {
		if err := p.Upload(b); err != nil {
			return err
		}
	}
	return nil
}

// Evict frees every parameter's device copy.
func (bl *Block) Evict(b engine.Backend) {
	for _, p := range bl.Params {
		p.Evict(b)
	}
}

// Resident reports whether every parameter is on a device.
func (bl *Block) Resident() bool {
	for _, p := range bl.Params {
		if p.T == nil {
			return false
		}
	}
	return true
}

// ResidentOn reports whether every parameter is on backend b.
func (bl *Block) ResidentOn(b engine.Backend) bool {
	for _, p := range bl.Params {
		if !p.ResidentOn(b) {
			return false
		}
	}
	return true
}

// Residency is how a network gets its weights onto the device: it calls Need
// before running a block. AllResident uploads on first need and keeps
// everything; sched's streamer evicts and prefetches under a budget.
type Residency interface {
	Need(b *Block) error
}

// needBlock makes bl resident through res unless rec already failed; a
// failure is recorded in rec, naming the network and the block.
func needBlock(rec *engine.Rec, res Residency, network string, bl *Block) bool {
	if rec.Err() != nil {
		return false
	}
	if err := res.Need(bl); err != nil {
		rec.Fail(fmt.Errorf("model: %s block %s: %w", network, bl.Name, err))
		return false
	}
	return true
}

// AllResident keeps every block it was asked for on the device. With
// ReleaseHost set it drops each block's host copies once uploaded
// (Block.ReleaseHost): the weights are then held once, on the device.
type AllResident struct {
	B           engine.Backend
	ReleaseHost bool
}

// Need uploads the block if it is not resident yet.
func (a AllResident) Need(bl *Block) error {
	if bl.ResidentOn(a.B) {
		return nil
	}
	if err := bl.Upload(a.B); err != nil {
		return err
	}
	if a.ReleaseHost {
		bl.ReleaseHost()
	}
	return nil
}

// Weights hands out Params of one network under a key prefix, checking each
// against the shape the config implies and collecting them into blocks.
// Errors accumulate; callers check Err once per network.
type Weights struct {
	src    *Source
	prefix string
	state  *weightsState
}

type weightsState struct {
	errs   []error
	blocks []*Block
	cur    *Block
}

// NewWeights starts handing out params of src.
func NewWeights(src *Source) *Weights {
	return &Weights{src: src, state: &weightsState{}}
}

// Sub returns the weights under prefix "name.".
func (w *Weights) Sub(name string) *Weights {
	p := name
	if w.prefix != "" {
		p = w.prefix + "." + name
	}
	return &Weights{src: w.src, prefix: p, state: w.state}
}

// Subf is Sub with a formatted name.
func (w *Weights) Subf(format string, args ...any) *Weights {
	return w.Sub(fmt.Sprintf(format, args...))
}

// Has reports whether the checkpoint holds the tensor name under the prefix.
func (w *Weights) Has(name string) bool { return w.src.Entry(w.key(name)) != nil }

// Prefix is the key path of this view.
func (w *Weights) Prefix() string { return w.prefix }

func (w *Weights) key(name string) string {
	if w.prefix == "" {
		return name
	}
	return w.prefix + "." + name
}

// BeginBlock starts a new offload block; later params belong to it.
func (w *Weights) BeginBlock(name string) *Block {
	b := &Block{Name: name}
	w.state.blocks = append(w.state.blocks, b)
	w.state.cur = b
	return b
}

// Blocks lists the blocks in the order they were begun.
func (w *Weights) Blocks() []*Block { return w.state.blocks }

// Param returns the parameter name under the prefix, checked against shape.
// Matrices and higher are stored F16 on the device, vectors F32.
func (w *Weights) Param(name string, shape ...int) *Param {
	return w.param(name, shape, false, true, false)
}

// ParamQ is Param for the weight of a Linear [out, in] or Conv2d [out, in,
// kh, kw]: a block-quantized entry whose GEMM rows (in*kh*kw elements)
// are whole blocks keeps its block type on the device (Param.DType).
func (w *Weights) ParamQ(name string, shape ...int) *Param {
	return w.param(name, shape, false, true, true)
}

// ParamF32 is Param stored F32 on the device whatever its rank: for the
// few small tensors where F16 rounding would cost accuracy for no memory
// worth saving.
func (w *Weights) ParamF32(name string, shape ...int) *Param {
	return w.param(name, shape, true, true, false)
}

// HostParam is a parameter that belongs to no offload block: it is read on
// the host (Param.Rows) and never uploaded by the residency machinery.
func (w *Weights) HostParam(name string, shape ...int) *Param {
	return w.param(name, shape, true, false, false)
}

func (w *Weights) param(name string, shape []int, f32, inBlock, quant bool) *Param {
	key := w.key(name)
	e := w.src.Entry(key)
	if e == nil && w.src.synth != nil {
		e = w.src.synth(key, shape)
		w.src.entries[key] = e
	}
	if e == nil {
		w.state.errs = append(w.state.errs, &MissingTensorError{Component: w.src.Name, Key: key})
		return &Param{Key: key, Shape: shape}
	}
	w.src.used[key] = true
	if !engine.Shape(e.Shape).Equal(shape) {
		w.state.errs = append(w.state.errs, &ShapeError{Component: w.src.Name, Key: key, File: e.File, Got: e.Shape, Want: shape})
	}
	switch {
	case e.Quantized() && e.Quant.Supported(): // dequantized on upload (see Param.Upload)
	case e.DType == safetensors.F16, e.DType == safetensors.BF16, e.DType == safetensors.F32:
	default:
		w.state.errs = append(w.state.errs, fmt.Errorf("model: %s: %q in %s: type %s, want F16, BF16, F32 or one of the GGUF types %v", w.src.Name, key, e.File, e.TypeName(), gguf.SupportedTypes()))
	}
	dt := engine.F32
	if len(shape) >= 2 && !f32 && !w.src.StoreF32 {
		dt = engine.F16
	}
	if quant && dt == engine.F16 && e.Quantized() {
		if qd, ok := e.Quant.DType(); ok && engine.Shape(shape[1:]).NumElem()%qd.BlockSize() == 0 {
			dt = qd
		}
	}
	p := &Param{Key: key, Shape: engine.Shape(shape).Clone(), DType: dt, src: e}
	if !inBlock {
		return p
	}
	if w.state.cur == nil {
		w.BeginBlock(w.src.Name)
	}
	w.state.cur.Params = append(w.state.cur.Params, p)
	return p
}

// Err joins every missing-tensor and shape error met so far.
func (w *Weights) Err() error {
	if len(w.state.errs) == 0 {
		return nil
	}
	const show = 8
	msgs := make([]string, 0, show+1)
	for i, e := range w.state.errs {
		if i == show {
			msgs = append(msgs, fmt.Sprintf("... and %d more", len(w.state.errs)-show))
			break
		}
		msgs = append(msgs, e.Error())
	}
	return &LoadError{Component: w.src.Name, Errs: w.state.errs, msg: strings.Join(msgs, "; ")}
}

// LoadError collects the problems found while loading one network; it
// unwraps to each of them, so errors.As finds a *MissingTensorError or
// *ShapeError inside.
type LoadError struct {
	Component string
	Errs      []error
	msg       string
}

func (e *LoadError) Error() string   { return e.msg }
func (e *LoadError) Unwrap() []error { return e.Errs }

// F16Bits converts a float32 to IEEE half bits (round to nearest even).
func F16Bits(f float32) uint16 { return float16.Fromfloat32(f).Bits() }

// F16Value converts IEEE half bits to float32.
func F16Value(b uint16) float32 { return float16.Frombits(b).Float32() }
