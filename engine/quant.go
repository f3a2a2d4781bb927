package engine

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Block-quantized weights. A tensor of a block type holds ggml's blocks
// (ggml-common.h's block_q8_0, block_q4_K, ...) unchanged, so a GGUF
// file's bytes upload as they are; backends that run Linear and Conv2d on
// them (BlockSupporter) dequantize in registers. Dequantize is the exact
// decoding every backend follows: ggml's dequantize_row_* on a CPU without
// fused multiply-add, each C operator one float32 rounding. Go may fuse
// x*y+z into an FMA on some architectures; the explicit float32(...)
// conversions below forbid that (the spec's rule for conversions), so the
// results are the same bits everywhere.

// QK_K is the super-block size of the K-quants.
const QK_K = 256

type blockLayout struct {
	name         string
	block, bytes int
}

var blockLayouts = map[DType]blockLayout{
	Q4_0: {"Q4_0", 32, 2 + 16},
	Q4_1: {"Q4_1", 32, 2 + 2 + 16},
	Q5_0: {"Q5_0", 32, 2 + 4 + 16},
	Q5_1: {"Q5_1", 32, 2 + 2 + 4 + 16},
	Q8_0: {"Q8_0", 32, 2 + 32},
	Q2_K: {"Q2_K", QK_K, QK_K/16 + QK_K/4 + 2 + 2},
	Q3_K: {"Q3_K", QK_K, QK_K/8 + QK_K/4 + 12 + 2},
	Q4_K: {"Q4_K", QK_K, 2 + 2 + 12 + QK_K/2},
	Q5_K: {"Q5_K", QK_K, 2 + 2 + 12 + QK_K/8 + QK_K/2},
	Q6_K: {"Q6_K", QK_K, QK_K/2 + QK_K/4 + QK_K/16 + 2},
}

// BlockTypes lists the block-quantized dtypes, in ggml's enum order.
var BlockTypes = []DType{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K}

// Quantized reports whether d is a block type.
func (d DType) Quantized() bool { _, ok := blockLayouts[d]; return ok }

// BlockSize is the number of elements per block: 1 for F32 and F16, 32 or
// 256 for block types, 0 for unknown dtypes.
func (d DType) BlockSize() int {
	if d.Size() > 0 {
		return 1
	}
	return blockLayouts[d].block
}

// BlockBytes is the size of one block (of one element for F32 and F16).
func (d DType) BlockBytes() int {
	if s := d.Size(); s > 0 {
		return s
	}
	return blockLayouts[d].bytes
}

// RowBytes is the size of n elements of d. For a block type n must be a
// multiple of BlockSize (the tensor rules guarantee it); the result is
// rounded down otherwise.
func (d DType) RowBytes(n int) int64 {
	bs := d.BlockSize()
	if bs == 0 {
		return 0
	}
	return int64(n/bs) * int64(d.BlockBytes())
}

// WholeBlocks returns a *ShapeError unless n elements (a GEMM row, say)
// are whole blocks of t's dtype.
func WholeBlocks(op string, t *Tensor, n int, what string) error {
	if bs := t.DType.BlockSize(); bs > 1 && n%bs != 0 {
		return &ShapeError{Op: op, Tensor: t.Name, Got: fmt.Sprintf("%s %v with %s of %d elements", t.DType, t.Shape, what, n),
			Want: fmt.Sprintf("%s of whole %d-element blocks", what, bs)}
	}
	return nil
}

// BlockSupporter is implemented by backends that run Linear (and MatMul's
// transposed b) and Conv2d on weights of block types, and Copy from them.
// Backends that do not implement it take F32 and F16 weights only.
type BlockSupporter interface {
	SupportsBlocks(d DType) bool
}

// SupportsBlocks reports whether b runs weights of block type d.
func SupportsBlocks(b Backend, d DType) bool {
	s, ok := b.(BlockSupporter)
	return ok && d.Quantized() && s.SupportsBlocks(d)
}

