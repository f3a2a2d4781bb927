package model

import (
	"fmt"
	"math"
	"slices"

	"github.com/zimage/zimage/engine"
)

// Qwen3 is transformers' Qwen3Model (transformers/models/qwen3/
// modeling_qwen3.py): the decoder stack of Qwen3 without the LM head, as
// Z-Image uses it for text features. Fields mirror the keys under "model.".
type Qwen3 struct {
	Config      Qwen3Config // with defaults filled in
	EmbedTokens *Param      // model.embed_tokens.weight [vocab, hidden], gathered on the host
	Layers      []*Qwen3Layer
	Norm        *RMSNorm // model.norm: loaded with the checkpoint, never run by Encode

	headDim int
	blocks  []*Block // one per layer, then the final norm
}

// Qwen3Layer is Qwen3DecoderLayer: pre-norm attention and SwiGLU MLP.
type Qwen3Layer struct {
	InputLayernorm         *RMSNorm
	SelfAttn               *Qwen3Attention
	PostAttentionLayernorm *RMSNorm
	MLP                    *Qwen3MLP
}

// Qwen3Attention is causal grouped-query attention with a per-head RMSNorm
// on queries and keys before the rotary embedding.
type Qwen3Attention struct {
	QProj, KProj, VProj, OProj *Linear
	QNorm, KNorm               *RMSNorm // over head_dim
	Heads, KVHeads, HeadDim    int
}

// Qwen3MLP is down_proj(silu(gate_proj(x)) * up_proj(x)).
type Qwen3MLP struct {
	GateProj, UpProj, DownProj *Linear
}

// LoadQwen3 builds the text encoder from src (keys "model.*"), checking
// every tensor against cfg. Settings that change the computation and that
// the encoder does not implement (rope_scaling, sliding windows, an
// activation other than SiLU) are errors.
func LoadQwen3(src *Source, cfg *Qwen3Config) (*Qwen3, error) {
	if cfg == nil {
		return nil, fmt.Errorf("model: %s: no Qwen3 config", src.Name)
	}
	c := *cfg
	if c.RMSNormEps == 0 {
		c.RMSNormEps = 1e-6 // transformers' default
	}
	if c.RopeTheta == 0 {
		c.RopeTheta = 10000
	}
	if c.NumKeyValueHeads == 0 {
		c.NumKeyValueHeads = c.NumAttentionHeads
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("model: %s: config "+format, append([]any{src.Name}, args...)...)
	}
	switch {
	case c.HiddenSize <= 0 || c.IntermediateSize <= 0 || c.NumHiddenLayers <= 0 || c.VocabSize <= 0:
		return nil, bad("needs positive hidden_size, intermediate_size, num_hidden_layers and vocab_size, got %d, %d, %d, %d",
			c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.VocabSize)
	case c.NumAttentionHeads <= 0 || c.NumKeyValueHeads <= 0 || c.NumAttentionHeads%c.NumKeyValueHeads != 0:
		return nil, bad("num_attention_heads %d must be a positive multiple of num_key_value_heads %d", c.NumAttentionHeads, c.NumKeyValueHeads)
	case c.HiddenAct != "" && c.HiddenAct != "silu":
		return nil, bad("hidden_act %q not supported (want silu)", c.HiddenAct)
	case c.RopeScaling != nil:
		return nil, bad("rope_scaling %v not supported (want null)", c.RopeScaling)
	case c.UseSlidingWindow:
		return nil, bad("use_sliding_window is not supported")
	case c.RopeTheta <= 0 || math.IsInf(c.RopeTheta, 0) || math.IsNaN(c.RopeTheta):
		return nil, bad("rope_theta %v must be positive", c.RopeTheta)
	}
	hd := c.HeadDim
	if hd == 0 {
		if c.HiddenSize%c.NumAttentionHeads != 0 {
			return nil, bad("no head_dim, and num_attention_heads %d does not divide hidden_size %d", c.NumAttentionHeads, c.HiddenSize)
		}
		hd = c.HiddenSize / c.NumAttentionHeads
		c.HeadDim = hd
	}
	if hd%2 != 0 {
		return nil, bad("head_dim %d must be even (rotary embedding)", hd)
	}

	w := NewWeights(src)
	mw := w.Sub("model")
	m := &Qwen3{Config: c, headDim: hd}
	m.EmbedTokens = mw.Sub("embed_tokens").HostParam("weight", c.VocabSize, c.HiddenSize)
	d, q, kv := c.HiddenSize, c.NumAttentionHeads*hd, c.NumKeyValueHeads*hd
	for i := range c.NumHiddenLayers {
		lw := mw.Subf("layers.%d", i)
		m.blocks = append(m.blocks, w.BeginBlock(lw.Prefix()))
		aw := lw.Sub("self_attn")
		m.Layers = append(m.Layers, &Qwen3Layer{
			InputLayernorm: loadRMSNorm(lw.Sub("input_layernorm"), d, c.RMSNormEps),
			SelfAttn: &Qwen3Attention{
				QProj:   loadLinear(aw.Sub("q_proj"), d, q, c.AttentionBias),
				KProj:   loadLinear(aw.Sub("k_proj"), d, kv, c.AttentionBias),
				VProj:   loadLinear(aw.Sub("v_proj"), d, kv, c.AttentionBias),
				OProj:   loadLinear(aw.Sub("o_proj"), q, d, c.AttentionBias),
				QNorm:   loadRMSNorm(aw.Sub("q_norm"), hd, c.RMSNormEps),
				KNorm:   loadRMSNorm(aw.Sub("k_norm"), hd, c.RMSNormEps),
				Heads:   c.NumAttentionHeads,
				KVHeads: c.NumKeyValueHeads,
				HeadDim: hd,
			},
			PostAttentionLayernorm: loadRMSNorm(lw.Sub("post_attention_layernorm"), d, c.RMSNormEps),
			MLP: &Qwen3MLP{
				GateProj: loadLinear(lw.Sub("mlp.gate_proj"), d, c.IntermediateSize, false),
				UpProj:   loadLinear(lw.Sub("mlp.up_proj"), d, c.IntermediateSize, false),
				DownProj: loadLinear(lw.Sub("mlp.down_proj"), c.IntermediateSize, d, false),
			},
		})
	}
	m.blocks = append(m.blocks, w.BeginBlock("model.norm"))
	m.Norm = loadRMSNorm(mw.Sub("norm"), d, c.RMSNormEps)
	if err := w.Err(); err != nil {
		return nil, err
	}
	return m, nil
}

