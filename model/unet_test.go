package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/gguf"
)

func readUNetConfig(t testing.TB, path string) *UNetConfig {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c UNetConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &c
}

// openTinyUNet loads a reference model's UNet from its diffusers folder.
func openTinyUNet(t testing.TB, model string) (*UNet, *UNetConfig, *FileSource) {
	t.Helper()
	dir := testref.Dir(t, model)
	cfg := readUNetConfig(t, filepath.Join(dir, "unet", "config.json"))
	files, _ := filepath.Glob(filepath.Join(dir, "unet", "*.safetensors"))
	if len(files) != 1 {
		t.Fatalf("%s/unet: want one safetensors file, found %v", dir, files)
	}
	src, err := OpenFileSource("unet", files[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	u, err := LoadUNet(src.Source, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return u, cfg, src
}

// unetCall is one UNet input set read from refs.safetensors.
type unetCall struct {
	sample, context, textEmbeds []float32
	sampleShape, ctxShape       []int
	textShape                   []int
	timestep                    float64
	timeIDs                     [][6]float64
}

// readUNetCall reads the conditioning under prefix and the sample from
// sampleKey.
func readUNetCall(t *testing.T, r *testref.Refs, prefix, sampleKey string, timestep float64, sdxl bool) *unetCall {
	c := &unetCall{timestep: timestep}
	c.sample, c.sampleShape = r.Floats(t, sampleKey)
	c.context, c.ctxShape = r.Floats(t, prefix+".encoder_hidden_states")
	if sdxl {
		c.textEmbeds, c.textShape = r.Floats(t, prefix+".text_embeds")
		ids, shape := r.Floats(t, prefix+".time_ids")
		for i := range shape[0] {
			var row [6]float64
			for j := range row {
				row[j] = float64(ids[i*6+j])
			}
			c.timeIDs = append(c.timeIDs, row)
		}
	}
	return c
}

// run uploads the inputs, runs the UNet and returns its output; it also
// checks that every activation was freed (only weights and the output stay).
func (c *unetCall) run(t *testing.T, b engine.Backend, u *UNet) []float32 {
	t.Helper()
	rec := engine.NewRec(b)
	res := AllResident{B: b}
	for _, bl := range u.Blocks() {
		if err := res.Need(bl); err != nil {
			t.Fatal(err)
		}
	}
	before := b.MemStats().InUse
	x := rec.Write("sample", c.sample, c.sampleShape...)
	ctx := rec.Write("encoder_hidden_states", c.context, c.ctxShape...)
	var added *AddedCond
	if c.textEmbeds != nil {
		added = &AddedCond{TextEmbeds: rec.Write("text_embeds", c.textEmbeds, c.textShape...), TimeIDs: c.timeIDs}
	}
	out := u.Forward(rec, res, x, c.timestep, ctx, added)
	if err := rec.Err(); err != nil {
		t.Fatal(err)
	}
	got, err := b.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	rec.Free(x, ctx, out)
	if added != nil {
		rec.Free(added.TextEmbeds)
	}
	if left := b.MemStats().InUse - before; left != 0 {
		t.Errorf("%d device bytes still allocated after the call: an activation was not freed", left)
	}
	return got
}

// unetFp32Bound is the README's suggestion for an fp32 implementation against
// the fp32 reference: max |diff| <= 1e-4 (max|ref| + 1). The ref backend
// computes in float32 from the same F16 weights, so only summation order
// differs from torch.
func unetFp32Bound(want []float32) float64 {
	d := testref.Compare(want, want)
	return 1e-4 * (d.MaxRef + 1)
}

// unetFp16Bound is the reference's own fp16-vs-fp32 max |diff| for a UNet
// case (refs.json fp16_vs_fp32.unet): the error budget for a backend that
// rounds through F16 somewhere.
func unetFp16Bound(r *testref.Refs, id string) float64 {
	sec, _ := r.JSON["fp16_vs_fp32"].(map[string]any)
	u, _ := sec["unet"].(map[string]any)
	c, _ := u[id].(map[string]any)
	f, _ := c["max_abs"].(float64)
	return f
}

type unetBackend struct {
	name  string
	open  func(t *testing.T) engine.Backend
	bound func(r *testref.Refs, id string, want []float32) float64
}

// unetBackends are the backends the reference tests run on.
func unetBackends() []unetBackend {
	return []unetBackend{{
		name: "ref",
		open: func(t *testing.T) engine.Backend {
			b := ref.New()
			t.Cleanup(func() { b.Close() })
			return b
		},
		bound: func(_ *testref.Refs, _ string, want []float32) float64 { return unetFp32Bound(want) },
	}, {
		// The Vulkan kernels also accumulate in float32 (the Backend
		// contract), so the same fp32 bound applies.
		name:  "vk",
		open:  func(t *testing.T) engine.Backend { return openUNetVulkan(t) },
		bound: func(_ *testref.Refs, _ string, want []float32) float64 { return unetFp32Bound(want) },
	}}
}

func TestUNetMatchesReference(t *testing.T) {
	for _, be := range unetBackends() {
		t.Run(be.name, func(t *testing.T) {
			b := be.open(t)
			for _, model := range testref.Models {
				t.Run(model, func(t *testing.T) {
					r := testref.Open(t, model)
					u, cfg, _ := openTinyUNet(t, model)
					cases, _ := r.JSON["unet_cases"].([]any)
					if len(cases) == 0 {
						t.Fatal("refs.json has no unet_cases")
					}
					for _, cv := range cases {
						cs := cv.(map[string]any)
						id := cs["id"].(string)
						p := "unet." + id
						ts, _ := r.Floats(t, p+".timestep")
						call := readUNetCall(t, r, p, p+".sample", float64(ts[0]), cfg.AdditionEmbedType != nil)
						got := call.run(t, b, u)
						want, _ := r.Floats(t, p+".out")
						d := testref.Compare(got, want)
						bound := be.bound(r, id, want)
						t.Logf("%s: max|diff| %.3g (bound %.3g; reference fp16 vs fp32 %.3g), rel MSE %.3g",
							id, d.MaxAbs, bound, unetFp16Bound(r, id), d.RelMSE)
						if d.Mismatched || d.NonFinite > 0 || d.MaxAbs > bound {
							t.Errorf("%s: max|diff| %.3g > %.3g (non-finite %d, length mismatch %v)", id, d.MaxAbs, bound, d.NonFinite, d.Mismatched)
						}
					}
				})
			}
		})
	}
}

// TestUNetCFGBatch runs the first step of a 4-step CFG pipeline run: batch 2
// (negative, positive) in one call, at a 64x96 image (8x12 latent).
func TestUNetCFGBatch(t *testing.T) {
	const run = "run.s4_g7.5_64x96"
	for _, be := range unetBackends() {
		t.Run(be.name, func(t *testing.T) {
			b := be.open(t)
			for _, model := range testref.Models {
				t.Run(model, func(t *testing.T) {
					r := testref.Open(t, model)
					u, cfg, _ := openTinyUNet(t, model)
					ts := unetRunTimestep(t, r, "s4_g7.5_64x96", 0)
					call := readUNetCall(t, r, run+".unet", run+".step0.unet_in", ts, cfg.AdditionEmbedType != nil)
					if call.sampleShape[0] != 2 {
						t.Fatalf("step0.unet_in is %v, want batch 2", call.sampleShape)
					}
					got := call.run(t, b, u)
					want, _ := r.Floats(t, run+".step0.unet_out")
					d := testref.Compare(got, want)
					bound := be.bound(r, "", want)
					t.Logf("batch 2 at t=%g: max|diff| %.3g (bound %.3g), rel MSE %.3g", ts, d.MaxAbs, bound, d.RelMSE)
					if d.Mismatched || d.NonFinite > 0 || d.MaxAbs > bound {
						t.Errorf("max|diff| %.3g > %.3g (non-finite %d, length mismatch %v)", d.MaxAbs, bound, d.NonFinite, d.Mismatched)
					}
				})
			}
		})
	}
}

func unetRunTimestep(t *testing.T, r *testref.Refs, id string, step int) float64 {
	runs, _ := r.JSON["runs"].([]any)
	for _, rv := range runs {
		m := rv.(map[string]any)
		if m["id"] == id {
			return m["timesteps"].([]any)[step].(float64)
		}
	}
	t.Fatalf("refs.json has no run %q", id)
	return 0
}

// unetOrderResidency records the order in which blocks are needed.
type unetOrderResidency struct {
	AllResident
	order []*Block
}

func (o *unetOrderResidency) Need(b *Block) error {
	o.order = append(o.order, b)
	return o.AllResident.Need(b)
}

// TestUNetBlocks checks the offload contract: Forward needs every block
// exactly once, in the order Blocks lists them, and every weight belongs to
// a block.
func TestUNetBlocks(t *testing.T) {
	r := testref.Open(t, "tiny-sdxl-turbo")
	u, _, src := openTinyUNet(t, "tiny-sdxl-turbo")
	b := ref.New()
	defer b.Close()
	call := readUNetCall(t, r, "unet.lat6x10_t333.5", "unet.lat6x10_t333.5.sample", 333.5, true)
	res := &unetOrderResidency{AllResident: AllResident{B: b}}
	rec := engine.NewRec(b)
	x := rec.Write("sample", call.sample, call.sampleShape...)
	ctx := rec.Write("ctx", call.context, call.ctxShape...)
	te := rec.Write("text_embeds", call.textEmbeds, call.textShape...)
	out := u.Forward(rec, res, x, call.timestep, ctx, &AddedCond{TextEmbeds: te, TimeIDs: call.timeIDs})
	if err := rec.Err(); err != nil {
		t.Fatal(err)
	}
	rec.Free(out, x, ctx, te)
	blocks := u.Blocks()
	if len(res.order) != len(blocks) {
		t.Fatalf("Forward needed %d blocks, Blocks lists %d", len(res.order), len(blocks))
	}
	params := 0
	for i, bl := range blocks {
		if res.order[i] != bl {
			t.Fatalf("need #%d is %s, Blocks()[%d] is %s", i, res.order[i].Name, i, bl.Name)
		}
		params += len(bl.Params)
	}
	if n := len(src.Keys()); params != n {
		t.Errorf("blocks hold %d params, the checkpoint has %d tensors", params, n)
	}
	// SDXL's block 1 has two transformer layers per attention: each is its
	// own offload unit.
	names := map[string]bool{}
	for _, bl := range blocks {
		names[bl.Name] = true
	}
	for _, want := range []string{"down_blocks.1.attentions.0.transformer_blocks.1", "down_blocks.1.resnets.0",
		"up_blocks.0.upsamplers.0", "mid_block.attentions.0.proj_out"} {
		if !names[want] {
			t.Errorf("no block named %q", want)
		}
	}
}

// TestUNetAddedCondErrors: SDXL without added conditioning (and SD with it)
// fail with an error, not a panic.
func TestUNetAddedCondErrors(t *testing.T) {
	b := ref.New()
	defer b.Close()
	for _, tc := range []struct {
		model string
		added bool
		want  string
	}{{"tiny-sdxl-turbo", false, "text_embeds"}, {"tiny-sd-turbo", true, "no addition_embed_type"}} {
		u, cfg, _ := openTinyUNet(t, tc.model)
		rec := engine.NewRec(b)
		x := rec.Write("sample", make([]float32, 4*8*8), 1, 4, 8, 8)
		cd := cfg.CrossAttentionDim.At(0)
		ctx := rec.Write("ctx", make([]float32, 77*cd), 1, 77, cd)
		var added *AddedCond
		if tc.added {
			added = &AddedCond{TextEmbeds: x, TimeIDs: [][6]float64{{}}}
		}
		out := u.Forward(rec, AllResident{B: b}, x, 10, ctx, added)
		if out != nil || rec.Err() == nil || !strings.Contains(rec.Err().Error(), tc.want) {
			t.Errorf("%s: got out %v, error %v; want an error about %s", tc.model, out, rec.Err(), tc.want)
		}
	}
}

// TestUNetWrongConfig: a config that disagrees with the checkpoint fails at
// load with a *ShapeError naming the tensor.
func TestUNetWrongConfig(t *testing.T) {
	dir := testref.Dir(t, "tiny-sd-turbo")
	cfg := readUNetConfig(t, filepath.Join(dir, "unet", "config.json"))
	cfg.CrossAttentionDim = IntOrList{48}
	src, err := OpenFileSource("unet", filepath.Join(dir, "unet", "diffusion_pytorch_model.fp16.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	_, err = LoadUNet(src.Source, cfg)
	var se *ShapeError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want a *ShapeError", err)
	}
	if !strings.Contains(se.Key, "attn2.to_k.weight") || fmt.Sprint(se.Want) != "[32 48]" {
		t.Errorf("ShapeError %v: want the first attn2.to_k.weight, expected [32 48]", se)
	}
	t.Log(err)
}

// TestUNetRejectsUnsupported: configs that would compute something else are
// refused with an error naming the setting.
func TestUNetRejectsUnsupported(t *testing.T) {
	dir := testref.Dir(t, "tiny-sd-turbo")
	seven, classType := 7, "timestep"
	for _, tc := range []struct {
		name   string
		change func(c *UNetConfig)
	}{
		{"time_cond_proj_dim", func(c *UNetConfig) { c.TimeCondProjDim = &seven }},
		{"class_embed_type", func(c *UNetConfig) { c.ClassEmbedType = &classType }},
		{"num_attention_heads", func(c *UNetConfig) { c.NumAttentionHeads = IntOrList{2} }},
		{"down block type", func(c *UNetConfig) { c.DownBlockTypes = []string{"SimpleCrossAttnDownBlock2D", "DownBlock2D"} }},
		{"only_cross_attention", func(c *UNetConfig) { c.OnlyCrossAttention = json.RawMessage("[true, false]") }},
		{"attention_head_dim", func(c *UNetConfig) { c.AttentionHeadDim = IntOrList{2, 4, 8} }},
		{"resnet_time_scale_shift", func(c *UNetConfig) { c.ResnetTimeScaleShift = "scale_shift" }},
	} {
		cfg := readUNetConfig(t, filepath.Join(dir, "unet", "config.json"))
		tc.change(cfg)
		_, err := LoadUNet(NewSource("unet"), cfg)
		if err == nil || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s: got %v, want an error naming it", tc.name, err)
		}
	}
}

// TestUNetFLOPs checks the analytic count against the one measured for
// sd.cpp / the PyTorch profiler (notes/peers.md): 804 GFLOP for one
// full-size SD-Turbo call at a 64x64 latent.
func TestUNetFLOPs(t *testing.T) {
	u := loadFullSizeUNet(t, "stabilityai-sd-turbo")
	f := u.FLOPCount(64, 64, 1, 77)
	got := f.Total() / 1e9
	t.Logf("SD-Turbo UNet, 64x64 latent: %.1f GFLOP (conv %.1f, linear %.1f, attention %.1f), %.0f MB of F16 weights",
		got, f.Conv/1e9, f.Linear/1e9, f.Attention/1e9, float64(u.Bytes())/1e6)
	if u.FLOPs(64, 64, 1, 77) != f.Total() {
		t.Error("FLOPs and FLOPCount disagree")
	}
	if got < 790 || got > 820 {
		t.Errorf("SD-Turbo UNet FLOPs %.1f G, want about 804 G", got)
	}
}

// loadFullSizeUNet builds a full-size architecture from shared/real_configs
// with synthetic weights (nothing is generated until a block is uploaded).
func loadFullSizeUNet(t testing.TB, name string) *UNet {
	t.Helper()
	return loadFullSizeUNetQ(t, name, gguf.F16)
}

// loadFullSizeUNetQ is loadFullSizeUNet with the weights zimage's default
// rules quantize made blocks of typ (F16: none).
func loadFullSizeUNetQ(t testing.TB, name string, typ gguf.Type) *UNet {
	t.Helper()
	root, ok := testref.Root()
	path := filepath.Join(root, "..", "real_configs", "reconstructed", name, "unet", "config.json")
	if _, err := os.Stat(path); !ok || err != nil {
		t.Skipf("config %s not available", path)
	}
	src := NewSyntheticSource("unet", 1)
	if typ.Quantized() {
		quantizeSynthetic(src, "unet", QuantizeRules{Type: typ})
	}
	u, err := LoadUNet(src, readUNetConfig(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return u
}
