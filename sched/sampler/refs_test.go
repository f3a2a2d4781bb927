package sampler

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"testing"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
)

// alphasOf exposes a scheduler's alphas_cumprod table to the tests.
func alphasOf(s Scheduler) []float32 {
	switch v := s.(type) {
	case *euler:
		return v.t.ac
	case *ddim:
		return v.ac
	case *pndm:
		return v.ac
	case *lcm:
		return v.ac
	case *dpm:
		return v.t.ac
	}
	return nil
}

// refConfig turns a refs.json scheduler config object into the model's
// struct, through JSON as the loader does.
func refConfig(t *testing.T, raw any) *model.SchedulerConfig {
	t.Helper()
	b, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	var c model.SchedulerConfig
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("scheduler config: %v", err)
	}
	return &c
}

type refSched struct {
	name   string
	config map[string]any
	steps  map[string]any
}

func refSchedulers(t *testing.T, r *testref.Refs) []refSched {
	t.Helper()
	sec, ok := r.JSON["schedulers"].(map[string]any)
	if !ok || len(sec) == 0 {
		t.Fatalf("%s: refs.json has no \"schedulers\"", r.Dir)
	}
	var out []refSched
	for name, v := range sec {
		m := v.(map[string]any)
		cfg, _ := m["config"].(map[string]any)
		steps, _ := m["steps"].(map[string]any)
		out = append(out, refSched{name, cfg, steps})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// TestReferenceTables: alphas_cumprod bit for bit, timesteps exactly,
// init_noise_sigma exactly and sigmas within 1e-6 relative (the README's
// bound) for every listed config and step count of the three models.
func TestReferenceTables(t *testing.T) {
	for _, m := range testref.Models {
		r := testref.Open(t, m)
		for _, rs := range refSchedulers(t, r) {
			t.Run(m+"/"+rs.name, func(t *testing.T) {
				s, err := New("", refConfig(t, rs.config), Options{})
				if err != nil {
					t.Fatal(err)
				}
				want, _ := r.Floats(t, "sched."+rs.name+".alphas_cumprod")
				got := alphasOf(s)
				if len(got) != len(want) {
					t.Fatalf("alphas_cumprod: %d values, want %d", len(got), len(want))
				}
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("alphas_cumprod[%d] = %.9g, want %.9g", i, got[i], want[i])
					}
				}
				ns := make([]int, 0, len(rs.steps))
				for k := range rs.steps {
					n, err := strconv.Atoi(k)
					if err != nil {
						t.Fatalf("step count %q: %v", k, err)
					}
					ns = append(ns, n)
				}
				sort.Ints(ns)
				if len(ns) == 0 {
					t.Fatal("no step counts listed")
				}
				for _, n := range ns {
					checkTable(t, r, s, rs, n)
				}
			})
		}
	}
}

func checkTable(t *testing.T, r *testref.Refs, s Scheduler, rs refSched, n int) {
	t.Helper()
	if err := s.SetTimesteps(n); err != nil {
		t.Fatalf("n=%d: %v", n, err)
	}
	prefix := fmt.Sprintf("sched.%s.%d.", rs.name, n)
	var want []float64
	if st := r.File.Tensor(prefix + "timesteps"); st != nil && st.DType == "I64" {
		iv, _ := r.Ints(t, prefix+"timesteps")
		for _, v := range iv {
			want = append(want, float64(v))
		}
	} else {
		fv, _ := r.Floats(t, prefix+"timesteps")
		want = widen(fv)
	}
	got := s.Timesteps()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("n=%d timesteps %v, want %v", n, got, want)
	}
	ws := rs.steps[strconv.Itoa(n)].(map[string]any)
	if init, ok := ws["init_noise_sigma"].(float64); ok && s.InitNoiseSigma() != init {
		t.Errorf("n=%d init_noise_sigma %.17g, want %.17g", n, s.InitNoiseSigma(), init)
	}
	if r.Has(prefix + "sigmas") {
		wsig, _ := r.Floats(t, prefix+"sigmas")
		gsig := s.Sigmas()
		if len(gsig) != len(wsig) {
			t.Fatalf("n=%d: %d sigmas, want %d", n, len(gsig), len(wsig))
		}
		for i := range wsig {
			w := float64(wsig[i])
			if math.Abs(gsig[i]-w) > 1e-6*math.Abs(w) {
				t.Errorf("n=%d sigma[%d] = %.9g, want %.9g", n, i, gsig[i], w)
			}
		}
	} else if s.Sigmas() != nil && (rs.config["_class_name"] == "PNDMScheduler" || rs.config["_class_name"] == "DDIMScheduler") {
		t.Errorf("n=%d: %s has sigmas", n, s.Name())
	}
}

