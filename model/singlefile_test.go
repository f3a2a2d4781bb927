package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/safetensors"
)

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ldmTablesFor builds, from a checkpoint's configs, the name tables of each
// component and the LDM prefix of its text encoders.
func ldmTablesFor(t *testing.T, c *Checkpoint) map[string]*nameTable {
	t.Helper()
	u := c.UNet.Config
	ul := unetLayout{levels: len(u.BlockOutChannels), layers: u.LayersPerBlock}
	for _, typ := range u.UpBlockTypes {
		ul.upAttn = append(ul.upAttn, typ == "CrossAttnUpBlock2D")
	}
	tables := map[string]*nameTable{
		"unet": newNameTable(unetRules(ul)),
		"vae":  newNameTable(vaeRules(ldmVAE, len(c.VAE.Config.BlockOutChannels), c.VAE.Config.LayersPerBlock+1)),
	}
	switch c.Arch {
	case SD1:
		tables["text_encoder"] = newNameTable(hfCLIPRules(ldmCLIP))
	case SD2:
		tables["text_encoder"] = newNameTable(openCLIPRules(ldmOpenCLIP, c.TextEncoders[0].Config.NumHiddenLayers, false))
	case SDXL:
		tables["text_encoder"] = newNameTable(hfCLIPRules(ldmXLCLIP1))
		tables["text_encoder_2"] = newNameTable(openCLIPRules(ldmXLCLIP2, c.TextEncoders[1].Config.NumHiddenLayers, true))
	}
	return tables
}

// singleFileTensors converts a checkpoint into LDM single-file tensors
// through the inverse of the name table: fused q/k/v re-assembled, VAE
// attention back to 1x1 convolutions, the OpenCLIP projection transposed
// back. Like the real files, SD 2.x gets the OpenCLIP layer and projection
// that diffusers drops, and every file gets a few non-weight tensors.
func singleFileTensors(t *testing.T, c *Checkpoint) []safetensors.WriteTensor {
	return ldmTensors(t, c, true)
}

