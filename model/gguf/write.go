package gguf

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
)

// WriteTensor is one tensor to write: Shape in torch order (written as
// ggml dims, reversed), Data exactly the bytes of that many elements of
// Type. When Data is nil, Fill produces them as the data section is
// written, one tensor at a time, so that a converter need not hold a
// whole model in memory.
type WriteTensor struct {
	Name  string
	Type  Type
	Shape []int
	Data  []byte
	Fill  func() ([]byte, error)
}

// Write writes a GGUF v3 file: the metadata in order, then the tensors'
// infos and data in order, each tensor's data starting on the alignment
// (general.alignment when meta has it, else 32) and padded to it, as
// ggml's gguf writer lays files out.
func Write(w io.Writer, meta Metadata, tensors []WriteTensor) error {
	align := uint64(DefaultAlignment)
	if v, ok := meta.Get("general.alignment"); ok {
		a, isU32 := v.x.(uint32)
		if !isU32 || a == 0 || a&(a-1) != 0 {
			return fmt.Errorf("gguf: write: general.alignment is %s, want a power of two as uint32", v.describe())
		}
		align = uint64(a)
	}
	hw := &encoder{w: bufio.NewWriterSize(w, 1<<20)}
	hw.raw([]byte(Magic))
	hw.u32(3)
	hw.u64(uint64(len(tensors)))
	hw.u64(uint64(len(meta)))
	seen := map[string]bool{}
	for _, kv := range meta {
		if kv.Key == "" || seen[kv.Key] {
			return fmt.Errorf("gguf: write: metadata key %q is empty or given twice", kv.Key)
		}
		seen[kv.Key] = true
		hw.str(kv.Key)
		hw.u32(uint32(kv.Value.Type))
		if err := hw.value(kv.Value); err != nil {
			return fmt.Errorf("gguf: write: metadata %q: %w", kv.Key, err)
		}
	}
	var off uint64
	names := map[string]bool{}
	for _, t := range tensors {
		if names[t.Name] {
			return fmt.Errorf("gguf: write: tensor %q given twice", t.Name)
		}
		names[t.Name] = true
		n, err := dataSize(t)
		if err != nil {
			return err
		}
		if (t.Data != nil || t.Fill == nil) && uint64(len(t.Data)) != n {
			return fmt.Errorf("gguf: write: tensor %q: %d bytes of data, shape %v of %s needs %d", t.Name, len(t.Data), t.Shape, t.Type, n)
		}
		hw.str(t.Name)
		hw.u32(uint32(len(t.Shape)))
		for i := len(t.Shape) - 1; i >= 0; i-- {
			hw.u64(uint64(t.Shape[i]))
		}
		hw.u32(uint32(t.Type))
		hw.u64(off)
		off = alignUp(off+n, align)
	}
	hw.pad(align)
	for _, t := range tensors {
		data := t.Data
		if data == nil && t.Fill != nil {
			var err error
			if data, err = t.Fill(); err != nil {
				return fmt.Errorf("gguf: write: tensor %q: %w", t.Name, err)
			}
			if n, _ := dataSize(t); uint64(len(data)) != n {
				return fmt.Errorf("gguf: write: tensor %q: filled %d bytes, shape %v of %s needs %d", t.Name, len(data), t.Shape, t.Type, n)
			}
		}
		hw.raw(data)
		hw.pad(align)
	}
	if hw.err != nil {
		return fmt.Errorf("gguf: write: %w", hw.err)
	}
	if err := hw.w.Flush(); err != nil {
		return fmt.Errorf("gguf: write: %w", err)
	}
	return nil
}

// WriteFile writes the file to path (created or truncated); on error the
// partial file is removed.
func WriteFile(path string, meta Metadata, tensors []WriteTensor) (err error) {
	fh, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	defer func() {
		if cerr := fh.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("gguf: %w", cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if err := Write(fh, meta, tensors); err != nil {
		return fmt.Errorf("%w (writing %s)", err, path)
	}
	return nil
}

// dataSize checks a tensor to write and returns its data size.
func dataSize(t WriteTensor) (uint64, error) {
	if t.Name == "" || len(t.Name) > MaxNameLen {
		return 0, fmt.Errorf("gguf: write: tensor name %q is empty or longer than %d bytes", t.Name, MaxNameLen)
	}
	if !t.Type.Known() {
		return 0, fmt.Errorf("gguf: write: tensor %q: unknown type %d", t.Name, uint32(t.Type))
	}
	if len(t.Shape) > MaxDims {
		return 0, fmt.Errorf("gguf: write: tensor %q: shape %v has more than %d dimensions", t.Name, t.Shape, MaxDims)
	}
	n := 1
	for _, d := range t.Shape {
		if d < 0 || (d > 0 && n > math.MaxInt/d) {
			return 0, fmt.Errorf("gguf: write: tensor %q: bad shape %v", t.Name, t.Shape)
		}
		n *= d
	}
	inner := 1
	if len(t.Shape) > 0 {
		inner = t.Shape[len(t.Shape)-1]
	}
	if _, ok := t.Type.RowBytes(inner); !ok {
		return 0, fmt.Errorf("gguf: write: tensor %q: rows of %d elements (shape %v) are not whole %d-element blocks of %s", t.Name, inner, t.Shape, t.Type.BlockSize(), t.Type)
	}
	size, _ := t.Type.RowBytes(n)
	return uint64(size), nil
}

// encoder writes little-endian fields and keeps the first error.
type encoder struct {
	w   *bufio.Writer
	n   uint64
	err error
}

func (e *encoder) raw(b []byte) {
	if e.err != nil {
		return
	}
	_, e.err = e.w.Write(b)
	e.n += uint64(len(b))
}

func (e *encoder) u32(v uint32) { e.raw(binary.LittleEndian.AppendUint32(nil, v)) }
func (e *encoder) u64(v uint64) { e.raw(binary.LittleEndian.AppendUint64(nil, v)) }
func (e *encoder) str(s string) { e.u64(uint64(len(s))); e.raw([]byte(s)) }

func (e *encoder) pad(align uint64) {
	if k := alignUp(e.n, align) - e.n; k > 0 {
		e.raw(make([]byte, k))
	}
}

func (e *encoder) value(v Value) error {
	le := binary.LittleEndian
	switch x := v.x.(type) {
	case uint8:
		e.raw([]byte{x})
	case int8:
		e.raw([]byte{byte(x)})
	case uint16:
		e.raw(le.AppendUint16(nil, x))
	case int16:
		e.raw(le.AppendUint16(nil, uint16(x)))
	case uint32:
		e.u32(x)
	case int32:
		e.u32(uint32(x))
	case float32:
		e.u32(math.Float32bits(x))
	case bool:
		b := byte(0)
		if x {
			b = 1
		}
		e.raw([]byte{b})
	case string:
		e.str(x)
	case uint64:
		e.u64(x)
	case int64:
		e.u64(uint64(x))
	case float64:
		e.u64(math.Float64bits(x))
	default:
		if v.Type != TypeArray {
			return fmt.Errorf("value of type %s holds %T", v.Type, v.x)
		}
		e.u32(uint32(v.Elem))
		e.u64(uint64(v.Len()))
		// Elements carry no type of their own; nested arrays write their
		// element type and count.
		for i := range v.Len() {
			if err := e.value(v.Index(i)); err != nil {
				return err
			}
		}
	}
	if v.Type != TypeArray && v.x == nil {
		return fmt.Errorf("empty value")
	}
	return nil
}
