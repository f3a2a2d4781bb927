package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"

	"github.com/zimage/zimage/model/gguf"
	"github.com/zimage/zimage/model/internal/mmap"
	"github.com/zimage/zimage/model/safetensors"
)

// This file derives Source entries from checkpoint tensors, plain or
// block-quantized: whole tensors, row ranges of fused q/k/v tensors,
// reshapes and transposes. A quantized entry keeps its ggml blocks (Quant,
// raw bytes in row-major order of Shape) wherever the result is still
// whole blocks, so a later quantized kernel reads the file's bytes; where
// it is not (a row range cutting blocks, a transpose), the entry holds the
// exact dequantized values as F32 instead.
//
// On the device, Param.Upload decodes a quantized entry for now and stores
// it as Param.DType (F16 matrices). The quantized-kernel work is meant to
// upload Bytes unchanged as a tensor of a block type wherever every GEMM
// row is whole blocks (a Linear [out, in] needs in % BlockSize == 0, a conv
// [out, in, kh, kw] in*kh*kw % BlockSize == 0; ComfyUI's flattened tensors
// may not qualify) and decode the rest. A LoRA term belongs beside such a
// weight as its own low-rank pair added in the forward pass, never merged
// into the blocks.

// tensorEntry is a whole safetensors tensor as an entry.
func tensorEntry(key string, t *safetensors.Tensor, file string) *Entry {
	return &Entry{Key: key, DType: t.DType, Shape: append([]int(nil), t.Shape...), File: file, data: t.Data, mapped: true}
}

// ggufEntry is a whole GGUF tensor as an entry: plain types as the
// safetensors dtypes, block types as Quant (types gguf cannot decode too:
// the file still opens, and a network that asks for such a tensor gets a
// named error from Weights.Param). shape is the logical (torch) shape,
// normally the reversed ggml dims.
func ggufEntry(key string, t *gguf.Tensor, file string, shape []int) *Entry {
	e := &Entry{Key: key, Shape: shape, File: file, data: t.Data, mapped: true}
	plain := map[gguf.Type]safetensors.DType{gguf.F32: safetensors.F32, gguf.F16: safetensors.F16, gguf.BF16: safetensors.BF16,
		gguf.F64: safetensors.F64, gguf.I8: safetensors.I8, gguf.I16: safetensors.I16, gguf.I32: safetensors.I32, gguf.I64: safetensors.I64}
	if dt, ok := plain[t.Type]; ok {
		e.DType = dt
	} else {
		e.Quant = t.Type
	}
	return e
}

// Quantized reports whether the entry holds ggml blocks (see Quant).
func (e *Entry) Quantized() bool { return e.Quant.Quantized() }

// TypeName is the stored element type: the dtype, or the ggml block type.
func (e *Entry) TypeName() string {
	if e.Quantized() {
		return e.Quant.String()
	}
	return string(e.DType)
}

// StoredBytes is the size of the entry's data as stored.
func (e *Entry) StoredBytes() int64 {
	if e.Quantized() {
		n, _ := e.Quant.RowBytes(e.NumElem())
		return int64(n)
	}
	return int64(e.NumElem()) * int64(e.DType.Size())
}

// Float32s decodes the entry's values (quantized ones exactly as ggml
// dequantizes them).
func (e *Entry) Float32s() ([]float32, error) {
	raw := e.Bytes()
	if raw == nil && e.NumElem() > 0 {
		return nil, fmt.Errorf("model: %q in %s: file is closed", e.Key, e.File)
	}
	t := e.Quant
	if !e.Quantized() {
		switch e.DType {
		case safetensors.F32:
			t = gguf.F32
		case safetensors.F16:
			t = gguf.F16
		case safetensors.BF16:
			t = gguf.BF16
		default:
			return nil, fmt.Errorf("model: %q in %s: dtype %s is not a float type", e.Key, e.File, e.DType)
		}
	}
	out := make([]float32, e.NumElem())
	if err := gguf.Dequantize(t, raw, out); err != nil {
		return nil, fmt.Errorf("model: %q in %s: %w", e.Key, e.File, err)
	}
	return out, nil
}

// elemSpan returns the byte range of elements [from, to) of the flat
// data, or ok false when a quantized entry's range cuts a block.
func (e *Entry) elemSpan(from, to int) (lo, hi int, ok bool) {
	if !e.Quantized() {
		s := e.DType.Size()
		return from * s, to * s, true
	}
	lo, okLo := e.Quant.RowBytes(from)
	hi, okHi := e.Quant.RowBytes(to)
	return lo, hi, okLo && okHi
}

