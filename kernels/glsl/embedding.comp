#version 450
#include "common.glsl"
// dst [len(ids), d] = table[ids[r], :]; the backend checks ids are in range.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform EmbeddingParams {
	uint n; // elements of dst
	uint d;
} p;
layout(std430, binding = 0) readonly buffer T { W_T table[]; };
layout(std430, binding = 1) readonly buffer I { int ids[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };

void main() {
	uint i = flat_id();
	if (i >= p.n) {
		return;
	}
	uint r = i / p.d;
	uint c = i - r * p.d;
	y[i] = float(table[uint(ids[r]) * p.d + c]);
}
