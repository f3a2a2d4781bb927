package model

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/zimage/zimage/model/safetensors"
)

// Z-Image checkpoints: a diffusers ZImagePipeline folder (transformer/,
// text_encoder/ (Qwen3), tokenizer/ (Qwen2), vae/ (FLUX), scheduler/), or
// the transformer alone in one file with the original Z-Image key names,
// as ComfyUI users download it, plus a text encoder and a VAE given apart
// (OpenOptions.TextEncoderPath, VAEPath).

// zimageLDMPrefix is the prefix some single-file exports put before the
// original key names (diffusers' converter strips it).
const zimageLDMPrefix = "model.diffusion_model."

// ComponentMismatchError reports components that do not fit together: a
// text encoder whose width is not the transformer's caption width, a VAE
// whose latent channels are not the transformer's.
type ComponentMismatchError struct {
	Path             string
	Component, Other string
	Detail           string
}

func (e *ComponentMismatchError) Error() string {
	return fmt.Sprintf("model: %s: %s does not fit %s: %s", e.Path, e.Component, e.Other, e.Detail)
}

// isZImageIndex tells a Z-Image pipeline's model_index.json.
func isZImageIndex(m *ModelIndex) bool {
	if m.ClassName == "ZImagePipeline" {
		return true
	}
	tr, ok := m.Components["transformer"]
	return ok && tr[1] == "ZImageTransformer2DModel"
}

// refuseZImageOptions rejects the Z-Image-only options for an SD model.
func refuseZImageOptions(path string, opts OpenOptions) error {
	if opts.TextEncoderPath != "" || opts.VAEPath != "" {
		return fmt.Errorf("model: %s: a separate text encoder or VAE (--text-encoder, --vae) is supported for Z-Image models only", path)
	}
	return nil
}

// openZImageFolder fills c from a ZImagePipeline folder.
func (c *Checkpoint) openZImageFolder(dir string, opts OpenOptions) error {
	c.Arch = ZImage
	if err := c.checkClass("transformer", "ZImageTransformer2DModel"); err != nil {
		return err
	}
	tr := &TransformerComponent{Class: "ZImageTransformer2DModel", Config: &ZImageConfig{}}
	var err error
	if tr.Source, err = c.openComponent(dir, "transformer", "diffusion_pytorch_model", tr.Config, opts, nil); err != nil {
		return err
	}
	c.Transformer = tr
	if opts.TextEncoderPath != "" {
		if c.Qwen, err = c.openQwenPath(opts.TextEncoderPath, opts); err != nil {
			return err
		}
	} else {
		class, ok := c.Index.Components["text_encoder"]
		if !ok {
			return &MissingComponentError{Path: dir, Component: "text_encoder", Detail: "not listed in model_index.json"}
		}
		if class[1] != "Qwen3Model" && class[1] != "Qwen3ForCausalLM" {
			return &MissingComponentError{Path: dir, Component: "text_encoder", Detail: fmt.Sprintf("class %s is not supported (want Qwen3Model)", class[1])}
		}
		q := &QwenTextEncoder{Name: "text_encoder", Class: class[1], Config: &Qwen3Config{}}
		if q.Source, err = c.openComponent(dir, "text_encoder", "model", q.Config, opts, nil); err != nil {
			return err
		}
		c.Qwen = q
	}
	c.Qwen.TokenizerDir = c.qwenTokenizerDir(dir, opts)
	if opts.VAEPath != "" {
		if err := c.openVAEPath(opts.VAEPath, opts); err != nil {
			return err
		}
	} else {
		if err := c.checkClass("vae", "AutoencoderKL"); err != nil {
			return err
		}
		c.VAE = VAEComponent{Class: "AutoencoderKL", Config: &VAEConfig{}}
		if c.VAE.Source, err = c.openComponent(dir, "vae", "diffusion_pytorch_model", c.VAE.Config, opts, newNameTable(legacyVAERules())); err != nil {
			return err
		}
	}
	if err := c.folderScheduler(dir, opts); err != nil {
		return err
	}
	return c.checkZImage()
}

