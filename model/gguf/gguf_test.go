package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func mustArray(t testing.TB, elems any) Value {
	v, err := Array(elems)
	require.NoError(t, err)
	return v
}

// sampleMeta has a value of every type, arrays of several, and an array
// of arrays.
func sampleMeta(t testing.TB) Metadata {
	inner1, inner2 := mustArray(t, []int32{1, -2}), mustArray(t, []int32{3})
	return Metadata{
		{"general.architecture", String("sd1")},
		{"u8", Uint8(200)}, {"i8", Int8(-100)}, {"u16", Uint16(60000)}, {"i16", Int16(-30000)},
		{"u32", Uint32(4000000000)}, {"i32", Int32(-2000000000)}, {"f32", Float32(1.5)},
		{"b", Bool(true)}, {"u64", Uint64(1 << 63)}, {"i64", Int64(-1 << 62)}, {"f64", Float64(math.Pi)},
		{"strs", mustArray(t, []string{"a", "", "ü"})},
		{"floats", mustArray(t, []float32{0.5, -2})},
		{"bools", mustArray(t, []bool{true, false})},
		{"empty", mustArray(t, []uint64{})},
		{"nested", mustArray(t, []Value{inner1, inner2})},
	}
}

func sampleTensors(t testing.TB) []WriteTensor {
	q := make([]byte, 2*34)
	require.NoError(t, Quantize(Q8_0, []float32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
		21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1}, q))
	f16 := make([]byte, 2*3*5)
	for i := range 15 {
		binary.LittleEndian.PutUint16(f16[2*i:], FloatToHalf(float32(i)))
	}
	return []WriteTensor{
		{Name: "model.w", Type: Q8_0, Shape: []int{2, 32}, Data: q},
		{Name: "model.b", Type: F16, Shape: []int{3, 5}, Data: f16},
		{Name: "scalar", Type: F32, Shape: []int{}, Data: binary.LittleEndian.AppendUint32(nil, math.Float32bits(7))},
		{Name: "empty", Type: F32, Shape: []int{0, 4}, Data: []byte{}},
	}
}

func encode(t testing.TB, meta Metadata, ts []WriteTensor) []byte {
	var buf bytes.Buffer
	require.NoError(t, Write(&buf, meta, ts))
	return buf.Bytes()
}

func TestWriteReadRoundTrip(t *testing.T) {
	for _, align := range []uint32{0, 8, 64} {
		meta := sampleMeta(t)
		if align != 0 {
			meta = append(meta, KV{"general.alignment", Uint32(align)})
		}
		b := encode(t, meta, sampleTensors(t))
		f, err := FromBytes("mem", b)
		require.NoError(t, err)
		want := int(align)
		if want == 0 {
			want = DefaultAlignment
		}
		assert.Equal(t, want, f.Alignment)
		assert.Equal(t, 3, f.Version)
		require.Equal(t, len(meta), len(f.Metadata))
		for i, kv := range meta {
			assert.Equal(t, kv.Key, f.Metadata[i].Key)
			assert.Equal(t, kv.Value, f.Metadata[i].Value, kv.Key)
		}
		assert.Equal(t, "sd1", f.Metadata.String("general.architecture"))
		n, _ := f.Metadata[5].Value.Uint()
		assert.Equal(t, uint64(4000000000), n)
		ints, ok := f.Metadata[16].Value.Index(0).Ints()
		assert.True(t, ok)
		assert.Equal(t, []int64{1, -2}, ints)
		assert.Equal(t, []string{"empty", "model.b", "model.w", "scalar"}, f.Names())
		for _, wt := range sampleTensors(t) {
			tt := f.Tensor(wt.Name)
			require.NotNil(t, tt, wt.Name)
			assert.Equal(t, wt.Type, tt.Type)
			assert.Equal(t, wt.Shape, tt.Shape())
			assert.Equal(t, wt.Data, tt.Data())
			assert.Zero(t, tt.Offset%uint64(want), "aligned")
		}
		w, err := Float32s(f.Tensor("model.w"))
		require.NoError(t, err)
		assert.InDelta(t, 32, w[31], 32.0/127/2, "Q8_0 keeps 32 within half a step")
		assert.Equal(t, []uint64{5, 3}, f.Tensor("model.b").Dims, "ggml dims are the torch shape reversed")
	}
}

