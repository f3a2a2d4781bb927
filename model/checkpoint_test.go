package model

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/safetensors"
)

// wantArch is the family of each reference model.
var wantArch = map[string]Arch{"tiny-sd15": SD1, "tiny-sd-turbo": SD2, "tiny-sdxl-turbo": SDXL}

func openTest(t *testing.T, path string, opts OpenOptions) *Checkpoint {
	t.Helper()
	c, err := OpenCheckpoint(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

func TestOpenFolder(t *testing.T) {
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			dir := testref.Dir(t, name)
			c := openTest(t, dir, OpenOptions{})
			if c.Arch != wantArch[name] || c.Format != FormatDiffusers {
				t.Fatalf("arch %v format %v, want %v diffusers", c.Arch, c.Format, wantArch[name])
			}
			wantTE := 1
			if c.Arch == SDXL {
				wantTE = 2
			}
			if len(c.TextEncoders) != wantTE {
				t.Fatalf("%d text encoders, want %d", len(c.TextEncoders), wantTE)
			}
			if c.ForceZerosForEmptyPrompt != (c.Arch == SDXL) {
				t.Errorf("ForceZerosForEmptyPrompt = %v", c.ForceZerosForEmptyPrompt)
			}
			if len(c.Warnings) > 0 {
				t.Errorf("warnings: %v", c.Warnings)
			}
			// Every tensor of every weight file is in its source, same bytes.
			for _, comp := range []struct {
				src  *Source
				file string
			}{
				{c.UNet.Source, "unet"}, {c.VAE.Source, "vae"},
			} {
				checkSourceMatchesFiles(t, comp.src, filepath.Join(dir, comp.file))
			}
			for i, te := range c.TextEncoders {
				checkSourceMatchesFiles(t, te.Source, filepath.Join(dir, te.Name))
				if te.TokenizerDir != filepath.Join(dir, []string{"tokenizer", "tokenizer_2"}[i]) {
					t.Errorf("%s tokenizer %q", te.Name, te.TokenizerDir)
				}
				if te.Config.HiddenSize != 32 || te.Config.NumHiddenLayers != 3 {
					t.Errorf("%s config %+v", te.Name, te.Config)
				}
				if te.Want != wantFor(c.Arch, i) {
					t.Errorf("%s want %+v", te.Name, te.Want)
				}
			}
			if c.Arch == SDXL && !c.TextEncoders[1].Config.WithProjection() {
				t.Error("text_encoder_2 is not CLIPTextModelWithProjection")
			}
			if c.UNet.Config.InChannels != 4 || len(c.UNet.Config.BlockOutChannels) == 0 || c.VAE.Config.LatentChannels != 4 {
				t.Errorf("configs not read: unet %+v vae %+v", c.UNet.Config, c.VAE.Config)
			}
			if c.Scheduler.ClassName == "" || c.Index.ClassName == "" {
				t.Errorf("scheduler %q index %q", c.Scheduler.ClassName, c.Index.ClassName)
			}
			if err := c.RequireTokenizers(); err != nil {
				t.Error(err)
			}
		})
	}
}

// checkSourceMatchesFiles compares a source with the safetensors file(s)
// of a component folder, key by key and byte by byte.
func checkSourceMatchesFiles(t *testing.T, src *Source, dir string) {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	n := 0
	for _, p := range paths {
		f, err := safetensors.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range f.Tensors() {
			n++
			e := src.Entry(tt.Name)
			if e == nil {
				t.Errorf("%s: %q missing from the source", src.Name, tt.Name)
				continue
			}
			if e.DType != tt.DType || !reflect.DeepEqual(e.Shape, tt.Shape) || !bytes.Equal(e.Bytes(), tt.Data()) {
				t.Errorf("%s: %q differs from %s", src.Name, tt.Name, p)
			}
		}
		f.Close()
	}
	if len(src.Keys()) != n || n == 0 {
		t.Errorf("%s: %d keys, the files hold %d", src.Name, len(src.Keys()), n)
	}
}

