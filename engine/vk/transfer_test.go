package vk

import (
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/enginetest"
)

// stagedDevice opens the test device as if its memory were not host-visible
// (discrete GPUs): every upload and download goes through staging copies.
func stagedDevice(t *testing.T) *Device {
	t.Helper()
	d := device(t)
	sd, err := Open(Options{DeviceIndex: d.Info().Index})
	if err != nil {
		t.Fatal(err)
	}
	sd.mem.mapped = false // blocks allocated from now on are not mapped
	t.Cleanup(func() {
		if err := sd.Close(); err != nil {
			t.Error(err)
		}
	})
	return sd
}

// transferDevices runs f on the host-visible device and on a staged one.
func transferDevices(t *testing.T, f func(t *testing.T, d *Device)) {
	t.Run("mapped", func(t *testing.T) { f(t, device(t)) })
	t.Run("staged", func(t *testing.T) { f(t, stagedDevice(t)) })
}

func filled(n int, f func(i int) float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = f(i)
	}
	return v
}

func mustAlloc(t testing.TB, d *Device, name string, shape ...int) *engine.Tensor {
	t.Helper()
	x, err := d.Alloc(name, engine.F32, shape)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Free(x) })
	return x
}

func mustWrite(t testing.TB, d *Device, x *engine.Tensor, v []float32) {
	t.Helper()
	if err := d.Write(x, v); err != nil {
		t.Fatal(err)
	}
}

// expect reads x and compares it with want exactly: every value here is a
// small integer, exact in f32 whatever the summation order.
func expect(t *testing.T, d *Device, x *engine.Tensor, want func(i int) float32) {
	t.Helper()
	got, err := d.Read(x)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if v != want(i) {
			t.Fatalf("%s[%d] = %v, want %v", x.Name, i, v, want(i))
		}
	}
}

// longWork records matmuls of ones ([1,512,512] x [1,512,512], every output
// 512) into c: a batch that runs for a while once submitted.
func longWork(t testing.TB, d *Device, a, b, c *engine.Tensor, times int) {
	t.Helper()
	for range times {
		if err := d.MatMul(c, a, b, false, 1); err != nil {
			t.Fatal(err)
		}
	}
}

func matmulOperands(t testing.TB, d *Device) (a, b, c *engine.Tensor) {
	a = mustAlloc(t, d, "a", 1, 512, 512)
	b = mustAlloc(t, d, "b", 1, 512, 512)
	c = mustAlloc(t, d, "c", 1, 512, 512)
	ones := filled(512*512, func(int) float32 { return 1 })
	mustWrite(t, d, a, ones)
	mustWrite(t, d, b, ones)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	return a, b, c
}

// TestWriteWhileInFlight uploads into a fresh tensor while a long batch is
// recorded: the batch is submitted and the upload does not wait for it.
func TestWriteWhileInFlight(t *testing.T) {
	transferDevices(t, func(t *testing.T, d *Device) {
		a, b, c := matmulOperands(t, d)
		// Allocated first: ops free temporaries whose bytes a later
		// allocation may reuse, and such an upload is (rightly) staged.
		z := mustAlloc(t, d, "z", 4096)
		z2 := mustAlloc(t, d, "z2", 4096)
		longWork(t, d, a, b, c, 8)
		waits, staged := d.rec.waits, d.rec.stagedWrites
		mustWrite(t, d, z, filled(4096, func(i int) float32 { return float32(i) }))
		if d.rec.waits != waits {
			t.Errorf("the upload into a fresh tensor waited for the device %d times", d.rec.waits-waits)
		}
		if b := d.rec.batches[d.rec.cur]; b.open && b.ops > 0 {
			t.Error("the recorded matmuls were not submitted by the upload")
		}
		if d.mem.mapped && d.rec.stagedWrites != staged {
			t.Error("an upload into memory no work uses was staged")
		}
		if err := d.Scale(z2, z, 2, 0); err != nil {
			t.Fatal(err)
		}
		expect(t, d, z2, func(i int) float32 { return 2 * float32(i) })
		expect(t, d, c, func(int) float32 { return 512 })
	})
}

