package model

import (
	"fmt"
	"strings"
)

// This file is the one table between checkpoint key layouts and the
// canonical keys Sources use (the keys of each diffusers component's own
// safetensors file). Single-file LDM checkpoints (CompVis/Stability
// "model.diffusion_model.*" files) and legacy diffusers VAE files are read
// through it; tests write single files through its inverse. The layout
// follows diffusers' convert_from_ckpt / single_file_utils.

// conversion says how a checkpoint tensor becomes its canonical tensor(s).
type conversion uint8

const (
	convCopy          conversion = iota // same bytes and shape
	convLinearFrom1x1                   // [out, in, 1, 1] -> [out, in]: LDM VAE attention is 1x1 convs, diffusers uses Linear
	convSplitQKV                        // OpenCLIP fused in_proj rows [3D, ...] -> q, k, v of [D, ...]
	convTranspose                       // OpenCLIP text_projection [D, P] is applied as x @ W; Linear holds [P, D]
)

// Prefixes of the components inside an LDM single file.
const (
	ldmUNet     = "model.diffusion_model."
	ldmVAE      = "first_stage_model."
	ldmCLIP     = "cond_stage_model.transformer."        // SD 1.x: HF CLIPTextModel (ViT-L)
	ldmOpenCLIP = "cond_stage_model.model."              // SD 2.x: OpenCLIP ViT-H
	ldmXLCLIP1  = "conditioner.embedders.0.transformer." // SDXL: HF CLIPTextModel (ViT-L)
	ldmXLCLIP2  = "conditioner.embedders.1.model."       // SDXL: OpenCLIP ViT-bigG
)

// leaf renames what follows a rule's prefix, exactly. A canon name with
// "%s" (convSplitQKV) stands for the q, k and v names in that order.
type leaf struct {
	file, canon string
	conv        conversion
}

// nameRule maps keys under the prefix file (in the checkpoint) to keys
// under canon. A prefix ends with "." or is a whole key. With no leaves
// the rest of the key is kept and conv applies; with leaves the rest must
// be one of them.
type nameRule struct {
	file, canon string
	leaves      []leaf
	conv        conversion
	// readOnly rules accept a legacy spelling; writing uses the canonical
	// rule for the same canon prefix.
	readOnly bool
}

// nameTable indexes rules by prefix in both directions.
type nameTable struct {
	byFile, byCanon map[string]*nameRule
}

func newNameTable(rules ...[]nameRule) *nameTable {
	t := &nameTable{byFile: map[string]*nameRule{}, byCanon: map[string]*nameRule{}}
	for _, rs := range rules {
		for i := range rs {
			r := &rs[i]
			t.byFile[r.file] = r
			if !r.readOnly {
				t.byCanon[r.canon] = r
			}
		}
	}
	return t
}

// longest finds the rule whose prefix is the longest one of key: the whole
// key, then every prefix ending in ".".
func longest(m map[string]*nameRule, key string) (*nameRule, string) {
	if r := m[key]; r != nil {
		return r, ""
	}
	for i := len(key) - 2; i >= 0; i-- {
		if key[i] == '.' {
			if r := m[key[:i+1]]; r != nil {
				return r, key[i+1:]
			}
		}
	}
	return nil, ""
}

var qkv = [3]string{"q", "k", "v"}

// toCanon maps a checkpoint key to its canonical key(s): one, or three for
// a fused q/k/v tensor.
func (t *nameTable) toCanon(key string) ([]string, conversion, bool) {
	r, rest := longest(t.byFile, key)
	if r == nil {
		return nil, 0, false
	}
	if r.leaves == nil {
		if rest != "" && !strings.HasSuffix(r.file, ".") {
			return nil, 0, false
		}
		return []string{r.canon + rest}, r.conv, true
	}
	for _, l := range r.leaves {
		if l.file != rest {
			continue
		}
		if l.conv == convSplitQKV {
			out := make([]string, 3)
			for i, p := range qkv {
				out[i] = r.canon + fmt.Sprintf(l.canon, p)
			}
			return out, l.conv, true
		}
		return []string{r.canon + l.canon}, l.conv, true
	}
	return nil, 0, false
}

// toFile maps a canonical key back to the checkpoint key; part is the
// q/k/v index (0, 1, 2) of a fused tensor, else 0.
func (t *nameTable) toFile(key string) (file string, conv conversion, part int, ok bool) {
	r, rest := longest(t.byCanon, key)
	if r == nil {
		return "", 0, 0, false
	}
	if r.leaves == nil {
		return r.file + rest, r.conv, 0, true
	}
	for _, l := range r.leaves {
		if l.conv != convSplitQKV {
			if l.canon == rest {
				return r.file + l.file, l.conv, 0, true
			}
			continue
		}
		for i, p := range qkv {
			if fmt.Sprintf(l.canon, p) == rest {
				return r.file + l.file, l.conv, i, true
			}
		}
	}
	return "", 0, 0, false
}

