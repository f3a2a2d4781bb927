#version 450
#include "common.glsl"
#include "reduce.glsl"
// Softmax over the last dim: one workgroup per row of d elements.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform SoftmaxParams {
	uint rows;
	uint d;
} p;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Y { float y[]; };

void main() {
	uint row = flat_group();
	if (row >= p.rows) {
		return;
	}
	uint base = row * p.d;
	uint t = gl_LocalInvocationID.x;
	uint wg = WG;
	float m = -1.0 / 0.0;
	for (uint i = t; i < p.d; i += wg) {
		m = max(m, x[base + i]);
	}
	m = wg_max(m);
	float s = 0.0;
	for (uint i = t; i < p.d; i += wg) {
		s += exp(x[base + i] - m);
	}
	s = wg_sum(s);
	float inv = 1.0 / s;
	for (uint i = t; i < p.d; i += wg) {
		y[base + i] = exp(x[base + i] - m) * inv;
	}
}