// copyModel copies a reference model's pipeline files (not its refs) into
// a temporary folder that a test can damage.
func copyModel(t *testing.T, name string) string {
	t.Helper()
	src := testref.Dir(t, name)
	dst := filepath.Join(t.TempDir(), name)
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if top := strings.Split(rel, string(filepath.Separator))[0]; top == "images" || top == "noise" || strings.HasPrefix(top, "refs") {
			return nil
		}
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(filepath.Join(dst, rel))
		if err != nil {
			return err
		}
		defer out.Close()
		_, err = io.Copy(out, in)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestOpenFolderErrors(t *testing.T) {
	type damage func(t *testing.T, dir string)
	remove := func(rel string) damage {
		return func(t *testing.T, dir string) {
			if err := os.RemoveAll(filepath.Join(dir, rel)); err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name      string
		damage    damage
		component string // "" = not a MissingComponentError
		contains  string
	}{
		{"no model_index", remove("model_index.json"), "", "no model_index.json"},
		{"no unet config", remove("unet/config.json"), "unet", "no config.json"},
		{"no unet folder", remove("unet"), "unet", "folder"},
		{"no vae weights", remove("vae/diffusion_pytorch_model.fp16.safetensors"), "vae", "no weights"},
		{"no text encoder", remove("text_encoder"), "text_encoder", "missing"},
		{"pickle only", func(t *testing.T, dir string) {
			os.Rename(filepath.Join(dir, "unet/diffusion_pytorch_model.fp16.safetensors"), filepath.Join(dir, "unet/diffusion_pytorch_model.bin"))
		}, "unet", "pickle"},
		{"unet not listed", func(t *testing.T, dir string) {
			rewriteIndex(t, dir, func(m map[string]any) { delete(m, "unet") })
		}, "unet", "not listed"},
		{"unsupported vae class", func(t *testing.T, dir string) {
			rewriteIndex(t, dir, func(m map[string]any) { m["vae"] = []string{"diffusers", "AutoencoderTiny"} })
		}, "vae", "AutoencoderTiny"},
		{"bad config json", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "vae/config.json"), []byte("{"), 0o644)
		}, "", "vae/config.json"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyModel(t, "tiny-sd-turbo")
			c.damage(t, dir)
			ck, err := OpenCheckpoint(dir, OpenOptions{})
			if err == nil {
				ck.Close()
				t.Fatal("opened a damaged folder")
			}
			var mc *MissingComponentError
			if c.component != "" && (!errors.As(err, &mc) || mc.Component != c.component) {
				t.Errorf("error %v is not a MissingComponentError for %s", err, c.component)
			}
			if !strings.Contains(err.Error(), c.contains) {
				t.Errorf("error %q does not mention %q", err, c.contains)
			}
		})
	}
}

func TestOpenFolderCorruptWeights(t *testing.T) {
	dir := copyModel(t, "tiny-sd15")
	p := filepath.Join(dir, "unet/diffusion_pytorch_model.safetensors")
	if err := os.Truncate(p, 1000); err != nil {
		t.Fatal(err)
	}
	_, err := OpenCheckpoint(dir, OpenOptions{})
	var fe *safetensors.FormatError
	if !errors.As(err, &fe) || fe.Path != p {
		t.Fatalf("got %v, want a *safetensors.FormatError for %s", err, p)
	}
}