// TestReferenceRuns replays every whole-pipeline run of the refs through
// the model's own scheduler: from the reference's previous latents and
// guided model output, Step must give the reference's next latents, and
// ScaleModelInput the UNet input. Each step starts from the reference
// latents, so errors do not compound.
//
// Tolerance: the reference ran these float32 operations in torch; the
// scheduler repeats them in the same order, so we expect (and measure)
// agreement to the last bit. The bound allows 1e-6 of the tensor's scale,
// the brief's requirement for float32 results of the scheduler maths.
func TestReferenceRuns(t *testing.T) {
	for _, m := range testref.Models {
		r := testref.Open(t, m)
		sec, _ := r.JSON["schedulers"].(map[string]any)
		own, ok := sec["own"].(map[string]any)
		if !ok {
			t.Fatalf("%s: no \"own\" scheduler in refs.json", m)
		}
		runs, _ := r.JSON["runs"].([]any)
		if len(runs) == 0 {
			t.Fatalf("%s: no runs in refs.json", m)
		}
		for _, rv := range runs {
			run := rv.(map[string]any)
			id := run["id"].(string)
			t.Run(m+"/"+id, func(t *testing.T) {
				s, err := New("", refConfig(t, own["config"]), Options{})
				if err != nil {
					t.Fatal(err)
				}
				if err := s.SetTimesteps(int(run["num_inference_steps"].(float64))); err != nil {
					t.Fatal(err)
				}
				if got, want := s.InitNoiseSigma(), run["init_noise_sigma"].(float64); got != want {
					t.Errorf("init_noise_sigma %.17g, want %.17g", got, want)
				}
				p := "run." + id + "."
				lat, _ := r.Floats(t, p+"latents_init")
				sigma := float32(s.InitNoiseSigma())
				for i := range lat {
					lat[i] *= sigma
				}
				exact, total := 0, 0
				for k := range s.Timesteps() {
					sp := fmt.Sprintf("%sstep%d.", p, k)
					// UNet input: every batch row is the scaled latents.
					in, _ := r.Floats(t, sp+"unet_in")
					if len(in)%len(lat) != 0 {
						t.Fatalf("step %d: unet_in has %d values for %d latents", k, len(in), len(lat))
					}
					scaled := make([]float32, 0, len(in))
					for range len(in) / len(lat) {
						scaled = append(scaled, lat...)
					}
					s.ScaleModelInput(scaled, k)
					e, n := compareScaled(t, fmt.Sprintf("step %d unet_in", k), scaled, in)
					exact, total = exact+e, total+n

					mo, _ := r.Floats(t, sp+"model_output")
					var noise []float32
					if s.NeedsNoise(k) {
						noise, _ = r.Floats(t, fmt.Sprintf("%snoise.%d", p, k))
					}
					if err := s.Step(mo, lat, k, noise); err != nil {
						t.Fatal(err)
					}
					want, _ := r.Floats(t, sp+"latents")
					e, n = compareScaled(t, fmt.Sprintf("step %d latents", k), lat, want)
					exact, total = exact+e, total+n
					lat = want // next step from the reference
				}
				t.Logf("%d of %d values bit-identical", exact, total)
			})
		}
	}
}

// compareScaled checks got against want within 1e-6 of want's largest
// magnitude and returns how many values are bit-identical.
func compareScaled(t *testing.T, what string, got, want []float32) (exact, n int) {
	t.Helper()
	d := testref.Compare(got, want)
	if d.Mismatched || d.NonFinite > 0 {
		t.Fatalf("%s: %d values, want %d; %d non-finite", what, len(got), len(want), d.NonFinite)
	}
	if d.MaxAbs > 1e-6*d.MaxRef {
		t.Errorf("%s: max |diff| %.3g on values up to %.3g (bound 1e-6 relative)", what, d.MaxAbs, d.MaxRef)
	}
	for i := range got {
		if math.Float32bits(got[i]) == math.Float32bits(want[i]) {
			exact++
		}
	}
	return exact, len(got)
}
