package vk

// Every Vulkan call the engine makes goes through zvk.c, our own C layer,
// rather than a Go binding. vulkan-go, which the engine used before, converts nested
// structs (pSpecializationInfo, pSetLayouts, pBufferInfo, pCommandBuffers,
// the barrier and copy arrays, ...) into C memory that a finalizer frees,
// and that finalizer is set on a local of the conversion that dies as soon
// as the conversion returns: any garbage collection during the driver call
// (runtime.GC from another goroutine, a GOMEMLIMIT-driven cycle) can free
// what the driver is reading. Loading a model while another goroutine
// called runtime.GC() crashed inside vkCreateComputePipelines 3 runs in 3.
// Its top-level struct copies were never freed at all (a C leak per buffer
// view and per command buffer begun). Holding the collector off around
// calls cannot be made safe (debug.SetGCPercent stops neither runtime.GC
// nor memory-limit collections, and is process-global).
//
// zvk.c builds each struct on the C stack from scalars and flat arrays of
// handles, so no Go memory and no finalizer is involved, and cgo's own
// pointer rules hold (Go memory passed in holds no pointers). Function
// pointers come from vkGetInstanceProcAddr / vkGetDeviceProcAddr of the
// libvulkan.so.1 loaded once per process, and live in a C struct per
// instance and per device.
//
// This file also makes the layer observable: api counts every object it
// creates and destroys (Device.Objects), and consults the test-only fault
// hook (Options.Fault) before the operations tests make fail.

/*
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "zvk.h"
*/
import "C"

import (
	"fmt"
	"math"
	"sync"
	"unsafe"
)

// Vulkan handles, as zvk.c passes them.
type (
	vkBuffer     uint64
	vkMemory     uint64
	vkView       uint64
	vkModule     uint64
	vkSetLayout  uint64
	vkPipeLayout uint64
	vkPipeline   uint64
	vkDescPool   uint64
	vkSet        uint64
	vkCmdPool    uint64
	vkCmd        uint64
	vkFence      uint64
	vkQueryPool  uint64
)

// Vulkan constants the engine passes through zvk.c (values from the spec).
const (
	apiVersion12 = 1<<22 | 2<<12 // VK_MAKE_VERSION(1, 2, 0)

	usageTransferSrc  = 0x1
	usageTransferDst  = 0x2
	usageUniformTexel = 0x4
	usageStorage      = 0x20

	memDeviceLocal  = 0x1
	memHostVisible  = 0x2
	memHostCoherent = 0x4
	memHostCached   = 0x8

	heapDeviceLocal = 0x1
	queueCompute    = 0x2

	formatR16F     = 76
	formatR32F     = 100
	formatRGBA16F  = 97
	formatRGBA32F  = 109
	formatR32UI    = 98
	formatRGBA32UI = 107
)

// Objects counts the Vulkan objects a Device holds. Close destroys them all
// and reports an error if a count does not return to zero.
type Objects struct {
	Buffers, Memory, Mapped, BufferViews                  int
	ShaderModules, SetLayouts, PipelineLayouts, Pipelines int
	DescriptorPools, DescriptorSets                       int
	CommandPools, CommandBuffers, Fences, QueryPools      int
}

// Total is the sum of all counts.
func (o Objects) Total() int {
	return o.Buffers + o.Memory + o.Mapped + o.BufferViews + o.ShaderModules + o.SetLayouts + o.PipelineLayouts +
		o.Pipelines + o.DescriptorPools + o.DescriptorSets + o.CommandPools + o.CommandBuffers + o.Fences + o.QueryPools
}

// Counters are cumulative counts of the work a Device has recorded.
type Counters struct {
	Dispatches, Copies, Updates, Barriers int64
	Submits, Waits                        int64 // Waits: fence waits that blocked the host
	PipelinesCreated, ViewsCreated        int64
	Uploads, StagedUploads                int64
	// Abandoned counts batches of recorded work dropped because ending or
	// submitting them failed: tensors they would have written (uploads
	// included) hold stale bytes.
	Abandoned int64
}

// FaultPoint is a kind of operation that Options.Fault can make fail.
type FaultPoint int

