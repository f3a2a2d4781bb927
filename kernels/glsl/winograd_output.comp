#version 450
#include "common.glsl"
#include "winograd.glsl"
// y = A^T M A + bias: the 4x4 outputs of tile t for four output channels
// (one vec4 of M's rows per position a), stored where inside dst.
layout(local_size_x_id = 0) in;
layout(std430, binding = 0) readonly buffer M { vec4 m[]; };
layout(std430, binding = 1) readonly buffer Bias { float bias[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };

void main() {
	uint i = flat_id();
	if (i >= p.tn * p.op4) {
		return;
	}
	uint o4 = i % p.op4;
	uint tl = i / p.op4;
	uint t = p.t0 + tl;
	uint tx = t % p.tw;
	uint r = t / p.tw;
	uint ty = r % p.th;
	uint n = r / p.th;
	uint stride = p.tn * p.op4; // between positions a
	// s = A^T M (4x6), then Y = s A (4x4).
	vec4 s[4][6];
	for (uint ax = 0u; ax < 6u; ax++) {
		vec4 mc[6];
		for (uint ay = 0u; ay < 6u; ay++) {
			mc[ay] = m[(ay * 6u + ax) * stride + i];
		}
		vec4 rr[4];
		WINO_AT(mc[0], mc[1], mc[2], mc[3], mc[4], mc[5], rr)
		for (uint k = 0u; k < 4u; k++) {
			s[k][ax] = rr[k];
		}
	}
	vec4 b = vec4(0.0);
	if (p.has_bias != 0u) {
		for (uint q = 0u; q < 4u; q++) {
			b[q] = bias[min(o4 * 4u + q, p.o - 1u)];
		}
	}
	uint oy0 = ty * 4u;
	uint ox0 = tx * 4u;
	for (uint ky = 0u; ky < 4u; ky++) {
		vec4 rr[4];
		WINO_AT(s[ky][0], s[ky][1], s[ky][2], s[ky][3], s[ky][4], s[ky][5], rr)
		uint oy = oy0 + ky;
		for (uint q = 0u; q < 4u; q++) {
			uint o = o4 * 4u + q;
			if (oy >= p.oh || o >= p.o) {
				continue;
			}
			uint base = ((n * p.o_stride + o) * p.oh + oy) * p.ow + ox0;
			for (uint kx = 0u; kx < 4u; kx++) {
				if (ox0 + kx < p.ow) {
					y[base + kx] = rr[kx][q] + b[q];
				}
			}
		}
	}
}
