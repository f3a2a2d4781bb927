package lora

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/safetensors"
)

// TestResolveReferenceTables: every key of every reference LoRA maps to
// the diffusers module refs_lora.json names (checked there with diffusers'
// own converter and, for SDXL's SGM names, convert_diffusers_to_original_sdxl),
// with the recorded rank and alpha.
func TestResolveReferenceTables(t *testing.T) {
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			r := testref.OpenLoRA(t, name)
			m := loadSD(t, r.Dir)
			for lname, facts := range r.LoRAs {
				f := openLoRA(t, r.Dir, facts.File)
				res, err := m.target.Resolve(f, false)
				require.NoError(t, err, lname)
				require.Len(t, res.Bindings, len(facts.ModuleTable), lname)
				byKey := map[string]Binding{}
				for _, bd := range res.Bindings {
					byKey[bd.Src.Key] = bd
				}
				for _, row := range facts.ModuleTable {
					key, comp, path, kind := row[0].(string), row[1].(string), row[2].(string), row[3].(string)
					bd, ok := byKey[key]
					require.True(t, ok, "%s: %s not bound", lname, key)
					assert.Equal(t, comp, bd.Component, key)
					assert.Equal(t, path, bd.Module.Path, key)
					assert.Equal(t, int(row[4].(float64)), bd.Src.Rank(), key)
					if row[5] == nil {
						assert.False(t, bd.Src.HasAlpha, key)
					} else {
						assert.Equal(t, row[5].(float64), bd.Src.Alpha, key)
					}
					assert.InDelta(t, row[6].(float64), bd.Src.Scale(), 1e-12, key)
					// The kind of the model's module: 1x1-conv projections are
					// Linears here but 4-D in the model and in the file.
					got := "linear"
					if k := bd.Module.Kernel(); k > 0 {
						got = strings.Replace("convKxK", "K", string(rune('0'+k)), 2)
					} else if len(bd.Module.Weight().Shape) == 4 {
						got = "conv1x1"
					}
					assert.Equal(t, kind, got, key)
				}
			}
		})
	}
}

// TestInspect: what `zimage info` says about each reference LoRA.
func TestInspect(t *testing.T) {
	arch := map[string]model.Arch{"tiny-sd-turbo": model.SD2, "tiny-sd15": model.SD1, "tiny-sdxl-turbo": model.SDXL}
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			r := testref.OpenLoRA(t, name)
			for lname, facts := range r.LoRAs {
				f := openLoRA(t, r.Dir, facts.File)
				in, err := Inspect(f)
				require.NoError(t, err, lname)
				assert.Equal(t, lname, in.Name)
				assert.Equal(t, facts.NModules, in.Modules, lname)
				assert.Equal(t, facts.NTensors, in.Tensors, lname)
				assert.Equal(t, []int{facts.Rank}, in.Ranks[len(in.Ranks)-1:], lname)
				assert.Equal(t, facts.ShortHash, in.ShortHash, lname)
				assert.Equal(t, map[safetensors.DType]int{safetensors.DType(facts.DType): facts.NTensors}, in.DTypes, lname)
				kinds := map[string]map[string]int{}
				for _, c := range in.Components {
					kinds[c.Name] = c.Kinds
					assert.NotContains(t, c.Targets, "other", "%s %s: %v", lname, c.Name, c.Targets)
				}
				assert.Equal(t, facts.PerComp, kinds, lname)
				if strings.HasPrefix(facts.Format, "kohya") {
					assert.Equal(t, Kohya, in.Format, lname)
					assert.Equal(t, arch[name], in.Arch, "%s: %s", lname, in.ArchFrom)
				} else {
					assert.Equal(t, PEFT, in.Format, lname)
					if name == "tiny-sdxl-turbo" {
						assert.Equal(t, model.SDXL, in.Arch, in.ArchFrom)
					}
				}
				if facts.Alpha == nil {
					assert.Equal(t, in.Modules, in.NoAlpha, lname)
				}
				s := in.String()
				assert.Contains(t, s, in.ShortHash)
				assert.Contains(t, s, "<lora:"+lname+">")
				t.Logf("%s", s)
				st, err := safetensors.Open(filepath.Join(r.Dir, facts.File))
				require.NoError(t, err)
				assert.True(t, IsLoRA(st.Names()))
				st.Close()
			}
		})
	}
}