// ldmTensors is singleFileTensors; without data only names, dtypes and
// shapes are filled (for safetensors.EncodeHeader).
func ldmTensors(t *testing.T, c *Checkpoint, data bool) []safetensors.WriteTensor {
	t.Helper()
	tables := ldmTablesFor(t, c)
	var out []safetensors.WriteTensor
	type fused struct {
		dtype safetensors.DType
		shape []int
		parts [3][]byte
	}
	fusedBy := map[string]*fused{}
	srcs := map[string]*Source{"unet": c.UNet.Source, "vae": c.VAE.Source}
	for _, te := range c.TextEncoders {
		srcs[te.Name] = te.Source
	}
	for name, src := range srcs {
		for _, key := range src.Keys() {
			e := src.Entry(key)
			file, conv, part, ok := tables[name].toFile(key)
			if !ok {
				t.Fatalf("%s: no single-file name for %q", name, key)
			}
			w := safetensors.WriteTensor{Name: file, DType: e.DType, Shape: append([]int(nil), e.Shape...)}
			bytes := func() []byte {
				if data {
					return e.Bytes()
				}
				return []byte{}
			}
			w.Data = bytes()
			switch conv {
			case convLinearFrom1x1:
				w.Shape = append(w.Shape, 1, 1)
			case convTranspose:
				w.Shape = []int{e.Shape[1], e.Shape[0]}
				if data {
					w.Data = transpose(e.Bytes(), e.Shape[0], e.Shape[1], e.DType.Size())
				}
			case convSplitQKV:
				f := fusedBy[file]
				if f == nil {
					f = &fused{dtype: e.DType, shape: append([]int{3 * e.Shape[0]}, e.Shape[1:]...)}
					fusedBy[file] = f
				}
				f.parts[part] = w.Data
				continue
			}
			out = append(out, w)
		}
	}
	for file, f := range fusedBy {
		var joined []byte
		for i, p := range f.parts {
			if p == nil {
				t.Fatalf("%s: part %d of the fused tensor missing", file, i)
			}
			joined = append(joined, p...)
		}
		out = append(out, safetensors.WriteTensor{Name: file, DType: f.dtype, Shape: f.shape, Data: joined})
	}
	f32 := func(name string, shape ...int) safetensors.WriteTensor {
		n := 4
		for _, d := range shape {
			n *= d
		}
		if !data {
			n = 0
		}
		return safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: shape, Data: make([]byte, n)}
	}
	out = append(out, f32("alphas_cumprod", 1000), f32("model_ema.decay"))
	switch c.Arch {
	case SD1:
		ids := safetensors.WriteTensor{Name: ldmCLIP + "text_model.embeddings.position_ids", DType: safetensors.I64, Shape: []int{1, 77}, Data: []byte{}}
		if data {
			ids.Data = make([]byte, 8*77)
		}
		out = append(out, ids)
	case SD2:
		last := c.TextEncoders[0].Config.NumHiddenLayers - 1
		from := fmt.Sprintf("%stransformer.resblocks.%d.", ldmOpenCLIP, last)
		to := fmt.Sprintf("%stransformer.resblocks.%d.", ldmOpenCLIP, last+1)
		for _, w := range out {
			if strings.HasPrefix(w.Name, from) {
				w.Name = to + w.Name[len(from):]
				out = append(out, w)
			}
		}
		d := c.TextEncoders[0].Config.HiddenSize
		out = append(out, f32(ldmOpenCLIP+"text_projection", d, d), f32(ldmOpenCLIP+"logit_scale"))
	case SDXL:
		out = append(out, f32(ldmXLCLIP2+"logit_scale"))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func writeSingleFile(t *testing.T, c *Checkpoint) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), filepath.Base(c.Path)+".safetensors")
	if err := safetensors.WriteFile(path, singleFileTensors(t, c), map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSingleFileRoundTrip writes each reference model as a single file and
// opens it again: every canonical tensor comes back with the same bytes,
// and with the folder as ConfigDir the configs are the folder's.
func TestSingleFileRoundTrip(t *testing.T) {
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			dir := testref.Dir(t, name)
			ref := openTest(t, dir, OpenOptions{})
			path := writeSingleFile(t, ref)

			c := openTest(t, path, OpenOptions{ConfigDir: dir})
			if c.Arch != ref.Arch || c.Format != FormatSingleFile {
				t.Fatalf("arch %v format %v, want %v single file", c.Arch, c.Format, ref.Arch)
			}
			if len(c.Warnings) > 0 {
				t.Errorf("warnings: %v", c.Warnings)
			}
			sameSource(t, ref.UNet.Source, c.UNet.Source)
			sameSource(t, ref.VAE.Source, c.VAE.Source)
			if len(c.TextEncoders) != len(ref.TextEncoders) {
				t.Fatalf("%d text encoders, want %d", len(c.TextEncoders), len(ref.TextEncoders))
			}
			for i := range ref.TextEncoders {
				r, g := ref.TextEncoders[i], c.TextEncoders[i]
				sameSource(t, r.Source, g.Source)
				if r.Name != g.Name || r.Class != g.Class || r.Want != g.Want || r.TokenizerDir != g.TokenizerDir || !reflect.DeepEqual(r.Config, g.Config) {
					t.Errorf("text encoder %d: got %s %s %+v %q %+v, want %s %s %+v %q %+v", i,
						g.Name, g.Class, g.Want, g.TokenizerDir, g.Config, r.Name, r.Class, r.Want, r.TokenizerDir, r.Config)
				}
			}
			if !reflect.DeepEqual(c.UNet.Config, ref.UNet.Config) || !reflect.DeepEqual(c.VAE.Config, ref.VAE.Config) ||
				!reflect.DeepEqual(c.Scheduler, ref.Scheduler) || !reflect.DeepEqual(c.Index, ref.Index) {
				t.Error("ConfigDir's configs were not used as they are")
			}
			if c.ForceZerosForEmptyPrompt != ref.ForceZerosForEmptyPrompt {
				t.Errorf("ForceZerosForEmptyPrompt %v", c.ForceZerosForEmptyPrompt)
			}
		})
	}
}