// weightBias expands renames of modules into their .weight and .bias leaves.
func weightBias(conv conversion, pairs ...string) []leaf {
	var out []leaf
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out,
			leaf{file: pairs[i] + ".weight", canon: pairs[i+1] + ".weight", conv: conv},
			leaf{file: pairs[i] + ".bias", canon: pairs[i+1] + ".bias"})
	}
	return out
}

// LDM ResBlock -> diffusers ResnetBlock2D.
var unetResnetLeaves = weightBias(convCopy,
	"in_layers.0", "norm1", "in_layers.2", "conv1", "emb_layers.1", "time_emb_proj",
	"out_layers.0", "norm2", "out_layers.3", "conv2", "skip_connection", "conv_shortcut")

// LDM VAE ResnetBlock -> diffusers ResnetBlock2D (no time embedding).
var vaeResnetLeaves = weightBias(convCopy,
	"norm1", "norm1", "conv1", "conv1", "norm2", "norm2", "conv2", "conv2", "nin_shortcut", "conv_shortcut")

// LDM VAE AttnBlock (1x1 convs) -> diffusers Attention (Linear).
var vaeAttnLeaves = append(weightBias(convCopy, "norm", "group_norm"),
	weightBias(convLinearFrom1x1, "q", "to_q", "k", "to_k", "v", "to_v", "proj_out", "to_out.0")...)

// unetLayout is what the key layout of a UNet depends on.
type unetLayout struct {
	levels, layers int    // len(block_out_channels), layers_per_block
	upAttn         []bool // diffusers up block i has attentions
}

// unetRules: LDM input_blocks are conv_in, then per level `layers`
// (resnet, attention) pairs and a downsampler except after the last level;
// output_blocks hold layers+1 (resnet, attention) pairs per level, deepest
// first, the last with the upsampler (at .2 after an attention, else .1).
func unetRules(l unetLayout) []nameRule {
	p := ldmUNet
	rs := []nameRule{
		{file: p + "time_embed.0.", canon: "time_embedding.linear_1."},
		{file: p + "time_embed.2.", canon: "time_embedding.linear_2."},
		{file: p + "label_emb.0.0.", canon: "add_embedding.linear_1."},
		{file: p + "label_emb.0.2.", canon: "add_embedding.linear_2."},
		{file: p + "input_blocks.0.0.", canon: "conv_in."},
		{file: p + "middle_block.0.", canon: "mid_block.resnets.0.", leaves: unetResnetLeaves},
		{file: p + "middle_block.1.", canon: "mid_block.attentions.0."},
		{file: p + "middle_block.2.", canon: "mid_block.resnets.1.", leaves: unetResnetLeaves},
		{file: p + "out.0.", canon: "conv_norm_out."},
		{file: p + "out.2.", canon: "conv_out."},
	}
	for i := range l.levels {
		for j := range l.layers {
			n := 1 + i*(l.layers+1) + j
			rs = append(rs,
				nameRule{file: fmt.Sprintf("%sinput_blocks.%d.0.", p, n), canon: fmt.Sprintf("down_blocks.%d.resnets.%d.", i, j), leaves: unetResnetLeaves},
				nameRule{file: fmt.Sprintf("%sinput_blocks.%d.1.", p, n), canon: fmt.Sprintf("down_blocks.%d.attentions.%d.", i, j)})
		}
		if i < l.levels-1 {
			rs = append(rs, nameRule{file: fmt.Sprintf("%sinput_blocks.%d.0.op.", p, (i+1)*(l.layers+1)),
				canon: fmt.Sprintf("down_blocks.%d.downsamplers.0.conv.", i)})
		}
		attn := i < len(l.upAttn) && l.upAttn[i]
		for j := range l.layers + 1 {
			n := i*(l.layers+1) + j
			rs = append(rs, nameRule{file: fmt.Sprintf("%soutput_blocks.%d.0.", p, n), canon: fmt.Sprintf("up_blocks.%d.resnets.%d.", i, j), leaves: unetResnetLeaves})
			if attn {
				rs = append(rs, nameRule{file: fmt.Sprintf("%soutput_blocks.%d.1.", p, n), canon: fmt.Sprintf("up_blocks.%d.attentions.%d.", i, j)})
			}
		}
		if i < l.levels-1 {
			up := 1
			if attn {
				up = 2
			}
			rs = append(rs, nameRule{file: fmt.Sprintf("%soutput_blocks.%d.%d.conv.", p, i*(l.layers+1)+l.layers, up),
				canon: fmt.Sprintf("up_blocks.%d.upsamplers.0.conv.", i)})
		}
	}
	return rs
}

