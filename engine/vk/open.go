package vk

import (
	"errors"
	"fmt"
	"os"

	"github.com/zimage/zimage/engine"
)

// Device is an open Vulkan device; it implements engine.Backend. It is not
// safe for concurrent use.
type Device struct {
	opts      Options
	info      DeviceInfo
	tuning    Tuning // resolved: TuningCPU or TuningGPU
	inst      *instance
	vk        *api
	family    uint32
	cmdPool   vkCmdPool
	maxGroups [3]uint32
	mem       *allocator
	staging   *stager
	pipes     *pipelines
	rec       *recorder
	prof      *profiler
	dummy     *allocation // bound where an optional operand (bias) is absent
	closed    bool
	lost      error // set once the device is lost; every later call returns it
}

var _ engine.Backend = (*Device)(nil)

// Open opens the device that opts selects.
func Open(opts Options) (*Device, error) {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	if os.Getenv("ZIMAGE_PROFILE") == "1" {
		opts.Profile = true
	}
	inst, err := newInstance()
	if err != nil {
		return nil, err
	}
	d := &Device{opts: opts, inst: inst}
	if err := d.init(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *Device) init() error {
	infos, phys, err := d.inst.describeAll()
	if err != nil {
		return err
	}
	idx, err := pickDevice(infos, d.opts)
	if err != nil {
		return err
	}
	ph, info := phys[idx], infos[idx]
	d.info = info
	if info.apiVersion < apiVersion12 {
		return fmt.Errorf("vk: %s supports Vulkan %s; zimage's kernels need 1.2: %w", info.Name, info.APIVersion, ErrIncompatibleDriver)
	}
	d.tuning = d.opts.Tuning
	if d.tuning == TuningAuto {
		d.tuning = TuningGPU
		if info.Type == "cpu" {
			d.tuning = TuningCPU
		}
	}

	// A queue family with compute, preferring one with valid timestamps.
	family, validBits := -1, uint32(0)
	for i, flags := range ph.families {
		if flags&queueCompute == 0 {
			continue
		}
		if family < 0 || (validBits == 0 && ph.timestamps[i] > 0) {
			family, validBits = i, ph.timestamps[i]
		}
	}
	if family < 0 {
		return fmt.Errorf("vk: %s has no compute queue: %w", info.Name, ErrNoDevice)
	}
	d.family = uint32(family)
	if d.vk, err = d.inst.createDevice(ph.handle, d.family, info.FP16Storage, d.opts.Fault); err != nil {
		return fmt.Errorf("vk: opening %s: %w", info.Name, err)
	}
	if d.cmdPool, err = d.vk.createCommandPool(d.family); err != nil {
		return err
	}
	d.maxGroups = ph.maxGroups
	if d.opts.Profile {
		if validBits == 0 {
			return fmt.Errorf("vk: profiling needs timestamps, which %s's compute queue lacks", info.Name)
		}
		d.prof = newProfiler(info.TimestampPeriod, validBits)
	}

	if d.mem, err = newAllocator(d.vk, ph, info, d.opts.Budget); err != nil {
		return err
	}
	if !d.mem.mapped {
		if d.staging, err = newStager(d.vk, ph); err != nil {
			return err
		}
	}
	d.pipes = newPipelines(d.vk)
	if d.rec, err = newRecorder(d, d.opts.MaxBatch); err != nil {
		return err
	}
	// The dummy buffer is internal: it is not charged to the budget, nor
	// seen by the fault hook.
	budget, fault := d.mem.budget, d.vk.fault
	d.mem.budget, d.vk.fault = 0, nil
	d.dummy, err = d.mem.alloc("vk.dummy", allocAlign)
	d.mem.budget, d.vk.fault = budget, fault
	d.vk.faults[FaultAlloc] = 0
	if err == nil {
		d.mem.inUse -= d.dummy.size
		d.mem.peak = 0
	}
	return err
}

func newAllocator(a *api, ph physical, info DeviceInfo, budget int64) (*allocator, error) {
	ti, err := chooseMemoryType(a, ph, memDeviceLocal, 0)
	if err != nil {
		return nil, err
	}
	if ti < 0 {
		return nil, fmt.Errorf("vk: %s offers no memory type for storage buffers", info.Name)
	}
	host := uint32(memHostVisible | memHostCoherent)
	al := &allocator{
		vk:        a,
		typeIndex: uint32(ti),
		mapped:    ph.memTypes[ti]&host == host,
		blockSize: defaultBlockSize,
		maxAlloc:  info.MaxAllocationSize,
		budget:    budget,
	}
	if al.maxAlloc <= 0 {
		al.maxAlloc = 1 << 30 // the minimum Vulkan guarantees
	}
	al.blockSize = min(al.blockSize, al.maxAlloc)
	return al, nil
}

// Name describes the device, e.g. "vk:llvmpipe (LLVM 15.0.6, 256 bits)".
func (d *Device) Name() string { return "vk:" + d.info.Name }

// Info describes the opened device.
func (d *Device) Info() DeviceInfo { return d.info }

// Tuning is the kernel family in use (TuningCPU or TuningGPU).
func (d *Device) Tuning() Tuning { return d.tuning }

// Close waits for pending work and frees every Vulkan object. With
// profiling on it prints the kernel time table to stderr first. It reports
// an error if pending work failed or if any object outlived it (a leak in
// the engine, see Objects).
func (d *Device) Close() error {
	if d.closed {
		return nil
	}
	var errs []error
	if d.rec != nil && d.lost == nil {
		if err := d.rec.flush(); err != nil {
			errs = append(errs, err)
		} else if d.prof != nil {
			errs = append(errs, d.WriteProfile(os.Stderr))
		}
	}
	d.closed = true
	if d.vk != nil {
		// Wait even if a flush failed, so nothing is destroyed in use; a
		// lost device fails the wait, and its objects may still be
		// destroyed.
		d.vk.waitIdle()
		if d.rec != nil {
			d.rec.destroy()
		}
		if d.pipes != nil {
			d.pipes.destroy()
		}
		if d.staging != nil {
			d.staging.destroy()
		}
		if d.mem != nil {
			d.mem.destroyAll()
		}
		if d.cmdPool != 0 {
			d.vk.destroyCommandPool(d.cmdPool)
		}
		if left := d.vk.objs; left.Total() != 0 {
			errs = append(errs, fmt.Errorf("vk: Close left %d Vulkan objects undestroyed: %+v", left.Total(), left))
		}
		d.vk.destroy()
	}
	d.inst.destroy()
	return errors.Join(errs...)
}

// Objects counts the Vulkan objects the device holds now.
func (d *Device) Objects() Objects {
	if d.vk == nil {
		return Objects{}
	}
	return d.vk.objs
}

// Counters reports the work recorded since Open.
func (d *Device) Counters() Counters {
	if d.vk == nil {
		return Counters{}
	}
	c := d.vk.work
	if d.rec != nil {
		c.Waits = int64(d.rec.waits)
		c.StagedUploads = int64(d.rec.stagedWrites)
		c.Abandoned = int64(d.rec.abandoned)
	}
	return c
}

// Lost reports the error that lost the device, or nil: once lost, every
// call fails with it and the device must be closed and opened again.
func (d *Device) Lost() error { return d.lost }

// MemStats reports the accounted device memory.
func (d *Device) MemStats() engine.MemStats {
	if d.mem == nil {
		return engine.MemStats{}
	}
	return engine.MemStats{InUse: d.mem.inUse, Peak: d.mem.peak, Budget: d.mem.budget}
}

// Reserved is the device memory held in blocks, which is at least InUse:
// the rest is free space inside blocks and one spare block.
func (d *Device) Reserved() int64 { return d.mem.reserved }

// ResetPeak sets the peak to the current use.
func (d *Device) ResetPeak() { d.mem.peak = d.mem.inUse }

// Flush runs pending work and waits for it. If recorded work was dropped
// since the last Flush (a submission failed, maybe inside another call
// whose caller ignored its error), Flush reports it once: the results of
// that work are stale.
func (d *Device) Flush() error {
	if err := d.usable(); err != nil {
		return err
	}
	if err := d.rec.flush(); err != nil {
		d.rec.dropped = nil // this error reports it
		return d.fail(err)
	}
	d.mem.trim()
	d.rec.trimPools()
	if err := d.rec.dropped; err != nil {
		d.rec.dropped = nil
		return err
	}
	return nil
}

// fail remembers a lost device, so that every later call reports it.
func (d *Device) fail(err error) error {
	if errors.Is(err, ErrDeviceLost) && d.lost == nil {
		d.lost = err
	}
	return err
}
