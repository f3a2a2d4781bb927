package safetensors

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestTruncatedWhileMapped: a file truncated after Open faults (SIGBUS)
// when the pages past its new end are read; Guard and Float32s turn that
// into ErrFileChanged naming the file, and the process lives on.
func TestTruncatedWhileMapped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w.safetensors")
	data := make([]byte, 4*65536) // 64 pages of F32
	for i := 0; i < len(data)/4; i++ {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(i)))
	}
	require.NoError(t, WriteFile(path, []WriteTensor{{Name: "w", DType: F32, Shape: []int{65536}, Data: data}}, nil))
	f, err := Open(path)
	require.NoError(t, err)
	defer f.Close()
	w := f.Tensor("w")
	v, err := Float32s(w)
	require.NoError(t, err)
	require.Equal(t, float32(65535), v[65535])

	require.NoError(t, os.Truncate(path, 8192))
	_, err = Float32s(w)
	require.ErrorIs(t, err, ErrFileChanged)
	require.Contains(t, err.Error(), path)

	var sum byte
	err = Guard(path, func() error {
		for _, b := range w.Data() {
			sum += b
		}
		return nil
	})
	require.ErrorIs(t, err, ErrFileChanged)

	// Other panics are not swallowed.
	require.PanicsWithValue(t, "boom", func() { Guard(path, func() error { panic("boom") }) })
}
