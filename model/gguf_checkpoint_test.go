package model

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/gguf"
	"github.com/zimage/zimage/model/safetensors"
)

// ggufFiles lists the test data's GGUF files with the tiny model each was
// converted from (skipping when the test data is absent).
func ggufFiles(t *testing.T) (dir string, files map[string]string) {
	t.Helper()
	root, ok := testref.Root()
	if !ok {
		t.Skipf("reference models not found at %s", root)
	}
	dir = filepath.Join(root, "gguf")
	paths, _ := filepath.Glob(filepath.Join(dir, "*.gguf"))
	if len(paths) == 0 {
		t.Skipf("no GGUF test data in %s", dir)
	}
	files = map[string]string{}
	for _, p := range paths {
		base := filepath.Base(p)
		files[p] = base[:strings.IndexByte(base, '.')]
	}
	return dir, files
}

// ldmPart is where a diffusers parameter comes from in the LDM file, as
// the test data's own conversion mapped it (gguf_tensors.json).
type ldmPart struct {
	ldm        string
	rows       []int
	fromShape4 bool
}

func ggufMapping(t *testing.T, dir, model string) map[string]ldmPart {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "gguf_tensors.json"))
	require.NoError(t, err)
	var doc struct {
		Models map[string]struct {
			Mapping map[string][]struct {
				Component string `json:"component"`
				Name      string `json:"name"`
				Rows      []int  `json:"ldm_rows"`
			} `json:"mapping"`
		} `json:"models"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc))
	out := map[string]ldmPart{}
	for ldm, parts := range doc.Models[model].Mapping {
		for _, p := range parts {
			out[p.Component+"/"+p.Name] = ldmPart{ldm: ldm, rows: p.Rows}
		}
	}
	return out
}

// TestOpenGGUF opens every test-data file as a checkpoint (with the tiny
// model's folder for configs and tokenizers): the same components, keys,
// shapes and configs as the diffusers folder, every value the ggml
// dequantization of the LDM tensor the test data maps it from (q/k/v rows
// of the fused SD 2.x projections included), and quantized tensors kept
// quantized, split rows too.
func TestOpenGGUF(t *testing.T) {
	dir, files := ggufFiles(t)
	for _, path := range sortedNames(files) {
		model := files[path]
		t.Run(filepath.Base(path), func(t *testing.T) {
			mdir := testref.Dir(t, model)
			ref := openTest(t, mdir, OpenOptions{})
			c := openTest(t, path, OpenOptions{ConfigDir: mdir, TokenizerDir: mdir})
			assert.Equal(t, FormatGGUF, c.Format)
			assert.Equal(t, ref.Arch, c.Arch)
			assert.Empty(t, c.Warnings)
			require.NoError(t, c.RequireTokenizers())
			assert.True(t, reflect.DeepEqual(ref.UNet.Config, c.UNet.Config) && reflect.DeepEqual(ref.VAE.Config, c.VAE.Config))
			require.Len(t, c.TextEncoders, len(ref.TextEncoders))
			assert.Equal(t, ref.TextEncoders[0].Config, c.TextEncoders[0].Config)

			f, err := gguf.Open(path)
			require.NoError(t, err)
			defer f.Close()
			mapping := ggufMapping(t, dir, model)
			quantized, checked := 0, 0
			for i, src := range c.Sources() {
				want := ref.Sources()[i]
				require.Equal(t, want.Keys(), src.Keys(), src.Name)
				for _, k := range src.Keys() {
					e := src.Entry(k)
					require.Equal(t, want.Entry(k).Shape, e.Shape, "%s %s", src.Name, k)
					m, ok := mapping[src.Name+"/"+k]
					require.True(t, ok, "%s %s not in the test data's mapping", src.Name, k)
					lt := f.Tensor(m.ldm)
					all, err := gguf.Float32s(lt)
					require.NoError(t, err)
					if m.rows != nil {
						row := len(all) / lt.Shape()[0]
						all = all[m.rows[0]*row : m.rows[1]*row]
					}
					got, err := e.Float32s()
					require.NoError(t, err)
					require.Equal(t, len(all), len(got), "%s %s", src.Name, k)
					for j := range got {
						if math.Float32bits(got[j]) != math.Float32bits(all[j]) {
							t.Fatalf("%s %s element %d: %v, want %v (from %s)", src.Name, k, j, got[j], all[j], m.ldm)
						}
					}
					if lt.Type.Quantized() {
						assert.True(t, e.Quantized(), "%s %s lost its %s blocks", src.Name, k, lt.Type)
						assert.Equal(t, lt.Type, e.Quant)
						quantized++
					}
					checked++
				}
			}
			t.Logf("%d canonical tensors match ggml's dequantization, %d of them kept quantized", checked, quantized)

			// The networks load from it, using every tensor but the VAE
			// encoder's.
			_, err = LoadCLIPText(c.TextEncoders[0].Source, c.TextEncoders[0].Config)
			require.NoError(t, err)
			_, err = LoadUNet(c.UNet.Source, c.UNet.Config)
			require.NoError(t, err)
			_, err = LoadVAEDecoder(c.VAE.Source, c.VAE.Config)
			require.NoError(t, err)
			assert.Empty(t, c.UNet.Source.Unused())
			assert.Empty(t, c.TextEncoders[0].Source.Unused())

			info := c.Info()
			assert.Equal(t, FormatGGUF, info.Format)
			assert.InDelta(t, float64(f.Size()), float64(info.FileBytes), float64(f.Size())/20, "stored sizes add up to about the file")
		})
	}
}

// TestOpenGGUFInferred: without metadata or ConfigDir the family comes
// from the tensor names and the sizes from their shapes.
func TestOpenGGUFInferred(t *testing.T) {
	_, files := ggufFiles(t)
	for _, path := range sortedNames(files) {
		model := files[path]
		ref := openTest(t, testref.Dir(t, model), OpenOptions{})
		c := openTest(t, path, OpenOptions{})
		assert.Equal(t, ref.Arch, c.Arch, path)
		assert.Equal(t, ref.UNet.Config.BlockOutChannels, c.UNet.Config.BlockOutChannels, path)
		assert.Equal(t, ref.UNet.Config.CrossAttentionDim.At(0), c.UNet.Config.CrossAttentionDim.At(0), path)
		assert.Equal(t, ref.VAE.Config.BlockOutChannels, c.VAE.Config.BlockOutChannels, path)
		if c.Arch == SD2 {
			// Published SD 2.x files hold the whole OpenCLIP tower and the
			// pipeline drops its last block; this file, converted back from
			// diffusers, holds only diffusers' blocks (ConfigDir tells).
			assert.Equal(t, ref.TextEncoders[0].Config.NumHiddenLayers-1, c.TextEncoders[0].Config.NumHiddenLayers)
		} else {
			assert.Equal(t, ref.TextEncoders[0].Config.NumHiddenLayers, c.TextEncoders[0].Config.NumHiddenLayers)
		}
	}
}

func writeGGUF(t *testing.T, meta gguf.Metadata, ts []gguf.WriteTensor) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "x.gguf")
	require.NoError(t, gguf.WriteFile(p, meta, ts))
	return p
}

func f32Tensor(name string, shape ...int) gguf.WriteTensor {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return gguf.WriteTensor{Name: name, Type: gguf.F32, Shape: shape, Data: make([]byte, 4*n)}
}

func TestGGUFRefusesOtherModels(t *testing.T) {
	cases := []struct {
		name    string
		meta    gguf.Metadata
		tensors []gguf.WriteTensor
		want    []string
	}{
		{"flux", gguf.Metadata{{Key: "general.architecture", Value: gguf.String("flux")}},
			[]gguf.WriteTensor{f32Tensor("double_blocks.0.img_attn.proj.weight", 8, 8)}, []string{"a FLUX transformer", `general.architecture="flux"`}},
		{"flux in a checkpoint", nil, []gguf.WriteTensor{f32Tensor("model.diffusion_model.double_blocks.0.img_attn.proj.weight", 8, 8)}, []string{"FLUX"}},
		{"llama", gguf.Metadata{{Key: "general.architecture", Value: gguf.String("llama")}, {Key: "general.name", Value: gguf.String("Llama 3")}},
			[]gguf.WriteTensor{f32Tensor("token_embd.weight", 4, 8)}, []string{"language model", `general.architecture="llama"`, "Llama 3"}},
		{"lumina 2 fragment", nil, []gguf.WriteTensor{f32Tensor("cap_embedder.1.weight", 8, 8)}, []string{"Lumina 2-style"}},
		{"unknown with metadata", gguf.Metadata{{Key: "general.architecture", Value: gguf.String("mystery")}},
			[]gguf.WriteTensor{f32Tensor("a.weight", 8)}, []string{"not a Stable Diffusion UNet", "mystery"}},
		{"unknown", nil, []gguf.WriteTensor{f32Tensor("a.weight", 8)}, []string{"no metadata and no known tensor layout", "a.weight"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := OpenCheckpoint(writeGGUF(t, c.meta, c.tensors), OpenOptions{})
			var ue *UnsupportedModelError
			require.True(t, errors.As(err, &ue), "got %v", err)
			for _, w := range c.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.Contains(t, err.Error(), "zimage runs SD 1.x, SD 2.x, SDXL")
		})
	}
	// A UNet alone is named as such.
	_, err := OpenCheckpoint(writeGGUF(t, gguf.Metadata{{Key: "general.architecture", Value: gguf.String("sd1")}},
		[]gguf.WriteTensor{f32Tensor("input_blocks.0.0.weight", 8, 4, 3, 3)}), OpenOptions{})
	var me *MissingComponentError
	require.True(t, errors.As(err, &me), "got %v", err)
	assert.Contains(t, err.Error(), "UNet alone")
}

// TestGGUFBadFiles: damaged files and unsupported tensor types are named
// errors through OpenCheckpoint.
func TestGGUFBadFiles(t *testing.T) {
	_, files := ggufFiles(t)
	var path string
	for p := range files {
		if strings.HasSuffix(p, "tiny-sd15.q8_0.gguf") {
			path = p
		}
	}
	require.NotEmpty(t, path)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	for _, cut := range []int{3, 20, 5000, len(raw) - 1000} {
		p := filepath.Join(t.TempDir(), "cut.gguf")
		require.NoError(t, os.WriteFile(p, raw[:cut], 0o644))
		_, err := OpenCheckpoint(p, OpenOptions{})
		var fe *gguf.FormatError
		if cut < 4 {
			// too short to carry the magic: read as a safetensors file
			assert.Error(t, err)
			continue
		}
		require.True(t, errors.As(err, &fe), "cut at %d: %v", cut, err)
		assert.Contains(t, err.Error(), "cut.gguf")
	}

	// An LDM file with a tensor type zimage does not decode.
	f, err := gguf.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var ts []gguf.WriteTensor
	for _, tt := range f.Tensors() {
		w := gguf.WriteTensor{Name: tt.Name, Type: tt.Type, Shape: tt.Shape(), Data: tt.Data()}
		if tt.Name == "model.diffusion_model.out.0.weight" {
			w.Type, w.Shape, w.Data = gguf.IQ4_NL, []int{32}, make([]byte, 18)
		}
		ts = append(ts, w)
	}
	// The file opens (an unused tensor of such a type would only be
	// warned about); the UNet that needs it fails by name.
	c := openTest(t, writeGGUF(t, nil, ts), OpenOptions{})
	_, err = LoadUNet(c.UNet.Source, c.UNet.Config)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `"conv_norm_out.weight"`)
	assert.Contains(t, err.Error(), "type IQ4_NL, want F16, BF16, F32 or one of the GGUF types")
}

func sortedNames[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// comfyUNet writes the UNet tensors of an LDM GGUF as ComfyUI-GGUF
// publishes a denoiser: names without model.diffusion_model.,
// general.architecture, and tensors whose rows are not whole 256-element
// super-blocks flattened to [n/256, 256] with comfy.gguf.orig_shape.<name>
// (the bytes are the same row-major blocks).
func comfyUNet(t *testing.T, whole *gguf.File, arch string) (path string, flattened int) {
	t.Helper()
	meta := gguf.Metadata{{Key: "general.architecture", Value: gguf.String(arch)}}
	var ts []gguf.WriteTensor
	for _, tt := range whole.Tensors() {
		name, ok := strings.CutPrefix(tt.Name, ldmUNet)
		if !ok {
			continue
		}
		shape := tt.Shape()
		n := int(tt.NumElem())
		if len(shape) > 1 && n%256 == 0 && shape[len(shape)-1]%256 != 0 {
			dims := make([]int64, len(shape))
			for i, d := range shape {
				dims[i] = int64(d)
			}
			v, err := gguf.Array(dims)
			require.NoError(t, err)
			meta = append(meta, gguf.KV{Key: "comfy.gguf.orig_shape." + name, Value: v})
			shape = []int{n / 256, 256}
			flattened++
		}
		ts = append(ts, gguf.WriteTensor{Name: name, Type: tt.Type, Shape: shape, Data: tt.Data()})
	}
	return writeGGUF(t, meta, ts), flattened
}

// TestGGUFUNetAlone: a ComfyUI-GGUF UNet, a diffusers-named GGUF UNet and a
// prefixed LDM .safetensors UNet each replace a folder model's UNet, with
// the same entries (quantized blocks included) as the whole-model file.
func TestGGUFUNetAlone(t *testing.T) {
	_, files := ggufFiles(t)
	var path string
	for p := range files {
		if strings.HasSuffix(p, "tiny-sd15.q8_0.gguf") {
			path = p
		}
	}
	dir := testref.Dir(t, "tiny-sd15")
	whole := openTest(t, path, OpenOptions{ConfigDir: dir})
	f, err := gguf.Open(path)
	require.NoError(t, err)
	defer f.Close()

	unet, flattened := comfyUNet(t, f, "sd1")
	require.Greater(t, flattened, 10, "the tiny UNet has convolutions to flatten")
	t.Logf("%d tensors flattened", flattened)
	c := openTest(t, dir, OpenOptions{UNet: unet})
	assert.Empty(t, c.Warnings)
	want, got := whole.UNet.Source, c.UNet.Source
	require.Equal(t, want.Keys(), got.Keys())
	quantized := 0
	for _, k := range want.Keys() {
		w, g := want.Entry(k), got.Entry(k)
		require.Equal(t, w.Shape, g.Shape, k)
		require.Equal(t, w.TypeName(), g.TypeName(), k)
		require.Equal(t, w.Bytes(), g.Bytes(), k)
		if g.Quantized() {
			quantized++
		}
	}
	assert.Equal(t, 121, quantized, "the UNet's Q8_0 tensors (gguf_refs.json per_component)")
	_, err = LoadUNet(c.UNet.Source, c.UNet.Config)
	require.NoError(t, err)
	// The folder's own text encoder and VAE stay.
	assert.Equal(t, "F16", c.VAE.Source.Entry("decoder.conv_in.weight").TypeName())

	// Diffusers names in a GGUF, and LDM names with the prefix in a
	// safetensors file.
	folder := openTest(t, dir, OpenOptions{})
	var dts []gguf.WriteTensor
	for _, k := range folder.UNet.Source.Keys() {
		e := folder.UNet.Source.Entry(k)
		dts = append(dts, gguf.WriteTensor{Name: k, Type: gguf.F16, Shape: e.Shape, Data: e.Bytes()})
	}
	c = openTest(t, dir, OpenOptions{UNet: writeGGUF(t, nil, dts)})
	sameSource(t, folder.UNet.Source, c.UNet.Source)

	single := filepath.Join(t.TempDir(), "unet.safetensors")
	var sts []safetensors.WriteTensor
	for _, w := range singleFileTensors(t, folder) {
		if strings.HasPrefix(w.Name, ldmUNet) {
			sts = append(sts, w)
		}
	}
	require.NoError(t, safetensors.WriteFile(single, sts, nil))
	c = openTest(t, dir, OpenOptions{UNet: single})
	sameSource(t, folder.UNet.Source, c.UNet.Source)

	// An SDXL UNet does not fit an SD 1.x model; a whole model is not a UNet.
	sdxl, _ := comfyUNet(t, f, "sdxl")
	_, err = OpenCheckpoint(dir, OpenOptions{UNet: sdxl})
	assert.ErrorContains(t, err, `general.architecture "sdxl"`)
	_, err = OpenCheckpoint(dir, OpenOptions{UNet: path})
	assert.ErrorContains(t, err, "whole model")
	bad, _ := comfyUNet(t, f, "sd1")
	raw, err := os.ReadFile(bad)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bad, raw[:len(raw)/2], 0o644))
	_, err = OpenCheckpoint(dir, OpenOptions{UNet: bad})
	var fe *gguf.FormatError
	assert.True(t, errors.As(err, &fe), "truncated UNet file: %v", err)
}

// TestGGUFOwnConversion converts each tiny model (SD 1.5, SD-Turbo with the
// whole OpenCLIP tower and packed q/k/v, SDXL-Turbo with its transposed
// OpenCLIP projection) into an LDM GGUF, quantizing every tensor whose rows
// allow it (Q4_K on 256-multiples, else Q8_0, Q4_0 or Q5_1 in turn), and
// opens it: the family comes from the names, and every canonical tensor is
// the file tensor it maps back to through the name table's inverse
// (rows of fused tensors, transposed projections), decoded exactly.
func TestGGUFOwnConversion(t *testing.T) {
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			dir := testref.Dir(t, name)
			ref := openTest(t, dir, OpenOptions{})
			var ts []gguf.WriteTensor
			cycle := []gguf.Type{gguf.Q8_0, gguf.Q4_0, gguf.Q5_1}
			for i, w := range singleFileTensors(t, ref) {
				gw := gguf.WriteTensor{Name: w.Name, Shape: w.Shape, Data: w.Data}
				switch w.DType {
				case safetensors.F16:
					gw.Type = gguf.F16
				case safetensors.F32:
					gw.Type = gguf.F32
				case safetensors.I64:
					gw.Type = gguf.I64
				default:
					t.Fatalf("%s: dtype %s", w.Name, w.DType)
				}
				inner := 1
				if len(w.Shape) > 0 {
					inner = w.Shape[len(w.Shape)-1]
				}
				if gw.Type == gguf.F16 && inner%32 == 0 {
					q := cycle[i%len(cycle)]
					if inner%256 == 0 {
						q = gguf.Q4_K
					}
					v := make([]float32, len(w.Data)/2)
					require.NoError(t, gguf.Dequantize(gguf.F16, w.Data, v))
					n, _ := q.RowBytes(len(v))
					gw.Type, gw.Data = q, make([]byte, n)
					require.NoError(t, gguf.Quantize(q, v, gw.Data))
				}
				ts = append(ts, gw)
			}
			path := writeGGUF(t, nil, ts)
			c := openTest(t, path, OpenOptions{ConfigDir: dir})
			require.Equal(t, ref.Arch, c.Arch)
			f, err := gguf.Open(path)
			require.NoError(t, err)
			defer f.Close()
			tables := ldmTablesFor(t, c)
			kept, decoded := 0, 0
			for _, src := range c.Sources() {
				require.Equal(t, ref.Sources()[indexOf(c.Sources(), src)].Keys(), src.Keys(), src.Name)
				for _, k := range src.Keys() {
					file, conv, part, ok := tables[src.Name].toFile(k)
					require.True(t, ok, k)
					ft := f.Tensor(file)
					require.NotNil(t, ft, file)
					want, err := gguf.Float32s(ft)
					require.NoError(t, err)
					s := ft.Shape()
					switch conv {
					case convSplitQKV:
						n := len(want) / 3
						want = want[part*n : (part+1)*n]
					case convTranspose:
						tr := make([]float32, len(want))
						for r := range s[0] {
							for c := range s[1] {
								tr[c*s[0]+r] = want[r*s[1]+c]
							}
						}
						want = tr
					}
					e := src.Entry(k)
					got, err := e.Float32s()
					require.NoError(t, err)
					require.Equal(t, want, got, "%s %s from %s", src.Name, k, file)
					if ft.Type.Quantized() {
						if e.Quantized() {
							kept++
						} else {
							require.Equal(t, convTranspose, conv, "%s %s: only a transpose decodes its blocks", src.Name, k)
							decoded++
						}
					}
				}
			}
			t.Logf("%d quantized canonical tensors keep their blocks, %d decoded (transposed)", kept, decoded)
			if c.Arch == SDXL {
				assert.Equal(t, 1, decoded, "the OpenCLIP-bigG text_projection")
			}
			for _, te := range c.TextEncoders {
				_, err := LoadCLIPText(te.Source, te.Config)
				require.NoError(t, err)
			}
			_, err = LoadUNet(c.UNet.Source, c.UNet.Config)
			require.NoError(t, err)
		})
	}
}

func indexOf(list []*Source, s *Source) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

// TestEntryRowsCuttingBlocks: a row range that starts or ends inside a
// block (never the case for q/k/v thirds, but possible for any range) is
// decoded into exact F32 values; whole-block ranges keep the blocks.
func TestEntryRowsCuttingBlocks(t *testing.T) {
	v := make([]float32, 96)
	for i := range v {
		v[i] = float32(i%13) - 6
	}
	q := make([]byte, 3*34)
	require.NoError(t, gguf.Quantize(gguf.Q8_0, v, q))
	e := &Entry{Key: "w", Quant: gguf.Q8_0, Shape: []int{4, 24}, File: "f", data: func() []byte { return q }}
	all, err := e.Float32s()
	require.NoError(t, err)

	cut, err := e.rows("w.mid", 1, 3, []int{2, 24})
	require.NoError(t, err)
	assert.False(t, cut.Quantized())
	assert.Equal(t, safetensors.F32, cut.DType)
	got, err := cut.Float32s()
	require.NoError(t, err)
	assert.Equal(t, all[24:72], got)

	e.Shape = []int{3, 32}
	whole, err := e.rows("w.k", 1, 2, []int{32})
	require.NoError(t, err)
	assert.True(t, whole.Quantized())
	assert.Equal(t, q[34:68], whole.Bytes())

	tr := e.transposed("w.T")
	got, err = tr.Float32s()
	require.NoError(t, err)
	assert.Equal(t, []int{32, 3}, tr.Shape)
	assert.Equal(t, all[32], got[1], "element [1][0] of the original is [0][1] of the transpose")
	assert.Equal(t, int64(3*34), e.StoredBytes())
	assert.Equal(t, "Q8_0", e.TypeName())
}
