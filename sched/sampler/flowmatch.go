package sampler

import (
	"fmt"
	"math"

	"github.com/zimage/zimage/model"
)

// flowMatch is diffusers' FlowMatchEulerDiscreteScheduler (0.36), the
// sampler of rectified-flow models such as Z-Image: the denoiser predicts
// a velocity v, and a step moves the sample along it by the sigma
// difference, x += (sigma_next - sigma) * v. There is no input scaling and
// the initial noise is used as drawn (init_noise_sigma 1).
//
// Tables follow set_timesteps: sigmas = linspace(sigma_max, sigma_min, n)
// in float64 (numpy), shifted (statically by `shift`, or by mu from the
// image size with use_dynamic_shifting), optionally stretched to
// shift_terminal and respaced by Karras, rounded to float32, timesteps =
// sigma * num_train_timesteps in float32, and a terminal sigma 0 appended.
type flowMatch struct {
	c         flowConfig
	timesteps []float64 // float32 values
	sigmas    []float32 // n+1, the last one 0
}

// flowConfig is a FlowMatchEulerDiscreteScheduler config with diffusers'
// defaults filled in, plus the pipeline's choices from Options.
type flowConfig struct {
	numTrain      int
	shift         float64
	dynamic       bool
	baseShift     float64
	maxShift      float64
	baseSeqLen    int
	maxSeqLen     int
	shiftTerminal float64 // 0: off (diffusers tests it for truthiness)
	timeShiftType string
	karras        bool
	stochastic    bool
	imageSeqLen   int
	sigmaMin      *float64 // nil: the scheduler's own
}

// flowClasses are the diffusers classes whose models predict a flow
// velocity; only FlowMatchEulerDiscreteScheduler is implemented.
var flowClasses = map[string]bool{
	"flowmatcheulerdiscretescheduler": true,
	"flowmatchheundiscretescheduler":  true,
	"flowmatchlcmscheduler":           true,
}

// isFlowClass reports whether a scheduler class name belongs to a
// flow-matching model.
func isFlowClass(class string) bool { return flowClasses[lowerTrim(class)] }

func resolveFlowConfig(s *model.SchedulerConfig, opt Options) (flowConfig, error) {
	c := flowConfig{
		numTrain:      s.NumTrainTimesteps,
		shift:         1,
		dynamic:       s.UseDynamicShifting,
		baseShift:     0.5,
		maxShift:      1.15,
		baseSeqLen:    256,
		maxSeqLen:     4096,
		timeShiftType: s.TimeShiftType,
		karras:        s.UseKarrasSigmas || opt.Karras,
		stochastic:    s.StochasticSampling,
		imageSeqLen:   opt.ImageSeqLen,
		sigmaMin:      opt.SigmaMin,
	}
	if c.numTrain == 0 {
		c.numTrain = 1000
	}
	if c.numTrain < 2 {
		return c, fmt.Errorf("sampler: num_train_timesteps %d, want at least 2", c.numTrain)
	}
	if s.Shift != nil {
		c.shift = *s.Shift
	}
	if s.BaseShift != nil {
		c.baseShift = *s.BaseShift
	}
	if s.MaxShift != nil {
		c.maxShift = *s.MaxShift
	}
	if s.BaseImageSeqLen != nil {
		c.baseSeqLen = *s.BaseImageSeqLen
	}
	if s.MaxImageSeqLen != nil {
		c.maxSeqLen = *s.MaxImageSeqLen
	}
	if s.ShiftTerminal != nil {
		c.shiftTerminal = *s.ShiftTerminal
	}
	if c.timeShiftType == "" {
		c.timeShiftType = "exponential"
	}
	switch {
	case !(c.shift > 0) || math.IsInf(c.shift, 0):
		return c, fmt.Errorf("sampler: flowmatch_euler: shift %g, want a positive number", c.shift)
	case c.timeShiftType != "exponential" && c.timeShiftType != "linear":
		return c, fmt.Errorf("sampler: flowmatch_euler: time_shift_type %q, want exponential or linear", c.timeShiftType)
	case c.shiftTerminal == 1:
		return c, fmt.Errorf("sampler: flowmatch_euler: shift_terminal 1 stretches the schedule by 1/0")
	case s.InvertSigmas:
		return c, fmt.Errorf("sampler: flowmatch_euler: invert_sigmas (Mochi's inverted schedule) is not supported")
	case s.UseExponentialSigmas || s.UseBetaSigmas:
		return c, fmt.Errorf("sampler: flowmatch_euler: use_exponential_sigmas and use_beta_sigmas are not supported (Karras sigmas are)")
	case c.dynamic && c.maxSeqLen == c.baseSeqLen:
		return c, fmt.Errorf("sampler: flowmatch_euler: max_image_seq_len equals base_image_seq_len (%d): calculate_shift divides by their difference", c.baseSeqLen)
	case c.sigmaMin != nil && (*c.sigmaMin < 0 || *c.sigmaMin >= 1):
		return c, fmt.Errorf("sampler: flowmatch_euler: sigma_min %g, want 0 <= sigma_min < 1", *c.sigmaMin)
	}
	return c, nil
}

