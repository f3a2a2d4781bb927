#version 450
#include "common.glsl"
#include "reduce.glsl"
// LayerNorm over the last dim: one workgroup per row. Two passes (mean, then
// squared deviations) because one-pass E[x^2]-E[x]^2 cancels badly in f32.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform LayerNormParams {
	uint rows;
	uint d;
	float eps;
} p;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer G { float gamma[]; };
layout(std430, binding = 2) readonly buffer Bt { float beta[]; };
layout(std430, binding = 3) writeonly buffer Y { float y[]; };

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
		s += x[base + i];
	}
	float mean = wg_sum(s) / float(p.d);
	float v = 0.0;
	for (uint i = t; i < p.d; i += wg) {
		float c = x[base + i] - mean;
		v += c * c;
	}
	float rstd = inversesqrt(wg_sum(v) / float(p.d) + p.eps);
	for (uint i = t; i < p.d; i += wg) {
		y[base + i] = (x[base + i] - mean) * rstd * gamma[i] + beta[i];
	}
}
