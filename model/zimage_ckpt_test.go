package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/safetensors"
)

func TestOpenZImageFolder(t *testing.T) {
	dir := testref.Dir(t, tinyZImage)
	c := openTest(t, dir, OpenOptions{})
	assert.Equal(t, ZImage, c.Arch)
	assert.Equal(t, FormatDiffusers, c.Format)
	assert.Empty(t, c.Warnings)
	assert.Empty(t, c.TextEncoders, "the CLIP list stays empty")
	assert.Nil(t, c.UNet.Source)
	require.NotNil(t, c.Transformer)
	require.NotNil(t, c.Qwen)

	tr := c.Transformer.Config
	assert.Equal(t, "ZImageTransformer2DModel", c.Transformer.Class)
	assert.Equal(t, []int{384, 16, 2, 2, 3, 64}, []int{tr.Dim, tr.InChannels, tr.NLayers, tr.NRefinerLayers, tr.NHeads, tr.CapFeatDim})
	assert.Equal(t, []int{32, 48, 48}, tr.AxesDims)
	q := c.Qwen.Config
	assert.Equal(t, "Qwen3Model", c.Qwen.Class)
	assert.Equal(t, []int{64, 192, 2, 4, 1, 32}, []int{q.HiddenSize, q.IntermediateSize, q.NumHiddenLayers, q.NumAttentionHeads, q.NumKeyValueHeads, q.HeadDim})
	assert.Equal(t, 1, c.Qwen.FeatureLayers())
	assert.Equal(t, filepath.Join(dir, "tokenizer"), c.Qwen.TokenizerDir)
	require.NoError(t, c.RequireTokenizers())
	assert.Equal(t, 16, c.VAE.Config.LatentChannels)
	require.NotNil(t, c.VAE.Config.ShiftFactor)
	assert.Equal(t, 0.1159, *c.VAE.Config.ShiftFactor)
	assert.Equal(t, "FlowMatchEulerDiscreteScheduler", c.Scheduler.ClassName)
	require.NotNil(t, c.Scheduler.Shift)
	assert.Equal(t, 3.0, *c.Scheduler.Shift)

	checkSourceMatchesFiles(t, c.Transformer.Source, filepath.Join(dir, "transformer"))
	checkSourceMatchesFiles(t, c.Qwen.Source, filepath.Join(dir, "text_encoder"))
	checkSourceMatchesFiles(t, c.VAE.Source, filepath.Join(dir, "vae"))
	assert.Equal(t, []*Source{c.Qwen.Source, c.Transformer.Source, c.VAE.Source}, c.Sources())
	e := c.Qwen.Source.Entry("model.embed_tokens.weight")
	require.NotNil(t, e)
	assert.Equal(t, safetensors.BF16, e.DType)

	js, err := json.Marshal(c.Info())
	require.NoError(t, err)
	assert.Contains(t, string(js), `"arch":"z-image"`)
}