func newFlowMatch(c flowConfig) *flowMatch { return &flowMatch{c: c} }

func (f *flowMatch) Name() string { return "flowmatch_euler" }

// CalculateShift is diffusers' calculate_shift (FLUX, Z-Image): mu grows
// linearly with the image token count from baseShift at baseSeqLen to
// maxShift at maxSeqLen. Python float arithmetic, no fused operations.
func CalculateShift(imageSeqLen, baseSeqLen, maxSeqLen int, baseShift, maxShift float64) float64 {
	m := (maxShift - baseShift) / float64(maxSeqLen-baseSeqLen)
	b := baseShift - float64(m*float64(baseSeqLen))
	return float64(float64(imageSeqLen)*m) + b
}

// trainingSigmaRange is (sigma_max, sigma_min) of the scheduler's training
// table as __init__ builds it in float32: sigmas = t/N for t = N..1, shifted
// by `shift` unless the shift is dynamic.
func (f *flowMatch) trainingSigmaRange() (float64, float64) {
	n := float32(f.c.numTrain)
	shifted := func(s float32) float32 {
		if f.c.dynamic {
			return s
		}
		// The Python scalars become float32 before each tensor op.
		sh, sh1 := float32(f.c.shift), float32(f.c.shift-1)
		return float32(sh*s) / float32(1+float32(sh1*s))
	}
	return float64(shifted(n / n)), float64(shifted(1 / n))
}

func (f *flowMatch) SetTimesteps(n int) error {
	c := f.c
	if n < 1 {
		return fmt.Errorf("sampler: flowmatch_euler: %d steps, want at least 1", n)
	}
	sigmaMax, sigmaMin := f.trainingSigmaRange()
	if c.sigmaMin != nil {
		sigmaMin = *c.sigmaMin
	}
	N := float64(c.numTrain)
	// np.linspace over timesteps, then back to sigmas: float64 throughout.
	sig := npLinspace(float64(sigmaMax*N), float64(sigmaMin*N), n, true)
	for i := range sig {
		sig[i] /= N
	}
	if c.dynamic {
		if c.imageSeqLen <= 0 {
			return fmt.Errorf("sampler: flowmatch_euler: use_dynamic_shifting needs the image sequence length (Options.ImageSeqLen) to compute mu")
		}
		mu := CalculateShift(c.imageSeqLen, c.baseSeqLen, c.maxSeqLen, c.baseShift, c.maxShift)
		for i, t := range sig {
			sig[i] = timeShift(c.timeShiftType, mu, t)
		}
	} else {
		for i, s := range sig {
			// shift * s / (1 + (shift - 1) * s), numpy's order.
			sig[i] = float64(c.shift*s) / (1 + float64((c.shift-1)*s))
		}
	}
	if c.shiftTerminal != 0 {
		// Stretch so that the last sigma lands on shift_terminal.
		scale := (1 - sig[len(sig)-1]) / (1 - c.shiftTerminal)
		for i, s := range sig {
			sig[i] = 1 - (1-s)/scale
		}
	}
	if c.karras {
		sig = karrasSigmas(sig[len(sig)-1], sig[0], n)
	}
	f.sigmas = make([]float32, n+1)
	f.timesteps = make([]float64, n)
	for i, s := range sig {
		v := float32(s)
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("sampler: flowmatch_euler: sigma %d of %d is %v (shift %g, sigma range %g..%g)", i, n, v, c.shift, sigmaMax, sigmaMin)
		}
		f.sigmas[i] = v
		f.timesteps[i] = float64(float32(v * float32(c.numTrain)))
	}
	return nil
}

