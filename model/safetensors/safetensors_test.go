package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// raw builds a file from a literal header and a data section of n bytes.
func raw(hdr string, n int) []byte {
	b := make([]byte, 8, 8+len(hdr)+n)
	binary.LittleEndian.PutUint64(b, uint64(len(hdr)))
	b = append(b, hdr...)
	return append(b, make([]byte, n)...)
}

func TestMalformed(t *testing.T) {
	lenOnly := func(n uint64, extra int) []byte {
		b := make([]byte, 8+extra)
		binary.LittleEndian.PutUint64(b, n)
		return b
	}
	cases := []struct {
		name   string
		file   []byte
		kind   Kind
		tensor string // tensor the error must name ("" = header-level)
	}{
		{"empty file", nil, KindShortFile, ""},
		{"7 bytes", make([]byte, 7), KindShortFile, ""},
		{"header past the file", lenOnly(100, 10), KindHeaderLength, ""},
		{"absurd header length", lenOnly(math.MaxUint64, 10), KindHeaderLength, ""},
		{"header over the limit", lenOnly(MaxHeaderLen+1, 10), KindHeaderLength, ""},
		{"empty header", raw("", 0), KindJSON, ""},
		{"not json", raw("hello", 0), KindJSON, ""},
		{"json array", raw("[]", 0), KindJSON, ""},
		{"truncated json", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}`, 4), KindJSON, ""},
		{"trailing garbage", raw(`{} x`, 0), KindJSON, ""},
		{"second object", raw(`{}{}`, 0), KindJSON, ""},
		{"invalid utf-8", raw("{\"\xff\":{}}", 0), KindJSON, ""},
		{"entry not an object", raw(`{"a":3}`, 0), KindJSON, "a"},
		{"missing dtype", raw(`{"a":{"shape":[1],"data_offsets":[0,4]}}`, 4), KindDType, "a"},
		{"unknown dtype", raw(`{"a":{"dtype":"F17","shape":[1],"data_offsets":[0,4]}}`, 4), KindDType, "a"},
		{"dtype not a string", raw(`{"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, 4), KindDType, "a"},
		{"missing shape", raw(`{"a":{"dtype":"F32","data_offsets":[0,4]}}`, 4), KindShape, "a"},
		{"negative dim", raw(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, 4), KindShape, "a"},
		{"fractional dim", raw(`{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, 4), KindShape, "a"},
		{"string dim", raw(`{"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}`, 4), KindShape, "a"},
		{"shape not array", raw(`{"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}}`, 4), KindShape, "a"},
		{"element count overflow", raw(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, 4), KindShape, "a"},
		{"byte count overflow", raw(`{"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,4]}}`, 4), KindSize, "a"},
		{"size mismatch", raw(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 4), KindSize, "a"},
		{"missing offsets", raw(`{"a":{"dtype":"F32","shape":[1]}}`, 4), KindOffsets, "a"},
		{"one offset", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4]}}`, 4), KindOffsets, "a"},
		{"negative offset", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, 4), KindOffsets, "a"},
		{"reversed offsets", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}`, 4), KindOffsets, "a"},
		{"offsets past data", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 4), KindOffsets, "a"},
		{"huge offsets", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[9223372036854775800,9223372036854775804]}}`, 4), KindOffsets, "a"},
		{"offset beyond 2^63", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}`, 4), KindOffsets, "a"},
		{"overlap", raw(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), KindOverlap, "b"},
		{"same range twice", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4), KindOverlap, "b"},
		{"hole between", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, 12), KindHole, "b"},
		{"hole at start", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), KindHole, "a"},
		{"trailing data", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 8), KindHole, ""},
		{"data without tensors", raw(`{}`, 4), KindHole, ""},
		{"duplicate name", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), KindDuplicate, "a"},
		{"duplicate field", raw(`{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}`, 4), KindDuplicate, "a"},
		{"duplicate metadata", raw(`{"__metadata__":{},"__metadata__":{}}`, 0), KindDuplicate, ""},
		{"metadata number", raw(`{"__metadata__":{"a":1}}`, 0), KindMetadata, ""},
		{"metadata nested", raw(`{"__metadata__":{"a":{"b":"c"}}}`, 0), KindMetadata, ""},
		{"metadata list", raw(`{"__metadata__":["a"]}`, 0), KindMetadata, ""},
		{"metadata string", raw(`{"__metadata__":"a"}`, 0), KindMetadata, ""},
		{"metadata duplicate key", raw(`{"__metadata__":{"a":"1","a":"2"}}`, 0), KindMetadata, ""},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Both the in-memory parser and the mmap path must agree.
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".safetensors")
			if err := os.WriteFile(path, c.file, 0o644); err != nil {
				t.Fatal(err)
			}
			for _, open := range []func() (*File, error){
				func() (*File, error) { return FromBytes(path, c.file) },
				func() (*File, error) { return Open(path) },
			} {
				f, err := open()
				if err == nil {
					f.Close()
					t.Fatalf("opened a malformed file")
				}
				var fe *FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("error %v (%T) is not a *FormatError", err, err)
				}
				if fe.Kind != c.kind || fe.Tensor != c.tensor || fe.Path != path {
					t.Errorf("got kind %v tensor %q path %q, want %v %q %q (%v)", fe.Kind, fe.Tensor, fe.Path, c.kind, c.tensor, path, err)
				}
				if !strings.Contains(err.Error(), path) {
					t.Errorf("message %q does not name the file", err)
				}
			}
		})
	}
}