const (
	// FaultAlloc: a tensor allocation, failing as vkAllocateMemory would.
	FaultAlloc FaultPoint = iota
	// FaultUpload: a host-to-device upload (Write, WriteRaw), failing as
	// the allocation of its staging memory would.
	FaultUpload
	// FaultPipeline: vkCreateComputePipelines (pipelines are cached, so
	// only a device's first use of a kernel creates one).
	FaultPipeline
	// FaultSubmit: vkQueueSubmit.
	FaultSubmit
	// NumFaultPoints is the number of fault points.
	NumFaultPoints
)

func (p FaultPoint) String() string {
	switch p {
	case FaultAlloc:
		return "alloc"
	case FaultUpload:
		return "upload"
	case FaultPipeline:
		return "pipeline"
	case FaultSubmit:
		return "submit"
	}
	return fmt.Sprintf("FaultPoint(%d)", int(p))
}

var (
	loaderOnce sync.Once
	loaderErr  error
)

// loadVulkan loads libvulkan once per process: the loader is process-wide
// state of the C library, not of any device.
func loadVulkan() error {
	loaderOnce.Do(func() {
		if r := C.zvk_load(); r != 0 {
			loaderErr = fmt.Errorf("vk: cannot load libvulkan.so.1 or its vkGetInstanceProcAddr (install libvulkan1): %w", ErrNoDevice)
		}
	})
	return loaderErr
}

// instance is a VkInstance with its entry points.
type instance struct{ c *C.zvk_inst }

func newInstance() (*instance, error) {
	if err := loadVulkan(); err != nil {
		return nil, err
	}
	var in *C.zvk_inst
	var missing *C.char
	r := C.zvk_create_instance(apiVersion12, &in, &missing)
	if missing != nil {
		return nil, fmt.Errorf("vk: the Vulkan loader lacks %s: %w", C.GoString(missing), ErrIncompatibleDriver)
	}
	if err := check("vkCreateInstance", int32(r)); err != nil {
		return nil, err
	}
	return &instance{c: in}, nil
}

// destroy destroys the instance, then returns the heap memory the driver
// freed to the OS (see zvk_trim_heap).
func (in *instance) destroy() {
	if in != nil && in.c != nil {
		C.zvk_destroy_instance(in.c)
		in.c = nil
		C.zvk_trim_heap()
	}
}

func (in *instance) physicalDevices() ([]uint64, error) {
	var pds [C.ZVK_MAX_DEVICES]C.uint64_t
	var n C.uint32_t
	if err := check("vkEnumeratePhysicalDevices", int32(C.zvk_physical_devices(in.c, &pds[0], &n))); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, ErrNoDevice
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(pds[i])
	}
	return out, nil
}

// physical is what Open needs to know of a physical device beyond DeviceInfo.
type physical struct {
	handle       uint64
	memTypes     []uint32 // property flags per memory type
	families     []uint32 // queue flags per family
	timestamps   []uint32 // timestampValidBits per family
	maxGroups    [3]uint32
	sharedMemory int
}

