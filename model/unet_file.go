package model

import (
	"fmt"
	"strings"

	"github.com/zimage/zimage/model/gguf"
	"github.com/zimage/zimage/model/safetensors"
)

// useUNetFile replaces c's denoiser weights with those of a file holding
// the UNet alone: a ComfyUI-GGUF .gguf (LDM key names without the
// model.diffusion_model. prefix, general.architecture "sd1" or "sdxl"), or
// a .gguf or .safetensors with LDM names (prefixed or not) or diffusers
// names. c keeps its text encoders, VAE, tokenizers and configs; the UNet
// loader checks every shape against c's UNet config.
func (c *Checkpoint) useUNetFile(path string) error {
	if c.Arch == ZImage {
		return fmt.Errorf("model: %s: a separate UNet (--unet) is for Stable Diffusion models; a Z-Image transformer file is the model itself (-m, with --text-encoder and --vae)", c.Path)
	}
	var (
		names  []string
		tensor func(name, key string) (*Entry, error)
		arch   string
	)
	if isGGUF(path) {
		f, err := gguf.Open(path)
		if err != nil {
			return fmt.Errorf("model: unet file: %w", err)
		}
		c.ggufs = append(c.ggufs, f)
		kind, err := classifyGGUF(path, f)
		if err != nil {
			return err
		}
		if kind == ggufWholeLDM {
			return fmt.Errorf("model: %s: holds a whole model, not a UNet alone: open it as the model instead", path)
		}
		names, arch = f.Names(), f.Metadata.String("general.architecture")
		tensor = func(name, key string) (*Entry, error) { return ggufTensor(f, name, key) }
	} else {
		f, err := safetensors.Open(path)
		if err != nil {
			return fmt.Errorf("model: unet file: %w", err)
		}
		c.files = append(c.files, f)
		names = f.Names()
		tensor = func(name, key string) (*Entry, error) { return tensorEntry(key, f.Tensor(name), path), nil }
	}
	switch {
	case arch == "sdxl" && c.Arch != SDXL, arch == "sd1" && c.Arch == SDXL:
		return fmt.Errorf("model: %s: an %s UNet (general.architecture %q) does not fit the %s model %s", path, strings.ToUpper(arch), arch, c.Arch, c.Path)
	}
	src := NewSource("unet")
	diffusers := false
	for _, n := range names {
		diffusers = diffusers || n == "conv_in.weight"
	}
	if diffusers {
		for _, n := range names {
			e, err := tensor(n, n)
			if err != nil {
				return err
			}
			src.entries[n] = e
		}
		c.UNet.Source = src
		return nil
	}
	// LDM names: put every key under the prefix single files use, so the
	// single-file layout reader and name table apply unchanged.
	ldmName := map[string]string{}
	var keys []string
	for _, n := range names {
		k := n
		if !strings.HasPrefix(k, ldmUNet) {
			k = ldmUNet + k
		}
		ldmName[k] = n
		keys = append(keys, k)
	}
	ul, err := ldmUNetLayout(path, keys)
	if err != nil {
		return err
	}
	if ul.levels == 0 {
		return &MissingComponentError{Path: path, Component: "unet", Detail: "no UNet tensors (input_blocks.*) in the file"}
	}
	comps := []*ldmComponent{{name: "unet", prefix: ldmUNet, table: newNameTable(unetRules(ul)), src: src}}
	var unmapped []string
	for _, k := range keys {
		e, err := tensor(ldmName[k], k)
		if err != nil {
			return err
		}
		mapped, err := mapKey(comps, k, e)
		if err != nil {
			return err
		}
		if !mapped && !ignoredKey(k) {
			unmapped = append(unmapped, ldmName[k])
		}
	}
	if len(unmapped) > 0 {
		c.warnf("%s: %d tensors are not UNet weights (e.g. %s)", path, len(unmapped), strings.Join(unmapped[:min(3, len(unmapped))], ", "))
	}
	c.UNet.Source = src
	return nil
}
