package sampler

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
)

// i2iRun is the part of a refs_img2img.json img2img or inpaint run that the
// schedule depends on.
type i2iRun struct {
	ID       string    `json:"id"`
	Steps    int       `json:"num_inference_steps"`
	Strength float64   `json:"strength"`
	Full     []float64 `json:"scheduler_timesteps_full"`
}

// timesteps reads a reference timestep tensor, int64 (PNDM) or float32.
func timesteps(t *testing.T, r *testref.Refs, name string) []float64 {
	t.Helper()
	if st := r.File.Tensor(name); st != nil && st.DType.Size() == 8 {
		v, _ := r.Ints(t, name)
		out := make([]float64, len(v))
		for i, x := range v {
			out[i] = float64(x)
		}
		return out
	}
	v, _ := r.Floats(t, name)
	return widen(v)
}

func i2iRuns(t *testing.T, r *testref.Refs, section string) []i2iRun {
	t.Helper()
	b, err := json.Marshal(r.JSON[section])
	require.NoError(t, err)
	var out []i2iRun
	require.NoError(t, json.Unmarshal(b, &out))
	require.NotEmpty(t, out, "%s: no %s runs", r.Dir, section)
	return out
}

func ownScheduler(t *testing.T, dir string) Scheduler {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "scheduler", "scheduler_config.json"))
	require.NoError(t, err)
	var c model.SchedulerConfig
	require.NoError(t, json.Unmarshal(raw, &c))
	s, err := New("", &c, Options{})
	require.NoError(t, err)
	return s
}

// TestImg2ImgReference: for every img2img and inpainting run of the three
// SD models, the timesteps kept for the strength (PNDM's duplicate
// included), the noised start latents (add_noise of the encoded image) and
// inpainting's per-step re-noised image latents, against diffusers 0.30.
// Bound: 1e-6 * (max|ref| + 1), float32 rounding of the same operations.
func TestImg2ImgReference(t *testing.T) {
	for _, m := range testref.Models {
		t.Run(m, func(t *testing.T) {
			r := testref.OpenSet(t, m, "refs_img2img")
			for _, sec := range []struct{ json, prefix, clean string }{{"img2img", "i2i", "init_latents"}, {"inpaint", "inp", "image_latents"}} {
				for _, rn := range i2iRuns(t, r, sec.json) {
					key := sec.prefix + "." + rn.ID + "."
					s := ownScheduler(t, r.Dir)
					require.NoError(t, s.SetTimesteps(rn.Steps))
					assert.Equal(t, rn.Full, s.Timesteps(), key+"scheduler_timesteps_full")
					start, err := Img2ImgStart(rn.Steps, rn.Strength)
					require.NoError(t, err)
					used := timesteps(t, r, key+"timesteps")
					assert.Equal(t, used, s.Timesteps()[start:], key+"timesteps")
					require.NoError(t, s.Begin(start))

					clean, _ := r.Floats(t, key+sec.clean)
					noise, _ := r.Floats(t, key+"noise")
					check := func(name string, step int) {
						want, _ := r.Floats(t, key+name)
						got := make([]float32, len(clean))
						require.NoError(t, s.AddNoise(got, clean, noise, step))
						d := testref.Compare(got, want)
						assert.LessOrEqual(t, d.MaxAbs, 1e-6*(d.MaxRef+1), "%s%s: %+v", key, name, d)
					}
					if sec.prefix == "i2i" || rn.Strength < 1 {
						check("latents_start", start)
					}
					if sec.prefix == "inp" {
						for k := range len(used) - 1 {
							check(fmt.Sprintf("step%d.init_latents_proper", k), start+k+1)
						}
					}
				}
			}
		})
	}
}

// TestImg2ImgStart: diffusers' strength cut for SD (int(steps * strength))
// and flow-matching (int(steps - steps * strength)) pipelines, and the
// usage errors for a strength outside (0, 1] or one that keeps no step.
func TestImg2ImgStart(t *testing.T) {
	for _, c := range []struct {
		steps     int
		strength  float64
		sd, flow  int
		noSDSteps bool
	}{
		{2, 0.5, 1, 1, false}, {4, 0.75, 1, 1, false}, {4, 0.3, 3, 2, false}, {1, 1, 0, 0, false},
		{9, 0.6, 4, 3, false}, {10, 0.07, 0, 9, true}, {3, 1, 0, 0, false},
	} {
		sd, err := Img2ImgStart(c.steps, c.strength)
		if c.noSDSteps {
			assert.ErrorContains(t, err, "runs no step", "%d steps at %v", c.steps, c.strength)
		} else if assert.NoError(t, err) {
			assert.Equal(t, c.sd, sd, "SD: %d steps at %v", c.steps, c.strength)
		}
		flow, err := FlowImg2ImgStart(c.steps, c.strength)
		if assert.NoError(t, err) {
			assert.Equal(t, c.flow, flow, "flow: %d steps at %v", c.steps, c.strength)
		}
	}
	for _, s := range []float64{0, -0.5, 1.01, math.NaN()} {
		_, err := Img2ImgStart(4, s)
		assert.ErrorContains(t, err, "want more than 0 and at most 1")
		_, err = FlowImg2ImgStart(4, s)
		assert.Error(t, err)
	}
}

// TestBegin: every scheduler runs the tail of its list after Begin, and
// the multistep ones restart their history there: a run begun at step 2
// equals a fresh first-order start (DPM-Solver's first update and PNDM's
// warm-up pair fall on the first two steps run).
func TestBegin(t *testing.T) {
	for _, name := range sdNames() {
		t.Run(name, func(t *testing.T) {
			cfg := &model.SchedulerConfig{BetaSchedule: "scaled_linear", BetaStart: 0.00085, BetaEnd: 0.012}
			s, err := New(name, cfg, Options{})
			require.NoError(t, err)
			require.NoError(t, s.SetTimesteps(4))
			n := len(s.Timesteps())
			x := []float32{0.5, -1, 2}
			out := []float32{0.1, 0.2, -0.3}
			noise := []float32{1, -1, 0.5}
			require.NoError(t, s.Begin(2))
			for step := 2; step < n; step++ {
				var nz []float32
				if s.NeedsNoise(step) {
					nz = noise
				}
				require.NoError(t, s.Step(out, x, step, nz), "step %d", step)
			}
			for _, v := range x {
				assert.False(t, math.IsNaN(float64(v)) || math.IsInf(float64(v), 0))
			}
			assert.Error(t, s.Begin(n), "Begin past the end")
			assert.Error(t, s.AddNoise(x, x, noise, n), "AddNoise past the end")
			assert.Error(t, s.AddNoise(x, x, noise[:2], 0), "AddNoise with short noise")
		})
	}
	s, err := New("pndm", nil, Options{})
	require.NoError(t, err)
	require.NoError(t, s.SetTimesteps(4))
	require.NoError(t, s.Begin(2))
	assert.ErrorContains(t, s.Step([]float32{1}, []float32{1}, 1, nil), "in order")
}
