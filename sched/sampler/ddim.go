package sampler

import "fmt"

// integerTimesteps are the int64 timesteps of DDIM/DPM-Solver style
// schedulers for n steps, in sampling (descending) order. extra is 1 for
// DPM-Solver, which spaces n+1 points and drops the last.
func integerTimesteps(c *config, n, extra int) []float64 {
	N := c.numTrain
	var ts []float64
	switch c.spacing {
	case "linspace":
		ts = reversed(npRound(npLinspace(0, float64(N-1), n+extra, true)))[:n]
	case "leading":
		ratio := N / (n + extra)
		ts = make([]float64, n)
		for i := range ts {
			ts[i] = float64((n+extra-1-i)*ratio + c.stepsOffset)
		}
	case "trailing":
		ts = npRound(npArange(float64(N), 0, -float64(N)/float64(n)))
		for i := range ts {
			ts[i]--
		}
	}
	return ts
}

// checkSteps validates n for the alpha-based schedulers.
func checkSteps(name string, n, numTrain int) error {
	if n < 1 || n > numTrain {
		return fmt.Errorf("sampler: %s: %d steps, want 1 to %d (num_train_timesteps)", name, n, numTrain)
	}
	return nil
}

// alphaAt is alphas_cumprod[t], or the final alpha for t < 0.
func alphaAt(ac []float32, t int, final float32) float32 {
	if t < 0 {
		return final
	}
	return ac[t]
}

func finalAlpha(c *config, ac []float32) float32 {
	if c.setAlphaToOne {
		return 1
	}
	return ac[0]
}

// ddim is DDIMScheduler with eta = 0 (the pipelines' default): deterministic.
type ddim struct {
	c         *config
	ac        []float32
	final     float32
	n         int
	timesteps []float64
}

func newDDIM(c *config) (*ddim, error) {
	t, err := newTables(c)
	if err != nil {
		return nil, err
	}
	return &ddim{c: c, ac: t.ac, final: finalAlpha(c, t.ac)}, nil
}

func (d *ddim) Name() string                   { return "ddim" }
func (d *ddim) Timesteps() []float64           { return append([]float64(nil), d.timesteps...) }
func (d *ddim) Sigmas() []float64              { return nil }
func (d *ddim) InitNoiseSigma() float64        { return 1 }
func (d *ddim) NeedsNoise(int) bool            { return false }
func (d *ddim) ScaleModelInput([]float32, int) {}

func (d *ddim) SetTimesteps(n int) error {
	if err := checkSteps("ddim", n, d.c.numTrain); err != nil {
		return err
	}
	d.n = n
	d.timesteps = integerTimesteps(d.c, n, 0)
	return nil
}

func (d *ddim) Step(modelOutput, sample []float32, step int, noise []float32) error {
	if err := checkStep("ddim", modelOutput, sample, step, len(d.timesteps), noise, false); err != nil {
		return err
	}
	t := int(d.timesteps[step])
	prev := t - d.c.numTrain/d.n
	if t < 0 || t >= len(d.ac) {
		return fmt.Errorf("sampler: ddim step %d: timestep %d outside the %d training steps", step, t, len(d.ac))
	}
	a, aPrev := d.ac[t], alphaAt(d.ac, prev, d.final)
	sa, sb := sqrt32(a), sqrt32(1-a)
	dir := sqrt32(1 - aPrev) // sqrt(1 - a_prev - std^2) with std = 0
	sap := sqrt32(aPrev)
	r := float32(d.c.clipRange)
	for i, x := range sample {
		m := modelOutput[i]
		var x0, eps float32
		switch d.c.prediction {
		case "epsilon":
			x0, eps = (x-float32(sb*m))/sa, m
		case "sample":
			x0 = m
			eps = (x - float32(sa*x0)) / sb
		default: // v_prediction
			x0 = float32(sa*x) - float32(sb*m)
			eps = float32(sa*m) + float32(sb*x)
		}
		if d.c.clipSample {
			x0 = min(max(x0, -r), r)
		}
		sample[i] = float32(sap*x0) + float32(dir*eps)
	}
	return nil
}

func (d *ddim) AddNoise(dst, x, noise []float32, step int) error {
	return ddpmAddNoise("ddim", d.ac, d.timesteps, dst, x, noise, step)
}

// Begin: DDIM (eta 0) keeps no history.
func (d *ddim) Begin(step int) error { return checkBegin("ddim", step, len(d.timesteps)) }
