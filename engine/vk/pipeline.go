package vk

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"github.com/vulkan-go/vulkan"
	"github.com/zimage/zimage/kernels"
)

// maxSpec is the most specialization constants a kernel takes (ids 0..).
const maxSpec = 6

// pipeKey identifies a pipeline: the kernel (by pointer, never by name) and
// its specialization constants (local size first).
type pipeKey struct {
	k    *kernels.Kernel
	spec [maxSpec]uint32
	n    int
}

type pipeline struct {
	k      *kernels.Kernel
	pipe   vulkan.Pipeline
	layout vulkan.PipelineLayout
	set    vulkan.DescriptorSetLayout
}

// pipelines caches shader modules, layouts and pipelines for one device.
type pipelines struct {
	dev        vulkan.Device
	modules    map[*kernels.Kernel]vulkan.ShaderModule
	setLayouts map[[2]int]vulkan.DescriptorSetLayout // by bindings, texel mask
	layouts    map[[3]int]vulkan.PipelineLayout      // by bindings, texel mask, push bytes
	cache      map[pipeKey]*pipeline
}

func newPipelines(dev vulkan.Device) *pipelines {
	return &pipelines{
		dev:        dev,
		modules:    map[*kernels.Kernel]vulkan.ShaderModule{},
		setLayouts: map[[2]int]vulkan.DescriptorSetLayout{},
		layouts:    map[[3]int]vulkan.PipelineLayout{},
		cache:      map[pipeKey]*pipeline{},
	}
}

func (ps *pipelines) module(k *kernels.Kernel) (vulkan.ShaderModule, error) {
	if m, ok := ps.modules[k]; ok {
		return m, nil
	}
	if len(k.SPIRV)%4 != 0 || len(k.SPIRV) == 0 {
		return nil, fmt.Errorf("vk: kernel %s has %d bytes of SPIR-V, not whole words", k.Name, len(k.SPIRV))
	}
	words := make([]uint32, len(k.SPIRV)/4)
	for i := range words {
		words[i] = binary.LittleEndian.Uint32(k.SPIRV[4*i:])
	}
	ci := vulkan.ShaderModuleCreateInfo{
		SType:    vulkan.StructureTypeShaderModuleCreateInfo,
		CodeSize: uint(len(k.SPIRV)),
		PCode:    words,
	}
	var m vulkan.ShaderModule
	if err := check("vkCreateShaderModule "+k.Name, vulkan.CreateShaderModule(ps.dev, &ci, nil, &m)); err != nil {
		return nil, err
	}
	ps.modules[k] = m
	return m, nil
}

// descriptorType is binding i's type in a kernel with the given texel mask.
func descriptorType(texels uint32, i int) vulkan.DescriptorType {
	if texels&(1<<i) != 0 {
		return vulkan.DescriptorTypeUniformTexelBuffer
	}
	return vulkan.DescriptorTypeStorageBuffer
}

func (ps *pipelines) setLayout(n int, texels uint32) (vulkan.DescriptorSetLayout, error) {
	key := [2]int{n, int(texels)}
	if l, ok := ps.setLayouts[key]; ok {
		return l, nil
	}
	binds := make([]vulkan.DescriptorSetLayoutBinding, n)
	for i := range binds {
		binds[i] = vulkan.DescriptorSetLayoutBinding{
			Binding:         uint32(i),
			DescriptorType:  descriptorType(texels, i),
			DescriptorCount: 1,
			StageFlags:      vulkan.ShaderStageFlags(vulkan.ShaderStageComputeBit),
		}
	}
	ci := vulkan.DescriptorSetLayoutCreateInfo{
		SType:        vulkan.StructureTypeDescriptorSetLayoutCreateInfo,
		BindingCount: uint32(n),
		PBindings:    binds,
	}
	var l vulkan.DescriptorSetLayout
	if err := check("vkCreateDescriptorSetLayout", vulkan.CreateDescriptorSetLayout(ps.dev, &ci, nil, &l)); err != nil {
		return nil, err
	}
	ps.setLayouts[key] = l
	return l, nil
}