// vaeRules: LDM numbers the decoder's up blocks from the shallowest level,
// diffusers in execution order (deepest first). resnets bounds the resnet
// index per block (the decoder has layers_per_block+1). p is the prefix of
// the VAE's keys: ldmVAE inside an SD single file, "" in a stand-alone
// original-layout VAE file (the FLUX VAE's ae.safetensors).
func vaeRules(p string, levels, resnets int) []nameRule {
	rs := []nameRule{
		{file: p + "quant_conv.", canon: "quant_conv."},
		{file: p + "post_quant_conv.", canon: "post_quant_conv."},
	}
	for _, part := range []string{"encoder", "decoder"} {
		rs = append(rs,
			nameRule{file: p + part + ".conv_in.", canon: part + ".conv_in."},
			nameRule{file: p + part + ".conv_out.", canon: part + ".conv_out."},
			nameRule{file: p + part + ".norm_out.", canon: part + ".conv_norm_out."},
			nameRule{file: p + part + ".mid.block_1.", canon: part + ".mid_block.resnets.0.", leaves: vaeResnetLeaves},
			nameRule{file: p + part + ".mid.block_2.", canon: part + ".mid_block.resnets.1.", leaves: vaeResnetLeaves},
			nameRule{file: p + part + ".mid.attn_1.", canon: part + ".mid_block.attentions.0.", leaves: vaeAttnLeaves})
	}
	for i := range levels {
		up := levels - 1 - i
		for j := range resnets {
			rs = append(rs,
				nameRule{file: fmt.Sprintf("%sencoder.down.%d.block.%d.", p, i, j), canon: fmt.Sprintf("encoder.down_blocks.%d.resnets.%d.", i, j), leaves: vaeResnetLeaves},
				nameRule{file: fmt.Sprintf("%sdecoder.up.%d.block.%d.", p, up, j), canon: fmt.Sprintf("decoder.up_blocks.%d.resnets.%d.", i, j), leaves: vaeResnetLeaves})
		}
		rs = append(rs,
			nameRule{file: fmt.Sprintf("%sencoder.down.%d.downsample.conv.", p, i), canon: fmt.Sprintf("encoder.down_blocks.%d.downsamplers.0.conv.", i)},
			nameRule{file: fmt.Sprintf("%sdecoder.up.%d.upsample.conv.", p, up), canon: fmt.Sprintf("decoder.up_blocks.%d.upsamplers.0.conv.", i)})
	}
	return rs
}

// hfCLIPRules: the HF CLIPTextModel state dict under prefix. Files saved
// with old transformers versions lack the "text_model." level.
func hfCLIPRules(prefix string) []nameRule {
	return []nameRule{
		{file: prefix + "text_model.", canon: "text_model."},
		{file: prefix + "embeddings.", canon: "text_model.embeddings.", readOnly: true},
		{file: prefix + "encoder.", canon: "text_model.encoder.", readOnly: true},
		{file: prefix + "final_layer_norm.", canon: "text_model.final_layer_norm.", readOnly: true},
	}
}

// OpenCLIP transformer block -> CLIPEncoderLayer.
var openCLIPLayerLeaves = append(weightBias(convCopy,
	"ln_1", "layer_norm1", "ln_2", "layer_norm2", "attn.out_proj", "self_attn.out_proj",
	"mlp.c_fc", "mlp.fc1", "mlp.c_proj", "mlp.fc2"),
	leaf{file: "attn.in_proj_weight", canon: "self_attn.%s_proj.weight", conv: convSplitQKV},
	leaf{file: "attn.in_proj_bias", canon: "self_attn.%s_proj.bias", conv: convSplitQKV})

// openCLIPRules: an OpenCLIP text tower under prefix, mapped onto a
// CLIPTextModel with `layers` layers (SD 2.x drops the last of the file's
// layers) and, with projection, CLIPTextModelWithProjection's projection.
func openCLIPRules(prefix string, layers int, projection bool) []nameRule {
	rs := []nameRule{
		{file: prefix + "token_embedding.weight", canon: "text_model.embeddings.token_embedding.weight"},
		{file: prefix + "positional_embedding", canon: "text_model.embeddings.position_embedding.weight"},
		{file: prefix + "ln_final.", canon: "text_model.final_layer_norm."},
	}
	if projection {
		rs = append(rs, nameRule{file: prefix + "text_projection", canon: "text_projection.weight", conv: convTranspose})
	}
	for i := range layers {
		rs = append(rs, nameRule{file: fmt.Sprintf("%stransformer.resblocks.%d.", prefix, i),
			canon: fmt.Sprintf("text_model.encoder.layers.%d.", i), leaves: openCLIPLayerLeaves})
	}
	return rs
}

