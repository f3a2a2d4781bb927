#version 450
#include "common.glsl"
#include "reduce.glsl"
// RMSNorm over the last dim: y = x / sqrt(mean(x²) + eps) * gamma, one
// workgroup per row (any d). has_gamma == 0: no scale (gamma is a dummy).
layout(local_size_x_id = 0) in;
layout(push_constant) uniform RMSNormParams {
	uint rows;
	uint d;
	float eps;
	uint has_gamma;
} p;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer G { float gamma[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };

void main() {
	uint row = flat_group();
	if (row >= p.rows) {
		return;
	}
	uint base = row * p.d;
	uint t = gl_LocalInvocationID.x;
	uint wg = WG;
	float s = 0.0;
	for (uint i = t; i < p.d; i += wg) {
		float v = x[base + i];
		s += v * v;
	}
	float r = inversesqrt(wg_sum(s) / float(p.d) + p.eps);
	for (uint i = t; i < p.d; i += wg) {
		float g = p.has_gamma != 0u ? gamma[i] : 1.0;
		y[base + i] = x[base + i] * r * g;
	}
}
