package model

import (
	"bytes"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/gguf"
	"github.com/zimage/zimage/model/safetensors"
)

// TestConvertMatchesSDCpp converts each tiny model the test data has a
// stable-diffusion.cpp file of, from its diffusers folder, to the same
// type: with SDCppRules every tensor has sd.cpp's name, shape, type and
// bytes; with zimage's default rules every tensor zimage quantizes is
// sd.cpp's bytes, and the rest (norm scales, the VAE) keep their stored
// F16 bytes.
func TestConvertMatchesSDCpp(t *testing.T) {
	_, files := ggufFiles(t)
	for path, model := range files {
		typName := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), model+"."), ".gguf")
		t.Run(model+"."+typName, func(t *testing.T) {
			typ, err := ParseQuantizeType(typName)
			require.NoError(t, err)
			want, err := gguf.Open(path)
			require.NoError(t, err)
			defer want.Close()
			c := openTest(t, testref.Dir(t, model), OpenOptions{})
			tmp := t.TempDir()

			out := filepath.Join(tmp, "sdcpp.gguf")
			sum, err := Convert(c, out, SDCppRules(typ), nil)
			require.NoError(t, err)
			got, err := gguf.Open(out)
			require.NoError(t, err)
			defer got.Close()
			assert.ElementsMatch(t, want.Names(), got.Names())
			for _, w := range want.Tensors() {
				g := got.Tensor(w.Name)
				if !assert.NotNil(t, g, w.Name) {
					continue
				}
				assert.Equal(t, w.Type, g.Type, w.Name)
				assert.Equal(t, w.Dims, g.Dims, w.Name)
				assert.True(t, bytes.Equal(w.Data(), g.Data()), "%s (%s): bytes differ from stable-diffusion.cpp's", w.Name, w.Type)
			}
			assert.Empty(t, got.Metadata, "sd.cpp writes no metadata")
			t.Logf("sd.cpp rules: %s", sum)

			out = filepath.Join(tmp, "zimage.gguf")
			sum, err = Convert(c, out, QuantizeRules{Type: typ}, nil)
			require.NoError(t, err)
			own, err := gguf.Open(out)
			require.NoError(t, err)
			defer own.Close()
			kept := 0
			for _, w := range want.Tensors() {
				g := own.Tensor(w.Name)
				require.NotNil(t, g, w.Name)
				if g.Type == typ {
					assert.True(t, bytes.Equal(w.Data(), g.Data()), "%s: bytes differ from stable-diffusion.cpp's", w.Name)
					continue
				}
				assert.Equal(t, gguf.F16, g.Type, w.Name)
				if w.Type == typ {
					kept++
					assert.True(t, len(g.Dims) == 1 || strings.HasPrefix(w.Name, "first_stage_model.") || strings.HasSuffix(w.Name, "text_projection"),
						"%s: only vectors, the VAE and the transposed projection stay F16", w.Name)
				} else {
					assert.True(t, bytes.Equal(w.Data(), g.Data()), w.Name)
				}
			}
			t.Logf("zimage rules: %s; %d tensors sd.cpp quantizes stay F16", sum, kept)
		})
	}
}

