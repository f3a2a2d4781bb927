package model

import (
	"fmt"
	"regexp"
	"runtime"
	"strings"
	"sync"

	"github.com/zimage/zimage/model/gguf"
	"github.com/zimage/zimage/model/safetensors"
)

// QuantizeRules say which tensors a conversion (Convert) or a load-time
// quantization (OpenOptions.Quantize) turns into blocks of Type. The
// rules look at a tensor's single-file name (LDM names for Stable
// Diffusion, original names for Z-Image; see ExportTensor) and shape as
// stable-diffusion.cpp's convert does, so that both write the same
// tensors; by default zimage also keeps 1-D tensors and the VAE as stored.
type QuantizeRules struct {
	Type gguf.Type // Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 or Q4_K
	// Vectors also quantizes 1-D tensors whose length is whole blocks
	// (norm scales), as stable-diffusion.cpp does. They are a few
	// kilobytes and every network reads them as F32.
	Vectors bool
	// VAE also quantizes the VAE (stable-diffusion.cpp does): 80-160 MB
	// that decide the image's fine detail.
	VAE bool
	// Transposed also quantizes the matrices zimage reads transposed
	// (OpenCLIP's text_projection), as stable-diffusion.cpp does: zimage
	// decodes them at load, so they save nothing on the device.
	Transposed bool
	// Keep are patterns of tensor names kept as stored.
	Keep []*regexp.Regexp
}

// SDCppRules are stable-diffusion.cpp's convert rules for typ: with them
// Convert writes the tensors its convert writes, byte for byte.
func SDCppRules(typ gguf.Type) QuantizeRules {
	return QuantizeRules{Type: typ, Vectors: true, VAE: true, Transposed: true}
}

// QuantizeTypes are the types Convert and load-time quantization encode.
var QuantizeTypes = []gguf.Type{gguf.Q8_0, gguf.Q4_0, gguf.Q4_1, gguf.Q5_0, gguf.Q5_1, gguf.Q4_K}

// ParseQuantizeType reads a --type or --weights value ("q8_0", "Q4_K").
func ParseQuantizeType(s string) (gguf.Type, error) {
	t, err := gguf.ParseType(s)
	if err == nil {
		for _, q := range QuantizeTypes {
			if q == t {
				return t, nil
			}
		}
	}
	names := make([]string, len(QuantizeTypes))
	for i, q := range QuantizeTypes {
		names[i] = strings.ToLower(q.String())
	}
	return 0, fmt.Errorf("model: quantization type %q: want one of %s", s, strings.Join(names, ", "))
}

// Check reports rules zimage cannot apply.
func (r *QuantizeRules) Check() error {
	for _, q := range QuantizeTypes {
		if q == r.Type {
			return nil
		}
	}
	return fmt.Errorf("model: cannot quantize to %s (want one of %v)", r.Type, QuantizeTypes)
}

// keptNames are stable-diffusion.cpp's exceptions (tensor_should_be_converted):
// FLUX's and MMDiT's embedders and final layer, the UNet's time and class
// embeddings, every embedding table; and Qwen3's token table, which
// zimage reads a few rows at a time on the host.
var keptNames = []string{"img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.",
	"x_embedder.", "t_embedder.", "y_embedder.", "pos_embed", "context_embedder.",
	"time_embed.", "label_emb.", "embedding", "embed_tokens"}

// Quantizes reports whether the rules turn the tensor name (of component,
// shape in the file's layout, stored as dtype or quant) into Type.
func (r *QuantizeRules) Quantizes(component, name string, shape []int, dtype safetensors.DType, quant gguf.Type) bool {
	if !quant.Quantized() && dtype != safetensors.F16 && dtype != safetensors.BF16 && dtype != safetensors.F32 {
		return false // integer buffers
	}
	if len(shape) == 0 || shape[len(shape)-1]%r.Type.BlockSize() != 0 {
		return false // ggml quantizes rows (the innermost dimension) of whole blocks
	}
	if strings.HasSuffix(name, ".bias") || strings.HasSuffix(name, ".scale") {
		return false
	}
	for _, k := range keptNames {
		if strings.Contains(name, k) {
			return false
		}
	}
	if (len(shape) < 2 && !r.Vectors) || (component == "vae" && !r.VAE) || (strings.HasSuffix(name, "text_projection") && !r.Transposed) {
		return false
	}
	for _, re := range r.Keep {
		if re.MatchString(name) {
			return false
		}
	}
	return true
}

