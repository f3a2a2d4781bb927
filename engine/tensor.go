// Package engine defines the tensor types and the Backend interface of typed
// ops that every compute backend (the pure-Go reference in engine/ref, Vulkan
// in engine/vk) implements. It uses the standard library only.
package engine

import (
	"fmt"
	"strings"
)

// DType is the storage type of a tensor's elements. Arithmetic always
// accumulates in float32; F16 and the block-quantized types (quant.go)
// are storage formats.
type DType uint8

const (
	F32 DType = iota
	F16
	// Block-quantized weight types: ggml's block formats, bytes unchanged
	// (see quant.go). A tensor of one holds whole blocks in row-major
	// order; element offsets and row lengths are multiples of BlockSize.
	Q4_0
	Q4_1
	Q5_0
	Q5_1
	Q8_0
	Q2_K
	Q3_K
	Q4_K
	Q5_K
	Q6_K
)

// Size is the number of bytes one element of a plain type occupies, and 0
// for a block-quantized type (whose size is per block: RowBytes).
func (d DType) Size() int {
	switch d {
	case F32:
		return 4
	case F16:
		return 2
	}
	return 0
}

func (d DType) String() string {
	switch d {
	case F32:
		return "F32"
	case F16:
		return "F16"
	}
	if l, ok := blockLayouts[d]; ok {
		return l.name
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Shape lists a tensor's dimensions, outermost first (row-major layout).
type Shape []int

// NumElem is the product of the dimensions (1 for a scalar).
func (s Shape) NumElem() int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// Equal reports whether two shapes have the same dimensions.
func (s Shape) Equal(o Shape) bool {
	if len(s) != len(o) {
		return false
	}
	for i := range s {
		if s[i] != o[i] {
			return false
		}
	}
	return true
}

// Clone returns a copy that does not alias s.
func (s Shape) Clone() Shape { return append(Shape(nil), s...) }

func (s Shape) String() string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// Valid reports an error when a dimension is not positive.
func (s Shape) Valid() error {
	for _, d := range s {
		if d <= 0 {
			return fmt.Errorf("engine: shape %v has a non-positive dimension", s)
		}
	}
	return nil
}

// Tensor is a contiguous row-major array of elements that lives in a
// backend's memory. Storage is the backend's own handle; Offset counts
// elements from the start of that storage, so views (Reshape, SliceRows)
// share it without copying.
type Tensor struct {
	Name    string
	DType   DType
	Shape   Shape
	Storage any
	Offset  int
	view    bool
}

// NumElem is the number of elements in the tensor.
func (t *Tensor) NumElem() int { return t.Shape.NumElem() }

// Bytes is the number of bytes the tensor's elements occupy.
func (t *Tensor) Bytes() int64 { return t.DType.RowBytes(t.NumElem()) }

// ByteOffset is the byte offset of the tensor's first element in its
// storage.
func (t *Tensor) ByteOffset() int64 { return t.DType.RowBytes(t.Offset) }

// IsView reports whether the tensor borrows another tensor's storage.
// Freeing a view is a no-op; the owner must outlive its views.
func (t *Tensor) IsView() bool { return t.view }

func (t *Tensor) String() string {
	return fmt.Sprintf("%s %s%v", t.Name, t.DType, t.Shape)
}

// Reshape returns a view with the same elements and a new shape.
func (t *Tensor) Reshape(shape ...int) (*Tensor, error) {
	s := Shape(shape)
	if err := s.Valid(); err != nil {
		return nil, fmt.Errorf("engine: reshape %s: %w", t.Name, err)
	}
	if s.NumElem() != t.NumElem() {
		return nil, fmt.Errorf("engine: reshape %s from %v to %v changes the element count", t.Name, t.Shape, s)
	}
	return &Tensor{Name: t.Name, DType: t.DType, Shape: s, Storage: t.Storage, Offset: t.Offset, view: true}, nil
}

// SliceRows returns a view of rows [from, to) along the first axis.
func (t *Tensor) SliceRows(from, to int) (*Tensor, error) {
	if len(t.Shape) == 0 || from < 0 || to > t.Shape[0] || from >= to {
		return nil, fmt.Errorf("engine: slice %s%v rows [%d,%d) out of range", t.Name, t.Shape, from, to)
	}
	row := t.NumElem() / t.Shape[0]
	if bs := t.DType.BlockSize(); bs > 1 && row%bs != 0 {
		return nil, fmt.Errorf("engine: slice %s%v: rows of %d elements are not whole %d-element %s blocks", t.Name, t.Shape, row, bs, t.DType)
	}
	s := t.Shape.Clone()
	s[0] = to - from
	return &Tensor{Name: fmt.Sprintf("%s[%d:%d]", t.Name, from, to), DType: t.DType, Shape: s,
		Storage: t.Storage, Offset: t.Offset + from*row, view: true}, nil
}

// ShapeError reports an op called with tensors of the wrong shape or type.
type ShapeError struct {
	Op     string
	Tensor string
	Got    string
	Want   string
}

func (e *ShapeError) Error() string {
	return fmt.Sprintf("engine: %s: %s is %s, want %s", e.Op, e.Tensor, e.Got, e.Want)
}

// WantShape returns a *ShapeError when t's shape differs from want.
func WantShape(op string, t *Tensor, want ...int) error {
	if t == nil {
		return &ShapeError{Op: op, Tensor: "<nil>", Got: "nil", Want: Shape(want).String()}
	}
	if !t.Shape.Equal(want) {
		return &ShapeError{Op: op, Tensor: t.Name, Got: t.Shape.String(), Want: Shape(want).String()}
	}
	return nil
}

// WantDType returns a *ShapeError when t's dtype is not one of want.
func WantDType(op string, t *Tensor, want ...DType) error {
	for _, d := range want {
		if t.DType == d {
			return nil
		}
	}
	names := make([]string, len(want))
	for i, d := range want {
		names[i] = d.String()
	}
	return &ShapeError{Op: op, Tensor: t.Name, Got: t.DType.String(), Want: strings.Join(names, " or ")}
}
