package sampler

import (
	"fmt"
	"math"
)

// lcm is LCMScheduler (latent consistency models): each step denoises to
// x0 with the consistency boundary scalings, then re-noises to the next
// timestep with a fresh draw (none after the last step).
type lcm struct {
	c         *config
	ac        []float32
	final     float32
	timesteps []float64
}

func newLCM(c *config) (*lcm, error) {
	if c.originalSteps < 1 || c.originalSteps > c.numTrain {
		return nil, fmt.Errorf("sampler: lcm: original_inference_steps %d, want 1 to %d", c.originalSteps, c.numTrain)
	}
	t, err := newTables(c)
	if err != nil {
		return nil, err
	}
	return &lcm{c: c, ac: t.ac, final: finalAlpha(c, t.ac)}, nil
}

func (l *lcm) Name() string                   { return "lcm" }
func (l *lcm) Timesteps() []float64           { return append([]float64(nil), l.timesteps...) }
func (l *lcm) Sigmas() []float64              { return nil }
func (l *lcm) InitNoiseSigma() float64        { return 1 }
func (l *lcm) ScaleModelInput([]float32, int) {}
func (l *lcm) NeedsNoise(step int) bool {
	return step >= 0 && step < len(l.timesteps)-1
}

// SetTimesteps picks n of the distillation schedule's timesteps
// (k*i - 1 for i = 1..original_inference_steps, k = N/original), evenly by
// index from the top.
func (l *lcm) SetTimesteps(n int) error {
	orig := l.c.originalSteps
	if n < 1 || n > orig {
		return fmt.Errorf("sampler: lcm: %d steps, want 1 to %d (original_inference_steps)", n, orig)
	}
	k := l.c.numTrain / orig
	origin := make([]float64, orig) // descending
	for i := range origin {
		origin[i] = float64((orig-i)*k - 1)
	}
	idx := npLinspace(0, float64(orig), n, false)
	l.timesteps = make([]float64, n)
	for i, v := range idx {
		l.timesteps[i] = origin[int(math.Floor(v))]
	}
	return nil
}

func (l *lcm) Step(modelOutput, sample []float32, step int, noise []float32) error {
	n := len(l.timesteps)
	last := step == n-1
	if err := checkStep("lcm", modelOutput, sample, step, n, noise, !last); err != nil {
		return err
	}
	t := int(l.timesteps[step])
	prev := t
	if !last {
		prev = int(l.timesteps[step+1])
	}
	a, aPrev := l.ac[t], alphaAt(l.ac, prev, l.final)
	sa, sb := sqrt32(a), sqrt32(1-a)
	sap, sbp := sqrt32(aPrev), sqrt32(1-aPrev)
	// Boundary condition scalings, sigma_data = 0.5 (float32 as torch).
	st := float32(t) * float32(l.c.timestepScaling)
	den := float32(st*st) + 0.25
	cSkip := 0.25 / den
	cOut := st / sqrt32(den)
	r := float32(l.c.clipRange)
	for i, x := range sample {
		m := modelOutput[i]
		var x0 float32
		switch l.c.prediction {
		case "epsilon":
			x0 = (x - float32(sb*m)) / sa
		case "sample":
			x0 = m
		default: // v_prediction
			x0 = float32(sa*x) - float32(sb*m)
		}
		if l.c.clipSample {
			x0 = min(max(x0, -r), r)
		}
		denoised := float32(cOut*x0) + float32(cSkip*x)
		if last {
			sample[i] = denoised
		} else {
			sample[i] = float32(sap*denoised) + float32(sbp*noise[i])
		}
	}
	return nil
}

func (l *lcm) AddNoise(dst, x, noise []float32, step int) error {
	return ddpmAddNoise("lcm", l.ac, l.timesteps, dst, x, noise, step)
}

// Begin: LCM keeps no history; each step re-noises to the next timestep of
// the whole list, as its step_index does after set_begin_index.
func (l *lcm) Begin(step int) error { return checkBegin("lcm", step, len(l.timesteps)) }
