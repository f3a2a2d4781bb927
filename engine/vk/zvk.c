// zvk: see zvk.h.
#define _GNU_SOURCE // RTLD_DEFAULT
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include "zvk.h"

#define H(T, h) ((T)(uintptr_t)(h))
#define U(h) ((uint64_t)(uintptr_t)(h))

// The loader is process-wide, like the shared library itself; Go calls
// zvk_load under a sync.Once.
static PFN_vkGetInstanceProcAddr zvk_gipa = NULL;

int zvk_load(void) {
	if (zvk_gipa) return 0;
	// The versioned name is what the runtime package installs; the bare
	// name only comes with the development package.
	void *h = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!h) h = dlopen("libvulkan.so", RTLD_NOW | RTLD_LOCAL);
	if (!h) return -1;
	zvk_gipa = (PFN_vkGetInstanceProcAddr)dlsym(h, "vkGetInstanceProcAddr");
	return zvk_gipa ? 0 : -2;
}

// zvk_trim_heap returns the heap memory the driver freed to the OS.
// glibc keeps freed memory in its per-thread arenas, and the driver's
// threads free tens of MiB when a device closes (LLVM's compiled
// pipelines); without this, RSS stays at its high-water mark. Looked up at
// run time: other C libraries have no malloc_trim.
void zvk_trim_heap(void) {
	int (*trim)(size_t) = (int (*)(size_t))dlsym(RTLD_DEFAULT, "malloc_trim");
	if (trim) trim(0);
}

