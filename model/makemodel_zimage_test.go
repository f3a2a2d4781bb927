package model

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/safetensors"
	"github.com/zimage/zimage/model/tokenizer"
)

func bf16Value(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

func TestBF16Bits(t *testing.T) {
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3f80}, {-2, 0xc000}, {0, 0}, {float32(math.Inf(1)), 0x7f80},
		{math.Float32frombits(0x3f808000), 0x3f80}, // halfway, even stays
		{math.Float32frombits(0x3f818000), 0x3f82}, // halfway, odd rounds up
		{math.Float32frombits(0x3f808001), 0x3f81},
		{math.MaxFloat32, 0x7f80}, // rounds past the largest bfloat16
	} {
		assert.Equal(t, c.want, BF16Bits(c.in), "%g", c.in)
	}
	assert.True(t, math.IsNaN(float64(bf16Value(BF16Bits(float32(math.NaN()))))))
}

// TestWriteZImageModel: the tiny random-weight Z-Image folder opens as a
// Z-Image checkpoint with the tiny reference model's shapes, sharded with
// indexes, BF16 values of the intended scale, the same bytes for the same
// seed, and a tokenizer folder RequireTokenizers accepts.
func TestWriteZImageModel(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "z")
	require.NoError(t, WriteSyntheticModel(dir, SyntheticSpec{Arch: "z-image-turbo", Seed: 7}))
	c := openTest(t, dir, OpenOptions{})
	assert.Equal(t, ZImage, c.Arch)
	assert.Empty(t, c.Warnings)
	require.NoError(t, c.RequireTokenizers())
	for _, comp := range []string{"transformer", "text_encoder"} {
		paths, _ := filepath.Glob(filepath.Join(dir, comp, "*-of-00002.safetensors"))
		assert.Len(t, paths, 2, comp)
		assert.FileExists(t, filepath.Join(dir, comp, map[string]string{"transformer": "diffusion_pytorch_model", "text_encoder": "model"}[comp]+".safetensors.index.json"))
	}
	if root, ok := testref.Root(); ok {
		ref := openTest(t, filepath.Join(root, tinyZImage), OpenOptions{})
		assert.Equal(t, *ref.Transformer.Config, *c.Transformer.Config)
		assert.Equal(t, *ref.VAE.Config, *c.VAE.Config)
		for _, pair := range [][2]*Source{{ref.Transformer.Source, c.Transformer.Source}, {ref.VAE.Source, c.VAE.Source}} {
			require.Equal(t, pair[0].Keys(), pair[1].Keys())
			for _, k := range pair[0].Keys() {
				assert.Equal(t, pair[0].Entry(k).Shape, pair[1].Entry(k).Shape, k)
			}
		}
	}
	// The embedding table is as large as the synthetic tokenizer, which
	// the Qwen2 tokenizer loads.
	q := c.Qwen.Config
	assert.Equal(t, []int{q.VocabSize, 64}, c.Qwen.Source.Entry("model.embed_tokens.weight").Shape)
	assert.Less(t, q.VocabSize, 1000)
	tok, err := tokenizer.LoadQwen2(c.Qwen.TokenizerDir)
	require.NoError(t, err)
	assert.Equal(t, q.VocabSize, tok.Len())
	ids, _ := tok.EncodePrompt("一只橘色的猫坐在窗台上", 512)
	for _, id := range ids {
		require.Less(t, int(id), q.VocabSize)
	}

	for _, src := range c.Sources() {
		for _, k := range src.Keys() {
			e := src.Entry(k)
			require.Equal(t, safetensors.BF16, e.DType, k)
			raw := e.Bytes()
			bound, center := 0.02, 0.0
			switch {
			case len(e.Shape) >= 2:
				bound = math.Sqrt(3 / float64(e.NumElem()/e.Shape[0]))
			case strings.HasSuffix(k, "weight"):
				bound, center = 0.05, 1
			}
			var sum float64
			// bfloat16 rounding moves a value by up to 2^-8 relative.
			limit := bound*(1+1.0/128) + math.Abs(center)/128
			for i := 0; i < len(raw); i += 2 {
				v := float64(bf16Value(binary.LittleEndian.Uint16(raw[i:])))
				if math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v-center) > limit {
					t.Fatalf("%s[%d] = %g, want %g ± %g", k, i/2, v, center, limit)
				}
				sum += v
			}
			if n := e.NumElem(); n >= 4096 {
				// The mean of n uniforms on center±bound: 5 sigma is
				// 5 * bound/sqrt(3n).
				assert.InDelta(t, center, sum/float64(n), 5*bound/math.Sqrt(3*float64(n)), k)
			}
		}
	}
	// The VAE decoder builds from it; only the encoder half is unused.
	v, err := LoadVAEDecoder(c.VAE.Source, c.VAE.Config)
	require.NoError(t, err)
	require.NotNil(t, v)
	for _, k := range c.VAE.Source.Unused() {
		assert.True(t, strings.HasPrefix(k, "encoder."), k)
	}

	// Same seed, same bytes; another seed, other bytes.
	again := filepath.Join(t.TempDir(), "z")
	require.NoError(t, WriteSyntheticModel(again, SyntheticSpec{Arch: "z-image-turbo", Seed: 7}))
	other := filepath.Join(t.TempDir(), "z")
	require.NoError(t, WriteSyntheticModel(other, SyntheticSpec{Arch: "z-image-turbo", Seed: 8}))
	for _, rel := range []string{"transformer/diffusion_pytorch_model-00002-of-00002.safetensors", "vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json"} {
		a, _ := os.ReadFile(filepath.Join(dir, rel))
		b, _ := os.ReadFile(filepath.Join(again, rel))
		o, _ := os.ReadFile(filepath.Join(other, rel))
		assert.True(t, bytes.Equal(a, b), rel)
		assert.Equal(t, rel == "tokenizer/vocab.json", bytes.Equal(a, o), rel)
	}
}