// rows returns rows [from, to) of the first axis under key with the given
// shape (whose element count must equal the rows').
func (e *Entry) rows(key string, from, to int, shape []int) (*Entry, error) {
	if len(e.Shape) == 0 || from < 0 || to > e.Shape[0] || from >= to {
		return nil, fmt.Errorf("model: %s in %s: rows [%d,%d) out of range of %v", e.Key, e.File, from, to, e.Shape)
	}
	row := e.NumElem() / e.Shape[0]
	out := &Entry{Key: key, DType: e.DType, Quant: e.Quant, Shape: shape, File: e.File, mapped: e.mapped}
	if out.NumElem() != (to-from)*row {
		return nil, fmt.Errorf("model: %s in %s: shape %v does not match rows [%d,%d)", e.Key, e.File, shape, from, to)
	}
	lo, hi, ok := e.elemSpan(from*row, to*row)
	if !ok {
		// The rows start or end inside a block: decode them (once, on
		// first read) and keep exact float32 values.
		return e.decoded(out, func(v []float32) []float32 { return v[from*row : to*row] }), nil
	}
	src := e.data
	out.data = func() []byte {
		b := src()
		if len(b) < hi {
			return nil // file closed
		}
		return b[lo:hi]
	}
	return out, nil
}

// transposed returns the transpose of a matrix under key. The copy is made
// on first read and kept, so opening stays free of reads; it is small
// (SDXL's 1280x1280 projection is 3 MiB in F16). A quantized matrix is
// decoded first (its blocks run along the other axis).
func (e *Entry) transposed(key string) *Entry {
	rows, cols := e.Shape[0], e.Shape[1]
	out := &Entry{Key: key, DType: e.DType, Shape: []int{cols, rows}, File: e.File}
	if e.Quantized() {
		return e.decoded(out, func(v []float32) []float32 {
			t := make([]float32, len(v))
			for r := range rows {
				for c := range cols {
					t[c*rows+r] = v[r*cols+c]
				}
			}
			return t
		})
	}
	size := e.DType.Size()
	src := e.data
	out.cache(func() []byte {
		in := src()
		if len(in) != rows*cols*size {
			return nil // file closed: nil, like an untransposed entry
		}
		return transpose(in, rows, cols, size)
	})
	return out
}

// cache makes out's data compute(), computed on first read and kept until
// release drops it (a nil result, a closed file, is not kept).
func (out *Entry) cache(compute func() []byte) {
	var mu sync.Mutex
	var data []byte
	out.data = func() []byte {
		mu.Lock()
		defer mu.Unlock()
		if data == nil {
			data = compute()
		}
		return data
	}
	out.drop = func() {
		mu.Lock()
		data = nil
		mu.Unlock()
	}
	out.mapped = false
}

// release drops the entry's host copy: the pages of a memory-mapped
// tensor (they stay in the page cache and fault back in on the next read),
// and with computed set a copy computed on first read.
func (e *Entry) release(computed bool) {
	switch {
	case e.mapped:
		mmap.Release(e.data())
	case computed && e.drop != nil:
		e.drop()
	}
}

// decoded makes out an F32 entry holding pick(e's decoded values),
// computed on first read and kept.
func (e *Entry) decoded(out *Entry, pick func([]float32) []float32) *Entry {
	out.DType, out.Quant = safetensors.F32, 0
	out.cache(func() []byte {
		v, err := e.Float32s()
		if err != nil {
			return nil // file closed
		}
		return float32Bytes(pick(v))
	})
	return out
}

func float32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return b
}

// addMapped adds checkpoint tensor t (an entry under its file name) to src
// under its canonical key(s), converting as the name table says.
func addMapped(src *Source, keys []string, conv conversion, t *Entry) error {
	name := t.Key
	switch conv {
	case convCopy:
		src.entries[keys[0]] = t.renamed(keys[0])
	case convLinearFrom1x1:
		s := t.Shape
		switch {
		case len(s) == 2:
			src.entries[keys[0]] = t.renamed(keys[0])
		case len(s) == 4 && s[2] == 1 && s[3] == 1:
			r, err := t.rows(keys[0], 0, s[0], []int{s[0], s[1]})
			if err != nil {
				return err
			}
			src.entries[keys[0]] = r
		default:
			return fmt.Errorf("model: %q in %s: shape %v, want a 1x1 convolution [out, in, 1, 1] or a matrix", name, t.File, s)
		}
	case convSplitQKV:
		if len(t.Shape) == 0 || t.Shape[0]%3 != 0 {
			return fmt.Errorf("model: %q in %s: shape %v, want a fused q/k/v tensor of 3*D rows", name, t.File, t.Shape)
		}
		d := t.Shape[0] / 3
		shape := append([]int{d}, t.Shape[1:]...)
		for i, k := range keys {
			r, err := t.rows(k, i*d, (i+1)*d, shape)
			if err != nil {
				return err
			}
			src.entries[k] = r
		}
	case convTranspose:
		if len(t.Shape) != 2 {
			return fmt.Errorf("model: %q in %s: shape %v, want a matrix", name, t.File, t.Shape)
		}
		src.entries[keys[0]] = t.transposed(keys[0])
	}
	return nil
}

// renamed is a copy of e under key.
func (e *Entry) renamed(key string) *Entry {
	c := *e
	c.Key = key
	return &c
}
