package sampler

import "fmt"

// pndm is PNDMScheduler with skip_prk_steps (the Stable Diffusion 1.x
// default): pseudo linear multistep (PLMS) on the noise predictions, with a
// second call at the first timestep pair to warm up the history.
type pndm struct {
	c         *config
	ac        []float32
	final     float32
	n         int
	timesteps []float64
	// run state
	ets       [][]float32 // last model outputs (at most 4)
	curSample []float32   // sample before step 0, reused by step 1
	counter   int         // steps taken since begin
	begin     int         // index of the run's first timestep
}

func newPNDM(c *config) (*pndm, error) {
	if c.prediction == "sample" {
		return nil, fmt.Errorf("sampler: pndm does not support prediction_type \"sample\" (want epsilon or v_prediction)")
	}
	// diffusers' PNDM has no rescale_betas_zero_snr and ignores the key.
	c.rescaleZeroSNR = false
	t, err := newTables(c)
	if err != nil {
		return nil, err
	}
	return &pndm{c: c, ac: t.ac, final: finalAlpha(c, t.ac)}, nil
}

func (p *pndm) Name() string                   { return "pndm" }
func (p *pndm) Timesteps() []float64           { return append([]float64(nil), p.timesteps...) }
func (p *pndm) Sigmas() []float64              { return nil }
func (p *pndm) InitNoiseSigma() float64        { return 1 }
func (p *pndm) NeedsNoise(int) bool            { return false }
func (p *pndm) ScaleModelInput([]float32, int) {}

func (p *pndm) SetTimesteps(n int) error {
	c := p.c
	if err := checkSteps("pndm", n, c.numTrain); err != nil {
		return err
	}
	// Ascending base timesteps, then PLMS order: all but the last, the
	// second-to-last again, the last; reversed.
	var base []float64
	switch c.spacing {
	case "linspace":
		base = npRound(npLinspace(0, float64(c.numTrain-1), n, true))
	case "leading":
		ratio := c.numTrain / n
		base = make([]float64, n)
		for i := range base {
			base[i] = float64(i*ratio + c.stepsOffset)
		}
	case "trailing":
		base = reversed(npRound(npArange(float64(c.numTrain), 0, -float64(c.numTrain)/float64(n))))
		for i := range base {
			base[i]--
		}
	}
	plms := append([]float64(nil), base[:len(base)-1]...)
	if len(base) >= 2 {
		plms = append(plms, base[len(base)-2])
	}
	plms = append(plms, base[len(base)-1])
	p.n = n
	p.timesteps = reversed(plms)
	p.ets, p.curSample, p.counter, p.begin = nil, nil, 0, 0
	return nil
}

// Begin starts the PLMS history afresh at step, as a fresh scheduler run
// on timesteps[t_start:] (diffusers' img2img): the warm-up pair then
// falls on steps begin and begin+1.
func (p *pndm) Begin(step int) error {
	if err := checkBegin("pndm", step, len(p.timesteps)); err != nil {
		return err
	}
	p.ets, p.curSample, p.counter, p.begin = nil, nil, 0, step
	return nil
}

func (p *pndm) AddNoise(dst, x, noise []float32, step int) error {
	return ddpmAddNoise("pndm", p.ac, p.timesteps, dst, x, noise, step)
}

func (p *pndm) Step(modelOutput, sample []float32, step int, noise []float32) error {
	if err := checkStep("pndm", modelOutput, sample, step, len(p.timesteps), noise, false); err != nil {
		return err
	}
	if step != p.begin+p.counter {
		return fmt.Errorf("sampler: pndm: step %d after %d steps from step %d; PNDM steps must run in order (SetTimesteps or Begin restarts)", step, p.counter, p.begin)
	}
	ratio := p.c.numTrain / p.n
	t := int(p.timesteps[step])
	prev := t - ratio
	if p.counter != 1 {
		if len(p.ets) > 3 {
			p.ets = p.ets[len(p.ets)-3:]
		}
		p.ets = append(p.ets, append([]float32(nil), modelOutput...))
	} else {
		prev = t
		t += ratio
	}
	if t < 0 || t >= len(p.ac) {
		return fmt.Errorf("sampler: pndm step %d: timestep %d outside the %d training steps", step, t, len(p.ac))
	}
	if p.curSample != nil && len(p.curSample) != len(sample) {
		return fmt.Errorf("sampler: pndm step %d: sample has %d values, the run started with %d", step, len(sample), len(p.curSample))
	}
	// Combined noise prediction (float32, in torch's operation order).
	e := p.ets
	k := len(e)
	mo := make([]float32, len(sample))
	src := sample
	switch {
	case k == 1 && p.counter == 0:
		copy(mo, modelOutput)
		p.curSample = append([]float32(nil), sample...)
	case k == 1 && p.counter == 1:
		for i := range mo {
			mo[i] = (modelOutput[i] + e[0][i]) / 2
		}
		src = p.curSample
		p.curSample = nil
	case k == 2:
		for i := range mo {
			mo[i] = (float32(3*e[1][i]) - e[0][i]) / 2
		}
	case k == 3:
		for i := range mo {
			mo[i] = (float32(23*e[2][i]) - float32(16*e[1][i]) + float32(5*e[0][i])) / 12
		}
	default:
		// torch casts the Python double 1/24 to float32 before multiplying.
		d := 24.0
		inv := float32(1 / d)
		for i := range mo {
			s := float32(55*e[3][i]) - float32(59*e[2][i]) + float32(37*e[1][i]) - float32(9*e[0][i])
			mo[i] = inv * s
		}
	}
	p.prevSample(sample, src, mo, t, prev)
	p.counter++
	return nil
}

// prevSample is _get_prev_sample (PNDM paper eq. 9) writing into dst.
func (p *pndm) prevSample(dst, src, mo []float32, t, prev int) {
	a, aPrev := p.ac[t], alphaAt(p.ac, prev, p.final)
	b, bPrev := 1-a, 1-aPrev
	sampleCoeff := sqrt32(aPrev / a)
	denom := float32(a*sqrt32(bPrev)) + sqrt32(float32(a*b)*aPrev)
	diff := aPrev - a
	v := p.c.prediction == "v_prediction"
	sa, sb := sqrt32(a), sqrt32(b)
	for i, x := range src {
		m := mo[i]
		if v {
			m = float32(sa*m) + float32(sb*x)
		}
		dst[i] = float32(sampleCoeff*x) - float32(diff*m)/denom
	}
}
