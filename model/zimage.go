package model

import (
	"fmt"
	"math"
	"slices"

	"github.com/zimage/zimage/engine"
)

// ZImageTransformer is diffusers' ZImageTransformer2DModel
// (diffusers/models/transformers/transformer_z_image.py): Z-Image's
// single-stream DiT. Image patches run through the noise refiner, caption
// features through the context refiner, and both, image tokens first, through
// the main layers; every sequence is padded to a multiple of 32 with learned
// pad tokens. Fields mirror the checkpoint keys; sizes come from the config,
// so the tiny test model and the 6 B real one run through the same code.
type ZImageTransformer struct {
	Config ZImageConfig

	TEmbedder   *ZImageTimestepEmbedder // t_embedder.mlp.{0,2}
	CapEmbedder *ZImageCapEmbedder      // cap_embedder.{0,1}
	XEmbedder   *Linear                 // all_x_embedder.2-1
	XPadToken   *Param                  // x_pad_token [1, dim]
	CapPadToken *Param                  // cap_pad_token [1, dim]

	NoiseRefiner   []*ZImageBlock // noise_refiner.<i>: image tokens, modulated
	ContextRefiner []*ZImageBlock // context_refiner.<i>: caption tokens, no modulation
	Layers         []*ZImageBlock // layers.<i>: the unified sequence, modulated
	FinalLayer     *ZImageFinalLayer

	headDim, ffnDim, adaDim int
	blocks                  []*Block
	// observe, when set (tests), sees every intermediate the references
	// hold, under their names ("noise_refiner.0.out", ...).
	observe func(name string, t *engine.Tensor)
}

// ZImageTimestepEmbedder is the sinusoidal embedding of t*t_scale (256
// features, cos then sin) followed by Linear, SiLU, Linear.
type ZImageTimestepEmbedder struct {
	Linear1, Linear2 *Linear // mlp.0 [1024, 256], mlp.2 [min(dim,256), 1024]
}

// ZImageCapEmbedder is RMSNorm then Linear (cap_feat_dim -> dim).
type ZImageCapEmbedder struct {
	Norm   *RMSNorm // cap_embedder.0
	Linear *Linear  // cap_embedder.1
}

// ZImageBlock is ZImageTransformerBlock: attention and a SwiGLU feed-forward,
// each wrapped in an RMSNorm before and after. With adaLN (AdaLNModulation
// set) the input norms are scaled by 1 + scale and the outputs gated by
// tanh(gate); there are no shift terms.
type ZImageBlock struct {
	Attention       *ZImageAttention
	FeedForward     *ZImageFeedForward
	AttentionNorm1  *RMSNorm
	AttentionNorm2  *RMSNorm
	FFNNorm1        *RMSNorm
	FFNNorm2        *RMSNorm
	AdaLNModulation *Linear // adaLN_modulation.0 [4*dim, min(dim,256)]; nil in the context refiner
}

// ZImageAttention is full self-attention with per-head RMSNorm on queries and
// keys (qk_norm) and the 3-axis interleaved rotary embedding.
type ZImageAttention struct {
	ToQ, ToK, ToV, ToOut *Linear  // to_out.0; no biases
	NormQ, NormK         *RMSNorm // nil without qk_norm
	Heads                int
}

// ZImageFeedForward is w2(silu(w1(x)) * w3(x)), hidden int(dim/3*8).
type ZImageFeedForward struct {
	W1, W2, W3 *Linear
}

// ZImageFinalLayer is LayerNorm without affine (eps 1e-6) scaled by
// 1 + adaLN_modulation(c), then a Linear to patch*patch*channels.
type ZImageFinalLayer struct {
	AdaLNModulation *Linear // adaLN_modulation.1 (after a SiLU)
	Linear          *Linear
}

const (
	zimageSeqMulti  = 32   // SEQ_MULTI_OF: every sequence pads to a multiple of it
	zimageAdaLNMax  = 256  // ADALN_EMBED_DIM
	zimageFreqDim   = 256  // frequency_embedding_size of the t embedder
	zimageTMid      = 1024 // mid_size of the t embedder
	zimageQKNormEps = 1e-5 // diffusers' Attention(qk_norm="rms_norm", eps=1e-5)
	zimageFinalEps  = 1e-6
	zimagePatch     = 2 // the pipeline always calls patch_size 2,
	zimageFPatch    = 1 // f_patch_size 1
)