// TestZImageFullSizeSparse writes the full-size Z-Image-Turbo folder that
// make-model makes from the real configs, with every data section a hole
// (sparse files: no disk, no time), and opens it: the shard indexes name
// exactly the real model's tensors in as many shards, opening reads no
// weights, and info reports the real parameter counts and the memory
// estimate.
func TestZImageFullSizeSparse(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 20 GB of sparse files")
	}
	real := realZImageDir(t)
	dir := filepath.Join(t.TempDir(), "z-full")
	if err := writeZImageModelWith(dir, SyntheticSpec{Arch: "z-image-turbo", ConfigDir: real}, nil); err != nil {
		t.Skipf("cannot write sparse full-size files here: %v", err)
	}
	for _, idx := range []string{"transformer/diffusion_pytorch_model.safetensors.index.json", "text_encoder/model.safetensors.index.json"} {
		want, _ := readIndex(t, filepath.Join(real, idx))
		got, total := readIndex(t, filepath.Join(dir, idx))
		assert.Equal(t, sortedKeysOf(want), sortedKeysOf(got), idx)
		assert.Equal(t, len(distinct(want)), len(distinct(got)), "%s: shard count", idx)
		t.Logf("%s: %d tensors in %d shards, %s BF16", idx, len(got), len(distinct(got)), FormatBytes(total))
	}

	runtime.GC()
	before := procStatus(t, "VmRSS")
	start := time.Now()
	c := openTest(t, dir, OpenOptions{})
	elapsed := time.Since(start)
	growth := procStatus(t, "VmRSS") - before
	in := c.Info()
	t.Logf("OpenCheckpoint %v, RSS growth %s\n%s", elapsed, FormatBytes(growth), in)
	assert.Less(t, growth, int64(64<<20), "opening read the data")
	assert.Empty(t, c.Warnings)
	params := map[string]int64{}
	for _, ci := range in.Components {
		params[ci.Name] = ci.Params
	}
	assert.Equal(t, map[string]int64{"transformer": 6_154_908_736, "text_encoder": 4_022_468_096, "vae": 83_819_683}, params)
	// The device holds the transformer in 16 bits: 12.3 GB.
	assert.InDelta(t, 12.3e9, float64(in.Components[1].DeviceBytes), 0.05e9)
	require.Len(t, in.Memory, 3)
	assert.Equal(t, 1024, in.ActivationSize)
	assert.Equal(t, 4096+512, in.Memory[1].Stages[1].Tokens, "1024²: 64x64 image tokens and 512 caption tokens")
	assert.Equal(t, 1024+512, in.Memory[0].Stages[1].Tokens)
}

func distinct(m map[string]string) map[string]bool {
	out := map[string]bool{}
	for _, v := range m {
		out[v] = true
	}
	return out
}
