package sched

import (
	"context"
	"image"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/gguf"
)

// TestZImageGGUFTransformer runs the tiny Z-Image pipeline with its
// transformer read from a Q8_0 GGUF (as ComfyUI-GGUF publishes
// Z-Image-Turbo): the image matches the run from the same weights
// dequantized into an F32 GGUF up to that copy's F16 storage, and is
// logged against the 16-bit run of the original weights (the cost of
// Q8_0).
func TestZImageGGUFTransformer(t *testing.T) {
	m, r := loadZImageModels(t)
	var zc model.ZImageConfig
	src := openZImageComponent(t, r.Dir, "transformer", &zc).Source
	var quant, plain []gguf.WriteTensor
	for _, k := range src.Keys() {
		e := src.Entry(k)
		v, err := e.Float32s()
		require.NoError(t, err)
		typ := gguf.F32
		if len(e.Shape) == 2 && e.Shape[1]%32 == 0 {
			typ = gguf.Q8_0
		}
		n, _ := typ.RowBytes(len(v))
		q := gguf.WriteTensor{Name: k, Type: typ, Shape: e.Shape, Data: make([]byte, n)}
		require.NoError(t, gguf.Quantize(typ, v, q.Data))
		quant = append(quant, q)
		require.NoError(t, gguf.Dequantize(typ, q.Data, v))
		p := gguf.WriteTensor{Name: k, Type: gguf.F32, Shape: e.Shape, Data: make([]byte, 4*len(v))}
		require.NoError(t, gguf.Quantize(gguf.F32, v, p.Data))
		plain = append(plain, p)
	}
	rn := zimageRuns(t, r)[0]
	run := func(tensors []gguf.WriteTensor) []byte {
		path := filepath.Join(t.TempDir(), "z.gguf")
		require.NoError(t, gguf.WriteFile(path, gguf.Metadata{{Key: "general.architecture", Value: gguf.String("lumina2")}}, tensors))
		c, err := model.OpenCheckpoint(path, model.OpenOptions{TextEncoderPath: r.Dir, VAEPath: filepath.Join(r.Dir, "vae")})
		require.NoError(t, err)
		defer c.Close()
		mm := *m
		mm.Transformer, err = model.LoadZImage(c.Transformer.Source, c.Transformer.Config)
		require.NoError(t, err)
		b := ref.New()
		out, err := RunZImage(context.Background(), b, &mm, zimageParams(t, r, rn))
		require.NoError(t, err)
		for _, bl := range mm.Transformer.Blocks() {
			bl.Evict(b)
		}
		return out.Images[0].Pix
	}
	q, p := run(quant), run(plain)
	out, err := RunZImage(context.Background(), ref.New(), m, zimageParams(t, r, rn))
	require.NoError(t, err)
	rect := out.Images[0].Rect
	// The Q8_0 blocks stay quantized on the device and are decoded exactly
	// in the kernels, while the dequantized F32 copy is stored as F16 like
	// any matrix: the images differ by the F16 rounding of the weights
	// (a few 8-bit levels at a few pixels); 55 dB catches a misread block.
	db := rgbaPSNR(imageOf(rect, p), imageOf(rect, q))
	require.GreaterOrEqual(t, db, 55.0, "Q8_0 transformer vs its dequantized F32 copy")
	t.Logf("%s with a Q8_0 transformer: %.1f dB vs its dequantized F32 copy; %.1f dB vs the 16-bit run",
		rn.ID, db, rgbaPSNR(out.Images[0], imageOf(rect, q)))
}

// imageOf wraps RGBA pixels of the given bounds.
func imageOf(r image.Rectangle, pix []byte) *image.RGBA {
	return &image.RGBA{Pix: pix, Stride: 4 * r.Dx(), Rect: r}
}
