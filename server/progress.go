package server

import (
	"time"

	"github.com/zimage/zimage"
)

// estimate predicts one image's stage times, in seconds, from the last
// image the same model made, scaled by pixel count (the UNet's and the
// VAE's work grow with it; the text encoder's does not).
type estimate struct {
	text, perStep, decode float64
}

func newEstimate(last *zimage.Result, pixels int) *estimate {
	if last == nil || len(last.Stages) == 0 || last.Parameters.Steps == 0 {
		return nil
	}
	scale := float64(pixels) / float64(max(1, last.Parameters.Width*last.Parameters.Height))
	e := &estimate{}
	for _, s := range last.Stages {
		switch s.Name {
		case "text":
			e.text = s.Duration.Seconds()
		case "denoise":
			e.perStep = s.Duration.Seconds() / float64(last.Parameters.Steps) * scale
		case "decode":
			e.decode = s.Duration.Seconds() * scale
		}
	}
	return e
}

// progressOf reports how far j is (0-1) and the seconds it still needs.
// With an estimate from an earlier run the stages are weighted by their
// measured cost (for one-step models the VAE decode is most of the time);
// without one, fixed weights per stage and the elapsed time.
// The caller holds the queue's mutex.
func progressOf(j *job, now time.Time) (frac, eta float64) {
	if j.started.IsZero() || j.images == 0 {
		return 0, 0
	}
	if j.out != nil {
		return 1, 0
	}
	inStage := now.Sub(j.stageStart).Seconds()
	if e := j.estimate; e != nil {
		total := e.text + e.perStep*float64(j.steps) + e.decode
		var done float64
		switch j.stage {
		case "text":
			done = min(inStage, e.text)
		case "denoise":
			done = e.text + e.perStep*float64(j.step)
		case "decode", "done":
			done = e.text + e.perStep*float64(j.steps) + min(inStage, 0.99*e.decode)
		}
		if total > 0 {
			frac = (float64(j.image) + done/total) / float64(j.images)
			eta = total - done + total*float64(j.images-j.image-1)
			return min(frac, 1), max(eta, 0)
		}
	}
	// No measurement yet (the first image after a load): weigh the text
	// encoder as one step and the decode as two, and let the ETA follow
	// the elapsed time once something has finished.
	units := float64(j.steps + 3)
	var done float64
	switch j.stage {
	case "denoise":
		done = 1 + float64(j.step)
	case "decode", "done":
		done = 1 + float64(j.steps)
	}
	frac = (float64(j.image) + done/units) / float64(j.images)
	if frac <= 0 {
		return 0, 0
	}
	el := now.Sub(j.started).Seconds()
	return min(frac, 1), max(el/frac-el, 0)
}