VkResult zvk_create_instance(uint32_t apiVersion, zvk_inst **out, const char **missing) {
	*out = NULL;
	*missing = NULL;
	if (!zvk_gipa) return VK_ERROR_INITIALIZATION_FAILED;
	PFN_vkCreateInstance create = (PFN_vkCreateInstance)zvk_gipa(NULL, "vkCreateInstance");
	if (!create) {
		*missing = "vkCreateInstance";
		return VK_ERROR_INITIALIZATION_FAILED;
	}
	VkApplicationInfo app = {VK_STRUCTURE_TYPE_APPLICATION_INFO};
	app.pApplicationName = "zimage";
	app.pEngineName = "zimage";
	app.apiVersion = apiVersion;
	VkInstanceCreateInfo ci = {VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
	ci.pApplicationInfo = &app;
	VkInstance inst;
	VkResult r = create(&ci, NULL, &inst);
	if (r != VK_SUCCESS) return r;
	zvk_inst *in = calloc(1, sizeof *in);
	if (!in) {
		PFN_vkDestroyInstance destroy = (PFN_vkDestroyInstance)zvk_gipa(inst, "vkDestroyInstance");
		if (destroy) destroy(inst, NULL);
		return VK_ERROR_OUT_OF_HOST_MEMORY;
	}
	in->inst = inst;
#define LOAD(n) in->n = (PFN_vk##n)zvk_gipa(inst, "vk" #n); if (!in->n && !*missing) *missing = "vk" #n;
	ZVK_INST_FNS(LOAD)
#undef LOAD
	if (*missing) {
		if (in->DestroyInstance) in->DestroyInstance(inst, NULL);
		free(in);
		return VK_ERROR_INITIALIZATION_FAILED;
	}
	*out = in;
	return VK_SUCCESS;
}

void zvk_destroy_instance(zvk_inst *in) {
	if (!in) return;
	in->DestroyInstance(in->inst, NULL);
	free(in);
}

VkResult zvk_physical_devices(zvk_inst *in, uint64_t *pds, uint32_t *n) {
	VkPhysicalDevice list[ZVK_MAX_DEVICES];
	uint32_t count = ZVK_MAX_DEVICES;
	VkResult r = in->EnumeratePhysicalDevices(in->inst, &count, list);
	if (r != VK_SUCCESS && r != VK_INCOMPLETE) return r;
	for (uint32_t i = 0; i < count; i++) pds[i] = U(list[i]);
	*n = count;
	return VK_SUCCESS;
}

int zvk_describe(zvk_inst *in, uint64_t pdh, zvk_info *out) {
	VkPhysicalDevice pd = H(VkPhysicalDevice, pdh);
	memset(out, 0, sizeof *out);
	VkPhysicalDeviceProperties p;
	in->GetPhysicalDeviceProperties(pd, &p);
	memcpy(out->name, p.deviceName, sizeof out->name);
	out->type = p.deviceType;
	out->vendor = p.vendorID;
	out->device = p.deviceID;
	out->apiVersion = p.apiVersion;
	out->maxStorageBufferRange = p.limits.maxStorageBufferRange;
	out->minStorageAlign = p.limits.minStorageBufferOffsetAlignment;
	out->minTexelAlign = p.limits.minTexelBufferOffsetAlignment;
	out->maxShared = p.limits.maxComputeSharedMemorySize;
	out->maxInvocations = p.limits.maxComputeWorkGroupInvocations;
	out->maxTexelElements = p.limits.maxTexelBufferElements;
	memcpy(out->maxGroups, p.limits.maxComputeWorkGroupCount, sizeof out->maxGroups);
	out->timestampPeriod = p.limits.timestampPeriod;

	VkPhysicalDeviceMemoryProperties mp;
	in->GetPhysicalDeviceMemoryProperties(pd, &mp);
	out->heapCount = mp.memoryHeapCount;
	for (uint32_t i = 0; i < mp.memoryHeapCount; i++) {
		out->heapSize[i] = mp.memoryHeaps[i].size;
		out->heapFlags[i] = mp.memoryHeaps[i].flags;
	}
	out->typeCount = mp.memoryTypeCount;
	for (uint32_t i = 0; i < mp.memoryTypeCount; i++) out->typeFlags[i] = mp.memoryTypes[i].propertyFlags;

	VkQueueFamilyProperties fams[ZVK_MAX_FAMILIES];
	uint32_t nf = ZVK_MAX_FAMILIES;
	in->GetPhysicalDeviceQueueFamilyProperties(pd, &nf, fams);
	out->familyCount = nf;
	for (uint32_t i = 0; i < nf; i++) {
		out->familyFlags[i] = fams[i].queueFlags;
		out->familyTimestampBits[i] = fams[i].timestampValidBits;
	}

	static const VkFormat texel[] = {VK_FORMAT_R32G32B32A32_SFLOAT, VK_FORMAT_R16G16B16A16_SFLOAT,
		VK_FORMAT_R32_SFLOAT, VK_FORMAT_R16_SFLOAT, VK_FORMAT_R32_UINT, VK_FORMAT_R32G32B32A32_UINT};
	out->texelBuffers = 1;
	for (size_t i = 0; i < sizeof texel / sizeof texel[0]; i++) {
		VkFormatProperties fp;
		in->GetPhysicalDeviceFormatProperties(pd, texel[i], &fp);
		if (!(fp.bufferFeatures & VK_FORMAT_FEATURE_UNIFORM_TEXEL_BUFFER_BIT)) out->texelBuffers = 0;
	}

	// Vulkan 1.1/1.2 properties and features, through pNext chains on the stack.
	VkPhysicalDeviceDriverProperties drv = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
	VkPhysicalDeviceMaintenance3Properties m3 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
	VkPhysicalDeviceSubgroupProperties sg = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
	sg.pNext = &m3;
	if (p.apiVersion >= VK_API_VERSION_1_2) m3.pNext = &drv;
	VkPhysicalDeviceProperties2 p2 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
	p2.pNext = &sg;
	in->GetPhysicalDeviceProperties2(pd, &p2);
	out->subgroupSize = sg.subgroupSize;
	out->maxAllocation = m3.maxMemoryAllocationSize;
	memcpy(out->driverName, drv.driverName, sizeof out->driverName);
	memcpy(out->driverInfo, drv.driverInfo, sizeof out->driverInfo);

	VkPhysicalDeviceShaderFloat16Int8Features f16 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES};
	VkPhysicalDevice16BitStorageFeatures s16 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
	if (p.apiVersion >= VK_API_VERSION_1_2) s16.pNext = &f16;
	VkPhysicalDeviceFeatures2 f2 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
	f2.pNext = &s16;
	in->GetPhysicalDeviceFeatures2(pd, &f2);
	out->storage16 = s16.storageBuffer16BitAccess;
	out->float16 = f16.shaderFloat16;
	return 0;
}

