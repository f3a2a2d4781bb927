package gguf

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/safetensors"
)

// The test data's GGUF files were written by stable-diffusion.cpp's convert
// (ggml's quantize_row_*_ref) from the tiny reference models;
// gguf_tensors.json records, per LDM tensor and quantization type, the ggml
// type, the torch shape and the sha256 of ggml's dequantized float32
// values (see the testmodels README).

type refTensor struct {
	Type   string
	Shape  []int
	SHA256 string
}

type refPart struct {
	Component string `json:"component"`
	Name      string `json:"name"`
	Shape     []int  `json:"shape"`
	Rows      []int  `json:"ldm_rows"`
}

type refModel struct {
	Mapping map[string][]refPart
	Tensors map[string]map[string]refTensor // type -> LDM name
}

func loadRefs(t *testing.T) (dir string, models map[string]*refModel, files map[string]map[string]string) {
	t.Helper()
	root, ok := testref.Root()
	if !ok {
		t.Skipf("reference models not found at %s (set ZIMAGE_TESTMODELS)", root)
	}
	dir = filepath.Join(root, "gguf")
	raw, err := os.ReadFile(filepath.Join(dir, "gguf_tensors.json"))
	if err != nil {
		t.Skipf("no GGUF test data: %v", err)
	}
	var doc struct {
		Models map[string]struct {
			Mapping map[string][]refPart                    `json:"mapping"`
			Tensors map[string]map[string][]json.RawMessage `json:"tensors"`
		} `json:"models"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	models = map[string]*refModel{}
	for name, m := range doc.Models {
		rm := &refModel{Mapping: m.Mapping, Tensors: map[string]map[string]refTensor{}}
		for typ, ts := range m.Tensors {
			rm.Tensors[typ] = map[string]refTensor{}
			for ldm, v := range ts {
				var rt refTensor
				if len(v) != 5 || json.Unmarshal(v[0], &rt.Type) != nil || json.Unmarshal(v[1], &rt.Shape) != nil ||
					json.Unmarshal(v[4], &rt.SHA256) != nil {
					t.Fatalf("gguf_tensors.json: %s %s %s: unexpected entry", name, typ, ldm)
				}
				rm.Tensors[typ][ldm] = rt
			}
		}
		models[name] = rm
	}
	var refs struct {
		Models map[string]struct {
			Dir   string            `json:"diffusers_dir"`
			Files map[string]string `json:"component_files"`
		} `json:"models"`
	}
	raw, err = os.ReadFile(filepath.Join(dir, "gguf_refs.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &refs); err != nil {
		t.Fatal(err)
	}
	files = map[string]map[string]string{}
	for name, m := range refs.Models {
		files[name] = map[string]string{}
		for comp, f := range m.Files {
			files[name][comp] = filepath.Join(dir, m.Dir, f)
		}
	}
	return dir, models, files
}

func sha(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TestDequantizeMatchesGGML decodes every tensor of every test file and
// compares the float32 bytes with ggml's (sha256), and the type and shape
// with what the converter wrote.
func TestDequantizeMatchesGGML(t *testing.T) {
	dir, models, _ := loadRefs(t)
	for _, model := range sortedKeys(models) {
		for _, typ := range sortedKeys(models[model].Tensors) {
			path := filepath.Join(dir, model+"."+typ+".gguf")
			if _, err := os.Stat(path); err != nil {
				continue // recorded without a file (e.g. tiny-sd-turbo q4_0)
			}
			t.Run(model+"."+typ, func(t *testing.T) {
				f, err := Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				want := models[model].Tensors[typ]
				if len(f.Names()) != len(want) {
					t.Errorf("%d tensors, want %d", len(f.Names()), len(want))
				}
				counts := map[Type]int{}
				for _, name := range sortedKeys(want) {
					w := want[name]
					tt := f.Tensor(name)
					if tt == nil {
						t.Errorf("%s: missing", name)
						continue
					}
					counts[tt.Type]++
					if tt.Type.String() != w.Type || fmt.Sprint(tt.Shape()) != fmt.Sprint(w.Shape) {
						t.Errorf("%s: %s %v, want %s %v", name, tt.Type, tt.Shape(), w.Type, w.Shape)
						continue
					}
					v, err := Float32s(tt)
					if err != nil {
						t.Fatal(err)
					}
					if got := sha(v); got != w.SHA256 {
						t.Errorf("%s (%s %v): dequantized sha256 %s, want %s", name, tt.Type, tt.Shape(), got[:16], w.SHA256[:16])
					}
				}
				t.Logf("%d tensors bit-identical to ggml's dequantization: %v", len(want), counts)
			})
		}
	}
}

// original returns the F16 weights an LDM tensor was made from, gathered
// from the diffusers files through the test data's mapping (fused q/k/v
// tensors from their three parts, in row order).
func original(t *testing.T, comps map[string]*safetensors.File, parts []refPart) []float32 {
	t.Helper()
	parts = append([]refPart(nil), parts...)
	sort.Slice(parts, func(i, j int) bool { return len(parts[i].Rows) > 0 && parts[i].Rows[0] < parts[j].Rows[0] })
	var out []float32
	for _, p := range parts {
		st := comps[p.Component].Tensor(p.Name)
		if st == nil {
			t.Fatalf("%s: %s not found", p.Component, p.Name)
		}
		v, err := safetensors.Float32s(st)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v...)
	}
	return out
}

// TestQuantizeMatchesGGML quantizes the tiny models' original F16 weights
// with every type the test data records, as stable-diffusion.cpp's convert
// does (ggml_quantize_chunk with an all-ones importance matrix, row by
// row), and compares with ggml: the bytes
// of the GGUF files where they exist, and the sha256 of the dequantized
// values for every type (tiny-sd-turbo's Q4_0, Q4_1, Q5_0 and Q4_K are
// recorded without files).
func TestQuantizeMatchesGGML(t *testing.T) {
	dir, models, files := loadRefs(t)
	for _, model := range sortedKeys(models) {
		t.Run(model, func(t *testing.T) {
			comps := map[string]*safetensors.File{}
			for comp, p := range files[model] {
				f, err := safetensors.Open(p)
				if err != nil {
					t.Skipf("reference model files: %v", err)
				}
				defer f.Close()
				comps[comp] = f
			}
			rm := models[model]
			for _, typ := range sortedKeys(rm.Tensors) {
				var file *File
				if f, err := Open(filepath.Join(dir, model+"."+typ+".gguf")); err == nil {
					defer f.Close()
					file = f
				}
				n, bytesChecked := 0, 0
				for _, name := range sortedKeys(rm.Tensors[typ]) {
					w := rm.Tensors[typ][name]
					gt, err := ParseType(w.Type)
					if err != nil {
						t.Fatal(err)
					}
					x := original(t, comps, rm.Mapping[name])
					row := 1
					if len(w.Shape) > 0 {
						row = w.Shape[len(w.Shape)-1]
					}
					size, ok := gt.RowBytes(len(x))
					if _, rowOK := gt.RowBytes(row); !ok || !rowOK {
						t.Fatalf("%s %s: %d elements, rows of %d, not whole %s blocks", typ, name, len(x), row, gt)
					}
					q := make([]byte, size)
					ones := make([]float32, row)
					for i := range ones {
						ones[i] = 1
					}
					if err := QuantizeWeighted(gt, x, q, row, ones); err != nil {
						t.Fatal(err)
					}
					if file != nil {
						if ft := file.Tensor(name); ft == nil || !bytes.Equal(ft.Data(), q) {
							t.Errorf("%s %s (%s): quantized bytes differ from ggml's", typ, name, gt)
							continue
						}
						bytesChecked++
					}
					y := make([]float32, len(x))
					if err := Dequantize(gt, q, y); err != nil {
						t.Fatal(err)
					}
					if got := sha(y); got != w.SHA256 {
						t.Errorf("%s %s (%s): dequantized sha256 %s, want %s", typ, name, gt, got[:16], w.SHA256[:16])
						continue
					}
					if gt.Quantized() {
						n++
					}
				}
				t.Logf("%s: %d quantized tensors match ggml (%d byte-compared with the file)", typ, n, bytesChecked)
			}
		})
	}
}