// TestQuantizeRules: the rules' exceptions, by name and shape.
func TestQuantizeRules(t *testing.T) {
	r := QuantizeRules{Type: gguf.Q8_0, Keep: []*regexp.Regexp{regexp.MustCompile(`\.proj_out\.`)}}
	f16 := safetensors.F16
	for _, c := range []struct {
		comp, name string
		shape      []int
		want       bool
	}{
		{"unet", "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", []int{320, 320}, true},
		{"unet", "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", []int{320, 300}, false},
		{"unet", "model.diffusion_model.input_blocks.1.0.in_layers.2.weight", []int{320, 320, 3, 3}, false}, // rows of 3
		{"unet", "model.diffusion_model.input_blocks.1.0.in_layers.2.bias", []int{320}, false},
		{"unet", "model.diffusion_model.time_embed.0.weight", []int{1280, 320}, false},
		{"unet", "model.diffusion_model.label_emb.0.0.weight", []int{1280, 2816}, false},
		{"unet", "model.diffusion_model.input_blocks.1.1.proj_out.weight", []int{320, 320}, false}, // Keep
		{"unet", "model.diffusion_model.input_blocks.1.1.norm.weight", []int{320}, false},          // a vector
		{"vae", "first_stage_model.decoder.mid.attn_1.q.weight", []int{512, 512}, false},
		{"text_encoder", "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", []int{49408, 768}, false},
		{"transformer", "layers.0.attention.qkv.weight", []int{11520, 3840}, true},
		{"transformer", "x_embedder.weight", []int{3840, 64}, false},
		{"transformer", "final_layer.linear.weight", []int{64, 3840}, false},
		{"text_encoder", "embed_tokens.weight", []int{151936, 2560}, false},
	} {
		assert.Equal(t, c.want, r.Quantizes(c.comp, c.name, c.shape, f16, 0), c.name)
	}
	sd := SDCppRules(gguf.Q8_0)
	assert.True(t, sd.Quantizes("unet", "model.diffusion_model.input_blocks.1.1.norm.weight", []int{320}, f16, 0))
	assert.True(t, sd.Quantizes("vae", "first_stage_model.decoder.mid.attn_1.q.weight", []int{512, 512}, f16, 0))
	assert.False(t, r.Quantizes("unet", "model.diffusion_model.x.weight", []int{64, 64}, safetensors.I64, 0))
	_, err := ParseQuantizeType("q6_k")
	assert.ErrorContains(t, err, "want one of q8_0, q4_0, q4_1, q5_0, q5_1, q4_k")
}

// TestQuantizeAtLoad opens each tiny model with OpenOptions.Quantize: the
// entries the rules select become blocks that equal a conversion's, the
// networks keep them quantized on the device (ParamQ), and the rest are
// untouched.
func TestQuantizeAtLoad(t *testing.T) {
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			dir := testref.Dir(t, name)
			plain := openTest(t, dir, OpenOptions{})
			q := openTest(t, dir, OpenOptions{Quantize: &QuantizeRules{Type: gguf.Q8_0}})
			quantized := 0
			for i, src := range q.Sources() {
				for _, k := range src.Keys() {
					e, p := src.Entry(k), plain.Sources()[i].Entry(k)
					if !e.Quantized() {
						assert.True(t, p.DType == e.DType && bytes.Equal(p.Bytes(), e.Bytes()), k)
						continue
					}
					quantized++
					v, err := p.Float32s()
					require.NoError(t, err)
					want, err := quantizeRows(gguf.Q8_0, v, p.Shape[len(p.Shape)-1])
					require.NoError(t, err)
					require.Equal(t, want, e.Bytes(), k)
				}
			}
			require.Positive(t, quantized)
			u, err := LoadUNet(q.UNet.Source, q.UNet.Config)
			require.NoError(t, err)
			byType := map[engine.DType]int{}
			for _, bl := range u.Blocks() {
				for _, p := range bl.Params {
					byType[p.DType]++
				}
			}
			t.Logf("%d entries quantized; UNet params by device type: %v", quantized, byType)
			assert.Positive(t, byType[engine.Q8_0])
		})
	}
}

// TestConvertZImageMatchesLoadTime: the tiny Z-Image transformer converted
// to Q8_0 and Q4_K (original key names, fused q/k/v) opens to the entries
// a load-time quantization of the folder makes, value for value and type
// for type.
func TestConvertZImageMatchesLoadTime(t *testing.T) {
	dir := testref.Dir(t, "tiny-z-image-turbo")
	c := openTest(t, dir, OpenOptions{})
	for _, typ := range []gguf.Type{gguf.Q8_0, gguf.Q4_K} {
		path := filepath.Join(t.TempDir(), "z_image_turbo.gguf")
		_, err := Convert(c, path, QuantizeRules{Type: typ}, nil)
		require.NoError(t, err)
		conv := openTest(t, path, OpenOptions{TextEncoderPath: dir, VAEPath: dir})
		atLoad := openTest(t, dir, OpenOptions{Quantize: &QuantizeRules{Type: typ}})
		quantized := 0
		for _, k := range atLoad.Transformer.Source.Keys() {
			a, b := conv.Transformer.Source.Entry(k), atLoad.Transformer.Source.Entry(k)
			require.NotNil(t, a, k)
			require.Equal(t, b.TypeName(), a.TypeName(), k)
			require.Equal(t, b.Shape, a.Shape, k)
			require.Equal(t, b.Bytes(), a.Bytes(), k)
			if a.Quantized() {
				quantized++
			}
		}
		t.Logf("%s: %d transformer tensors quantized", typ, quantized)
		require.Positive(t, quantized)
	}
}