// Accepted edge cases of the format.
func TestValidEdgeCases(t *testing.T) {
	cases := map[string][]byte{
		"empty object":       raw(`{}`, 0),
		"padded header":      raw(`{}      `, 0),
		"scalar":             raw(`{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}`, 4),
		"zero-size":          raw(`{"z":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, 1),
		"null metadata":      raw(`{"__metadata__":null}`, 0),
		"unknown entry key":  raw(`{"a":{"dtype":"I8","shape":[2],"data_offsets":[0,2],"extra":[1,{"x":2}]}}`, 2),
		"out of order":       raw(`{"b":{"dtype":"I8","shape":[1],"data_offsets":[1,2]},"a":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, 2),
		"whitespace in json": raw(" {\n\"a\" : {\"dtype\":\"BOOL\",\"shape\":[ 3 ],\"data_offsets\":[0,3]}\t}\n", 3),
	}
	for name, b := range cases {
		f, err := FromBytes(name, b)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for _, tt := range f.Tensors() {
			if int64(len(tt.Data())) != tt.NumElem()*int64(tt.DType.Size()) {
				t.Errorf("%s: %s: %d bytes", name, tt.Name, len(tt.Data()))
			}
		}
	}
}

func sampleTensors() []WriteTensor {
	f32 := make([]byte, 4*6)
	for i := range 6 {
		binary.LittleEndian.PutUint32(f32[4*i:], math.Float32bits(float32(i)-2.5))
	}
	return []WriteTensor{
		{Name: "w.f32", DType: F32, Shape: []int{2, 3}, Data: f32},
		{Name: "b.f16", DType: F16, Shape: []int{3}, Data: []byte{0x00, 0x3c, 0x00, 0xc0, 0x00, 0x00}},
		{Name: "scalar.bf16", DType: BF16, Shape: []int{}, Data: []byte{0x80, 0x3f}},
		{Name: "empty", DType: F32, Shape: []int{0, 4}, Data: nil},
		{Name: "ids", DType: I64, Shape: []int{1, 2}, Data: []byte{1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0}},
		{Name: "ünïcode name.with.dots", DType: U8, Shape: []int{3}, Data: []byte{1, 2, 3}},
	}
}

func TestWriteRoundTrip(t *testing.T) {
	in := sampleTensors()
	meta := map[string]string{"format": "pt", "note": "round trip"}
	path := filepath.Join(t.TempDir(), "rt.safetensors")
	if err := WriteFile(path, in, meta); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !reflect.DeepEqual(f.Metadata, meta) {
		t.Errorf("metadata %v, want %v", f.Metadata, meta)
	}
	if f.dataStart%8 != 0 {
		t.Errorf("data section starts at %d, not 8-aligned", f.dataStart)
	}
	if len(f.Names()) != len(in) {
		t.Fatalf("%d tensors, want %d", len(f.Names()), len(in))
	}
	var again []WriteTensor
	for _, w := range in {
		got := f.Tensor(w.Name)
		if got == nil {
			t.Fatalf("tensor %q missing", w.Name)
		}
		if got.DType != w.DType || !reflect.DeepEqual(got.Shape, w.Shape) || !bytes.Equal(got.Data(), w.Data) {
			t.Errorf("%q: got %s %v %x, want %s %v %x", w.Name, got.DType, got.Shape, got.Data(), w.DType, w.Shape, w.Data)
		}
		c, err := got.ToWrite()
		if err != nil {
			t.Fatal(err)
		}
		again = append(again, c)
	}
	// Re-writing what was read reproduces the file byte for byte.
	var buf bytes.Buffer
	if err := Write(&buf, again, f.Metadata); err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(path)
	if !bytes.Equal(buf.Bytes(), orig) {
		t.Errorf("re-written file differs from the original (%d vs %d bytes)", buf.Len(), len(orig))
	}
	v, err := Float32s(f.Tensor("w.f32"))
	if err != nil || v[0] != -2.5 || v[5] != 2.5 {
		t.Errorf("Float32s = %v, %v", v, err)
	}
	if v, err := Float32s(f.Tensor("b.f16")); err != nil || v[0] != 1 || v[1] != -2 || v[2] != 0 {
		t.Errorf("Float32s(f16) = %v, %v", v, err)
	}
	if v, err := Float32s(f.Tensor("scalar.bf16")); err != nil || len(v) != 1 || v[0] != 1 {
		t.Errorf("Float32s(bf16) = %v, %v", v, err)
	}
	if _, err := Float32s(f.Tensor("ids")); err == nil {
		t.Error("Float32s accepted an I64 tensor")
	}
}

func TestWriteRejects(t *testing.T) {
	bad := [][]WriteTensor{
		{{Name: "a", DType: F32, Shape: []int{2}, Data: make([]byte, 4)}},
		{{Name: "a", DType: "X", Shape: []int{1}, Data: make([]byte, 4)}},
		{{Name: "a", DType: F32, Shape: []int{-1}, Data: nil}},
		{{Name: "a", DType: U8, Shape: []int{1}, Data: []byte{1}}, {Name: "a", DType: U8, Shape: []int{1}, Data: []byte{1}}},
		{{Name: "__metadata__", DType: U8, Shape: []int{1}, Data: []byte{1}}},
	}
	for i, ts := range bad {
		if err := Write(&bytes.Buffer{}, ts, nil); err == nil {
			t.Errorf("case %d: Write accepted %v", i, ts)
		}
	}
	path := filepath.Join(t.TempDir(), "bad.safetensors")
	if err := WriteFile(path, bad[0], nil); err == nil {
		t.Error("WriteFile accepted a bad tensor")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("WriteFile left a partial file: %v", err)
	}
}

func TestClosedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.safetensors")
	if err := WriteFile(path, sampleTensors(), nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	tt := f.Tensor("w.f32")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if tt.Data() != nil {
		t.Error("Data after Close is not nil")
	}
	if _, err := Float32s(tt); err == nil {
		t.Error("Float32s after Close succeeded")
	}
	if _, err := tt.ToWrite(); err == nil {
		t.Error("ToWrite after Close succeeded")
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "missing.safetensors")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
}

// BenchmarkOpenSDXLHeader opens a sparse file with a header the size of an
// SDXL single file's (2,500 tensors, ~300 KB of JSON): the cost of Open,
// which reads nothing but the header.
func BenchmarkOpenSDXLHeader(b *testing.B) {
	var ts []WriteTensor
	for i := range 2500 {
		ts = append(ts, WriteTensor{Name: fmt.Sprintf("model.diffusion_model.output_blocks.%d.1.transformer_blocks.%d.attn2.to_k.weight", i/100, i%100),
			DType: F16, Shape: []int{320, 320}})
	}
	hdr, n, err := EncodeHeader(ts, map[string]string{"format": "pt"})
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "sparse.safetensors")
	if err := os.WriteFile(path, hdr, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.Truncate(path, int64(len(hdr))+n); err != nil {
		b.Skip(err)
	}
	b.SetBytes(int64(len(hdr)))
	b.ResetTimer()
	for range b.N {
		f, err := Open(path)
		if err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}