// zimageFileLayout recognises a Z-Image transformer file by its key names:
// the caption embedder and the first block's adaLN modulation, with or
// without "model.diffusion_model.". original is false for a file saved
// with diffusers' names (all_x_embedder.2-1, to_q/to_k/to_v).
func zimageFileLayout(keys []string) (prefix string, original, ok bool) {
	has := map[string]bool{}
	for _, k := range keys {
		has[k] = true
	}
	for _, p := range []string{"", zimageLDMPrefix} {
		if has[p+"cap_embedder.1.weight"] && has[p+"layers.0.adaLN_modulation.0.weight"] {
			return p, !hasKeyPrefix(keys, p+"all_x_embedder."), true
		}
	}
	return "", false, false
}

func hasKeyPrefix(keys []string, p string) bool {
	for _, k := range keys {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// openZImageFile fills c from a single Z-Image transformer file f.
// tensor returns each key's entry (nil for a missing key): the file is a
// .safetensors or a GGUF.
func (c *Checkpoint) openZImageFile(keys []string, tensor func(key string) (*Entry, error), prefix string, original bool, opts OpenOptions) error {
	c.Arch = ZImage
	path := c.Path
	base := &ZImageConfig{}
	if err := readFamilyJSON(ZImage, "transformer/config.json", base); err != nil {
		return err
	}
	if _, err := replaceFromDir(opts, "transformer/config.json", &base); err != nil {
		return err
	}
	if len(base.AllPatchSize) == 0 || len(base.AllFPatchSize) == 0 {
		return fmt.Errorf("model: %s: transformer config without all_patch_size / all_f_patch_size", path)
	}
	patch := fmt.Sprintf("%d-%d", base.AllPatchSize[0], base.AllFPatchSize[0])
	var counts [3]int
	for i, stack := range zimageStacks {
		for _, k := range keys {
			if n, ok := indexAfter(k, prefix+stack+"."); ok {
				counts[i] = max(counts[i], n+1)
			}
		}
	}
	table := newNameTable(zimageRules(prefix, patch, counts))
	dim := 0
	if original {
		s, err := tensor(prefix + "x_embedder.weight")
		if err != nil {
			return err
		}
		if s == nil || len(s.Shape) != 2 {
			return fmt.Errorf("model: %s: transformer: %sx_embedder.weight is missing or not a matrix: cannot read the model width", path, prefix)
		}
		dim = s.Shape[0]
	}
	src := NewSource("transformer")
	var unmapped []string
	for _, key := range keys {
		t, err := tensor(key)
		if err != nil {
			return err
		}
		switch {
		case key == prefix+"norm_final.weight":
			// Some exports carry a final norm the model does not have;
			// diffusers drops it too.
			continue
		case !strings.HasPrefix(key, prefix):
			unmapped = append(unmapped, key)
			continue
		case !original:
			k := strings.TrimPrefix(key, prefix)
			src.entries[k] = t.renamed(k)
			continue
		}
		canon, conv, ok := table.toCanon(key)
		if !ok {
			unmapped = append(unmapped, key)
			continue
		}
		if conv == convSplitQKV && (len(t.Shape) != 2 || t.Shape[0] != 3*dim) {
			// Thirds are q, k and v only when there are as many key/value
			// heads as query heads, as in every Z-Image (Lumina 2, with
			// the same layout, groups its key/value heads).
			return &ShapeError{Component: "transformer", Key: key, File: path, Got: t.Shape, Want: []int{3 * dim, dim}}
		}
		if err := addMapped(src, canon, conv, t); err != nil {
			return err
		}
	}
	if len(unmapped) > 0 {
		c.warnf("transformer: %d tensors are not Z-Image transformer weights and are ignored (e.g. %s)", len(unmapped), strings.Join(unmapped[:min(len(unmapped), 5)], ", "))
	}
	cfg, err := c.inferZImage(base, src)
	if err != nil {
		return err
	}
	c.Transformer = &TransformerComponent{Class: "ZImageTransformer2DModel", Config: cfg, Source: src}

	c.Index = &ModelIndex{}
	if err := readFamilyJSON(ZImage, "model_index.json", c.Index); err != nil {
		return err
	}
	if _, err := replaceFromDir(opts, "model_index.json", &c.Index); err != nil {
		return err
	}
	if opts.TextEncoderPath == "" {
		return &MissingComponentError{Path: path, Component: "text_encoder",
			Detail: "a Z-Image single file holds the transformer only: pass the Qwen3 text encoder (--text-encoder: a Z-Image diffusers folder, its text_encoder folder or a .safetensors file)"}
	}
	if opts.VAEPath == "" {
		return &MissingComponentError{Path: path, Component: "vae",
			Detail: "a Z-Image single file holds the transformer only: pass the FLUX VAE (--vae: a Z-Image diffusers folder, its vae folder or a .safetensors file such as ae.safetensors)"}
	}
	if c.Qwen, err = c.openQwenPath(opts.TextEncoderPath, opts); err != nil {
		return err
	}
	c.Qwen.TokenizerDir = c.qwenTokenizerDir("", opts)
	if err := c.openVAEPath(opts.VAEPath, opts); err != nil {
		return err
	}
	c.Scheduler = &SchedulerConfig{}
	if err := readFamilyJSON(ZImage, "scheduler/scheduler_config.json", c.Scheduler); err != nil {
		return err
	}
	if _, err := replaceFromDir(opts, "scheduler/scheduler_config.json", &c.Scheduler); err != nil {
		return err
	}
	return c.checkZImage()
}

// inferZImage takes every size the tensors show (canonical keys) and the
// rest from base: norm_eps, rope_theta, t_scale and the RoPE axes, which
// must add up to the head size.
func (c *Checkpoint) inferZImage(base *ZImageConfig, src *Source) (*ZImageConfig, error) {
	cfg := *base
	p, f := base.AllPatchSize[0], base.AllFPatchSize[0]
	patch := fmt.Sprintf("%d-%d", p, f)
	x, err := needShape(c, src, "all_x_embedder."+patch+".weight", 2)
	if err != nil {
		return nil, err
	}
	if x[1]%(p*p*f) != 0 {
		return nil, &ShapeError{Component: "transformer", Key: "all_x_embedder." + patch + ".weight", File: c.Path, Got: x, Want: []int{x[0], p * p * f * base.InChannels}}
	}
	cfg.Dim, cfg.InChannels = x[0], x[1]/(p*p*f)
	capNorm, err := needShape(c, src, "cap_embedder.0.weight", 1)
	if err != nil {
		return nil, err
	}
	cfg.CapFeatDim = capNorm[0]
	cfg.NLayers = countIndexed(src, "layers.%d.")
	cfg.NRefinerLayers = countIndexed(src, "noise_refiner.%d.")
	if n := countIndexed(src, "context_refiner.%d."); n != cfg.NRefinerLayers {
		return nil, fmt.Errorf("model: %s: transformer: %d noise refiner blocks but %d context refiner blocks; ZImageTransformer2DModel has n_refiner_layers of each", c.Path, cfg.NRefinerLayers, n)
	}
	headDim := 0
	for _, a := range base.AxesDims {
		headDim += a
	}
	cfg.QKNorm = src.Entry("layers.0.attention.norm_q.weight") != nil
	if cfg.QKNorm {
		s, err := needShape(c, src, "layers.0.attention.norm_q.weight", 1)
		if err != nil {
			return nil, err
		}
		if s[0] != headDim {
			return nil, fmt.Errorf("model: %s: transformer: head size %d (layers.0.attention.norm_q.weight), but the RoPE axes %v add up to %d; pass the model's config (ConfigDir)", c.Path, s[0], base.AxesDims, headDim)
		}
	}
	q, err := needShape(c, src, "layers.0.attention.to_q.weight", 2)
	if err != nil {
		return nil, err
	}
	k, err := needShape(c, src, "layers.0.attention.to_k.weight", 2)
	if err != nil {
		return nil, err
	}
	if headDim == 0 || q[0]%headDim != 0 || k[0]%headDim != 0 {
		return nil, fmt.Errorf("model: %s: transformer: attention widths %d (q) and %d (k) are not multiples of the head size %d", c.Path, q[0], k[0], headDim)
	}
	cfg.NHeads, cfg.NKVHeads = q[0]/headDim, k[0]/headDim
	return &cfg, nil
}

// componentDir resolves a TextEncoderPath/VAEPath folder: a pipeline
// folder's component subfolder, or the component folder itself.
func componentDir(path, name string) (string, error) {
	if isFile(filepath.Join(path, "model_index.json")) {
		return filepath.Join(path, name), nil
	}
	if isFile(filepath.Join(path, "config.json")) {
		return path, nil
	}
	return "", &MissingComponentError{Path: path, Component: name,
		Detail: "neither a diffusers pipeline folder (model_index.json) nor a component folder (config.json)"}
}

// openQwenPath opens OpenOptions.TextEncoderPath.
func (c *Checkpoint) openQwenPath(path string, opts OpenOptions) (*QwenTextEncoder, error) {
	q := &QwenTextEncoder{Name: "text_encoder", Class: "Qwen3Model", Config: &Qwen3Config{}}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("model: text encoder: %w", err)
	}
	if st.IsDir() {
		cdir, err := componentDir(path, "text_encoder")
		if err != nil {
			return nil, err
		}
		if q.Source, err = c.openComponentDir(path, cdir, "text_encoder", "model", q.Config, opts, nil); err != nil {
			return nil, err
		}
		return q, nil
	}
	f, err := c.openFile(path, "text_encoder")
	if err != nil {
		return nil, err
	}
	// transformers saves Qwen3 under "model." (the causal LM's base model);
	// a bare Qwen3Model state dict lacks it.
	bare := !hasKeyPrefix(f.Names(), "model.")
	q.Source = NewSource("text_encoder")
	for _, key := range f.Names() {
		canon := key
		if bare && key != "lm_head.weight" {
			canon = "model." + key
		}
		q.Source.AddTensor(canon, f.Tensor(key), path)
	}
	base := &Qwen3Config{}
	if err := readFamilyJSON(ZImage, "text_encoder/config.json", base); err != nil {
		return nil, err
	}
	if q.Config, err = c.inferQwen3(base, q.Source); err != nil {
		return nil, err
	}
	if _, err := replaceFromDir(opts, "text_encoder/config.json", &q.Config); err != nil {
		return nil, err
	}
	return q, nil
}

// openFile maps a component's single weight file.
func (c *Checkpoint) openFile(path, component string) (*safetensors.File, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".ckpt", ".pt", ".pth", ".bin":
		return nil, fmt.Errorf("model: %s: %s: PyTorch pickle files are not supported (they can run code when loaded); use a .safetensors file", path, component)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("model: %s: %w", component, err)
	}
	c.files = append(c.files, f)
	return f, nil
}