// zimageBlockLeaves: a block of the original Z-Image transformer (the
// single files ComfyUI loads) -> diffusers' ZImageTransformerBlock, as
// diffusers' convert_z_image_transformer_checkpoint_to_diffusers renames
// it: the fused q/k/v rows split in thirds (Z-Image has as many key/value
// heads as query heads), out -> to_out.0, q_norm/k_norm -> norm_q/norm_k.
// The context refiner's blocks have no adaLN_modulation.
var zimageBlockLeaves = []leaf{
	{file: "attention.qkv.weight", canon: "attention.to_%s.weight", conv: convSplitQKV},
	{file: "attention.out.weight", canon: "attention.to_out.0.weight"},
	{file: "attention.out.bias", canon: "attention.to_out.0.bias"},
	{file: "attention.q_norm.weight", canon: "attention.norm_q.weight"},
	{file: "attention.k_norm.weight", canon: "attention.norm_k.weight"},
	{file: "attention_norm1.weight", canon: "attention_norm1.weight"},
	{file: "attention_norm2.weight", canon: "attention_norm2.weight"},
	{file: "ffn_norm1.weight", canon: "ffn_norm1.weight"},
	{file: "ffn_norm2.weight", canon: "ffn_norm2.weight"},
	{file: "feed_forward.w1.weight", canon: "feed_forward.w1.weight"},
	{file: "feed_forward.w2.weight", canon: "feed_forward.w2.weight"},
	{file: "feed_forward.w3.weight", canon: "feed_forward.w3.weight"},
	{file: "adaLN_modulation.0.weight", canon: "adaLN_modulation.0.weight"},
	{file: "adaLN_modulation.0.bias", canon: "adaLN_modulation.0.bias"},
}

// zimageStacks are the transformer's block stacks, in run order.
var zimageStacks = [3]string{"noise_refiner", "context_refiner", "layers"}

// zimageRules: an original-layout Z-Image transformer under prefix ("" or
// "model.diffusion_model.") with counts[i] blocks in zimageStacks[i].
// diffusers keys the patch embedder and final layer by "<patch>-<frame
// patch>" ("2-1"), the original has one of each.
func zimageRules(prefix, patch string, counts [3]int) []nameRule {
	rs := []nameRule{
		{file: prefix + "x_embedder.", canon: "all_x_embedder." + patch + "."},
		{file: prefix + "final_layer.", canon: "all_final_layer." + patch + "."},
		{file: prefix + "t_embedder.", canon: "t_embedder."},
		{file: prefix + "cap_embedder.", canon: "cap_embedder."},
		{file: prefix + "x_pad_token", canon: "x_pad_token"},
		{file: prefix + "cap_pad_token", canon: "cap_pad_token"},
	}
	for i, stack := range zimageStacks {
		for j := range counts[i] {
			rs = append(rs, nameRule{file: fmt.Sprintf("%s%s.%d.", prefix, stack, j), canon: fmt.Sprintf("%s.%d.", stack, j), leaves: zimageBlockLeaves})
		}
	}
	return rs
}

// legacyVAERules read VAE files saved by diffusers before 0.14, whose
// mid-block attention used query/key/value/proj_attn.
func legacyVAERules() []nameRule {
	var rs []nameRule
	for _, part := range []string{"encoder", "decoder"} {
		p := part + ".mid_block.attentions.0."
		rs = append(rs, nameRule{file: p, canon: p, readOnly: true,
			leaves: weightBias(convCopy, "query", "to_q", "key", "to_k", "value", "to_v", "proj_attn", "to_out.0", "group_norm", "group_norm")})
	}
	return rs
}

// ignoredKey reports checkpoint keys that are known not to be weights of
// the networks: EMA copies, the training noise schedule, position-id
// buffers, CLIP's logit scale, sgm's denoiser tables.
func ignoredKey(key string) bool {
	for _, p := range []string{"model_ema.", "denoiser.", "first_stage_model.loss.", "lvlb_weights", "logvar",
		"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
		"log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
		"posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"} {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	for _, s := range []string{".position_ids", ".logit_scale", ".attn_mask"} {
		if strings.HasSuffix(key, s) {
			return true
		}
	}
	return false
}