// TestWriteIntoPendingTensor overwrites tensors that recorded or running
// work still reads or writes: that work sees the old values, later work the
// new ones, and still nothing waits before the Read.
func TestWriteIntoPendingTensor(t *testing.T) {
	transferDevices(t, func(t *testing.T, d *Device) {
		const n = 3000
		x := mustAlloc(t, d, "x", n)
		y := mustAlloc(t, d, "y", n)
		z := mustAlloc(t, d, "z", n)
		mustWrite(t, d, x, filled(n, func(i int) float32 { return float32(i) }))
		waits, staged := d.rec.waits, d.rec.stagedWrites
		if err := d.Scale(y, x, 3, 0); err != nil { // y = 3x, recorded
			t.Fatal(err)
		}
		mustWrite(t, d, x, filled(n, func(i int) float32 { return float32(i % 7) }))
		if err := d.Scale(z, x, 5, 0); err != nil { // z = 5x with the new x
			t.Fatal(err)
		}
		if d.rec.waits != waits {
			t.Errorf("overwriting a tensor pending work reads waited for the device %d times", d.rec.waits-waits)
		}
		// Host-visible memory is written in place once the reader is done,
		// which the submitted batch may already be.
		if !d.mem.mapped && d.rec.stagedWrites != staged+1 {
			t.Errorf("%d staged writes, want 1", d.rec.stagedWrites-staged)
		}
		expect(t, d, y, func(i int) float32 { return 3 * float32(i) })
		expect(t, d, z, func(i int) float32 { return 5 * float32(i%7) })

		// Pending work writes y; the host's values must land after it.
		if err := d.Scale(y, x, 1, 100); err != nil {
			t.Fatal(err)
		}
		mustWrite(t, d, y, filled(n, func(i int) float32 { return -float32(i) }))
		expect(t, d, y, func(i int) float32 { return -float32(i) })

		// Submitted (running) work reads a; overwrite a behind it.
		a, b, c := matmulOperands(t, d)
		c2 := mustAlloc(t, d, "c2", 1, 512, 512)
		longWork(t, d, a, b, c, 8)
		mustWrite(t, d, x, make([]float32, n)) // submits the matmuls
		mustWrite(t, d, a, filled(512*512, func(int) float32 { return 2 }))
		longWork(t, d, a, b, c2, 1)
		expect(t, d, c, func(int) float32 { return 512 })
		expect(t, d, c2, func(int) float32 { return 1024 })
		t.Logf("%d of 6 uploads staged", d.rec.stagedWrites-staged)
	})
}

// TestFreedAndReusedWhileInFlight frees a tensor running work reads and
// uploads into a new tensor at the same bytes: the upload must not reach
// memory before the reader is done.
func TestFreedAndReusedWhileInFlight(t *testing.T) {
	transferDevices(t, func(t *testing.T, d *Device) {
		a, _, c := matmulOperands(t, d)
		w, err := d.Alloc("w", engine.F32, engine.Shape{1, 512, 512})
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, d, w, filled(512*512, func(int) float32 { return 1 }))
		longWork(t, d, a, w, c, 8)
		d.Free(w)
		w2 := mustAlloc(t, d, "w2", 1, 512, 512) // first fit: w's bytes
		mustWrite(t, d, w2, filled(512*512, func(int) float32 { return 3 }))
		expect(t, d, c, func(int) float32 { return 512 })
		expect(t, d, w2, func(int) float32 { return 3 })
	})
}

// TestStagedConformance runs the transfer-heavy parts of the suite on a
// device whose every upload and download is a staged copy.
func TestStagedConformance(t *testing.T) {
	d := stagedDevice(t)
	t.Run("Memory", func(t *testing.T) { enginetest.Memory(t, d, enginetest.SmallOnly()) })
	t.Run("Views", func(t *testing.T) { enginetest.Views(t, d, enginetest.SmallOnly()) })
	t.Run("Copy", func(t *testing.T) { enginetest.Copy(t, d, enginetest.SmallOnly()) })
	t.Run("Scale", func(t *testing.T) { enginetest.Scale(t, d, enginetest.SmallOnly()) })
	t.Run("Chunked", func(t *testing.T) {
		// Larger than one staging chunk: uploaded in two chunks (the first
		// submitted on its own) and read back in two.
		n := stagingChunk/4 + 12345
		x := mustAlloc(t, d, "big", n)
		mustWrite(t, d, x, filled(n, func(i int) float32 { return float32(i % 4099) }))
		expect(t, d, x, func(i int) float32 { return float32(i % 4099) })
	})
	if d.staging == nil { // -run filtered every transfer out
		return
	}
	if got := len(d.staging.blocks); got > stagingSpare {
		t.Errorf("%d staging blocks alive after the transfers, want at most %d", got, stagingSpare)
	}
}

// BenchmarkUploadOverlap records matmuls, uploads 128 MiB into a fresh
// tensor and waits for everything: "serial" flushes before the upload, as
// every upload did before uploads stopped waiting; "overlap" lets the device
// run the matmuls while the host copies. On lavapipe the device is the same
// CPU cores, so it gains only where lavapipe leaves a core idle (measured
// with LP_NUM_THREADS=1 on 2 cores: 67 ms serial, 48 ms overlapped).
func BenchmarkUploadOverlap(b *testing.B) {
	for _, serial := range []bool{true, false} {
		name := "overlap"
		if serial {
			name = "serial"
		}
		b.Run(name, func(b *testing.B) {
			d := device(b)
			a, bm, c := matmulOperands(b, d)
			const n = 64 << 20
			x, err := d.Alloc("x", engine.F16, engine.Shape{n})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Free(x)
			data := make([]byte, 2*n)
			b.SetBytes(2 * n)
			b.ResetTimer()
			for range b.N {
				longWork(b, d, a, bm, c, 2)
				if serial {
					if err := d.Flush(); err != nil {
						b.Fatal(err)
					}
				}
				if err := d.WriteRaw(x, data, engine.F16); err != nil {
					b.Fatal(err)
				}
				if err := d.Flush(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