// inferQwen3 reads a Qwen3 text encoder's sizes from its tensors; eps,
// RoPE theta and the token ids stay as in base (Qwen3-4B).
func (c *Checkpoint) inferQwen3(base *Qwen3Config, src *Source) (*Qwen3Config, error) {
	cfg := *base
	emb, err := needShape(c, src, "model.embed_tokens.weight", 2)
	if err != nil {
		return nil, err
	}
	cfg.VocabSize, cfg.HiddenSize = emb[0], emb[1]
	cfg.NumHiddenLayers = countIndexed(src, "model.layers.%d.")
	gate, err := needShape(c, src, "model.layers.0.mlp.gate_proj.weight", 2)
	if err != nil {
		return nil, err
	}
	cfg.IntermediateSize = gate[0]
	hd, err := needShape(c, src, "model.layers.0.self_attn.q_norm.weight", 1)
	if err != nil {
		return nil, err
	}
	q, err := needShape(c, src, "model.layers.0.self_attn.q_proj.weight", 2)
	if err != nil {
		return nil, err
	}
	k, err := needShape(c, src, "model.layers.0.self_attn.k_proj.weight", 2)
	if err != nil {
		return nil, err
	}
	cfg.HeadDim = hd[0]
	if q[0]%hd[0] != 0 || k[0]%hd[0] != 0 {
		return nil, fmt.Errorf("model: %s: text_encoder: q/k projections of %d and %d rows are not multiples of the head size %d", c.Path, q[0], k[0], hd[0])
	}
	cfg.NumAttentionHeads, cfg.NumKeyValueHeads = q[0]/hd[0], k[0]/hd[0]
	cfg.TieWordEmbeddings = src.Entry("lm_head.weight") == nil
	cfg.AttentionBias = src.Entry("model.layers.0.self_attn.q_proj.bias") != nil
	return &cfg, nil
}

