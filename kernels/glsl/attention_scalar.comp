#version 450
#include "common.glsl"
#include "attention.glsl"
// Flash-style attention for any head dim: one query per invocation, scalar
// loads, online softmax key by key. QB is ignored.
#define NEG_BIG -1.0e30
// llvmpipe breaks out of a shader's loops once they have run 65535
// iterations in all (its loop limiter), silently leaving the outputs
// unwritten: the per-key loops over the head go in chunks of DC, which the
// driver unrolls (it unrolls loops of up to 32 iterations), so a key costs
// 2·ceil(D/32) + 1 iterations (D=128: 7281 keys at most).
#define DC 32u
layout(local_size_x_id = 0) in;
layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer K { float k[]; };
layout(std430, binding = 2) readonly buffer V { float v[]; };
layout(std430, binding = 3) writeonly buffer O { float o[]; };

void main() {
	uint t = flat_id();
	if (t >= p.lq * p.heads) {
		return;
	}
	uint b = gl_WorkGroupID.z;
	uint h = t / p.lq;
	uint qi = t - h * p.lq;
	uint row = p.heads * D;
	uint kvrow = p.kv_heads * D;
	float sc = p.scale * 1.4426950408889634;
	float qr[D], acc[D];
	uint qrow = (b * p.lq + qi) * row + h * D;
	for (uint d = 0u; d < D; d++) {
		qr[d] = q[qrow + d] * sc;
		acc[d] = 0.0;
	}
	float m = NEG_BIG, l = 0.0;
	uint kend = p.causal != 0u ? min(p.kv_len, p.q_off + qi + 1u) : p.kv_len;
	uint kvbase = b * p.lk * kvrow + (h / (p.heads / p.kv_heads)) * D;
	for (uint j = 0u; j < kend; j++) {
		uint krow = kvbase + j * kvrow;
		float s = 0.0;
		for (uint d0 = 0u; d0 < D; d0 += DC) {
			for (uint x = 0u; x < DC; x++) {
				uint d = d0 + x;
				if (d < D) {
					s += qr[d] * k[krow + d];
				}
			}
		}
		float mn = max(m, s);
		float corr = exp2(m - mn);
		float e = exp2(s - mn);
		m = mn;
		l = l * corr + e;
		for (uint d0 = 0u; d0 < D; d0 += DC) {
			for (uint x = 0u; x < DC; x++) {
				uint d = d0 + x;
				if (d < D) {
					acc[d] = acc[d] * corr + e * v[krow + d];
				}
			}
		}
	}
	uint orow = (b * p.lq + qi) * row + h * D;
	float inv = l > 0.0 ? 1.0 / l : 0.0;
	for (uint d = 0u; d < D; d++) {
		o[orow + d] = acc[d] * inv;
	}
}
