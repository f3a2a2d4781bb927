package server

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/sched"
)

func TestProgressOf(t *testing.T) {
	now := time.Now()
	j := &job{started: now.Add(-10 * time.Second), stageStart: now, images: 2, steps: 1, stage: "text"}
	frac, eta := progressOf(j, now)
	assert.Zero(t, frac, "nothing finished, no estimate")
	assert.Zero(t, eta)

	j.stage, j.step = "decode", 1 // text and the step done: 2 of 4 units of image 1
	frac, eta = progressOf(j, now)
	assert.InDelta(t, 0.25, frac, 1e-9)
	assert.InDelta(t, 30, eta, 1e-9, "10 s for a quarter")

	// Measured: text 1 s, one step 2 s, decode 7 s at 64x64; this job is
	// 128x64, so the step and the decode cost twice as much.
	last := &zimage.Result{Parameters: zimage.Parameters{Width: 64, Height: 64, Steps: 1}, Stages: []sched.Stage{
		{Name: "text", Duration: time.Second}, {Name: "denoise", Duration: 2 * time.Second}, {Name: "decode", Duration: 7 * time.Second}}}
	j.estimate = newEstimate(last, 128*64)
	j.stage, j.step, j.image = "denoise", 1, 1 // second image, its step done
	frac, eta = progressOf(j, now)
	total := 1 + 4 + 14.0
	assert.InDelta(t, (1+5/total)/2, frac, 1e-9)
	assert.InDelta(t, 14, eta, 1e-9, "only this image's decode is left")

	j.out = &outcome{}
	frac, eta = progressOf(j, now)
	assert.Equal(t, 1.0, frac)
	assert.Zero(t, eta)
}
