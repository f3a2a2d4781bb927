package model

import (
	"fmt"
	"math"

	"github.com/zimage/zimage/engine"
)

// CLIPText is transformers' CLIPTextModel, and CLIPTextModelWithProjection
// when the checkpoint has text_projection (SDXL's second encoder)
// (transformers/models/clip/modeling_clip.py). Fields mirror the keys under
// "text_model.".
type CLIPText struct {
	Config         CLIPTextConfig
	Embeddings     *CLIPEmbeddings
	Layers         []*CLIPLayer // text_model.encoder.layers.<i>
	FinalLayerNorm *LayerNorm
	TextProjection *Linear // nil for CLIPTextModel

	act    engine.UnaryOp
	blocks []*Block
	// block indices: 0 embeddings, 1+i layer i, last final norm + projection
}

// CLIPEmbeddings holds text_model.embeddings.
type CLIPEmbeddings struct {
	TokenEmbedding    *Param // token_embedding.weight [vocab, D]
	PositionEmbedding *Param // position_embedding.weight [positions, D]
}

// CLIPLayer is one pre-norm transformer layer.
type CLIPLayer struct {
	LayerNorm1 *LayerNorm
	SelfAttn   *CLIPAttention
	LayerNorm2 *LayerNorm
	MLP        *CLIPMLP
}

// CLIPAttention is multi-head causal self-attention.
type CLIPAttention struct {
	QProj, KProj, VProj, OutProj *Linear
	Heads                        int
}

// CLIPMLP is fc1 -> activation -> fc2.
type CLIPMLP struct {
	FC1, FC2 *Linear
}

// LoadCLIPText builds the text encoder from src, checking every tensor
// against cfg. Unknown hidden_act values and inconsistent sizes are errors.
func LoadCLIPText(src *Source, cfg *CLIPTextConfig) (*CLIPText, error) {
	if cfg == nil {
		return nil, fmt.Errorf("model: %s: no text encoder config", src.Name)
	}
	c := *cfg
	if c.MaxPositionEmbeddings == 0 {
		c.MaxPositionEmbeddings = 77 // transformers' default
	}
	if c.LayerNormEps == 0 {
		c.LayerNormEps = 1e-5
	}
	var act engine.UnaryOp
	switch c.HiddenAct {
	case "quick_gelu", "":
		act = engine.QuickGELU // transformers' default
	case "gelu":
		act = engine.GELU
	case "gelu_new", "gelu_pytorch_tanh":
		act = engine.GELUTanh
	default:
		return nil, fmt.Errorf("model: %s: config hidden_act %q not supported (want quick_gelu, gelu, gelu_new or gelu_pytorch_tanh)", src.Name, c.HiddenAct)
	}
	d := c.HiddenSize
	switch {
	case d <= 0 || c.NumHiddenLayers <= 0 || c.IntermediateSize <= 0 || c.VocabSize <= 0:
		return nil, fmt.Errorf("model: %s: config needs positive hidden_size, intermediate_size, num_hidden_layers and vocab_size, got %d, %d, %d, %d",
			src.Name, d, c.IntermediateSize, c.NumHiddenLayers, c.VocabSize)
	case c.NumAttentionHeads <= 0 || d%c.NumAttentionHeads != 0:
		return nil, fmt.Errorf("model: %s: config num_attention_heads %d does not divide hidden_size %d", src.Name, c.NumAttentionHeads, d)
	}

	w := NewWeights(src)
	tm := w.Sub("text_model")
	m := &CLIPText{Config: c, act: act}
	m.blocks = append(m.blocks, w.BeginBlock("text_model.embeddings"))
	emb := tm.Sub("embeddings")
	m.Embeddings = &CLIPEmbeddings{
		TokenEmbedding:    emb.Sub("token_embedding").Param("weight", c.VocabSize, d),
		PositionEmbedding: emb.Sub("position_embedding").Param("weight", c.MaxPositionEmbeddings, d),
	}
	for i := range c.NumHiddenLayers {
		lw := tm.Subf("encoder.layers.%d", i)
		m.blocks = append(m.blocks, w.BeginBlock(lw.Prefix()))
		aw := lw.Sub("self_attn")
		m.Layers = append(m.Layers, &CLIPLayer{
			LayerNorm1: loadLayerNorm(lw.Sub("layer_norm1"), d, c.LayerNormEps),
			SelfAttn: &CLIPAttention{
				QProj:   loadLinear(aw.Sub("q_proj"), d, d, true),
				KProj:   loadLinear(aw.Sub("k_proj"), d, d, true),
				VProj:   loadLinear(aw.Sub("v_proj"), d, d, true),
				OutProj: loadLinear(aw.Sub("out_proj"), d, d, true),
				Heads:   c.NumAttentionHeads,
			},
			LayerNorm2: loadLayerNorm(lw.Sub("layer_norm2"), d, c.LayerNormEps),
			MLP: &CLIPMLP{
				FC1: loadLinear(lw.Sub("mlp.fc1"), d, c.IntermediateSize, true),
				FC2: loadLinear(lw.Sub("mlp.fc2"), c.IntermediateSize, d, true),
			},
		})
	}
	m.blocks = append(m.blocks, w.BeginBlock("text_model.final_layer_norm"))
	m.FinalLayerNorm = loadLayerNorm(tm.Sub("final_layer_norm"), d, c.LayerNormEps)
	// CLIPTextModelWithProjection: the architecture says so, or the
	// checkpoint carries the projection (single-file SDXL has no config).
	if c.WithProjection() || w.Has("text_projection.weight") {
		p := c.ProjectionDim
		if p == 0 {
			p = d
		}
		m.TextProjection = loadLinear(w.Sub("text_projection"), d, p, false)
	}
	if err := w.Err(); err != nil {
		return nil, err
	}
	return m, nil
}

