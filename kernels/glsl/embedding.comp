#version 450
#include "common.glsl"
// dst [len(ids), d] = table[ids[r], :]; the backend checks ids are in range.
// The table binding holds rows [v0, v1) of the table (all of it unless it is
// over the binding limit): only rows of dst whose id falls there are written.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform EmbeddingParams {
	uint n; // elements of dst
	uint d;
	uint v0;
	uint v1;
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
	uint id = uint(ids[r]);
	if (id >= p.v0 && id < p.v1) {
		y[i] = float(table[(id - p.v0) * p.d + c]);
	}
}
