#version 450
#include "common.glsl"
#include "matmul.glsl"
// Shared-memory tiled matmul for GPUs: a 16x16 workgroup computes a 64x64
// tile of C, each invocation 4x4 outputs, staging 64x16 slices of A and B in
// shared memory. Loads are bounds-checked, so any shape works. With QTYPE
// defined, B is block-quantized (quant.glsl), stored transposed (p.trans_b
// must be 1), and each element is decoded as it is staged.
#define BM 64
#define BN 64
#define BK 16
layout(local_size_x = 16, local_size_y = 16) in;
layout(std430, binding = 0) readonly buffer A { float a[]; };
#ifdef QTYPE
layout(std430, binding = 1) readonly buffer B { uint bq[]; };
uint qword(uint i) { return bq[i]; }
#include "quant.glsl"
#define B_AT(i) dq_elem(i)
#else
layout(std430, binding = 1) readonly buffer B { W_T b[]; };
#define B_AT(i) float(b[i])
#endif
layout(std430, binding = 2) readonly buffer Bias { float bias[]; };
layout(std430, binding = 3) writeonly buffer C { float c[]; };

shared float as_[BK][BM + 1];
shared float bs_[BK][BN + 1];

void main() {
	uint z = gl_WorkGroupID.z;
	uint m0 = gl_WorkGroupID.y * BM;
	uint n0 = gl_WorkGroupID.x * BN;
	uint tx = gl_LocalInvocationID.x;
	uint ty = gl_LocalInvocationID.y;
	uint tid = ty * 16u + tx;
	uint abase = z * p.stride_a;
	uint bbase = z * p.stride_b;
	float acc[4][4];
	for (uint i = 0u; i < 4u; i++) {
		for (uint j = 0u; j < 4u; j++) {
			acc[i][j] = 0.0;
		}
	}
	for (uint k0 = 0u; k0 < p.k; k0 += BK) {
		// 1024 elements of each tile, 4 per invocation.
		for (uint e = 0u; e < 4u; e++) {
			uint idx = tid + e * 256u;
			// A tile: row r = idx / BK, k = idx % BK (coalesced along k).
			uint r = idx / BK, kk = idx % BK;
			uint gm = m0 + r, gk = k0 + kk;
			as_[kk][r] = (gm < p.m && gk < p.k) ? a[abase + gm * p.k + gk] : 0.0;
			if (p.trans_b != 0u) {
				uint gn = n0 + r;
				bs_[kk][r] = (gn < p.n && gk < p.k) ? B_AT(bbase + gn * p.k + gk) : 0.0;
			} else {
				uint kr = idx / BN, cn = idx % BN;
				uint gk2 = k0 + kr, gn = n0 + cn;
				bs_[kr][cn] = (gn < p.n && gk2 < p.k) ? B_AT(bbase + gk2 * p.n + gn) : 0.0;
			}
		}
		barrier();
		for (uint kk = 0u; kk < BK; kk++) {
			float av[4], bv[4];
			for (uint i = 0u; i < 4u; i++) {
				av[i] = as_[kk][ty + 16u * i];
				bv[i] = bs_[kk][tx + 16u * i];
			}
			for (uint i = 0u; i < 4u; i++) {
				for (uint j = 0u; j < 4u; j++) {
					acc[i][j] += av[i] * bv[j];
				}
			}
		}
		barrier();
	}
	for (uint i = 0u; i < 4u; i++) {
		uint m = m0 + ty + 16u * i;
		for (uint j = 0u; j < 4u; j++) {
			uint n = n0 + tx + 16u * j;
			if (m < p.m && n < p.n) {
				float r = p.alpha * acc[i][j];
				if (p.has_bias != 0u) {
					r += bias[n];
				}
				c[z * p.stride_c + m * p.n + n] = r;
			}
		}
	}
}
