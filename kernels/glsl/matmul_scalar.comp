#version 450
#include "common.glsl"
#include "matmul.glsl"
// Any-shape matmul: each invocation computes a 4x4 block with bounds-checked
// scalar loads. Used when K (or N for a plain B) is not a multiple of 4.
layout(local_size_x_id = 0) in;
layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer B { W_T b[]; };
layout(std430, binding = 2) readonly buffer Bias { float bias[]; };
layout(std430, binding = 3) writeonly buffer C { float c[]; };

void main() {
	uint tiles_n = (p.n + 3u) / 4u;
	uint tiles_m = (p.m + 3u) / 4u;
	uint t = flat_id();
	if (t >= tiles_n * tiles_m) {
		return;
	}
	uint z = gl_WorkGroupID.z;
	uint m0 = (t / tiles_n) * 4u;
	uint n0 = (t % tiles_n) * 4u;
	uint abase[4], bbase[4];
	for (uint i = 0u; i < 4u; i++) {
		abase[i] = z * p.stride_a + min(m0 + i, p.m - 1u) * p.k;
		uint nn = min(n0 + i, p.n - 1u);
		bbase[i] = z * p.stride_b + (p.trans_b != 0u ? nn * p.k : nn);
	}
	uint bstep = p.trans_b != 0u ? 1u : p.n;
	float acc[4][4];
	for (uint i = 0u; i < 4u; i++) {
		for (uint j = 0u; j < 4u; j++) {
			acc[i][j] = 0.0;
		}
	}
	for (uint kk = 0u; kk < p.k; kk++) {
		float av[4], bv[4];
		for (uint i = 0u; i < 4u; i++) {
			av[i] = a[abase[i] + kk];
			bv[i] = float(b[bbase[i] + kk * bstep]);
		}
		for (uint i = 0u; i < 4u; i++) {
			for (uint j = 0u; j < 4u; j++) {
				acc[i][j] += av[i] * bv[j];
			}
		}
	}
	for (uint i = 0u; i < 4u; i++) {
		uint m = m0 + i;
		if (m >= p.m) {
			break;
		}
		for (uint j = 0u; j < 4u; j++) {
			uint n = n0 + j;
			if (n < p.n) {
				float r = p.alpha * acc[i][j];
				if (p.has_bias != 0u) {
					r += bias[n];
				}
				c[z * p.stride_c + m * p.n + n] = r;
			}
		}
	}
}