// timeShift is diffusers' time_shift(mu, 1.0, t): exp(mu) / (exp(mu) +
// (1/t - 1)) for "exponential", mu / (mu + (1/t - 1)) for "linear". At
// t = 0 the IEEE infinities give 0, as numpy's do.
func timeShift(kind string, mu, t float64) float64 {
	a := mu
	if kind == "exponential" {
		a = math.Exp(mu)
	}
	return a / (a + (1/t - 1))
}

func (f *flowMatch) Timesteps() []float64    { return append([]float64(nil), f.timesteps...) }
func (f *flowMatch) Sigmas() []float64       { return widen(f.sigmas) }
func (f *flowMatch) InitNoiseSigma() float64 { return 1 }

// ScaleModelInput does nothing: flow-matching models take the sample as is.
func (f *flowMatch) ScaleModelInput(x []float32, step int) {}

func (f *flowMatch) NeedsNoise(step int) bool {
	return f.c.stochastic && step >= 0 && step < len(f.timesteps)
}

// Step is x + (sigma_next - sigma) * v in float32, as torch computes it (the
// 0-d dt first, then a product and a sum, each rounded). With
// stochastic_sampling it re-noises the x0 estimate to sigma_next instead.
func (f *flowMatch) Step(modelOutput, sample []float32, step int, noise []float32) error {
	if err := checkStep(f.Name(), modelOutput, sample, step, len(f.timesteps), noise, f.c.stochastic); err != nil {
		return err
	}
	sigma, next := f.sigmas[step], f.sigmas[step+1]
	if f.c.stochastic {
		keep := 1 - next
		for i, x := range sample {
			x0 := x - float32(sigma*modelOutput[i])
			sample[i] = float32(keep*x0) + float32(next*noise[i])
		}
		return nil
	}
	dt := next - sigma
	for i, x := range sample {
		sample[i] = x + float32(dt*modelOutput[i])
	}
	return nil
}

// ZImageOptions are the scheduler options ZImagePipeline (diffusers 0.36)
// uses: it sets the scheduler's sigma_min to 0, so that the schedule runs
// down to pure signal (the last sigma is 0 and, with the appended terminal
// 0, the last step has dt = 0), and passes mu for the image's token count
// ((height/16) x (width/16): the latent is 1/8 of the image and the DiT
// patches it 2x2), which only a config with use_dynamic_shifting reads.
func ZImageOptions(imageSeqLen int) Options {
	zero := 0.0
	return Options{ImageSeqLen: imageSeqLen, SigmaMin: &zero}
}

// ZImageTime is the time ZImagePipeline feeds its transformer for a
// scheduler timestep: (1000 - timestep) / 1000 in float32 (1000 fixed by
// the pipeline, not num_train_timesteps), so 0 at pure noise.
func ZImageTime(timestep float64) float32 {
	return float32(1000-float32(timestep)) / 1000
}

// AddNoise is scale_noise: sigma * noise + (1 - sigma) * x in float32.
func (f *flowMatch) AddNoise(dst, x, noise []float32, step int) error {
	if err := checkNoise(f.Name(), dst, x, noise, step, len(f.timesteps)); err != nil {
		return err
	}
	s := f.sigmas[step]
	keep := 1 - s
	for i, v := range x {
		dst[i] = float32(s*noise[i]) + float32(keep*v)
	}
	return nil
}

// Begin: the flow-match Euler step keeps no history.
func (f *flowMatch) Begin(step int) error { return checkBegin(f.Name(), step, len(f.timesteps)) }
