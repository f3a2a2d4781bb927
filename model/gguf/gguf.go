// Package gguf reads GGUF files (ggml's model format, versions 2 and 3)
// through a read-only memory map, decodes every ggml tensor type zimage
// runs (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K-Q6_K) bit for
// bit as ggml's dequantize_row_* does, quantizes to Q8_0, Q4_0, Q4_1,
// Q5_0, Q5_1 and Q4_K as ggml's quantize_row_*_ref does, and writes files.
//
// Opening a file parses and validates its header only: whatever the
// bytes, Open either succeeds with every tensor's data inside the file,
// aligned and apart from the others, or returns a *FormatError; it never
// panics. Tensor bytes are paged in when a caller touches them.
//
// Format (little-endian): "GGUF", version, tensor count, key/value count,
// the key/values (typed, arrays too), one info per tensor (name, ggml dims
// innermost first, type, data offset), padding to general.alignment
// (default 32), then the data section. ggml's dims are the reverse of a
// torch shape: Tensor.Shape gives the torch order.
package gguf

import (
	"fmt"
	"sort"

	"github.com/zimage/zimage/model/internal/mmap"
)

// Tensor describes one tensor of a file; Data returns its bytes.
type Tensor struct {
	Name   string
	Type   Type
	Dims   []uint64 // ggml ne: innermost first
	Offset uint64   // of the data, relative to the data section
	Size   int64    // bytes of data
	file   *File
}

// Shape is the torch-order shape (Dims reversed); validated at open to fit
// int.
func (t *Tensor) Shape() []int {
	s := make([]int, len(t.Dims))
	for i, d := range t.Dims {
		s[len(s)-1-i] = int(d)
	}
	return s
}

// NumElem is the element count (validated at open not to overflow).
func (t *Tensor) NumElem() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= int64(d)
	}
	return n
}

// Data returns the tensor's raw bytes straight from the mapping (no copy),
// or nil once the file is closed; the slice must not be used after Close.
func (t *Tensor) Data() []byte {
	f := t.file
	if f == nil || f.mem == nil {
		return nil
	}
	b := f.dataStart + int64(t.Offset)
	return f.mem[b : b+t.Size : b+t.Size]
}

// File is an open GGUF file.
type File struct {
	Path      string
	Version   int
	Metadata  Metadata
	Alignment int
	mem       []byte
	mapped    bool
	dataStart int64
	tensors   map[string]*Tensor
	names     []string
}

// Open maps path read-only and parses its header.
func Open(path string) (*File, error) {
	mem, err := mmap.Map(path)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	f, err := parse(path, mem)
	if err != nil {
		mmap.Unmap(mem)
		return nil, err
	}
	f.mapped = true
	return f, nil
}

// FromBytes parses a GGUF image held in memory; name is used in messages.
// Tensor data aliases b.
func FromBytes(name string, b []byte) (*File, error) { return parse(name, b) }

// IsGGUF reports whether b (a file's first bytes) starts with the GGUF
// magic.
func IsGGUF(b []byte) bool { return len(b) >= 4 && string(b[:4]) == Magic }

// Names lists the tensor names in sorted order.
func (f *File) Names() []string { return f.names }

// Tensor returns the named tensor, or nil.
func (f *File) Tensor(name string) *Tensor { return f.tensors[name] }

// Tensors lists the tensors in name order.
func (f *File) Tensors() []*Tensor {
	out := make([]*Tensor, len(f.names))
	for i, n := range f.names {
		out[i] = f.tensors[n]
	}
	return out
}

// Size is the size of the file in bytes.
func (f *File) Size() int64 { return int64(len(f.mem)) }

// Close unmaps the file; tensor data slices become invalid and Data returns
// nil from then on. Closing twice is a no-op.
func (f *File) Close() error {
	if f.mem == nil {
		return nil
	}
	mem, mapped := f.mem, f.mapped
	f.mem = nil
	if !mapped {
		return nil
	}
	if err := mmap.Unmap(mem); err != nil {
		return fmt.Errorf("gguf: munmap %s: %w", f.Path, err)
	}
	return nil
}

func (f *File) index(list []*Tensor) {
	f.tensors = make(map[string]*Tensor, len(list))
	f.names = make([]string, 0, len(list))
	for _, t := range list {
		f.tensors[t.Name] = t
		f.names = append(f.names, t.Name)
	}
	sort.Strings(f.names)
}
