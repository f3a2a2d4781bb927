#version 450
#include "common.glsl"
// RMSNorm with one invocation per row and no barriers (slow on llvmpipe),
// for many short rows: the per-head q/k norms of Qwen3 and Z-Image (d = 128)
// and the token norms (d = 2560, 3840). Needs d % 4 == 0; see rms_norm.comp.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform RMSNormParams {
	uint rows;
	uint d;
	float eps;
	uint has_gamma;
} p;
layout(std430, binding = 0) readonly buffer X { vec4 x[]; };
layout(std430, binding = 1) readonly buffer G { vec4 gamma[]; };
layout(std430, binding = 2) writeonly buffer Y { vec4 y[]; };

void main() {
	uint row = flat_id();
	if (row >= p.rows) {
		return;
	}
	uint d4 = p.d / 4u;
	uint base = row * d4;
	vec4 s = vec4(0.0);
	for (uint i = 0u; i < d4; i++) {
		vec4 v = x[base + i];
		s += v * v;
	}
	float r = inversesqrt((s.x + s.y + s.z + s.w) / float(p.d) + p.eps);
	for (uint i = 0u; i < d4; i++) {
		vec4 g = p.has_gamma != 0u ? gamma[i] : vec4(1.0);
		y[base + i] = x[base + i] * r * g;
	}
}
