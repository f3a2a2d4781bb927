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
// With VEC4 (used when s % 4 == 0) x and y are read as vec4s; the 4
// elements of one vec4 share a channel.
#if VEC4
#define VT vec4
#define VW 4u
#else
#define VT float
#define VW 1u
#endif
layout(std430, binding = 0) readonly buffer X { VT x[]; };
layout(std430, binding = 1) readonly buffer G { float gamma[]; };
layout(std430, binding = 2) readonly buffer Bt { float beta[]; };
layout(std430, binding = 3) writeonly buffer Y { VT y[]; };

float hsum(float v) { return v; }
float hsum(vec4 v) { return v.x + v.y + v.z + v.w; }

void main() {
	uint gi = flat_group();
	if (gi >= p.count) {
		return;
	}
	uint len = p.cpg * p.s;
	float count = float(len);
	len /= VW;
	uint base = gi * len;
	uint c0 = (gi % p.groups) * p.cpg;
	uint t = gl_LocalInvocationID.x;
	uint wg = WG;
	VT s = VT(0.0);
	for (uint i = t; i < len; i += wg) {
		s += x[base + i];
	}
	float mean = wg_sum(hsum(s)) / count;
	VT v = VT(0.0);
	for (uint i = t; i < len; i += wg) {
		VT c = x[base + i] - mean;
		v += c * c;
	}
	float rstd = inversesqrt(wg_sum(hsum(v)) / count + p.eps);
	for (uint i = t; i < len; i += wg) {
		uint c = c0 + (i * VW) / p.s;
		VT r = (x[base + i] - mean) * (rstd * gamma[c]) + beta[c];
		if (p.silu_ != 0u) {
			r = r / (1.0 + exp(-r));
		}
		y[base + i] = r;
	}
}
