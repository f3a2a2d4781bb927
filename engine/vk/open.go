package vk

import (
	"errors"
	"fmt"
	"os"

	"github.com/vulkan-go/vulkan"
	"github.com/zimage/zimage/engine"
)

// Device is an open Vulkan device; it implements engine.Backend. It is not
// safe for concurrent use.
type Device struct {
	opts      Options
	info      DeviceInfo
	tuning    Tuning // resolved: TuningCPU or TuningGPU
	inst      vulkan.Instance
	dev       vulkan.Device
	queue     vulkan.Queue
	family    uint32
	cmdPool   vulkan.CommandPool
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
	pds, err := physicalDevices(d.inst)
	if err != nil {
		return err
	}
	infos := make([]DeviceInfo, len(pds))
	for i, pd := range pds {
		if infos[i], err = describe(d.inst, pd, i); err != nil {
			return err
		}
	}
	idx, err := pickDevice(infos, d.opts)
	if err != nil {
		return err
	}
	pd, info := pds[idx], infos[idx]
	d.info = info
	if info.apiVersion < vulkan.MakeVersion(1, 2, 0) {
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
	var n uint32
	vulkan.GetPhysicalDeviceQueueFamilyProperties(pd, &n, nil)
	fams := make([]vulkan.QueueFamilyProperties, n)
	vulkan.GetPhysicalDeviceQueueFamilyProperties(pd, &n, fams)
	family, validBits := -1, uint32(0)
	for i := range fams {
		fams[i].Deref()
		if vulkan.QueueFlagBits(fams[i].QueueFlags)&vulkan.QueueComputeBit == 0 {
			continue
		}
		if family < 0 || (validBits == 0 && fams[i].TimestampValidBits > 0) {
			family, validBits = i, fams[i].TimestampValidBits
		}
	}
	if family < 0 {
		return fmt.Errorf("vk: %s has no compute queue: %w", info.Name, ErrNoDevice)
	}
	d.family = uint32(family)

	qci := []vulkan.DeviceQueueCreateInfo{{
		SType:            vulkan.StructureTypeDeviceQueueCreateInfo,
		QueueFamilyIndex: d.family,
		QueueCount:       1,
		PQueuePriorities: []float32{1},
	}}
	dci := vulkan.DeviceCreateInfo{
		SType:                vulkan.StructureTypeDeviceCreateInfo,
		QueueCreateInfoCount: 1,
		PQueueCreateInfos:    qci,
	}
	if info.FP16Storage {
		chain, free := featureChain()
		defer free()
		dci.PNext = chain
	}
	// Out-parameters are locals: the binding rejects pointers into structs
	// that hold Go pointers.
	var dev vulkan.Device
	if err := check("vkCreateDevice", vulkan.CreateDevice(pd, &dci, nil, &dev)); err != nil {
		return fmt.Errorf("vk: opening %s: %w", info.Name, err)
	}
	d.dev = dev
	var queue vulkan.Queue
	vulkan.GetDeviceQueue(d.dev, d.family, 0, &queue)
	d.queue = queue
	pci := vulkan.CommandPoolCreateInfo{
		SType:            vulkan.StructureTypeCommandPoolCreateInfo,
		Flags:            vulkan.CommandPoolCreateFlags(vulkan.CommandPoolCreateResetCommandBufferBit),
		QueueFamilyIndex: d.family,
	}
	var pool vulkan.CommandPool
	if err := check("vkCreateCommandPool", vulkan.CreateCommandPool(d.dev, &pci, nil, &pool)); err != nil {
		return err
	}
	d.cmdPool = pool
	var props vulkan.PhysicalDeviceProperties
	vulkan.GetPhysicalDeviceProperties(pd, &props)
	props.Deref()
	props.Limits.Deref()
	d.maxGroups = props.Limits.MaxComputeWorkGroupCount
	if d.opts.Profile {
		if validBits == 0 {
			return fmt.Errorf("vk: profiling needs timestamps, which %s's compute queue lacks", info.Name)
		}
		d.prof = newProfiler(info.TimestampPeriod, validBits)
	}

	if d.mem, err = newAllocator(d.dev, pd, info, d.opts.Budget); err != nil {
		return err
	}
	if !d.mem.mapped {
		if d.staging, err = newStager(d.dev, pd); err != nil {
			return err
		}
	}
	d.pipes = newPipelines(d.dev)
	if d.rec, err = newRecorder(d, d.opts.MaxBatch); err != nil {
		return err
	}
	// The dummy buffer is internal: it is not charged to the budget.
	budget := d.mem.budget
	d.mem.budget = 0
	d.dummy, err = d.mem.alloc("vk.dummy", allocAlign)
	d.mem.budget = budget
	if err == nil {
		d.mem.inUse -= d.dummy.size
		d.mem.peak = 0
	}
	return err
}

func newAllocator(dev vulkan.Device, pd vulkan.PhysicalDevice, info DeviceInfo, budget int64) (*allocator, error) {
	mp, ti, err := chooseMemoryType(dev, pd, vulkan.MemoryPropertyDeviceLocalBit, 0)
	if err != nil {
		return nil, err
	}
	if ti < 0 {
		return nil, fmt.Errorf("vk: %s offers no memory type for storage buffers", info.Name)
	}
	host := vulkan.MemoryPropertyHostVisibleBit | vulkan.MemoryPropertyHostCoherentBit
	a := &allocator{
		dev:       dev,
		typeIndex: uint32(ti),
		mapped:    memoryFlags(mp, ti)&host == host,
		blockSize: defaultBlockSize,
		maxAlloc:  info.MaxAllocationSize,
		budget:    budget,
	}
	if a.maxAlloc <= 0 {
		a.maxAlloc = 1 << 30 // the minimum Vulkan guarantees
	}
	a.blockSize = min(a.blockSize, a.maxAlloc)
	return a, nil
}

// Name describes the device, e.g. "vk:llvmpipe (LLVM 15.0.6, 256 bits)".
func (d *Device) Name() string { return "vk:" + d.info.Name }

// Info describes the opened device.
func (d *Device) Info() DeviceInfo { return d.info }

// Tuning is the kernel family in use (TuningCPU or TuningGPU).
func (d *Device) Tuning() Tuning { return d.tuning }

// Close waits for pending work and frees every Vulkan object. With
// profiling on it prints the kernel time table to stderr first.
func (d *Device) Close() error {
	if d.closed {
		return nil
	}
	var err error
	if d.rec != nil {
		err = d.rec.flush()
	}
	if d.prof != nil && err == nil {
		err = d.WriteProfile(os.Stderr)
	}
	d.closed = true
	if d.dev != nil {
		// Wait even if a flush failed, so nothing is destroyed in use.
		vulkan.DeviceWaitIdle(d.dev)
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
		if d.cmdPool != nil {
			vulkan.DestroyCommandPool(d.dev, d.cmdPool, nil)
		}
		vulkan.DestroyDevice(d.dev, nil)
	}
	if d.inst != nil {
		vulkan.DestroyInstance(d.inst, nil)
	}
	return err
}

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

// Flush runs pending work and waits for it.
func (d *Device) Flush() error {
	if err := d.usable(); err != nil {
		return err
	}
	if err := d.rec.flush(); err != nil {
		return d.fail(err)
	}
	d.mem.trim()
	return nil
}

// fail remembers a lost device, so that every later call reports it.
func (d *Device) fail(err error) error {
	if errors.Is(err, ErrDeviceLost) && d.lost == nil {
		d.lost = err
	}
	return err
}