// Blocks lists every offload block: one per layer, then the final norm.
// The token embedding is read on the host and belongs to none.
func (m *Qwen3) Blocks() []*Block { return m.blocks }

// EncodeBlocks are the blocks Encode needs, in the order it needs them:
// every layer but the last (hidden_states[-2] is the last layer's input).
// A streamer given this order prefetches nothing Encode will not run.
func (m *Qwen3) EncodeBlocks() []*Block { return slices.Clone(m.blocks[:len(m.Layers)-1]) }

// Bytes is the device size of the blocks Encode uploads.
func (m *Qwen3) Bytes() int64 {
	var n int64
	for _, b := range m.EncodeBlocks() {
		n += b.Bytes()
	}
	return n
}

// Encode returns hidden_states[-2] [L, hidden] for one prompt's token ids
// (chat-templated, without padding): the output of the second-to-last
// layer, with no final norm, which is what ZImagePipeline feeds the
// transformer. Only those layers run, and only the valid tokens: the
// pipeline pads to 512 tokens and then keeps the unpadded rows, which the
// causal mask makes equal to running the valid tokens alone. The caller
// owns (Frees) the result.
func (m *Qwen3) Encode(rec *engine.Rec, res Residency, ids []int32) *engine.Tensor {
	if rec.Err() != nil {
		return nil
	}
	c := m.Config
	if len(ids) == 0 {
		return rec.Fail(fmt.Errorf("model: text encoder: no token ids"))
	}
	if c.MaxPositionEmbeddings > 0 && len(ids) > c.MaxPositionEmbeddings {
		return rec.Fail(fmt.Errorf("model: text encoder: %d tokens, the model takes at most %d", len(ids), c.MaxPositionEmbeddings))
	}
	emb, err := m.EmbedTokens.Rows(ids)
	if err != nil {
		return rec.Fail(fmt.Errorf("model: text encoder token embedding: %w", err))
	}
	l, d := len(ids), c.HiddenSize
	x := rec.Write("model.embed_tokens", emb, l, d) // [L, D], the result
	x3 := rec.Reshape(x, 1, l, d)                   // [1, L, D] view for the ops
	cos, sin := qwen3Rope(l, m.headDim, c.RopeTheta)
	ct := rec.Write("rope.cos", cos, 1, l, m.headDim/2)
	st := rec.Write("rope.sin", sin, 1, l, m.headDim/2)
	for i, layer := range m.Layers[:len(m.Layers)-1] {
		if !needBlock(rec, res, "text encoder", m.blocks[i]) {
			break
		}
		layer.forward(rec, x3, ct, st)
		if rec.Err() != nil {
			break
		}
	}
	rec.Free(ct, st)
	if rec.Err() != nil {
		rec.Free(x)
		return nil
	}
	return x
}

