package model

import (
	"embed"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/zimage/zimage/model/safetensors"
)

// familyConfigs are the published diffusers configs each single file's
// configs start from (see configs/SOURCES.md): SD 1.x from
// runwayml/stable-diffusion-v1-5, SD 2.x from stabilityai/sd-turbo, SDXL
// from stabilityai/sdxl-turbo, Z-Image from Tongyi-MAI/Z-Image-Turbo.
//
//go:embed configs
var familyConfigs embed.FS

func readFamilyJSON(a Arch, rel string, v any) error {
	dir := map[Arch]string{SD1: "sd1", SD2: "sd2", SDXL: "sdxl", ZImage: "zimage"}[a]
	b, err := familyConfigs.ReadFile("configs/" + dir + "/" + rel)
	if err != nil {
		return fmt.Errorf("model: no built-in %s config %s", a, rel)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("model: built-in %s config %s: %w", a, rel, err)
	}
	return nil
}

// shardName matches transformers' shard file names.
var shardName = regexp.MustCompile(`-\d{5}-of-\d{5}\.safetensors$`)

// ldmComponent is one network inside a single file.
type ldmComponent struct {
	name   string
	prefix string
	table  *nameTable
	src    *Source
}

// openSingleFile opens a .safetensors checkpoint: an LDM-layout SD file or
// a Z-Image transformer.
func openSingleFile(path string, opts OpenOptions) (*Checkpoint, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".ckpt", ".pt", ".pth", ".bin":
		return nil, fmt.Errorf("model: %s: PyTorch pickle checkpoints are not supported (they can run code when loaded); use the .safetensors release or convert it", path)
	}
	if shardName.MatchString(filepath.Base(path)) {
		return nil, fmt.Errorf("model: %s: one shard of a sharded component; open the model's folder (for Z-Image, a whole transformer file with --text-encoder and --vae)", path)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("model: open checkpoint: %w", err)
	}
	c := &Checkpoint{Path: path, Format: FormatSingleFile, files: []*safetensors.File{f}}
	if prefix, original, ok := zimageFileLayout(f.Names()); ok {
		tensor := func(key string) (*Entry, error) {
			if t := f.Tensor(key); t != nil {
				return tensorEntry(key, t, path), nil
			}
			return nil, nil
		}
		if err := c.openZImageFile(f.Names(), tensor, prefix, original, opts); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	return c.openLDM(f.Names(), func(key string) (*Entry, error) { return tensorEntry(key, f.Tensor(key), path), nil }, opts)
}

