#version 450
#include "common.glsl"
#include "reduce.glsl"
// GroupNorm on x [N, C, S] (S = product of trailing dims): one workgroup per
// (n, group). A group's cpg channels are contiguous in NCHW, so its cpg*S
// elements form one run. Two passes as in layer_norm; silu != 0 fuses SiLU.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform GroupNormParams {
	uint count; // N * groups
	uint groups;
	uint cpg;   // channels per group
	uint s;     // spatial elements per channel
	float eps;
	uint silu_;
} p;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer G { float gamma[]; };
layout(std430, binding = 2) readonly buffer Bt { float beta[]; };
layout(std430, binding = 3) writeonly buffer Y { float y[]; };

void main() {
	uint gi = flat_group();
	if (gi >= p.count) {
		return;
	}
	uint len = p.cpg * p.s;
	uint base = gi * len;
	uint c0 = (gi % p.groups) * p.cpg;
	uint t = gl_LocalInvocationID.x;
	uint wg = WG;
	float s = 0.0;
	for (uint i = t; i < len; i += wg) {
		s += x[base + i];
	}
	float mean = wg_sum(s) / float(len);
	float v = 0.0;
	for (uint i = t; i < len; i += wg) {
		float c = x[base + i] - mean;
		v += c * c;
	}
	float rstd = inversesqrt(wg_sum(v) / float(len) + p.eps);
	for (uint i = t; i < len; i += wg) {
		uint c = c0 + i / p.s;
		float r = (x[base + i] - mean) * rstd * gamma[c] + beta[c];
		if (p.silu_ != 0u) {
			r = silu(r);
		}
		y[base + i] = r;
	}
}
