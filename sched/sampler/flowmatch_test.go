package sampler

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
)

const zimageRefs = "tiny-z-image-turbo"

// zimageConfig is the tiny model's scheduler_config.json (the real model's
// is the same: shift 3, no dynamic shifting).
func zimageConfig(t *testing.T, r *testref.Refs) *model.SchedulerConfig {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.Dir, "scheduler", "scheduler_config.json"))
	require.NoError(t, err)
	var c model.SchedulerConfig
	require.NoError(t, json.Unmarshal(b, &c))
	return &c
}

func flowConfig3() *model.SchedulerConfig {
	three := 3.0
	return &model.SchedulerConfig{ClassName: "FlowMatchEulerDiscreteScheduler", NumTrainTimesteps: 1000, Shift: &three}
}

func bitsEqual(t *testing.T, what string, got []float64, want []float32) {
	t.Helper()
	require.Len(t, got, len(want), what)
	for i := range want {
		if math.Float32bits(float32(got[i])) != math.Float32bits(want[i]) || got[i] != float64(float32(got[i])) {
			t.Errorf("%s[%d] = %.9g, want %.9g", what, i, got[i], want[i])
		}
	}
}

// TestFlowMatchReferenceTables: sigmas, timesteps and the transformer's t
// bit for bit against diffusers 0.36 ZImagePipeline for every step count in
// the refs (sched.<n>.*). The image size does not matter: the config has no
// dynamic shifting.
func TestFlowMatchReferenceTables(t *testing.T) {
	r := testref.Open(t, zimageRefs)
	cfg := zimageConfig(t, r)
	var ns []int
	for _, name := range r.File.Names() {
		if rest, ok := strings.CutPrefix(name, "sched."); ok && strings.HasSuffix(rest, ".sigmas") {
			n, err := strconv.Atoi(strings.TrimSuffix(rest, ".sigmas"))
			require.NoError(t, err, name)
			ns = append(ns, n)
		}
	}
	sort.Ints(ns)
	require.NotEmpty(t, ns, "no sched.<n>.sigmas in the refs")
	s, err := New("", cfg, ZImageOptions(16))
	require.NoError(t, err)
	require.Equal(t, "flowmatch_euler", s.Name())
	for _, n := range ns {
		require.NoError(t, s.SetTimesteps(n))
		p := fmt.Sprintf("sched.%d.", n)
		sig, _ := r.Floats(t, p+"sigmas")
		ts, _ := r.Floats(t, p+"timesteps")
		mt, _ := r.Floats(t, p+"model_t")
		bitsEqual(t, p+"sigmas", s.Sigmas(), sig)
		bitsEqual(t, p+"timesteps", s.Timesteps(), ts)
		got := make([]float64, n)
		for i, v := range s.Timesteps() {
			got[i] = float64(ZImageTime(v))
		}
		bitsEqual(t, p+"model_t", got, mt)
		assert.Equal(t, 1.0, s.InitNoiseSigma())
	}
	t.Logf("step counts %v: every sigma, timestep and t bit-identical", ns)
}

