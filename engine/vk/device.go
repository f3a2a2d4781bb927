// Package vk is zimage's Vulkan compute backend: it implements
// engine.Backend by dispatching the precompiled SPIR-V kernels of package
// kernels. It is the only package that touches Vulkan, through its own
// small C layer (zvk.c; capi.go says why).
//
// A Device records ops into command buffers and submits them on Flush, Read
// and Write (and when a batch grows large); every op is ordered after the
// ones it depends on by a memory barrier. No goroutines are started, and
// Close frees every Vulkan object.
//
// On CPU devices (lavapipe) the heavy kernels read their operands through
// uniform texel buffers rather than storage buffers: llvmpipe turns each
// storage-buffer load into a per-lane loop behind a bounds check, while
// texel fetches are branch-free gathers (twice the matmul rate). Every
// per-lane load or store site also costs LLVM compile time, so those
// kernels keep few of them.
package vk

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Tuning selects the kernel family used for the heavy ops.
type Tuning int

const (
	// TuningAuto picks from the device: register-blocked kernels on CPU
	// devices (lavapipe), shared-memory tiles on GPUs.
	TuningAuto Tuning = iota
	// TuningCPU forces the register-blocked kernels.
	TuningCPU
	// TuningGPU forces the shared-memory tiled kernels.
	TuningGPU
)

func (t Tuning) String() string {
	switch t {
	case TuningCPU:
		return "cpu"
	case TuningGPU:
		return "gpu"
	}
	return "auto"
}

// Options configures Open. The zero value opens device 0; use
// DefaultOptions to honour ZIMAGE_DEVICE and prefer GPUs.
type Options struct {
	// DeviceIndex picks a device by its ListDevices index; -1 = default.
	DeviceIndex int
	// DeviceName picks the first device whose name contains it
	// (case-insensitive); it wins over DeviceIndex.
	DeviceName string
	// Budget caps accounted device memory in bytes; 0 = unlimited.
	Budget int64
	// Profile records GPU timestamps per dispatch and sums them per kernel
	// (also enabled by ZIMAGE_PROFILE=1); see Profile and Close.
	Profile bool
	// Tuning forces a kernel family (tests use it to cover every variant).
	Tuning Tuning
	// Conv forces the 3x3 stride-1 convolution algorithm (ConvAuto picks
	// Winograd from the shape).
	Conv ConvAlgo
	// MaxBatch is the number of dispatches recorded before a batch is
	// submitted without waiting; 0 = 512.
	MaxBatch int
	// MaxBinding lowers the bytes one kernel binding may span below the
	// device's maxStorageBufferRange (0: the device's limit). Tests use it
	// to run ops on tensors over the limit, which go in pieces (limits.go).
	MaxBinding int64
	// Fault is for tests only; leave it nil. When set, it is called before
	// every operation of a FaultPoint kind with the number of such
	// operations on this device so far (1-based); a non-nil error (one of
	// the Err* values: ErrOutOfDeviceMemory, ErrDeviceLost, ...) makes the
	// operation fail as if Vulkan had returned it.
	Fault func(p FaultPoint, n int) error
}

// DefaultOptions selects the device from ZIMAGE_DEVICE (an index or a name
// substring) or else the first discrete GPU, integrated GPU, then any.
func DefaultOptions() Options { return Options{DeviceIndex: -1} }

// MemoryHeap is one of a device's memory heaps.
type MemoryHeap struct {
	Size        int64
	DeviceLocal bool
}

// DeviceInfo describes a physical device.
type DeviceInfo struct {
	Index                   int
	Name                    string
	Type                    string // "discrete-gpu", "integrated-gpu", "virtual-gpu", "cpu" or "other"
	VendorID, DeviceID      uint32
	APIVersion              string
	Driver                  string
	Heaps                   []MemoryHeap
	SubgroupSize            int
	FP16Storage             bool // storageBuffer16BitAccess: F16 tensors usable
	FP16Arithmetic          bool // shaderFloat16 (unused by the kernels so far)
	MaxStorageBufferRange   int64
	MaxAllocationSize       int64
	MaxSharedMemory         int
	MaxWorkgroupInvocations int
	MinStorageBufferAlign   int64
	// TexelBuffers: R32F, R16F, RGBA32F and RGBA16F work as uniform texel buffers (the
	// CPU-tuned kernels read their operands so; see kernels.Kernel.Texels).
	TexelBuffers           bool
	MaxTexelBufferElements int64
	MinTexelBufferAlign    int64
	TimestampPeriod        float64 // nanoseconds per timestamp tick
	apiVersion             uint32
}

func (i DeviceInfo) String() string {
	var mem int64
	for _, h := range i.Heaps {
		if h.DeviceLocal {
			mem += h.Size
		}
	}
	return fmt.Sprintf("#%d %s (%s, Vulkan %s, %.1f GiB device-local, subgroup %d, fp16 storage %v)",
		i.Index, i.Name, i.Type, i.APIVersion, float64(mem)/(1<<30), i.SubgroupSize, i.FP16Storage)
}

func trimSpace(s string) string { return strings.TrimSpace(s) }

// ListDevices describes every Vulkan device the loader finds.
func ListDevices() ([]DeviceInfo, error) {
	inst, err := newInstance()
	if err != nil {
		return nil, err
	}
	defer inst.destroy()
	infos, _, err := inst.describeAll()
	return infos, err
}

// describeAll describes every physical device of the instance.
func (in *instance) describeAll() ([]DeviceInfo, []physical, error) {
	pds, err := in.physicalDevices()
	if err != nil {
		return nil, nil, err
	}
	infos := make([]DeviceInfo, len(pds))
	phys := make([]physical, len(pds))
	for i, pd := range pds {
		if infos[i], phys[i], err = in.describe(pd, i); err != nil {
			return nil, nil, err
		}
	}
	return infos, phys, nil
}

// pickDevice applies Options (and ZIMAGE_DEVICE) to the device list.
func pickDevice(infos []DeviceInfo, opts Options) (int, error) {
	index, name := opts.DeviceIndex, opts.DeviceName
	if index < 0 && name == "" {
		if env := strings.TrimSpace(os.Getenv("ZIMAGE_DEVICE")); env != "" {
			if n, err := strconv.Atoi(env); err == nil {
				index = n
			} else {
				name = env
			}
		}
	}
	if name != "" {
		for i, d := range infos {
			if strings.Contains(strings.ToLower(d.Name), strings.ToLower(name)) {
				return i, nil
			}
		}
		return 0, fmt.Errorf("vk: no device name contains %q (devices: %s)", name, deviceNames(infos))
	}
	if index >= 0 {
		if index >= len(infos) {
			return 0, fmt.Errorf("vk: device index %d out of range (devices: %s)", index, deviceNames(infos))
		}
		return index, nil
	}
	for _, typ := range []string{"discrete-gpu", "integrated-gpu", "virtual-gpu"} {
		for i, d := range infos {
			if d.Type == typ {
				return i, nil
			}
		}
	}
	return 0, nil
}

func deviceNames(infos []DeviceInfo) string {
	s := make([]string, len(infos))
	for i, d := range infos {
		s[i] = fmt.Sprintf("%d %q", i, d.Name)
	}
	return strings.Join(s, ", ")
}
