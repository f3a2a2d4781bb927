package vk

// The binding has Vulkan 1.1 headers and no vkGetPhysicalDeviceProperties2 /
// Features2 entry points, so subgroup size, 16-bit storage support and
// maxMemoryAllocationSize are read through this small shim, which looks the
// functions up with vkGetInstanceProcAddr from the same libvulkan the binding
// loaded. It also builds the device-creation feature chain in C memory, as
// pNext chains must not point into Go memory.

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <vulkan/vulkan.h>

typedef struct {
	uint32_t subgroupSize;
	uint32_t storageBuffer16;
	uint32_t shaderFloat16;
	uint64_t maxAllocation;
	char driverName[VK_MAX_DRIVER_NAME_SIZE];
	char driverInfo[VK_MAX_DRIVER_INFO_SIZE];
} zi_props;

static PFN_vkGetInstanceProcAddr zi_gipa = NULL;

static int zi_load(void) {
	if (zi_gipa) return 0;
	void *h = dlopen("libvulkan.so", RTLD_NOW | RTLD_LOCAL);
	if (!h) h = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!h) return -1;
	zi_gipa = (PFN_vkGetInstanceProcAddr)dlsym(h, "vkGetInstanceProcAddr");
	return zi_gipa ? 0 : -1;
}

static int zi_query(void *inst, void *pd, uint32_t apiVersion, zi_props *out) {
	memset(out, 0, sizeof *out);
	if (zi_load() != 0) return -1;
	PFN_vkGetPhysicalDeviceProperties2 gp2 =
		(PFN_vkGetPhysicalDeviceProperties2)zi_gipa((VkInstance)inst, "vkGetPhysicalDeviceProperties2");
	PFN_vkGetPhysicalDeviceFeatures2 gf2 =
		(PFN_vkGetPhysicalDeviceFeatures2)zi_gipa((VkInstance)inst, "vkGetPhysicalDeviceFeatures2");
	if (!gp2 || !gf2) return -2;

	VkPhysicalDeviceDriverProperties drv = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
	VkPhysicalDeviceMaintenance3Properties m3 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
	VkPhysicalDeviceSubgroupProperties sg = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
	sg.pNext = &m3;
	if (apiVersion >= VK_API_VERSION_1_2) m3.pNext = &drv;
	VkPhysicalDeviceProperties2 p2 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
	p2.pNext = &sg;
	gp2((VkPhysicalDevice)pd, &p2);
	out->subgroupSize = sg.subgroupSize;
	out->maxAllocation = m3.maxMemoryAllocationSize;
	memcpy(out->driverName, drv.driverName, sizeof out->driverName);
	memcpy(out->driverInfo, drv.driverInfo, sizeof out->driverInfo);

	VkPhysicalDeviceShaderFloat16Int8Features f16 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES};
	VkPhysicalDevice16BitStorageFeatures s16 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
	if (apiVersion >= VK_API_VERSION_1_2) s16.pNext = &f16;
	VkPhysicalDeviceFeatures2 f2 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
	f2.pNext = &s16;
	gf2((VkPhysicalDevice)pd, &f2);
	out->storageBuffer16 = s16.storageBuffer16BitAccess;
	out->shaderFloat16 = f16.shaderFloat16;
	return 0;
}

// zi_feature_chain returns a malloc'd pNext chain enabling 16-bit storage
// buffer access; free it with free() after vkCreateDevice.
static void *zi_feature_chain(void) {
	VkPhysicalDevice16BitStorageFeatures *s16 = calloc(1, sizeof *s16);
	if (!s16) return NULL;
	s16->sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES;
	s16->storageBuffer16BitAccess = VK_TRUE;
	return s16;
}

static void *zi_malloc_copy(const void *src, size_t n) {
	void *p = malloc(n);
	if (p) memcpy(p, src, n);
	return p;
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/vulkan-go/vulkan"
)

// extraProps are the Vulkan 1.1/1.2 properties the binding cannot query.
type extraProps struct {
	SubgroupSize  int
	Storage16     bool
	ShaderFloat16 bool
	MaxAllocation int64
	DriverName    string
	DriverInfo    string
}

func queryExtra(inst vulkan.Instance, pd vulkan.PhysicalDevice, apiVersion uint32) (extraProps, error) {
	var p C.zi_props
	if r := C.zi_query(unsafe.Pointer(inst), unsafe.Pointer(pd), C.uint32_t(apiVersion), &p); r != 0 {
		return extraProps{}, fmt.Errorf("vk: cannot query device properties2 (shim error %d)", int(r))
	}
	return extraProps{
		SubgroupSize:  int(p.subgroupSize),
		Storage16:     p.storageBuffer16 != 0,
		ShaderFloat16: p.shaderFloat16 != 0,
		MaxAllocation: int64(p.maxAllocation),
		DriverName:    C.GoString(&p.driverName[0]),
		DriverInfo:    C.GoString(&p.driverInfo[0]),
	}, nil
}

// featureChain returns a C-allocated pNext chain enabling 16-bit storage, and
// the function that frees it.
func featureChain() (unsafe.Pointer, func()) {
	p := C.zi_feature_chain()
	return p, func() { C.free(p) }
}

// cBytes copies b into C memory (for pointers the binding stores in C structs).
func cBytes(b []byte) (unsafe.Pointer, func()) {
	if len(b) == 0 {
		return nil, func() {}
	}
	p := C.zi_malloc_copy(unsafe.Pointer(&b[0]), C.size_t(len(b)))
	return p, func() { C.free(p) }
}
