package sampler

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/zimage/zimage/model"
)

// sdConfig is Stable Diffusion's training schedule with the given spacing.
func sdConfig(class, spacing, prediction string) *model.SchedulerConfig {
	return &model.SchedulerConfig{
		ClassName:         class,
		NumTrainTimesteps: 1000,
		BetaStart:         0.00085,
		BetaEnd:           0.012,
		BetaSchedule:      "scaled_linear",
		PredictionType:    prediction,
		TimestepSpacing:   spacing,
		StepsOffset:       1,
		SkipPRKSteps:      true,
	}
}

func TestNames(t *testing.T) {
	want := []string{"euler", "euler_a", "pndm", "ddim", "lcm", "dpmpp_2m", "flowmatch_euler"}
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	for _, c := range []struct{ in, want string }{
		{"EULER", "euler"}, {"EulerDiscreteScheduler", "euler"},
		{"eulerancestraldiscretescheduler", "euler_a"}, {"Euler_A", "euler_a"},
		{"PNDMScheduler", "pndm"}, {"DDIMScheduler", "ddim"}, {"LCMScheduler", "lcm"},
		{"DPMSolverMultistepScheduler", "dpmpp_2m"}, {"dpm++2m", "dpmpp_2m"},
	} {
		s, err := New(c.in, sdConfig("", "", ""), Options{})
		if err != nil {
			t.Errorf("New(%q): %v", c.in, err)
			continue
		}
		if s.Name() != c.want {
			t.Errorf("New(%q).Name() = %q, want %q", c.in, s.Name(), c.want)
		}
	}
	// An empty name takes the config's class.
	s, err := New("", sdConfig("PNDMScheduler", "", ""), Options{})
	if err != nil || s.Name() != "pndm" {
		t.Errorf(`New("", PNDM config) = %v, %v`, s, err)
	}
}

func TestErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  *model.SchedulerConfig
		opt  Options
		want string
	}{
		{"", sdConfig("", "", ""), Options{}, "no _class_name"},
		{"heun", sdConfig("", "", ""), Options{}, "unknown scheduler"},
		{"euler", sdConfig("", "sideways", ""), Options{}, "timestep_spacing"},
		{"euler", sdConfig("", "", "flow"), Options{}, "prediction_type"},
		{"euler_a", sdConfig("", "", "sample"), Options{}, "sample"},
		{"pndm", sdConfig("", "", "sample"), Options{}, "sample"},
		{"ddim", sdConfig("", "", ""), Options{Karras: true}, "Karras"},
		{"euler", &model.SchedulerConfig{BetaSchedule: "cubic"}, Options{}, "beta_schedule"},
		{"euler", &model.SchedulerConfig{TrainedBetas: []float64{0.1, 0.2}}, Options{}, "trained_betas"},
		{"dpmpp_2m", &model.SchedulerConfig{AlgorithmType: "sde-dpmsolver++"}, Options{}, "algorithm_type"},
		{"", &model.SchedulerConfig{ClassName: "DPMSolverMultistepScheduler", SolverOrder: 3}, Options{}, "solver_order"},
	} {
		_, err := New(c.name, c.cfg, c.opt)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%q, %+v): error %v, want one mentioning %q", c.name, *c.cfg, err, c.want)
		}
	}
	s, err := New("dpmpp_2m", nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Step(make([]float32, 4), make([]float32, 4), 0, nil); err == nil {
		t.Error("Step before SetTimesteps: no error")
	}
	if err := s.SetTimesteps(0); err == nil {
		t.Error("SetTimesteps(0): no error")
	}
	if err := s.SetTimesteps(1001); err == nil {
		t.Error("SetTimesteps(1001): no error")
	}
	if err := s.SetTimesteps(4); err != nil {
		t.Fatal(err)
	}
	if err := s.Step(make([]float32, 3), make([]float32, 4), 0, nil); err == nil {
		t.Error("Step with mismatched lengths: no error")
	}
	if err := s.Step(make([]float32, 4), make([]float32, 4), 1, nil); err == nil {
		t.Error("multistep Step out of order: no error")
	}
	if err := s.Step(make([]float32, 4), make([]float32, 4), 4, nil); err == nil {
		t.Error("Step past the run: no error")
	}
	a, _ := New("euler_a", sdConfig("", "trailing", ""), Options{})
	if err := a.SetTimesteps(2); err != nil {
		t.Fatal(err)
	}
	if err := a.Step(make([]float32, 4), make([]float32, 4), 0, nil); err == nil {
		t.Error("ancestral Step without noise: no error")
	}
	l, _ := New("lcm", nil, Options{})
	if err := l.SetTimesteps(51); err == nil {
		t.Error("LCM with more steps than original_inference_steps: no error")
	}
}

