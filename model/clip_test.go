package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
)

// cvBackend is a backend the CLIP and VAE tests run on; open returns the
// backend and what to do when the test ends.
type cvBackend struct {
	name string
	open func(t testing.TB) (engine.Backend, func())
}

// cvBackends lists the backends to test: the pure-Go reference, and
// Vulkan when a device is present (one device per test binary: opening
// one and compiling its pipelines is the slow part).
var cvBackends = []cvBackend{
	{"ref", func(t testing.TB) (engine.Backend, func()) {
		b := ref.New()
		return b, func() { b.Close() }
	}},
	{"vk", func(t testing.TB) (engine.Backend, func()) {
		cvVulkanOnce.Do(func() { cvVulkan, cvVulkanErr = vk.Open(vk.DefaultOptions()) })
		if errors.Is(cvVulkanErr, vk.ErrNoDevice) {
			t.Skip("no Vulkan device")
		}
		if cvVulkanErr != nil {
			t.Fatal(cvVulkanErr)
		}
		// The device outlives the test: free what the test left behind.
		before := cvVulkan.MemStats().InUse
		return cvVulkan, func() {
			if n := cvVulkan.MemStats().InUse; n != before {
				t.Logf("vk: %d bytes still allocated after the test (weights are freed with the device)", n-before)
			}
		}
	}},
}

var (
	cvVulkanOnce sync.Once
	cvVulkan     *vk.Device
	cvVulkanErr  error
)

// forEachBackend runs f once per backend as a subtest, with a residency
// on that backend whose uploads are evicted when the subtest ends (the
// networks are shared between backends).
func forEachBackend(t *testing.T, f func(t *testing.T, b engine.Backend, res Residency)) {
	for _, cb := range cvBackends {
		t.Run(cb.name, func(t *testing.T) {
			b, done := cb.open(t)
			t.Cleanup(done)
			res := &evictingResidency{b: b}
			t.Cleanup(res.evictAll)
			f(t, b, res)
		})
	}
}

// evictingResidency is AllResident that remembers its blocks to evict them.
type evictingResidency struct {
	b      engine.Backend
	blocks []*Block
}

func (r *evictingResidency) Need(bl *Block) error {
	if !bl.Resident() {
		r.blocks = append(r.blocks, bl)
	}
	return bl.Upload(r.b)
}

func (r *evictingResidency) evictAll() {
	for _, bl := range r.blocks {
		bl.Evict(r.b)
	}
}

