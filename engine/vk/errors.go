package vk

import (
	"errors"
	"fmt"

	"github.com/vulkan-go/vulkan"
)

// Errors a Vulkan call can end in, mapped from VkResult. Match them with
// errors.Is; the *ResultError that wraps them names the call.
var (
	ErrOutOfHostMemory      = errors.New("vk: out of host memory")
	ErrOutOfDeviceMemory    = errors.New("vk: out of device memory")
	ErrInitializationFailed = errors.New("vk: initialization failed")
	ErrDeviceLost           = errors.New("vk: device lost")
	ErrMemoryMapFailed      = errors.New("vk: memory map failed")
	ErrLayerNotPresent      = errors.New("vk: layer not present")
	ErrExtensionNotPresent  = errors.New("vk: extension not present")
	ErrFeatureNotPresent    = errors.New("vk: feature not present")
	ErrIncompatibleDriver   = errors.New("vk: incompatible driver")
	ErrTooManyObjects       = errors.New("vk: too many objects")
	ErrFragmentedPool       = errors.New("vk: fragmented pool")
	ErrOutOfPoolMemory      = errors.New("vk: out of pool memory")
	ErrTimeout              = errors.New("vk: timeout")
	ErrUnknown              = errors.New("vk: unknown error")

	// ErrNoDevice: the loader found no Vulkan device (or no usable one).
	ErrNoDevice = errors.New("vk: no Vulkan device found")
	// ErrClosed: the device was used after Close.
	ErrClosed = errors.New("vk: device is closed")
)

// ResultError is a failed Vulkan call: which call and its VkResult.
type ResultError struct {
	Call   string
	Result int32
	Err    error // one of the Err* values above
}

func (e *ResultError) Error() string {
	return fmt.Sprintf("%v in %s (VkResult %d)", e.Err, e.Call, e.Result)
}

func (e *ResultError) Unwrap() error { return e.Err }

// check maps a VkResult to nil or a *ResultError naming call.
func check(call string, r vulkan.Result) error {
	if r == vulkan.Success {
		return nil
	}
	var e error
	switch r {
	case vulkan.ErrorOutOfHostMemory:
		e = ErrOutOfHostMemory
	case vulkan.ErrorOutOfDeviceMemory:
		e = ErrOutOfDeviceMemory
	case vulkan.ErrorInitializationFailed:
		e = ErrInitializationFailed
	case vulkan.ErrorDeviceLost:
		e = ErrDeviceLost
	case vulkan.ErrorMemoryMapFailed:
		e = ErrMemoryMapFailed
	case vulkan.ErrorLayerNotPresent:
		e = ErrLayerNotPresent
	case vulkan.ErrorExtensionNotPresent:
		e = ErrExtensionNotPresent
	case vulkan.ErrorFeatureNotPresent:
		e = ErrFeatureNotPresent
	case vulkan.ErrorIncompatibleDriver:
		e = ErrIncompatibleDriver
	case vulkan.ErrorTooManyObjects:
		e = ErrTooManyObjects
	case vulkan.Timeout:
		e = ErrTimeout
	case vulkan.ErrorFragmentedPool:
		e = ErrFragmentedPool
	case vulkan.ErrorOutOfPoolMemory:
		e = ErrOutOfPoolMemory
	default:
		e = ErrUnknown
	}
	return &ResultError{Call: call, Result: int32(r), Err: e}
}

// BudgetError is an allocation refused because it would take the device's
// accounted memory over Options.Budget.
type BudgetError struct {
	Tensor    string
	Requested int64
	InUse     int64
	Budget    int64
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("vk: allocating %s: %d bytes requested with %d in use exceeds the budget of %d bytes",
		e.Tensor, e.Requested, e.InUse, e.Budget)
}

// RangeError is a tensor too large to bind as one storage buffer on this
// device (maxStorageBufferRange), or to allocate at all (maxMemoryAllocationSize).
type RangeError struct {
	Op     string
	Tensor string
	Bytes  int64
	Limit  int64
	What   string // the limit's Vulkan name
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("vk: %s: %s is %d bytes, over the device's %s of %d bytes (split or tile the work)",
		e.Op, e.Tensor, e.Bytes, e.What, e.Limit)
}
