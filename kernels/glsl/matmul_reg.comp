#version 450
#extension GL_EXT_samplerless_texture_functions : require
#include "common.glsl"
#include "matmul.glsl"
// Register-blocked matmul for CPU-like devices (lavapipe): each invocation
// computes TM x TN outputs from whole-texel (4-float) reads, with no shared
// memory (on llvmpipe barriers cost far more than the loads they save). A
// and B are texel buffers (Kernel.Texels): llvmpipe gathers texels without
// the per-lane bounds-checked loop it emits for storage-buffer loads, which
// doubles this kernel's rate. Needs K % 4 == 0, and N % 4 == 0 when B is not
// transposed. Edge tiles clamp their reads to valid rows and skip the stores.
// TRANS_B selects the B layout at compile time (p.trans_b must agree): each
// variant is one layout's code only, which halves llvmpipe's LLVM compile
// time (seconds per variant and texel-format combination).
#ifndef TM
#define TM 16
#endif
#ifndef TN
#define TN 16
#endif
#define TN4 (TN / 4)
layout(local_size_x_id = 0) in;
layout(binding = 0) uniform textureBuffer A;
layout(binding = 1) uniform textureBuffer B;
layout(std430, binding = 2) readonly buffer Bias { float bias[]; };
layout(std430, binding = 3) writeonly buffer C { float c[]; };

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
	int arow[TM];
	for (uint i = 0u; i < TM; i++) {
		arow[i] = int((z * p.stride_a) / 4u + min(m0 + i, p.m - 1u) * k4);
	}
	vec4 acc[TM][TN4];
	for (uint i = 0u; i < TM; i++) {
		for (uint j = 0u; j < TN4; j++) {
			acc[i][j] = vec4(0.0);
		}
	}
#ifdef TRANS_B
	{
		int brow[TN];
		for (uint j = 0u; j < TN; j++) {
			brow[j] = int((z * p.stride_b) / 4u + min(n0 + j, p.n - 1u) * k4);
		}
		for (int kk = 0; kk < int(k4); kk++) {
			vec4 bv[TN];
			for (uint j = 0u; j < TN; j++) {
				bv[j] = texelFetch(B, brow[j] + kk);
			}
			for (uint i = 0u; i < TM; i++) {
				vec4 av = texelFetch(A, arow[i] + kk);
				for (uint j = 0u; j < TN4; j++) {
					acc[i][j] += vec4(dot(av, bv[4u * j]), dot(av, bv[4u * j + 1u]), dot(av, bv[4u * j + 2u]), dot(av, bv[4u * j + 3u]));
				}
			}
		}
	}
#else
	{
		uint n4 = p.n / 4u;
		int bcol[TN4];
		for (uint j = 0u; j < TN4; j++) {
			bcol[j] = int((z * p.stride_b) / 4u + min(n0 / 4u + j, n4 - 1u));
		}
		for (int kk = 0; kk < int(k4); kk++) {
			vec4 av[TM];
			for (uint i = 0u; i < TM; i++) {
				av[i] = texelFetch(A, arow[i] + kk);
			}
			for (int q = 0; q < 4; q++) {
				int off = (4 * kk + q) * int(n4);
				for (uint j = 0u; j < TN4; j++) {
					vec4 bv = texelFetch(B, bcol[j] + off);
					for (uint i = 0u; i < TM; i++) {
						acc[i][j] += av[i][q] * bv;
					}
				}
			}
		}
	}
#endif
	// Bias loaded once per column, not per output: every load and store
	// site costs llvmpipe a per-lane loop of code.
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
					// One store site: each costs llvmpipe a per-lane loop.
					c[p.trans_c != 0u ? z * p.stride_c + n * p.m + m : cbase + n] = r;
				}
			}
		}
	}
}
