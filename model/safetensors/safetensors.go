// Package safetensors reads safetensors files through a read-only memory
// map: opening a file parses and validates only its header, and tensor bytes
// are paged in from the mapping when a caller touches them. Whatever the
// bytes, opening a file either succeeds with every tensor's byte range inside
// the data section, or returns a *FormatError; it never panics.
//
// Format: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
// (an object of tensor name -> {dtype, shape, data_offsets}, plus an
// optional "__metadata__" string map), then the data section, which the
// tensors must tile exactly (no overlaps, no holes).
package safetensors

import (
	"fmt"
	"sort"

	"github.com/zimage/zimage/model/internal/mmap"
)

// DType is a safetensors element type.
type DType string

const (
	F16    DType = "F16"
	BF16   DType = "BF16"
	F32    DType = "F32"
	F64    DType = "F64"
	I64    DType = "I64"
	I32    DType = "I32"
	I16    DType = "I16"
	I8     DType = "I8"
	U64    DType = "U64"
	U32    DType = "U32"
	U16    DType = "U16"
	U8     DType = "U8"
	BOOL   DType = "BOOL"
	F8E4M3 DType = "F8_E4M3"
	F8E5M2 DType = "F8_E5M2"
	F8E8M0 DType = "F8_E8M0"
	F4     DType = "F4" // not byte-sized: Size reports 0, so files using it are rejected
)

// Size is the element size in bytes, or 0 for a dtype this package cannot
// address (unknown, or packed sub-byte types).
func (d DType) Size() int {
	switch d {
	case F64, I64, U64:
		return 8
	case F32, I32, U32:
		return 4
	case F16, BF16, I16, U16:
		return 2
	case I8, U8, BOOL, F8E4M3, F8E5M2, F8E8M0:
		return 1
	}
	return 0
}

// IsFloat reports whether the dtype is one Float32s decodes.
func (d DType) IsFloat() bool {
	switch d {
	case F16, BF16, F32, F64:
		return true
	}
	return false
}

// Tensor describes one tensor of a file; Data returns its bytes.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Begin int64 // byte offsets relative to the data section
	End   int64
	file  *File
}

// NumElem is the product of the shape's dimensions (validated at open not
// to overflow).
func (t *Tensor) NumElem() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= int64(d)
	}
	return n
}

// Bytes is the size of the tensor's data.
func (t *Tensor) Bytes() int64 { return t.End - t.Begin }

// Data returns the tensor's raw little-endian bytes, straight from the
// mapping (no copy). It returns nil once the file is closed; the slice must
// not be used after Close.
func (t *Tensor) Data() []byte {
	f := t.file
	if f == nil || f.mem == nil {
		return nil
	}
	base := f.dataStart
	return f.mem[base+t.Begin : base+t.End : base+t.End]
}

// File is an open safetensors file.
type File struct {
	Path      string
	Metadata  map[string]string // nil when the header has none
	HeaderLen int64             // bytes of JSON header (after the 8-byte length)
	Size      int64             // bytes of the whole file
	mem       []byte
	mapped    bool // mem is an mmap to release on Close
	dataStart int64
	tensors   map[string]*Tensor
	names     []string
}

// Open maps path read-only and parses its header. Nothing beyond the header
// is read.
func Open(path string) (*File, error) {
	mem, err := mmap.Map(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	if len(mem) < 8 {
		mmap.Unmap(mem)
		return nil, &FormatError{Path: path, Kind: KindShortFile,
			Reason: fmt.Sprintf("file is %d bytes, shorter than the 8-byte header length", len(mem))}
	}
	f, err := parse(path, mem)
	if err != nil {
		mmap.Unmap(mem)
		return nil, err
	}
	f.mapped = true
	return f, nil
}

// FromBytes parses a safetensors image held in memory; name is used in
// messages. Tensor data aliases b.
func FromBytes(name string, b []byte) (*File, error) {
	if len(b) < 8 {
		return nil, &FormatError{Path: name, Kind: KindShortFile,
			Reason: fmt.Sprintf("file is %d bytes, shorter than the 8-byte header length", len(b))}
	}
	return parse(name, b)
}

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
		return fmt.Errorf("safetensors: munmap %s: %w", f.Path, err)
	}
	return nil
}

func (f *File) index(list []*Tensor) {
	f.tensors = make(map[string]*Tensor, len(list))
	f.names = make([]string, 0, len(list))
	for _, t := range list {
		t.file = f
		f.tensors[t.Name] = t
		f.names = append(f.names, t.Name)
	}
	sort.Strings(f.names)
}
