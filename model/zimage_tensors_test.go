package model

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
)

const tinyZImage = "tiny-z-image-turbo"

// realZImageDir is the real Z-Image-Turbo's configs and shard indexes
// (../shared/real_configs), or a skip.
func realZImageDir(t *testing.T) string {
	t.Helper()
	root, ok := testref.Root()
	dir := filepath.Join(root, "..", "real_configs", "Tongyi-MAI-Z-Image-Turbo")
	if _, err := os.Stat(dir); !ok || err != nil {
		t.Skipf("real Z-Image configs not found at %s", dir)
	}
	return dir
}

func readIndex(t *testing.T, path string) (map[string]string, int64) {
	t.Helper()
	var idx struct {
		Metadata struct {
			TotalSize int64 `json:"total_size"`
		} `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &idx))
	return idx.WeightMap, idx.Metadata.TotalSize
}

func specKeys(l specList) []string {
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = s.Key
	}
	sort.Strings(out)
	return out
}

func specBytes(l specList, size int64) int64 {
	var n int64
	for _, s := range l {
		e := size
		for _, d := range s.Shape {
			e *= int64(d)
		}
		n += e
	}
	return n
}

// TestZImageSpecsReal: the real configs imply exactly the tensor names of
// the real shard indexes, and the sizes add up to the indexes' total_size
// (transformer stored F32, text encoder BF16): 6,154,908,736 and
// 4,022,468,096 parameters.
func TestZImageSpecsReal(t *testing.T) {
	dir := realZImageDir(t)
	var tcfg ZImageConfig
	require.NoError(t, readJSON(filepath.Join(dir, "transformer", "config.json"), &tcfg))
	ts, err := zimageTransformerSpecs(&tcfg)
	require.NoError(t, err)
	wm, total := readIndex(t, filepath.Join(dir, "transformer", "diffusion_pytorch_model.safetensors.index.json"))
	assert.Equal(t, sortedKeysOf(wm), specKeys(ts))
	assert.Equal(t, total, specBytes(ts, 4))
	assert.Equal(t, int64(6154908736), specBytes(ts, 1))

	var qcfg Qwen3Config
	require.NoError(t, readJSON(filepath.Join(dir, "text_encoder", "config.json"), &qcfg))
	qs, err := qwen3Specs(&qcfg)
	require.NoError(t, err)
	wm, total = readIndex(t, filepath.Join(dir, "text_encoder", "model.safetensors.index.json"))
	assert.Equal(t, sortedKeysOf(wm), specKeys(qs))
	assert.Equal(t, total, specBytes(qs, 2))
	assert.Equal(t, int64(4022468096), specBytes(qs, 1))

	var vcfg VAEConfig
	require.NoError(t, readJSON(filepath.Join(dir, "vae", "config.json"), &vcfg))
	vs, err := vaeSpecs(&vcfg)
	require.NoError(t, err)
	assert.Equal(t, int64(83819683), specBytes(vs, 1), "FLUX VAE parameters")
}

func sortedKeysOf(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestZImageSpecsTiny: the tiny reference model's configs imply exactly
// its files' tensors, names and shapes.
func TestZImageSpecsTiny(t *testing.T) {
	c := openTest(t, testref.Dir(t, tinyZImage), OpenOptions{})
	check := func(l specList, err error, src *Source) {
		t.Helper()
		require.NoError(t, err)
		require.Equal(t, src.Keys(), specKeys(l), src.Name)
		for _, s := range l {
			assert.Equal(t, src.Entry(s.Key).Shape, s.Shape, "%s: %s", src.Name, s.Key)
		}
	}
	ts, err := zimageTransformerSpecs(c.Transformer.Config)
	check(ts, err, c.Transformer.Source)
	qs, err := qwen3Specs(c.Qwen.Config)
	check(qs, err, c.Qwen.Source)
	vs, err := vaeSpecs(c.VAE.Config)
	check(vs, err, c.VAE.Source)
}