func (ps *pipelines) layout(bindings int, texels uint32, push int) (vulkan.PipelineLayout, vulkan.DescriptorSetLayout, error) {
	set, err := ps.setLayout(bindings, texels)
	if err != nil {
		return nil, nil, err
	}
	key := [3]int{bindings, int(texels), push}
	if l, ok := ps.layouts[key]; ok {
		return l, set, nil
	}
	ci := vulkan.PipelineLayoutCreateInfo{
		SType:          vulkan.StructureTypePipelineLayoutCreateInfo,
		SetLayoutCount: 1,
		PSetLayouts:    []vulkan.DescriptorSetLayout{set},
	}
	if push > 0 {
		ci.PushConstantRangeCount = 1
		ci.PPushConstantRanges = []vulkan.PushConstantRange{{
			StageFlags: vulkan.ShaderStageFlags(vulkan.ShaderStageComputeBit),
			Size:       uint32(push),
		}}
	}
	var l vulkan.PipelineLayout
	if err := check("vkCreatePipelineLayout", vulkan.CreatePipelineLayout(ps.dev, &ci, nil, &l)); err != nil {
		return nil, nil, err
	}
	ps.layouts[key] = l
	return l, set, nil
}

// get returns the pipeline for k specialised with spec (ids 0, 1, ...).
func (ps *pipelines) get(k *kernels.Kernel, spec []uint32) (*pipeline, error) {
	if len(spec) > maxSpec {
		return nil, fmt.Errorf("vk: kernel %s: %d specialization constants, at most %d", k.Name, len(spec), maxSpec)
	}
	key := pipeKey{k: k, n: len(spec)}
	copy(key.spec[:], spec)
	if p, ok := ps.cache[key]; ok {
		return p, nil
	}
	mod, err := ps.module(k)
	if err != nil {
		return nil, err
	}
	layout, set, err := ps.layout(k.Bindings, k.Texels, k.PushSize)
	if err != nil {
		return nil, err
	}
	stage := vulkan.PipelineShaderStageCreateInfo{
		SType:  vulkan.StructureTypePipelineShaderStageCreateInfo,
		Stage:  vulkan.ShaderStageComputeBit,
		Module: mod,
		PName:  "main\x00",
	}
	// Specialization data lives in C memory: the binding copies the struct
	// into C memory and would otherwise leave a Go pointer inside it.
	var free func()
	if len(spec) > 0 {
		entries := make([]vulkan.SpecializationMapEntry, len(spec))
		for i := range spec {
			entries[i] = vulkan.SpecializationMapEntry{ConstantID: uint32(i), Offset: uint32(4 * i), Size: 4}
		}
		data := unsafe.Slice((*byte)(unsafe.Pointer(&key.spec[0])), 4*len(spec))
		var cdata unsafe.Pointer
		cdata, free = cBytes(data)
		stage.PSpecializationInfo = []vulkan.SpecializationInfo{{
			MapEntryCount: uint32(len(spec)),
			PMapEntries:   entries,
			DataSize:      uint(4 * len(spec)),
			PData:         cdata,
		}}
	}
	ci := []vulkan.ComputePipelineCreateInfo{{
		SType:  vulkan.StructureTypeComputePipelineCreateInfo,
		Stage:  stage,
		Layout: layout,
	}}
	pipes := make([]vulkan.Pipeline, 1)
	r := withoutGC(func() vulkan.Result { return vulkan.CreateComputePipelines(ps.dev, nil, 1, ci, nil, pipes) })
	if free != nil {
		free()
	}
	if err := check("vkCreateComputePipelines "+k.Name, r); err != nil {
		return nil, err
	}
	p := &pipeline{k: k, pipe: pipes[0], layout: layout, set: set}
	ps.cache[key] = p
	return p, nil
}

func (ps *pipelines) destroy() {
	for _, p := range ps.cache {
		vulkan.DestroyPipeline(ps.dev, p.pipe, nil)
	}
	for _, l := range ps.layouts {
		vulkan.DestroyPipelineLayout(ps.dev, l, nil)
	}
	for _, l := range ps.setLayouts {
		vulkan.DestroyDescriptorSetLayout(ps.dev, l, nil)
	}
	for _, m := range ps.modules {
		vulkan.DestroyShaderModule(ps.dev, m, nil)
	}
	clear(ps.cache)
	clear(ps.layouts)
	clear(ps.setLayouts)
	clear(ps.modules)
}
