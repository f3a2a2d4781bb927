package zimage

import (
	"slices"

	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/model"
)

// ModelInfo describes a loaded model, for UIs and APIs.
type ModelInfo struct {
	Name     string `json:"name"` // folder or file name without extension
	Path     string `json:"path"`
	Format   string `json:"format"` // "diffusers", "single-file" or "gguf"
	Arch     string `json:"arch"`   // as Pipeline.Arch
	Turbo    bool   `json:"turbo"`
	Hash     string `json:"hash"` // A1111's short model hash
	BaseSize int    `json:"base_size"`
	Params   int64  `json:"params"`
	// DTypes are the stored weight types ("F16", "F32", ...).
	DTypes            []string `json:"dtypes"`
	FileBytes         int64    `json:"file_bytes"`
	DeviceWeightBytes int64    `json:"device_weight_bytes"`
}

// DeviceInfo describes the device a pipeline runs on.
type DeviceInfo struct {
	Name   string `json:"name"`
	Type   string `json:"type"` // "discrete-gpu", "cpu", ... ("" off Vulkan)
	Driver string `json:"driver"`
	// MemoryBytes is the largest device-local heap (0 when unknown).
	MemoryBytes int64  `json:"memory_bytes"`
	Budget      int64  `json:"budget_bytes"` // 0 = no limit
	Offload     string `json:"offload"`
	// MaxBindingBytes is the largest tensor one kernel can bind (the VAE
	// tiles above it).
	MaxBindingBytes int64 `json:"max_binding_bytes"`
}

func describeWeights(ck *model.Checkpoint, info modelInfo) ModelInfo {
	in := ck.Info()
	mi := ModelInfo{
		Name: info.Name, Path: ck.Path, Format: "diffusers", Arch: info.Arch, Turbo: info.Turbo, Hash: info.Hash,
		BaseSize: info.BaseSize, Params: in.Params, FileBytes: in.FileBytes, DeviceWeightBytes: in.DeviceWeightBytes,
	}
	switch ck.Format {
	case model.FormatSingleFile:
		mi.Format = "single-file"
	case model.FormatGGUF:
		mi.Format = "gguf"
	}
	for _, c := range in.Components {
		for dt := range c.DTypes {
			if !slices.Contains(mi.DTypes, string(dt)) {
				mi.DTypes = append(mi.DTypes, string(dt))
			}
		}
	}
	slices.Sort(mi.DTypes)
	return mi
}

// Model describes the loaded model.
func (p *Pipeline) Model() ModelInfo { return p.model }

// Device describes the device. It reads only what was fixed when the
// device opened, so it is safe while a Generate runs (per-run memory peaks
// are in Result).
func (p *Pipeline) Device() DeviceInfo {
	d := DeviceInfo{Budget: p.opts.Budget, Offload: p.opts.Offload.String()}
	b := p.backend
	if b == nil {
		return d
	}
	d.Name = b.Name()
	if dev, ok := b.(*vk.Device); ok {
		vi := dev.Info()
		d.Name, d.Type, d.Driver, d.MaxBindingBytes = vi.Name, vi.Type, vi.Driver, vi.MaxStorageBufferRange
		for _, h := range vi.Heaps {
			if h.DeviceLocal {
				d.MemoryBytes = max(d.MemoryBytes, h.Size)
			}
		}
	}
	return d
}
