#version 450
#include "common.glsl"
// LayerNorm with one invocation per row and no barriers, for many short
// rows (transformer tokens): on llvmpipe the workgroup-per-row kernel spends
// most of its time in barriers. Needs d % 4 == 0; d4 = d / 4.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform LayerNormParams {
	uint rows;
	uint d;
	float eps;
} p;
layout(std430, binding = 0) readonly buffer X { vec4 x[]; };
layout(std430, binding = 1) readonly buffer G { vec4 gamma[]; };
layout(std430, binding = 2) readonly buffer Bt { vec4 beta[]; };
layout(std430, binding = 3) writeonly buffer Y { vec4 y[]; };

void main() {
	uint row = flat_id();
	if (row >= p.rows) {
		return;
	}
	uint d4 = p.d / 4u;
	uint base = row * d4;
	vec4 s = vec4(0.0);
	for (uint i = 0u; i < d4; i++) {
		s += x[base + i];
	}
	float mean = (s.x + s.y + s.z + s.w) / float(p.d);
	vec4 v = vec4(0.0);
	for (uint i = 0u; i < d4; i++) {
		vec4 c = x[base + i] - mean;
		v += c * c;
	}
	float rstd = inversesqrt((v.x + v.y + v.z + v.w) / float(p.d) + p.eps);
	for (uint i = 0u; i < d4; i++) {
		y[base + i] = (x[base + i] - mean) * rstd * gamma[i] + beta[i];
	}
}