func rewriteIndex(t *testing.T, dir string, edit func(map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, "model_index.json")
	var m map[string]any
	if err := readJSON(p, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	writeJSON(t, p, m)
}

// TestOpenFolderVariants: fp16 files win over plain ones, sharded files
// load like whole ones, and old VAE attention names are renamed.
func TestOpenFolderVariants(t *testing.T) {
	ref := openTest(t, testref.Dir(t, "tiny-sdxl-turbo"), OpenOptions{})
	dir := copyModel(t, "tiny-sdxl-turbo")

	// A plain-named decoy beside the fp16 file must be ignored.
	decoy := []safetensors.WriteTensor{{Name: "decoy", DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)}}
	if err := safetensors.WriteFile(filepath.Join(dir, "vae/diffusion_pytorch_model.safetensors"), decoy, nil); err != nil {
		t.Fatal(err)
	}

	// Shard the UNet into two files plus an index.
	udir := filepath.Join(dir, "unet")
	whole := filepath.Join(udir, "diffusion_pytorch_model.fp16.safetensors")
	keys := ref.UNet.Source.Keys()
	weightMap := map[string]string{}
	for s, part := range [][]string{keys[:len(keys)/2], keys[len(keys)/2:]} {
		name := fmt.Sprintf("diffusion_pytorch_model.fp16-%05d-of-00002.safetensors", s+1)
		writeSource(t, filepath.Join(udir, name), ref.UNet.Source, part, nil)
		for _, k := range part {
			weightMap[k] = name
		}
	}
	os.Remove(whole)
	writeJSON(t, whole+".index.json", map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": weightMap})

	// Rename the VAE's attention to the pre-0.14 diffusers spelling.
	old := map[string]string{"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
	vfile := filepath.Join(dir, "vae/diffusion_pytorch_model.fp16.safetensors")
	writeSource(t, vfile, ref.VAE.Source, ref.VAE.Source.Keys(), func(k string) string {
		for n, o := range old {
			k = strings.Replace(k, "attentions.0."+n+".", "attentions.0."+o+".", 1)
		}
		return k
	})

	c := openTest(t, dir, OpenOptions{})
	sameSource(t, ref.UNet.Source, c.UNet.Source)
	sameSource(t, ref.VAE.Source, c.VAE.Source)
	if e := c.UNet.Source.Entry(keys[0]); e == nil || !strings.Contains(e.File, "-00001-of-00002") {
		t.Errorf("first key not read from the first shard: %+v", e)
	}

	// A shard index naming a key its shard lacks is an error.
	weightMap["not.in.any.shard"] = "diffusion_pytorch_model.fp16-00001-of-00002.safetensors"
	writeJSON(t, whole+".index.json", map[string]any{"weight_map": weightMap})
	if _, err := OpenCheckpoint(dir, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "not.in.any.shard") {
		t.Errorf("missing shard key: %v", err)
	}
	delete(weightMap, "not.in.any.shard")
	weightMap[keys[0]] = "../escape.safetensors"
	writeJSON(t, whole+".index.json", map[string]any{"weight_map": weightMap})
	if _, err := OpenCheckpoint(dir, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "escape") {
		t.Errorf("shard outside the folder: %v", err)
	}
	weightMap[keys[0]] = "diffusion_pytorch_model.fp16-00003-of-00002.safetensors"
	writeJSON(t, whole+".index.json", map[string]any{"weight_map": weightMap})
	if _, err := OpenCheckpoint(dir, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "00003") {
		t.Errorf("missing shard file: %v", err)
	}
}

// writeSource writes the given keys of src to path, renamed by rename.
func writeSource(t *testing.T, path string, src *Source, keys []string, rename func(string) string) {
	t.Helper()
	var ws []safetensors.WriteTensor
	for _, k := range keys {
		e := src.Entry(k)
		name := k
		if rename != nil {
			name = rename(k)
		}
		ws = append(ws, safetensors.WriteTensor{Name: name, DType: e.DType, Shape: e.Shape, Data: e.Bytes()})
	}
	if err := safetensors.WriteFile(path, ws, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}

// sameSource requires identical keys, dtypes, shapes and bytes.
func sameSource(t *testing.T, want, got *Source) {
	t.Helper()
	wk, gk := want.Keys(), got.Keys()
	if !reflect.DeepEqual(wk, gk) {
		t.Errorf("%s: keys differ: only in want %v, only in got %v", want.Name, minus(wk, gk), minus(gk, wk))
		return
	}
	for _, k := range wk {
		w, g := want.Entry(k), got.Entry(k)
		if w.DType != g.DType || !reflect.DeepEqual(w.Shape, g.Shape) {
			t.Errorf("%s: %q: %s %v, want %s %v", want.Name, k, g.DType, g.Shape, w.DType, w.Shape)
			continue
		}
		if !bytes.Equal(w.Bytes(), g.Bytes()) {
			t.Errorf("%s: %q: bytes differ", want.Name, k)
		}
	}
}

func minus(a, b []string) []string {
	in := map[string]bool{}
	for _, x := range b {
		in[x] = true
	}
	var out []string
	for _, x := range a {
		if !in[x] {
			out = append(out, x)
		}
	}
	sort.Strings(out)
	if len(out) > 5 {
		out = append(out[:5], "...")
	}
	return out
}

// TestOpenFolderConfigDir: ConfigDir's files replace the folder's whole.
func TestOpenFolderConfigDir(t *testing.T) {
	conf := t.TempDir()
	os.MkdirAll(filepath.Join(conf, "scheduler"), 0o755)
	writeJSON(t, filepath.Join(conf, "scheduler", "scheduler_config.json"), map[string]any{"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000})
	c := openTest(t, testref.Dir(t, "tiny-sd15"), OpenOptions{ConfigDir: conf})
	if s := c.Scheduler; s.ClassName != "EulerDiscreteScheduler" || s.BetaSchedule != "" || s.StepsOffset != 0 {
		t.Errorf("scheduler not replaced whole: %+v", s)
	}
	if c.UNet.Config.CrossAttentionDim.At(0) != 32 {
		t.Errorf("unet config without an override changed: %+v", c.UNet.Config)
	}
}
