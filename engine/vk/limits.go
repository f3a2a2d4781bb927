package vk

// MaxTensorBytes is the largest tensor a kernel can bind on this device
// (maxStorageBufferRange); it implements engine.TensorLimiter.
func (d *Device) MaxTensorBytes() int64 { return d.info.MaxStorageBufferRange }