// openVAEPath opens OpenOptions.VAEPath into c.VAE.
func (c *Checkpoint) openVAEPath(path string, opts OpenOptions) error {
	c.VAE = VAEComponent{Class: "AutoencoderKL", Config: &VAEConfig{}}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("model: vae: %w", err)
	}
	if st.IsDir() {
		cdir, err := componentDir(path, "vae")
		if err != nil {
			return err
		}
		c.VAE.Source, err = c.openComponentDir(path, cdir, "vae", "diffusion_pytorch_model", c.VAE.Config, opts, newNameTable(legacyVAERules()))
		return err
	}
	f, err := c.openFile(path, "vae")
	if err != nil {
		return err
	}
	keys := f.Names()
	src := NewSource("vae")
	var unmapped []string
	// The original (LDM) layout numbers up blocks from the shallowest
	// level ("decoder.up.0."), diffusers' from the deepest
	// ("decoder.up_blocks.0.").
	prefix, ldm := "", false
	for _, p := range []string{"", ldmVAE} {
		if hasKeyPrefix(keys, p+"decoder.up.") {
			prefix, ldm = p, true
			break
		}
	}
	var table *nameTable
	if ldm {
		levels, resnets := ldmVAELayout(prefix, keys)
		table = newNameTable(vaeRules(prefix, levels, resnets))
	} else {
		table = newNameTable(legacyVAERules())
	}
	for _, key := range keys {
		canon, conv, ok := table.toCanon(key)
		switch {
		case ok:
			if err := addMapped(src, canon, conv, tensorEntry(key, f.Tensor(key), path)); err != nil {
				return err
			}
		case ldm:
			unmapped = append(unmapped, key)
		default:
			src.AddTensor(key, f.Tensor(key), path)
		}
	}
	if len(unmapped) > 0 {
		c.warnf("vae: %d tensors of %s are not VAE weights and are ignored (e.g. %s)", len(unmapped), path, strings.Join(unmapped[:min(len(unmapped), 5)], ", "))
	}
	base := &VAEConfig{}
	if err := readFamilyJSON(ZImage, "vae/config.json", base); err != nil {
		return err
	}
	if c.VAE.Config, err = c.inferVAE(base, src); err != nil {
		return err
	}
	if _, err := replaceFromDir(opts, "vae/config.json", &c.VAE.Config); err != nil {
		return err
	}
	c.VAE.Source = src
	return nil
}

