package vk

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"

	"github.com/x448/float16"
	"github.com/zimage/zimage/engine"
)

// usable reports why the device cannot take more work, if it cannot.
func (d *Device) usable() error {
	if d.closed {
		return ErrClosed
	}
	return d.lost
}

// storage returns t's allocation, checking it belongs to this device.
func (d *Device) storage(op string, t *engine.Tensor) (*allocation, error) {
	if t == nil {
		return nil, fmt.Errorf("vk: %s: nil tensor", op)
	}
	al, ok := t.Storage.(*allocation)
	if !ok || al == nil || al.owner != d.mem {
		return nil, fmt.Errorf("vk: %s: tensor %s was not allocated by this device", op, t.Name)
	}
	if al.freed {
		return nil, fmt.Errorf("vk: %s: tensor %s was freed", op, t.Name)
	}
	end := t.ByteOffset() + t.Bytes()
	if t.DType.Quantized() {
		end = t.ByteOffset() + quantBindBytes(t)
	}
	if t.Offset < 0 || end > al.size {
		return nil, fmt.Errorf("vk: %s: view %s (offset %d, %v) exceeds its storage of %d bytes", op, t.Name, t.Offset, t.Shape, al.size)
	}
	return al, nil
}

// Alloc returns an uninitialised tensor in device memory.
func (d *Device) Alloc(name string, dt engine.DType, shape engine.Shape) (*engine.Tensor, error) {
	if err := d.usable(); err != nil {
		return nil, err
	}
	if err := shape.Valid(); err != nil {
		return nil, fmt.Errorf("vk: alloc %s: %w", name, err)
	}
	bytes := dt.RowBytes(shape.NumElem())
	switch {
	case dt == engine.F32 || dt == engine.F16:
	case dt.Quantized() && d.SupportsBlocks(dt):
		if n, bs := shape.NumElem(), dt.BlockSize(); n%bs != 0 {
			return nil, fmt.Errorf("vk: alloc %s %v%v: %d elements are not whole %d-element blocks", name, dt, shape, n, bs)
		}
		t := &engine.Tensor{Name: name, DType: dt, Shape: shape}
		bytes = quantBindBytes(t)
	default:
		return nil, fmt.Errorf("vk: alloc %s: unsupported dtype %v", name, dt)
	}
	al, err := d.mem.alloc(name, bytes)
	if err != nil {
		return nil, err
	}
	return &engine.Tensor{Name: name, DType: dt, Shape: shape.Clone(), Storage: al}, nil
}

// Free releases t's memory. Work already recorded that uses it stays
// correct: later users of the same bytes are ordered after it by barriers,
// host writes into them are staged behind it, and blocks are only destroyed
// when idle.
func (d *Device) Free(t *engine.Tensor) {
	if t == nil || t.IsView() || d.closed {
		return
	}
	if al, ok := t.Storage.(*allocation); ok && al != nil && al.owner == d.mem {
		d.mem.release(al)
	}
}

