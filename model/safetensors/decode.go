package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/x448/float16"
)

// Float32s decodes a floating-point tensor (F32, F16, BF16 or F64) into
// float32 values. A file truncated since Open gives an error wrapping
// ErrFileChanged (see Guard).
func Float32s(t *Tensor) (out []float32, err error) {
	path := t.Name
	if t.file != nil {
		path = t.file.Path
	}
	err = Guard(path, func() error {
		out, err = float32s(t)
		return err
	})
	return out, err
}

func float32s(t *Tensor) ([]float32, error) {
	b := t.Data()
	n := int(t.NumElem())
	if int64(len(b)) != t.NumElem()*int64(t.DType.Size()) {
		return nil, fmt.Errorf("safetensors: tensor %q: %d bytes for %d %s elements", t.Name, len(b), n, t.DType)
	}
	out := make([]float32, n)
	switch t.DType {
	case F32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case F16:
		for i := range out {
			out[i] = float16.Frombits(binary.LittleEndian.Uint16(b[2*i:])).Float32()
		}
	case BF16:
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
		}
	case F64:
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
		}
	default:
		return nil, fmt.Errorf("safetensors: tensor %q has dtype %s, not a floating-point type", t.Name, t.DType)
	}
	return out, nil
}
