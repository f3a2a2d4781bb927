// Package safetensors reads safetensors files through a read-only memory
// map: opening a file parses only its header, and tensor bytes are paged in
// from the mapping when a caller touches them.
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"syscall"
)

// DType is a safetensors element type.
type DType string

const (
	F16  DType = "F16"
	BF16 DType = "BF16"
	F32  DType = "F32"
	F64  DType = "F64"
	I64  DType = "I64"
	I32  DType = "I32"
	I16  DType = "I16"
	I8   DType = "I8"
	U8   DType = "U8"
	BOOL DType = "BOOL"
)

// Size is the element size in bytes, or 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case F64, I64:
		return 8
	case F32, I32:
		return 4
	case F16, BF16, I16:
		return 2
	case I8, U8, BOOL:
		return 1
	}
	return 0
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

// NumElem is the product of the shape's dimensions.
func (t *Tensor) NumElem() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= int64(d)
	}
	return n
}

// Data returns the tensor's raw little-endian bytes, straight from the
// mapping (no copy). The slice is valid until the file is closed.
func (t *Tensor) Data() []byte {
	base := t.file.dataStart
	return t.file.mem[base+t.Begin : base+t.End]
}

// File is an open, memory-mapped safetensors file.
type File struct {
	Path      string
	Metadata  map[string]string
	mem       []byte
	dataStart int64
	tensors   map[string]*Tensor
	names     []string
}

// Open maps path and parses its header.
func Open(path string) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	size := st.Size()
	if size < 8 {
		return nil, &FormatError{Path: path, Reason: fmt.Sprintf("file is %d bytes, shorter than the 8-byte header length", size)}
	}
	mem, err := syscall.Mmap(int(fh.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("safetensors: mmap %s: %w", path, err)
	}
	f, err := parse(path, mem)
	if err != nil {
		syscall.Munmap(mem)
		return nil, err
	}
	return f, nil
}

// FormatError reports a malformed file; Tensor is empty for header-level
// problems.
type FormatError struct {
	Path   string
	Tensor string
	Reason string
}

func (e *FormatError) Error() string {
	if e.Tensor != "" {
		return fmt.Sprintf("safetensors: %s: tensor %q: %s", e.Path, e.Tensor, e.Reason)
	}
	return fmt.Sprintf("safetensors: %s: %s", e.Path, e.Reason)
}

func parse(path string, mem []byte) (*File, error) {
	n := binary.LittleEndian.Uint64(mem[:8])
	if n > uint64(len(mem)-8) || n > 100<<20 {
		return nil, &FormatError{Path: path, Reason: fmt.Sprintf("header length %d exceeds the file (%d bytes) or the 100 MiB limit", n, len(mem))}
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(mem[8:8+n], &raw); err != nil {
		return nil, &FormatError{Path: path, Reason: "header is not valid JSON: " + err.Error()}
	}
	f := &File{Path: path, mem: mem, dataStart: int64(8 + n), tensors: map[string]*Tensor{}}
	dataLen := int64(len(mem)) - f.dataStart
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &f.Metadata); err != nil {
				return nil, &FormatError{Path: path, Reason: "__metadata__ is not a string map: " + err.Error()}
			}
			continue
		}
		var h struct {
			DType   DType    `json:"dtype"`
			Shape   []int    `json:"shape"`
			Offsets []uint64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(msg, &h); err != nil {
			return nil, &FormatError{Path: path, Tensor: name, Reason: "bad entry: " + err.Error()}
		}
		if h.DType.Size() == 0 {
			return nil, &FormatError{Path: path, Tensor: name, Reason: fmt.Sprintf("unknown dtype %q", h.DType)}
		}
		if len(h.Offsets) != 2 || h.Offsets[0] > h.Offsets[1] || h.Offsets[1] > uint64(dataLen) {
			return nil, &FormatError{Path: path, Tensor: name, Reason: fmt.Sprintf("data_offsets %v outside the %d-byte data section", h.Offsets, dataLen)}
		}
		t := &Tensor{Name: name, DType: h.DType, Shape: h.Shape, Begin: int64(h.Offsets[0]), End: int64(h.Offsets[1]), file: f}
		if t.NumElem()*int64(h.DType.Size()) != t.End-t.Begin {
			return nil, &FormatError{Path: path, Tensor: name, Reason: fmt.Sprintf("shape %v of %s needs %d bytes, data_offsets span %d", h.Shape, h.DType, t.NumElem()*int64(h.DType.Size()), t.End-t.Begin)}
		}
		f.tensors[name] = t
		f.names = append(f.names, name)
	}
	sort.Strings(f.names)
	return f, nil
}

// Names lists the tensor names in sorted order.
func (f *File) Names() []string { return f.names }

// Tensor returns the named tensor, or nil.
func (f *File) Tensor(name string) *Tensor { return f.tensors[name] }

// Close unmaps the file; tensor data slices become invalid.
func (f *File) Close() error {
	if f.mem == nil {
		return nil
	}
	err := syscall.Munmap(f.mem)
	f.mem = nil
	return err
}
