package zimage_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
	faultsModels = flag.String("faults.models", "tiny-sd-turbo,tiny-sd-turbo+lora",
		"the cases TestFaults injects faults into, comma-separated: tiny model folders, gguf/<file> of testmodels/gguf, "+
			"a +lora suffix for rounds with a LoRA (all: "+allFaultModels+")")
)

// allFaultModels is every case -faults.models knows.
const allFaultModels = "tiny-sd-turbo,tiny-sd-turbo+lora,tiny-sdxl-turbo,tiny-z-image-turbo,tiny-z-image-turbo+lora,gguf/tiny-sd-turbo.q8_0"

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

// faultCase is a pipeline TestFaults injects faults into, and the requests
// of one round on it. A round is what the faults walk along: every
// operation of a kind in a round is failed in turn. A LoRA case's round is
// the LoRA'd request and the base request after it, so that every round
// applies the LoRA and removes it again.
type faultCase struct {
	name     string
	path     string
	opts     []zimage.Option
	streamed bool
	round    []zimage.Request
}

// faultTally counts, per fault kind, the faults injected and how they
// ended, over all of TestFaults (its subtests run one after another).
type faultTally struct {
	injected, failed, absorbed [vk.NumFaultPoints]int
}

func (ft *faultTally) String() string {
	var parts []string
	for p := vk.FaultPoint(0); p < vk.NumFaultPoints; p++ {
		if ft.injected[p] > 0 {
			parts = append(parts, fmt.Sprintf("%v: %d injected, %d failed with a typed error, %d absorbed, all survived", p,
				ft.injected[p], ft.failed[p], ft.absorbed[p]))
		}
	}
	return strings.Join(parts, "; ")
}

// faultCases lists the cases of -faults.models: a tiny model folder name,
// "gguf/<file>" for a GGUF file of testmodels/gguf (tokenizer and configs
// from the tiny model it was made from), and a "+lora" suffix for rounds
// with a LoRA (merged into resident weights, in the forward pass when
// streamed). Each runs with resident weights and streamed under a budget.
func faultCases(t *testing.T) []faultCase {
	root, ok := testref.Root()
	if !ok {
		t.Skipf("reference models not found at %s", root)
	}
	var out []faultCase
	for _, m := range strings.Split(*faultsModels, ",") {
		m = strings.TrimSpace(m)
		base, withLoRA := strings.CutSuffix(m, "+lora")
		c := faultCase{path: filepath.Join(root, base)}
		if file, ok := strings.CutPrefix(base, "gguf/"); ok {
			from, _, _ := strings.Cut(file, ".")
			dir := filepath.Join(root, from)
			c.path = filepath.Join(root, "gguf", file+".gguf")
			c.opts = append(c.opts, zimage.WithTokenizer(dir), zimage.WithConfigDir(dir))
		}
		if _, err := os.Stat(c.path); err != nil {
			t.Fatalf("-faults.models %s: %v", m, err)
		}
		req := faultRequest()
		c.round = []zimage.Request{req}
		if withLoRA {
			loras := filepath.Join(c.path, "loras")
			tag := " <lora:style_a:0.8>"
			if strings.Contains(base, "z-image") {
				loras = t.TempDir()
				writeZImageLoRA(t, c.path, filepath.Join(loras, "zi_style.safetensors"))
				tag = " <lora:zi_style:0.8>"
			}
			c.opts = append(c.opts, zimage.WithLoRADir(loras), zimage.WithLoRAMode(zimage.LoRAMerge))
			lreq := req
			lreq.Prompt += tag
			c.round = []zimage.Request{lreq, req}
		}
		for _, streamed := range []bool{false, true} {
			c := c
			c.name, c.streamed = m+"/resident", streamed
			c.opts = slices.Clone(c.opts)
			if streamed {
				c.name = m + "/streamed"
				c.opts = append(c.opts, zimage.WithBudget(24<<20), zimage.WithOffload(sched.OffloadLayer))
			}
			out = append(out, c)
		}
	}
	return out
}

