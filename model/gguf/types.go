package gguf

import (
	"fmt"
	"strings"
)

// Type is a ggml tensor type (enum ggml_type in ggml.h; the numbers are
// the file format's).
type Type uint32

// The ggml types. Values 4, 5, 31-33 and 36-38 were removed from ggml and
// are not valid in files.
const (
	F32     Type = 0
	F16     Type = 1
	Q4_0    Type = 2
	Q4_1    Type = 3
	Q5_0    Type = 6
	Q5_1    Type = 7
	Q8_0    Type = 8
	Q8_1    Type = 9
	Q2_K    Type = 10
	Q3_K    Type = 11
	Q4_K    Type = 12
	Q5_K    Type = 13
	Q6_K    Type = 14
	Q8_K    Type = 15
	IQ2_XXS Type = 16
	IQ2_XS  Type = 17
	IQ3_XXS Type = 18
	IQ1_S   Type = 19
	IQ4_NL  Type = 20
	IQ3_S   Type = 21
	IQ2_S   Type = 22
	IQ4_XS  Type = 23
	I8      Type = 24
	I16     Type = 25
	I32     Type = 26
	I64     Type = 27
	F64     Type = 28
	IQ1_M   Type = 29
	BF16    Type = 30
	TQ1_0   Type = 34
	TQ2_0   Type = 35
	MXFP4   Type = 39
	NVFP4   Type = 40
	Q1_0    Type = 41
	Q2_0    Type = 42
)

// QK_K is the super-block size of the K-quants.
const QK_K = 256

// typeInfo is a type's name, elements per block and bytes per block (from
// ggml's type_traits and the block structs of ggml-common.h), and whether
// this package decodes it.
type typeInfo struct {
	name       string
	block      int
	bytes      int
	dequantize bool
}

var types = map[Type]typeInfo{
	F32:     {"F32", 1, 4, true},
	F16:     {"F16", 1, 2, true},
	BF16:    {"BF16", 1, 2, true},
	Q4_0:    {"Q4_0", 32, 2 + 16, true},
	Q4_1:    {"Q4_1", 32, 2 + 2 + 16, true},
	Q5_0:    {"Q5_0", 32, 2 + 4 + 16, true},
	Q5_1:    {"Q5_1", 32, 2 + 2 + 4 + 16, true},
	Q8_0:    {"Q8_0", 32, 2 + 32, true},
	Q2_K:    {"Q2_K", QK_K, QK_K/16 + QK_K/4 + 2 + 2, true},
	Q3_K:    {"Q3_K", QK_K, QK_K/8 + QK_K/4 + 12 + 2, true},
	Q4_K:    {"Q4_K", QK_K, 2 + 2 + 12 + QK_K/2, true},
	Q5_K:    {"Q5_K", QK_K, 2 + 2 + 12 + QK_K/8 + QK_K/2, true},
	Q6_K:    {"Q6_K", QK_K, QK_K/2 + QK_K/4 + QK_K/16 + 2, true},
	Q8_1:    {"Q8_1", 32, 2 + 2 + 32, false},
	Q8_K:    {"Q8_K", QK_K, 4 + QK_K + 2*QK_K/16, false},
	IQ2_XXS: {"IQ2_XXS", QK_K, 2 + QK_K/4, false},
	IQ2_XS:  {"IQ2_XS", QK_K, 2 + QK_K/4 + QK_K/32, false},
	IQ3_XXS: {"IQ3_XXS", QK_K, 2 + 3*QK_K/8, false},
	IQ1_S:   {"IQ1_S", QK_K, 2 + QK_K/8 + QK_K/16, false},
	IQ4_NL:  {"IQ4_NL", 32, 2 + 16, false},
	IQ3_S:   {"IQ3_S", QK_K, 2 + 13*QK_K/32 + QK_K/64, false},
	IQ2_S:   {"IQ2_S", QK_K, 2 + QK_K/4 + QK_K/16, false},
	IQ4_XS:  {"IQ4_XS", QK_K, 2 + 2 + QK_K/64 + QK_K/2, false},
	I8:      {"I8", 1, 1, false},
	I16:     {"I16", 1, 2, false},
	I32:     {"I32", 1, 4, false},
	I64:     {"I64", 1, 8, false},
	F64:     {"F64", 1, 8, false},
	IQ1_M:   {"IQ1_M", QK_K, QK_K/8 + QK_K/16 + QK_K/32, false},
	TQ1_0:   {"TQ1_0", QK_K, 2 + QK_K/64 + (QK_K-4*QK_K/64)/5, false},
	TQ2_0:   {"TQ2_0", QK_K, 2 + QK_K/4, false},
	MXFP4:   {"MXFP4", 32, 1 + 16, false},
	NVFP4:   {"NVFP4", 64, 4 + 32, false},
	Q1_0:    {"Q1_0", 128, 2 + 16, false},
	Q2_0:    {"Q2_0", 64, 2 + 16, false},
}

// String is ggml's name in upper case ("Q4_K"), or "Type(n)".
func (t Type) String() string {
	if ti, ok := types[t]; ok {
		return ti.name
	}
	return fmt.Sprintf("Type(%d)", uint32(t))
}

// Known reports whether t is a type a file may hold (its layout is known,
// even if this package does not decode it).
func (t Type) Known() bool { _, ok := types[t]; return ok }

// Supported reports whether Dequantize decodes t.
func (t Type) Supported() bool { return types[t].dequantize }

// BlockSize is the number of elements per block (1 for plain types, 0 for
// unknown ones).
func (t Type) BlockSize() int { return types[t].block }

// BlockBytes is the size of one block in bytes (0 for unknown types).
func (t Type) BlockBytes() int { return types[t].bytes }

// Quantized reports whether t stores blocks of several elements.
func (t Type) Quantized() bool { return types[t].block > 1 }

// RowBytes is the size of n elements of t: n/BlockSize whole blocks. ok is
// false when n is not a whole number of blocks.
func (t Type) RowBytes(n int) (bytes int, ok bool) {
	ti := types[t]
	if ti.block == 0 || n < 0 || n%ti.block != 0 {
		return 0, false
	}
	return n / ti.block * ti.bytes, true
}

// SupportedTypes lists the types Dequantize decodes, in enum order.
func SupportedTypes() []Type {
	var out []Type
	for t := Type(0); t <= Q2_0; t++ {
		if t.Supported() {
			out = append(out, t)
		}
	}
	return out
}

// ParseType reads a type name, case-insensitively ("q4_k", "Q8_0", "f16").
func ParseType(name string) (Type, error) {
	for t, ti := range types {
		if strings.EqualFold(ti.name, name) {
			return t, nil
		}
	}
	return 0, fmt.Errorf("gguf: unknown tensor type %q", name)
}
