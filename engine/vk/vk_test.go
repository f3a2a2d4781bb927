package vk

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/enginetest"
)

// The device is opened once per test binary: instance and device setup
// costs hundreds of milliseconds and every pipeline is compiled on first
// use. gpuDev forces the shared-memory (GPU) kernel family on the same
// physical device so both families are tested wherever the tests run.
var (
	testDev, gpuDev *Device
	openErr         error
)

func TestMain(m *testing.M) {
	opts := DefaultOptions()
	testDev, openErr = Open(opts)
	if openErr == nil {
		opts.Tuning = TuningGPU
		if testDev.Tuning() == TuningGPU {
			opts.Tuning = TuningCPU
		}
		gpuDev, openErr = Open(opts)
	}
	code := m.Run()
	for _, d := range []*Device{testDev, gpuDev} {
		if d != nil {
			if err := d.Close(); err != nil {
				fmt.Fprintln(os.Stderr, "close:", err)
				code = 1
			}
		}
	}
	os.Exit(code)
}

// device returns the shared device or skips when there is no Vulkan device.
func device(t testing.TB) *Device {
	t.Helper()
	if openErr != nil {
		if errors.Is(openErr, ErrNoDevice) || errors.Is(openErr, ErrIncompatibleDriver) || errors.Is(openErr, ErrInitializationFailed) {
			t.Skipf("no usable Vulkan device (install mesa-vulkan-drivers for lavapipe): %v", openErr)
		}
		t.Fatalf("opening the Vulkan device: %v", openErr)
	}
	return testDev
}

// otherFamily is the device forced to the other kernel family.
func otherFamily(t testing.TB) *Device {
	device(t)
	return gpuDev
}

func TestInfo(t *testing.T) {
	d := device(t)
	info := d.Info()
	t.Logf("%v; driver %q; tuning %v; max storage range %d; max alloc %d", info, info.Driver, d.Tuning(),
		info.MaxStorageBufferRange, info.MaxAllocationSize)
	if info.Name == "" || info.SubgroupSize == 0 || len(info.Heaps) == 0 {
		t.Errorf("incomplete device info: %+v", info)
	}
	list, err := ListDevices()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) == 0 || list[info.Index].Name != info.Name {
		t.Errorf("ListDevices = %v, want device %d named %q", list, info.Index, info.Name)
	}
}

func TestConformance(t *testing.T) {
	enginetest.All(t, device(t))
}

// TestConformanceOtherFamily runs the suite's small shapes with the other
// kernel family (shared-memory tiles on lavapipe, registers on GPUs).
func TestConformanceOtherFamily(t *testing.T) {
	enginetest.All(t, otherFamily(t), enginetest.SmallOnly())
}

// TestConformanceTexelLimits runs the small shapes on a device without
// usable texel buffers, and on one whose maxTexelBufferElements (64 here;
// the spec promises only 65536) is below most tensors: the ops must fall
// back to the storage-buffer kernels, not fail.
func TestConformanceTexelLimits(t *testing.T) {
	device(t)
	for _, c := range []struct {
		name   string
		adjust func(*DeviceInfo)
	}{
		{"none", func(i *DeviceInfo) { i.TexelBuffers = false }},
		{"64-texels", func(i *DeviceInfo) { i.MaxTexelBufferElements = 64 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := Open(DefaultOptions())
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			c.adjust(&d.info)
			enginetest.All(t, d, enginetest.SmallOnly())
		})
	}
}

func TestSmoke(t *testing.T) {
	d := device(t)
	x, err := d.Alloc("x", engine.F32, engine.Shape{2, 3})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free(x)
	if err := d.Write(x, []float32{1, 2, 3, 4, 5, 6}); err != nil {
		t.Fatal(err)
	}
	if err := d.Scale(x, x, 2, 1); err != nil {
		t.Fatal(err)
	}
	got, err := d.Read(x)
	if err != nil {
		t.Fatal(err)
	}
	want := []float32{3, 5, 7, 9, 11, 13}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("scale: got %v, want %v", got, want)
		}
	}
}