// zimageDefaults fills diffusers' defaults for values a config may omit.
func zimageDefaults(cfg *ZImageConfig) ZImageConfig {
	c := *cfg
	if len(c.AllPatchSize) == 0 {
		c.AllPatchSize = []int{2}
	}
	if len(c.AllFPatchSize) == 0 {
		c.AllFPatchSize = []int{1}
	}
	if c.InChannels == 0 {
		c.InChannels = 16
	}
	if c.NormEps == 0 {
		c.NormEps = 1e-5
	}
	if c.RopeTheta == 0 {
		c.RopeTheta = 256
	}
	if c.TScale == 0 {
		c.TScale = 1000
	}
	if len(c.AxesDims) == 0 {
		c.AxesDims = []int{32, 48, 48}
	}
	if len(c.AxesLens) == 0 {
		c.AxesLens = []int{1024, 512, 512}
	}
	return c
}

// LoadZImage builds the transformer from src, checking every tensor against
// cfg. It loads every patch-size variant the config lists (their keys are in
// the checkpoint) and runs the one the pipeline calls, 2-1.
//
// n_kv_heads is ignored, as diffusers ignores it: its Attention gives keys
// and values as many heads as queries (the key shapes check that).
func LoadZImage(src *Source, cfg *ZImageConfig) (*ZImageTransformer, error) {
	if cfg == nil {
		return nil, fmt.Errorf("model: %s: no Z-Image transformer config", src.Name)
	}
	c := zimageDefaults(cfg)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("model: %s: config "+format, append([]any{src.Name}, args...)...)
	}
	switch {
	case c.Dim <= 0 || c.NHeads <= 0 || c.Dim%c.NHeads != 0:
		return nil, bad("n_heads %d must divide dim %d", c.NHeads, c.Dim)
	case c.NLayers < 0 || c.NRefinerLayers < 0 || c.CapFeatDim <= 0 || c.InChannels <= 0:
		return nil, bad("needs n_layers, n_refiner_layers >= 0 and positive cap_feat_dim, in_channels (got %d, %d, %d, %d)",
			c.NLayers, c.NRefinerLayers, c.CapFeatDim, c.InChannels)
	case len(c.AllPatchSize) != len(c.AllFPatchSize):
		return nil, bad("all_patch_size %v and all_f_patch_size %v differ in length", c.AllPatchSize, c.AllFPatchSize)
	case len(c.AxesDims) != len(c.AxesLens) || len(c.AxesDims) != 3:
		return nil, bad("axes_dims %v and axes_lens %v: want three axes (frame, height, width)", c.AxesDims, c.AxesLens)
	case c.RopeTheta <= 0 || math.IsNaN(c.RopeTheta) || math.IsInf(c.RopeTheta, 0):
		return nil, bad("rope_theta %v must be positive", c.RopeTheta)
	}
	hd := c.Dim / c.NHeads
	sum := 0
	for _, d := range c.AxesDims {
		if d <= 0 || d%2 != 0 {
			return nil, bad("axes_dims %v: each must be positive and even", c.AxesDims)
		}
		sum += d
	}
	if sum != hd {
		return nil, bad("axes_dims %v sum to %d, want the head size %d (dim / n_heads)", c.AxesDims, sum, hd)
	}
	has21 := false
	for i, p := range c.AllPatchSize {
		if p <= 0 || c.AllFPatchSize[i] <= 0 {
			return nil, bad("patch sizes %v / %v must be positive", c.AllPatchSize, c.AllFPatchSize)
		}
		has21 = has21 || (p == zimagePatch && c.AllFPatchSize[i] == zimageFPatch)
	}
	if !has21 {
		return nil, bad("all_patch_size %v / all_f_patch_size %v lack 2 / 1, the patch size ZImagePipeline runs", c.AllPatchSize, c.AllFPatchSize)
	}

	d := c.Dim
	ada := min(d, zimageAdaLNMax)
	m := &ZImageTransformer{Config: c, headDim: hd, ffnDim: int(float64(d) / 3 * 8), adaDim: ada}
	w := NewWeights(src)

	// Everything a call needs before the first refiner block: the time and
	// caption embedders (F32, as diffusers keeps them out of low-precision
	// casting: "precision sensitive layers"; 0.5 M and cap_feat_dim x dim
	// parameters), the patch embedder and both pad tokens (F32, one row each).
	m.blocks = append(m.blocks, w.BeginBlock("embedders"))
	tw := w.Sub("t_embedder.mlp")
	m.TEmbedder = &ZImageTimestepEmbedder{
		Linear1: loadLinearF32(tw.Sub("0"), zimageFreqDim, zimageTMid),
		Linear2: loadLinearF32(tw.Sub("2"), zimageTMid, ada),
	}
	m.CapEmbedder = &ZImageCapEmbedder{
		Norm:   loadRMSNorm(w.Sub("cap_embedder.0"), c.CapFeatDim, c.NormEps),
		Linear: loadLinearF32(w.Sub("cap_embedder.1"), c.CapFeatDim, d),
	}
	for i, p := range c.AllPatchSize {
		f := c.AllFPatchSize[i]
		xe := loadLinear(w.Subf("all_x_embedder.%d-%d", p, f), f*p*p*c.InChannels, d, true)
		if p == zimagePatch && f == zimageFPatch {
			m.XEmbedder = xe
		}
	}
	m.XPadToken = w.ParamF32("x_pad_token", 1, d)
	m.CapPadToken = w.ParamF32("cap_pad_token", 1, d)

	for i := range c.NRefinerLayers {
		bw := w.Subf("noise_refiner.%d", i)
		m.blocks = append(m.blocks, w.BeginBlock(bw.Prefix()))
		m.NoiseRefiner = append(m.NoiseRefiner, m.loadBlock(bw, true))
	}
	for i := range c.NRefinerLayers {
		bw := w.Subf("context_refiner.%d", i)
		m.blocks = append(m.blocks, w.BeginBlock(bw.Prefix()))
		m.ContextRefiner = append(m.ContextRefiner, m.loadBlock(bw, false))
	}
	for i := range c.NLayers {
		bw := w.Subf("layers.%d", i)
		m.blocks = append(m.blocks, w.BeginBlock(bw.Prefix()))
		m.Layers = append(m.Layers, m.loadBlock(bw, true))
	}
	m.blocks = append(m.blocks, w.BeginBlock("all_final_layer"))
	for i, p := range c.AllPatchSize {
		f := c.AllFPatchSize[i]
		fw := w.Subf("all_final_layer.%d-%d", p, f)
		fl := &ZImageFinalLayer{
			AdaLNModulation: loadLinear(fw.Sub("adaLN_modulation.1"), ada, d, true),
			Linear:          loadLinear(fw.Sub("linear"), d, p*p*f*c.InChannels, true),
		}
		if p == zimagePatch && f == zimageFPatch {
			m.FinalLayer = fl
		}
	}
	if err := w.Err(); err != nil {
		return nil, err
	}
	// Other patch sizes' embedders and final layers (no released config
	// has any) are loaded with their blocks and never run.
	return m, nil
}