func (in *instance) describe(pd uint64, index int) (DeviceInfo, physical, error) {
	var c C.zvk_info
	if C.zvk_describe(in.c, C.uint64_t(pd), &c) != 0 {
		return DeviceInfo{}, physical{}, fmt.Errorf("vk: cannot describe device %d", index)
	}
	api := uint32(c.apiVersion)
	info := DeviceInfo{
		Index:                   index,
		Name:                    C.GoString(&c.name[0]),
		VendorID:                uint32(c.vendor),
		DeviceID:                uint32(c.device),
		APIVersion:              fmt.Sprintf("%d.%d.%d", api>>22, (api>>12)&0x3ff, api&0xfff),
		MaxStorageBufferRange:   int64(c.maxStorageBufferRange),
		MaxSharedMemory:         int(c.maxShared),
		MaxWorkgroupInvocations: int(c.maxInvocations),
		MinStorageBufferAlign:   int64(c.minStorageAlign),
		MaxTexelBufferElements:  int64(c.maxTexelElements),
		MinTexelBufferAlign:     int64(c.minTexelAlign),
		TimestampPeriod:         float64(c.timestampPeriod),
		TexelBuffers:            c.texelBuffers != 0,
		SubgroupSize:            int(c.subgroupSize),
		FP16Storage:             c.storage16 != 0,
		FP16Arithmetic:          c.float16 != 0,
		MaxAllocationSize:       int64(c.maxAllocation),
		apiVersion:              api,
	}
	info.Type = "other"
	if t := uint32(c._type); t <= 4 { // VkPhysicalDeviceType
		info.Type = [...]string{"other", "integrated-gpu", "discrete-gpu", "virtual-gpu", "cpu"}[t]
	}
	driver := C.GoString(&c.driverName[0]) + " " + C.GoString(&c.driverInfo[0])
	info.Driver = trimSpace(driver)
	for i := 0; i < int(c.heapCount); i++ {
		info.Heaps = append(info.Heaps, MemoryHeap{Size: int64(c.heapSize[i]), DeviceLocal: c.heapFlags[i]&heapDeviceLocal != 0})
	}
	ph := physical{handle: pd, sharedMemory: int(c.maxShared)}
	for i := 0; i < int(c.typeCount); i++ {
		ph.memTypes = append(ph.memTypes, uint32(c.typeFlags[i]))
	}
	for i := 0; i < int(c.familyCount); i++ {
		ph.families = append(ph.families, uint32(c.familyFlags[i]))
		ph.timestamps = append(ph.timestamps, uint32(c.familyTimestampBits[i]))
	}
	for i := range ph.maxGroups {
		ph.maxGroups[i] = uint32(c.maxGroups[i])
	}
	return info, ph, nil
}

// api is an open VkDevice: every call the engine makes on it.
type api struct {
	c      *C.zvk_dev
	objs   Objects
	work   Counters
	setsIn map[vkDescPool]int // descriptor sets allocated from each pool since its reset
	fault  func(FaultPoint, int) error
	faults [NumFaultPoints]int // operations seen per fault point
}

func (in *instance) createDevice(pd uint64, family uint32, fp16 bool, fault func(FaultPoint, int) error) (*api, error) {
	var c *C.zvk_dev
	var missing *C.char
	f := C.int(0)
	if fp16 {
		f = 1
	}
	r := C.zvk_create_device(in.c, C.uint64_t(pd), C.uint32_t(family), f, &c, &missing)
	if missing != nil {
		return nil, fmt.Errorf("vk: the driver lacks %s: %w", C.GoString(missing), ErrIncompatibleDriver)
	}
	if err := check("vkCreateDevice", int32(r)); err != nil {
		return nil, err
	}
	return &api{c: c, setsIn: map[vkDescPool]int{}, fault: fault}, nil
}

// inject counts an operation of kind p and asks the fault hook whether it
// fails; call names it in the error.
func (a *api) inject(p FaultPoint, call string) error {
	a.faults[p]++
	if a.fault == nil {
		return nil
	}
	if err := a.fault(p, a.faults[p]); err != nil {
		return &ResultError{Call: call, Result: resultCode(err), Err: err, Injected: true}
	}
	return nil
}

func (a *api) destroy() {
	if a.c != nil {
		C.zvk_destroy_device(a.c)
		a.c = nil
	}
}

func (a *api) waitIdle() error { return check("vkDeviceWaitIdle", int32(C.zvk_wait_idle(a.c))) }

// created checks a create call's result and counts the object when it
// succeeded.
func created(call string, r C.VkResult, count *int) error {
	if err := check(call, int32(r)); err != nil {
		return err
	}
	*count++
	return nil
}

func (a *api) createCommandPool(family uint32) (vkCmdPool, error) {
	var h C.uint64_t
	err := created("vkCreateCommandPool", C.zvk_create_command_pool(a.c, C.uint32_t(family), &h), &a.objs.CommandPools)
	return vkCmdPool(h), err
}

func (a *api) destroyCommandPool(p vkCmdPool) {
	C.zvk_destroy_command_pool(a.c, C.uint64_t(p))
	a.objs.CommandPools--
}

func (a *api) allocateCommandBuffer(p vkCmdPool) (vkCmd, error) {
	var h C.uint64_t
	err := created("vkAllocateCommandBuffers", C.zvk_allocate_command_buffer(a.c, C.uint64_t(p), &h), &a.objs.CommandBuffers)
	return vkCmd(h), err
}

