package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/zimage/zimage/model/gguf"
	"github.com/zimage/zimage/model/safetensors"
)

// Convert writes c as a GGUF file at path, quantizing the tensors r
// selects (zimage convert):
//   - Stable Diffusion models (SD 1.x, 2.x, SDXL) as stable-diffusion.cpp's
//     convert writes them: every component under its LDM single-file name,
//     no metadata; with SDCppRules the quantized tensors are its bytes;
//   - Z-Image models as ComfyUI-GGUF publishes Z-Image-Turbo: the
//     transformer alone under its original key names, general.architecture
//     "lumina2"; the text encoder and VAE stay in their own files.
//
// Tensors the rules leave alone keep their stored type (F16, BF16, F32, or
// a block type). Values are read, and quantized, one tensor at a time
// while the file is written. progress, when set, is called before each
// tensor.
func Convert(c *Checkpoint, path string, r QuantizeRules, progress func(done, total int, name string)) (*ConvertSummary, error) {
	if err := r.Check(); err != nil {
		return nil, err
	}
	xs, err := c.ExportTensors()
	if err != nil {
		return nil, err
	}
	var meta gguf.Metadata
	if c.Arch == ZImage {
		meta = gguf.Metadata{{Key: "general.architecture", Value: gguf.String("lumina2")}}
	}
	sum := &ConvertSummary{Path: path, Types: map[string]int{}}
	ts := make([]gguf.WriteTensor, len(xs))
	for i, x := range xs {
		dtype, quant, _, stored := x.Stored()
		wt := gguf.WriteTensor{Name: x.Name, Shape: x.Shape}
		target, quantize := r.Type, r.Quantizes(x.Component, x.Name, x.Shape, x.parts[0].DType, x.parts[0].Quant)
		switch {
		case quantize:
			wt.Type = target
		case stored && quant.Quantized():
			wt.Type = quant
		default:
			if !stored {
				// Transposed, or joined from parts: the values keep the
				// parts' type when they share one, else F32 holds them all.
				dtype = x.parts[0].DType
				for _, p := range x.parts[1:] {
					if p.DType != dtype {
						dtype = safetensors.F32
					}
				}
			}
			if x.parts[0].Quantized() {
				dtype = safetensors.F32 // a transposed block tensor: its exact values
			}
			gt, ok := plainGGUF[dtype]
			if !ok {
				return nil, fmt.Errorf("model: convert %s: %s is %s, which GGUF files do not hold", c.Path, x.Name, dtype)
			}
			wt.Type = gt
		}
		wt.Fill = func() ([]byte, error) {
			if progress != nil {
				progress(i, len(xs), x.Name)
			}
			return exportData(x, wt.Type)
		}
		ts[i] = wt
		sum.Tensors++
		sum.Types[wt.Type.String()]++
		n, _ := wt.Type.RowBytes(x.NumElem())
		sum.Bytes += int64(n)
		if quantize {
			sum.Quantized++
		}
	}
	if err := gguf.WriteFile(path, meta, ts); err != nil {
		return nil, err
	}
	return sum, nil
}

// ConvertSummary describes a written file.
type ConvertSummary struct {
	Path      string
	Tensors   int
	Quantized int
	Bytes     int64          // tensor data
	Types     map[string]int // tensors per type
}

func (s *ConvertSummary) String() string {
	names := make([]string, 0, len(s.Types))
	for n := range s.Types {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s:%d", n, s.Types[n])
	}
	return fmt.Sprintf("%s: %d tensors (%d quantized; %s), %s of weights", s.Path, s.Tensors, s.Quantized, strings.Join(parts, " "), FormatBytes(s.Bytes))
}

var plainGGUF = map[safetensors.DType]gguf.Type{
	safetensors.F32: gguf.F32, safetensors.F16: gguf.F16, safetensors.BF16: gguf.BF16, safetensors.F64: gguf.F64,
	safetensors.I8: gguf.I8, safetensors.I16: gguf.I16, safetensors.I32: gguf.I32, safetensors.I64: gguf.I64,
}

// exportData is x's data as typ: its stored bytes when they are of that
// type, else its values encoded.
func exportData(x *ExportTensor, typ gguf.Type) ([]byte, error) {
	dtype, quant, raw, stored := x.Stored()
	if stored {
		if (quant.Quantized() && quant == typ) || (!quant.Quantized() && plainGGUF[dtype] == typ) {
			if raw == nil && x.NumElem() > 0 {
				return nil, fmt.Errorf("file is closed")
			}
			return raw, nil
		}
	}
	v, err := x.Float32s()
	if err != nil {
		return nil, err
	}
	switch typ {
	case gguf.F32:
		b := make([]byte, 4*len(v))
		for i, f := range v {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
		}
		return b, nil
	case gguf.F16, gguf.BF16:
		n, _ := typ.RowBytes(len(v))
		b := make([]byte, n)
		return b, gguf.Quantize(typ, v, b)
	}
	if !typ.Quantized() {
		return nil, fmt.Errorf("cannot encode %s values", typ)
	}
	return quantizeRows(typ, v, x.Shape[len(x.Shape)-1])
}