// Blocks lists the offload blocks in execution order: the embeddings, one
// per layer, then the final norm with the projection.
func (m *CLIPText) Blocks() []*Block { return m.blocks }

// CLIPWant selects the outputs Encode computes; what is not asked for is
// never kept (and the last layer is skipped when only Penultimate is).
type CLIPWant struct {
	LastHidden  bool // final-normed hidden states (SD 1.x/2.x prompt embeds)
	Penultimate bool // hidden_states[-2]: input of the last layer, no final norm (SDXL)
	Pooled      bool // final-normed state at the first EOS token
	TextEmbeds  bool // text_projection(Pooled); needs the projection
}

// CLIPOutput holds device tensors; the fields not asked for are nil. The
// caller owns them (Free).
type CLIPOutput struct {
	LastHidden  *engine.Tensor // [B, L, D]
	Penultimate *engine.Tensor // [B, L, D]
	Pooled      *engine.Tensor // [B, D]
	TextEmbeds  *engine.Tensor // [B, projection_dim]
}

// Free releases every output.
func (o *CLIPOutput) Free(rec *engine.Rec) {
	if o == nil {
		return
	}
	rec.Free(o.LastHidden, o.Penultimate, o.Pooled, o.TextEmbeds)
	*o = CLIPOutput{}
}

// Forward computes every output the network has (TextEmbeds only with a
// projection). ids is a batch of equal-length rows (77 tokens for SD).
func (m *CLIPText) Forward(rec *engine.Rec, res Residency, ids [][]int32) *CLIPOutput {
	return m.Encode(rec, res, ids, CLIPWant{LastHidden: true, Penultimate: true, Pooled: true, TextEmbeds: m.TextProjection != nil})
}

// Encode runs the encoder on a batch of token rows and returns the outputs
// in want. No padding mask is applied: padded positions take part, as in
// the diffusers pipelines (the causal mask keeps them from affecting the
// tokens before them).
func (m *CLIPText) Encode(rec *engine.Rec, res Residency, ids [][]int32, want CLIPWant) *CLIPOutput {
	if rec.Err() != nil {
		return nil
	}
	bsz, seq, err := m.checkIDs(ids)
	if err != nil {
		rec.Fail(err)
		return nil
	}
	if want.TextEmbeds && m.TextProjection == nil {
		rec.Fail(fmt.Errorf("model: text encoder has no text_projection (CLIPTextModel), cannot return text embeds"))
		return nil
	}
	d := m.Config.HiddenSize
	needFinal := want.LastHidden || want.Pooled || want.TextEmbeds
	layers := len(m.Layers)
	if !needFinal {
		layers-- // only hidden_states[-2] is wanted: the last layer is not needed
	}
	if !needBlock(rec, res, "text encoder", m.blocks[0]) {
		return nil
	}
	x := m.embed(rec, ids, bsz, seq) // [B, L, D]
	if rec.Err() != nil {
		return nil
	}

	out := &CLIPOutput{}
	for i := range layers {
		if !needBlock(rec, res, "text encoder", m.blocks[1+i]) {
			break
		}
		if i == len(m.Layers)-1 && want.Penultimate {
			out.Penultimate = rec.Copy("text_model.hidden_states[-2]", x)
		}
		m.Layers[i].forward(rec, x, m.act)
		if err := rec.Err(); err != nil {
			break
		}
	}
	if layers < len(m.Layers) && want.Penultimate && rec.Err() == nil {
		out.Penultimate, x = x, nil // x is the skipped last layer's input
	}
	if rec.Err() != nil || !needFinal {
		rec.Free(x)
		if rec.Err() != nil {
			out.Free(rec)
			return nil
		}
		return out
	}

	if !needBlock(rec, res, "text encoder", m.blocks[len(m.blocks)-1]) {
		rec.Free(x)
		out.Free(rec)
		return nil
	}
	last := m.FinalLayerNorm.Forward(rec, x) // [B, L, D]
	rec.Free(x)
	if want.Pooled || want.TextEmbeds {
		rows := make([]int32, bsz)
		for b, row := range ids {
			rows[b] = int32(b*seq + m.eosIndex(row))
		}
		// Embedding gathers rows of any F32 table: here the EOS rows.
		pooled := rec.Embedding("text_model.pooled", rec.Reshape(last, bsz*seq, d), rows) // [B, D]
		if want.TextEmbeds {
			out.TextEmbeds = m.TextProjection.Forward(rec, pooled) // [B, P]
		}
		if want.Pooled {
			out.Pooled = pooled
		} else {
			rec.Free(pooled)
		}
	}
	if want.LastHidden {
		out.LastHidden = last
	} else {
		rec.Free(last)
	}
	if rec.Err() != nil {
		out.Free(rec)
		return nil
	}
	return out
}