func loadLinearF32(w *Weights, in, out int) *Linear {
	return &Linear{Weight: w.ParamF32("weight", out, in), Bias: w.Param("bias", out)}
}

func (m *ZImageTransformer) loadBlock(w *Weights, modulated bool) *ZImageBlock {
	c := m.Config
	d := c.Dim
	aw := w.Sub("attention")
	b := &ZImageBlock{
		Attention: &ZImageAttention{
			ToQ:   loadLinear(aw.Sub("to_q"), d, d, false),
			ToK:   loadLinear(aw.Sub("to_k"), d, d, false),
			ToV:   loadLinear(aw.Sub("to_v"), d, d, false),
			ToOut: loadLinear(aw.Sub("to_out.0"), d, d, false),
			Heads: c.NHeads,
		},
		FeedForward: &ZImageFeedForward{
			W1: loadLinear(w.Sub("feed_forward.w1"), d, m.ffnDim, false),
			W2: loadLinear(w.Sub("feed_forward.w2"), m.ffnDim, d, false),
			W3: loadLinear(w.Sub("feed_forward.w3"), d, m.ffnDim, false),
		},
		AttentionNorm1: loadRMSNorm(w.Sub("attention_norm1"), d, c.NormEps),
		AttentionNorm2: loadRMSNorm(w.Sub("attention_norm2"), d, c.NormEps),
		FFNNorm1:       loadRMSNorm(w.Sub("ffn_norm1"), d, c.NormEps),
		FFNNorm2:       loadRMSNorm(w.Sub("ffn_norm2"), d, c.NormEps),
	}
	if c.QKNorm {
		b.Attention.NormQ = loadRMSNorm(aw.Sub("norm_q"), m.headDim, zimageQKNormEps)
		b.Attention.NormK = loadRMSNorm(aw.Sub("norm_k"), m.headDim, zimageQKNormEps)
	}
	if modulated {
		b.AdaLNModulation = loadLinear(w.Sub("adaLN_modulation.0"), m.adaDim, 4*d, true)
	}
	return b
}

