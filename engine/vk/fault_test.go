package vk

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/zimage/zimage/engine"
)

// failAt is a fault hook failing the at-th operation of kind p with err.
func failAt(p FaultPoint, at int, err error) func(FaultPoint, int) error {
	return func(q FaultPoint, n int) error {
		if q == p && n == at {
			return err
		}
		return nil
	}
}

func openWith(t *testing.T, opts Options) *Device {
	t.Helper()
	opts.DeviceIndex = device(t).Info().Index
	d, err := Open(opts)
	require.NoError(t, err)
	return d
}

// TestFaultHook: each fault point fails the operation it names with a
// typed, injected *ResultError, and the device works on afterwards.
func TestFaultHook(t *testing.T) {
	for _, c := range []struct {
		p   FaultPoint
		err error
		run func(d *Device, x *engine.Tensor) error
	}{
		{FaultAlloc, ErrOutOfDeviceMemory, func(d *Device, x *engine.Tensor) error {
			_, err := d.Alloc("y", engine.F32, engine.Shape{8})
			return err
		}},
		{FaultUpload, ErrOutOfDeviceMemory, func(d *Device, x *engine.Tensor) error { return d.Write(x, make([]float32, 64)) }},
		{FaultPipeline, ErrOutOfHostMemory, func(d *Device, x *engine.Tensor) error { return d.Scale(x, x, 2, 1) }},
		{FaultSubmit, ErrOutOfDeviceMemory, func(d *Device, x *engine.Tensor) error {
			if err := d.Scale(x, x, 2, 1); err != nil {
				return err
			}
			return d.Flush()
		}},
	} {
		t.Run(c.p.String(), func(t *testing.T) {
			// The first operation of each kind is the one under test: x's
			// allocation and upload come before the hook is armed.
			armed := false
			d := openWith(t, Options{Fault: func(p FaultPoint, n int) error {
				if armed && p == c.p {
					armed = false
					return c.err
				}
				return nil
			}})
			x, err := d.Alloc("x", engine.F32, engine.Shape{64})
			require.NoError(t, err)
			require.NoError(t, d.Write(x, make([]float32, 64)))
			armed = true
			err = c.run(d, x)
			var re *ResultError
			require.ErrorIs(t, err, c.err)
			require.True(t, errors.As(err, &re) && re.Injected, "%v", err)
			// It works again, with every object accounted for.
			require.NoError(t, d.Write(x, []float32{1: 3, 63: 1}))
			require.NoError(t, d.Scale(x, x, 2, 1))
			got, err := d.Read(x)
			require.NoError(t, err)
			require.Equal(t, float32(7), got[1])
			require.Equal(t, float32(1), got[2])
			d.Free(x)
			require.NoError(t, d.Close())
		})
	}
}

// TestDroppedWork: when a submission fails inside an upload, the ops
// recorded before it are dropped with it; the next Flush reports that even
// though the upload's caller ignored the error, and once.
func TestDroppedWork(t *testing.T) {
	d := openWith(t, Options{Fault: failAt(FaultSubmit, 1, ErrOutOfDeviceMemory)})
	defer func() { require.NoError(t, d.Close()) }()
	x, err := d.Alloc("x", engine.F32, engine.Shape{64})
	require.NoError(t, err)
	y, err := d.Alloc("y", engine.F32, engine.Shape{64})
	require.NoError(t, err)
	require.NoError(t, d.Write(x, make([]float32, 64)))
	require.NoError(t, d.Scale(x, x, 1, 5))
	// The upload submits the recorded Scale first: that submission fails.
	require.ErrorIs(t, d.Write(y, make([]float32, 64)), ErrOutOfDeviceMemory)
	require.Equal(t, int64(1), d.Counters().Abandoned)
	err = d.Flush()
	require.ErrorIs(t, err, ErrOutOfDeviceMemory)
	require.Contains(t, err.Error(), "dropped")
	require.NoError(t, d.Flush(), "the drop is reported once")
	require.Equal(t, 0, d.Objects().BufferViews+d.Objects().DescriptorSets, "the dropped batch's views and sets were recycled")
	require.NoError(t, d.Scale(x, x, 1, 5))
	got, err := d.Read(x)
	require.NoError(t, err)
	require.Equal(t, float32(5), got[0], "recomputed after the drop")
	d.Free(x)
	d.Free(y)
}

// TestCloseFindsLeaks: Close reports objects its counts say are left. (A
// real stray object would also trip the validation layer at
// vkDestroyDevice, so the count is bumped by hand.)
func TestCloseFindsLeaks(t *testing.T) {
	d := openWith(t, Options{})
	require.Positive(t, d.Objects().Total())
	d.vk.objs.BufferViews++
	require.ErrorContains(t, d.Close(), "1 Vulkan objects undestroyed")
}
