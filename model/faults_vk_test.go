package model

import (
	"errors"
	"flag"
	"math"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
)

var faultsEvery = flag.Bool("faults.every", false, "TestNetworkFaults fails every N along each run instead of the first, middle and last")

// faultHook fails the at-th operation of one kind and counts them all.
type faultHook struct {
	point vk.FaultPoint
	at    int // 0: never
	seen  [vk.NumFaultPoints]int
	fired int
}

func (h *faultHook) hook(p vk.FaultPoint, n int) error {
	h.seen[p] = n
	if h.at > 0 && p == h.point && n == h.at {
		h.fired++
		return vk.ErrOutOfDeviceMemory
	}
	return nil
}

// TestNetworkFaults fails the N-th allocation, upload and submit of runs of
// the networks that no Pipeline drives yet (TAESD decode, its limited
// decode and encode; the VAE encoder, whole and tiled) on tiny SD-Turbo's
// weights, for the first, middle and last N (every N with -faults.every):
// each run (from evicted weights) returns the injected error, nothing
// panics, and the next run gives the same values bit for bit and leaves
// the device holding what it held before.
func TestNetworkFaults(t *testing.T) {
	dir := testref.Dir(t, "tiny-sd-turbo")
	taesd, err := OpenTAESD(filepath.Join(dir, "taesd"))
	require.NoError(t, err)
	defer taesd.Close()
	enc := loadTestVAEEncoder(t, "tiny-sd-turbo")
	h := &faultHook{}
	opts := vk.DefaultOptions()
	opts.Fault = h.hook
	d, err := vk.Open(opts)
	if err != nil {
		t.Skipf("no Vulkan device: %v", err)
	}
	defer func() { require.NoError(t, d.Close()) }()
	res := &evictingResidency{b: d}
	defer res.evictAll()

	lat := randLatents(3, 4*8*12)
	px := make([]float32, 3*64*96)
	for i := range px {
		px[i] = float32(math.Sin(float64(i)*0.37)) * 0.9
	}
	// Each run writes its input, runs one network and reads the output back.
	runs := []struct {
		name string
		run  func(rec *engine.Rec) []float32
	}{
		{"taesd decode", func(rec *engine.Rec) []float32 {
			z := rec.Write("z", lat, 1, 4, 8, 12)
			return readFree(rec, taesd.Decode(rec, res, z), z)
		}},
		{"taesd limited decode", func(rec *engine.Rec) []float32 {
			z := rec.Write("z", lat, 1, 4, 8, 12)
			return readFree(rec, taesd.DecodeLimited(rec, res, z, taesd.MaxTensorBytes(1, 8, 12)/4), z)
		}},
		{"taesd encode", func(rec *engine.Rec) []float32 {
			x := rec.Write("pixels", px, 1, 3, 64, 96)
			return readFree(rec, taesd.Encode(rec, res, x), x)
		}},
		{"vae encode", func(rec *engine.Rec) []float32 {
			x := rec.Write("pixels", px, 1, 3, 64, 96)
			dist := enc.Encode(rec, res, x)
			rec.Free(x)
			if dist == nil {
				return nil
			}
			return dist.Mode()
		}},
		{"vae encode tiled", func(rec *engine.Rec) []float32 {
			x := rec.Write("pixels", px[:3*48*64], 1, 3, 48, 64)
			dist := enc.EncodeTiled(rec, res, x, TileOptions{Size: 4, Overlap: 2})
			rec.Free(x)
			if dist == nil {
				return nil
			}
			return dist.Mode()
		}},
	}
	total := map[vk.FaultPoint]int{}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			// Every run starts with the weights evicted, so that their
			// uploads are among the operations failed in turn.
			clean := func(what string) []float32 {
				res.evictAll()
				rec := engine.NewRec(d)
				out := r.run(rec)
				require.NoError(t, rec.Err(), what)
				require.NoError(t, d.Flush(), what)
				return out
			}
			want := clean("the first run")
			// The second run's state is the baseline: the first may still
			// grow the device's caches (descriptor pools).
			require.Equal(t, want, clean("the second run"))
			base, objects := d.MemStats().InUse, d.Objects()
			for _, point := range []vk.FaultPoint{vk.FaultAlloc, vk.FaultUpload, vk.FaultSubmit} {
				before := h.seen[point]
				require.Equal(t, want, clean("a clean run"))
				per := h.seen[point] - before
				ns := []int{1, (per + 1) / 2, per}
				if *faultsEvery {
					ns = ns[:0]
					for n := 1; n <= per; n++ {
						ns = append(ns, n)
					}
				}
				tried, last := 0, 0
				for _, n := range ns {
					if n < 1 || n == last {
						continue
					}
					last = n
					res.evictAll()
					h.point, h.at, h.fired = point, h.seen[point]+n, 0
					rec := engine.NewRec(d)
					out := r.run(rec)
					err := errors.Join(rec.Err(), d.Flush())
					reached := h.seen[point] >= h.at
					h.at = 0
					if !reached {
						// Submits depend on timing (an upload into bytes
						// that running work still reads goes through a
						// staged copy): this run made fewer.
						require.NoError(t, err)
						require.Equal(t, want, out)
						continue
					}
					require.Equal(t, 1, h.fired, "%v %d of %d: the fault did not fire", point, n, per)
					require.Nil(t, out, "%v %d of %d: a result after a failure", point, n, per)
					var re *vk.ResultError
					require.ErrorIs(t, err, vk.ErrOutOfDeviceMemory, "%v %d of %d", point, n, per)
					require.True(t, errors.As(err, &re) && re.Injected, "%v %d of %d: %v", point, n, per, err)
					require.Equal(t, want, clean("the run after a fault"), "%v %d of %d", point, n, per)
					require.Equal(t, base, d.MemStats().InUse, "device bytes after %v fault %d of %d", point, n, per)
					require.Equal(t, objects, d.Objects(), "Vulkan objects after %v fault %d of %d", point, n, per)
					tried++
				}
				total[point] += tried
				t.Logf("%v: %d per run, injected %d, all failed with the injected error and recovered", point, per, tried)
			}
		})
	}
	t.Logf("faults injected: %d allocations, %d uploads, %d submits", total[vk.FaultAlloc], total[vk.FaultUpload], total[vk.FaultSubmit])
}

// readFree reads out (nil after a failure) and frees it and the inputs.
func readFree(rec *engine.Rec, out *engine.Tensor, in ...*engine.Tensor) []float32 {
	defer rec.Free(append(in, out)...)
	if out == nil || rec.Err() != nil {
		return nil
	}
	v, err := rec.B.Read(out)
	if err != nil {
		rec.Fail(err)
		return nil
	}
	return v
}