// openLDM maps the tensors of an LDM-layout file (a single .safetensors or
// a GGUF; tensor returns each key's entry): detects the family from the
// keys, maps every key through the name table into per-component Sources,
// and infers the configs from the family's and the tensors' shapes. It
// closes c on error.
func (c *Checkpoint) openLDM(keys []string, tensor func(key string) (*Entry, error), opts OpenOptions) (_ *Checkpoint, err error) {
	path := c.Path
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if err := refuseZImageOptions(path, opts); err != nil {
		return nil, err
	}
	if c.Arch, err = detectArch(path, keys); err != nil {
		return nil, err
	}
	ul, err := ldmUNetLayout(path, keys)
	if err != nil {
		return nil, err
	}
	vaeLevels, vaeResnets := ldmVAELayout(ldmVAE, keys)
	comps := []*ldmComponent{
		{name: "unet", prefix: ldmUNet, table: newNameTable(unetRules(ul))},
		{name: "vae", prefix: ldmVAE, table: newNameTable(vaeRules(ldmVAE, vaeLevels, vaeResnets))},
	}
	var dropped []string // prefixes of tensors the pipeline does not use by design
	switch c.Arch {
	case SD1:
		comps = append(comps, &ldmComponent{name: "text_encoder", prefix: ldmCLIP, table: newNameTable(hfCLIPRules(ldmCLIP))})
	case SD2:
		// SD 2.x conditions on the penultimate OpenCLIP layer, which
		// diffusers expresses as a CLIPTextModel without the last layer.
		n := countResblocks(keys, ldmOpenCLIP)
		if n < 2 {
			return nil, fmt.Errorf("model: %s: SD 2.x text encoder has %d transformer blocks, want at least 2", path, n)
		}
		layers := sd2TextLayers(n, opts)
		comps = append(comps, &ldmComponent{name: "text_encoder", prefix: ldmOpenCLIP, table: newNameTable(openCLIPRules(ldmOpenCLIP, layers, false))})
		for i := layers; i < n; i++ {
			dropped = append(dropped, fmt.Sprintf("%stransformer.resblocks.%d.", ldmOpenCLIP, i))
		}
		dropped = append(dropped, ldmOpenCLIP+"text_projection")
	case SDXL:
		n := countResblocks(keys, ldmXLCLIP2)
		comps = append(comps,
			&ldmComponent{name: "text_encoder", prefix: ldmXLCLIP1, table: newNameTable(hfCLIPRules(ldmXLCLIP1))},
			&ldmComponent{name: "text_encoder_2", prefix: ldmXLCLIP2, table: newNameTable(openCLIPRules(ldmXLCLIP2, n, true))})
	}
	for _, comp := range comps {
		comp.src = NewSource(comp.name)
	}
	var unmapped []string
	for _, key := range keys {
		if ignoredKey(key) || hasAnyPrefix(key, dropped) {
			continue
		}
		t, err := tensor(key)
		if err != nil {
			return nil, err
		}
		if mapped, err := mapKey(comps, key, t); mapped || err != nil {
			if err != nil {
				return nil, err
			}
			continue
		}
		unmapped = append(unmapped, key)
	}
	if len(unmapped) > 0 {
		show := unmapped[:min(len(unmapped), 5)]
		c.warnf("%d tensors are not used by any component (e.g. %s)", len(unmapped), strings.Join(show, ", "))
	}
	for _, comp := range comps {
		if len(comp.src.entries) == 0 {
			return nil, &MissingComponentError{Path: path, Component: comp.name, Detail: fmt.Sprintf("the file has no %s* tensors", comp.prefix)}
		}
	}
	if err := c.singleFileConfigs(comps, ul, opts); err != nil {
		return nil, err
	}
	return c, nil
}

// mapKey adds key to the component whose prefix it has, if the table maps it.
func mapKey(comps []*ldmComponent, key string, t *Entry) (bool, error) {
	for _, comp := range comps {
		if !strings.HasPrefix(key, comp.prefix) {
			continue
		}
		canon, conv, ok := comp.table.toCanon(key)
		if !ok {
			return false, nil
		}
		for _, k := range canon {
			if prev := comp.src.Entry(k); prev != nil {
				return false, fmt.Errorf("model: %s: %s: two tensors map to %q (the file mixes old and new key spellings); %q is one of them", t.File, comp.name, k, key)
			}
		}
		return true, addMapped(comp.src, canon, conv, t)
	}
	return false, nil
}

