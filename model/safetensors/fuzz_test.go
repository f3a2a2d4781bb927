package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// checkFile touches every tensor of a parsed file the way the model loader
// does: the bytes must lie inside the file, match shape x dtype, and the
// float decoder must accept float tensors.
func checkFile(t *testing.T, f *File, size int) {
	seen := 0
	for _, name := range f.Names() {
		tt := f.Tensor(name)
		if tt == nil || tt.Name != name {
			t.Fatalf("Names lists %q but Tensor returns %v", name, tt)
		}
		d := tt.Data()
		if int64(len(d)) != tt.NumElem()*int64(tt.DType.Size()) || int64(len(d)) != tt.Bytes() {
			t.Fatalf("%q: %d bytes for shape %v of %s", name, len(d), tt.Shape, tt.DType)
		}
		if f.dataStart+tt.End > int64(size) || tt.Begin < 0 {
			t.Fatalf("%q: range [%d,%d) beyond the %d-byte file", name, tt.Begin, tt.End, size)
		}
		seen += len(d)
		if tt.DType.IsFloat() && tt.NumElem() <= 1<<16 {
			v, err := Float32s(tt)
			if err != nil || int64(len(v)) != tt.NumElem() {
				t.Fatalf("%q: Float32s: %d values, %v", name, len(v), err)
			}
		}
	}
	if int64(seen) != int64(size)-f.dataStart {
		t.Fatalf("tensors cover %d of %d data bytes", seen, int64(size)-f.dataStart)
	}
}

func seedFiles() [][]byte {
	var buf bytes.Buffer
	if err := Write(&buf, sampleTensors(), map[string]string{"format": "pt"}); err != nil {
		panic(err)
	}
	return [][]byte{
		buf.Bytes(),
		raw(`{}`, 0),
		raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8),
		raw(`{"__metadata__":{"a":"b"},"x":{"dtype":"BF16","shape":[2,0],"data_offsets":[0,0]}}`, 0),
		raw(`{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"F64","shape":[],"data_offsets":[4,12]}}`, 12),
	}
}

// FuzzHeader fuzzes the JSON header with a data section of fuzzed length.
func FuzzHeader(f *testing.F) {
	for _, s := range seedFiles() {
		n := binary.LittleEndian.Uint64(s)
		f.Add(s[8:8+n], uint16(len(s)-8-int(n)))
	}
	f.Fuzz(func(t *testing.T, hdr []byte, dataLen uint16) {
		b := make([]byte, 8, 8+len(hdr)+int(dataLen))
		binary.LittleEndian.PutUint64(b, uint64(len(hdr)))
		b = append(append(b, hdr...), make([]byte, dataLen)...)
		file, err := FromBytes("fuzz", b)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error is not a *FormatError: %v", err)
			}
			return
		}
		checkFile(t, file, len(b))
	})
}

// FuzzFile fuzzes whole files, header length included, and reads every
// tensor of the ones that open.
func FuzzFile(f *testing.F) {
	for _, s := range seedFiles() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := FromBytes("fuzz", b)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error is not a *FormatError: %v", err)
			}
			return
		}
		checkFile(t, file, len(b))
		// What opened must survive a write/read round trip unchanged.
		var ws []WriteTensor
		for _, tt := range file.Tensors() {
			w, err := tt.ToWrite()
			if err != nil {
				t.Fatal(err)
			}
			ws = append(ws, w)
		}
		var buf bytes.Buffer
		if err := Write(&buf, ws, file.Metadata); err != nil {
			t.Fatalf("re-write: %v", err)
		}
		again, err := FromBytes("again", buf.Bytes())
		if err != nil {
			t.Fatalf("re-read: %v", err)
		}
		for _, tt := range file.Tensors() {
			g := again.Tensor(tt.Name)
			if g == nil || g.DType != tt.DType || !bytes.Equal(g.Data(), tt.Data()) {
				t.Fatalf("%q changed in the round trip", tt.Name)
			}
		}
	})
}
