package vk

import (
	"errors"
	"fmt"
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
	// Injected: the failure came from Options.Fault, not the driver.
	Injected bool
}

func (e *ResultError) Error() string {
	if e.Injected {
		return fmt.Sprintf("%v in %s (VkResult %d, injected by a test)", e.Err, e.Call, e.Result)
	}
	return fmt.Sprintf("%v in %s (VkResult %d)", e.Err, e.Call, e.Result)
}

func (e *ResultError) Unwrap() error { return e.Err }

// VkResult codes (from the spec; zvk.c returns them unchanged).
const (
	vkSuccess  = 0
	vkNotReady = 1
)

// results maps the VkResult error codes to the Err* values.
var results = []struct {
	code int32
	err  error
}{
	{-1, ErrOutOfHostMemory},
	{-2, ErrOutOfDeviceMemory},
	{-3, ErrInitializationFailed},
	{-4, ErrDeviceLost},
	{-5, ErrMemoryMapFailed},
	{-6, ErrLayerNotPresent},
	{-7, ErrExtensionNotPresent},
	{-8, ErrFeatureNotPresent},
	{-9, ErrIncompatibleDriver},
	{-10, ErrTooManyObjects},
	{-12, ErrFragmentedPool},
	{-1000069000, ErrOutOfPoolMemory},
	{2, ErrTimeout},
	{-13, ErrUnknown},
}

// check maps a VkResult to nil or a *ResultError naming call.
func check(call string, r int32) error {
	if r == vkSuccess {
		return nil
	}
	e := ErrUnknown
	for _, x := range results {
		if x.code == r {
			e = x.err
			break
		}
	}
	return &ResultError{Call: call, Result: r, Err: e}
}

// resultCode is the VkResult for one of the Err* values (VK_ERROR_UNKNOWN
// for any other error).
func resultCode(err error) int32 {
	for _, x := range results {
		if errors.Is(err, x.err) {
			return x.code
		}
	}
	return -13
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
