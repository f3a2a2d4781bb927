package sampler

import (
	"fmt"
	"math"
)

// euler is EulerDiscreteScheduler, or EulerAncestralDiscreteScheduler when
// ancestral (k-diffusion's sample_euler / sample_euler_ancestral). Sigmas
// are float32 as in diffusers; the update mirrors torch's float32 ops.
type euler struct {
	c         *config
	t         *tables
	ancestral bool
	timesteps []float64
	sigmas    []float32
	initSigma float32
}

func newEuler(c *config, ancestral bool) (*euler, error) {
	if ancestral && c.prediction == "sample" {
		return nil, fmt.Errorf("sampler: euler_a does not support prediction_type \"sample\" (diffusers does not either)")
	}
	switch c.interpolation {
	case "linear", "log_linear":
	default:
		return nil, fmt.Errorf("sampler: interpolation_type %q is not supported (want linear or log_linear)", c.interpolation)
	}
	t, err := newSigmaTables(c)
	if err != nil {
		return nil, err
	}
	e := &euler{c: c, t: t, ancestral: ancestral}
	// Before SetTimesteps diffusers holds the full training table.
	e.initSigma = e.noiseSigma(t.sigmas)
	return e, nil
}

func (e *euler) Name() string {
	if e.ancestral {
		return "euler_a"
	}
	return "euler"
}

// noiseSigma is init_noise_sigma: the largest sigma, or for "leading"
// spacing sqrt(max^2 + 1), in float32 as the 0-d tensor gives it.
func (e *euler) noiseSigma(sigmas []float32) float32 {
	var m float32
	for _, s := range sigmas {
		m = max(m, s)
	}
	if e.c.spacing == "linspace" || e.c.spacing == "trailing" {
		return m
	}
	return sqrt32(float32(m*m) + 1)
}

func (e *euler) SetTimesteps(n int) error {
	c := e.c
	if n < 1 || n > c.numTrain {
		return fmt.Errorf("sampler: %s: %d steps, want 1 to %d (num_train_timesteps)", e.Name(), n, c.numTrain)
	}
	// Timesteps are float32 in diffusers.
	var ts []float64
	switch c.spacing {
	case "linspace":
		ts = reversed(npLinspace(0, float64(c.numTrain-1), n, true))
	case "leading":
		ratio := c.numTrain / n
		ts = make([]float64, n)
		for i := range ts {
			ts[i] = float64((n-1-i)*ratio + c.stepsOffset)
		}
	case "trailing":
		ts = npRound(npArange(float64(c.numTrain), 0, -float64(c.numTrain)/float64(n)))
		for i := range ts {
			ts[i]--
		}
	}
	for i, v := range ts {
		ts[i] = float64(float32(v))
	}

	var sig []float64
	switch {
	case c.interpolation == "log_linear" && !e.ancestral:
		// diffusers: torch.linspace(log(sigma_max), log(sigma_min), n+1).exp(),
		// which yields n+1 sigmas before the final one is appended.
		last, first := e.t.sigmas[len(e.t.sigmas)-1], e.t.sigmas[0]
		l := linspace32(float64(log32(last)), float64(log32(first)), n+1)
		sig = make([]float64, len(l))
		for i, v := range l {
			sig[i] = float64(exp32(v))
		}
	default:
		sig = make([]float64, n)
		for i, t := range ts {
			sig[i] = interpTable(t, e.t.sigmas)
		}
	}
	if c.karras && !e.ancestral {
		sig = karrasSigmas(sig[len(sig)-1], sig[0], n)
		logs := make([]float32, len(e.t.sigmas))
		for i, s := range e.t.sigmas {
			logs[i] = log32(s)
		}
		for i, s := range sig {
			ts[i] = float64(float32(sigmaToT(s, logs)))
		}
	}
	last := float32(0)
	if c.finalSigmas == "sigma_min" && !e.ancestral {
		last = e.t.sigmas[0]
	}
	e.sigmas = make([]float32, len(sig)+1)
	for i, s := range sig {
		e.sigmas[i] = float32(s)
	}
	e.sigmas[len(sig)] = last
	if c.timestepType == "continuous" && c.prediction == "v_prediction" && !e.ancestral {
		// EDM-style conditioning: t = 0.25 * log(sigma).
		for i := range ts {
			ts[i] = float64(0.25 * log32(e.sigmas[i]))
		}
	}
	e.timesteps = ts
	e.initSigma = e.noiseSigma(e.sigmas)
	return nil
}

func (e *euler) Timesteps() []float64    { return append([]float64(nil), e.timesteps...) }
func (e *euler) Sigmas() []float64       { return widen(e.sigmas) }
func (e *euler) InitNoiseSigma() float64 { return float64(e.initSigma) }
func (e *euler) NeedsNoise(step int) bool {
	return e.ancestral && step >= 0 && step < len(e.timesteps)
}

// ScaleModelInput divides by sqrt(sigma^2 + 1).
func (e *euler) ScaleModelInput(x []float32, step int) {
	if step < 0 || step >= len(e.timesteps) {
		return
	}
	s := e.sigmas[step]
	d := sqrt32(float32(s*s) + 1)
	for i, v := range x {
		x[i] = v / d
	}
}

func (e *euler) Step(modelOutput, sample []float32, step int, noise []float32) error {
	if err := checkStep(e.Name(), modelOutput, sample, step, len(e.timesteps), noise, e.ancestral); err != nil {
		return err
	}
	sigma, next := e.sigmas[step], e.sigmas[step+1]
	// x0 prediction, then the ODE derivative (sample - x0) / sigma.
	var cOut, cSkip float32 // v_prediction: x0 = m*cOut + sample/cSkip
	if e.c.prediction == "v_prediction" {
		s2 := float32(sigma*sigma) + 1
		cOut, cSkip = -sigma/sqrt32(s2), s2
	}
	x0 := func(m, x float32) float32 {
		switch e.c.prediction {
		case "epsilon":
			return x - float32(sigma*m)
		case "v_prediction":
			return float32(m*cOut) + x/cSkip
		default:
			return m
		}
	}
	if !e.ancestral {
		dt := next - sigma
		for i, x := range sample {
			d := (x - x0(modelOutput[i], x)) / sigma
			sample[i] = x + float32(d*dt)
		}
		return nil
	}
	// Ancestral: step down to sigma_down, then add sigma_up of fresh noise.
	from2, to2 := sigma*sigma, next*next
	up := sqrt32(float32(to2*(from2-to2)) / from2)
	down := sqrt32(to2 - float32(up*up))
	if math.IsNaN(float64(up)) || math.IsNaN(float64(down)) {
		return fmt.Errorf("sampler: euler_a step %d: sigma_up/sigma_down are NaN (sigmas %g -> %g)", step, sigma, next)
	}
	dt := down - sigma
	for i, x := range sample {
		d := (x - x0(modelOutput[i], x)) / sigma
		p := x + float32(d*dt)
		sample[i] = p + float32(noise[i]*up)
	}
	return nil
}

// AddNoise is x + noise * sigma, sigma the step's (as add_noise reads
// sigmas[begin_index] or the timestep's index).
func (e *euler) AddNoise(dst, x, noise []float32, step int) error {
	if err := checkNoise(e.Name(), dst, x, noise, step, len(e.timesteps)); err != nil {
		return err
	}
	s := e.sigmas[step]
	for i, v := range x {
		dst[i] = v + float32(noise[i]*s)
	}
	return nil
}

// Begin: Euler keeps no history; the step index alone picks the sigma.
func (e *euler) Begin(step int) error { return checkBegin(e.Name(), step, len(e.timesteps)) }
