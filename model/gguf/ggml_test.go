package gguf

import (
	"bytes"
	"math"
	"testing"

	"github.com/zimage/zimage/model/safetensors"
)

// testdata/ggml_blocks.safetensors holds ggml's own outputs (recorded
// once by a throwaway harness linked against ggml-quants.c; the harness is
// not kept, since it builds ggml's code, and the data alone is what the
// tests need): its
// dequantization of pseudo-random blocks of every supported block type
// (with the all-ones and all-zeros blocks and extreme scales), and its
// _ref and importance-matrix encoders on 16 rows of assorted data.
func ggmlBlocks(t *testing.T) *safetensors.File {
	t.Helper()
	f, err := safetensors.Open("testdata/ggml_blocks.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func floats(t *testing.T, f *safetensors.File, name string) []float32 {
	t.Helper()
	st := f.Tensor(name)
	if st == nil {
		t.Fatalf("%s not in the ggml fixture", name)
	}
	v, err := safetensors.Float32s(st)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestDequantizeMatchesGGMLBlocks(t *testing.T) {
	f := ggmlBlocks(t)
	for _, typ := range []Type{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K} {
		t.Run(typ.String(), func(t *testing.T) {
			blocks := f.Tensor("dequant." + typ.String() + ".blocks").Data()
			want := floats(t, f, "dequant."+typ.String()+".values")
			got := make([]float32, len(want))
			if err := Dequantize(typ, blocks, got); err != nil {
				t.Fatal(err)
			}
			bad := 0
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					if bad < 5 {
						t.Errorf("block %d element %d: %v (%#08x), ggml %v (%#08x)", i/typ.BlockSize(), i%typ.BlockSize(),
							got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
					}
					bad++
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d values differ from ggml's", bad, len(got))
			}
		})
	}
}

func TestQuantizeMatchesGGMLRef(t *testing.T) {
	f := ggmlBlocks(t)
	x := floats(t, f, "quant.inputs")
	w := floats(t, f, "quant.weights")
	for _, typ := range []Type{Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K} {
		t.Run(typ.String(), func(t *testing.T) {
			size, _ := typ.RowBytes(len(x))
			for _, c := range []struct {
				name string
				enc  func([]byte) error
			}{
				{"ref", func(dst []byte) error { return Quantize(typ, x, dst) }},
				{"imatrix", func(dst []byte) error { return QuantizeWeighted(typ, x, dst, len(w), w) }},
			} {
				got := make([]byte, size)
				if err := c.enc(got); err != nil {
					t.Fatal(err)
				}
				want := f.Tensor("quant." + typ.String() + "." + c.name).Data()
				if bytes.Equal(got, want) {
					continue
				}
				bb, bs := typ.BlockBytes(), typ.BlockSize()
				for b := 0; b*bb < len(got); b++ {
					if !bytes.Equal(got[b*bb:(b+1)*bb], want[b*bb:(b+1)*bb]) {
						t.Errorf("%s: block %d (row %d) differs from ggml's:\n got  %x\n want %x", c.name, b, b*bs/512, got[b*bb:(b+1)*bb], want[b*bb:(b+1)*bb])
						break
					}
				}
			}
		})
	}
}