func TestOpenFileAndVersion2(t *testing.T) {
	b := encode(t, sampleMeta(t), sampleTensors(t))
	binary.LittleEndian.PutUint32(b[4:], 2) // v2 has the same layout
	p := filepath.Join(t.TempDir(), "x.gguf")
	require.NoError(t, os.WriteFile(p, b, 0o644))
	f, err := Open(p)
	require.NoError(t, err)
	assert.Equal(t, 2, f.Version)
	assert.Equal(t, int64(len(b)), f.Size())
	d := f.Tensor("model.b").Data()
	assert.Len(t, d, 30)
	require.NoError(t, f.Close())
	assert.Nil(t, f.Tensor("model.b").Data(), "no data after Close")
	require.NoError(t, f.Close(), "second Close")
	_, err = Float32s(f.Tensor("model.b"))
	assert.Error(t, err)

	_, err = Open(filepath.Join(t.TempDir(), "missing.gguf"))
	assert.Error(t, err)
	_, err = Open(t.TempDir())
	assert.ErrorContains(t, err, "not a regular file")
}

// layout returns a file with two F32 tensors of 8 elements (32 bytes), at
// the offsets given, and a data section of dataLen bytes.
func layout(off1, off2 uint64, dataLen int) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	b.WriteString("GGUF")
	b.Write(le.AppendUint32(nil, 3))
	b.Write(le.AppendUint64(nil, 2))
	b.Write(le.AppendUint64(nil, 0))
	for i, off := range []uint64{off1, off2} {
		name := []string{"a", "b"}[i]
		b.Write(le.AppendUint64(nil, uint64(len(name))))
		b.WriteString(name)
		b.Write(le.AppendUint32(nil, 1))
		b.Write(le.AppendUint64(nil, 8))
		b.Write(le.AppendUint32(nil, uint32(F32)))
		b.Write(le.AppendUint64(nil, off))
	}
	for b.Len()%32 != 0 {
		b.WriteByte(0)
	}
	b.Write(make([]byte, dataLen))
	return b.Bytes()
}

// header builds a file from raw little-endian fields.
func header(fields ...any) []byte {
	var b bytes.Buffer
	for _, f := range fields {
		switch v := f.(type) {
		case string:
			b.WriteString(v)
		case uint32:
			b.Write(binary.LittleEndian.AppendUint32(nil, v))
		case uint64:
			b.Write(binary.LittleEndian.AppendUint64(nil, v))
		case byte:
			b.WriteByte(v)
		case []byte:
			b.Write(v)
		}
	}
	return b.Bytes()
}

func str(s string) []byte { return append(binary.LittleEndian.AppendUint64(nil, uint64(len(s))), s...) }

// kv is a file with one metadata pair and no tensors.
func kv(key string, typ uint32, val ...any) []byte {
	return header(append([]any{"GGUF", uint32(3), uint64(0), uint64(1), str(key), typ}, val...)...)
}

// tensorInfo is a file with one tensor info and data.
func tensorInfo(name string, dims []uint64, typ uint32, off uint64, data int) []byte {
	fields := []any{"GGUF", uint32(3), uint64(1), uint64(0), str(name), uint32(len(dims))}
	for _, d := range dims {
		fields = append(fields, d)
	}
	fields = append(fields, typ, off)
	b := header(fields...)
	for len(b)%32 != 0 {
		b = append(b, 0)
	}
	return append(b, make([]byte, data)...)
}