func hasAnyPrefix(key string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// detectArch tells the families apart by their text encoders' key layouts.
func detectArch(path string, keys []string) (Arch, error) {
	has := func(p string) bool {
		for _, k := range keys {
			if strings.HasPrefix(k, p) {
				return true
			}
		}
		return false
	}
	switch {
	case has(ldmXLCLIP1) && has(ldmXLCLIP2):
		return SDXL, nil
	case has("conditioner.embedders."):
		return 0, fmt.Errorf("model: %s: SDXL layout without both conditioner.embedders.0.transformer (CLIP-L) and conditioner.embedders.1.model (OpenCLIP-G): the SDXL refiner and other variants are not supported", path)
	case has(ldmOpenCLIP):
		return SD2, nil
	case has(ldmCLIP):
		return SD1, nil
	case has(ldmUNet):
		return 0, &MissingComponentError{Path: path, Component: "text_encoder",
			Detail: "the file has a UNet (model.diffusion_model.*) but no text encoder (cond_stage_model.* or conditioner.embedders.*); a UNet-only file is used as the UNet of a model that has them (OpenOptions.UNet, zimage --unet)"}
	}
	return 0, fmt.Errorf("model: %s: not a Stable Diffusion single-file checkpoint: no model.diffusion_model.* tensors (for a diffusers model, pass the pipeline folder with model_index.json)", path)
}

// indexAfter parses the integer that follows prefix in key.
func indexAfter(key, prefix string) (int, bool) {
	if !strings.HasPrefix(key, prefix) {
		return 0, false
	}
	rest := key[len(prefix):]
	if i := strings.IndexByte(rest, '.'); i >= 0 {
		rest = rest[:i]
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n >= 0
}

func countResblocks(keys []string, prefix string) int {
	n := 0
	for _, k := range keys {
		if i, ok := indexAfter(k, prefix+"transformer.resblocks."); ok {
			n = max(n, i+1)
		}
	}
	return n
}

// ldmUNetLayout reads levels and layers per level from the block numbering
// (see unetRules) and checks that the numbering is the regular one.
func ldmUNetLayout(path string, keys []string) (unetLayout, error) {
	maxIn, maxOut := -1, -1
	minDown := -1
	downs := map[int]bool{}
	resIn, resOut := map[int]bool{}, map[int]bool{} // blocks that start with a ResBlock
	for _, k := range keys {
		if n, ok := indexAfter(k, ldmUNet+"input_blocks."); ok {
			maxIn = max(maxIn, n)
			resIn[n] = resIn[n] || strings.HasPrefix(k, fmt.Sprintf("%sinput_blocks.%d.0.in_layers.", ldmUNet, n))
			if k == fmt.Sprintf("%sinput_blocks.%d.0.op.weight", ldmUNet, n) {
				downs[n] = true
				if minDown < 0 || n < minDown {
					minDown = n
				}
			}
		}
		if n, ok := indexAfter(k, ldmUNet+"output_blocks."); ok {
			maxOut = max(maxOut, n)
			resOut[n] = resOut[n] || strings.HasPrefix(k, fmt.Sprintf("%soutput_blocks.%d.0.in_layers.", ldmUNet, n))
		}
	}
	if maxIn < 1 {
		return unetLayout{}, nil // no UNet: reported as a missing component
	}
	l := unetLayout{layers: maxIn}
	if minDown > 0 {
		l.layers = minDown - 1
	}
	if l.layers < 1 {
		return unetLayout{}, fmt.Errorf("model: %s: unet: input_blocks.%d holds a downsampler, leaving no resnet layers", path, minDown)
	}
	l.levels = (maxIn-l.layers)/(l.layers+1) + 1
	ok := maxIn == (l.levels-1)*(l.layers+1)+l.layers && maxOut == l.levels*(l.layers+1)-1 && len(downs) == l.levels-1
	for i := range l.levels - 1 {
		ok = ok && downs[(i+1)*(l.layers+1)]
	}
	for n := 1; n <= maxIn; n++ {
		ok = ok && resIn[n] != downs[n]
	}
	for n := 0; n <= maxOut; n++ {
		ok = ok && resOut[n]
	}
	if !ok {
		return unetLayout{}, fmt.Errorf("model: %s: unet: block numbering (input_blocks 0..%d, output_blocks 0..%d, downsamplers at %v) is not a regular %d-level UNet with %d layers per level",
			path, maxIn, maxOut, sortedInts(downs), l.levels, l.layers)
	}
	l.upAttn = make([]bool, l.levels)
	for i := range l.levels {
		p := fmt.Sprintf("%soutput_blocks.%d.1.", ldmUNet, i*(l.layers+1))
		for _, k := range keys {
			if strings.HasPrefix(k, p) {
				l.upAttn[i] = true
				break
			}
		}
	}
	return l, nil
}

func sortedInts(m map[int]bool) []int {
	out := make([]int, 0, len(m))
	for i := range m {
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}

// ldmVAELayout returns the number of levels and the resnet index bound of
// the LDM-layout VAE keys under prefix.
func ldmVAELayout(prefix string, keys []string) (levels, resnets int) {
	for _, k := range keys {
		for _, p := range []string{prefix + "encoder.down.", prefix + "decoder.up."} {
			i, ok := indexAfter(k, p)
			if !ok {
				continue
			}
			levels = max(levels, i+1)
			if j, ok := indexAfter(k, fmt.Sprintf("%s%d.block.", p, i)); ok {
				resnets = max(resnets, j+1)
			}
		}
	}
	return levels, resnets
}

// singleFileConfigs builds every config: family defaults adjusted by the
// tensor shapes, then ConfigDir's files where present.
func (c *Checkpoint) singleFileConfigs(comps []*ldmComponent, ul unetLayout, opts OpenOptions) error {
	src := map[string]*Source{}
	for _, comp := range comps {
		src[comp.name] = comp.src
	}
	c.Index = &ModelIndex{}
	if err := readFamilyJSON(c.Arch, "model_index.json", c.Index); err != nil {
		return err
	}
	if _, err := replaceFromDir(opts, "model_index.json", &c.Index); err != nil {
		return err
	}
	c.ForceZerosForEmptyPrompt = c.Index.ForceZerosForEmptyPrompt

	pooled := 0
	for i, name := range []string{"text_encoder", "text_encoder_2"} {
		s := src[name]
		if s == nil {
			continue
		}
		base := &CLIPTextConfig{}
		if err := readFamilyJSON(c.Arch, name+"/config.json", base); err != nil {
			return err
		}
		cfg, guessed, err := c.inferCLIP(base, s)
		if err != nil {
			return err
		}
		replaced, err := replaceFromDir(opts, name+"/config.json", &cfg)
		if err != nil {
			return err
		}
		if guessed && !replaced {
			c.warnHeads(name, cfg.NumAttentionHeads)
		}
		class := "CLIPTextModel"
		if i == 1 {
			class = "CLIPTextModelWithProjection"
			pooled = cfg.ProjectionDim
		}
		c.TextEncoders = append(c.TextEncoders, TextEncoder{Name: name, Class: class, Config: cfg, Source: s,
			TokenizerDir: c.tokenizerDir("", i, opts), Want: wantFor(c.Arch, i)})
	}

	ubase := &UNetConfig{}
	if err := readFamilyJSON(c.Arch, "unet/config.json", ubase); err != nil {
		return err
	}
	ucfg, guessed, err := c.inferUNet(ubase, src["unet"], ul, pooled)
	if err != nil {
		return err
	}
	replaced, err := replaceFromDir(opts, "unet/config.json", &ucfg)
	if err != nil {
		return err
	}
	if guessed && !replaced {
		c.warnHeads("unet", []int(ucfg.AttentionHeadDim))
	}
	c.UNet = UNetComponent{Class: "UNet2DConditionModel", Config: ucfg, Source: src["unet"]}

	vbase := &VAEConfig{}
	if err := readFamilyJSON(c.Arch, "vae/config.json", vbase); err != nil {
		return err
	}
	vcfg, err := c.inferVAE(vbase, src["vae"])
	if err != nil {
		return err
	}
	if _, err := replaceFromDir(opts, "vae/config.json", &vcfg); err != nil {
		return err
	}
	c.VAE = VAEComponent{Class: "AutoencoderKL", Config: vcfg, Source: src["vae"]}

	c.Scheduler = &SchedulerConfig{}
	if err := readFamilyJSON(c.Arch, "scheduler/scheduler_config.json", c.Scheduler); err != nil {
		return err
	}
	_, err = replaceFromDir(opts, "scheduler/scheduler_config.json", &c.Scheduler)
	return err
}

// replaceFromDir replaces *cfg with ConfigDir/rel when that file exists (a
// whole replacement, not a merge: a config file describes all of a model).
func replaceFromDir[T any](opts OpenOptions, rel string, cfg **T) (bool, error) {
	fresh := new(T)
	ok, err := overrideJSON(opts, rel, fresh)
	if ok {
		*cfg = fresh
	}
	return ok, err
}

// needShape returns the shape of key, which must have rank dims.
func needShape(c *Checkpoint, src *Source, key string, rank int) ([]int, error) {
	s := shapeOf(src, key)
	if s == nil {
		return nil, fmt.Errorf("model: %s: %s: cannot infer the config: tensor %q is missing", c.Path, src.Name, key)
	}
	if len(s) != rank {
		return nil, fmt.Errorf("model: %s: %s: cannot infer the config: %q has shape %v, want %d dimensions", c.Path, src.Name, key, s, rank)
	}
	return s, nil
}

// headsFor picks the head count of a width, which the weights cannot
// tell: SD 1.x uses 8 heads in the UNet, CLIP ViT-L 12, the others 64-wide
// heads. guessed is set when that rule does not fit the width.
func (c *Checkpoint) headsFor(width, base int) (heads int, guessed bool) {
	switch {
	case c.Arch == SD1 && base > 0 && width%base == 0:
		return base, false
	case c.Arch != SD1 && width%64 == 0:
		return width / 64, false
	case base > 0 && width%base == 0:
		return base, true
	}
	return 1, true
}

func (c *Checkpoint) warnHeads(component string, heads any) {
	c.warnf("%s: attention head counts are not stored in the weights and the %s convention does not fit these widths; using %v (pass ConfigDir with the model's config.json if outputs look wrong)", component, c.Arch, heads)
}

func (c *Checkpoint) inferCLIP(base *CLIPTextConfig, src *Source) (*CLIPTextConfig, bool, error) {
	cfg := *base
	tok, err := needShape(c, src, "text_model.embeddings.token_embedding.weight", 2)
	if err != nil {
		return nil, false, err
	}
	pos, err := needShape(c, src, "text_model.embeddings.position_embedding.weight", 2)
	if err != nil {
		return nil, false, err
	}
	fc1, err := needShape(c, src, "text_model.encoder.layers.0.mlp.fc1.weight", 2)
	if err != nil {
		return nil, false, err
	}
	cfg.VocabSize, cfg.HiddenSize = tok[0], tok[1]
	cfg.MaxPositionEmbeddings = pos[0]
	cfg.IntermediateSize = fc1[0]
	cfg.NumHiddenLayers = countIndexed(src, "text_model.encoder.layers.%d.")
	if p := shapeOf(src, "text_projection.weight"); len(p) == 2 {
		cfg.ProjectionDim = p[0]
	}
	var guessed bool
	cfg.NumAttentionHeads, guessed = c.headsFor(cfg.HiddenSize, base.NumAttentionHeads)
	return &cfg, guessed, nil
}

func (c *Checkpoint) inferUNet(base *UNetConfig, src *Source, l unetLayout, pooled int) (*UNetConfig, bool, error) {
	cfg := *base
	in, err := needShape(c, src, "conv_in.weight", 4)
	if err != nil {
		return nil, false, err
	}
	out, err := needShape(c, src, "conv_out.weight", 4)
	if err != nil {
		return nil, false, err
	}
	cfg.InChannels, cfg.ConvInKernel = in[1], in[2]
	cfg.OutChannels, cfg.ConvOutKernel = out[0], out[2]
	cfg.LayersPerBlock = l.layers
	cfg.BlockOutChannels = make([]int, l.levels)
	cfg.DownBlockTypes = make([]string, l.levels)
	cfg.UpBlockTypes = make([]string, l.levels)
	guessed := false
	depth := make([]int, l.levels)
	heads := make([]int, l.levels)
	cfg.CrossAttentionDim, cfg.UseLinearProjection = nil, false
	for i := range l.levels {
		s, err := needShape(c, src, fmt.Sprintf("down_blocks.%d.resnets.0.conv1.weight", i), 4)
		if err != nil {
			return nil, false, err
		}
		ch := s[0]
		cfg.BlockOutChannels[i] = ch
		cfg.DownBlockTypes[i], cfg.UpBlockTypes[i], depth[i] = "DownBlock2D", "UpBlock2D", 1
		var g bool
		heads[i], g = c.headsFor(ch, base.AttentionHeadDim.At(i))
		guessed = guessed || g
		attn := fmt.Sprintf("down_blocks.%d.attentions.0.", i)
		if hasPrefix(src, attn) {
			cfg.DownBlockTypes[i] = "CrossAttnDownBlock2D"
			depth[i] = countIndexed(src, attn+"transformer_blocks.%d.")
			k, err := needShape(c, src, attn+"transformer_blocks.0.attn2.to_k.weight", 2)
			if err != nil {
				return nil, false, err
			}
			if cfg.CrossAttentionDim == nil {
				cfg.CrossAttentionDim = IntOrList{k[1]}
			}
			p := shapeOf(src, attn+"proj_in.weight")
			cfg.UseLinearProjection = len(p) == 2
		}
		if l.upAttn[i] {
			cfg.UpBlockTypes[i] = "CrossAttnUpBlock2D"
		}
	}
	cfg.TransformerLayersPerBlock = collapse(depth)
	cfg.AttentionHeadDim, cfg.NumAttentionHeads = collapse(heads), nil
	mid := "UNetMidBlock2D"
	if hasPrefix(src, "mid_block.attentions.0.") {
		mid = "UNetMidBlock2DCrossAttn"
		if d := countIndexed(src, "mid_block.attentions.0.transformer_blocks.%d."); d != depth[l.levels-1] {
			c.warnf("unet: the mid block has %d transformer layers, the deepest level %d; diffusers configs cannot express that, the UNet loader will report the difference", d, depth[l.levels-1])
		}
	}
	cfg.MidBlockType = &mid
	cfg.AdditionEmbedType, cfg.ProjectionClassEmbedInputDim = nil, 0
	if s := shapeOf(src, "add_embedding.linear_1.weight"); len(s) == 2 {
		tt := "text_time"
		cfg.AdditionEmbedType, cfg.ProjectionClassEmbedInputDim = &tt, s[1]
		// projection_class_embeddings_input_dim = 6 time ids x
		// addition_time_embed_dim + the pooled text embedding.
		if pooled <= 0 || s[1] <= pooled || (s[1]-pooled)%6 != 0 {
			return nil, false, fmt.Errorf("model: %s: unet: add_embedding takes %d inputs, which is not 6 x addition_time_embed_dim + the pooled text width %d", c.Path, s[1], pooled)
		}
		cfg.AdditionTimeEmbedDim = (s[1] - pooled) / 6
	}
	return &cfg, guessed, nil
}

// collapse writes a per-level list as one value when all levels agree, as
// the published configs do.
func collapse(v []int) IntOrList {
	for _, x := range v {
		if x != v[0] {
			return IntOrList(append([]int(nil), v...))
		}
	}
	return IntOrList{v[0]}
}

func (c *Checkpoint) inferVAE(base *VAEConfig, src *Source) (*VAEConfig, error) {
	cfg := *base
	levels := countIndexed(src, "decoder.up_blocks.%d.")
	if levels == 0 {
		return nil, fmt.Errorf("model: %s: vae: cannot infer the config: no decoder up blocks", c.Path)
	}
	cfg.LayersPerBlock = countIndexed(src, "decoder.up_blocks.0.resnets.%d.") - 1
	cfg.BlockOutChannels = make([]int, levels)
	cfg.UpBlockTypes = make([]string, levels)
	for i := range levels {
		// decoder up block i runs level levels-1-i.
		s, err := needShape(c, src, fmt.Sprintf("decoder.up_blocks.%d.resnets.0.conv2.weight", i), 4)
		if err != nil {
			return nil, err
		}
		cfg.BlockOutChannels[levels-1-i] = s[0]
		cfg.UpBlockTypes[i] = "UpDecoderBlock2D"
	}
	dIn, err := needShape(c, src, "decoder.conv_in.weight", 4)
	if err != nil {
		return nil, err
	}
	dOut, err := needShape(c, src, "decoder.conv_out.weight", 4)
	if err != nil {
		return nil, err
	}
	cfg.LatentChannels, cfg.OutChannels = dIn[1], dOut[0]
	if s := shapeOf(src, "encoder.conv_in.weight"); len(s) == 4 {
		cfg.InChannels = s[1]
	}
	attn := hasPrefix(src, "decoder.mid_block.attentions.0.")
	post := src.Entry("post_quant_conv.weight") != nil
	quant := src.Entry("quant_conv.weight") != nil
	cfg.MidBlockAddAttention, cfg.UsePostQuantConv, cfg.UseQuantConv = &attn, &post, &quant
	return &cfg, nil
}