VkResult zvk_create_device(zvk_inst *in, uint64_t pd, uint32_t family, int fp16, zvk_dev **out, const char **missing) {
	*out = NULL;
	*missing = NULL;
	float priority = 1;
	VkDeviceQueueCreateInfo qci = {VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
	qci.queueFamilyIndex = family;
	qci.queueCount = 1;
	qci.pQueuePriorities = &priority;
	VkPhysicalDevice16BitStorageFeatures s16 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
	s16.storageBuffer16BitAccess = VK_TRUE;
	VkDeviceCreateInfo ci = {VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
	ci.queueCreateInfoCount = 1;
	ci.pQueueCreateInfos = &qci;
	if (fp16) ci.pNext = &s16;
	VkDevice dev;
	VkResult r = in->CreateDevice(H(VkPhysicalDevice, pd), &ci, NULL, &dev);
	if (r != VK_SUCCESS) return r;
	zvk_dev *d = calloc(1, sizeof *d);
	PFN_vkDestroyDevice destroy = (PFN_vkDestroyDevice)in->GetDeviceProcAddr(dev, "vkDestroyDevice");
	if (!d) {
		if (destroy) destroy(dev, NULL);
		return VK_ERROR_OUT_OF_HOST_MEMORY;
	}
	d->dev = dev;
#define LOAD(n) d->n = (PFN_vk##n)in->GetDeviceProcAddr(dev, "vk" #n); if (!d->n && !*missing) *missing = "vk" #n;
	ZVK_DEV_FNS(LOAD)
#undef LOAD
	if (*missing) {
		if (destroy) destroy(dev, NULL);
		free(d);
		return VK_ERROR_INITIALIZATION_FAILED;
	}
	d->GetDeviceQueue(dev, family, 0, &d->queue);
	*out = d;
	return VK_SUCCESS;
}

void zvk_destroy_device(zvk_dev *d) {
	if (!d) return;
	d->DestroyDevice(d->dev, NULL);
	free(d);
}

VkResult zvk_wait_idle(zvk_dev *d) { return d->DeviceWaitIdle(d->dev); }

VkResult zvk_create_command_pool(zvk_dev *d, uint32_t family, uint64_t *out) {
	VkCommandPoolCreateInfo ci = {VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
	ci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
	ci.queueFamilyIndex = family;
	VkCommandPool p = VK_NULL_HANDLE;
	VkResult r = d->CreateCommandPool(d->dev, &ci, NULL, &p);
	*out = U(p);
	return r;
}

void zvk_destroy_command_pool(zvk_dev *d, uint64_t pool) { d->DestroyCommandPool(d->dev, H(VkCommandPool, pool), NULL); }

VkResult zvk_allocate_command_buffer(zvk_dev *d, uint64_t pool, uint64_t *out) {
	VkCommandBufferAllocateInfo ai = {VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
	ai.commandPool = H(VkCommandPool, pool);
	ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
	ai.commandBufferCount = 1;
	VkCommandBuffer c = NULL;
	VkResult r = d->AllocateCommandBuffers(d->dev, &ai, &c);
	*out = U(c);
	return r;
}

void zvk_free_command_buffer(zvk_dev *d, uint64_t pool, uint64_t cmd) {
	VkCommandBuffer c = H(VkCommandBuffer, cmd);
	d->FreeCommandBuffers(d->dev, H(VkCommandPool, pool), 1, &c);
}

VkResult zvk_begin(zvk_dev *d, uint64_t cmd) {
	VkCommandBufferBeginInfo bi = {VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
	bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
	return d->BeginCommandBuffer(H(VkCommandBuffer, cmd), &bi);
}

VkResult zvk_end(zvk_dev *d, uint64_t cmd) { return d->EndCommandBuffer(H(VkCommandBuffer, cmd)); }

VkResult zvk_submit(zvk_dev *d, uint64_t cmd, uint64_t fence) {
	VkCommandBuffer c = H(VkCommandBuffer, cmd);
	VkSubmitInfo si = {VK_STRUCTURE_TYPE_SUBMIT_INFO};
	si.commandBufferCount = 1;
	si.pCommandBuffers = &c;
	return d->QueueSubmit(d->queue, 1, &si, H(VkFence, fence));
}

VkResult zvk_create_fence(zvk_dev *d, uint64_t *out) {
	VkFenceCreateInfo ci = {VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
	VkFence f = VK_NULL_HANDLE;
	VkResult r = d->CreateFence(d->dev, &ci, NULL, &f);
	*out = U(f);
	return r;
}

void zvk_destroy_fence(zvk_dev *d, uint64_t f) { d->DestroyFence(d->dev, H(VkFence, f), NULL); }

VkResult zvk_wait_fence(zvk_dev *d, uint64_t f, uint64_t timeout) {
	VkFence fence = H(VkFence, f);
	return d->WaitForFences(d->dev, 1, &fence, VK_TRUE, timeout);
}

VkResult zvk_reset_fence(zvk_dev *d, uint64_t f) {
	VkFence fence = H(VkFence, f);
	return d->ResetFences(d->dev, 1, &fence);
}

VkResult zvk_fence_status(zvk_dev *d, uint64_t f) { return d->GetFenceStatus(d->dev, H(VkFence, f)); }

VkResult zvk_create_query_pool(zvk_dev *d, uint32_t n, uint64_t *out) {
	VkQueryPoolCreateInfo ci = {VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO};
	ci.queryType = VK_QUERY_TYPE_TIMESTAMP;
	ci.queryCount = n;
	VkQueryPool q = VK_NULL_HANDLE;
	VkResult r = d->CreateQueryPool(d->dev, &ci, NULL, &q);
	*out = U(q);
	return r;
}

void zvk_destroy_query_pool(zvk_dev *d, uint64_t qp) { d->DestroyQueryPool(d->dev, H(VkQueryPool, qp), NULL); }

VkResult zvk_query_results(zvk_dev *d, uint64_t qp, uint32_t n, uint64_t *out) {
	return d->GetQueryPoolResults(d->dev, H(VkQueryPool, qp), 0, n, (size_t)n * 8, out, 8,
		VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT);
}

void zvk_cmd_reset_queries(zvk_dev *d, uint64_t cmd, uint64_t qp, uint32_t n) {
	d->CmdResetQueryPool(H(VkCommandBuffer, cmd), H(VkQueryPool, qp), 0, n);
}

void zvk_cmd_timestamp(zvk_dev *d, uint64_t cmd, uint64_t qp, uint32_t i) {
	d->CmdWriteTimestamp(H(VkCommandBuffer, cmd), VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, H(VkQueryPool, qp), i);
}

VkResult zvk_create_buffer(zvk_dev *d, uint64_t size, uint32_t usage, uint64_t *out) {
	VkBufferCreateInfo ci = {VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
	ci.size = size;
	ci.usage = usage;
	ci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
	VkBuffer b = VK_NULL_HANDLE;
	VkResult r = d->CreateBuffer(d->dev, &ci, NULL, &b);
	*out = U(b);
	return r;
}

void zvk_destroy_buffer(zvk_dev *d, uint64_t buf) { d->DestroyBuffer(d->dev, H(VkBuffer, buf), NULL); }

void zvk_buffer_requirements(zvk_dev *d, uint64_t buf, uint64_t *size, uint32_t *typeBits) {
	VkMemoryRequirements req;
	d->GetBufferMemoryRequirements(d->dev, H(VkBuffer, buf), &req);
	*size = req.size;
	*typeBits = req.memoryTypeBits;
}

VkResult zvk_allocate_memory(zvk_dev *d, uint64_t size, uint32_t typeIndex, uint64_t *out) {
	VkMemoryAllocateInfo ai = {VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
	ai.allocationSize = size;
	ai.memoryTypeIndex = typeIndex;
	VkDeviceMemory m = VK_NULL_HANDLE;
	VkResult r = d->AllocateMemory(d->dev, &ai, NULL, &m);
	*out = U(m);
	return r;
}

void zvk_free_memory(zvk_dev *d, uint64_t mem) { d->FreeMemory(d->dev, H(VkDeviceMemory, mem), NULL); }

VkResult zvk_bind_buffer_memory(zvk_dev *d, uint64_t buf, uint64_t mem) {
	return d->BindBufferMemory(d->dev, H(VkBuffer, buf), H(VkDeviceMemory, mem), 0);
}

VkResult zvk_map_memory(zvk_dev *d, uint64_t mem, void **out) {
	*out = NULL;
	return d->MapMemory(d->dev, H(VkDeviceMemory, mem), 0, VK_WHOLE_SIZE, 0, out);
}

void zvk_unmap_memory(zvk_dev *d, uint64_t mem) { d->UnmapMemory(d->dev, H(VkDeviceMemory, mem)); }

VkResult zvk_create_buffer_view(zvk_dev *d, uint64_t buf, uint32_t format, uint64_t off, uint64_t range, uint64_t *out) {
	VkBufferViewCreateInfo ci = {VK_STRUCTURE_TYPE_BUFFER_VIEW_CREATE_INFO};
	ci.buffer = H(VkBuffer, buf);
	ci.format = (VkFormat)format;
	ci.offset = off;
	ci.range = range;
	VkBufferView v = VK_NULL_HANDLE;
	VkResult r = d->CreateBufferView(d->dev, &ci, NULL, &v);
	*out = U(v);
	return r;
}

void zvk_destroy_buffer_view(zvk_dev *d, uint64_t view) { d->DestroyBufferView(d->dev, H(VkBufferView, view), NULL); }

VkResult zvk_create_shader_module(zvk_dev *d, const uint32_t *code, size_t bytes, uint64_t *out) {
	VkShaderModuleCreateInfo ci = {VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
	ci.codeSize = bytes;
	ci.pCode = code;
	VkShaderModule m = VK_NULL_HANDLE;
	VkResult r = d->CreateShaderModule(d->dev, &ci, NULL, &m);
	*out = U(m);
	return r;
}

void zvk_destroy_shader_module(zvk_dev *d, uint64_t m) { d->DestroyShaderModule(d->dev, H(VkShaderModule, m), NULL); }

static VkDescriptorType zvk_binding_type(uint32_t texels, uint32_t i) {
	return (texels >> i) & 1 ? VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER : VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
}

VkResult zvk_create_set_layout(zvk_dev *d, uint32_t n, uint32_t texels, uint64_t *out) {
	*out = 0;
	if (n > ZVK_MAX_BINDINGS) return VK_ERROR_INITIALIZATION_FAILED;
	VkDescriptorSetLayoutBinding b[ZVK_MAX_BINDINGS];
	memset(b, 0, sizeof b);
	for (uint32_t i = 0; i < n; i++) {
		b[i].binding = i;
		b[i].descriptorType = zvk_binding_type(texels, i);
		b[i].descriptorCount = 1;
		b[i].stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
	}
	VkDescriptorSetLayoutCreateInfo ci = {VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
	ci.bindingCount = n;
	ci.pBindings = b;
	VkDescriptorSetLayout l = VK_NULL_HANDLE;
	VkResult r = d->CreateDescriptorSetLayout(d->dev, &ci, NULL, &l);
	*out = U(l);
	return r;
}

void zvk_destroy_set_layout(zvk_dev *d, uint64_t l) { d->DestroyDescriptorSetLayout(d->dev, H(VkDescriptorSetLayout, l), NULL); }

VkResult zvk_create_pipeline_layout(zvk_dev *d, uint64_t setLayout, uint32_t push, uint64_t *out) {
	VkDescriptorSetLayout set = H(VkDescriptorSetLayout, setLayout);
	VkPushConstantRange pr = {VK_SHADER_STAGE_COMPUTE_BIT, 0, push};
	VkPipelineLayoutCreateInfo ci = {VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
	ci.setLayoutCount = 1;
	ci.pSetLayouts = &set;
	if (push > 0) {
		ci.pushConstantRangeCount = 1;
		ci.pPushConstantRanges = &pr;
	}
	VkPipelineLayout l = VK_NULL_HANDLE;
	VkResult r = d->CreatePipelineLayout(d->dev, &ci, NULL, &l);
	*out = U(l);
	return r;
}

void zvk_destroy_pipeline_layout(zvk_dev *d, uint64_t l) { d->DestroyPipelineLayout(d->dev, H(VkPipelineLayout, l), NULL); }

// Specialization constants are ids 0..nspec-1, one uint32 each.
VkResult zvk_create_pipeline(zvk_dev *d, uint64_t module, uint64_t layout, const uint32_t *spec, uint32_t nspec, uint64_t *out) {
	*out = 0;
	if (nspec > 16) return VK_ERROR_INITIALIZATION_FAILED;
	VkSpecializationMapEntry entries[16];
	uint32_t data[16];
	for (uint32_t i = 0; i < nspec; i++) {
		entries[i].constantID = i;
		entries[i].offset = 4 * i;
		entries[i].size = 4;
		data[i] = spec[i];
	}
	VkSpecializationInfo si = {nspec, entries, 4 * (size_t)nspec, data};
	VkComputePipelineCreateInfo ci = {VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
	ci.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
	ci.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
	ci.stage.module = H(VkShaderModule, module);
	ci.stage.pName = "main";
	if (nspec > 0) ci.stage.pSpecializationInfo = &si;
	ci.layout = H(VkPipelineLayout, layout);
	ci.basePipelineIndex = -1;
	VkPipeline p = VK_NULL_HANDLE;
	VkResult r = d->CreateComputePipelines(d->dev, VK_NULL_HANDLE, 1, &ci, NULL, &p);
	*out = U(p);
	return r;
}

void zvk_destroy_pipeline(zvk_dev *d, uint64_t p) { d->DestroyPipeline(d->dev, H(VkPipeline, p), NULL); }

VkResult zvk_create_descriptor_pool(zvk_dev *d, uint32_t maxSets, uint32_t perType, uint64_t *out) {
	VkDescriptorPoolSize sizes[2] = {
		{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, perType},
		{VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER, perType},
	};
	VkDescriptorPoolCreateInfo ci = {VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
	ci.maxSets = maxSets;
	ci.poolSizeCount = 2;
	ci.pPoolSizes = sizes;
	VkDescriptorPool p = VK_NULL_HANDLE;
	VkResult r = d->CreateDescriptorPool(d->dev, &ci, NULL, &p);
	*out = U(p);
	return r;
}

void zvk_destroy_descriptor_pool(zvk_dev *d, uint64_t p) { d->DestroyDescriptorPool(d->dev, H(VkDescriptorPool, p), NULL); }

VkResult zvk_reset_descriptor_pool(zvk_dev *d, uint64_t p) { return d->ResetDescriptorPool(d->dev, H(VkDescriptorPool, p), 0); }

VkResult zvk_allocate_set(zvk_dev *d, uint64_t pool, uint64_t layout, uint64_t *out) {
	VkDescriptorSetLayout l = H(VkDescriptorSetLayout, layout);
	VkDescriptorSetAllocateInfo ai = {VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
	ai.descriptorPool = H(VkDescriptorPool, pool);
	ai.descriptorSetCount = 1;
	ai.pSetLayouts = &l;
	VkDescriptorSet s = VK_NULL_HANDLE;
	VkResult r = d->AllocateDescriptorSets(d->dev, &ai, &s);
	*out = U(s);
	return r;
}

// zvk_write_set points binding i of set at bufs[i] (offs[i], ranges[i]), or
// at the texel view views[i] where bit i of texels is set.
void zvk_write_set(zvk_dev *d, uint64_t set, uint32_t n, uint32_t texels, const uint64_t *bufs,
	const uint64_t *offs, const uint64_t *ranges, const uint64_t *views) {
	if (n > ZVK_MAX_BINDINGS) n = ZVK_MAX_BINDINGS;
	VkWriteDescriptorSet w[ZVK_MAX_BINDINGS];
	VkDescriptorBufferInfo info[ZVK_MAX_BINDINGS];
	VkBufferView v[ZVK_MAX_BINDINGS];
	memset(w, 0, sizeof w);
	for (uint32_t i = 0; i < n; i++) {
		w[i].sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET;
		w[i].dstSet = H(VkDescriptorSet, set);
		w[i].dstBinding = i;
		w[i].descriptorCount = 1;
		w[i].descriptorType = zvk_binding_type(texels, i);
		if ((texels >> i) & 1) {
			v[i] = H(VkBufferView, views[i]);
			w[i].pTexelBufferView = &v[i];
		} else {
			info[i].buffer = H(VkBuffer, bufs[i]);
			info[i].offset = offs[i];
			info[i].range = ranges[i];
			w[i].pBufferInfo = &info[i];
		}
	}
	d->UpdateDescriptorSets(d->dev, n, w, 0, NULL);
}

// zvk_cmd_barrier orders every earlier compute and transfer write before
// every later compute and transfer access.
void zvk_cmd_barrier(zvk_dev *d, uint64_t cmd) {
	VkMemoryBarrier mb = {VK_STRUCTURE_TYPE_MEMORY_BARRIER};
	mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
	mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
		VK_ACCESS_TRANSFER_WRITE_BIT;
	VkPipelineStageFlags stages = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
	d->CmdPipelineBarrier(H(VkCommandBuffer, cmd), stages, stages, 0, 1, &mb, 0, NULL, 0, NULL);
}

void zvk_cmd_bind_pipeline(zvk_dev *d, uint64_t cmd, uint64_t pipe) {
	d->CmdBindPipeline(H(VkCommandBuffer, cmd), VK_PIPELINE_BIND_POINT_COMPUTE, H(VkPipeline, pipe));
}

void zvk_cmd_bind_set(zvk_dev *d, uint64_t cmd, uint64_t layout, uint64_t set) {
	VkDescriptorSet s = H(VkDescriptorSet, set);
	d->CmdBindDescriptorSets(H(VkCommandBuffer, cmd), VK_PIPELINE_BIND_POINT_COMPUTE, H(VkPipelineLayout, layout),
		0, 1, &s, 0, NULL);
}

void zvk_cmd_push(zvk_dev *d, uint64_t cmd, uint64_t layout, uint32_t size, const void *data) {
	d->CmdPushConstants(H(VkCommandBuffer, cmd), H(VkPipelineLayout, layout), VK_SHADER_STAGE_COMPUTE_BIT, 0, size, data);
}

void zvk_cmd_dispatch(zvk_dev *d, uint64_t cmd, uint32_t x, uint32_t y, uint32_t z) {
	d->CmdDispatch(H(VkCommandBuffer, cmd), x, y, z);
}

void zvk_cmd_copy(zvk_dev *d, uint64_t cmd, uint64_t src, uint64_t srcOff, uint64_t dst, uint64_t dstOff, uint64_t size) {
	VkBufferCopy c = {srcOff, dstOff, size};
	d->CmdCopyBuffer(H(VkCommandBuffer, cmd), H(VkBuffer, src), H(VkBuffer, dst), 1, &c);
}

void zvk_cmd_update(zvk_dev *d, uint64_t cmd, uint64_t buf, uint64_t off, uint64_t size, const void *data) {
	d->CmdUpdateBuffer(H(VkCommandBuffer, cmd), H(VkBuffer, buf), off, size, data);
}

// The Go side names these values itself (capi.go, errors.go); fail the
// build if a header ever disagrees.
_Static_assert(VK_SUCCESS == 0 && VK_NOT_READY == 1 && VK_TIMEOUT == 2, "VkResult");
_Static_assert(VK_ERROR_OUT_OF_HOST_MEMORY == -1 && VK_ERROR_OUT_OF_DEVICE_MEMORY == -2 &&
	VK_ERROR_INITIALIZATION_FAILED == -3 && VK_ERROR_DEVICE_LOST == -4 && VK_ERROR_MEMORY_MAP_FAILED == -5 &&
	VK_ERROR_LAYER_NOT_PRESENT == -6 && VK_ERROR_EXTENSION_NOT_PRESENT == -7 && VK_ERROR_FEATURE_NOT_PRESENT == -8 &&
	VK_ERROR_INCOMPATIBLE_DRIVER == -9 && VK_ERROR_TOO_MANY_OBJECTS == -10 && VK_ERROR_FRAGMENTED_POOL == -12 &&
	VK_ERROR_UNKNOWN == -13 && VK_ERROR_OUT_OF_POOL_MEMORY == -1000069000, "VkResult errors");
_Static_assert(VK_BUFFER_USAGE_TRANSFER_SRC_BIT == 0x1 && VK_BUFFER_USAGE_TRANSFER_DST_BIT == 0x2 &&
	VK_BUFFER_USAGE_UNIFORM_TEXEL_BUFFER_BIT == 0x4 && VK_BUFFER_USAGE_STORAGE_BUFFER_BIT == 0x20, "buffer usage");
_Static_assert(VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT == 0x1 && VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT == 0x2 &&
	VK_MEMORY_PROPERTY_HOST_COHERENT_BIT == 0x4 && VK_MEMORY_PROPERTY_HOST_CACHED_BIT == 0x8 &&
	VK_MEMORY_HEAP_DEVICE_LOCAL_BIT == 0x1 && VK_QUEUE_COMPUTE_BIT == 0x2, "memory and queue flags");
_Static_assert(VK_FORMAT_R16_SFLOAT == 76 && VK_FORMAT_R32_SFLOAT == 100 && VK_FORMAT_R16G16B16A16_SFLOAT == 97 &&
	VK_FORMAT_R32G32B32A32_SFLOAT == 109 && VK_FORMAT_R32_UINT == 98 && VK_FORMAT_R32G32B32A32_UINT == 107, "formats");
_Static_assert(VK_API_VERSION_1_2 == ((1u << 22) | (2u << 12)), "api version");
_Static_assert(VK_PHYSICAL_DEVICE_TYPE_OTHER == 0 && VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU == 1 &&
	VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU == 2 && VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU == 3 &&
	VK_PHYSICAL_DEVICE_TYPE_CPU == 4, "device types");
