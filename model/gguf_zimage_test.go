package model

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/gguf"
	"github.com/zimage/zimage/model/safetensors"
)

// TestZImageGGUF: the tiny Z-Image transformer in the original key layout
// (fused qkv), as ComfyUI-GGUF publishes Z-Image-Turbo, with every tensor
// whose rows allow it in Q8_0: it opens as the model with the text encoder
// and VAE given apart, its config inferred from the tensors, every
// canonical tensor (q/k/v thirds included) keeping its blocks and decoding
// to exactly the Q8_0 round trip of the folder's values.
func TestZImageGGUF(t *testing.T) {
	dir := testref.Dir(t, tinyZImage)
	ref := openTest(t, dir, OpenOptions{})
	tmp := t.TempDir()
	single := filepath.Join(tmp, "z.safetensors")
	zimageOriginalFile(t, ref.Transformer.Source, ref.Transformer.Config, "", single)
	sf, err := safetensors.Open(single)
	require.NoError(t, err)
	defer sf.Close()
	var ts []gguf.WriteTensor
	for _, st := range sf.Tensors() {
		v, err := safetensors.Float32s(st)
		require.NoError(t, err)
		typ := gguf.F32
		if len(st.Shape) == 2 && st.Shape[1]%32 == 0 {
			typ = gguf.Q8_0
		}
		n, _ := typ.RowBytes(len(v))
		w := gguf.WriteTensor{Name: st.Name, Type: typ, Shape: st.Shape, Data: make([]byte, n)}
		require.NoError(t, gguf.Quantize(typ, v, w.Data))
		ts = append(ts, w)
	}
	path := filepath.Join(tmp, "z_image_turbo-Q8_0.gguf")
	require.NoError(t, gguf.WriteFile(path, gguf.Metadata{{Key: "general.architecture", Value: gguf.String("lumina2")}}, ts))

	c := openTest(t, path, OpenOptions{TextEncoderPath: dir, VAEPath: filepath.Join(dir, "vae")})
	assert.Equal(t, ZImage, c.Arch)
	assert.Equal(t, FormatGGUF, c.Format)
	assert.Equal(t, *ref.Transformer.Config, *c.Transformer.Config, "config inferred from the tensors")
	require.Equal(t, ref.Transformer.Source.Keys(), c.Transformer.Source.Keys())
	quantized := 0
	for _, k := range c.Transformer.Source.Keys() {
		e, r := c.Transformer.Source.Entry(k), ref.Transformer.Source.Entry(k)
		require.Equal(t, r.Shape, e.Shape, k)
		want, err := r.Float32s()
		require.NoError(t, err)
		if e.Quantized() {
			q := make([]byte, e.StoredBytes())
			require.NoError(t, gguf.Quantize(gguf.Q8_0, want, q))
			require.NoError(t, gguf.Dequantize(gguf.Q8_0, q, want))
			quantized++
		}
		got, err := e.Float32s()
		require.NoError(t, err)
		require.Equal(t, want, got, k)
	}
	assert.Greater(t, quantized, 20)
	t.Logf("%d of %d transformer tensors stay Q8_0", quantized, len(c.Transformer.Source.Keys()))
	_, err = OpenCheckpoint(path, OpenOptions{})
	var me *MissingComponentError
	assert.ErrorAs(t, err, &me, "the text encoder must be given")
	_, err = OpenCheckpoint(dir, OpenOptions{UNet: path})
	assert.ErrorContains(t, err, "a separate UNet (--unet) is for Stable Diffusion models")
}