// TestKnownTimesteps: schedules published with diffusers' schedulers.
func TestKnownTimesteps(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  *model.SchedulerConfig
		n    int
		want []float64
	}{
		// LCM-LoRA / LCM-Dreamshaper schedules (original_inference_steps 50).
		{"lcm", sdConfig("", "", ""), 1, []float64{999}},
		{"lcm", sdConfig("", "", ""), 4, []float64{999, 759, 499, 259}},
		{"lcm", sdConfig("", "", ""), 8, []float64{999, 879, 759, 639, 499, 379, 259, 139}},
		// DPM-Solver++ "linspace" (SDXL): n+1 points, the last dropped.
		{"dpmpp_2m", sdConfig("", "linspace", ""), 20, []float64{999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 500, 450, 400, 350, 300, 250, 200, 150, 100, 50}},
		// "leading" divides by n+1: 1000 // 5 = 200, plus steps_offset.
		{"dpmpp_2m", sdConfig("", "leading", ""), 4, []float64{801, 601, 401, 201}},
		{"dpmpp_2m", sdConfig("", "trailing", ""), 4, []float64{999, 749, 499, 249}},
		// Trailing with a step ratio that is not an integer (1000/3).
		{"ddim", sdConfig("", "trailing", ""), 3, []float64{999, 666, 332}},
		{"euler", sdConfig("", "linspace", ""), 4, []float64{999, 666, 333, 0}},
	} {
		s, err := New(c.name, c.cfg, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetTimesteps(c.n); err != nil {
			t.Fatal(err)
		}
		if got := s.Timesteps(); !slices.Equal(got, c.want) {
			t.Errorf("%s %s n=%d: timesteps %v, want %v", c.name, c.cfg.TimestepSpacing, c.n, got, c.want)
		}
	}
}

// TestKarras: Karras sigmas run from the schedule's largest to its
// smallest sigma, evenly in sigma^(1/7), then the final zero; timesteps map
// back through the log-sigma table (rounded for DPM-Solver).
func TestKarras(t *testing.T) {
	for _, name := range []string{"euler", "dpmpp_2m"} {
		s, err := New(name, sdConfig("", "linspace", ""), Options{Karras: true})
		if err != nil {
			t.Fatal(err)
		}
		const n = 10
		if err := s.SetTimesteps(n); err != nil {
			t.Fatal(err)
		}
		sig, ts := s.Sigmas(), s.Timesteps()
		if len(sig) != n+1 || len(ts) != n {
			t.Fatalf("%s: %d sigmas and %d timesteps, want %d and %d", name, len(sig), len(ts), n+1, n)
		}
		// SD's schedule spans sigma 0.0292 (t=0) to 14.6146 (t=999).
		if math.Abs(sig[0]-14.6146) > 1e-4 || math.Abs(sig[n-1]-0.0292) > 1e-4 || sig[n] != 0 {
			t.Errorf("%s: sigmas %v, want 14.6146 ... 0.0292, 0", name, sig)
		}
		for i := 1; i < n; i++ {
			a, b := math.Pow(sig[i-1], 1/7.0), math.Pow(sig[i], 1/7.0)
			c := math.Pow(sig[0], 1/7.0) - math.Pow(sig[1], 1/7.0)
			if math.Abs((a-b)-c) > 1e-5 {
				t.Errorf("%s: sigma^(1/7) steps unequal at %d: %g vs %g", name, i, a-b, c)
			}
			if ts[i] >= ts[i-1] {
				t.Errorf("%s: timesteps not decreasing: %v", name, ts)
			}
		}
		if math.Abs(ts[0]-999) > 1e-3 || math.Abs(ts[n-1]) > 1e-3 {
			t.Errorf("%s: timesteps %v, want 999 ... 0", name, ts)
		}
	}
}

