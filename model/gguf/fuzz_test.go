package gguf

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/zimage/zimage/internal/testref"
)

// FuzzOpen feeds arbitrary bytes to the parser: it must return a file
// whose every tensor lies inside the bytes and decodes, or a
// *FormatError; never panic, never allocate beyond the input's size.
// Seeds: files of every metadata type and tensor layout, the malformed
// headers of TestFormatErrors, and the head of each test-data file.
func FuzzOpen(f *testing.F) {
	f.Add(encode(f, sampleMeta(f), sampleTensors(f)))
	f.Add(layout(0, 32, 64))
	f.Add(layout(0, 0, 32))
	f.Add(tensorInfo("w", []uint64{64, 2}, uint32(Q8_0), 0, 136))
	f.Add(tensorInfo("w", []uint64{256}, uint32(Q4_K), 0, 144))
	f.Add(kv("general.alignment", uint32(TypeUint32), uint32(64)))
	f.Add(kv("k", uint32(TypeArray), uint32(TypeArray), uint64(1), uint32(TypeString), uint64(1), str("x")))
	b := encode(f, sampleMeta(f), sampleTensors(f))
	binary.LittleEndian.PutUint64(b[8:], 1<<40) // absurd tensor count
	f.Add(b)
	if root, ok := testref.Root(); ok {
		paths, _ := filepath.Glob(filepath.Join(root, "gguf", "*.gguf"))
		for _, p := range paths {
			if raw, err := os.ReadFile(p); err == nil {
				f.Add(raw[:min(len(raw), 8192)])
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := FromBytes("fuzz.gguf", data)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error is not a *FormatError: %v", err)
			}
			return
		}
		for _, name := range file.Names() {
			tt := file.Tensor(name)
			d := tt.Data()
			if int64(len(d)) != tt.Size || file.dataStart+int64(tt.Offset)+tt.Size > int64(len(data)) {
				t.Fatalf("%q: %d bytes at %d, file %d", name, len(d), tt.Offset, len(data))
			}
			if tt.Type.Supported() && tt.NumElem() <= 1<<16 {
				v, err := Float32s(tt)
				if err != nil || int64(len(v)) != tt.NumElem() {
					t.Fatalf("%q: Float32s: %d values, %v", name, len(v), err)
				}
			}
			_ = tt.Shape()
		}
	})
}
