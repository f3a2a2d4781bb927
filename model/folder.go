package model

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/zimage/zimage/model/safetensors"
)

// Weight file names as diffusers and transformers publish them, preferred
// first: the fp16 variant, then the plain name, each whole or sharded.
func weightCandidates(base string) []string {
	return []string{
		base + ".fp16.safetensors",
		base + ".fp16.safetensors.index.json",
		base + ".safetensors",
		base + ".safetensors.index.json",
	}
}

// openFolder opens a diffusers pipeline folder.
func openFolder(dir string, opts OpenOptions) (_ *Checkpoint, err error) {
	c := &Checkpoint{Path: dir, Format: FormatDiffusers}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	idxPath := filepath.Join(dir, "model_index.json")
	c.Index = &ModelIndex{}
	if err := readJSON(idxPath, c.Index); err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("model: %s: no model_index.json: not a diffusers pipeline folder (or pass a single .safetensors file)", dir)
		}
		return nil, err
	}
	if _, err := replaceFromDir(opts, "model_index.json", &c.Index); err != nil {
		return nil, err
	}
	c.ForceZerosForEmptyPrompt = c.Index.ForceZerosForEmptyPrompt
	if isZImageIndex(c.Index) {
		if err := c.openZImageFolder(dir, opts); err != nil {
			return nil, err
		}
		return c, nil
	}
	if err := refuseZImageOptions(dir, opts); err != nil {
		return nil, err
	}

	if err := c.checkClass("unet", "UNet2DConditionModel"); err != nil {
		return nil, err
	}
	if err := c.checkClass("vae", "AutoencoderKL"); err != nil {
		return nil, err
	}
	c.UNet = UNetComponent{Class: "UNet2DConditionModel", Config: &UNetConfig{}}
	if c.UNet.Source, err = c.openComponent(dir, "unet", "diffusion_pytorch_model", c.UNet.Config, opts, nil); err != nil {
		return nil, err
	}
	c.VAE = VAEComponent{Class: "AutoencoderKL", Config: &VAEConfig{}}
	if c.VAE.Source, err = c.openComponent(dir, "vae", "diffusion_pytorch_model", c.VAE.Config, opts, newNameTable(legacyVAERules())); err != nil {
		return nil, err
	}
	for i, name := range []string{"text_encoder", "text_encoder_2"} {
		class, listed := c.Index.Components[name]
		if !listed {
			continue
		}
		if class[1] != "CLIPTextModel" && class[1] != "CLIPTextModelWithProjection" {
			return nil, &MissingComponentError{Path: dir, Component: name, Detail: fmt.Sprintf("class %s is not supported (want CLIPTextModel or CLIPTextModelWithProjection)", class[1])}
		}
		te := TextEncoder{Name: name, Class: class[1], Config: &CLIPTextConfig{}}
		if te.Source, err = c.openComponent(dir, name, "model", te.Config, opts, nil); err != nil {
			return nil, err
		}
		te.TokenizerDir = c.tokenizerDir(dir, i, opts)
		c.TextEncoders = append(c.TextEncoders, te)
	}
	if len(c.TextEncoders) == 0 {
		return nil, &MissingComponentError{Path: dir, Component: "text_encoder", Detail: "model_index.json lists no text encoder"}
	}
	if c.Arch, err = c.folderArch(); err != nil {
		return nil, err
	}
	for i := range c.TextEncoders {
		c.TextEncoders[i].Want = wantFor(c.Arch, i)
	}
	if err := c.folderScheduler(dir, opts); err != nil {
		return nil, err
	}
	return c, nil
}

// folderScheduler reads the folder's scheduler config (the family's when
// absent), replaced by ConfigDir's.
func (c *Checkpoint) folderScheduler(dir string, opts OpenOptions) error {
	c.Scheduler = &SchedulerConfig{}
	schedPath := filepath.Join(dir, "scheduler", "scheduler_config.json")
	if err := readJSON(schedPath, c.Scheduler); err != nil {
		if !os.IsNotExist(err) {
			return err
		}
		if err := readFamilyJSON(c.Arch, "scheduler/scheduler_config.json", c.Scheduler); err != nil {
			return err
		}
		c.warnf("no scheduler/scheduler_config.json: using the %s default (%s)", c.Arch, c.Scheduler.ClassName)
	}
	_, err := replaceFromDir(opts, "scheduler/scheduler_config.json", &c.Scheduler)
	return err
}

// checkClass requires model_index.json to list component with class.
func (c *Checkpoint) checkClass(component, class string) error {
	got, ok := c.Index.Components[component]
	if !ok {
		return &MissingComponentError{Path: c.Path, Component: component, Detail: "not listed in model_index.json"}
	}
	if got[1] != class {
		return &MissingComponentError{Path: c.Path, Component: component, Detail: fmt.Sprintf("class %s is not supported (want %s)", got[1], class)}
	}
	return nil
}

// folderArch tells the families apart by the configs: two text encoders or
// text_time conditioning is SDXL; linear transformer projections, 1024-wide
// cross attention or a GELU text encoder is SD 2.x.
func (c *Checkpoint) folderArch() (Arch, error) {
	u := c.UNet.Config
	te := c.TextEncoders
	xl := (u.AdditionEmbedType != nil && *u.AdditionEmbedType == "text_time") || len(te) > 1
	switch {
	case xl && (len(te) != 2 || te[0].Name != "text_encoder"):
		return 0, fmt.Errorf("model: %s: SDXL pipeline with text encoders %v: only the base layout (text_encoder + text_encoder_2) is supported, not the refiner", c.Path, encoderNames(te))
	case xl:
		return SDXL, nil
	case u.UseLinearProjection || u.CrossAttentionDim.At(0) == 1024 || te[0].Config.HiddenAct == "gelu":
		return SD2, nil
	}
	return SD1, nil
}