// perfectModel returns what an ideal network predicts when all data is the
// single point c: the noise, v or x0 of the current sample exactly. The
// sample is x = a*c + s*e (VP) or x = c + s*e (VE, Euler).
func perfectModel(pred string, x []float32, c float64, a, s float64, ve bool) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		var e float64
		if ve {
			e = (float64(v) - c) / s
		} else {
			e = (float64(v) - a*c) / s
		}
		switch pred {
		case "epsilon":
			out[i] = float32(e)
		case "sample":
			out[i] = float32(c)
		default: // v = alpha*eps - sigma*x0 in VP terms
			if ve {
				al := 1 / math.Sqrt(s*s+1)
				out[i] = float32(al*e - s*al*c)
			} else {
				out[i] = float32(a*e - s*c)
			}
		}
	}
	return out
}

// TestPerfectDenoiser: with an ideal model for point-mass data every
// scheduler must end at that point, whatever the spacing, step count,
// prediction type or (where it exists) Karras spacing. This checks the
// update formulas of LCM and DPM-Solver++, which the references do not run.
//
// Tolerance 2e-5: the float32 updates carry ~1e-7 relative error on samples
// of magnitude up to ~15 (sigma_max) over up to 25 steps; LCM's boundary
// scalings leave a few 1e-8. Measured worst case: 4.2e-6.
func TestPerfectDenoiser(t *testing.T) {
	const c = 0.75
	rng := rand.New(rand.NewPCG(1, 2))
	for _, name := range sdNames() { // flowmatch_euler: TestFlowMatchStep
		for _, pred := range []string{"epsilon", "v_prediction", "sample"} {
			for _, spacing := range []string{"leading", "trailing", "linspace"} {
				for _, karras := range []bool{false, true} {
					for _, n := range []int{1, 2, 4, 25} {
						if (name == "euler_a" || name == "pndm") && pred == "sample" ||
							karras && name != "euler" && name != "dpmpp_2m" ||
							// diffusers' PNDM mixes noise levels in its warm-up step
							name == "pndm" && pred == "v_prediction" ||
							// DDIM and PNDM step to t - N/n, which is the next
							// timestep only for "leading" spacing.
							(name == "ddim" || name == "pndm") && spacing != "leading" {
							continue
						}
						label := fmt.Sprintf("%s/%s/%s/karras=%v/n=%d", name, pred, spacing, karras, n)
						cfg := sdConfig("", spacing, pred)
						cfg.SetAlphaToOne = true // end at the clean sample
						s, err := New(name, cfg, Options{Karras: karras})
						if err != nil {
							t.Fatalf("%s: %v", label, err)
						}
						if err := s.SetTimesteps(n); err != nil {
							t.Fatalf("%s: %v", label, err)
						}
						if err := runPerfect(s, c, rng); err != nil {
							t.Errorf("%s: %v", label, err)
						}
					}
				}
			}
		}
	}
}

func runPerfect(s Scheduler, c float64, rng *rand.Rand) error {
	ac := alphasOf(s)
	// level returns (a, s, ve) of the sample at step k.
	level := func(k int) (float64, float64, bool) {
		if sig := s.Sigmas(); sig != nil {
			if _, ok := s.(*euler); ok {
				return 1, sig[k], true
			}
			a := 1 / math.Sqrt(sig[k]*sig[k]+1) // DPM-Solver's VP view of sigma
			return a, sig[k] * a, false
		}
		t := int(s.Timesteps()[k])
		return math.Sqrt(float64(ac[t])), math.Sqrt(1 - float64(ac[t])), false
	}
	const size = 64
	x := make([]float32, size)
	a, sg, ve := level(0)
	for i := range x {
		e := rng.NormFloat64()
		if ve {
			x[i] = float32(c + sg*e)
		} else {
			x[i] = float32(a*c + sg*e)
		}
	}
	pred := "epsilon"
	switch v := s.(type) {
	case *euler:
		pred = v.c.prediction
	case *ddim:
		pred = v.c.prediction
	case *lcm:
		pred = v.c.prediction
	case *dpm:
		pred = v.c.prediction
	}
	for k := range s.Timesteps() {
		a, sg, ve := level(k)
		m := perfectModel(pred, x, c, a, sg, ve)
		var noise []float32
		if s.NeedsNoise(k) {
			noise = make([]float32, size)
			for i := range noise {
				noise[i] = float32(rng.NormFloat64())
			}
		}
		if err := s.Step(m, x, k, noise); err != nil {
			return err
		}
	}
	for i, v := range x {
		if math.Abs(float64(v)-c) > 2e-5 {
			return fmt.Errorf("final sample[%d] = %g, want %g", i, v, c)
		}
	}
	return nil
}

