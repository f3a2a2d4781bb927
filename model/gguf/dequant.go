package gguf

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/zimage/zimage/engine"
)

// This file decodes every supported type exactly as ggml's
// dequantize_row_* (ggml-quants.c) does on a CPU without fused
// multiply-add; the block decoders live in package engine (quant.go),
// where the reference backend and the kernels' tests share them.

// Dequantize decodes len(dst) elements of type t from src, which must hold
// exactly those elements (whole blocks). The block types decode through
// engine.Dequantize, the decoder every backend's kernels follow.
func Dequantize(t Type, src []byte, dst []float32) error {
	if !t.Supported() {
		return fmt.Errorf("gguf: dequantize: type %s is not supported", t)
	}
	need, ok := t.RowBytes(len(dst))
	if !ok {
		return fmt.Errorf("gguf: dequantize %s: %d elements are not whole %d-element blocks", t, len(dst), t.BlockSize())
	}
	if len(src) != need {
		return fmt.Errorf("gguf: dequantize %s: %d bytes for %d elements, want %d", t, len(src), len(dst), need)
	}
	switch t {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
		return nil
	case F16:
		for i := range dst {
			dst[i] = HalfToFloat(binary.LittleEndian.Uint16(src[2*i:]))
		}
		return nil
	case BF16:
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16)
		}
		return nil
	}
	dt, _ := t.DType()
	if err := engine.Dequantize(dt, src, dst); err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	return nil
}

// blockDTypes pairs the block types zimage decodes with the engine's
// dtypes of the same layout.
var blockDTypes = map[Type]engine.DType{
	Q4_0: engine.Q4_0, Q4_1: engine.Q4_1, Q5_0: engine.Q5_0, Q5_1: engine.Q5_1, Q8_0: engine.Q8_0,
	Q2_K: engine.Q2_K, Q3_K: engine.Q3_K, Q4_K: engine.Q4_K, Q5_K: engine.Q5_K, Q6_K: engine.Q6_K,
}

// DType is the engine dtype that holds t's blocks unchanged; false for
// plain types and block types the engine does not know.
func (t Type) DType() (engine.DType, bool) {
	d, ok := blockDTypes[t]
	return d, ok
}

// TypeOf is the ggml type of an engine block dtype; false for others.
func TypeOf(d engine.DType) (Type, bool) {
	for t, x := range blockDTypes {
		if x == d {
			return t, true
		}
	}
	return 0, false
}

// Float32s decodes a whole tensor.
func Float32s(t *Tensor) ([]float32, error) {
	b := t.Data()
	if b == nil && t.Size > 0 {
		return nil, fmt.Errorf("gguf: tensor %q: file is closed", t.Name)
	}
	out := make([]float32, t.NumElem())
	if err := Dequantize(t.Type, b, out); err != nil {
		return nil, fmt.Errorf("gguf: tensor %q: %w", t.Name, err)
	}
	return out, nil
}

// HalfToFloat converts IEEE binary16 bits to float32 (exact).
func HalfToFloat(h uint16) float32 { return engine.HalfToFloat(h) }

// FloatToHalf converts a float32 to IEEE binary16 bits, rounding to
// nearest even (ggml's GGML_FP32_TO_FP16 and F16C do the same).
func FloatToHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	man := b & 0x7fffff
	if exp == 0xff {
		if man != 0 {
			return sign | 0x7e00 | uint16(man>>13)
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	switch {
	case e >= 0x1f:
		return sign | 0x7c00
	case e <= 0:
		if e < -11 {
			return sign
		}
		// Subnormal half: the 24-bit significand times 2^(e-14).
		m := man | 0x800000
		shift := uint32(14 - e)
		h := m >> shift
		rem, mid := m&(1<<shift-1), uint32(1)<<(shift-1)
		if rem > mid || (rem == mid && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | man>>13
	rem := man & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // a carry into the exponent is right, up to infinity
	}
	return sign | uint16(h)
}

func half(b []byte) float32 { return HalfToFloat(binary.LittleEndian.Uint16(b)) }

// scaleMinK4 is ggml's get_scale_min_k4 (engine's Q4_K decoder has the
// same): scale and min j of the 12 packed bytes of a Q4_K or Q5_K block.
func scaleMinK4(j int, q []byte) (sc, m uint8) {
	if j < 4 {
		return q[j] & 63, q[j+4] & 63
	}
	return q[j+4]&0x0f | (q[j-4]>>6)<<4, q[j+4]>>4 | (q[j]>>6)<<4
}
