package zimage_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zimage/zimage"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/sched"
)

var (
	faultsEvery = flag.Bool("faults.every", false,
		"TestFaults and TestCancelEveryBoundary try every N along a generation (long run) instead of the first, middle and last")
	faultsModels = flag.String("faults.models", "tiny-sd-turbo",
		"the tiny models TestFaults injects faults into, comma-separated (all: tiny-sd-turbo,tiny-sdxl-turbo,tiny-z-image-turbo)")
)

// injector is a vk.Options.Fault hook that fails the at-th operation of
// one kind and counts them all. The device calls it on the test's
// goroutine only.
type injector struct {
	point vk.FaultPoint
	at    int // the operation count at which to fail; 0: never
	err   error
	seen  [vk.NumFaultPoints]int
	fired int
}

func (in *injector) hook(p vk.FaultPoint, n int) error {
	in.seen[p] = n
	if in.at > 0 && p == in.point && n == in.at {
		in.fired++
		return in.err
	}
	return nil
}

// arm fails the n-th operation of kind p from now on.
func (in *injector) arm(p vk.FaultPoint, n int, err error) {
	in.point, in.at, in.err, in.fired = p, in.seen[p]+n, err, 0
}

func (in *injector) disarm() { in.at = 0 }

// faultPipeline injects the faults of TestFaults into a pipeline of the
// model in dir and returns the image it makes without them.
func faultPipeline(t *testing.T, dir string, streamed bool, req zimage.Request) *zimage.Result {
	inj := &injector{}
	d := openVK(t, inj.hook)
	defer func() { require.NoError(t, d.Close()) }()
	opts := []zimage.Option{zimage.WithBackend(d)}
	if streamed {
		opts = append(opts, zimage.WithBudget(24<<20), zimage.WithOffload(sched.OffloadLayer))
	}
	p, err := zimage.Load(dir, opts...)
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Close()) }()
	want, err := p.Generate(context.Background(), req)
	require.NoError(t, err)
	base := measure(t, d)
	for _, point := range []vk.FaultPoint{vk.FaultAlloc, vk.FaultUpload, vk.FaultSubmit} {
		before := inj.seen[point]
		res, err := p.Generate(context.Background(), req)
		require.NoError(t, err)
		sameImages(t, want, res, "second run")
		per := inj.seen[point] - before
		failed, absorbed := 0, 0
		for _, n := range picks(per) {
			inj.arm(point, n, vk.ErrOutOfDeviceMemory)
			res, err = p.Generate(context.Background(), req)
			inj.disarm()
			require.Equal(t, 1, inj.fired, "%v %d of %d: the fault did not fire", point, n, per)
			if err == nil {
				require.True(t, streamed && point != vk.FaultSubmit, "%v %d of %d: Generate succeeded", point, n, per)
				sameImages(t, want, res, "after an absorbed fault")
				absorbed++
			} else {
				var re *vk.ResultError
				require.ErrorIs(t, err, vk.ErrOutOfDeviceMemory, "%v %d of %d", point, n, per)
				require.True(t, errors.As(err, &re) && re.Injected, "%v %d of %d: %v is not the injected *vk.ResultError", point, n, per, err)
				failed++
			}
			res, err = p.Generate(context.Background(), req)
			require.NoError(t, err, "the Generate after %v fault %d of %d", point, n, per)
			sameImages(t, want, res, "after a fault")
			s := measure(t, d)
			require.Equal(t, base.DevInUse, s.DevInUse, "device bytes after %v fault %d of %d", point, n, per)
			require.Equal(t, base.Objects, s.Objects, "Vulkan objects after %v fault %d of %d", point, n, per)
			require.Equal(t, base.Goroutines, s.Goroutines, "goroutines after %v fault %d of %d", point, n, per)
		}
		t.Logf("%v: %d per generation; injected %d: %d failed Generate with a typed error, %d absorbed by a retry; all recovered", point, per, failed+absorbed, failed, absorbed)
	}
	return want
}

// picks is the Ns to try out of 1..total: all of them with -faults.every,
// else the first, the middle and the last.
func picks(total int) []int {
	if *faultsEvery {
		out := make([]int, total)
		for i := range out {
			out[i] = i + 1
		}
		return out
	}
	var out []int
	for _, n := range []int{1, (total + 1) / 2, total} {
		if n >= 1 && (len(out) == 0 || out[len(out)-1] != n) {
			out = append(out, n)
		}
	}
	return out
}

func faultRequest() zimage.Request {
	cfg := 7.5
	return zimage.Request{Prompt: "a red cube", NegativePrompt: "blue", Width: 64, Height: 64, Steps: 2, Guidance: &cfg, Seed: 5}
}

// sameImages fails unless res holds exactly the images of want.
func sameImages(t *testing.T, want, res *zimage.Result, what string) {
	t.Helper()
	require.Equal(t, len(want.Images), len(res.Images), what)
	for i := range want.Images {
		require.True(t, bytes.Equal(want.Images[i].Pix, res.Images[i].Pix), "%s: image %d differs from the one made without faults", what, i+1)
	}
}