// TestResetAndReuse: SetTimesteps restarts multistep state, so a second
// identical run gives identical results.
func TestResetAndReuse(t *testing.T) {
	for _, name := range []string{"pndm", "dpmpp_2m"} {
		s, err := New(name, sdConfig("", "leading", ""), Options{})
		if err != nil {
			t.Fatal(err)
		}
		run := func() []float32 {
			if err := s.SetTimesteps(6); err != nil {
				t.Fatal(err)
			}
			x := []float32{1, -2, 3, 0.5}
			for k := range s.Timesteps() {
				m := []float32{0.1 * float32(k), -0.3, 0.2, 1}
				if err := s.Step(m, x, k, nil); err != nil {
					t.Fatal(err)
				}
			}
			return x
		}
		a, b := run(), run()
		if !slices.Equal(a, b) {
			t.Errorf("%s: second run %v, first %v", name, b, a)
		}
	}
}

// TestScaleModelInput: Euler divides by sqrt(sigma^2+1); the others leave
// the input alone; a step outside the run changes nothing.
func TestScaleModelInput(t *testing.T) {
	e, _ := New("euler", sdConfig("", "trailing", ""), Options{})
	if err := e.SetTimesteps(1); err != nil {
		t.Fatal(err)
	}
	x := []float32{14.6146, -2}
	e.ScaleModelInput(x, 0)
	sig := e.Sigmas()[0]
	if want := 14.6146 / math.Sqrt(sig*sig+1); math.Abs(float64(x[0])-want) > 1e-5 {
		t.Errorf("scaled %g, want %g", x[0], want)
	}
	y := []float32{3}
	e.ScaleModelInput(y, 5)
	if y[0] != 3 {
		t.Errorf("out-of-range step changed the input to %g", y[0])
	}
	for _, name := range []string{"pndm", "ddim", "lcm", "dpmpp_2m"} {
		s, _ := New(name, sdConfig("", "", ""), Options{})
		if err := s.SetTimesteps(4); err != nil {
			t.Fatal(err)
		}
		z := []float32{1.5}
		s.ScaleModelInput(z, 0)
		if z[0] != 1.5 || s.InitNoiseSigma() != 1 {
			t.Errorf("%s: scaled input %g and init sigma %g, want 1.5 and 1", name, z[0], s.InitNoiseSigma())
		}
	}
}

// TestNoiseSteps: which steps draw noise.
func TestNoiseSteps(t *testing.T) {
	for _, c := range []struct {
		name string
		want []bool
	}{
		{"euler", []bool{false, false, false}},
		{"euler_a", []bool{true, true, true}},
		{"lcm", []bool{true, true, false}},
		{"ddim", []bool{false, false, false}},
		{"dpmpp_2m", []bool{false, false, false}},
	} {
		s, _ := New(c.name, sdConfig("", "trailing", ""), Options{})
		if err := s.SetTimesteps(3); err != nil {
			t.Fatal(err)
		}
		for k, w := range c.want {
			if s.NeedsNoise(k) != w {
				t.Errorf("%s: NeedsNoise(%d) = %v, want %v", c.name, k, !w, w)
			}
		}
	}
}

