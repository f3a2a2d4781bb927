// Package ref is the naive pure-Go reference backend: every op of
// engine.Backend written as plain loops that accumulate in float64. It is
// the oracle the conformance suite (engine/enginetest) compares other
// backends with, and it runs the tiny reference models in tests. It favours
// clarity and exactness over speed, but keeps loops in memory order so that
// tiny networks run in well under a second.
package ref

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/zimage/zimage/engine"
)

// Backend implements engine.Backend on host memory. Ops run immediately, so
// Flush has nothing to do. A Backend is not safe for concurrent use.
type Backend struct {
	inUse, peak, budget int64
	closed              bool
}

// Option configures a Backend.
type Option func(*Backend)

// WithBudget makes Alloc fail once the live tensors would exceed bytes
// (0 = unlimited), mimicking a device-memory budget.
func WithBudget(bytes int64) Option { return func(b *Backend) { b.budget = bytes } }

// New returns a reference backend.
func New(opts ...Option) *Backend {
	b := &Backend{}
	for _, o := range opts {
		o(b)
	}
	return b
}

var _ engine.Backend = (*Backend)(nil)

// buffer is a tensor's storage: F32 tensors hold float32 values, F16 tensors
// raw binary16 bits, block-quantized tensors their blocks' bytes (decoded
// exactly by engine.Dequantize wherever an op reads them). Views share the
// owner's buffer.
type buffer struct {
	f32   []float32
	f16   []uint16
	blk   []byte
	n     int // elements of a block-quantized buffer
	dtype engine.DType
	bytes int64
	freed bool
}

func (b *buffer) len() int {
	switch {
	case b.dtype == engine.F16:
		return len(b.f16)
	case b.dtype.Quantized():
		return b.n
	}
	return len(b.f32)
}

// SupportsBlocks reports true for every block type: the reference decodes
// them all exactly (engine.Dequantize) and runs Linear, Conv2d and Copy on
// the decoded values.
func (b *Backend) SupportsBlocks(d engine.DType) bool { return d.Quantized() }

// blockOps are the ops that take block-quantized operands (the weights of
// Linear and Conv2d, Copy's source) besides transfers; every other op
// refuses them in check.
var blockOps = map[string]bool{"linear": true, "conv2d": true, "copy": true, "read": true, "write": true, "write_raw": true}

// Name is "ref".
func (b *Backend) Name() string { return "ref" }

// Close marks the backend closed; later allocations fail. Host memory is
// left to the garbage collector.
func (b *Backend) Close() error {
	b.closed = true
	return nil
}

// Alloc returns a zeroed tensor, counting its bytes against the budget.
func (b *Backend) Alloc(name string, dt engine.DType, shape engine.Shape) (*engine.Tensor, error) {
	if b.closed {
		return nil, fmt.Errorf("ref: alloc %s: backend is closed", name)
	}
	if dt != engine.F32 && dt != engine.F16 && !dt.Quantized() {
		return nil, fmt.Errorf("ref: alloc %s: unsupported dtype %v", name, dt)
	}
	if err := shape.Valid(); err != nil {
		return nil, fmt.Errorf("ref: alloc %s: %w", name, err)
	}
	n := shape.NumElem()
	if bs := dt.BlockSize(); n%bs != 0 {
		return nil, fmt.Errorf("ref: alloc %s %v%v: %d elements are not whole %d-element blocks", name, dt, shape, n, bs)
	}
	size := dt.RowBytes(n)
	if b.budget > 0 && b.inUse+size > b.budget {
		return nil, fmt.Errorf("ref: alloc %s %v%v: %d bytes requested with %d in use exceeds the budget of %d bytes",
			name, dt, shape, size, b.inUse, b.budget)
	}
	buf := &buffer{dtype: dt, bytes: size}
	switch {
	case dt == engine.F16:
		buf.f16 = make([]uint16, n)
	case dt.Quantized():
		buf.blk, buf.n = make([]byte, size), n
	default:
		buf.f32 = make([]float32, n)
	}
	b.inUse += size
	b.peak = max(b.peak, b.inUse)
	return &engine.Tensor{Name: name, DType: dt, Shape: shape.Clone(), Storage: buf}, nil
}

// Free releases t's storage; views, nil, foreign and already freed tensors
// are ignored.
func (b *Backend) Free(t *engine.Tensor) {
	if t == nil || t.IsView() {
		return
	}
	buf, ok := t.Storage.(*buffer)
	if !ok || buf.freed {
		return
	}
	buf.freed = true
	buf.f32, buf.f16, buf.blk = nil, nil, nil
	b.inUse -= buf.bytes
}

// MemStats reports the bytes held by live tensors.
func (b *Backend) MemStats() engine.MemStats {
	return engine.MemStats{InUse: b.inUse, Peak: b.peak, Budget: b.budget}
}

// ResetPeak sets the peak to the current use.
func (b *Backend) ResetPeak() { b.peak = b.inUse }

// Flush does nothing: ops run when called.
func (b *Backend) Flush() error { return nil }

// Write stores data into t, rounding to F16 when t is F16.
func (b *Backend) Write(t *engine.Tensor, data []float32) error {
	if err := check("write", t); err != nil {
		return err
	}
	if len(data) != t.NumElem() {
		return fmt.Errorf("ref: write %s%v: %d values, want %d", t.Name, t.Shape, len(data), t.NumElem())
	}
	if t.DType.Quantized() {
		return fmt.Errorf("ref: write %s: %v blocks are written with WriteRaw (the engine does not quantize)", t.Name, t.DType)
	}
	store(t, data)
	return nil
}