func (a *api) freeCommandBuffer(p vkCmdPool, c vkCmd) {
	C.zvk_free_command_buffer(a.c, C.uint64_t(p), C.uint64_t(c))
	a.objs.CommandBuffers--
}

func (a *api) begin(c vkCmd) error {
	return check("vkBeginCommandBuffer", int32(C.zvk_begin(a.c, C.uint64_t(c))))
}
func (a *api) end(c vkCmd) error {
	return check("vkEndCommandBuffer", int32(C.zvk_end(a.c, C.uint64_t(c))))
}

func (a *api) submit(c vkCmd, f vkFence) error {
	if err := a.inject(FaultSubmit, "vkQueueSubmit"); err != nil {
		return err
	}
	a.work.Submits++
	return check("vkQueueSubmit", int32(C.zvk_submit(a.c, C.uint64_t(c), C.uint64_t(f))))
}

func (a *api) createFence() (vkFence, error) {
	var h C.uint64_t
	err := created("vkCreateFence", C.zvk_create_fence(a.c, &h), &a.objs.Fences)
	return vkFence(h), err
}

func (a *api) destroyFence(f vkFence) {
	C.zvk_destroy_fence(a.c, C.uint64_t(f))
	a.objs.Fences--
}

func (a *api) waitFence(f vkFence) error {
	return check("vkWaitForFences", int32(C.zvk_wait_fence(a.c, C.uint64_t(f), math.MaxUint64)))
}

func (a *api) resetFence(f vkFence) error {
	return check("vkResetFences", int32(C.zvk_reset_fence(a.c, C.uint64_t(f))))
}

// fenceStatus returns VK_SUCCESS (0), VK_NOT_READY (1) or an error code.
func (a *api) fenceStatus(f vkFence) int32 { return int32(C.zvk_fence_status(a.c, C.uint64_t(f))) }

func (a *api) createQueryPool(n uint32) (vkQueryPool, error) {
	var h C.uint64_t
	err := created("vkCreateQueryPool", C.zvk_create_query_pool(a.c, C.uint32_t(n), &h), &a.objs.QueryPools)
	return vkQueryPool(h), err
}

func (a *api) destroyQueryPool(q vkQueryPool) {
	C.zvk_destroy_query_pool(a.c, C.uint64_t(q))
	a.objs.QueryPools--
}

func (a *api) queryResults(q vkQueryPool, out []uint64) error {
	r := C.zvk_query_results(a.c, C.uint64_t(q), C.uint32_t(len(out)), (*C.uint64_t)(unsafe.Pointer(&out[0])))
	return check("vkGetQueryPoolResults", int32(r))
}

func (a *api) cmdResetQueries(c vkCmd, q vkQueryPool, n uint32) {
	C.zvk_cmd_reset_queries(a.c, C.uint64_t(c), C.uint64_t(q), C.uint32_t(n))
}

func (a *api) cmdTimestamp(c vkCmd, q vkQueryPool, i uint32) {
	C.zvk_cmd_timestamp(a.c, C.uint64_t(c), C.uint64_t(q), C.uint32_t(i))
}

func (a *api) createBuffer(size int64) (vkBuffer, error) {
	var h C.uint64_t
	usage := C.uint32_t(usageStorage | usageUniformTexel | usageTransferSrc | usageTransferDst)
	err := created("vkCreateBuffer", C.zvk_create_buffer(a.c, C.uint64_t(size), usage, &h), &a.objs.Buffers)
	return vkBuffer(h), err
}

func (a *api) destroyBuffer(b vkBuffer) {
	C.zvk_destroy_buffer(a.c, C.uint64_t(b))
	a.objs.Buffers--
}

// requirements returns the memory size a buffer needs and the memory types
// it may use.
func (a *api) requirements(b vkBuffer) (int64, uint32) {
	var size C.uint64_t
	var bits C.uint32_t
	C.zvk_buffer_requirements(a.c, C.uint64_t(b), &size, &bits)
	return int64(size), uint32(bits)
}

func (a *api) allocateMemory(size int64, typeIndex uint32) (vkMemory, error) {
	var h C.uint64_t
	err := created("vkAllocateMemory", C.zvk_allocate_memory(a.c, C.uint64_t(size), C.uint32_t(typeIndex), &h), &a.objs.Memory)
	return vkMemory(h), err
}