// qwenTokenizerDir finds the Qwen tokenizer: the pipeline folder's own,
// then TokenizerDir (a pipeline or tokenizer folder), then beside
// TextEncoderPath (its pipeline folder, or the pipeline holding its
// text_encoder folder), then ConfigDir. A folder counts when it has a
// vocab.json; RequireTokenizers checks the rest.
func (c *Checkpoint) qwenTokenizerDir(own string, opts OpenOptions) string {
	var cands []string
	if own != "" {
		cands = append(cands, filepath.Join(own, "tokenizer"))
	}
	if d := opts.TokenizerDir; d != "" {
		cands = append(cands, filepath.Join(d, "tokenizer"), d)
	}
	if p := opts.TextEncoderPath; p != "" {
		cands = append(cands, filepath.Join(p, "tokenizer"), filepath.Join(filepath.Dir(p), "tokenizer"))
	}
	if d := opts.ConfigDir; d != "" {
		cands = append(cands, filepath.Join(d, "tokenizer"), d)
	}
	for _, d := range cands {
		if isFile(filepath.Join(d, "vocab.json")) {
			return d
		}
	}
	return ""
}

// checkZImage checks that the components fit each other.
func (c *Checkpoint) checkZImage() error {
	tr := c.Transformer.Config
	if h := c.Qwen.Config.HiddenSize; h != tr.CapFeatDim {
		return &ComponentMismatchError{Path: c.Path, Component: "text_encoder", Other: "transformer",
			Detail: fmt.Sprintf("the text encoder's hidden size is %d, the transformer's caption features (cap_feat_dim) %d", h, tr.CapFeatDim)}
	}
	if l := c.VAE.Config.LatentChannels; l != tr.InChannels {
		return &ComponentMismatchError{Path: c.Path, Component: "vae", Other: "transformer",
			Detail: fmt.Sprintf("the VAE has %d latent channels, the transformer takes %d", l, tr.InChannels)}
	}
	return nil
}