// openComponent maps the one safetensors file of a test model's component
// and reads its config.json into cfg.
func openComponent(t testing.TB, model, component string, cfg any) *FileSource {
	t.Helper()
	dir := filepath.Join(testref.Dir(t, model), component)
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, cfg); err != nil {
		t.Fatalf("%s/config.json: %v", component, err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if len(files) != 1 {
		t.Fatalf("%s: want one safetensors file, found %v", dir, files)
	}
	src, err := OpenFileSource(component, files[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func loadTestCLIP(t testing.TB, model, component string) *CLIPText {
	t.Helper()
	var cfg CLIPTextConfig
	src := openComponent(t, model, component, &cfg)
	m, err := LoadCLIPText(src.Source, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Everything but the (unused) position_ids buffer must be consumed.
	for _, k := range src.Unused() {
		if k != "text_model.embeddings.position_ids" {
			t.Errorf("%s/%s: tensor %q not used by the text encoder", model, component, k)
		}
	}
	return m
}

// refIDs returns prompt i's reference token ids [1, 77] as one row.
func refIDs(t testing.TB, r *testref.Refs, tokenizer string, i int) [][]int32 {
	ids, _ := r.Ints(t, fmt.Sprintf("tok.%s.%d.input_ids", tokenizer, i))
	row := make([]int32, len(ids))
	for j, id := range ids {
		row[j] = int32(id)
	}
	return [][]int32{row}
}

// checkClose compares a device tensor with a reference tensor. The bound
// is the README's suggestion for a float32 implementation, 1e-4 *
// (max|ref| + 1): we compute in float32 from the same F16 weights the
// reference used, so only summation order differs (observed errors are
// ~1e-6). It is checked to be tighter than the reference's own fp16 vs fp32
// difference (refs.json fp16_vs_fp32), so a float16-quality result would
// fail. Returns the max |diff|.
func checkClose(t *testing.T, b engine.Backend, got *engine.Tensor, r *testref.Refs, name string, fp16 float64) float64 {
	t.Helper()
	want, shape := r.Floats(t, name)
	if got == nil {
		t.Fatalf("%s: no output", name)
	}
	if !got.Shape.Equal(shape) {
		t.Fatalf("%s: shape %v, want %v", name, got.Shape, shape)
	}
	data, err := b.Read(got)
	if err != nil {
		t.Fatal(err)
	}
	d := testref.Compare(data, want)
	bound := 1e-4 * (d.MaxRef + 1)
	if fp16 > 0 && bound >= fp16 {
		t.Errorf("%s: bound %.3g is not tighter than the fp16 difference %.3g", name, bound, fp16)
	}
	if d.NonFinite > 0 || d.MaxAbs > bound {
		t.Errorf("%s: max |diff| %.3g (bound %.3g, max |ref| %.3g), %d non-finite", name, d.MaxAbs, bound, d.MaxRef, d.NonFinite)
	}
	t.Logf("%s: max |diff| %.3g (bound %.3g, fp16 vs fp32 %.3g)", name, d.MaxAbs, bound, fp16)
	return d.MaxAbs
}

func numPrompts(r *testref.Refs) int {
	p, _ := r.JSON["prompts"].([]any)
	return len(p)
}

// TestCLIPTextSD checks prompt_embeds (last_hidden_state), pooler_output
// and hidden_states[-2] of the SD text encoders for every reference prompt.
func TestCLIPTextSD(t *testing.T) {
	for _, model := range []string{"tiny-sd-turbo", "tiny-sd15"} {
		t.Run(model, func(t *testing.T) {
			r := testref.Open(t, model)
			m := loadTestCLIP(t, model, "text_encoder")
			forEachBackend(t, func(t *testing.T, b engine.Backend, res Residency) {
				rec := engine.NewRec(b)
				for i := range numPrompts(r) {
					out := m.Forward(rec, res, refIDs(t, r, "tokenizer", i))
					if err := rec.Err(); err != nil {
						t.Fatal(err)
					}
					if out.TextEmbeds != nil {
						t.Errorf("CLIPTextModel returned text embeds")
					}
					for _, c := range []struct {
						got  *engine.Tensor
						name string
					}{{out.LastHidden, "prompt_embeds"}, {out.Pooled, "pooler_output"}, {out.Penultimate, "penultimate"}} {
						name := fmt.Sprintf("te.%d.%s", i, c.name)
						checkClose(t, b, c.got, r, name, r.Fp16Bound(name))
					}
					out.Free(rec)
				}
			})
		})
	}
}

// TestCLIPTextSDXL checks both SDXL encoders: penultimate states of each,
// the projected pooled embedding of the second, last_hidden_state of the
// first.
func TestCLIPTextSDXL(t *testing.T) {
	const model = "tiny-sdxl-turbo"
	r := testref.Open(t, model)
	te1 := loadTestCLIP(t, model, "text_encoder")
	te2 := loadTestCLIP(t, model, "text_encoder_2")
	if te1.TextProjection != nil || te2.TextProjection == nil {
		t.Fatalf("projection: te1 %v, te2 %v; want only te2", te1.TextProjection != nil, te2.TextProjection != nil)
	}
	forEachBackend(t, func(t *testing.T, b engine.Backend, res Residency) {
		rec := engine.NewRec(b)
		for i := range numPrompts(r) {
			o1 := te1.Forward(rec, res, refIDs(t, r, "tokenizer", i))
			o2 := te2.Encode(rec, res, refIDs(t, r, "tokenizer_2", i), CLIPWant{Penultimate: true, TextEmbeds: true})
			if err := rec.Err(); err != nil {
				t.Fatal(err)
			}
			if o2.LastHidden != nil || o2.Pooled != nil {
				t.Errorf("Encode returned outputs that were not asked for")
			}
			for _, c := range []struct {
				got  *engine.Tensor
				name string
			}{{o1.Penultimate, "te1.penultimate"}, {o1.LastHidden, "te1.last_hidden_state"},
				{o2.Penultimate, "te2.penultimate"}, {o2.TextEmbeds, "te2.text_embeds"}} {
				name := fmt.Sprintf("te.%d.%s", i, c.name)
				checkClose(t, b, c.got, r, name, r.Fp16Bound(name))
			}
			o1.Free(rec)
			o2.Free(rec)
		}
	})
}

// TestCLIPTextPenultimateOnly checks that asking only for hidden_states[-2]
// skips the last layer (it is never made resident) and gives the same
// values, and that nothing is left allocated afterwards.
func TestCLIPTextPenultimateOnly(t *testing.T) {
	const model = "tiny-sdxl-turbo"
	r := testref.Open(t, model)
	m := loadTestCLIP(t, model, "text_encoder")
	b := ref.New()
	defer b.Close()
	rec := engine.NewRec(b)
	var asked []string
	res := residencyFunc(func(bl *Block) error {
		asked = append(asked, bl.Name)
		return bl.Upload(b)
	})
	before := b.MemStats().InUse
	out := m.Encode(rec, res, refIDs(t, r, "tokenizer", 0), CLIPWant{Penultimate: true})
	if err := rec.Err(); err != nil {
		t.Fatal(err)
	}
	checkClose(t, b, out.Penultimate, r, "te.0.te1.penultimate", r.Fp16Bound("te.0.te1.penultimate"))
	last := m.Blocks()[len(m.Layers)].Name
	for _, n := range asked {
		if n == last || n == "text_model.final_layer_norm" {
			t.Errorf("block %s was made resident but is not needed for hidden_states[-2]", n)
		}
	}
	out.Free(rec)
	var weights int64
	for _, bl := range m.Blocks() {
		if bl.Resident() {
			weights += bl.Bytes()
		}
	}
	if got := b.MemStats().InUse - before - weights; got != 0 {
		t.Errorf("%d bytes of activations still allocated after Free", got)
	}
}

type residencyFunc func(*Block) error

func (f residencyFunc) Need(b *Block) error { return f(b) }

// TestCLIPTextErrors checks bad ids and bad checkpoints give clear errors.
func TestCLIPTextErrors(t *testing.T) {
	const model = "tiny-sd15"
	m := loadTestCLIP(t, model, "text_encoder")
	b := ref.New()
	defer b.Close()
	for _, ids := range [][][]int32{nil, {{1, 2}, {1}}, {{49408}}, {{-1}}, {make([]int32, 78)}} {
		rec := engine.NewRec(b)
		if out := m.Forward(rec, AllResident{B: b}, ids); out != nil || rec.Err() == nil {
			t.Errorf("ids %v: no error", ids)
		} else {
			t.Logf("ids of %d rows: %v", len(ids), rec.Err())
		}
	}
	rec := engine.NewRec(b)
	m.Encode(rec, AllResident{B: b}, [][]int32{{49406, 49407}}, CLIPWant{TextEmbeds: true})
	if rec.Err() == nil {
		t.Errorf("text embeds from a model without projection: no error")
	}

	// A config that disagrees with the checkpoint names the tensor.
	var cfg CLIPTextConfig
	src := openComponent(t, model, "text_encoder", &cfg)
	cfg.IntermediateSize++
	_, err := LoadCLIPText(src.Source, &cfg)
	var se *ShapeError
	if !errors.As(err, &se) || se.Key != "text_model.encoder.layers.0.mlp.fc1.weight" {
		t.Errorf("wrong intermediate_size: got %v, want a ShapeError on mlp.fc1.weight", err)
	}
	cfg.IntermediateSize--
	cfg.NumHiddenLayers++
	_, err = LoadCLIPText(src.Source, &cfg)
	var me *MissingTensorError
	if !errors.As(err, &me) {
		t.Errorf("extra layer: got %v, want a MissingTensorError", err)
	}
	cfg.NumHiddenLayers--
	cfg.HiddenAct = "relu6"
	if _, err = LoadCLIPText(src.Source, &cfg); err == nil {
		t.Errorf("hidden_act relu6: no error")
	}
}
