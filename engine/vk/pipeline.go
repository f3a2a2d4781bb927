package vk

import (
	"encoding/binary"
	"fmt"

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
	pipe   vkPipeline
	layout vkPipeLayout
	set    vkSetLayout
}

// pipelines caches shader modules, layouts and pipelines for one device.
type pipelines struct {
	vk         *api
	modules    map[*kernels.Kernel]vkModule
	setLayouts map[[2]int]vkSetLayout  // by bindings, texel mask
	layouts    map[[3]int]vkPipeLayout // by bindings, texel mask, push bytes
	cache      map[pipeKey]*pipeline
}

func newPipelines(a *api) *pipelines {
	return &pipelines{
		vk:         a,
		modules:    map[*kernels.Kernel]vkModule{},
		setLayouts: map[[2]int]vkSetLayout{},
		layouts:    map[[3]int]vkPipeLayout{},
		cache:      map[pipeKey]*pipeline{},
	}
}

func (ps *pipelines) module(k *kernels.Kernel) (vkModule, error) {
	if m, ok := ps.modules[k]; ok {
		return m, nil
	}
	if len(k.SPIRV)%4 != 0 || len(k.SPIRV) == 0 {
		return 0, fmt.Errorf("vk: kernel %s has %d bytes of SPIR-V, not whole words", k.Name, len(k.SPIRV))
	}
	words := make([]uint32, len(k.SPIRV)/4)
	for i := range words {
		words[i] = binary.LittleEndian.Uint32(k.SPIRV[4*i:])
	}
	m, err := ps.vk.createShaderModule(words)
	if err != nil {
		return 0, fmt.Errorf("kernel %s: %w", k.Name, err)
	}
	ps.modules[k] = m
	return m, nil
}

func (ps *pipelines) setLayout(n int, texels uint32) (vkSetLayout, error) {
	if n > maxBindings {
		return 0, fmt.Errorf("vk: %d bindings, at most %d", n, maxBindings)
	}
	key := [2]int{n, int(texels)}
	if l, ok := ps.setLayouts[key]; ok {
		return l, nil
	}
	l, err := ps.vk.createSetLayout(n, texels)
	if err != nil {
		return 0, err
	}
	ps.setLayouts[key] = l
	return l, nil
}

func (ps *pipelines) layout(bindings int, texels uint32, push int) (vkPipeLayout, vkSetLayout, error) {
	set, err := ps.setLayout(bindings, texels)
	if err != nil {
		return 0, 0, err
	}
	key := [3]int{bindings, int(texels), push}
	if l, ok := ps.layouts[key]; ok {
		return l, set, nil
	}
	l, err := ps.vk.createPipelineLayout(set, push)
	if err != nil {
		return 0, 0, err
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
	pipe, err := ps.vk.createPipeline(k.Name, mod, layout, key.spec[:key.n])
	if err != nil {
		return nil, err
	}
	p := &pipeline{k: k, pipe: pipe, layout: layout, set: set}
	ps.cache[key] = p
	return p, nil
}

func (ps *pipelines) destroy() {
	for _, p := range ps.cache {
		ps.vk.destroyPipeline(p.pipe)
	}
	for _, l := range ps.layouts {
		ps.vk.destroyPipelineLayout(l)
	}
	for _, l := range ps.setLayouts {
		ps.vk.destroySetLayout(l)
	}
	for _, m := range ps.modules {
		ps.vk.destroyShaderModule(m)
	}
	clear(ps.cache)
	clear(ps.layouts)
	clear(ps.setLayouts)
	clear(ps.modules)
}