func encoderNames(te []TextEncoder) []string {
	var out []string
	for _, t := range te {
		out = append(out, t.Name)
	}
	return out
}

// openComponent reads dir/name/config.json into cfg (or ConfigDir's) and
// maps the component's weights into a Source. legacy, when set, renames old
// spellings to canonical keys.
func (c *Checkpoint) openComponent(dir, name, base string, cfg any, opts OpenOptions, legacy *nameTable) (*Source, error) {
	cdir := filepath.Join(dir, name)
	if st, err := os.Stat(cdir); err != nil || !st.IsDir() {
		return nil, &MissingComponentError{Path: dir, Component: name, Detail: "listed in model_index.json but the folder " + cdir + " is missing"}
	}
	return c.openComponentDir(dir, cdir, name, base, cfg, opts, legacy)
}

// openComponentDir opens the component folder cdir (config.json and
// weights) as component name; dir names the model in errors.
func (c *Checkpoint) openComponentDir(dir, cdir, name, base string, cfg any, opts OpenOptions, legacy *nameTable) (*Source, error) {
	over, err := overrideJSON(opts, filepath.Join(name, "config.json"), cfg)
	if err != nil {
		return nil, err
	}
	if !over {
		if err := readJSON(filepath.Join(cdir, "config.json"), cfg); err != nil {
			if os.IsNotExist(err) {
				return nil, &MissingComponentError{Path: dir, Component: name, Detail: "no config.json in " + cdir}
			}
			return nil, err
		}
	}
	paths, err := c.weightFiles(dir, cdir, name, base)
	if err != nil {
		return nil, err
	}
	src := NewSource(name)
	for _, sh := range paths {
		f, err := safetensors.Open(sh.path)
		if err != nil {
			return nil, fmt.Errorf("model: %s: %w", name, err)
		}
		c.files = append(c.files, f)
		for _, key := range f.Names() {
			if sh.keys != nil && !sh.keys[key] {
				c.warnf("%s: %q is in %s but not in the shard index; used anyway", name, key, sh.path)
			}
			canon := key
			if legacy != nil {
				if ks, _, ok := legacy.toCanon(key); ok {
					canon = ks[0]
				}
			}
			if prev := src.Entry(canon); prev != nil {
				return nil, fmt.Errorf("model: %s: tensor %q is in both %s and %s", name, canon, prev.File, sh.path)
			}
			src.AddTensor(canon, f.Tensor(key), sh.path)
		}
		for _, key := range sortedKeys(sh.keys) {
			if f.Tensor(key) == nil {
				return nil, &ShardIndexError{Component: name, Index: sh.index, Shard: sh.path, Tensor: key}
			}
		}
	}
	return src, nil
}

type shard struct {
	path  string
	index string          // the index file; "" for an unsharded file
	keys  map[string]bool // from the index; nil for an unsharded file
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// weightFiles finds a component's safetensors file(s), fp16 variant first.
func (c *Checkpoint) weightFiles(dir, cdir, name, base string) ([]shard, error) {
	bases := []string{base, "model", "diffusion_pytorch_model"}
	var tried []string
	seen := map[string]bool{}
	for _, variant := range []int{0, 2} { // fp16 names, then plain names
		for _, b := range bases {
			for _, cand := range weightCandidates(b)[variant : variant+2] {
				if seen[cand] {
					continue
				}
				seen[cand] = true
				tried = append(tried, cand)
				p := filepath.Join(cdir, cand)
				if !isFile(p) {
					continue
				}
				if strings.HasSuffix(cand, ".index.json") {
					return readShardIndex(p, cdir, name)
				}
				return []shard{{path: p}}, nil
			}
		}
	}
	detail := "no weights: looked for " + strings.Join(tried, ", ")
	if pickles, _ := filepath.Glob(filepath.Join(cdir, "*.bin")); len(pickles) > 0 {
		detail = fmt.Sprintf("only PyTorch pickle weights (%s); zimage reads .safetensors only", filepath.Base(pickles[0]))
	}
	return nil, &MissingComponentError{Path: dir, Component: name, Detail: detail}
}

// readShardIndex reads a *.safetensors.index.json: {"weight_map": {key: file}}.
func readShardIndex(path, cdir, name string) ([]shard, error) {
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model: %s: %w", name, err)
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("model: %s: shard index %s: %w", name, path, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, fmt.Errorf("model: %s: shard index %s has an empty weight_map", name, path)
	}
	byFile := map[string]map[string]bool{}
	for key, file := range idx.WeightMap {
		if file == "" || file != filepath.Base(file) || file == "." || file == ".." {
			return nil, fmt.Errorf("model: %s: shard index %s names %q for %q: want a file name beside the index", name, path, file, key)
		}
		if byFile[file] == nil {
			byFile[file] = map[string]bool{}
		}
		byFile[file][key] = true
	}
	files := make([]string, 0, len(byFile))
	for f := range byFile {
		files = append(files, f)
	}
	sort.Strings(files)
	out := make([]shard, 0, len(files))
	for _, f := range files {
		p := filepath.Join(cdir, f)
		if !isFile(p) {
			return nil, &ShardIndexError{Component: name, Index: path, Shard: p}
		}
		out = append(out, shard{path: p, index: path, keys: byFile[f]})
	}
	return out, nil
}