// TestSingleFileInferredConfigs: without ConfigDir every size the tensors
// show matches the reference config.
func TestSingleFileInferredConfigs(t *testing.T) {
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			ref := openTest(t, testref.Dir(t, name), OpenOptions{})
			c := openTest(t, writeSingleFile(t, ref), OpenOptions{})
			if err := c.RequireTokenizers(); err == nil {
				t.Error("a single file without TokenizerDir has tokenizers")
			}
			// The tiny text encoders are 32 wide: no family's head rule fits.
			if len(c.Warnings) == 0 || !strings.Contains(strings.Join(c.Warnings, "\n"), "text_encoder: attention head counts") {
				t.Errorf("no head-count warning: %v", c.Warnings)
			}
			ru, gu := ref.UNet.Config, c.UNet.Config
			check := func(what string, got, want any) {
				t.Helper()
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s = %v, want %v", what, got, want)
				}
			}
			check("unet in/out", [2]int{gu.InChannels, gu.OutChannels}, [2]int{ru.InChannels, ru.OutChannels})
			check("unet block_out_channels", gu.BlockOutChannels, ru.BlockOutChannels)
			check("unet layers_per_block", gu.LayersPerBlock, ru.LayersPerBlock)
			check("unet down_block_types", gu.DownBlockTypes, ru.DownBlockTypes)
			check("unet up_block_types", gu.UpBlockTypes, ru.UpBlockTypes)
			check("unet mid_block_type", *gu.MidBlockType, *ru.MidBlockType)
			check("unet cross_attention_dim", gu.CrossAttentionDim.At(0), ru.CrossAttentionDim.At(0))
			check("unet use_linear_projection", gu.UseLinearProjection, ru.UseLinearProjection)
			for i, typ := range ru.DownBlockTypes {
				if typ == "CrossAttnDownBlock2D" {
					check(fmt.Sprintf("unet transformer_layers_per_block[%d]", i), gu.TransformerLayersPerBlock.At(i), ru.TransformerLayersPerBlock.At(i))
				}
			}
			check("unet addition_time_embed_dim", gu.AdditionTimeEmbedDim, ru.AdditionTimeEmbedDim)
			check("unet projection_class_embeddings_input_dim", gu.ProjectionClassEmbedInputDim, ru.ProjectionClassEmbedInputDim)
			check("unet addition_embed_type", gu.AdditionEmbedType != nil, ru.AdditionEmbedType != nil)
			for i, ch := range gu.BlockOutChannels {
				if h := gu.AttentionHeadDim.At(i); h <= 0 || ch%h != 0 {
					t.Errorf("unet heads %d at level %d do not divide %d", h, i, ch)
				}
			}
			rv, gv := ref.VAE.Config, c.VAE.Config
			check("vae block_out_channels", gv.BlockOutChannels, rv.BlockOutChannels)
			check("vae layers_per_block", gv.LayersPerBlock, rv.LayersPerBlock)
			check("vae channels", [3]int{gv.InChannels, gv.OutChannels, gv.LatentChannels}, [3]int{rv.InChannels, rv.OutChannels, rv.LatentChannels})
			check("vae up_block_types", gv.UpBlockTypes, rv.UpBlockTypes)
			check("vae mid attention", *gv.MidBlockAddAttention, *rv.MidBlockAddAttention)
			check("vae scaling_factor", gv.ScalingFactor, rv.ScalingFactor)
			for i, r := range ref.TextEncoders {
				g := c.TextEncoders[i].Config
				rc := r.Config
				check(r.Name+" sizes", [5]int{g.HiddenSize, g.IntermediateSize, g.NumHiddenLayers, g.VocabSize, g.MaxPositionEmbeddings},
					[5]int{rc.HiddenSize, rc.IntermediateSize, rc.NumHiddenLayers, rc.VocabSize, rc.MaxPositionEmbeddings})
				check(r.Name+" hidden_act", g.HiddenAct, rc.HiddenAct)
				check(r.Name+" projection", g.WithProjection(), rc.WithProjection())
				if rc.WithProjection() {
					check(r.Name+" projection_dim", g.ProjectionDim, rc.ProjectionDim)
				}
				if g.NumAttentionHeads <= 0 || g.HiddenSize%g.NumAttentionHeads != 0 {
					t.Errorf("%s heads %d do not divide %d", r.Name, g.NumAttentionHeads, g.HiddenSize)
				}
			}
			check("scheduler", c.Scheduler.ClassName != "", true)
			check("force zeros", c.ForceZerosForEmptyPrompt, ref.ForceZerosForEmptyPrompt)

			// TokenizerDir as a diffusers folder or as one tokenizer folder.
			c2 := openTest(t, c.Path, OpenOptions{TokenizerDir: ref.Path})
			for i, te := range c2.TextEncoders {
				if te.TokenizerDir != ref.TextEncoders[i].TokenizerDir {
					t.Errorf("%s tokenizer %q, want %q", te.Name, te.TokenizerDir, ref.TextEncoders[i].TokenizerDir)
				}
			}
			c3 := openTest(t, c.Path, OpenOptions{TokenizerDir: ref.TextEncoders[0].TokenizerDir})
			if err := c3.RequireTokenizers(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestSingleFileErrors(t *testing.T) {
	ref := openTest(t, testref.Dir(t, "tiny-sd15"), OpenOptions{})
	all := singleFileTensors(t, ref)
	without := func(prefixes ...string) []safetensors.WriteTensor {
		var out []safetensors.WriteTensor
		for _, w := range all {
			if !hasAnyPrefix(w.Name, prefixes) {
				out = append(out, w)
			}
		}
		return out
	}
	renamed := func(from, to string) []safetensors.WriteTensor {
		var out []safetensors.WriteTensor
		for _, w := range all {
			if strings.HasPrefix(w.Name, from) {
				w.Name = to + w.Name[len(from):]
			}
			out = append(out, w)
		}
		return out
	}
	cases := []struct {
		name      string
		tensors   []safetensors.WriteTensor
		component string
		contains  string
	}{
		{"empty", nil, "", "not a Stable Diffusion single-file checkpoint"},
		{"unet only", without(ldmVAE, "cond_stage_model."), "text_encoder", "UNet-only"},
		{"no vae", without(ldmVAE), "vae", "first_stage_model."},
		{"no unet", without(ldmUNet), "unet", "model.diffusion_model."},
		{"refiner layout", renamed(ldmCLIP, "conditioner.embedders.0.model."), "", "refiner"},
		{"irregular unet", without(ldmUNet + "input_blocks.3.0.op."), "", "not a regular"},
		{"missing conv_in", without(ldmUNet + "input_blocks.0.0."), "", "conv_in.weight"},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".safetensors")
			if err := safetensors.WriteFile(path, c.tensors, nil); err != nil {
				t.Fatal(err)
			}
			ck, err := OpenCheckpoint(path, OpenOptions{})
			if err == nil {
				ck.Close()
				t.Fatal("opened a bad single file")
			}
			var mc *MissingComponentError
			if c.component != "" && (!errors.As(err, &mc) || mc.Component != c.component) {
				t.Errorf("error %v is not a MissingComponentError for %s", err, c.component)
			}
			if !strings.Contains(err.Error(), c.contains) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not mention %q and the file", err, c.contains)
			}
		})
	}
	t.Run("pickle", func(t *testing.T) {
		p := filepath.Join(dir, "model.ckpt")
		os.WriteFile(p, []byte("PK"), 0o644)
		if _, err := OpenCheckpoint(p, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "pickle") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		p := filepath.Join(dir, "short.safetensors")
		os.WriteFile(p, []byte{1, 2, 3}, 0o644)
		_, err := OpenCheckpoint(p, OpenOptions{})
		var fe *safetensors.FormatError
		if !errors.As(err, &fe) || fe.Kind != safetensors.KindShortFile {
			t.Errorf("got %v, want a short-file FormatError", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		if _, err := OpenCheckpoint(filepath.Join(dir, "nope.safetensors"), OpenOptions{}); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("unknown keys warn", func(t *testing.T) {
		p := filepath.Join(dir, "extra.safetensors")
		extra := append(append([]safetensors.WriteTensor(nil), all...),
			safetensors.WriteTensor{Name: "some.lora.weight", DType: safetensors.F16, Shape: []int{1}, Data: []byte{0, 0}})
		if err := safetensors.WriteFile(p, extra, nil); err != nil {
			t.Fatal(err)
		}
		c := openTest(t, p, OpenOptions{ConfigDir: ref.Path})
		if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "1 tensors") || !strings.Contains(c.Warnings[0], "some.lora.weight") {
			t.Errorf("warnings %v", c.Warnings)
		}
	})
}

// TestNameTableInverse: every rule maps back to where it came from.
func TestNameTableInverse(t *testing.T) {
	rules := [][]nameRule{
		unetRules(unetLayout{levels: 4, layers: 2, upAttn: []bool{false, true, true, true}}),
		unetRules(unetLayout{levels: 3, layers: 2, upAttn: []bool{true, true, false}}),
		vaeRules(ldmVAE, 4, 3), vaeRules("", 4, 3), hfCLIPRules(ldmCLIP), openCLIPRules(ldmXLCLIP2, 32, true), legacyVAERules(),
		zimageRules("", "2-1", [3]int{2, 2, 30}), zimageRules(zimageLDMPrefix, "2-1", [3]int{1, 1, 2}),
	}
	for _, rs := range rules {
		tab := newNameTable(rs)
		for _, r := range rs {
			leaves := r.leaves
			if leaves == nil {
				leaves = []leaf{{file: "weight", canon: "weight", conv: r.conv}}
				if !strings.HasSuffix(r.file, ".") {
					leaves = []leaf{{conv: r.conv}}
				}
			}
			for _, l := range leaves {
				key := r.file + l.file
				canon, conv, ok := tab.toCanon(key)
				if !ok || conv != l.conv {
					t.Errorf("%q: not mapped (%v %v)", key, ok, conv)
					continue
				}
				if r.readOnly {
					continue
				}
				for part, k := range canon {
					back, _, p, ok := tab.toFile(k)
					if !ok || back != key || p != part {
						t.Errorf("%q -> %q -> %q part %d", key, k, back, p)
					}
				}
			}
		}
	}
}

// TestCheckpointNetworksLoad builds every network from both layouts (the
// single file with its inferred configs): each tensor a network needs is
// present with the shape its config implies.
func TestCheckpointNetworksLoad(t *testing.T) {
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			ref := openTest(t, testref.Dir(t, name), OpenOptions{})
			single := openTest(t, writeSingleFile(t, ref), OpenOptions{})
			for _, c := range []*Checkpoint{ref, single} {
				if _, err := LoadUNet(c.UNet.Source, c.UNet.Config); err != nil {
					t.Errorf("%s: %v", c.Format, err)
				}
				if _, err := LoadVAEDecoder(c.VAE.Source, c.VAE.Config); err != nil {
					t.Errorf("%s: %v", c.Format, err)
				}
				for _, te := range c.TextEncoders {
					if _, err := LoadCLIPText(te.Source, te.Config); err != nil {
						t.Errorf("%s: %v", c.Format, err)
					}
				}
				// The UNet and text encoders use every tensor they hold (the
				// VAE's encoder half is not used by a text-to-image pipeline).
				for _, src := range []*Source{c.UNet.Source, c.TextEncoders[0].Source} {
					if u := src.Unused(); len(u) > 0 {
						t.Errorf("%s: %s: unused %v", c.Format, src.Name, u[:min(len(u), 5)])
					}
				}
			}
		})
	}
}