// WriteRaw stores little-endian F16 or F32 elements into t, or the blocks
// of a block-quantized t (src must then be t's dtype).
func (b *Backend) WriteRaw(t *engine.Tensor, data []byte, src engine.DType) error {
	if err := check("write_raw", t); err != nil {
		return err
	}
	if t.DType.Quantized() || src.Quantized() {
		if src != t.DType {
			return fmt.Errorf("ref: write_raw %s: %v data into a %v tensor (blocks are stored as they are)", t.Name, src, t.DType)
		}
		if int64(len(data)) != t.Bytes() {
			return fmt.Errorf("ref: write_raw %s%v: %d bytes of %v, want %d", t.Name, t.Shape, len(data), src, t.Bytes())
		}
		copy(blocks(t), data)
		return nil
	}
	if src != engine.F32 && src != engine.F16 {
		return fmt.Errorf("ref: write_raw %s: unsupported source dtype %v", t.Name, src)
	}
	n := t.NumElem()
	if len(data) != n*src.Size() {
		return fmt.Errorf("ref: write_raw %s%v: %d bytes of %v, want %d", t.Name, t.Shape, len(data), src, n*src.Size())
	}
	buf := t.Storage.(*buffer)
	switch {
	case src == engine.F16 && t.DType == engine.F16:
		dst := buf.f16[t.Offset : t.Offset+n]
		for i := range dst {
			dst[i] = binary.LittleEndian.Uint16(data[2*i:])
		}
		return nil
	case src == engine.F16:
		dst := buf.f32[t.Offset : t.Offset+n]
		for i := range dst {
			dst[i] = F16ToF32(binary.LittleEndian.Uint16(data[2*i:]))
		}
		return nil
	}
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
	}
	store(t, vals)
	return nil
}

// Read returns a copy of t's elements as float32.
func (b *Backend) Read(t *engine.Tensor) ([]float32, error) {
	if err := check("read", t); err != nil {
		return nil, err
	}
	return append([]float32(nil), load(t)...), nil
}

// check validates that t is a live tensor of this backend whose view lies
// inside its storage.
func check(op string, t *engine.Tensor) error {
	if t == nil {
		return &engine.ShapeError{Op: op, Tensor: "<nil>", Got: "nil", Want: "a tensor"}
	}
	buf, ok := t.Storage.(*buffer)
	if !ok || buf == nil {
		return fmt.Errorf("ref: %s: tensor %s was not allocated by the ref backend", op, t.Name)
	}
	if buf.freed {
		return fmt.Errorf("ref: %s: tensor %s was freed", op, t.Name)
	}
	if t.DType != buf.dtype {
		return fmt.Errorf("ref: %s: tensor %s claims dtype %v but its storage is %v", op, t.Name, t.DType, buf.dtype)
	}
	if err := t.Shape.Valid(); err != nil {
		return fmt.Errorf("ref: %s: tensor %s: %w", op, t.Name, err)
	}
	if t.DType.Quantized() {
		if !blockOps[op] {
			return fmt.Errorf("ref: %s: %s is %v: block-quantized tensors are weights of linear and conv2d, or copied to F32/F16", op, t.Name, t.DType)
		}
		if bs := t.DType.BlockSize(); t.Offset%bs != 0 || t.NumElem()%bs != 0 {
			return fmt.Errorf("ref: %s: view %s%v at offset %d is not whole %d-element blocks", op, t.Name, t.Shape, t.Offset, bs)
		}
	}
	if t.Offset < 0 || t.Offset+t.NumElem() > buf.len() {
		return fmt.Errorf("ref: %s: tensor %s%v at offset %d overruns its storage of %d elements",
			op, t.Name, t.Shape, t.Offset, buf.len())
	}
	return nil
}

// checkAll runs check on every operand.
func checkAll(op string, ts ...*engine.Tensor) error {
	for _, t := range ts {
		if err := check(op, t); err != nil {
			return err
		}
	}
	return nil
}

// wantF32 requires F32 storage (activations, biases, norm parameters).
func wantF32(op string, ts ...*engine.Tensor) error {
	for _, t := range ts {
		if err := engine.WantDType(op, t, engine.F32); err != nil {
			return err
		}
	}
	return nil
}

// data is the F32 view of an F32 tensor's elements; writes go to storage.
func data(t *engine.Tensor) []float32 {
	return t.Storage.(*buffer).f32[t.Offset : t.Offset+t.NumElem()]
}

// raw16 is the bit view of an F16 tensor's elements.
func raw16(t *engine.Tensor) []uint16 {
	return t.Storage.(*buffer).f16[t.Offset : t.Offset+t.NumElem()]
}

// blocks is the byte view of a block-quantized tensor's blocks.
func blocks(t *engine.Tensor) []byte {
	buf := t.Storage.(*buffer)
	return buf.blk[t.ByteOffset() : t.ByteOffset()+t.Bytes()]
}

// load returns t's elements as float32: the storage itself for F32 (do not
// write through it unless t is a destination), a widened copy for F16, the
// exactly decoded values of a block-quantized tensor.
func load(t *engine.Tensor) []float32 {
	if t.DType == engine.F32 {
		return data(t)
	}
	if t.DType.Quantized() {
		out := make([]float32, t.NumElem())
		if err := engine.Dequantize(t.DType, blocks(t), out); err != nil {
			panic(err) // check guarantees whole blocks
		}
		return out
	}
	src := raw16(t)
	out := make([]float32, len(src))
	for i, h := range src {
		out[i] = F16ToF32(h)
	}
	return out
}

// store writes vals into t, rounding to F16 when t is F16.
func store(t *engine.Tensor, vals []float32) {
	if t.DType == engine.F32 {
		copy(data(t), vals)
		return
	}
	dst := raw16(t)
	for i, v := range vals {
		dst[i] = F32ToF16(v)
	}
}
