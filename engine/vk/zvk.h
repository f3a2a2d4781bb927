// zvk: zimage's own thin C layer over the Vulkan API (see capi.go for why).
//
// Every function builds the Vulkan structs it needs on the C stack from
// scalar arguments and flat arrays, calls the driver through function
// pointers looked up with vkGetInstanceProcAddr / vkGetDeviceProcAddr, and
// returns. Nothing is kept in or freed by Go memory, so no garbage
// collection can pull memory from under a driver call.
//
// Handles cross into Go as uint64_t: on 64-bit platforms every Vulkan
// handle, dispatchable or not, is a pointer.
#ifndef ZVK_H
#define ZVK_H

#define VK_NO_PROTOTYPES
#include <stdint.h>
#include <stddef.h>
#include <vulkan/vulkan.h>

#if UINTPTR_MAX != UINT64_MAX
#error "zimage's Vulkan layer assumes 64-bit handles"
#endif

#define ZVK_MAX_DEVICES 16
#define ZVK_MAX_FAMILIES 16
#define ZVK_MAX_BINDINGS 8

// Instance-level entry points.
#define ZVK_INST_FNS(X) \
	X(DestroyInstance) X(EnumeratePhysicalDevices) X(GetPhysicalDeviceProperties) \
	X(GetPhysicalDeviceProperties2) X(GetPhysicalDeviceFeatures2) X(GetPhysicalDeviceMemoryProperties) \
	X(GetPhysicalDeviceQueueFamilyProperties) X(GetPhysicalDeviceFormatProperties) X(CreateDevice) \
	X(GetDeviceProcAddr)

// Device-level entry points: every call the engine makes on a device.
#define ZVK_DEV_FNS(X) \
	X(DestroyDevice) X(GetDeviceQueue) X(DeviceWaitIdle) \
	X(CreateCommandPool) X(DestroyCommandPool) X(AllocateCommandBuffers) X(FreeCommandBuffers) \
	X(BeginCommandBuffer) X(EndCommandBuffer) X(QueueSubmit) \
	X(CreateFence) X(DestroyFence) X(WaitForFences) X(ResetFences) X(GetFenceStatus) \
	X(CreateQueryPool) X(DestroyQueryPool) X(GetQueryPoolResults) X(CmdResetQueryPool) X(CmdWriteTimestamp) \
	X(CreateBuffer) X(DestroyBuffer) X(GetBufferMemoryRequirements) X(AllocateMemory) X(FreeMemory) \
	X(BindBufferMemory) X(MapMemory) X(UnmapMemory) X(CreateBufferView) X(DestroyBufferView) \
	X(CreateShaderModule) X(DestroyShaderModule) X(CreateDescriptorSetLayout) X(DestroyDescriptorSetLayout) \
	X(CreatePipelineLayout) X(DestroyPipelineLayout) X(CreateComputePipelines) X(DestroyPipeline) \
	X(CreateDescriptorPool) X(DestroyDescriptorPool) X(ResetDescriptorPool) X(AllocateDescriptorSets) \
	X(UpdateDescriptorSets) X(CmdBindPipeline) X(CmdBindDescriptorSets) X(CmdPushConstants) X(CmdDispatch) \
	X(CmdPipelineBarrier) X(CmdCopyBuffer) X(CmdUpdateBuffer)

#define ZVK_FIELD(n) PFN_vk##n n;

typedef struct zvk_inst {
	VkInstance inst;
	ZVK_INST_FNS(ZVK_FIELD)
} zvk_inst;

typedef struct zvk_dev {
	VkDevice dev;
	VkQueue queue;
	ZVK_DEV_FNS(ZVK_FIELD)
} zvk_dev;

// zvk_info is what the engine reads about a physical device.
typedef struct zvk_info {
	char name[VK_MAX_PHYSICAL_DEVICE_NAME_SIZE];
	uint32_t type, vendor, device, apiVersion;
	uint64_t maxStorageBufferRange, minStorageAlign, minTexelAlign;
	uint32_t maxShared, maxInvocations, maxTexelElements;
	uint32_t maxGroups[3];
	float timestampPeriod;
	uint32_t heapCount;
	uint64_t heapSize[VK_MAX_MEMORY_HEAPS];
	uint32_t heapFlags[VK_MAX_MEMORY_HEAPS];
	uint32_t typeCount;
	uint32_t typeFlags[VK_MAX_MEMORY_TYPES];
	uint32_t familyCount;
	uint32_t familyFlags[ZVK_MAX_FAMILIES];
	uint32_t familyTimestampBits[ZVK_MAX_FAMILIES];
	uint32_t texelBuffers; // R32F, R16F, RGBA32F, RGBA16F all usable as uniform texel buffers
	uint32_t subgroupSize, storage16, float16;
	uint64_t maxAllocation;
	char driverName[VK_MAX_DRIVER_NAME_SIZE];
	char driverInfo[VK_MAX_DRIVER_INFO_SIZE];
} zvk_info;

int zvk_load(void);
void zvk_trim_heap(void);
VkResult zvk_create_instance(uint32_t apiVersion, zvk_inst **out, const char **missing);
void zvk_destroy_instance(zvk_inst *in);
VkResult zvk_physical_devices(zvk_inst *in, uint64_t *pds, uint32_t *n);
int zvk_describe(zvk_inst *in, uint64_t pd, zvk_info *out);
VkResult zvk_create_device(zvk_inst *in, uint64_t pd, uint32_t family, int fp16, zvk_dev **out, const char **missing);
void zvk_destroy_device(zvk_dev *d);
VkResult zvk_wait_idle(zvk_dev *d);

