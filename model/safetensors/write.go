package safetensors

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
)

// WriteTensor is one tensor to write: its bytes are little-endian elements
// of DType, exactly NumElem(Shape) x DType.Size() of them.
type WriteTensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

type headerEntry struct {
	DType   DType    `json:"dtype"`
	Shape   []int    `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

// EncodeHeader returns the 8-byte length and the JSON header of a file
// whose data section holds the tensors back to back in the given order.
// Data is not read, only the sizes that Shape and DType imply, so a caller
// can stream (or leave sparse) a data section of any size. The header is
// padded with spaces to a multiple of 8 bytes so that the data section
// starts aligned, as the reference writer does. Keys are sorted, so the
// output is deterministic.
func EncodeHeader(tensors []WriteTensor, metadata map[string]string) (hdr []byte, dataLen int64, err error) {
	entries := make(map[string]any, len(tensors)+1)
	if metadata != nil {
		entries["__metadata__"] = metadata
	}
	var off int64
	for _, t := range tensors {
		if t.Name == "__metadata__" {
			return nil, 0, fmt.Errorf("safetensors: write: %q is reserved for metadata", t.Name)
		}
		if _, dup := entries[t.Name]; dup {
			return nil, 0, fmt.Errorf("safetensors: write: tensor %q given twice", t.Name)
		}
		n, err := spanOf(t)
		if err != nil {
			return nil, 0, err
		}
		if off > math.MaxInt64-n {
			return nil, 0, fmt.Errorf("safetensors: write: tensor %q: data section overflows", t.Name)
		}
		shape := append([]int{}, t.Shape...) // [] not null for scalars
		entries[t.Name] = headerEntry{DType: t.DType, Shape: shape, Offsets: [2]int64{off, off + n}}
		off += n
	}
	js, err := json.Marshal(entries)
	if err != nil {
		return nil, 0, fmt.Errorf("safetensors: write: %w", err)
	}
	pad := (8 - len(js)%8) % 8
	hdr = make([]byte, 8, 8+len(js)+pad)
	binary.LittleEndian.PutUint64(hdr, uint64(len(js)+pad))
	hdr = append(hdr, js...)
	for range pad {
		hdr = append(hdr, ' ')
	}
	return hdr, off, nil
}

func spanOf(t WriteTensor) (int64, error) {
	size := t.DType.Size()
	if size == 0 {
		return 0, fmt.Errorf("safetensors: write: tensor %q: unknown dtype %q", t.Name, string(t.DType))
	}
	n := uint64(size)
	for _, d := range t.Shape {
		if d < 0 {
			return 0, fmt.Errorf("safetensors: write: tensor %q: negative dimension in shape %v", t.Name, t.Shape)
		}
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, fmt.Errorf("safetensors: write: tensor %q: shape %v is too large", t.Name, t.Shape)
		}
		n = lo
	}
	return int64(n), nil
}

// Write writes a safetensors file holding the tensors (data in the given
// order) and metadata (nil for none). Opening the result gives back the
// same names, dtypes, shapes, bytes and metadata.
func Write(w io.Writer, tensors []WriteTensor, metadata map[string]string) error {
	for _, t := range tensors {
		n, err := spanOf(t)
		if err != nil {
			return err
		}
		if int64(len(t.Data)) != n {
			return fmt.Errorf("safetensors: write: tensor %q: %d bytes of data, shape %v of %s needs %d", t.Name, len(t.Data), t.Shape, t.DType, n)
		}
	}
	hdr, _, err := EncodeHeader(tensors, metadata)
	if err != nil {
		return err
	}
	if _, err := w.Write(hdr); err != nil {
		return fmt.Errorf("safetensors: write: %w", err)
	}
	for _, t := range tensors {
		if _, err := w.Write(t.Data); err != nil {
			return fmt.Errorf("safetensors: write %q: %w", t.Name, err)
		}
	}
	return nil
}

// WriteFile writes the tensors to path (created or truncated). On error
// the partial file is removed.
func WriteFile(path string, tensors []WriteTensor, metadata map[string]string) (err error) {
	fh, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	defer func() {
		if cerr := fh.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("safetensors: %w", cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	bw := bufio.NewWriterSize(fh, 1<<20)
	if err := Write(bw, tensors, metadata); err != nil {
		return fmt.Errorf("%w (writing %s)", err, path)
	}
	return bw.Flush()
}

// ToWrite returns the tensor as a WriteTensor whose Data aliases the mapping
// (valid until the file is closed), for re-writing files.
func (t *Tensor) ToWrite() (WriteTensor, error) {
	d := t.Data()
	if d == nil && t.Bytes() > 0 {
		return WriteTensor{}, errors.New("safetensors: " + t.Name + ": file is closed")
	}
	return WriteTensor{Name: t.Name, DType: t.DType, Shape: append([]int(nil), t.Shape...), Data: d}, nil
}
