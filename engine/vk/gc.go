package vk

import (
	"runtime/debug"

	"github.com/vulkan-go/vulkan"
)

// withoutGC runs a binding call with the garbage collector held off.
//
// vulkan-go converts nested structs (pSpecializationInfo, pMapEntries,
// pCommandBuffers, ...) into C memory and frees it from a finalizer set on
// a local variable of the conversion, which becomes unreachable as soon as
// the conversion returns: a GC cycle during the C call can free what the
// driver is still reading. vkCreateComputePipelines runs LLVM on lavapipe
// for milliseconds to seconds, and crashed 1 run in 3 of the Winograd
// tests with a cold Mesa shader cache (SIGSEGV inside the call). Disabling
// the collector waits for any cycle in progress, so no finalizer of
// memory converted for this call can run until it returns.
func withoutGC(call func() vulkan.Result) vulkan.Result {
	old := debug.SetGCPercent(-1)
	defer debug.SetGCPercent(old)
	return call()
}