VkResult zvk_create_command_pool(zvk_dev *d, uint32_t family, uint64_t *out);
void zvk_destroy_command_pool(zvk_dev *d, uint64_t pool);
VkResult zvk_allocate_command_buffer(zvk_dev *d, uint64_t pool, uint64_t *out);
void zvk_free_command_buffer(zvk_dev *d, uint64_t pool, uint64_t cmd);
VkResult zvk_begin(zvk_dev *d, uint64_t cmd);
VkResult zvk_end(zvk_dev *d, uint64_t cmd);
VkResult zvk_submit(zvk_dev *d, uint64_t cmd, uint64_t fence);

VkResult zvk_create_fence(zvk_dev *d, uint64_t *out);
void zvk_destroy_fence(zvk_dev *d, uint64_t f);
VkResult zvk_wait_fence(zvk_dev *d, uint64_t f, uint64_t timeout);
VkResult zvk_reset_fence(zvk_dev *d, uint64_t f);
VkResult zvk_fence_status(zvk_dev *d, uint64_t f);

VkResult zvk_create_query_pool(zvk_dev *d, uint32_t n, uint64_t *out);
void zvk_destroy_query_pool(zvk_dev *d, uint64_t qp);
VkResult zvk_query_results(zvk_dev *d, uint64_t qp, uint32_t n, uint64_t *out);
void zvk_cmd_reset_queries(zvk_dev *d, uint64_t cmd, uint64_t qp, uint32_t n);
void zvk_cmd_timestamp(zvk_dev *d, uint64_t cmd, uint64_t qp, uint32_t i);

VkResult zvk_create_buffer(zvk_dev *d, uint64_t size, uint32_t usage, uint64_t *out);
void zvk_destroy_buffer(zvk_dev *d, uint64_t buf);
void zvk_buffer_requirements(zvk_dev *d, uint64_t buf, uint64_t *size, uint32_t *typeBits);
VkResult zvk_allocate_memory(zvk_dev *d, uint64_t size, uint32_t typeIndex, uint64_t *out);
void zvk_free_memory(zvk_dev *d, uint64_t mem);
VkResult zvk_bind_buffer_memory(zvk_dev *d, uint64_t buf, uint64_t mem);
VkResult zvk_map_memory(zvk_dev *d, uint64_t mem, void **out);
void zvk_unmap_memory(zvk_dev *d, uint64_t mem);
VkResult zvk_create_buffer_view(zvk_dev *d, uint64_t buf, uint32_t format, uint64_t off, uint64_t range, uint64_t *out);
void zvk_destroy_buffer_view(zvk_dev *d, uint64_t view);

VkResult zvk_create_shader_module(zvk_dev *d, const uint32_t *code, size_t bytes, uint64_t *out);
void zvk_destroy_shader_module(zvk_dev *d, uint64_t m);
VkResult zvk_create_set_layout(zvk_dev *d, uint32_t n, uint32_t texels, uint64_t *out);
void zvk_destroy_set_layout(zvk_dev *d, uint64_t l);
VkResult zvk_create_pipeline_layout(zvk_dev *d, uint64_t setLayout, uint32_t push, uint64_t *out);
void zvk_destroy_pipeline_layout(zvk_dev *d, uint64_t l);
VkResult zvk_create_pipeline(zvk_dev *d, uint64_t module, uint64_t layout, const uint32_t *spec, uint32_t nspec, uint64_t *out);
void zvk_destroy_pipeline(zvk_dev *d, uint64_t p);

VkResult zvk_create_descriptor_pool(zvk_dev *d, uint32_t maxSets, uint32_t perType, uint64_t *out);
void zvk_destroy_descriptor_pool(zvk_dev *d, uint64_t p);
VkResult zvk_reset_descriptor_pool(zvk_dev *d, uint64_t p);
VkResult zvk_allocate_set(zvk_dev *d, uint64_t pool, uint64_t layout, uint64_t *out);
void zvk_write_set(zvk_dev *d, uint64_t set, uint32_t n, uint32_t texels, const uint64_t *bufs,
	const uint64_t *offs, const uint64_t *ranges, const uint64_t *views);

void zvk_cmd_barrier(zvk_dev *d, uint64_t cmd);
void zvk_cmd_bind_pipeline(zvk_dev *d, uint64_t cmd, uint64_t pipe);
void zvk_cmd_bind_set(zvk_dev *d, uint64_t cmd, uint64_t layout, uint64_t set);
void zvk_cmd_push(zvk_dev *d, uint64_t cmd, uint64_t layout, uint32_t size, const void *data);
void zvk_cmd_dispatch(zvk_dev *d, uint64_t cmd, uint32_t x, uint32_t y, uint32_t z);
void zvk_cmd_copy(zvk_dev *d, uint64_t cmd, uint64_t src, uint64_t srcOff, uint64_t dst, uint64_t dstOff, uint64_t size);
void zvk_cmd_update(zvk_dev *d, uint64_t cmd, uint64_t buf, uint64_t off, uint64_t size, const void *data);

#endif
