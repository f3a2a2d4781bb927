#version 450
#extension GL_EXT_samplerless_texture_functions : require
#include "common.glsl"
#include "matmul.glsl"
// matmul_reg (register-blocked, for CPU-like devices) with a block-quantized
// B stored transposed, [N, K] rows of whole blocks (Linear weights, and
// convolutions run as matmuls): each invocation computes TM x TN outputs.
// Per step of 32 elements of each of its TN rows it fetches the packed
// words (R32UI texels, or RGBA32UI for Q4_K/Q5_K: about a quarter to half
// the bytes of an F16 row, in fewer fetches) and unpacks them into 8 vec4
// that all TM rows of A then reuse, so the unpacking is shared across the
// register tile; Q4_K/Q5_K decode their sub-block scales once per 64. p.trans_b must be
// 1; stride_b counts elements (whole blocks).
#ifndef TM
#define TM 16
#endif
#ifndef TN
#define TN 16
#endif
#define TN4 (TN / 4)
layout(local_size_x_id = 0) in;
layout(binding = 0) uniform textureBuffer A;
layout(binding = 1) uniform utextureBuffer Qb;
layout(std430, binding = 2) readonly buffer Bias { float bias[]; };
layout(std430, binding = 3) writeonly buffer C { float c[]; };

#ifdef QUAD
// RGBA32UI texels (Q4_K, Q5_K): 16 bytes per fetch.
uvec4 qquad(uint i) { return texelFetch(Qb, int(i)); }
uint qword(uint i) { return qquad(i >> 2u)[i & 3u]; }
#else
uint qword(uint i) { return texelFetch(Qb, int(i)).r; }
#endif
#include "quant.glsl"
#ifndef QHS
#define QHS QNS
#endif

void main() {
	uint tiles_n = (p.n + TN - 1u) / TN;
	uint tiles_m = (p.m + TM - 1u) / TM;
	uint t = flat_id();
	if (t >= tiles_n * tiles_m) {
		return;
	}
	uint z = gl_WorkGroupID.z;
	uint m0 = (t / tiles_n) * TM;
	uint n0 = (t % tiles_n) * TN;
	uint k4 = p.k / 4u;
	uint nb = p.k / QBS;
	int arow[TM];
	for (uint i = 0u; i < TM; i++) {
		arow[i] = int((z * p.stride_a) / 4u + min(m0 + i, p.m - 1u) * k4);
	}
	uint brow[TN]; // byte offset of each row's first block
	for (uint j = 0u; j < TN; j++) {
		brow[j] = ((z * p.stride_b) / QBS + min(n0 + j, p.n - 1u) * nb) * QBB;
	}
	vec4 acc[TM][TN4];
	for (uint i = 0u; i < TM; i++) {
		for (uint j = 0u; j < TN4; j++) {
			acc[i][j] = vec4(0.0);
		}
	}
	// One flat loop over the steps of 32 elements (block b = st / QNS, step
	// s = st % QNS): nested loops cost llvmpipe more lane-mask handling.
	vec4 hd[TN][QNH];
	for (uint st = 0u; st < nb * QNS; st++) {
		uint b = st / QNS, s = st % QNS;
		int kb = int(b * (QBS / 4u));
		if (s % QHS == 0u) {
			for (uint j = 0u; j < TN; j++) {
				q_head(brow[j] + b * QBB, s, hd[j]);
			}
		}
		vec4 wv[TN][8];
		for (uint j = 0u; j < TN; j++) {
			q_step(brow[j] + b * QBB, s, hd[j], wv[j]);
		}
		for (uint i = 0u; i < TM; i++) {
			vec4 av[8];
			for (uint g = 0u; g < 8u; g++) {
				av[g] = texelFetch(A, arow[i] + kb + int(q_koff(s, g) / 4u));
			}
			for (uint j = 0u; j < TN4; j++) {
				vec4 r = vec4(0.0);
				for (uint g = 0u; g < 8u; g++) {
					r += vec4(dot(av[g], wv[4u * j][g]), dot(av[g], wv[4u * j + 1u][g]), dot(av[g], wv[4u * j + 2u][g]), dot(av[g], wv[4u * j + 3u][g]));
				}
				acc[i][j] += r;
			}
		}
	}
	float bn[TN];
	for (uint j = 0u; j < TN; j++) {
		bn[j] = p.has_bias != 0u ? bias[min(n0 + j, p.n - 1u)] : 0.0;
	}
	for (uint i = 0u; i < TM; i++) {
		uint m = m0 + i;
		if (m >= p.m) {
			break;
		}
		uint cbase = z * p.stride_c + m * p.n;
		for (uint j = 0u; j < TN4; j++) {
			for (uint q = 0u; q < 4u; q++) {
				uint n = n0 + 4u * j + q;
				if (n < p.n) {
					float r = p.alpha * acc[i][j][q] + bn[4u * j + q];
					c[p.trans_c != 0u ? z * p.stride_c + n * p.m + m : cbase + n] = r;
				}
			}
		}
	}
}