// Dequantize decodes len(dst) elements of block type d from src, which
// must hold exactly those elements (whole blocks).
func Dequantize(d DType, src []byte, dst []float32) error {
	l, ok := blockLayouts[d]
	if !ok {
		return fmt.Errorf("engine: dequantize: %v is not a block type", d)
	}
	if len(dst)%l.block != 0 {
		return fmt.Errorf("engine: dequantize %s: %d elements are not whole %d-element blocks", d, len(dst), l.block)
	}
	if need := len(dst) / l.block * l.bytes; len(src) != need {
		return fmt.Errorf("engine: dequantize %s: %d bytes for %d elements, want %d", d, len(src), len(dst), need)
	}
	dec := blockDecoders[d]
	for i := 0; i*l.block < len(dst); i++ {
		dec(src[i*l.bytes:(i+1)*l.bytes], dst[i*l.block:(i+1)*l.block])
	}
	return nil
}

var blockDecoders = map[DType]func(b []byte, y []float32){
	Q4_0: dequantQ4_0, Q4_1: dequantQ4_1, Q5_0: dequantQ5_0, Q5_1: dequantQ5_1, Q8_0: dequantQ8_0,
	Q2_K: dequantQ2_K, Q3_K: dequantQ3_K, Q4_K: dequantQ4_K, Q5_K: dequantQ5_K, Q6_K: dequantQ6_K,
}

// HalfToFloat converts IEEE binary16 bits to float32 (exact).
func HalfToFloat(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
	case man == 0:
		return math.Float32frombits(sign)
	}
	f := float32(man) * (1.0 / (1 << 24)) // subnormal: man * 2^-24, exact
	if sign != 0 {
		f = -f
	}
	return f
}

func half(b []byte) float32 { return HalfToFloat(binary.LittleEndian.Uint16(b)) }

// block_q4_0 {half d; uint8 qs[16]}: element j is the low nibble of qs[j],
// element j+16 the high one; value (q - 8) * d.
func dequantQ4_0(b []byte, y []float32) {
	d := half(b)
	qs := b[2:18]
	for j := range 16 {
		y[j] = float32(int(qs[j]&0x0f)-8) * d
		y[j+16] = float32(int(qs[j]>>4)-8) * d
	}
}

// block_q4_1 {half d, m; uint8 qs[16]}: value q * d + m.
func dequantQ4_1(b []byte, y []float32) {
	d, m := half(b), half(b[2:])
	qs := b[4:20]
	for j := range 16 {
		y[j] = float32(float32(qs[j]&0x0f)*d) + m
		y[j+16] = float32(float32(qs[j]>>4)*d) + m
	}
}

// block_q5_0 {half d; uint8 qh[4]; uint8 qs[16]}: the fifth bit of element
// j is bit j of the little-endian qh; value (q - 16) * d.
func dequantQ5_0(b []byte, y []float32) {
	d := half(b)
	qh := binary.LittleEndian.Uint32(b[2:])
	qs := b[6:22]
	for j := range 16 {
		h0 := (qh >> j << 4) & 0x10
		h1 := (qh >> (j + 12)) & 0x10
		y[j] = float32(int(uint32(qs[j]&0x0f)|h0)-16) * d
		y[j+16] = float32(int(uint32(qs[j]>>4)|h1)-16) * d
	}
}

// block_q5_1 {half d, m; uint8 qh[4]; uint8 qs[16]}: value q * d + m.
func dequantQ5_1(b []byte, y []float32) {
	d, m := half(b), half(b[2:])
	qh := binary.LittleEndian.Uint32(b[4:])
	qs := b[8:24]
	for j := range 16 {
		h0 := (qh >> j << 4) & 0x10
		h1 := (qh >> (j + 12)) & 0x10
		y[j] = float32(float32(uint32(qs[j]&0x0f)|h0)*d) + m
		y[j+16] = float32(float32(uint32(qs[j]>>4)|h1)*d) + m
	}
}

