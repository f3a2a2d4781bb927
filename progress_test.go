package zimage_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
)

// TestRequestProgress: a request's own callback sees every stage start, each
// denoising step and "done", in order, and a cancel from inside it stops the
// run before the next step.
func TestRequestProgress(t *testing.T) {
	r := testref.Open(t, "tiny-sd-turbo")
	p, err := zimage.Load(r.Dir, zimage.WithBackend(ref.New()))
	require.NoError(t, err)
	defer p.Close()

	var got []string
	req := zimage.Request{Prompt: "a red cube", Seed: 1, Steps: 3, Progress: func(e zimage.Progress) {
		got = append(got, e.Stage+":"+string(rune('0'+e.Step))+"/"+string(rune('0'+e.Steps)))
	}}
	_, err = p.Generate(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, []string{"text:0/3", "denoise:0/3", "denoise:1/3", "denoise:2/3", "denoise:3/3", "decode:3/3", "done:3/3"}, got)

	ctx, cancel := context.WithCancel(context.Background())
	steps := 0
	req.Progress = func(e zimage.Progress) {
		if e.Stage == "denoise" && e.Step == 1 {
			cancel()
		}
		if e.Stage == "denoise" && e.Step > 0 {
			steps++
		}
	}
	_, err = p.Generate(ctx, req)
	require.True(t, errors.Is(err, context.Canceled), "want context.Canceled, got %v", err)
	require.Equal(t, 1, steps, "the run went on after the cancel")

	m := p.Model()
	require.Equal(t, "tiny-sd-turbo", m.Name)
	require.Equal(t, "sd2", m.Arch)
	require.True(t, m.Turbo)
	require.Equal(t, 64, m.BaseSize)
	require.Positive(t, m.Params)
	require.Equal(t, []string{"F16"}, m.DTypes)
	require.Equal(t, 8, p.SizeMultiple())
}

// TestModelHash: every test model gets A1111's 8-digit hash without
// loading (a server lists a models folder with it), Z-Image's transformer
// included; a folder that is no model gets "".
func TestModelHash(t *testing.T) {
	root, ok := testref.Root()
	if !ok {
		t.Skipf("reference models not found at %s", root)
	}
	for _, m := range append(testref.Models, "tiny-z-image-turbo") {
		h := zimage.ModelHash(filepath.Join(root, m))
		require.Regexp(t, `^[0-9a-f]{8}$`, h, m)
	}
	require.Empty(t, zimage.ModelHash(t.TempDir()))
}
