package testref

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/zimage/zimage/model/safetensors"
)

// LoRARefs is a model's refs_lora.safetensors plus refs_lora.json: LoRA
// files in loras/, single-module merges and whole runs with LoRAs.
type LoRARefs struct {
	Dir        string
	File       *safetensors.File
	Runs       []LoRARun            `json:"runs"`
	MergeCases []MergeCase          `json:"merge_cases"`
	LoRAs      map[string]LoRAFacts `json:"loras"`
}

// LoRARun is one whole run of refs_lora.json.
type LoRARun struct {
	ID             string         `json:"id"`
	PromptA1111    string         `json:"prompt_a1111"`
	PromptEncoded  string         `json:"prompt_encoded"`
	LoRAs          []LoRAUse      `json:"loras"`
	CLI            *string        `json:"cli"`
	NegativePrompt *string        `json:"negative_prompt"`
	Steps          int            `json:"num_inference_steps"`
	Guidance       float64        `json:"guidance_scale"`
	Height         int            `json:"height"`
	Width          int            `json:"width"`
	Seed           uint64         `json:"generator_seed"`
	PNG            string         `json:"png"`
	Hashes         string         `json:"a1111_lora_hashes"`
	Changed        map[string]int `json:"n_modules_changed"`
	RNGDraws       []struct {
		Name  string `json:"name"`
		Shape []int  `json:"shape"`
	} `json:"rng_draws"`
}

// LoRAUse is one LoRA of a run.
type LoRAUse struct {
	Name string  `json:"name"`
	File string  `json:"file"` // relative to the model folder
	Tag  string  `json:"tag"`
	TE   float64 `json:"te_multiplier"`
	UNet float64 `json:"unet_multiplier"`
}

// MergeCase is one single-module merge of refs_lora.json.
type MergeCase struct {
	ID          string `json:"id"`
	Run         string `json:"run"`
	Component   string `json:"component"`
	Module      string `json:"module"`
	Kind        string `json:"kind"`
	WeightShape []int  `json:"weight_shape"`
	LoRAs       []struct {
		Name       string   `json:"name"`
		Present    bool     `json:"present"`
		FileKey    string   `json:"file_key"`
		Rank       int      `json:"rank"`
		Alpha      *float64 `json:"alpha"`
		Scale      float64  `json:"scale"`
		Multiplier float64  `json:"multiplier"`
		Down       string   `json:"lora_down"`
		Up         string   `json:"lora_up"`
	} `json:"loras"`
}

// LoRAFacts describes one file of loras/.
type LoRAFacts struct {
	File        string                    `json:"file"`
	Format      string                    `json:"format"`
	DType       string                    `json:"dtype"`
	Rank        int                       `json:"rank"`
	Alpha       *float64                  `json:"alpha"`
	NTensors    int                       `json:"n_tensors"`
	NModules    int                       `json:"n_modules"`
	PerComp     map[string]map[string]int `json:"modules_per_component"`
	Metadata    map[string]string         `json:"metadata"`
	SHA256      string                    `json:"sha256"`
	AddnetHash  string                    `json:"addnet_hash"`
	ShortHash   string                    `json:"a1111_shorthash"`
	ModuleTable [][]any                   `json:"modules"` // key, component, module path, kind, rank, alpha, scale
}

// OpenLoRA opens a model's LoRA references, skipping the test when the
// reference models are absent; the file is closed when the test ends.
func OpenLoRA(t testing.TB, model string) *LoRARefs {
	t.Helper()
	dir := Dir(t, model)
	raw, err := os.ReadFile(filepath.Join(dir, "refs_lora.json"))
	if os.IsNotExist(err) {
		t.Skipf("%s has no refs_lora.json (older reference models)", dir)
	}
	if err != nil {
		t.Fatal(err)
	}
	r := &LoRARefs{Dir: dir}
	if err := json.Unmarshal(raw, r); err != nil {
		t.Fatalf("refs_lora.json: %v", err)
	}
	f, err := safetensors.Open(filepath.Join(dir, "refs_lora.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	r.File = f
	return r
}

// Floats returns a reference tensor as float32 values and its shape.
func (r *LoRARefs) Floats(t testing.TB, name string) ([]float32, []int) {
	t.Helper()
	st := r.File.Tensor(name)
	if st == nil {
		t.Fatalf("reference tensor %q not in %s/refs_lora.safetensors", name, r.Dir)
	}
	return Decode(t, st), st.Shape
}

// Run returns the run with the given id.
func (r *LoRARefs) Run(t testing.TB, id string) LoRARun {
	t.Helper()
	for _, rn := range r.Runs {
		if rn.ID == id {
			return rn
		}
	}
	t.Fatalf("%s: no LoRA run %q", r.Dir, id)
	return LoRARun{}
}