// qwen3Rope returns the rotary tables [L, D/2] for positions 0..L-1 the way
// transformers computes them: inv_freq = 1 / theta^(2i/D) and the angles
// pos * inv_freq in float32, cos and sin of the float32 angle.
func qwen3Rope(l, dim int, theta float64) (cos, sin []float32) {
	half := dim / 2
	inv := make([]float32, half)
	for i := range inv {
		e := float32(2*i) / float32(dim)
		inv[i] = float32(1 / float64(float32(math.Pow(float64(float32(theta)), float64(e)))))
	}
	cos, sin = make([]float32, l*half), make([]float32, l*half)
	for p := 0; p < l; p++ {
		for i, f := range inv {
			a := float64(float32(p) * f)
			cos[p*half+i] = float32(math.Cos(a))
			sin[p*half+i] = float32(math.Sin(a))
		}
	}
	return cos, sin
}

// forward updates x [1, L, D] in place:
// x += attn(norm(x)); x += mlp(norm(x)).
func (l *Qwen3Layer) forward(rec *engine.Rec, x, cos, sin *engine.Tensor) {
	h := l.InputLayernorm.Forward(rec, x)
	a := l.SelfAttn.forward(rec, h, cos, sin)
	rec.Free(h)
	rec.AddInPlace(x, a)
	rec.Free(a)

	h = l.PostAttentionLayernorm.Forward(rec, x)
	g := l.MLP.GateProj.Forward(rec, h) // [1, L, intermediate]
	u := l.MLP.UpProj.Forward(rec, h)
	rec.Free(h)
	rec.SwiGLUInPlace(g, u)
	rec.Free(u)
	o := l.MLP.DownProj.Forward(rec, g) // [1, L, D]
	rec.Free(g)
	rec.AddInPlace(x, o)
	rec.Free(o)
}

// forward: h [1, L, D] -> [1, L, D], causal.
func (a *Qwen3Attention) forward(rec *engine.Rec, h, cos, sin *engine.Tensor) *engine.Tensor {
	q := a.QProj.Forward(rec, h) // [1, L, H*Dh]
	k := a.KProj.Forward(rec, h) // [1, L, KV*Dh]
	v := a.VProj.Forward(rec, h)
	qn := a.QNorm.forwardHeads(rec, q, a.Heads)
	kn := a.KNorm.forwardHeads(rec, k, a.KVHeads)
	rec.Free(q, k)
	rec.RopeInPlace(qn, cos, sin, a.Heads, engine.RopeHalf)
	rec.RopeInPlace(kn, cos, sin, a.KVHeads, engine.RopeHalf)
	o := rec.Attention("self_attn", qn, kn, v, engine.AttentionOptions{
		Heads: a.Heads, KVHeads: a.KVHeads, Scale: float32(1 / math.Sqrt(float64(a.HeadDim))), Causal: true,
	})
	rec.Free(qn, kn, v)
	out := a.OProj.Forward(rec, o)
	rec.Free(o)
	return out
}