// quantizeRows encodes rows of rowLen values into blocks of typ as
// stable-diffusion.cpp's convert does (ggml_quantize_chunk with all-one
// importance weights), spreading the rows over the CPUs; it returns when
// all are done.
func quantizeRows(typ gguf.Type, v []float32, rowLen int) ([]byte, error) {
	rowBytes, ok := typ.RowBytes(rowLen)
	if !ok || rowLen == 0 || len(v)%rowLen != 0 {
		return nil, fmt.Errorf("model: quantize %s: %d values are not rows of %d whole blocks", typ, len(v), rowLen)
	}
	rows := len(v) / rowLen
	out := make([]byte, rows*rowBytes)
	ones := make([]float32, rowLen)
	for i := range ones {
		ones[i] = 1
	}
	workers := min(runtime.GOMAXPROCS(0), rows)
	per := (rows + workers - 1) / workers
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		r0, r1 := w*per, min(rows, (w+1)*per)
		if r0 >= r1 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = gguf.QuantizeWeighted(typ, v[r0*rowLen:r1*rowLen], out[r0*rowBytes:r1*rowBytes], rowLen, ones)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// quantizedEntry is e encoded as blocks of typ (rows of rowLen), computed
// on first read and kept until released (Entry.release).
func quantizedEntry(e *Entry, typ gguf.Type, rowLen int) *Entry {
	out := &Entry{Key: e.Key, Quant: typ, Shape: append([]int(nil), e.Shape...), File: e.File}
	out.cache(func() []byte {
		v, err := e.Float32s()
		if err != nil {
			return nil // file closed
		}
		q, err := quantizeRows(typ, v, rowLen)
		if err != nil {
			return nil
		}
		return q
	})
	return out
}

// quantizeAtLoad replaces the entries the rules select by their blocks of
// r.Type, encoded on first read: the networks then keep them quantized on
// the device (Weights.ParamQ). Entries already quantized (a GGUF file)
// are left as they are, as are transposed ones (blocks run along the
// other axis). Z-Image's Qwen3 text encoder has no single-file names: its
// canonical keys take the rules.
func (c *Checkpoint) quantizeAtLoad(r *QuantizeRules) (int, error) {
	if err := r.Check(); err != nil {
		return 0, err
	}
	xs, err := c.ExportTensors()
	if err != nil {
		return 0, err
	}
	srcs := map[string]*Source{}
	for _, s := range c.Sources() {
		srcs[s.Name] = s
	}
	n := 0
	replace := func(src *Source, e *Entry, rowLen int) {
		if e.Quantized() {
			return
		}
		src.entries[e.Key] = quantizedEntry(e, r.Type, rowLen)
		n++
	}
	for _, x := range xs {
		if x.conv == convTranspose || !r.Quantizes(x.Component, x.Name, x.Shape, x.parts[0].DType, x.parts[0].Quant) {
			continue
		}
		src := srcs[x.Component]
		if src == nil {
			continue
		}
		for _, e := range x.parts {
			replace(src, e, x.Shape[len(x.Shape)-1])
		}
	}
	if c.Qwen != nil {
		for _, k := range c.Qwen.Source.Keys() {
			e := c.Qwen.Source.Entry(k)
			if r.Quantizes("text_encoder", k, e.Shape, e.DType, e.Quant) {
				replace(c.Qwen.Source, e, e.Shape[len(e.Shape)-1])
			}
		}
	}
	return n, nil
}
