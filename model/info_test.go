package model

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/safetensors"
)

func TestInfoTiny(t *testing.T) {
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			ref := openTest(t, testref.Dir(t, name), OpenOptions{})
			single := openTest(t, writeSingleFile(t, ref), OpenOptions{ConfigDir: ref.Path})
			a, b := ref.Info(), single.Info()
			var params, stored int64
			for _, src := range ref.Sources() {
				for _, k := range src.Keys() {
					e := src.Entry(k)
					params += int64(e.NumElem())
					stored += int64(e.NumElem()) * int64(e.DType.Size())
				}
			}
			if a.Params != params || a.FileBytes != stored || a.Params == 0 {
				t.Errorf("params %d bytes %d, want %d %d", a.Params, a.FileBytes, params, stored)
			}
			// Both layouts hold the same tensors, so the same totals.
			if a.Params != b.Params || a.FileBytes != b.FileBytes || a.DeviceBytes != b.DeviceBytes || len(a.Components) != len(b.Components) {
				t.Errorf("folder %+v\nsingle file %+v", a, b)
			}
			if a.DeviceWeightBytes <= 0 || a.ActivationBytes <= 0 || a.DeviceBytes != a.DeviceWeightBytes+a.ActivationBytes {
				t.Errorf("device estimate %d + %d = %d", a.DeviceWeightBytes, a.ActivationBytes, a.DeviceBytes)
			}
			// All tiny weights are F16: device bytes (F16 matrices, F32
			// vectors, VAE decoder only) lie between half and double.
			if a.DeviceWeightBytes > 2*a.FileBytes || a.DeviceWeightBytes < a.FileBytes/4 {
				t.Errorf("device weights %d for %d stored bytes", a.DeviceWeightBytes, a.FileBytes)
			}
			s := a.String()
			for _, want := range []string{ref.Arch.String(), "unet", "vae", "text_encoder", "F16:", "512x512"} {
				if !strings.Contains(s, want) {
					t.Errorf("info text lacks %q:\n%s", want, s)
				}
			}
			if !strings.Contains(b.String(), "single file") {
				t.Errorf("single-file info:\n%s", b)
			}
			js, err := json.Marshal(b)
			if err != nil || !strings.Contains(string(js), `"arch":"`+ref.Arch.String()+`"`) || !strings.Contains(string(js), `"format":"single file"`) {
				t.Errorf("json %s, %v", js, err)
			}
		})
	}
}

// fullSizeSingleFile writes a sparse single file with the key layout and
// shapes of a real model of the family (the built-in configs) and no data:
// the data section is a hole, so the file takes no disk space. The tensor
// list comes from building the networks on synthetic sources.
func fullSizeSingleFile(t *testing.T, arch Arch) (string, int64) {
	t.Helper()
	c := &Checkpoint{Arch: arch, Path: arch.String()}
	u, v := &UNetConfig{}, &VAEConfig{}
	if err := readFamilyJSON(arch, "unet/config.json", u); err != nil {
		t.Fatal(err)
	}
	if err := readFamilyJSON(arch, "vae/config.json", v); err != nil {
		t.Fatal(err)
	}
	c.UNet = UNetComponent{Config: u, Source: NewSyntheticSource("unet", 1)}
	c.VAE = VAEComponent{Config: v, Source: NewSyntheticSource("vae", 1)}
	if _, err := LoadUNet(c.UNet.Source, u); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadVAEDecoder(c.VAE.Source, v); err != nil {
		t.Fatal(err)
	}
	names := []string{"text_encoder"}
	if arch == SDXL {
		names = append(names, "text_encoder_2")
	}
	for _, n := range names {
		cfg := &CLIPTextConfig{}
		if err := readFamilyJSON(arch, n+"/config.json", cfg); err != nil {
			t.Fatal(err)
		}
		te := TextEncoder{Name: n, Config: cfg, Source: NewSyntheticSource(n, 1)}
		if _, err := LoadCLIPText(te.Source, cfg); err != nil {
			t.Fatal(err)
		}
		c.TextEncoders = append(c.TextEncoders, te)
	}
	hdr, dataLen, err := safetensors.EncodeHeader(ldmTensors(t, c, false), map[string]string{"format": "pt"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "full-"+arch.String()+".safetensors")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(hdr); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(len(hdr)) + dataLen); err != nil {
		t.Skipf("cannot make a %d-byte sparse file here: %v", int64(len(hdr))+dataLen, err)
	}
	return path, int64(len(hdr)) + dataLen
}