// shardSource writes src's keys into n shards named like transformers'
// ("<base>-0000i-of-0000n.safetensors") beside an index, as the real
// Z-Image folders store the transformer and the text encoder.
func shardSource(t *testing.T, src *Source, dir, base string, n int) map[string]string {
	t.Helper()
	keys := src.Keys()
	wm := map[string]string{}
	var total int64
	for s := range n {
		part := keys[s*len(keys)/n : (s+1)*len(keys)/n]
		name := fmt.Sprintf("%s-%05d-of-%05d.safetensors", base, s+1, n)
		writeSource(t, filepath.Join(dir, name), src, part, nil)
		for _, k := range part {
			wm[k] = name
			e := src.Entry(k)
			total += int64(e.NumElem() * e.DType.Size())
		}
	}
	writeJSON(t, filepath.Join(dir, base+".safetensors.index.json"), map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": wm})
	return wm
}

// TestOpenZImageSharded: a folder sharded like the real one (three shards
// each for the transformer and the text encoder) opens to the same
// tensors; a missing shard and an index naming a tensor its shard lacks
// are *ShardIndexError.
func TestOpenZImageSharded(t *testing.T) {
	ref := openTest(t, testref.Dir(t, tinyZImage), OpenOptions{})
	dir := copyModel(t, tinyZImage)
	tdir, edir := filepath.Join(dir, "transformer"), filepath.Join(dir, "text_encoder")
	twm := shardSource(t, ref.Transformer.Source, tdir, "diffusion_pytorch_model", 3)
	shardSource(t, ref.Qwen.Source, edir, "model", 3)
	require.NoError(t, os.Remove(filepath.Join(tdir, "diffusion_pytorch_model.safetensors")))
	require.NoError(t, os.Remove(filepath.Join(edir, "model.safetensors")))

	c := openTest(t, dir, OpenOptions{})
	sameSource(t, ref.Transformer.Source, c.Transformer.Source)
	sameSource(t, ref.Qwen.Source, c.Qwen.Source)
	assert.Contains(t, c.Transformer.Source.Entry("all_x_embedder.2-1.weight").File, "-of-00003")

	idx := filepath.Join(tdir, "diffusion_pytorch_model.safetensors.index.json")
	twm["layers.9.attention.to_q.weight"] = "diffusion_pytorch_model-00002-of-00003.safetensors"
	writeJSON(t, idx, map[string]any{"weight_map": twm})
	_, err := OpenCheckpoint(dir, OpenOptions{})
	var se *ShardIndexError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "layers.9.attention.to_q.weight", se.Tensor)
	assert.Equal(t, "transformer", se.Component)
	assert.Contains(t, err.Error(), "00002-of-00003")
	delete(twm, "layers.9.attention.to_q.weight")
	writeJSON(t, idx, map[string]any{"weight_map": twm})

	shard := filepath.Join(edir, "model-00003-of-00003.safetensors")
	require.NoError(t, os.Remove(shard))
	_, err = OpenCheckpoint(dir, OpenOptions{})
	require.ErrorAs(t, err, &se)
	assert.Equal(t, shard, se.Shard)
	assert.Empty(t, se.Tensor)
	assert.True(t, errors.Is(err, fs.ErrNotExist))
}

// zimageOriginalFile writes a transformer source in the original Z-Image
// key layout (the single files ComfyUI loads) through the inverse of the
// name table: q/k/v fused back into qkv, prefix before every key, plus the
// unused norm_final some exports carry.
func zimageOriginalFile(t *testing.T, src *Source, cfg *ZImageConfig, prefix, path string) {
	t.Helper()
	tab := newNameTable(zimageRules(prefix, "2-1", [3]int{cfg.NRefinerLayers, cfg.NRefinerLayers, cfg.NLayers}))
	var out []safetensors.WriteTensor
	fused := map[string]*[3]*Entry{}
	for _, k := range src.Keys() {
		e := src.Entry(k)
		file, conv, part, ok := tab.toFile(k)
		require.True(t, ok, "no original name for %q", k)
		if conv == convSplitQKV {
			if fused[file] == nil {
				fused[file] = &[3]*Entry{}
			}
			fused[file][part] = e
			continue
		}
		out = append(out, safetensors.WriteTensor{Name: file, DType: e.DType, Shape: e.Shape, Data: e.Bytes()})
	}
	for file, parts := range fused {
		var data []byte
		for _, e := range parts {
			require.NotNil(t, e, file)
			data = append(data, e.Bytes()...)
		}
		out = append(out, safetensors.WriteTensor{Name: file, DType: parts[0].DType, Shape: []int{3 * parts[0].Shape[0], parts[0].Shape[1]}, Data: data})
	}
	out = append(out, safetensors.WriteTensor{Name: prefix + "norm_final.weight", DType: safetensors.F32, Shape: []int{cfg.Dim}, Data: make([]byte, 4*cfg.Dim)})
	require.NoError(t, safetensors.WriteFile(path, out, nil))
}

