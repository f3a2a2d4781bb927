package vk

import (
	"fmt"

	"github.com/zimage/zimage/engine"
)

// The transformer ops arrive in the next commits; until then they fail
// with an error naming the op, and only the reference backend runs them.

// RMSNorm is not implemented on Vulkan yet.
func (d *Device) RMSNorm(dst, x, gamma *engine.Tensor, eps float32) error {
	return fmt.Errorf("vk: rms_norm %s: not implemented yet", x.Name)
}

// Rope is not implemented on Vulkan yet.
func (d *Device) Rope(dst, x, cos, sin *engine.Tensor, heads int, mode engine.RopeMode) error {
	return fmt.Errorf("vk: rope %s: not implemented yet", x.Name)
}

// SwiGLU is not implemented on Vulkan yet.
func (d *Device) SwiGLU(dst, gate, up *engine.Tensor) error {
	return fmt.Errorf("vk: swiglu %s: not implemented yet", gate.Name)
}
