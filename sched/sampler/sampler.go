// Package sampler holds the pure-math diffusion schedulers: timesteps,
// sigmas and the per-step update of flat float32 latents, with the formulas
// of diffusers 0.30 (EulerDiscrete, EulerAncestralDiscrete, PNDM, DDIM, LCM,
// DPMSolverMultistep) and 0.36 (FlowMatchEulerDiscrete). Tables are rebuilt the way diffusers computes them
// (float32 torch tensors, float64 numpy arrays) and each update follows
// torch's float32 operation order, so that a run reproduces the reference
// latents to the last bit or close to it. No engine, no goroutines.
package sampler

import (
	"fmt"
	"slices"
	"strings"

	"github.com/zimage/zimage/model"
)

// Scheduler advances latents through one sampling run. All maths is
// elementwise on flat latents ([B,C,h,w] flattened, any B).
type Scheduler interface {
	// SetTimesteps prepares a run of n inference steps and resets the
	// per-run state (PNDM's history, DPM-Solver's previous output).
	SetTimesteps(n int) error
	// Timesteps are what the UNet is called with, one per step; PNDM
	// (skip_prk_steps) has n+1 of them.
	Timesteps() []float64
	// Sigmas per step plus the final one; nil for schedulers without sigmas.
	Sigmas() []float64
	// InitNoiseSigma scales the standard-normal initial latents.
	InitNoiseSigma() float64
	// ScaleModelInput scales the UNet input of step `step` in place; an
	// out-of-range step leaves x unchanged (Step reports it).
	ScaleModelInput(x []float32, step int)
	// Step advances sample in place from the model output of step `step`
	// (after guidance, len(sample) values). noise is a standard-normal draw
	// of len(sample) when NeedsNoise(step), else ignored.
	Step(modelOutput, sample []float32, step int, noise []float32) error
	// NeedsNoise reports whether Step consumes a noise draw at step.
	NeedsNoise(step int) bool
	// Name is the short name ("euler", "dpmpp_2m", ...).
	Name() string
	// AddNoise writes into dst the clean sample x noised with noise to the
	// level of step (diffusers' add_noise, or scale_noise for flow
	// matching, at Timesteps()[step]): how img2img starts and how
	// inpainting re-noises the kept area. dst may be x.
	AddNoise(dst, x, noise []float32, step int) error
	// Begin makes step the first step of the run (img2img skips the steps
	// before it, as diffusers' set_begin_index does), resetting the
	// per-run state; SetTimesteps begins at 0.
	Begin(step int) error
}

// Options override the scheduler config.
type Options struct {
	// Karras uses the Karras et al. (2022) sigma spacing (diffusers'
	// use_karras_sigmas); euler, dpmpp_2m and flowmatch_euler support it.
	Karras bool
	// ImageSeqLen is the denoiser's image token count, from which a
	// flow-match config with use_dynamic_shifting computes mu (diffusers'
	// calculate_shift); ignored otherwise. See ZImageOptions.
	ImageSeqLen int
	// SigmaMin, when set, replaces a flow-match scheduler's smallest sigma
	// before the shift, as a pipeline does by assigning
	// scheduler.sigma_min (ZImagePipeline sets 0). nil keeps the
	// scheduler's own, the shifted 1/num_train_timesteps.
	SigmaMin *float64
}

// kinds: short name, diffusers class, aliases.
var kinds = []struct {
	name, class string
	aliases     []string
}{
	{"euler", "EulerDiscreteScheduler", nil},
	{"euler_a", "EulerAncestralDiscreteScheduler", []string{"euler_ancestral", "euler-a"}},
	{"pndm", "PNDMScheduler", []string{"plms"}},
	{"ddim", "DDIMScheduler", nil},
	{"lcm", "LCMScheduler", nil},
	{"dpmpp_2m", "DPMSolverMultistepScheduler", []string{"dpm++2m", "dpmpp2m", "dpm++_2m"}},
	{"flowmatch_euler", "FlowMatchEulerDiscreteScheduler", []string{"flow_euler", "flowmatch"}},
}

// Names lists the short scheduler names New accepts.
func Names() []string {
	out := make([]string, len(kinds))
	for i, k := range kinds {
		out[i] = k.name
	}
	return out
}

// sdNames lists the samplers for noise-prediction models.
func sdNames() []string {
	var out []string
	for _, n := range Names() {
		if n != "flowmatch_euler" {
			out = append(out, n)
		}
	}
	return out
}

// resolve maps a user or config name to a short name.
func resolve(name string) (string, bool) {
	l := lowerTrim(name)
	for _, k := range kinds {
		if l == k.name || l == strings.ToLower(k.class) || slices.Contains(k.aliases, l) {
			return k.name, true
		}
	}
	return "", false
}

