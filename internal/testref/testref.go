// Package testref gives tests access to the reference models and tensors in
// ../shared/testmodels (or $ZIMAGE_TESTMODELS), skipping cleanly when they
// are absent. Only tests import it.
package testref

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/zimage/zimage/model/safetensors"
)

// Models are the three tiny reference pipelines.
var Models = []string{"tiny-sd-turbo", "tiny-sd15", "tiny-sdxl-turbo"}

// Root returns the testmodels folder: $ZIMAGE_TESTMODELS, else
// ../shared/testmodels beside the repository. ok is false when absent.
func Root() (string, bool) {
	if d := os.Getenv("ZIMAGE_TESTMODELS"); d != "" {
		_, err := os.Stat(d)
		return d, err == nil
	}
	_, file, _, _ := runtime.Caller(0)
	d := filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "testmodels")
	_, err := os.Stat(d)
	return d, err == nil
}

// Dir returns the folder of a reference model, skipping the test when the
// reference models are not available.
func Dir(t testing.TB, model string) string {
	t.Helper()
	root, ok := Root()
	if !ok {
		t.Skipf("reference models not found at %s (set ZIMAGE_TESTMODELS to the testmodels folder)", root)
	}
	return filepath.Join(root, model)
}

// Refs is one model's refs.safetensors plus refs.json.
type Refs struct {
	Dir  string
	File *safetensors.File
	JSON map[string]any
}

// Open opens a model's references; the file is closed when the test ends.
func Open(t testing.TB, model string) *Refs { return OpenSet(t, model, "refs") }

// OpenSet opens one reference set of a model, <set>.safetensors and
// <set>.json ("refs", "refs_img2img", "refs_lora").
func OpenSet(t testing.TB, model, set string) *Refs {
	t.Helper()
	dir := Dir(t, model)
	f, err := safetensors.Open(filepath.Join(dir, set+".safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	raw, err := os.ReadFile(filepath.Join(dir, set+".json"))
	if err != nil {
		t.Fatal(err)
	}
	r := &Refs{Dir: dir, File: f}
	if err := json.Unmarshal(raw, &r.JSON); err != nil {
		t.Fatalf("%s.json: %v", set, err)
	}
	return r
}

// Has reports whether a reference tensor exists.
func (r *Refs) Has(name string) bool { return r.File.Tensor(name) != nil }

// Floats returns a reference tensor as float32 values and its shape.
func (r *Refs) Floats(t testing.TB, name string) ([]float32, []int) {
	t.Helper()
	st := r.File.Tensor(name)
	if st == nil {
		t.Fatalf("reference tensor %q not in %s", name, r.Dir)
	}
	return Decode(t, st), st.Shape
}

// Ints returns an integer reference tensor (I64/I32) as int64 values.
func (r *Refs) Ints(t testing.TB, name string) ([]int64, []int) {
	t.Helper()
	st := r.File.Tensor(name)
	if st == nil {
		t.Fatalf("reference tensor %q not in %s", name, r.Dir)
	}
	b := st.Data()
	out := make([]int64, st.NumElem())
	for i := range out {
		switch st.DType {
		case safetensors.I64:
			out[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
		case safetensors.I32:
			out[i] = int64(int32(binary.LittleEndian.Uint32(b[4*i:])))
		case safetensors.U8:
			out[i] = int64(b[i])
		default:
			t.Fatalf("%s: dtype %s is not an integer type", name, st.DType)
		}
	}
	return out, st.Shape
}

// Decode converts an F32/F16/BF16/F64 tensor to float32.
func Decode(t testing.TB, st *safetensors.Tensor) []float32 {
	t.Helper()
	v, err := safetensors.Float32s(st)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Diff summarises how far got is from want.
type Diff struct {
	MaxAbs     float64 // max |got - want|
	MaxRef     float64 // max |want|
	RelMSE     float64 // sum (got-want)^2 / sum want^2
	NonFinite  int     // elements of got that are NaN or Inf
	Mismatched bool    // lengths differ
}

// Compare computes a Diff.
func Compare(got, want []float32) Diff {
	var d Diff
	if len(got) != len(want) {
		d.Mismatched = true
		return d
	}
	var num, den float64
	for i := range got {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			d.NonFinite++
			continue
		}
		e := math.Abs(g - w)
		d.MaxAbs = math.Max(d.MaxAbs, e)
		d.MaxRef = math.Max(d.MaxRef, math.Abs(w))
		num += e * e
		den += w * w
	}
	if den > 0 {
		d.RelMSE = num / den
	}
	return d
}

// Fp16Bound returns the reference's own fp16-vs-fp32 max |diff| for a
// tensor (refs.json "fp16_vs_fp32", searched in every section), or 0 when
// not recorded.
func (r *Refs) Fp16Bound(name string) float64 {
	sec, _ := r.JSON["fp16_vs_fp32"].(map[string]any)
	for _, v := range sec {
		m, _ := v.(map[string]any)
		if e, ok := m[name].(map[string]any); ok {
			if f, ok := e["max_abs"].(float64); ok {
				return f
			}
		}
	}
	return 0
}

// Run is one whole-pipeline run recorded in refs.json["runs"].
type Run struct {
	ID             string  `json:"id"`
	Prompt         string  `json:"prompt"`
	NegativePrompt *string `json:"negative_prompt"` // nil: none given
	Steps          int     `json:"num_inference_steps"`
	Guidance       float64 `json:"guidance_scale"`
	Height         int     `json:"height"`
	Width          int     `json:"width"`
	PNG            struct {
		FP32 string `json:"fp32"`
		FP16 string `json:"fp16"`
	} `json:"png"`
}

// Runs lists the model's reference runs.
func (r *Refs) Runs(t testing.TB) []Run {
	t.Helper()
	b, err := json.Marshal(r.JSON["runs"])
	if err != nil {
		t.Fatal(err)
	}
	var out []Run
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("refs.json runs: %v", err)
	}
	return out
}

// NoiseFile is the explicit-noise file of a run (latents and per-step
// draws), as zimage's --noise reads it.
func (r *Refs) NoiseFile(run Run) string {
	return filepath.Join(r.Dir, "noise", run.ID+".safetensors")
}