// Blocks lists the offload blocks in the order Forward needs them: the
// embedders and pad tokens, the noise refiner, the context refiner, the main
// layers, the final layer.
func (m *ZImageTransformer) Blocks() []*Block { return m.blocks }

// Bytes is the device size of all weights.
func (m *ZImageTransformer) Bytes() int64 {
	var n int64
	for _, b := range m.blocks {
		n += b.Bytes()
	}
	return n
}

// ZImageItem is one latent of a transformer call: the pipeline passes a list
// of them, each with its own size, time and caption.
type ZImageItem struct {
	Latents []float32 // [C, H, W] on the host (one frame)
	H, W    int       // latent height and width, even
	// T is the normalised time, (1000 - timestep) / 1000: 0 at pure noise.
	T float64
	// Caption is the item's caption features [L, cap_feat_dim] (the text
	// encoder's hidden_states[-2] at the valid tokens), on the device.
	Caption *engine.Tensor
}

// itemLayout is where one item's tokens sit in the padded sequences.
type itemLayout struct {
	h, w       int // latent size
	imgTok     int // image tokens (H/2 * W/2)
	imgPad     int // image tokens padded to a multiple of 32
	capLen     int
	capPad     int
	unifiedLen int // imgPad + capPad
}

func roundUp(n, m int) int { return (n + m - 1) / m * m }

// layout checks the items and computes each one's padded lengths.
func (m *ZImageTransformer) layout(items []ZImageItem) ([]itemLayout, error) {
	if len(items) == 0 {
		return nil, fmt.Errorf("model: transformer: no items")
	}
	c := m.Config
	out := make([]itemLayout, len(items))
	for i, it := range items {
		if it.H <= 0 || it.W <= 0 || it.H%zimagePatch != 0 || it.W%zimagePatch != 0 {
			return nil, fmt.Errorf("model: transformer item %d: latent %dx%d, want positive multiples of %d", i, it.H, it.W, zimagePatch)
		}
		if len(it.Latents) != c.InChannels*it.H*it.W {
			return nil, fmt.Errorf("model: transformer item %d: %d latent values, want %d (%d channels x %d x %d)",
				i, len(it.Latents), c.InChannels*it.H*it.W, c.InChannels, it.H, it.W)
		}
		if it.Caption == nil || len(it.Caption.Shape) != 2 || it.Caption.Shape[1] != c.CapFeatDim {
			got := "nil"
			if it.Caption != nil {
				got = it.Caption.Shape.String()
			}
			return nil, fmt.Errorf("model: transformer item %d: caption features %s, want [L, %d]", i, got, c.CapFeatDim)
		}
		if math.IsNaN(it.T) || math.IsInf(it.T, 0) {
			return nil, fmt.Errorf("model: transformer item %d: time %v is not finite", i, it.T)
		}
		l := itemLayout{h: it.H, w: it.W, imgTok: (it.H / zimagePatch) * (it.W / zimagePatch), capLen: it.Caption.Shape[0]}
		l.imgPad = roundUp(l.imgTok, zimageSeqMulti)
		l.capPad = roundUp(l.capLen, zimageSeqMulti)
		l.unifiedLen = l.imgPad + l.capPad
		// The rotary tables index positions up to these lengths.
		if need := l.capPad + 2; need > c.AxesLens[0] {
			return nil, fmt.Errorf("model: transformer item %d: %d caption tokens need %d frame positions, the model has %d (axes_lens)",
				i, l.capLen, need, c.AxesLens[0])
		}
		if it.H/zimagePatch > c.AxesLens[1] || it.W/zimagePatch > c.AxesLens[2] {
			return nil, fmt.Errorf("model: transformer item %d: %dx%d patches exceed axes_lens %v", i, it.H/zimagePatch, it.W/zimagePatch, c.AxesLens)
		}
		out[i] = l
	}
	return out, nil
}

// keyLens returns per-row valid lengths, or nil when every row is full
// (no mask needed).
func keyLens(lens []int, max int) []int {
	if !slices.ContainsFunc(lens, func(n int) bool { return n != max }) {
		return nil
	}
	return lens
}
