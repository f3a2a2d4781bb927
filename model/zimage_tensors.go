package model

import "fmt"

// The tensors of Z-Image's three networks under their diffusers and
// transformers names, in module order, as a config implies them: what
// WriteSyntheticModel writes, checked against the real model's shard
// indexes and the tiny reference model's files. The network loaders check
// the same shapes when they build the networks.

// tensorSpec is one tensor a config implies.
type tensorSpec struct {
	Key   string
	Shape []int
}

type specList []tensorSpec

func (l *specList) add(key string, shape ...int) { *l = append(*l, tensorSpec{key, shape}) }

// linear adds a Linear's weight [out, in] and, with bias, its bias [out].
func (l *specList) linear(prefix string, in, out int, bias bool) {
	l.add(prefix+".weight", out, in)
	if bias {
		l.add(prefix+".bias", out)
	}
}

// zimageAdaLNDim is diffusers' ADALN_EMBED_DIM: the width of the time
// embedding the modulations read (min(dim, 256)).
const zimageAdaLNDim = 256

// zimageTimeMid is the time embedder's hidden width (mid_size=1024).
const zimageTimeMid = 1024

// zimageTransformerSpecs lists ZImageTransformer2DModel's parameters.
func zimageTransformerSpecs(cfg *ZImageConfig) (specList, error) {
	if cfg.Dim <= 0 || cfg.NHeads <= 0 || cfg.Dim%cfg.NHeads != 0 || cfg.InChannels <= 0 || cfg.CapFeatDim <= 0 {
		return nil, fmt.Errorf("model: transformer config: dim %d, n_heads %d, in_channels %d, cap_feat_dim %d: want positive sizes with dim a multiple of n_heads", cfg.Dim, cfg.NHeads, cfg.InChannels, cfg.CapFeatDim)
	}
	if len(cfg.AllPatchSize) == 0 || len(cfg.AllPatchSize) != len(cfg.AllFPatchSize) {
		return nil, fmt.Errorf("model: transformer config: all_patch_size %v and all_f_patch_size %v: want lists of one length", cfg.AllPatchSize, cfg.AllFPatchSize)
	}
	dim, hd := cfg.Dim, cfg.Dim/cfg.NHeads
	ada := min(dim, zimageAdaLNDim)
	var l specList
	for i, p := range cfg.AllPatchSize {
		f := cfg.AllFPatchSize[i]
		k := fmt.Sprintf("%d-%d", p, f)
		l.linear("all_x_embedder."+k, f*p*p*cfg.InChannels, dim, true)
		l.linear("all_final_layer."+k+".linear", dim, p*p*f*cfg.InChannels, true)
		l.linear("all_final_layer."+k+".adaLN_modulation.1", ada, dim, true)
	}
	block := func(prefix string, modulation bool) {
		// diffusers' Attention gets heads=n_heads and no key/value head
		// count, so k and v are as wide as q whatever n_kv_heads says.
		for _, m := range []string{"to_q", "to_k", "to_v"} {
			l.linear(prefix+".attention."+m, dim, cfg.NHeads*hd, false)
		}
		l.linear(prefix+".attention.to_out.0", cfg.NHeads*hd, dim, false)
		if cfg.QKNorm {
			l.add(prefix+".attention.norm_q.weight", hd)
			l.add(prefix+".attention.norm_k.weight", hd)
		}
		ffn := ZImageFFNDim(dim)
		l.linear(prefix+".feed_forward.w1", dim, ffn, false)
		l.linear(prefix+".feed_forward.w2", ffn, dim, false)
		l.linear(prefix+".feed_forward.w3", dim, ffn, false)
		for _, n := range []string{"attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"} {
			l.add(prefix+"."+n+".weight", dim)
		}
		if modulation {
			l.linear(prefix+".adaLN_modulation.0", ada, 4*dim, true)
		}
	}
	for i := range cfg.NRefinerLayers {
		block(fmt.Sprintf("noise_refiner.%d", i), true)
	}
	for i := range cfg.NRefinerLayers {
		block(fmt.Sprintf("context_refiner.%d", i), false)
	}
	l.linear("t_embedder.mlp.0", 256, zimageTimeMid, true)
	l.linear("t_embedder.mlp.2", zimageTimeMid, ada, true)
	l.add("cap_embedder.0.weight", cfg.CapFeatDim)
	l.linear("cap_embedder.1", cfg.CapFeatDim, dim, true)
	l.add("x_pad_token", 1, dim)
	l.add("cap_pad_token", 1, dim)
	for i := range cfg.NLayers {
		block(fmt.Sprintf("layers.%d", i), true)
	}
	return l, nil
}

