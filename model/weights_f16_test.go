package model

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/model/safetensors"
)

// TestParamOutsideF16StaysF32: a BF16 or F32 matrix holding a value beyond
// F16's range (65504) is stored F32 on upload, exactly, instead of holding
// Inf; a matrix in range goes to F16 as before; Rows gathers exactly.
func TestParamOutsideF16StaysF32(t *testing.T) {
	f32 := func(vs ...float32) []byte {
		b := make([]byte, 4*len(vs))
		for i, v := range vs {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
		return b
	}
	bf16 := func(vs ...float32) []byte {
		b := make([]byte, 2*len(vs))
		for i, v := range vs {
			binary.LittleEndian.PutUint16(b[2*i:], uint16(math.Float32bits(v)>>16))
		}
		return b
	}
	var buf bytes.Buffer
	require.NoError(t, safetensors.Write(&buf, []safetensors.WriteTensor{
		{Name: "big.f32", DType: safetensors.F32, Shape: []int{2, 2}, Data: f32(1, -70000, 0.5, 3)},
		{Name: "big.bf16", DType: safetensors.BF16, Shape: []int{2, 2}, Data: bf16(1, 2, 65536, 3)},
		{Name: "ok.f32", DType: safetensors.F32, Shape: []int{2, 2}, Data: f32(1, -65504, 0.5, 3)},
	}, nil))
	f, err := safetensors.FromBytes("mem", buf.Bytes())
	require.NoError(t, err)
	src := NewSource("test")
	for _, n := range f.Names() {
		src.AddTensor(n, f.Tensor(n), "mem")
	}
	w := NewWeights(src)
	bigF32, bigBF16, ok := w.Param("big.f32", 2, 2), w.Param("big.bf16", 2, 2), w.Param("ok.f32", 2, 2)
	require.NoError(t, w.Err())
	b := refBackend(t)
	for _, tc := range []struct {
		p     *Param
		dt    engine.DType
		want  []float32
		bytes int64
	}{
		{bigF32, engine.F32, []float32{1, -70000, 0.5, 3}, 16},
		{bigBF16, engine.F32, []float32{1, 2, 65536, 3}, 16},
		{ok, engine.F16, []float32{1, -65504, 0.5, 3}, 8},
	} {
		require.NoError(t, tc.p.Upload(b))
		require.Equal(t, tc.dt, tc.p.T.DType, tc.p.Key)
		require.Equal(t, tc.dt == engine.F32, tc.p.Widened, tc.p.Key)
		require.Equal(t, tc.bytes, tc.p.Bytes(), tc.p.Key)
		got, err := b.Read(tc.p.T)
		require.NoError(t, err)
		require.Equal(t, tc.want, got, tc.p.Key)
		rows, err := tc.p.Rows([]int32{1, 0})
		require.NoError(t, err)
		require.Equal(t, append(append([]float32{}, tc.want[2:]...), tc.want[:2]...), rows, tc.p.Key)
		tc.p.Evict(b)
	}
	_, err = ok.Rows([]int32{2})
	require.ErrorContains(t, err, "id 2 (position 0) outside [0, 2)")
}