func lowerTrim(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// New builds a scheduler. An empty name takes the config's _class_name;
// otherwise name is a short name (Names) or a diffusers class name, any
// case, and the config's fields still apply (as from_config does). A nil
// cfg means all diffusers defaults.
//
// Noise-prediction (SD) and flow-matching (Z-Image) models need samplers
// of their own family, and the config's class tells the model's family:
// for a flow-matching model "euler" means flowmatch_euler (the Euler
// method on its velocity, which is what the name asks for), and the
// SD-only samplers are refused; flowmatch_euler is refused for an SD model.
// With neither a name nor a class to go by, "euler" is the SD one.
func New(name string, cfg *model.SchedulerConfig, opt Options) (Scheduler, error) {
	if cfg == nil {
		cfg = &model.SchedulerConfig{}
	}
	explicit := name != ""
	if !explicit {
		name = cfg.ClassName
		if name == "" {
			return nil, fmt.Errorf("sampler: no scheduler name given and the scheduler config has no _class_name")
		}
	}
	short, ok := resolve(name)
	if !ok {
		return nil, fmt.Errorf("sampler: unknown scheduler %q (want one of %s, or a diffusers class name)", name, strings.Join(Names(), ", "))
	}
	if cfg.ClassName != "" {
		flowModel := isFlowClass(cfg.ClassName)
		if flowModel && short == "euler" {
			short = "flowmatch_euler"
		}
		if flowModel != (short == "flowmatch_euler") {
			if flowModel {
				return nil, fmt.Errorf("sampler: %q does not fit a flow-matching model (its scheduler is %s): use euler (= flowmatch_euler)", name, cfg.ClassName)
			}
			return nil, fmt.Errorf("sampler: %q is for flow-matching models; this model's scheduler is %s (noise prediction): use one of %s", name, cfg.ClassName, strings.Join(sdNames(), ", "))
		}
	}
	if short == "flowmatch_euler" {
		fc, err := resolveFlowConfig(cfg, opt)
		if err != nil {
			return nil, err
		}
		return newFlowMatch(fc), nil
	}
	c, err := resolveConfig(short, cfg, opt)
	if err != nil {
		return nil, err
	}
	if short == "dpmpp_2m" && explicit {
		c.solverOrder = 2 // the name says second order
	}
	switch short {
	case "euler":
		return newEuler(c, false)
	case "euler_a":
		return newEuler(c, true)
	case "pndm":
		return newPNDM(c)
	case "ddim":
		return newDDIM(c)
	case "lcm":
		return newLCM(c)
	default:
		return newDPM(c)
	}
}

// config is a SchedulerConfig with every diffusers default filled in for
// one scheduler class.
type config struct {
	kind            string
	numTrain        int
	betaStart       float64
	betaEnd         float64
	betaSchedule    string
	trainedBetas    []float64
	prediction      string
	spacing         string
	stepsOffset     int
	setAlphaToOne   bool
	clipSample      bool
	clipRange       float64
	interpolation   string
	timestepType    string
	rescaleZeroSNR  bool
	originalSteps   int
	timestepScaling float64
	finalSigmas     string
	solverOrder     int
	algorithm       string
	lowerOrderFinal bool
	karras          bool
}

// resolveConfig fills the class defaults of diffusers 0.30 where the JSON
// left a field out. Booleans cannot tell "absent" from false: an absent
// set_alpha_to_one (DDIM/LCM default true) or clip_sample (DDIM default
// true) reads as false; real configs spell both out.
func resolveConfig(kind string, s *model.SchedulerConfig, opt Options) (*config, error) {
	c := &config{
		kind:            kind,
		numTrain:        s.NumTrainTimesteps,
		betaStart:       s.BetaStart,
		betaEnd:         s.BetaEnd,
		betaSchedule:    s.BetaSchedule,
		trainedBetas:    s.TrainedBetas,
		prediction:      s.PredictionType,
		spacing:         s.TimestepSpacing,
		stepsOffset:     s.StepsOffset,
		setAlphaToOne:   s.SetAlphaToOne,
		clipSample:      s.ClipSample,
		clipRange:       1,
		interpolation:   s.InterpolationType,
		timestepType:    s.TimestepType,
		rescaleZeroSNR:  s.RescaleBetasZeroSNR,
		originalSteps:   s.OriginalInferenceSteps,
		timestepScaling: 10,
		finalSigmas:     s.FinalSigmasType,
		solverOrder:     s.SolverOrder,
		algorithm:       s.AlgorithmType,
		lowerOrderFinal: s.LowerOrderFinal == nil || *s.LowerOrderFinal,
	}
	if c.numTrain == 0 {
		c.numTrain = 1000
	}
	if c.numTrain < 2 {
		return nil, fmt.Errorf("sampler: num_train_timesteps %d, want at least 2", c.numTrain)
	}
	lcm := kind == "lcm"
	if c.betaStart == 0 && c.betaEnd == 0 {
		c.betaStart, c.betaEnd = 0.0001, 0.02
		if lcm {
			c.betaStart, c.betaEnd = 0.00085, 0.012
		}
	}
	if c.betaSchedule == "" {
		c.betaSchedule = "linear"
		if lcm {
			c.betaSchedule = "scaled_linear"
		}
	}
	switch c.prediction {
	case "":
		c.prediction = "epsilon"
	case "original_sample": // diffusers' old spelling
		c.prediction = "sample"
	}
	if c.spacing == "" {
		switch kind {
		case "euler", "euler_a", "dpmpp_2m":
			c.spacing = "linspace"
		default:
			c.spacing = "leading"
		}
	}
	switch c.spacing {
	case "linspace", "leading", "trailing":
	default:
		return nil, fmt.Errorf("sampler: timestep_spacing %q is not supported (want linspace, leading or trailing)", c.spacing)
	}
	if c.interpolation == "" {
		c.interpolation = "linear"
	}
	if c.timestepType == "" {
		c.timestepType = "discrete"
	}
	if c.originalSteps == 0 {
		c.originalSteps = 50
	}
	if c.finalSigmas == "" {
		c.finalSigmas = "zero"
	}
	if c.solverOrder == 0 {
		c.solverOrder = 2
	}
	if c.algorithm == "" {
		c.algorithm = "dpmsolver++"
	}
	switch c.prediction {
	case "epsilon", "v_prediction", "sample":
	default:
		return nil, fmt.Errorf("sampler: prediction_type %q is not supported (want epsilon, v_prediction or sample)", c.prediction)
	}
	// Karras sigmas exist only in Euler and DPM-Solver; diffusers ignores the
	// config key elsewhere, but an explicit request must not be dropped.
	switch kind {
	case "euler", "dpmpp_2m":
		c.karras = opt.Karras || s.UseKarrasSigmas
	default:
		if opt.Karras {
			return nil, fmt.Errorf("sampler: Karras sigmas are supported by euler and dpmpp_2m, not %s", kind)
		}
	}
	return c, nil
}

// tables are the training-time noise tables every scheduler starts from.
type tables struct {
	ac     []float32 // alphas_cumprod
	sigmas []float32 // sqrt((1-ac)/ac), by training timestep
}

// newSigmaTables is newTables for the sigma-based schedulers (Euler, DPM++):
// it checks final_sigmas_type and, with rescale_betas_zero_snr, keeps the
// first sigma finite as diffusers does.
func newSigmaTables(c *config) (*tables, error) {
	switch c.finalSigmas {
	case "zero", "sigma_min":
	default:
		return nil, fmt.Errorf("sampler: final_sigmas_type %q is not supported (want zero or sigma_min)", c.finalSigmas)
	}
	t, err := newTables(c)
	if err != nil {
		return nil, err
	}
	if c.rescaleZeroSNR {
		t.ac[len(t.ac)-1] = 1.0 / (1 << 24)
		t.sigmas = trainSigmas(t.ac)
	}
	return t, nil
}

func newTables(c *config) (*tables, error) {
	b, err := betas(c)
	if err != nil {
		return nil, err
	}
	ac := alphasCumprod(b)
	return &tables{ac: ac, sigmas: trainSigmas(ac)}, nil
}

// stepError reports a step index outside the run.
func stepError(name string, step, n int) error {
	if n == 0 {
		return fmt.Errorf("sampler: %s: Step before SetTimesteps", name)
	}
	return fmt.Errorf("sampler: %s: step %d outside the run's %d steps", name, step, n)
}

// checkStep validates the buffers of one Step call.
func checkStep(name string, modelOutput, sample []float32, step, n int, noise []float32, needNoise bool) error {
	if step < 0 || step >= n {
		return stepError(name, step, n)
	}
	if len(modelOutput) != len(sample) {
		return fmt.Errorf("sampler: %s step %d: model output has %d values, sample has %d", name, step, len(modelOutput), len(sample))
	}
	if needNoise && len(noise) != len(sample) {
		return fmt.Errorf("sampler: %s step %d: noise has %d values, want %d (one per latent)", name, step, len(noise), len(sample))
	}
	return nil
}

func widen(x []float32) []float64 {
	if x == nil {
		return nil
	}
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}