func (a *api) freeMemory(m vkMemory) {
	C.zvk_free_memory(a.c, C.uint64_t(m))
	a.objs.Memory--
}

func (a *api) bindBufferMemory(b vkBuffer, m vkMemory) error {
	return check("vkBindBufferMemory", int32(C.zvk_bind_buffer_memory(a.c, C.uint64_t(b), C.uint64_t(m))))
}

// mapMemory maps the whole of m; the pointer is C memory.
func (a *api) mapMemory(m vkMemory) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	if err := created("vkMapMemory", C.zvk_map_memory(a.c, C.uint64_t(m), &p), &a.objs.Mapped); err != nil {
		return nil, err
	}
	return p, nil
}

func (a *api) unmapMemory(m vkMemory) {
	C.zvk_unmap_memory(a.c, C.uint64_t(m))
	a.objs.Mapped--
}

func (a *api) createBufferView(b vkBuffer, format uint32, off, size int64) (vkView, error) {
	var h C.uint64_t
	r := C.zvk_create_buffer_view(a.c, C.uint64_t(b), C.uint32_t(format), C.uint64_t(off), C.uint64_t(size), &h)
	if err := created("vkCreateBufferView", r, &a.objs.BufferViews); err != nil {
		return 0, err
	}
	a.work.ViewsCreated++
	return vkView(h), nil
}

func (a *api) destroyBufferView(v vkView) {
	C.zvk_destroy_buffer_view(a.c, C.uint64_t(v))
	a.objs.BufferViews--
}

func (a *api) createShaderModule(code []uint32) (vkModule, error) {
	var h C.uint64_t
	r := C.zvk_create_shader_module(a.c, (*C.uint32_t)(unsafe.Pointer(&code[0])), C.size_t(4*len(code)), &h)
	err := created("vkCreateShaderModule", r, &a.objs.ShaderModules)
	return vkModule(h), err
}

func (a *api) destroyShaderModule(m vkModule) {
	C.zvk_destroy_shader_module(a.c, C.uint64_t(m))
	a.objs.ShaderModules--
}

func (a *api) createSetLayout(n int, texels uint32) (vkSetLayout, error) {
	var h C.uint64_t
	err := created("vkCreateDescriptorSetLayout", C.zvk_create_set_layout(a.c, C.uint32_t(n), C.uint32_t(texels), &h), &a.objs.SetLayouts)
	return vkSetLayout(h), err
}

func (a *api) destroySetLayout(l vkSetLayout) {
	C.zvk_destroy_set_layout(a.c, C.uint64_t(l))
	a.objs.SetLayouts--
}

func (a *api) createPipelineLayout(set vkSetLayout, push int) (vkPipeLayout, error) {
	var h C.uint64_t
	err := created("vkCreatePipelineLayout", C.zvk_create_pipeline_layout(a.c, C.uint64_t(set), C.uint32_t(push), &h), &a.objs.PipelineLayouts)
	return vkPipeLayout(h), err
}

func (a *api) destroyPipelineLayout(l vkPipeLayout) {
	C.zvk_destroy_pipeline_layout(a.c, C.uint64_t(l))
	a.objs.PipelineLayouts--
}

// createPipeline compiles module's main with specialization constants
// 0..len(spec)-1 set to spec.
func (a *api) createPipeline(name string, m vkModule, l vkPipeLayout, spec []uint32) (vkPipeline, error) {
	call := "vkCreateComputePipelines " + name
	if err := a.inject(FaultPipeline, call); err != nil {
		return 0, err
	}
	var sp *C.uint32_t
	if len(spec) > 0 {
		sp = (*C.uint32_t)(unsafe.Pointer(&spec[0]))
	}
	var h C.uint64_t
	r := C.zvk_create_pipeline(a.c, C.uint64_t(m), C.uint64_t(l), sp, C.uint32_t(len(spec)), &h)
	if err := created(call, r, &a.objs.Pipelines); err != nil {
		return 0, err
	}
	a.work.PipelinesCreated++
	return vkPipeline(h), nil
}

func (a *api) destroyPipeline(p vkPipeline) {
	C.zvk_destroy_pipeline(a.c, C.uint64_t(p))
	a.objs.Pipelines--
}

