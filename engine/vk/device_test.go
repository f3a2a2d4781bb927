package vk

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

func TestBudget(t *testing.T) {
	d := device(t)
	opts := Options{DeviceIndex: d.Info().Index, Budget: 1 << 20}
	bd, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer bd.Close()
	a, err := bd.Alloc("a", engine.F32, engine.Shape{128, 1024}) // 512 KiB
	if err != nil {
		t.Fatal(err)
	}
	_, err = bd.Alloc("too.big", engine.F32, engine.Shape{160, 1024}) // 640 KiB more
	var be *BudgetError
	if !errors.As(err, &be) {
		t.Fatalf("over-budget alloc: got %v, want a *BudgetError", err)
	}
	if be.Tensor != "too.big" || be.Requested != 640<<10 || be.InUse != 512<<10 || be.Budget != 1<<20 {
		t.Errorf("BudgetError = %+v", be)
	}
	for _, want := range []string{"too.big", "655360", "524288", "1048576"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if s := bd.MemStats(); s.InUse != 512<<10 || s.Peak != 512<<10 || s.Budget != 1<<20 {
		t.Errorf("MemStats = %+v", s)
	}
	bd.Free(a)
	if _, err := bd.Alloc("fits.now", engine.F32, engine.Shape{160, 1024}); err != nil {
		t.Errorf("after Free: %v", err)
	}
}

func TestAllocatorReuse(t *testing.T) {
	d := device(t)
	before := d.MemStats().InUse
	var ts []*engine.Tensor
	for i := 0; i < 50; i++ {
		x, err := d.Alloc("x", engine.F32, engine.Shape{1000 + i})
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, x)
	}
	for i := 0; i < len(ts); i += 2 {
		d.Free(ts[i])
	}
	for i := 1; i < len(ts); i += 2 {
		d.Free(ts[i])
	}
	if got := d.MemStats().InUse; got != before {
		t.Errorf("in use after freeing everything: %d, want %d", got, before)
	}
	// Freed spans coalesce: a block's free list returns to one span.
	for _, b := range d.mem.blocks {
		if b.live == 0 && len(b.free) != 1 {
			t.Errorf("empty block has %d free spans", len(b.free))
		}
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestFreeWhilePending frees a tensor that recorded work still reads and
// immediately reuses its memory: barriers must keep the old reader first.
func TestFreeWhilePending(t *testing.T) {
	d := device(t)
	x, _ := d.Alloc("x", engine.F32, engine.Shape{4096})
	y, _ := d.Alloc("y", engine.F32, engine.Shape{4096})
	defer d.Free(y)
	ones := make([]float32, 4096)
	for i := range ones {
		ones[i] = 1
	}
	if err := d.Write(x, ones); err != nil {
		t.Fatal(err)
	}
	if err := d.Scale(y, x, 3, 0); err != nil { // y = 3, recorded, not run
		t.Fatal(err)
	}
	d.Free(x)
	z, err := d.Alloc("z", engine.F32, engine.Shape{4096}) // likely x's bytes
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free(z)
	if err := d.Scale(z, y, 0, 7); err != nil { // z = 7 overwrites x's old bytes
		t.Fatal(err)
	}
	got, err := d.Read(y)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if v != 3 {
			t.Fatalf("y[%d] = %v, want 3: the reuse of x's memory raced the pending read", i, v)
		}
	}
}

// TestManyBatches records more dispatches than one batch holds.
func TestManyBatches(t *testing.T) {
	d := device(t)
	bd, err := Open(Options{DeviceIndex: d.Info().Index, MaxBatch: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer bd.Close()
	x, _ := bd.Alloc("x", engine.F32, engine.Shape{1000})
	if err := bd.Write(x, make([]float32, 1000)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if err := bd.Scale(x, x, 1, 1); err != nil {
			t.Fatal(err)
		}
	}
	got, err := bd.Read(x)
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != 50 || got[999] != 50 {
		t.Errorf("after 50 increments across batches of 7: %v, %v; want 50", got[0], got[999])
	}
}

func TestProfile(t *testing.T) {
	d := device(t)
	pd, err := Open(Options{DeviceIndex: d.Info().Index, Profile: true})
	if err != nil {
		t.Fatal(err)
	}
	x, _ := pd.Alloc("x", engine.F32, engine.Shape{1 << 16})
	if err := pd.Write(x, make([]float32, 1<<16)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := pd.Unary(x, x, engine.SiLU); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := pd.Profile()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Kernel != kernels.UnaryVec4.Name || rows[0].Dispatches != 3 || rows[0].Total <= 0 {
		t.Errorf("profile = %+v, want 3 unary dispatches with time", rows)
	}
	var buf bytes.Buffer
	if err := pd.WriteProfile(&buf); err != nil || !strings.Contains(buf.String(), kernels.UnaryVec4.Name) {
		t.Errorf("WriteProfile: %v\n%s", err, buf.String())
	}
	pd.ResetProfile()
	pd.opts.Profile = false // Close would print the (now empty) table
	pd.prof = nil
	if err := pd.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestResultErrors(t *testing.T) {
	for _, c := range []struct {
		r    int32
		want error
	}{
		// VkResult values from vulkan_core.h (zvk.c asserts the ones the
		// engine names itself).
		{-4, ErrDeviceLost},
		{-2, ErrOutOfDeviceMemory},
		{-1, ErrOutOfHostMemory},
		{-1000069000, ErrOutOfPoolMemory},
		{-12345, ErrUnknown},
	} {
		err := check("vkTest", c.r)
		var re *ResultError
		if !errors.Is(err, c.want) || !errors.As(err, &re) || re.Call != "vkTest" || re.Result != int32(c.r) {
			t.Errorf("check(%d) = %v, want %v from vkTest", c.r, err, c.want)
		}
	}
	if check("vkTest", 0) != nil {
		t.Error("Success is an error")
	}
}

func TestPickDevice(t *testing.T) {
	infos := []DeviceInfo{{Name: "llvmpipe (LLVM 15)", Type: "cpu"}, {Name: "NVIDIA H100", Type: "discrete-gpu"}}
	for _, c := range []struct {
		opts Options
		env  string
		want int
		err  bool
	}{
		{Options{DeviceIndex: -1}, "", 1, false}, // prefers the GPU
		{Options{DeviceIndex: 0}, "", 0, false},
		{Options{DeviceIndex: -1, DeviceName: "LLVM"}, "", 0, false},
		{Options{DeviceIndex: -1}, "llvmpipe", 0, false},
		{Options{DeviceIndex: -1}, "1", 1, false},
		{Options{DeviceIndex: 1}, "0", 1, false}, // options win over the environment
		{Options{DeviceIndex: 5}, "", 0, true},
		{Options{DeviceIndex: -1, DeviceName: "radeon"}, "", 0, true},
	} {
		t.Setenv("ZIMAGE_DEVICE", c.env)
		got, err := pickDevice(infos, c.opts)
		if (err != nil) != c.err || (!c.err && got != c.want) {
			t.Errorf("pickDevice(%+v, ZIMAGE_DEVICE=%q) = %d, %v; want %d (error %v)", c.opts, c.env, got, err, c.want, c.err)
		}
	}
}

func TestUseAfterClose(t *testing.T) {
	d := device(t)
	cd, err := Open(Options{DeviceIndex: d.Info().Index})
	if err != nil {
		t.Fatal(err)
	}
	x, _ := cd.Alloc("x", engine.F32, engine.Shape{4})
	if err := cd.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cd.Alloc("y", engine.F32, engine.Shape{4}); !errors.Is(err, ErrClosed) {
		t.Errorf("Alloc after Close: %v, want ErrClosed", err)
	}
	if err := cd.Scale(x, x, 1, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Scale after Close: %v, want ErrClosed", err)
	}
	cd.Free(x) // must not panic
	if err := cd.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