func TestFormatErrors(t *testing.T) {
	good := encode(t, sampleMeta(t), sampleTensors(t))
	cases := []struct {
		name string
		b    []byte
		kind Kind
		msg  string
	}{
		{"empty", nil, KindShortFile, "shorter than the 24-byte"},
		{"magic", append([]byte("GGML"), good[4:]...), KindMagic, "not a GGUF file"},
		{"safetensors", append(binary.LittleEndian.AppendUint64(nil, 2), "{}"...), KindMagic, "not a GGUF"},
		{"version 1", header("GGUF", uint32(1), uint64(0), uint64(0)), KindVersion, "version 1"},
		{"version 4", header("GGUF", uint32(4), uint64(0), uint64(0)), KindVersion, "want 2 or 3"},
		{"big-endian", header("GGUF", uint32(3<<24), uint64(0), uint64(0)), KindVersion, "big-endian"},
		{"truncated counts", good[:12], KindShortFile, "bytes short"},
		{"truncated data", good[:len(good)-40], KindOffsets, "runs past the end"},
		{"absurd tensor count", header("GGUF", uint32(3), uint64(1)<<60, uint64(0)), KindCount, "cannot fit"},
		{"absurd kv count", header("GGUF", uint32(3), uint64(0), uint64(1)<<40, make([]byte, 64)), KindCount, "metadata key/values"},
		{"absurd string", kv("k", uint32(TypeString), uint64(1)<<62), KindString, "runs past the end"},
		{"absurd key", header("GGUF", uint32(3), uint64(0), uint64(1), uint64(1)<<62, make([]byte, 16)), KindString, ""},
		{"absurd array", kv("k", uint32(TypeArray), uint32(TypeUint64), uint64(1)<<58), KindCount, "array elements"},
		{"empty key", header("GGUF", uint32(3), uint64(0), uint64(1), str(""), uint32(TypeUint8), byte(1)), KindString, "empty key"},
		{"bad value type", kv("k", 13, byte(0)), KindMetadata, "invalid value type 13"},
		{"bad array type", kv("k", uint32(TypeArray), uint32(77), uint64(1)), KindMetadata, "invalid value type 77"},
		{"bool 2", kv("k", uint32(TypeBool), byte(2)), KindMetadata, "want 0 or 1"},
		{"duplicate key", header("GGUF", uint32(3), uint64(0), uint64(2), str("k"), uint32(TypeUint8), byte(1), str("k"), uint32(TypeUint8), byte(2)), KindDuplicate, `"k"`},
		{"alignment type", kv("general.alignment", uint32(TypeUint64), uint64(32)), KindMetadata, "want uint32"},
		{"alignment 24", kv("general.alignment", uint32(TypeUint32), uint32(24)), KindMetadata, "power of two"},
		{"unknown type", tensorInfo("w", []uint64{32}, 4, 0, 32), KindType, "unknown tensor type 4"},
		{"unknown type 99", tensorInfo("w", []uint64{32}, 99, 0, 32), KindType, "99"},
		{"too many dims", tensorInfo("w", []uint64{1, 1, 1, 1, 1}, uint32(F32), 0, 4), KindShape, "5 dimensions"},
		{"overflow", tensorInfo("w", []uint64{1 << 32, 1 << 32}, uint32(F32), 0, 0), KindShape, "63 bits"},
		{"huge dim with zero", tensorInfo("w", []uint64{0, 1 << 63}, uint32(F32), 0, 0), KindShape, "does not fit"},
		{"byte overflow", tensorInfo("w", []uint64{1 << 62}, uint32(F32), 0, 0), KindShape, "bytes"},
		{"partial block", tensorInfo("w", []uint64{48}, uint32(Q8_0), 0, 64), KindShape, "not whole 32-element blocks"},
		{"misaligned", tensorInfo("w", []uint64{4}, uint32(F32), 16, 64), KindAlignment, "not a multiple of the 32-byte alignment"},
		{"out of bounds", tensorInfo("w", []uint64{64}, uint32(F32), 0, 128), KindOffsets, "runs past the end"},
		{"offset past end", tensorInfo("w", []uint64{8}, uint32(F32), 1<<40, 32), KindOffsets, "runs past the end"},
		{"overlap", layout(0, 0, 32), KindOverlap, "overlaps"},
		{"hole", layout(0, 64, 96), KindHole, "unused"},
		{"trailing bytes", layout(0, 32, 128), KindHole, "after the last tensor"},
		{"duplicate tensor", header("GGUF", uint32(3), uint64(2), uint64(0), str("w"), uint32(1), uint64(8), uint32(0), uint64(0), str("w"), uint32(1), uint64(8), uint32(0), uint64(32), make([]byte, 96)), KindDuplicate, "twice"},
		{"nested too deep", kv("k", uint32(TypeArray), uint32(TypeArray), uint64(1), uint32(TypeArray), uint64(1), uint32(TypeArray), uint64(1), uint32(TypeArray), uint64(1), uint32(TypeUint8), uint64(0)), KindMetadata, "deeper"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := FromBytes("bad.gguf", c.b)
			var fe *FormatError
			require.True(t, errors.As(err, &fe), "got %v, want a *FormatError", err)
			assert.Equal(t, c.kind, fe.Kind, "%v", err)
			assert.Contains(t, err.Error(), "gguf: bad.gguf")
			assert.Contains(t, err.Error(), c.msg)
		})
	}
	// The good layouts of the same helpers open.
	_, err := FromBytes("ok", layout(0, 32, 64))
	assert.NoError(t, err)
	_, err = FromBytes("ok", layout(32, 0, 64))
	assert.NoError(t, err, "tensor order in the infos need not follow the data")
	_, err = FromBytes("ok", tensorInfo("w", []uint64{4}, uint32(F32), 0, 16))
	assert.NoError(t, err, "the last tensor need not be padded")
}

