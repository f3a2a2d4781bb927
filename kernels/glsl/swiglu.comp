#version 450
#include "common.glsl"
// dst = silu(gate) * up elementwise (the feed-forward of Qwen3 and
// Z-Image); dst may alias gate or up.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform SwiGLUParams {
	uint n;
} p;
// With VEC4 each invocation handles 4 elements and n counts vec4s.
#if VEC4
#define VT vec4
#else
#define VT float
#endif
layout(std430, binding = 0) readonly buffer G { VT g[]; };
layout(std430, binding = 1) readonly buffer U { VT u[]; };
layout(std430, binding = 2) writeonly buffer Y { VT y[]; };

void main() {
	uint i = flat_id();
	if (i < p.n) {
		VT v = g[i];
		y[i] = v / (1.0 + exp(-v)) * u[i];
	}
}