// procStatus reads a kB field of /proc/self/status (Linux): VmRSS is the
// resident set, RssFile its file-backed part (mapped pages read in).
func procStatus(t *testing.T, field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status: cannot measure RSS here")
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	t.Skip(field + " not found")
	return 0
}

// TestOpenFullSize opens multi-gigabyte single files of the real
// architectures: opening maps them without reading (time and RSS growth
// stay those of parsing the header), and the detected architecture,
// inferred configs and parameter counts are the real models'.
func TestOpenFullSize(t *testing.T) {
	if testing.Short() {
		t.Skip("writes multi-GB sparse files")
	}
	// Parameter counts of the diffusers UNets (UNet2DConditionModel of
	// runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1
	// (= sd-turbo) and stabilityai/sdxl-base-1.0 (= sdxl-turbo)).
	wantUNet := map[Arch]int64{SD1: 859_520_964, SD2: 865_910_724, SDXL: 2_567_463_684}
	for _, arch := range []Arch{SD1, SD2, SDXL} {
		t.Run(arch.String(), func(t *testing.T) {
			path, size := fullSizeSingleFile(t, arch)
			runtime.GC()
			before, beforeFile := procStatus(t, "VmRSS"), procStatus(t, "RssFile")
			start := time.Now()
			c, err := OpenCheckpoint(path, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			elapsed := time.Since(start)
			growth, fileGrowth := procStatus(t, "VmRSS")-before, procStatus(t, "RssFile")-beforeFile
			defer c.Close()
			in := c.Info()
			t.Logf("%s: %s file, %d tensors, %s header: OpenCheckpoint %v, RSS growth %s (file-backed %s)",
				arch, FormatBytes(size), len(c.files[0].Names()), FormatBytes(c.files[0].HeaderLen), elapsed, FormatBytes(growth), FormatBytes(fileGrowth))
			t.Logf("\n%s", in)
			// Parsing a ~200 KB header and building the sources costs a few MB;
			// reading the data would cost the file's size.
			if growth > 64<<20 || fileGrowth > 16<<20 {
				t.Errorf("RSS grew by %s opening a %s file: the data was read", FormatBytes(growth), FormatBytes(size))
			}
			if c.Arch != arch {
				t.Errorf("detected %v", c.Arch)
			}
			if in.Components[len(in.Components)-2].Params != wantUNet[arch] {
				t.Errorf("unet has %d parameters, want %d", in.Components[len(in.Components)-2].Params, wantUNet[arch])
			}
			// Inferred configs are the family's own (the widths are multiples
			// of 64, so the head rule holds and nothing is guessed).
			base := &UNetConfig{}
			readFamilyJSON(arch, "unet/config.json", base)
			depth := func(v IntOrList) int { // diffusers' default is 1
				if len(v) == 0 {
					return 1
				}
				return v.At(2)
			}
			if got, want := c.UNet.Config, base; got.AttentionHeadDim.At(1) != want.AttentionHeadDim.At(1) ||
				got.CrossAttentionDim.At(0) != want.CrossAttentionDim.At(0) || depth(got.TransformerLayersPerBlock) != depth(want.TransformerLayersPerBlock) ||
				got.ProjectionClassEmbedInputDim != want.ProjectionClassEmbedInputDim || got.AdditionTimeEmbedDim != want.AdditionTimeEmbedDim {
				t.Errorf("inferred unet config differs from %s's: %+v", arch, got)
			}
			if len(c.Warnings) > 0 {
				t.Errorf("warnings: %v", c.Warnings)
			}
			if _, err := LoadUNet(c.UNet.Source, c.UNet.Config); err != nil {
				t.Error(err)
			}
			for _, te := range c.TextEncoders {
				if _, err := LoadCLIPText(te.Source, te.Config); err != nil {
					t.Error(err)
				}
			}
			if _, err := LoadVAEDecoder(c.VAE.Source, c.VAE.Config); err != nil {
				t.Error(err)
			}
		})
	}
}