// TestFlowMatchReferenceRuns replays each whole run: from the reference
// latents before step k and the model output the scheduler got, Step must
// give the reference latents after it, bit for bit (the update is one
// float32 product and sum, in torch's order). Each step restarts from the
// reference, so a difference would not compound.
func TestFlowMatchReferenceRuns(t *testing.T) {
	r := testref.Open(t, zimageRefs)
	cfg := zimageConfig(t, r)
	var runs []struct {
		ID     string `json:"id"`
		Steps  int    `json:"steps"`
		Height int    `json:"height"`
		Width  int    `json:"width"`
	}
	b, err := json.Marshal(r.JSON["runs"])
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &runs))
	require.NotEmpty(t, runs)
	for _, run := range runs {
		t.Run(run.ID, func(t *testing.T) {
			s, err := New("", cfg, ZImageOptions((run.Height/16)*(run.Width/16)))
			require.NoError(t, err)
			require.NoError(t, s.SetTimesteps(run.Steps))
			p := "run." + run.ID + "."
			lat, _ := r.Floats(t, p+"latents_init")
			x := make([]float32, len(lat))
			for k, ts := range s.Timesteps() {
				sp := fmt.Sprintf("%sstep%d.", p, k)
				wantT, _ := r.Floats(t, sp+"timestep")
				require.Equal(t, math.Float32bits(wantT[0]), math.Float32bits(float32(ts)), "step %d timestep", k)
				wantModelT, _ := r.Floats(t, sp+"t")
				for _, v := range wantModelT {
					require.Equal(t, math.Float32bits(v), math.Float32bits(ZImageTime(ts)), "step %d transformer t", k)
				}
				// The scheduler leaves the model input alone.
				copy(x, lat)
				s.ScaleModelInput(x, k)
				require.Equal(t, lat, x, "step %d: ScaleModelInput changed the sample", k)

				mo, _ := r.Floats(t, sp+"model_output")
				require.False(t, s.NeedsNoise(k))
				require.NoError(t, s.Step(mo, x, k, nil))
				want, _ := r.Floats(t, sp+"latents")
				require.Len(t, x, len(want))
				for i := range want {
					if math.Float32bits(x[i]) != math.Float32bits(want[i]) {
						t.Fatalf("step %d latents[%d] = %.9g, want %.9g (from %.9g + dt * %.9g)", k, i, x[i], want[i], lat[i], mo[i])
					}
				}
				lat = want
			}
		})
	}
}

func TestFlowMatchNames(t *testing.T) {
	flow := flowConfig3()
	for _, name := range []string{"", "euler", "EULER", "flowmatch_euler", "FlowMatchEulerDiscreteScheduler", "flowmatch"} {
		s, err := New(name, flow, Options{})
		require.NoError(t, err, name)
		assert.Equal(t, "flowmatch_euler", s.Name(), name)
	}
	// SD samplers do not fit a flow model, and the flow sampler does not
	// fit an SD model.
	for _, name := range []string{"euler_a", "pndm", "ddim", "lcm", "dpmpp_2m"} {
		_, err := New(name, flow, Options{})
		require.ErrorContains(t, err, "flow-matching model", name)
	}
	_, err := New("flowmatch_euler", sdConfig("EulerDiscreteScheduler", "", ""), Options{})
	require.ErrorContains(t, err, "for flow-matching models")
	s, err := New("euler", sdConfig("EulerDiscreteScheduler", "", ""), Options{})
	require.NoError(t, err)
	assert.Equal(t, "euler", s.Name())
	// Without a class to go by, the names mean what they say.
	s, err = New("euler", nil, Options{})
	require.NoError(t, err)
	assert.Equal(t, "euler", s.Name())
	s, err = New("flowmatch_euler", nil, Options{})
	require.NoError(t, err)
	assert.Equal(t, "flowmatch_euler", s.Name())
	// The class-name check is the same for the other flow classes.
	_, err = New("", &model.SchedulerConfig{ClassName: "FlowMatchHeunDiscreteScheduler"}, Options{})
	require.ErrorContains(t, err, "unknown scheduler")
}