// block_q8_0 {half d; int8 qs[32]}: value q * d.
func dequantQ8_0(b []byte, y []float32) {
	d := half(b)
	for j := range 32 {
		y[j] = float32(int8(b[2+j])) * d
	}
}

// block_q2_K {uint8 scales[16]; uint8 qs[64]; half d, dmin}: 16 groups of
// 16; group g has scale d*(scales[g]&15) and min dmin*(scales[g]>>4). Each
// 128 elements read 32 bytes of qs, 2 bits at shift 0, 2, 4, 6 in turn for
// four pairs of groups (bytes 0-15, then 16-31).
func dequantQ2_K(b []byte, y []float32) {
	scales, qs := b[0:16], b[16:80]
	d, dmin := half(b[80:]), half(b[82:])
	is, o := 0, 0
	for n := 0; n < QK_K; n += 128 {
		q := qs[n/4 : n/4+32]
		for shift := uint(0); shift < 8; shift += 2 {
			for h := range 2 {
				sc := scales[is]
				is++
				dl := d * float32(sc&0x0f)
				ml := dmin * float32(sc>>4)
				for l := range 16 {
					y[o] = float32(dl*float32((q[16*h+l]>>shift)&3)) - ml
					o++
				}
			}
		}
	}
}

// q3Scales unpacks block_q3_K's 16 6-bit scales: the low 4 bits of scale i
// are byte i's low nibble (i < 8) or byte i-8's high nibble, the top 2 bits
// are bits 2*(i/4) of byte 8+i%4; the stored value is offset by 32.
func q3Scales(s []byte) [16]int {
	var out [16]int
	for i := range 16 {
		lo := s[i%8] & 0x0f
		if i >= 8 {
			lo = s[i-8] >> 4
		}
		hi := (s[8+i%4] >> (2 * (i / 4))) & 3
		out[i] = int(lo|hi<<4) - 32
	}
	return out
}

// block_q3_K {uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d}:
// 16 groups of 16 with signed 6-bit scales; an element's low 2 bits come
// from qs as in Q2_K, its high bit from hmask (bit 0-7 by the pass, byte by
// position); a clear high bit subtracts 4. Value d*scale*q.
func dequantQ3_K(b []byte, y []float32) {
	hm, qs := b[0:32], b[32:96]
	sc := q3Scales(b[96:108])
	d := half(b[108:])
	is, o := 0, 0
	m := uint8(1)
	for n := 0; n < QK_K; n += 128 {
		q := qs[n/4 : n/4+32]
		for shift := uint(0); shift < 8; shift += 2 {
			for h := range 2 {
				dl := d * float32(sc[is])
				is++
				for l := range 16 {
					v := int((q[16*h+l] >> shift) & 3)
					if hm[16*h+l]&m == 0 {
						v -= 4
					}
					y[o] = dl * float32(v)
					o++
				}
			}
			m <<= 1
		}
	}
}

// scaleMinK4 is ggml's get_scale_min_k4: 8 6-bit scales and 8 6-bit mins
// packed in 12 bytes (Q4_K, Q5_K). j < 4: low 6 bits of bytes j and j+4;
// j >= 4: a nibble of byte j+4 plus the top 2 bits of byte j-4 (scale) or
// byte j (min).
func scaleMinK4(j int, q []byte) (sc, m uint8) {
	if j < 4 {
		return q[j] & 63, q[j+4] & 63
	}
	return q[j+4]&0x0f | (q[j-4]>>6)<<4, q[j+4]>>4 | (q[j]>>6)<<4
}

// block_q4_K {half d, dmin; uint8 scales[12]; uint8 qs[128]}: 8 groups of
// 32; each 64 elements read 32 bytes, low nibbles for the first group and
// high nibbles for the second. Value d*sc*q - dmin*m.
func dequantQ4_K(b []byte, y []float32) {
	d, dmin := half(b), half(b[2:])
	scales, qs := b[4:16], b[16:144]
	o := 0
	for g := 0; g < 8; g += 2 {
		sc1, m1 := scaleMinK4(g, scales)
		sc2, m2 := scaleMinK4(g+1, scales)
		d1, min1 := d*float32(sc1), dmin*float32(m1)
		d2, min2 := d*float32(sc2), dmin*float32(m2)
		q := qs[g*16 : g*16+32]
		for l := range 32 {
			y[o+l] = float32(d1*float32(q[l]&0x0f)) - min1
			y[o+32+l] = float32(d2*float32(q[l]>>4)) - min2
		}
		o += 64
	}
}