// embed returns token + position embeddings [B, L, D], allocated with that
// shape so that it can be handed out as an output.
func (m *CLIPText) embed(rec *engine.Rec, ids [][]int32, bsz, seq int) *engine.Tensor {
	d := m.Config.HiddenSize
	flat := make([]int32, 0, bsz*seq)
	for _, row := range ids {
		flat = append(flat, row...)
	}
	x := rec.Alloc("text_model.embeddings", bsz, seq, d)
	rows := rec.Reshape(x, bsz*seq, d) // view for the [len(ids), D] gather
	if rec.Err() != nil {
		rec.Free(x)
		return nil
	}
	if err := rec.B.Embedding(rows, m.Embeddings.TokenEmbedding.T, flat); err != nil {
		rec.Free(x)
		return rec.Fail(fmt.Errorf("model: text encoder token embedding: %w", err))
	}
	// Position embeddings are stored F16 like every matrix; Embedding
	// gathers (and widens) the first seq rows for the F32 add.
	positions := make([]int32, seq)
	for i := range positions {
		positions[i] = int32(i)
	}
	pos := rec.Embedding("text_model.embeddings.position", m.Embeddings.PositionEmbedding.T, positions)
	rec.AddInPlace(x, pos) // [B, L, D] += [L, D]
	rec.Free(pos)
	if rec.Err() != nil {
		rec.Free(x)
		return nil
	}
	return x
}

func (m *CLIPText) checkIDs(ids [][]int32) (bsz, seq int, err error) {
	if len(ids) == 0 || len(ids[0]) == 0 {
		return 0, 0, fmt.Errorf("model: text encoder: no token ids")
	}
	seq = len(ids[0])
	if seq > m.Config.MaxPositionEmbeddings {
		return 0, 0, fmt.Errorf("model: text encoder: %d tokens per row, the model takes at most %d", seq, m.Config.MaxPositionEmbeddings)
	}
	for b, row := range ids {
		if len(row) != seq {
			return 0, 0, fmt.Errorf("model: text encoder: row %d has %d tokens, row 0 has %d", b, len(row), seq)
		}
		for i, id := range row {
			if id < 0 || int(id) >= m.Config.VocabSize {
				return 0, 0, fmt.Errorf("model: text encoder: token %d of row %d is %d, outside the vocabulary [0, %d)", i, b, id, m.Config.VocabSize)
			}
		}
	}
	return len(ids), seq, nil
}

// eosIndex is where the pooled output is read. transformers uses the
// argmax of the ids when the config carries the legacy eos_token_id 2
// (every SD/SDXL text encoder: the real EOS 49407 is the largest id), and
// the first eos_token_id otherwise.
func (m *CLIPText) eosIndex(row []int32) int {
	best := 0
	if m.Config.EOSTokenID != 2 {
		for i, id := range row {
			if int(id) == m.Config.EOSTokenID {
				return i
			}
		}
	}
	for i, id := range row {
		if id > row[best] {
			best = i
		}
	}
	return best
}

// forward updates x [B, L, D] in place:
// x += attn(ln1(x)); x += mlp(ln2(x)).
func (l *CLIPLayer) forward(rec *engine.Rec, x *engine.Tensor, act engine.UnaryOp) {
	h := l.LayerNorm1.Forward(rec, x)
	a := l.SelfAttn.forward(rec, h)
	rec.Free(h)
	rec.AddInPlace(x, a)
	rec.Free(a)

	h = l.LayerNorm2.Forward(rec, x)
	f := l.MLP.FC1.Forward(rec, h) // [B, L, intermediate]
	rec.Free(h)
	rec.UnaryInPlace(f, act)
	g := l.MLP.FC2.Forward(rec, f) // [B, L, D]
	rec.Free(f)
	rec.AddInPlace(x, g)
	rec.Free(g)
}

// forward: h [B, L, D] -> [B, L, D], causal.
func (a *CLIPAttention) forward(rec *engine.Rec, h *engine.Tensor) *engine.Tensor {
	q := a.QProj.Forward(rec, h)
	k := a.KProj.Forward(rec, h)
	v := a.VProj.Forward(rec, h)
	d := a.QProj.Weight.Shape[0] / a.Heads
	o := rec.Attention("self_attn", q, k, v, engine.AttentionOptions{Heads: a.Heads, Scale: float32(1 / math.Sqrt(float64(d))), Causal: true})
	rec.Free(q, k, v)
	out := a.OutProj.Forward(rec, o)
	rec.Free(o)
	return out
}