func TestFlowMatchErrors(t *testing.T) {
	neg, one, zero := -1.0, 1.0, 0.0
	for _, c := range []struct {
		edit func(*model.SchedulerConfig)
		opt  Options
		want string
	}{
		{func(c *model.SchedulerConfig) { c.Shift = &neg }, Options{}, "shift -1"},
		{func(c *model.SchedulerConfig) { c.Shift = &zero }, Options{}, "shift 0"},
		{func(c *model.SchedulerConfig) { c.TimeShiftType = "cubic" }, Options{}, "time_shift_type"},
		{func(c *model.SchedulerConfig) { c.ShiftTerminal = &one }, Options{}, "shift_terminal"},
		{func(c *model.SchedulerConfig) { c.InvertSigmas = true }, Options{}, "invert_sigmas"},
		{func(c *model.SchedulerConfig) { c.UseBetaSigmas = true }, Options{}, "use_beta_sigmas"},
		{func(c *model.SchedulerConfig) { c.UseExponentialSigmas = true }, Options{}, "use_exponential_sigmas"},
		{func(c *model.SchedulerConfig) { c.NumTrainTimesteps = 1 }, Options{}, "num_train_timesteps"},
		{func(*model.SchedulerConfig) {}, Options{SigmaMin: &one}, "sigma_min 1"},
		{func(c *model.SchedulerConfig) {
			c.UseDynamicShifting = true
			n := 256
			c.BaseImageSeqLen, c.MaxImageSeqLen = &n, &n
		}, Options{}, "max_image_seq_len"},
	} {
		cfg := flowConfig3()
		c.edit(cfg)
		_, err := New("", cfg, c.opt)
		require.ErrorContains(t, err, c.want)
	}
	// Dynamic shifting needs the image size.
	cfg := flowConfig3()
	cfg.UseDynamicShifting = true
	s, err := New("", cfg, Options{})
	require.NoError(t, err)
	require.ErrorContains(t, s.SetTimesteps(4), "ImageSeqLen")
	s, err = New("", flowConfig3(), Options{})
	require.NoError(t, err)
	require.ErrorContains(t, s.SetTimesteps(0), "0 steps")
	require.ErrorContains(t, s.Step(nil, nil, 0, nil), "before SetTimesteps")
	require.NoError(t, s.SetTimesteps(2))
	require.ErrorContains(t, s.Step(make([]float32, 3), make([]float32, 4), 0, nil), "3 values")
	require.ErrorContains(t, s.Step(make([]float32, 4), make([]float32, 4), 2, nil), "outside")
}

// TestFlowMatchSchedules checks the options ZImagePipeline does not use
// against the formulas of diffusers 0.36 evaluated by hand.
func TestFlowMatchSchedules(t *testing.T) {
	// Without the pipeline's sigma_min = 0 the schedule ends at the
	// training table's smallest sigma, 3*0.001 / (1 + 2*0.001) in float32,
	// which set_timesteps shifts a second time (as diffusers does: its
	// sigma_min comes from the already shifted table).
	s, err := New("", flowConfig3(), Options{})
	require.NoError(t, err)
	require.NoError(t, s.SetTimesteps(3))
	f := float32(1) / 1000
	tableMin := float64(float32(3*f) / float32(1+float32(2*f)))
	shift := func(s float64) float64 { return float64(float32(3 * s / (1 + 2*s))) }
	sig := s.Sigmas()
	require.Len(t, sig, 4)
	assert.Equal(t, 1.0, sig[0])
	assert.Equal(t, shift(tableMin*1000/1000), sig[2])
	assert.InDelta(t, 0.00893, sig[2], 1e-5)
	assert.Equal(t, 0.0, sig[3])
	// Middle: linspace(1000, 1000*tableMin, 3)[1] / 1000, shifted.
	assert.Equal(t, shift((1000+tableMin*1000)/2/1000), sig[1])

	// calculate_shift is linear from (256, 0.5) to (4096, 1.15).
	assert.InDelta(t, 0.5, CalculateShift(256, 256, 4096, 0.5, 1.15), 1e-15)
	assert.InDelta(t, 1.15, CalculateShift(4096, 256, 4096, 0.5, 1.15), 1e-15)
	assert.InDelta(t, 0.825, CalculateShift(2176, 256, 4096, 0.5, 1.15), 1e-15)

	// Dynamic shifting: sigma = e^mu / (e^mu + 1/t - 1) at the linspace
	// points; 1024² Z-Image has 64*64 image tokens, so mu = max_shift.
	for _, kind := range []string{"exponential", "linear"} {
		cfg := flowConfig3()
		cfg.UseDynamicShifting, cfg.TimeShiftType = true, kind
		s, err := New("euler", cfg, ZImageOptions(4096))
		require.NoError(t, err)
		require.NoError(t, s.SetTimesteps(4))
		a := 1.15
		if kind == "exponential" {
			a = math.Exp(1.15)
		}
		sig := s.Sigmas()
		for i, lin := range []float64{1, 2.0 / 3, 1.0 / 3, 0} {
			want := 0.0
			if lin > 0 {
				want = a / (a + 1/lin - 1)
			}
			assert.InDelta(t, want, sig[i], 1e-7*want, "%s sigma %d", kind, i)
		}
		assert.Equal(t, 0.0, sig[4])
	}

	// shift_terminal stretches the schedule so that its last sigma lands
	// on the terminal value (diffusers' stretch_shift_to_terminal).
	cfg := flowConfig3()
	term := 0.1
	cfg.ShiftTerminal = &term
	s, err = New("", cfg, ZImageOptions(0))
	require.NoError(t, err)
	require.NoError(t, s.SetTimesteps(5))
	sig = s.Sigmas()
	assert.Equal(t, 1.0, sig[0])
	assert.InDelta(t, 0.1, sig[4], 1e-7)
	assert.Equal(t, 0.0, sig[5])

	// Karras respacing keeps the ends and stays strictly decreasing.
	s, err = New("", flowConfig3(), Options{Karras: true, SigmaMin: ZImageOptions(0).SigmaMin})
	require.NoError(t, err)
	require.NoError(t, s.SetTimesteps(6))
	sig = s.Sigmas()
	assert.Equal(t, 1.0, sig[0])
	assert.Equal(t, 0.0, sig[5])
	for i := 1; i < 6; i++ {
		assert.Less(t, sig[i], sig[i-1])
	}
	for i, ts := range s.Timesteps() {
		assert.Equal(t, float64(float32(float32(sig[i])*1000)), ts)
	}
}