// TestScheduleOptions covers the config switches the references do not.
func TestScheduleOptions(t *testing.T) {
	// Linear betas hit both ends exactly (torch.linspace endpoints).
	s, err := New("ddim", &model.SchedulerConfig{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := betas(s.(*ddim).c)
	if b[0] != float32(0.0001) || b[999] != float32(0.02) {
		t.Errorf("linear betas %g ... %g, want 0.0001 ... 0.02", b[0], b[999])
	}
	// Cosine: alphas_cumprod follows cos^2 closely and ends near zero.
	cfg := &model.SchedulerConfig{BetaSchedule: "squaredcos_cap_v2"}
	s, err = New("ddim", cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ac := alphasOf(s)
	f := func(t float64) float64 { c := math.Cos((t + 0.008) / 1.008 * math.Pi / 2); return c * c }
	if want := f(0.5) / f(0); math.Abs(float64(ac[499])-want) > 1e-4 {
		t.Errorf("cosine alphas_cumprod[499] = %g, want %g", ac[499], want)
	}
	// Zero terminal SNR: the last alpha is pinned to 2^-24, so the first
	// sigma is finite (about 4096).
	cfg = sdConfig("", "trailing", "v_prediction")
	cfg.RescaleBetasZeroSNR = true
	s, err = New("euler", cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetTimesteps(4); err != nil {
		t.Fatal(err)
	}
	if sig := s.Sigmas()[0]; math.Abs(sig-4096) > 1 {
		t.Errorf("zero-SNR first sigma %g, want about 4096", sig)
	}
	// final_sigmas_type "sigma_min" ends at the smallest training sigma.
	cfg = sdConfig("", "trailing", "")
	cfg.FinalSigmasType = "sigma_min"
	for _, name := range []string{"euler", "dpmpp_2m"} {
		s, err = New(name, cfg, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetTimesteps(4); err != nil {
			t.Fatal(err)
		}
		sig := s.Sigmas()
		if last := sig[len(sig)-1]; math.Abs(last-0.0292) > 1e-4 {
			t.Errorf("%s: final sigma %g, want sigma_min 0.0292", name, last)
		}
	}
	// log_linear: diffusers spaces n+1 sigmas evenly in log sigma from the
	// largest to the smallest and appends the final zero (n+2 in all).
	cfg = sdConfig("", "trailing", "")
	cfg.InterpolationType = "log_linear"
	s, err = New("euler", cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetTimesteps(4); err != nil {
		t.Fatal(err)
	}
	sig := s.Sigmas()
	if len(sig) != 6 || math.Abs(sig[0]-14.6146) > 1e-3 || math.Abs(sig[4]-0.0292) > 1e-4 || sig[5] != 0 {
		t.Errorf("log_linear sigmas %v, want 6 from 14.6146 to 0.0292, then 0", sig)
	}
	if r := math.Log(sig[0]/sig[1]) - math.Log(sig[1]/sig[2]); math.Abs(r) > 1e-5 {
		t.Errorf("log_linear sigmas not evenly spaced in log: %v", sig)
	}
	// Continuous timesteps with v-prediction: t = sigma.log() / 4.
	cfg = sdConfig("", "trailing", "v_prediction")
	cfg.TimestepType = "continuous"
	s, err = New("euler", cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetTimesteps(2); err != nil {
		t.Fatal(err)
	}
	ts, sg := s.Timesteps(), s.Sigmas()
	for i := range ts {
		if math.Abs(ts[i]-0.25*math.Log(sg[i])) > 1e-6 {
			t.Errorf("continuous timestep %d = %g, want %g", i, ts[i], 0.25*math.Log(sg[i]))
		}
	}
	// Leading spacing: init_noise_sigma is sqrt(sigma_max^2 + 1).
	s, _ = New("euler", sdConfig("", "leading", ""), Options{})
	if err := s.SetTimesteps(4); err != nil {
		t.Fatal(err)
	}
	if want := math.Sqrt(s.Sigmas()[0]*s.Sigmas()[0] + 1); math.Abs(s.InitNoiseSigma()-want) > 1e-6 {
		t.Errorf("leading init_noise_sigma %g, want %g", s.InitNoiseSigma(), want)
	}
}