func (a *api) createDescriptorPool(maxSets, perType int) (vkDescPool, error) {
	var h C.uint64_t
	r := C.zvk_create_descriptor_pool(a.c, C.uint32_t(maxSets), C.uint32_t(perType), &h)
	err := created("vkCreateDescriptorPool", r, &a.objs.DescriptorPools)
	return vkDescPool(h), err
}

func (a *api) destroyDescriptorPool(p vkDescPool) {
	C.zvk_destroy_descriptor_pool(a.c, C.uint64_t(p))
	a.objs.DescriptorPools--
	a.objs.DescriptorSets -= a.setsIn[p]
	delete(a.setsIn, p)
}

func (a *api) resetDescriptorPool(p vkDescPool) error {
	if err := check("vkResetDescriptorPool", int32(C.zvk_reset_descriptor_pool(a.c, C.uint64_t(p)))); err != nil {
		return err
	}
	a.objs.DescriptorSets -= a.setsIn[p]
	a.setsIn[p] = 0
	return nil
}

func (a *api) allocateSet(p vkDescPool, l vkSetLayout) (vkSet, error) {
	var h C.uint64_t
	if err := created("vkAllocateDescriptorSets", C.zvk_allocate_set(a.c, C.uint64_t(p), C.uint64_t(l), &h), &a.objs.DescriptorSets); err != nil {
		return 0, err
	}
	a.setsIn[p]++
	return vkSet(h), nil
}

// setWrites are the descriptors of one set, binding i at index i.
type setWrites struct {
	bufs, offs, ranges, views [maxBindings]uint64
	n                         int
	texels                    uint32
}

func (a *api) writeSet(s vkSet, w *setWrites) {
	C.zvk_write_set(a.c, C.uint64_t(s), C.uint32_t(w.n), C.uint32_t(w.texels), (*C.uint64_t)(&w.bufs[0]),
		(*C.uint64_t)(&w.offs[0]), (*C.uint64_t)(&w.ranges[0]), (*C.uint64_t)(&w.views[0]))
}

func (a *api) cmdBarrier(c vkCmd) {
	C.zvk_cmd_barrier(a.c, C.uint64_t(c))
	a.work.Barriers++
}

func (a *api) cmdBindPipeline(c vkCmd, p vkPipeline) {
	C.zvk_cmd_bind_pipeline(a.c, C.uint64_t(c), C.uint64_t(p))
}

func (a *api) cmdBindSet(c vkCmd, l vkPipeLayout, s vkSet) {
	C.zvk_cmd_bind_set(a.c, C.uint64_t(c), C.uint64_t(l), C.uint64_t(s))
}

// cmdPush records size bytes of push constants from data (a struct without
// pointers; vkCmdPushConstants copies it).
func (a *api) cmdPush(c vkCmd, l vkPipeLayout, size uintptr, data unsafe.Pointer) {
	C.zvk_cmd_push(a.c, C.uint64_t(c), C.uint64_t(l), C.uint32_t(size), data)
}

func (a *api) cmdDispatch(c vkCmd, g [3]uint32) {
	C.zvk_cmd_dispatch(a.c, C.uint64_t(c), C.uint32_t(g[0]), C.uint32_t(g[1]), C.uint32_t(g[2]))
	a.work.Dispatches++
}

func (a *api) cmdCopy(c vkCmd, src vkBuffer, srcOff int64, dst vkBuffer, dstOff, size int64) {
	C.zvk_cmd_copy(a.c, C.uint64_t(c), C.uint64_t(src), C.uint64_t(srcOff), C.uint64_t(dst), C.uint64_t(dstOff), C.uint64_t(size))
	a.work.Copies++
}

// cmdUpdate records an inline upload of data (at most 64 KiB, a multiple of
// 4 bytes; vkCmdUpdateBuffer copies it into the command buffer).
func (a *api) cmdUpdate(c vkCmd, buf vkBuffer, off int64, data []byte) {
	C.zvk_cmd_update(a.c, C.uint64_t(c), C.uint64_t(buf), C.uint64_t(off), C.uint64_t(len(data)), unsafe.Pointer(&data[0]))
	a.work.Updates++
}