// TestFlowMatchStep: a velocity that points at x0 (v = noise - x0, the
// flow the model is trained on) takes the sample to x0 exactly in one
// step at any step count, because the shifted sigmas still end at 0; the
// last step (sigma 0 -> 0) leaves the sample as it is; stochastic
// sampling re-noises the x0 estimate to the next sigma.
func TestFlowMatchStep(t *testing.T) {
	s, err := New("", flowConfig3(), ZImageOptions(16))
	require.NoError(t, err)
	require.NoError(t, s.SetTimesteps(3))
	x0 := []float32{0.5, -1, 0.25, 2}
	noise := []float32{1, 0.5, -0.75, -2}
	x := append([]float32(nil), noise...) // sigma 1: pure noise
	for k := range 2 {
		sig := float32(s.Sigmas()[k])
		v := make([]float32, len(x))
		for i := range v {
			v[i] = noise[i] - x0[i]
			// The sample sits on the straight path at sigma.
			assert.InDelta(t, float64(sig*noise[i]+(1-sig)*x0[i]), float64(x[i]), 1e-6)
		}
		require.NoError(t, s.Step(v, x, k, nil))
	}
	assert.InDeltaSlice(t, x0, x, 1e-6)
	before := append([]float32(nil), x...)
	require.NoError(t, s.Step([]float32{9, 9, 9, 9}, x, 2, nil))
	assert.Equal(t, before, x, "the last step has dt = 0")

	cfg := flowConfig3()
	cfg.StochasticSampling = true
	st, err := New("", cfg, ZImageOptions(16))
	require.NoError(t, err)
	require.NoError(t, st.SetTimesteps(3))
	require.True(t, st.NeedsNoise(0))
	require.False(t, st.NeedsNoise(3))
	next := float32(st.Sigmas()[1])
	fresh := []float32{0.1, 0.2, 0.3, 0.4}
	x = append([]float32(nil), noise...)
	v := make([]float32, len(x))
	for i := range v {
		v[i] = noise[i] - x0[i]
	}
	require.ErrorContains(t, st.Step(v, x, 0, nil), "noise")
	require.NoError(t, st.Step(v, x, 0, fresh))
	for i := range x {
		assert.InDelta(t, float64((1-next)*x0[i]+next*fresh[i]), float64(x[i]), 1e-6)
	}
}
