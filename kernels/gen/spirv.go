package main

import (
	"encoding/binary"
	"fmt"
)

// spirvInfo is what a backend needs to know about a module's interface.
type spirvInfo struct {
	Bindings int    // highest binding + 1
	Texels   uint32 // bit i set: binding i is a uniform texel buffer
	PushSize int    // bytes of the push-constant block (0 if none)
	SpecIDs  int    // highest SpecId + 1
}

// Opcodes and enums of the SPIR-V specification used below.
const (
	opTypeInt         = 21
	opTypeFloat       = 22
	opTypeVector      = 23
	opTypeImage       = 25
	opTypeStruct      = 30
	opTypePointer     = 32
	opVariable        = 59
	opDecorate        = 71
	opMemberDecorate  = 72
	decSpecID         = 1
	decBinding        = 33
	decOffset         = 35
	scUniformConstant = 0
	scPushConstant    = 9
	scStorageBuffer   = 12
	dimBuffer         = 5
	spirvMagic        = 0x07230203
	spirvHeaderLength = 5
)

// parseSPIRV reads the binding count, push-constant size and specialization
// constant count from a SPIR-V module. Push-constant members must be 32-bit
// scalars or vectors of them, as every zimage kernel's are.
func parseSPIRV(code []byte) (spirvInfo, error) {
	var info spirvInfo
	if len(code)%4 != 0 || len(code) < 4*spirvHeaderLength {
		return info, fmt.Errorf("gen: SPIR-V of %d bytes is not a whole number of words", len(code))
	}
	words := make([]uint32, len(code)/4)
	for i := range words {
		words[i] = binary.LittleEndian.Uint32(code[4*i:])
	}
	if words[0] != spirvMagic {
		return info, fmt.Errorf("gen: bad SPIR-V magic %#x", words[0])
	}
	typeSize := map[uint32]int{}           // scalar/vector type id -> bytes
	structMembers := map[uint32][]uint32{} // struct id -> member type ids
	memberOffset := map[[2]uint32]int{}
	pointee := map[uint32]uint32{} // pointer type id -> pointee
	ptrClass := map[uint32]uint32{}
	binding := map[uint32]int{}      // variable id -> binding
	bufferImage := map[uint32]bool{} // sampled buffer image type ids
	varClass := map[uint32]uint32{}
	varType := map[uint32]uint32{}
	for i := spirvHeaderLength; i < len(words); {
		n := int(words[i] >> 16)
		op := words[i] & 0xffff
		if n == 0 || i+n > len(words) {
			return info, fmt.Errorf("gen: truncated SPIR-V instruction at word %d", i)
		}
		w := words[i : i+n]
		switch op {
		case opTypeInt, opTypeFloat:
			typeSize[w[1]] = int(w[2]) / 8
		case opTypeVector:
			typeSize[w[1]] = typeSize[w[2]] * int(w[3])
		case opTypeStruct:
			structMembers[w[1]] = append([]uint32(nil), w[2:]...)
		case opTypeImage:
			// OpTypeImage id sampledType dim depth arrayed ms sampled format
			if w[3] == dimBuffer && w[7] == 1 {
				bufferImage[w[1]] = true
			}
		case opTypePointer:
			ptrClass[w[1]] = w[2]
			pointee[w[1]] = w[3]
		case opVariable:
			varType[w[2]] = w[1]
			varClass[w[2]] = w[3]
		case opDecorate:
			switch w[2] {
			case decBinding:
				binding[w[1]] = int(w[3])
			case decSpecID:
				info.SpecIDs = max(info.SpecIDs, int(w[3])+1)
			}
		case opMemberDecorate:
			if w[3] == decOffset {
				memberOffset[[2]uint32{w[1], w[2]}] = int(w[4])
			}
		}
		i += n
	}
	for v, b := range binding {
		switch {
		case varClass[v] == scStorageBuffer:
			info.Bindings = max(info.Bindings, b+1)
		case varClass[v] == scUniformConstant && bufferImage[pointee[varType[v]]]:
			info.Bindings = max(info.Bindings, b+1)
			info.Texels |= 1 << b
		default:
			return info, fmt.Errorf("gen: binding %d is neither a storage buffer nor a uniform texel buffer", b)
		}
	}
	for v, class := range varClass {
		if class != scPushConstant {
			continue
		}
		st := pointee[varType[v]]
		members, ok := structMembers[st]
		if !ok {
			return info, fmt.Errorf("gen: push-constant variable %d is not a struct", v)
		}
		for m, t := range members {
			sz, ok := typeSize[t]
			if !ok {
				return info, fmt.Errorf("gen: push-constant member %d has an unsupported type", m)
			}
			info.PushSize = max(info.PushSize, memberOffset[[2]uint32{st, uint32(m)}]+sz)
		}
	}
	return info, nil
}