// faultPipeline injects the faults of TestFaults into a pipeline of case
// c and returns the images a round makes without them.
func faultPipeline(t *testing.T, c faultCase, tally *faultTally) []*zimage.Result {
	inj := &injector{}
	d := openVK(t, inj.hook)
	defer func() { require.NoError(t, d.Close()) }()
	p, err := zimage.Load(c.path, append(c.opts, zimage.WithBackend(d))...)
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Close()) }()
	round := func(what string) []*zimage.Result {
		var out []*zimage.Result
		for i, req := range c.round {
			res, err := p.Generate(context.Background(), req)
			require.NoError(t, err, "%s: request %d of the round", what, i+1)
			out = append(out, res)
		}
		return out
	}
	want := round("the first round")
	base := measure(t, d)
	for _, point := range []vk.FaultPoint{vk.FaultAlloc, vk.FaultUpload, vk.FaultSubmit} {
		before := inj.seen[point]
		for i, res := range round("the second round") {
			sameImages(t, want[i], res, "second round")
		}
		per := inj.seen[point] - before
		failed, absorbed := 0, 0
		for _, n := range picks(per) {
			inj.arm(point, n, vk.ErrOutOfDeviceMemory)
			hit := -1
			for i, req := range c.round {
				res, err := p.Generate(context.Background(), req)
				fired := inj.fired == 1 && hit < 0
				if fired {
					hit = i
				}
				switch {
				case err == nil:
					require.True(t, !fired || (c.streamed && point != vk.FaultSubmit), "%v %d of %d (request %d): Generate succeeded", point, n, per, i+1)
					sameImages(t, want[i], res, "after an absorbed fault")
					if fired {
						absorbed++
					}
				case fired:
					var re *vk.ResultError
					require.ErrorIs(t, err, vk.ErrOutOfDeviceMemory, "%v %d of %d", point, n, per)
					require.True(t, errors.As(err, &re) && re.Injected, "%v %d of %d: %v is not the injected *vk.ResultError", point, n, per, err)
					failed++
					// The same request again: nothing the failed one left
					// half done (a LoRA merge, say) may be taken as done.
					res, err = p.Generate(context.Background(), req)
					require.NoError(t, err, "request %d again after %v fault %d of %d", i+1, point, n, per)
					sameImages(t, want[i], res, "the request again after a fault")
				default:
					require.NoError(t, err, "request %d of a round after %v fault %d of %d", i+1, point, n, per)
				}
			}
			reached := inj.seen[point] >= inj.at
			inj.disarm()
			if !reached {
				// Submits depend on timing (an upload into bytes that
				// running work still reads goes through a staged copy,
				// submitted on its own): this round made fewer, and all
				// its requests succeeded.
				continue
			}
			require.Equal(t, 1, inj.fired, "%v %d of %d: the fault did not fire", point, n, per)
			s := measure(t, d)
			require.Equal(t, base.DevInUse, s.DevInUse, "device bytes after %v fault %d of %d", point, n, per)
			require.Equal(t, base.Objects, s.Objects, "Vulkan objects after %v fault %d of %d", point, n, per)
			require.Equal(t, base.Goroutines, s.Goroutines, "goroutines after %v fault %d of %d", point, n, per)
		}
		// Every request of a faulted round is checked (the failed one made
		// again), so the next N's round checks what this one left; after
		// the last, a clean round does.
		for i, res := range round(fmt.Sprintf("the round after the last %v fault", point)) {
			sameImages(t, want[i], res, "after the faults")
		}
		s := measure(t, d)
		require.Equal(t, base.DevInUse, s.DevInUse, "device bytes after the %v faults", point)
		require.Equal(t, base.Objects, s.Objects, "Vulkan objects after the %v faults", point)
		tally.injected[point] += failed + absorbed
		tally.failed[point] += failed
		tally.absorbed[point] += absorbed
		t.Logf("%v: %d per round; injected %d: %d failed Generate with a typed error, %d absorbed by a retry; all recovered", point, per, failed+absorbed, failed, absorbed)
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
// round of requests fail, for the first, middle and last N (every N with
// -faults.every), on a pipeline with resident weights and on one
// streaming them under a budget: tiny SD-Turbo, and a round that applies a
// LoRA and removes it again (merged when resident); -faults.models adds the
// other tiny models and a GGUF file. And the N-th pipeline creation of a
// fresh device. Each failure must come out of Generate as a typed error
// (errors.Is the injected vk error, a *vk.ResultError), nothing may panic
// or leak (device bytes and Vulkan objects back to their baseline), the
// other requests of the round and the next round on the same Pipeline
// must make the very images made without faults (the failed request is
// made again at once, then the rest of the round). A prefetch of the
// streaming pipeline may fail (its allocation or upload) without failing
// the run: the block is uploaded again when it is needed.
func TestFaults(t *testing.T) {
	dir := testref.Dir(t, "tiny-sd-turbo")
	req := faultRequest()
	var want *zimage.Result
	tally := &faultTally{}
	defer func() { t.Logf("faults over all cases: %v", tally) }()
	for _, c := range faultCases(t) {
		t.Run(c.name, func(t *testing.T) {
			res := faultPipeline(t, c, tally)
			if c.path == dir && len(c.round) == 1 && want == nil {
				want = res[0]
			}
		})
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
			tally.injected[vk.FaultPipeline]++
			tally.failed[vk.FaultPipeline]++
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
// pipeline of tiny SD-Turbo and of tiny Z-Image-Turbo: Generate returns
// context.Canceled, nothing leaks, and the next Generate makes the same
// image as without cancellation.
func TestCancelEveryBoundary(t *testing.T) {
	req := faultRequest()
	// Two tiles across (96 px is the smallest tile accepted).
	req.Width, req.VAETiling, req.Tile = 128, sched.TilingOn, 96
	d := openVK(t, nil)
	defer func() { require.NoError(t, d.Close()) }()
	for _, m := range []string{"tiny-sd-turbo", "tiny-z-image-turbo"} {
		dir := testref.Dir(t, m)
		for _, streamed := range []bool{false, true} {
			opts := []zimage.Option{zimage.WithBackend(d)}
			name := m + "/resident"
			if streamed {
				opts, name = append(opts, zimage.WithBudget(24<<20), zimage.WithOffload(sched.OffloadLayer)), m+"/streamed"
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
}
