package model

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
)

// TestZImageInfo checks the tiny model's summary against tiny_info.json's
// parameter counts and the estimates against hand-computed values.
func TestZImageInfo(t *testing.T) {
	c := openTest(t, testref.Dir(t, tinyZImage), OpenOptions{})
	in := c.Info()
	require.Len(t, in.Components, 3)
	names := []string{}
	params := map[string]int64{}
	for _, ci := range in.Components {
		names = append(names, ci.Name)
		params[ci.Name] = ci.Params
	}
	assert.Equal(t, []string{"text_encoder", "transformer", "vae"}, names)
	assert.Equal(t, map[string]int64{"transformer": 12906240, "text_encoder": 9839040, "vae": 5293891}, params)
	assert.Equal(t, map[string]int{"BF16": 24}, dtypeCounts(in.Components[0]))
	assert.Equal(t, map[string]int{"F32": 101}, dtypeCounts(in.Components[1]))

	// Text encoder on the device: the embeddings and layer 0 (hidden
	// states[-2] of 2 layers), matrices in F16, norms in F32; not layer 1
	// nor the final norm.
	q := c.Qwen.Config
	layer := int64(2*(64*128+2*64*32+128*64+3*64*192)) + 4*int64(2*32+2*64)
	assert.Equal(t, int64(2*q.VocabSize*64)+layer, in.Components[0].DeviceBytes)
	// Transformer: all 12.9M parameters, F16 matrices and F32 vectors.
	var want int64
	for _, k := range c.Transformer.Source.Keys() {
		e := c.Transformer.Source.Entry(k)
		if len(e.Shape) >= 2 {
			want += 2 * int64(e.NumElem())
		} else {
			want += 4 * int64(e.NumElem())
		}
	}
	assert.Equal(t, want, in.Components[1].DeviceBytes)

	// 1024², one row: 64x64 image tokens + 512 caption tokens; per token
	// 8 x 384 + 3 x 1024 floats, plus a 4608² score matrix.
	require.Len(t, in.Memory, 3)
	m := in.Memory[1]
	assert.Equal(t, 1024, m.Size)
	assert.Equal(t, 1, m.Rows)
	tr := m.Stages[1]
	assert.Equal(t, 4608, tr.Tokens)
	assert.Equal(t, int64(4*(4608*(8*384+3*1024)+4608*4608)), tr.ActivationBytes)
	// Text encoder, 512 tokens: 4 x 64 + 2 x 128 (q, attention output) +
	// 2 x 32 (k, v) + 3 x 192 floats a token, plus a 512² score matrix.
	assert.Equal(t, int64(4*(512*(4*64+2*128+2*32+3*192)+512*512)), m.Stages[0].ActivationBytes)
	assert.Equal(t, VAEDecodeBytes(c.VAE.Config, 1, 128, 128), m.Stages[2].ActivationBytes)
	// With guidance (rows 2) the text encoder and transformer double.
	assert.Equal(t, 2*tr.ActivationBytes, in.Memory[2].Stages[1].ActivationBytes)
	assert.Equal(t, 2*m.Stages[0].ActivationBytes, in.Memory[2].Stages[0].ActivationBytes)
	var peak, act int64
	for _, s := range m.Stages {
		peak = max(peak, s.WeightBytes+s.ActivationBytes)
		act = max(act, s.ActivationBytes)
	}
	assert.Equal(t, peak, m.PeakBytes)
	assert.Equal(t, in.DeviceWeightBytes+act, m.ResidentBytes)
	assert.Equal(t, act, in.ActivationBytes)
	assert.Equal(t, in.DeviceWeightBytes+act, in.DeviceBytes)
	assert.Equal(t, 1024, in.ActivationSize)
	assert.Equal(t, 1, in.ActivationRows)

	s := in.String()
	for _, want := range []string{"z-image", "ZImageTransformer2DModel", "Qwen3Model", "1024x1024", "4608", "peak, one stage resident", "BF16:24"} {
		assert.Contains(t, s, want)
	}
	assert.False(t, strings.Contains(s, "guidance batch of 2, all weights resident"), "the SD line")
}

func dtypeCounts(ci ComponentInfo) map[string]int {
	out := map[string]int{}
	for d, n := range ci.DTypes {
		out[string(d)] = n
	}
	return out
}