// block_q5_K {half d, dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]}:
// Q4_K plus a fifth bit per element from qh (bit g of byte l for group g).
func dequantQ5_K(b []byte, y []float32) {
	d, dmin := half(b), half(b[2:])
	scales, qh, qs := b[4:16], b[16:48], b[48:176]
	o := 0
	for g := 0; g < 8; g += 2 {
		sc1, m1 := scaleMinK4(g, scales)
		sc2, m2 := scaleMinK4(g+1, scales)
		d1, min1 := d*float32(sc1), dmin*float32(m1)
		d2, min2 := d*float32(sc2), dmin*float32(m2)
		u1, u2 := uint8(1)<<g, uint8(2)<<g
		q := qs[g*16 : g*16+32]
		for l := range 32 {
			v1, v2 := q[l]&0x0f, q[l]>>4
			if qh[l]&u1 != 0 {
				v1 += 16
			}
			if qh[l]&u2 != 0 {
				v2 += 16
			}
			y[o+l] = float32(d1*float32(v1)) - min1
			y[o+32+l] = float32(d2*float32(v2)) - min2
		}
		o += 64
	}
}

// block_q6_K {uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d}: 16
// groups of 16 with signed 8-bit scales; each 128 elements read 64 bytes
// of ql (nibbles) and 32 of qh (2 bits each). Value (d*scale)*(q - 32).
func dequantQ6_K(b []byte, y []float32) {
	d := half(b[208:])
	for n := 0; n < QK_K; n += 128 {
		ql := b[n/2 : n/2+64]
		qh := b[128+n/4 : 128+n/4+32]
		sc := b[192+n/16 : 192+n/16+8]
		yy := y[n : n+128]
		for l := range 32 {
			is := l / 16
			q1 := int(ql[l]&0x0f|((qh[l]>>0)&3)<<4) - 32
			q2 := int(ql[l+32]&0x0f|((qh[l]>>2)&3)<<4) - 32
			q3 := int(ql[l]>>4|((qh[l]>>4)&3)<<4) - 32
			q4 := int(ql[l+32]>>4|((qh[l]>>6)&3)<<4) - 32
			yy[l] = float32(d*float32(int8(sc[is]))) * float32(q1)
			yy[l+32] = float32(d*float32(int8(sc[is+2]))) * float32(q2)
			yy[l+64] = float32(d*float32(int8(sc[is+4]))) * float32(q3)
			yy[l+96] = float32(d*float32(int8(sc[is+6]))) * float32(q4)
		}
	}
}

// blockScales are the byte offsets of a block type's F16 scale fields (d,
// and dmin or m): a block's values are finite exactly when these are, its
// quants being small integers.
var blockScales = map[DType][]int{
	Q4_0: {0}, Q4_1: {0, 2}, Q5_0: {0}, Q5_1: {0, 2}, Q8_0: {0},
	Q2_K: {80, 82}, Q3_K: {108}, Q4_K: {0, 2}, Q5_K: {0, 2}, Q6_K: {208},
}

// FirstNonFiniteBlock returns the index of the first block of raw (whole
// blocks of type d) with a NaN or Inf scale, or -1.
func FirstNonFiniteBlock(d DType, raw []byte) int {
	bb := d.BlockBytes()
	offs := blockScales[d]
	for b := 0; (b+1)*bb <= len(raw); b++ {
		for _, o := range offs {
			if binary.LittleEndian.Uint16(raw[b*bb+o:])&0x7c00 == 0x7c00 {
				return b
			}
		}
	}
	return -1
}