// TestFaults makes the N-th device allocation, upload and submit of a
// generation fail, for the first, middle and last N (every N with
// -faults.every), on a pipeline with resident weights and on one
// streaming them under a budget (of tiny SD-Turbo; -faults.models adds
// the other tiny models); and the N-th pipeline creation of a
// fresh device. Each failure must come out of Generate as a typed error
// (errors.Is the injected vk error, a *vk.ResultError), nothing may panic
// or leak (device bytes and Vulkan objects back to their baseline), and
// the next Generate on the same Pipeline must make the very image made
// without faults. A prefetch of the streaming pipeline may fail (its
// allocation or upload) without failing the run: the block is uploaded
// again when it is needed.
func TestFaults(t *testing.T) {
	dir := testref.Dir(t, "tiny-sd-turbo")
	req := faultRequest()
	var want *zimage.Result
	for _, m := range strings.Split(*faultsModels, ",") {
		for _, streamed := range []bool{false, true} {
			name := m + "/resident"
			if streamed {
				name = m + "/streamed"
			}
			t.Run(name, func(t *testing.T) {
				res := faultPipeline(t, testref.Dir(t, m), streamed, req)
				if m == "tiny-sd-turbo" && want == nil {
					want = res
				}
			})
		}
	}

	t.Run("pipeline", func(t *testing.T) {
		if want == nil {
			t.Skip("no reference image")
		}
		count := func(fault func(vk.FaultPoint, int) error) (int, error) {
			d := openVK(t, fault)
			p, err := zimage.Load(dir, zimage.WithBackend(d))
			require.NoError(t, err)
			res, err := p.Generate(context.Background(), req)
			if err == nil {
				sameImages(t, want, res, "fresh device")
			} else {
				res, err2 := p.Generate(context.Background(), req)
				require.NoError(t, err2, "the Generate after %v", err)
				sameImages(t, want, res, "after a failed pipeline creation")
			}
			n := int(d.Counters().PipelinesCreated)
			require.NoError(t, p.Close())
			require.NoError(t, d.Close(), "Close checks no Vulkan object leaked")
			return n, err
		}
		total, err := count(nil)
		require.NoError(t, err)
		tried := 0
		for _, n := range picks(total) {
			inj := &injector{}
			inj.arm(vk.FaultPipeline, n, vk.ErrOutOfHostMemory)
			_, err := count(inj.hook)
			require.Equal(t, 1, inj.fired)
			var re *vk.ResultError
			require.ErrorIs(t, err, vk.ErrOutOfHostMemory, "pipeline %d of %d", n, total)
			require.True(t, errors.As(err, &re) && re.Injected && strings.Contains(re.Call, "vkCreateComputePipelines"), "pipeline %d of %d: %v", n, total, err)
			tried++
		}
		t.Logf("pipeline: %d created per fresh device; injected %d, each failed Generate with a typed error and recovered", total, tried)
	})

	t.Run("device-lost", func(t *testing.T) {
		if want == nil {
			t.Skip("no reference image")
		}
		inj := &injector{}
		d := openVK(t, inj.hook)
		p, err := zimage.Load(dir, zimage.WithBackend(d))
		require.NoError(t, err)
		_, err = p.Generate(context.Background(), req)
		require.NoError(t, err)
		before := inj.seen[vk.FaultSubmit]
		_, err = p.Generate(context.Background(), req)
		require.NoError(t, err)
		per := inj.seen[vk.FaultSubmit] - before
		inj.arm(vk.FaultSubmit, (per+1)/2, vk.ErrDeviceLost)
		_, err = p.Generate(context.Background(), req)
		require.ErrorIs(t, err, zimage.ErrDeviceLost)
		require.Contains(t, err.Error(), "Load the model again")
		t0 := time.Now()
		_, err = p.Generate(context.Background(), req)
		took := time.Since(t0)
		require.ErrorIs(t, err, vk.ErrDeviceLost, "the Generate after a lost device")
		require.Contains(t, err.Error(), "Load the model again")
		require.Less(t, took, 100*time.Millisecond, "the Generate after a lost device should fail fast")
		require.Error(t, d.Lost())
		require.NoError(t, p.Close())
		require.NoError(t, d.Close(), "closing a lost device still destroys every object")
		t.Logf("device lost at submit %d of %d: %v; the next Generate failed in %v", (per+1)/2, per, err, took)
	})
}

// TestCancelEveryBoundary cancels a generation at its N-th context check
// (every step, block and tile boundary checks it), for the first, middle
// and last N (all with -faults.every), on a resident and a streaming
// pipeline: Generate returns context.Canceled, nothing leaks, and the next
// Generate makes the same image as without cancellation.
func TestCancelEveryBoundary(t *testing.T) {
	dir := testref.Dir(t, "tiny-sd-turbo")
	req := faultRequest()
	req.VAETiling, req.Tile = sched.TilingOn, 32
	d := openVK(t, nil)
	defer func() { require.NoError(t, d.Close()) }()
	for _, streamed := range []bool{false, true} {
		opts := []zimage.Option{zimage.WithBackend(d)}
		name := "resident"
		if streamed {
			opts, name = append(opts, zimage.WithBudget(24<<20), zimage.WithOffload(sched.OffloadLayer)), "streamed"
		}
		p, err := zimage.Load(dir, opts...)
		require.NoError(t, err)
		ctx := &cancelAt{Context: context.Background()}
		want, err := p.Generate(ctx, req)
		require.NoError(t, err)
		checks := ctx.calls
		base := measure(t, d)
		for _, n := range picks(checks) {
			_, err := p.Generate(&cancelAt{Context: context.Background(), at: n}, req)
			require.ErrorIs(t, err, context.Canceled, "%s: cancelled at check %d of %d", name, n, checks)
			res, err := p.Generate(context.Background(), req)
			require.NoError(t, err)
			sameImages(t, want, res, "after a cancellation")
			s := measure(t, d)
			require.Equal(t, base.DevInUse, s.DevInUse, "%s: device bytes after cancelling at check %d", name, n)
			require.Equal(t, base.Objects, s.Objects, "%s: Vulkan objects after cancelling at check %d", name, n)
		}
		t.Logf("%s: %d context checks per generation; cancelled at %d of them, all recovered", name, checks, len(picks(checks)))
		require.NoError(t, p.Close())
	}
}
