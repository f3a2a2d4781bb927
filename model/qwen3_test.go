package model

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
)

func loadTestQwen3(t testing.TB) *Qwen3 {
	t.Helper()
	var cfg Qwen3Config
	src := openComponent(t, tinyZImage, "text_encoder", &cfg)
	m, err := LoadQwen3(src.Source, &cfg)
	require.NoError(t, err)
	require.Empty(t, src.Unused(), "text_encoder tensors not used by the encoder")
	return m
}

// zimageIDs returns the valid (unpadded) token ids of refs' tok.<name>.
func zimageIDs(t testing.TB, r *testref.Refs, name string) []int32 {
	t.Helper()
	ids, _ := r.Ints(t, "tok."+name+".input_ids")
	mask, _ := r.Ints(t, "tok."+name+".attention_mask")
	var out []int32
	for i, id := range ids {
		if mask[i] != 0 {
			out = append(out, int32(id))
		}
	}
	return out
}

// TestQwen3Encode checks hidden_states[-2] at the valid tokens (what
// ZImagePipeline uses) for every reference prompt, and the embeddings.
//
// Bound: the text encoder is stored BF16 and goes to the device as F16,
// which holds every BF16 value of the tiny model exactly (8 significant
// bits fit F16's 11; the weights sit far inside F16's normal range), so our
// result differs from the float32 reference only by summation order:
// observed max |diff| 1.3e-6 against values up to ~5, under the README's
// float32 bound 1e-4 * (max|ref| + 1).
func TestQwen3Encode(t *testing.T) {
	r := testref.Open(t, tinyZImage)
	m := loadTestQwen3(t)
	forEachBackend(t, func(t *testing.T, b engine.Backend, res Residency) {
		for i := range 4 {
			ids := zimageIDs(t, r, fmt.Sprint(i))
			emb, err := m.EmbedTokens.Rows(ids)
			require.NoError(t, err)
			want, _ := r.Floats(t, fmt.Sprintf("te.%d.embeddings", i))
			require.Equal(t, want, emb, "te.%d.embeddings: the BF16 rows widen exactly", i)

			rec := engine.NewRec(b)
			got := m.Encode(rec, res, ids)
			require.NoError(t, rec.Err())
			checkClose(t, b, got, r, fmt.Sprintf("te.%d.prompt_embeds", i), 0)
			rec.Free(got)
		}
	})
}

// TestQwen3Rope checks the host rotary tables against transformers' float32
// computation at a few hand-computed points: position 0 is the identity
// and the first pair turns by exactly the position (inv_freq[0] = 1).
func TestQwen3Rope(t *testing.T) {
	cos, sin := qwen3Rope(600, 128, 1e6)
	require.Len(t, cos, 600*64)
	for i := range 64 {
		require.Equal(t, float32(1), cos[i])
		require.Equal(t, float32(0), sin[i])
	}
	require.InDelta(t, -0.47167887, cos[511*64], 1e-7) // cos(511)
	require.InDelta(t, 0.88177040, sin[511*64], 1e-7)  // sin(511)
	// The last pair turns slowest: inv_freq[63] = 1e6^(-126/128).
	require.InDelta(t, 511*1.2409377e-6, sin[511*64+63], 1e-9)
}

// TestQwen3Errors: bad ids and configs fail with named errors, no panics.
func TestQwen3Errors(t *testing.T) {
	m := loadTestQwen3(t)
	rec := engine.NewRec(refBackend(t))
	require.Nil(t, m.Encode(rec, AllResident{B: rec.B}, []int32{1, int32(m.Config.VocabSize)}))
	require.ErrorContains(t, rec.Err(), "outside [0, 151936)")
	rec = engine.NewRec(rec.B)
	require.Nil(t, m.Encode(rec, AllResident{B: rec.B}, nil))
	require.ErrorContains(t, rec.Err(), "no token ids")

	var cfg Qwen3Config
	src := openComponent(t, tinyZImage, "text_encoder", &cfg)
	wrong := cfg
	wrong.IntermediateSize++
	_, err := LoadQwen3(src.Source, &wrong)
	var se *ShapeError
	require.True(t, errors.As(err, &se), "want a *ShapeError, got %v", err)
	require.Contains(t, err.Error(), "model.layers.0.mlp.gate_proj.weight")
	wrong = cfg
	wrong.RopeScaling = map[string]any{"type": "yarn"}
	_, err = LoadQwen3(src.Source, &wrong)
	require.ErrorContains(t, err, "rope_scaling")
	wrong = cfg
	wrong.NumKeyValueHeads = 3
	_, err = LoadQwen3(src.Source, &wrong)
	require.ErrorContains(t, err, "num_key_value_heads 3")
}

func refBackend(t testing.TB) engine.Backend {
	b := ref.New()
	t.Cleanup(func() { b.Close() })
	return b
}