// TestErrorsNameTensor: a tensor-level problem names the tensor.
func TestErrorsNameTensor(t *testing.T) {
	_, err := FromBytes("x.gguf", tensorInfo("model.diffusion_model.out.2.weight", []uint64{48}, uint32(Q4_K), 0, 64))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `tensor "model.diffusion_model.out.2.weight"`)
	assert.Contains(t, err.Error(), "Q4_K")
}

func TestTypes(t *testing.T) {
	assert.Equal(t, "Q4_K", Q4_K.String())
	assert.Equal(t, "Type(4)", Type(4).String())
	for _, name := range []string{"q4_k", "Q8_0", "f16", "bf16"} {
		_, err := ParseType(name)
		assert.NoError(t, err, name)
	}
	_, err := ParseType("q4_2")
	assert.Error(t, err)
	assert.Equal(t, []Type{F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16}, SupportedTypes())
	n, ok := Q4_K.RowBytes(512)
	assert.True(t, ok)
	assert.Equal(t, 288, n)
	_, ok = Q4_K.RowBytes(320)
	assert.False(t, ok)
	assert.True(t, IsGGUF([]byte("GGUF\x03")))
	assert.False(t, IsGGUF([]byte("GGU")))
}

func TestWriteErrors(t *testing.T) {
	var buf bytes.Buffer
	assert.Error(t, Write(&buf, nil, []WriteTensor{{Name: "w", Type: Q8_0, Shape: []int{2, 33}, Data: make([]byte, 68)}}), "rows not whole blocks")
	assert.Error(t, Write(&buf, nil, []WriteTensor{{Name: "w", Type: F32, Shape: []int{2}, Data: make([]byte, 4)}}), "short data")
	assert.Error(t, Write(&buf, Metadata{{"general.alignment", Uint32(12)}}, nil), "bad alignment")
	assert.Error(t, Write(&buf, Metadata{{"a", Uint8(1)}, {"a", Uint8(2)}}, nil), "duplicate key")
	w := WriteTensor{Name: "w", Type: F32, Shape: []int{1}, Data: make([]byte, 4)}
	assert.Error(t, Write(&buf, nil, []WriteTensor{w, w}), "duplicate tensor")
	_, err := Array([]int{1})
	assert.Error(t, err)
	_, err = Array([]Value{Uint8(1)})
	assert.Error(t, err, "array of arrays holding a scalar")
}

// TestTruncatedEverywhere cuts a file at every length: each prefix is a
// named error (the header's counts no longer fit, a field is cut, or a
// tensor's data runs past the end), never a panic or a success.
func TestTruncatedEverywhere(t *testing.T) {
	good := encode(t, sampleMeta(t), sampleTensors(t))
	for n := range len(good) - 1 {
		_, err := FromBytes("cut.gguf", good[:n])
		var fe *FormatError
		require.True(t, errors.As(err, &fe), "cut at %d: %v", n, err)
		require.Contains(t, []Kind{KindShortFile, KindCount, KindOffsets, KindString}, fe.Kind, "cut at %d: %v", n, err)
	}
}