// qwen3Specs lists a Qwen3 text encoder's parameters under "model." (as
// transformers saves Qwen3ForCausalLM, and Z-Image's text_encoder holds
// them), without the LM head (tied to the embeddings).
func qwen3Specs(cfg *Qwen3Config) (specList, error) {
	hd := cfg.HeadDim
	if hd == 0 && cfg.NumAttentionHeads > 0 {
		hd = cfg.HiddenSize / cfg.NumAttentionHeads
	}
	h := cfg.HiddenSize
	if h <= 0 || hd <= 0 || cfg.NumKeyValueHeads <= 0 || cfg.IntermediateSize <= 0 || cfg.VocabSize <= 0 || cfg.NumHiddenLayers <= 0 {
		return nil, fmt.Errorf("model: text encoder config: hidden %d, heads %d/%d of %d, intermediate %d, vocab %d, layers %d: want positive sizes",
			h, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, hd, cfg.IntermediateSize, cfg.VocabSize, cfg.NumHiddenLayers)
	}
	q, kv := cfg.NumAttentionHeads*hd, cfg.NumKeyValueHeads*hd
	var l specList
	l.add("model.embed_tokens.weight", cfg.VocabSize, h)
	for i := range cfg.NumHiddenLayers {
		p := fmt.Sprintf("model.layers.%d.", i)
		l.linear(p+"self_attn.q_proj", h, q, cfg.AttentionBias)
		l.linear(p+"self_attn.k_proj", h, kv, cfg.AttentionBias)
		l.linear(p+"self_attn.v_proj", h, kv, cfg.AttentionBias)
		l.linear(p+"self_attn.o_proj", q, h, false)
		l.add(p+"self_attn.q_norm.weight", hd)
		l.add(p+"self_attn.k_norm.weight", hd)
		l.linear(p+"mlp.gate_proj", h, cfg.IntermediateSize, false)
		l.linear(p+"mlp.up_proj", h, cfg.IntermediateSize, false)
		l.linear(p+"mlp.down_proj", cfg.IntermediateSize, h, false)
		l.add(p+"input_layernorm.weight", h)
		l.add(p+"post_attention_layernorm.weight", h)
	}
	l.add("model.norm.weight", h)
	if !cfg.TieWordEmbeddings {
		l.add("lm_head.weight", cfg.VocabSize, h)
	}
	return l, nil
}

// vaeSpecs lists diffusers AutoencoderKL's parameters, encoder and decoder
// (DownEncoderBlock2D / UpDecoderBlock2D with a mid block).
func vaeSpecs(cfg *VAEConfig) (specList, error) {
	c := vaeDefaults(cfg)
	n := len(c.BlockOutChannels)
	if n == 0 || c.LayersPerBlock <= 0 || c.LatentChannels <= 0 {
		return nil, fmt.Errorf("model: vae config: block_out_channels %v, layers_per_block %d, latent_channels %d", c.BlockOutChannels, c.LayersPerBlock, c.LatentChannels)
	}
	var l specList
	conv := func(p string, in, out, k int) {
		l.add(p+".weight", out, in, k, k)
		l.add(p+".bias", out)
	}
	norm := func(p string, ch int) {
		l.add(p+".weight", ch)
		l.add(p+".bias", ch)
	}
	resnet := func(p string, in, out int) {
		norm(p+".norm1", in)
		conv(p+".conv1", in, out, 3)
		norm(p+".norm2", out)
		conv(p+".conv2", out, out, 3)
		if in != out {
			conv(p+".conv_shortcut", in, out, 1)
		}
	}
	mid := func(p string, ch int) {
		resnet(p+".resnets.0", ch, ch)
		attn := c.MidBlockAddAttention == nil || *c.MidBlockAddAttention
		if attn {
			norm(p+".attentions.0.group_norm", ch)
			for _, m := range []string{"to_q", "to_k", "to_v", "to_out.0"} {
				l.linear(p+".attentions.0."+m, ch, ch, true)
			}
		}
		resnet(p+".resnets.1", ch, ch)
	}
	top := c.BlockOutChannels[n-1]
	in := c.InChannels
	if in == 0 {
		in = 3
	}
	conv("encoder.conv_in", in, c.BlockOutChannels[0], 3)
	prev := c.BlockOutChannels[0]
	for i, ch := range c.BlockOutChannels {
		for j := range c.LayersPerBlock {
			resnet(fmt.Sprintf("encoder.down_blocks.%d.resnets.%d", i, j), prev, ch)
			prev = ch
		}
		if i < n-1 {
			conv(fmt.Sprintf("encoder.down_blocks.%d.downsamplers.0.conv", i), ch, ch, 3)
		}
	}
	mid("encoder.mid_block", top)
	norm("encoder.conv_norm_out", top)
	conv("encoder.conv_out", top, 2*c.LatentChannels, 3)
	// quant_conv follows use_quant_conv, which VAEConfig does not carry:
	// the encoder half mirrors the decoder's post_quant_conv.
	quant := c.UsePostQuantConv == nil || *c.UsePostQuantConv
	if quant {
		conv("quant_conv", 2*c.LatentChannels, 2*c.LatentChannels, 1)
		conv("post_quant_conv", c.LatentChannels, c.LatentChannels, 1)
	}
	conv("decoder.conv_in", c.LatentChannels, top, 3)
	mid("decoder.mid_block", top)
	prev = top
	for i := range n {
		ch := c.BlockOutChannels[n-1-i]
		for j := range c.LayersPerBlock + 1 {
			resnet(fmt.Sprintf("decoder.up_blocks.%d.resnets.%d", i, j), prev, ch)
			prev = ch
		}
		if i < n-1 {
			conv(fmt.Sprintf("decoder.up_blocks.%d.upsamplers.0.conv", i), ch, ch, 3)
		}
	}
	norm("decoder.conv_norm_out", c.BlockOutChannels[0])
	conv("decoder.conv_out", c.BlockOutChannels[0], c.OutChannels, 3)
	return l, nil
}