// Write stores host values into t, converting to t's dtype.
func (d *Device) Write(t *engine.Tensor, data []float32) error {
	if t == nil {
		return fmt.Errorf("vk: write: nil tensor")
	}
	if len(data) != t.NumElem() {
		return fmt.Errorf("vk: write %s%v: %d values, want %d", t.Name, t.Shape, len(data), t.NumElem())
	}
	if t.DType.Quantized() {
		return fmt.Errorf("vk: write %s: %v blocks are written with WriteRaw (the engine does not quantize)", t.Name, t.DType)
	}
	raw := make([]byte, t.Bytes())
	if t.DType == engine.F16 {
		for i, v := range data {
			binary.LittleEndian.PutUint16(raw[2*i:], float16.Fromfloat32(v).Bits())
		}
	} else {
		for i, v := range data {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
	}
	return d.writeBytes("write", t, raw)
}

// WriteRaw stores little-endian elements of type src into t, converting.
func (d *Device) WriteRaw(t *engine.Tensor, data []byte, src engine.DType) error {
	if t == nil {
		return fmt.Errorf("vk: write: nil tensor")
	}
	if t.DType.Quantized() || src.Quantized() {
		if src != t.DType {
			return fmt.Errorf("vk: write %s: %v data into a %v tensor (blocks are stored as they are)", t.Name, src, t.DType)
		}
		if int64(len(data)) != t.Bytes() {
			return fmt.Errorf("vk: write %s%v: %d bytes of %v, want %d", t.Name, t.Shape, len(data), src, t.Bytes())
		}
		return d.writeBytes("write", t, data)
	}
	if src != engine.F32 && src != engine.F16 {
		return fmt.Errorf("vk: write %s: unsupported source dtype %v", t.Name, src)
	}
	if len(data) != t.NumElem()*src.Size() {
		return fmt.Errorf("vk: write %s%v: %d bytes of %v, want %d", t.Name, t.Shape, len(data), src, t.NumElem()*src.Size())
	}
	if src == t.DType {
		return d.writeBytes("write", t, data)
	}
	raw := make([]byte, t.Bytes())
	if src == engine.F16 { // F16 -> F32
		for i := 0; i < t.NumElem(); i++ {
			v := float16.Frombits(binary.LittleEndian.Uint16(data[2*i:])).Float32()
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
	} else { // F32 -> F16
		for i := 0; i < t.NumElem(); i++ {
			v := math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
			binary.LittleEndian.PutUint16(raw[2*i:], float16.Fromfloat32(v).Bits())
		}
	}
	return d.writeBytes("write", t, raw)
}

// writeBytes copies raw (t's dtype) into t without waiting for the device.
// Recorded dispatches are submitted first, so that the device runs them
// while the host copies. When no recorded or running work uses t's bytes (a
// fresh tensor, the usual upload) and memory is host-visible, they are
// copied in place at once: the next submission makes them visible. Otherwise
// they go through a staging block and a copy recorded after the work already
// recorded, which barriers order like any other command.
func (d *Device) writeBytes(op string, t *engine.Tensor, raw []byte) error {
	if err := d.usable(); err != nil {
		return err
	}
	al, err := d.storage(op, t)
	if err != nil {
		return err
	}
	if err := d.vk.inject(FaultUpload, "the staging upload of "+t.Name); err != nil {
		return fmt.Errorf("vk: %s %s: %w", op, t.Name, err)
	}
	d.vk.work.Uploads++
	off := al.off + t.ByteOffset()
	if err := d.kick(); err != nil {
		return err
	}
	if d.mem.mapped && !d.rec.busy(rng{al.blk.buf, off, off + int64(len(raw))}) {
		copy(unsafe.Slice((*byte)(unsafe.Add(al.blk.ptr, off)), len(raw)), raw)
		return nil
	}
	d.rec.stagedWrites++
	for len(raw) > 0 {
		n := min(int64(len(raw)), stagingChunk)
		b, st, soff, err := d.rec.stage(n)
		if err != nil {
			return d.fail(err)
		}
		copy(unsafe.Slice((*byte)(unsafe.Add(st.ptr, soff)), n), raw[:n])
		if err := d.rec.copyBuffer(st.buf, soff, al.blk.buf, off, n); err != nil {
			return d.fail(err)
		}
		if b.staged >= stagingChunk {
			// Bound the staging memory a batch holds: the next batch waits
			// for the one before, so at most about two chunks are held.
			if err := d.rec.submit(); err != nil {
				return d.fail(err)
			}
		}
		raw, off = raw[n:], off+n
	}
	return nil
}

// kick submits recorded dispatches without waiting, so that the device
// works while the host prepares more, and recycles completed batches. A
// batch holding only staged copies stays open: the ops that read them follow.
func (d *Device) kick() error {
	if b := d.rec.batches[d.rec.cur]; b.open && b.ops > 0 {
		if err := d.rec.submit(); err != nil {
			return d.fail(err)
		}
	}
	return d.fail(d.rec.retire())
}

// Read runs pending work and returns t's elements as float32.
func (d *Device) Read(t *engine.Tensor) ([]float32, error) {
	raw, err := d.readBytes(t)
	if err != nil {
		return nil, err
	}
	out := make([]float32, t.NumElem())
	if t.DType.Quantized() {
		if err := engine.Dequantize(t.DType, raw, out); err != nil {
			return nil, fmt.Errorf("vk: read %s: %w", t.Name, err)
		}
		return out, nil
	}
	if t.DType == engine.F16 {
		for i := range out {
			out[i] = float16.Frombits(binary.LittleEndian.Uint16(raw[2*i:])).Float32()
		}
	} else {
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	}
	return out, nil
}

func (d *Device) readBytes(t *engine.Tensor) ([]byte, error) {
	if err := d.usable(); err != nil {
		return nil, err
	}
	al, err := d.storage("read", t)
	if err != nil {
		return nil, err
	}
	if err := d.Flush(); err != nil {
		return nil, err
	}
	off := al.off + t.ByteOffset()
	raw := make([]byte, t.Bytes())
	if d.mem.mapped {
		copy(raw, unsafe.Slice((*byte)(unsafe.Add(al.blk.ptr, off)), len(raw)))
		return raw, nil
	}
	st, err := d.stager().get(min(int64(len(raw)), stagingChunk))
	if err != nil {
		return nil, err
	}
	// Flush waits for every batch, so the block is the caller's alone.
	defer d.staging.put(st)
	for done := int64(0); done < int64(len(raw)); {
		n := min(int64(len(raw))-done, stagingChunk)
		if err := d.rec.copyBuffer(al.blk.buf, off+done, st.buf, 0, n); err != nil {
			return nil, err
		}
		if err := d.Flush(); err != nil {
			return nil, err
		}
		copy(raw[done:done+n], unsafe.Slice((*byte)(st.ptr), n))
		done += n
	}
	return raw, nil
}