// TestZImageSingleFile: the tiny transformer written in the original
// layout (with and without "model.diffusion_model.", and with diffusers'
// own names) opens to the same tensors and the same config as the folder,
// the config inferred from the tensors alone; the text encoder and VAE
// come from the paths given.
func TestZImageSingleFile(t *testing.T) {
	dir := testref.Dir(t, tinyZImage)
	ref := openTest(t, dir, OpenOptions{})
	tmp := t.TempDir()
	files := map[string]string{}
	for _, p := range []string{"", zimageLDMPrefix} {
		path := filepath.Join(tmp, fmt.Sprintf("z_image_turbo%d.safetensors", len(files)))
		zimageOriginalFile(t, ref.Transformer.Source, ref.Transformer.Config, p, path)
		files["original "+p] = path
	}
	files["diffusers names"] = filepath.Join(tmp, "z_image_diffusers.safetensors")
	writeSource(t, files["diffusers names"], ref.Transformer.Source, ref.Transformer.Source.Keys(), nil)

	for name, path := range files {
		t.Run(name, func(t *testing.T) {
			c := openTest(t, path, OpenOptions{TextEncoderPath: dir, VAEPath: filepath.Join(dir, "vae")})
			assert.Equal(t, ZImage, c.Arch)
			assert.Equal(t, FormatSingleFile, c.Format)
			assert.Empty(t, c.Warnings)
			sameSource(t, ref.Transformer.Source, c.Transformer.Source)
			assert.Equal(t, *ref.Transformer.Config, *c.Transformer.Config, "config inferred from the tensors")
			sameSource(t, ref.Qwen.Source, c.Qwen.Source)
			assert.Equal(t, *ref.Qwen.Config, *c.Qwen.Config)
			sameSource(t, ref.VAE.Source, c.VAE.Source)
			assert.Equal(t, ref.Index.ClassName, c.Index.ClassName)
			assert.Equal(t, *ref.Scheduler.Shift, *c.Scheduler.Shift)
			assert.Equal(t, filepath.Join(dir, "tokenizer"), c.Qwen.TokenizerDir)
			require.NoError(t, c.RequireTokenizers())
			in := c.Info()
			assert.Equal(t, ref.Info().Params, in.Params)
			assert.Contains(t, in.String(), "single file")
		})
	}
}

// TestZImageComponentFiles: the text encoder and the VAE given as single
// .safetensors files (transformers names with and without "model.", the
// VAE in diffusers names and in the original FLUX layout with 1x1-conv
// attention) open to the same tensors, with configs inferred from them.
func TestZImageComponentFiles(t *testing.T) {
	dir := testref.Dir(t, tinyZImage)
	ref := openTest(t, dir, OpenOptions{})
	tmp := t.TempDir()
	single := filepath.Join(tmp, "z_image.safetensors")
	zimageOriginalFile(t, ref.Transformer.Source, ref.Transformer.Config, "", single)

	bare := filepath.Join(tmp, "qwen_3_4b_bare.safetensors")
	writeSource(t, bare, ref.Qwen.Source, ref.Qwen.Source.Keys(), func(k string) string { return strings.TrimPrefix(k, "model.") })
	ldmVAEFile := filepath.Join(tmp, "ae.safetensors")
	vc := ref.VAE.Config
	vtab := newNameTable(vaeRules("", len(vc.BlockOutChannels), vc.LayersPerBlock+1))
	var vt []safetensors.WriteTensor
	for _, k := range ref.VAE.Source.Keys() {
		e := ref.VAE.Source.Entry(k)
		file, conv, _, ok := vtab.toFile(k)
		require.True(t, ok, k)
		shape := e.Shape
		if conv == convLinearFrom1x1 && len(shape) == 2 {
			shape = []int{shape[0], shape[1], 1, 1}
		}
		vt = append(vt, safetensors.WriteTensor{Name: file, DType: e.DType, Shape: shape, Data: e.Bytes()})
	}
	require.NoError(t, safetensors.WriteFile(ldmVAEFile, vt, nil))

	for _, te := range []string{filepath.Join(dir, "text_encoder", "model.safetensors"), bare, filepath.Join(dir, "text_encoder")} {
		for _, vae := range []string{filepath.Join(dir, "vae", "diffusion_pytorch_model.safetensors"), ldmVAEFile, dir} {
			t.Run(filepath.Base(te)+"+"+filepath.Base(vae), func(t *testing.T) {
				c := openTest(t, single, OpenOptions{TextEncoderPath: te, VAEPath: vae, TokenizerDir: filepath.Join(dir, "tokenizer")})
				assert.Empty(t, c.Warnings)
				sameSource(t, ref.Qwen.Source, c.Qwen.Source)
				sameSource(t, ref.VAE.Source, c.VAE.Source)
				assert.Equal(t, *ref.Qwen.Config, *c.Qwen.Config)
				assert.Equal(t, *ref.VAE.Config, *c.VAE.Config)
				assert.Equal(t, filepath.Join(dir, "tokenizer"), c.Qwen.TokenizerDir)
			})
		}
	}
	// A folder's own components can be replaced too.
	c := openTest(t, dir, OpenOptions{VAEPath: ldmVAEFile, TextEncoderPath: bare})
	assert.Equal(t, ldmVAEFile, c.VAE.Source.Entry("decoder.conv_in.weight").File)
	assert.Equal(t, bare, c.Qwen.Source.Entry("model.embed_tokens.weight").File)
	assert.Equal(t, filepath.Join(dir, "tokenizer"), c.Qwen.TokenizerDir)
}

// TestZImageOpenErrors: each kind of bad input is a named, typed error.
func TestZImageOpenErrors(t *testing.T) {
	dir := testref.Dir(t, tinyZImage)
	ref := openTest(t, dir, OpenOptions{})
	tmp := t.TempDir()
	single := filepath.Join(tmp, "z_image.safetensors")
	zimageOriginalFile(t, ref.Transformer.Source, ref.Transformer.Config, "", single)

	var mc *MissingComponentError
	_, err := OpenCheckpoint(single, OpenOptions{VAEPath: dir})
	require.ErrorAs(t, err, &mc)
	assert.Equal(t, "text_encoder", mc.Component)
	assert.Contains(t, err.Error(), "--text-encoder")
	_, err = OpenCheckpoint(single, OpenOptions{TextEncoderPath: dir})
	require.ErrorAs(t, err, &mc)
	assert.Equal(t, "vae", mc.Component)
	_, err = OpenCheckpoint(single, OpenOptions{TextEncoderPath: tmp, VAEPath: dir})
	require.ErrorAs(t, err, &mc)
	assert.Contains(t, err.Error(), "neither a diffusers pipeline folder")

	// A tokenizer folder without merges.txt.
	broken := copyModel(t, tinyZImage)
	require.NoError(t, os.Remove(filepath.Join(broken, "tokenizer", "merges.txt")))
	c := openTest(t, broken, OpenOptions{})
	var te *TokenizerFilesError
	require.ErrorAs(t, c.RequireTokenizers(), &te)
	assert.Equal(t, []string{"merges.txt"}, te.Missing)
	assert.Contains(t, te.Error(), filepath.Join(broken, "tokenizer"))
	// No tokenizer anywhere.
	c = openTest(t, single, OpenOptions{TextEncoderPath: filepath.Join(dir, "text_encoder", "model.safetensors"), VAEPath: dir})
	assert.Empty(t, c.Qwen.TokenizerDir)
	assert.ErrorContains(t, c.RequireTokenizers(), "--tokenizer")

	// A fused q/k/v that is not three equal parts of the width.
	bad := filepath.Join(tmp, "bad_qkv.safetensors")
	f, err := safetensors.Open(single)
	require.NoError(t, err)
	var ws []safetensors.WriteTensor
	for _, tt := range f.Tensors() {
		w, err := tt.ToWrite()
		require.NoError(t, err)
		if tt.Name == "layers.1.attention.qkv.weight" {
			w.Shape = []int{2 * w.Shape[0] / 3, w.Shape[1]}
			w.Data = w.Data[:len(w.Data)*2/3]
		}
		ws = append(ws, w)
	}
	require.NoError(t, safetensors.WriteFile(bad, ws, nil))
	f.Close()
	_, err = OpenCheckpoint(bad, OpenOptions{TextEncoderPath: dir, VAEPath: dir})
	var sh *ShapeError
	require.ErrorAs(t, err, &sh)
	assert.Equal(t, "layers.1.attention.qkv.weight", sh.Key)

	// Components that do not fit: an SD VAE's 4 latent channels.
	if sd, ok := testref.Root(); ok {
		_, err = OpenCheckpoint(dir, OpenOptions{VAEPath: filepath.Join(sd, "tiny-sd-turbo")})
		var mm *ComponentMismatchError
		require.ErrorAs(t, err, &mm)
		assert.Equal(t, "vae", mm.Component)
		// The Z-Image options are refused for SD models.
		_, err = OpenCheckpoint(filepath.Join(sd, "tiny-sd-turbo"), OpenOptions{VAEPath: dir})
		assert.ErrorContains(t, err, "Z-Image models only")
	}

	// A folder whose model_index.json lists a component that is missing,
	// or a text encoder of another class.
	gone := copyModel(t, tinyZImage)
	require.NoError(t, os.RemoveAll(filepath.Join(gone, "transformer")))
	_, err = OpenCheckpoint(gone, OpenOptions{})
	require.ErrorAs(t, err, &mc)
	assert.Equal(t, "transformer", mc.Component)
	other := copyModel(t, tinyZImage)
	rewriteIndex(t, other, func(m map[string]any) { m["text_encoder"] = []any{"transformers", "CLIPTextModel"} })
	_, err = OpenCheckpoint(other, OpenOptions{})
	require.ErrorAs(t, err, &mc)
	assert.Contains(t, err.Error(), "CLIPTextModel")
}
