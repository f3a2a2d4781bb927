#version 450
#include "common.glsl"
#include "conv2d.glsl"
// Implicit-GEMM convolution for GPUs: GEMM rows are output channels, columns
// are output pixels of one image, and the reduction runs over C*KH*KW. A
// 16x16 workgroup computes a 64x64 tile, 4x4 per invocation, staging the
// weight slice and the gathered input slice in shared memory. With QTYPE
// defined the weights are block-quantized (quant.glsl), each element
// decoded as it is staged.
#define BM 64
#define BN 64
#define BK 16
layout(local_size_x = 16, local_size_y = 16) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
#ifdef QTYPE
layout(std430, binding = 1) readonly buffer Wt { uint wq[]; };
uint qword(uint i) { return wq[i]; }
#include "quant.glsl"
#define W_AT(i) dq_elem(i)
#else
layout(std430, binding = 1) readonly buffer Wt { W_T wt[]; };
#define W_AT(i) float(wt[i])
#endif
layout(std430, binding = 2) readonly buffer Bias { float bias[]; };
layout(std430, binding = 3) writeonly buffer Y { float y[]; };

shared float ws_[BK][BM + 1];
shared float xs_[BK][BN + 1];

void main() {
	uint n = gl_WorkGroupID.z;
	uint o0 = gl_WorkGroupID.y * BM;
	uint p0 = gl_WorkGroupID.x * BN;
	uint tx = gl_LocalInvocationID.x;
	uint ty = gl_LocalInvocationID.y;
	uint tid = ty * 16u + tx;
	uint khw = KH * KW;
	uint kdim = p.c * khw;
	uint npix = p.oh * p.ow;
	float acc[4][4];
	for (uint i = 0u; i < 4u; i++) {
		for (uint j = 0u; j < 4u; j++) {
			acc[i][j] = 0.0;
		}
	}
	for (uint k0 = 0u; k0 < kdim; k0 += BK) {
		for (uint e = 0u; e < 4u; e++) {
			uint idx = tid + e * 256u;
			uint r = idx / BK, kk = idx % BK;
			uint go = o0 + r, gk = k0 + kk;
			ws_[kk][r] = (go < p.o && gk < kdim) ? W_AT(go * kdim + gk) : 0.0;
			uint kr = idx / BN, cp = idx % BN;
			uint gk2 = k0 + kr, gp = p0 + cp;
			float v = 0.0;
			if (gk2 < kdim && gp < npix) {
				uint c = gk2 / khw;
				uint rem = gk2 - c * khw;
				uint ky = rem / KW, kx = rem - (rem / KW) * KW;
				uint oy = gp / p.ow, ox = gp - (gp / p.ow) * p.ow;
				int iy = int(oy * STRIDE + ky) - int(PAD);
				int ix = int(ox * STRIDE + kx) - int(PAD);
				if (iy >= 0 && iy < int(p.h) && ix >= 0 && ix < int(p.w)) {
					v = x[((n * p.c + c) * p.h + uint(iy)) * p.w + uint(ix)];
				}
			}
			xs_[kr][cp] = v;
		}
		barrier();
		for (uint kk = 0u; kk < BK; kk++) {
			float wv[4], xv[4];
			for (uint i = 0u; i < 4u; i++) {
				wv[i] = ws_[kk][ty + 16u * i];
				xv[i] = xs_[kk][tx + 16u * i];
			}
			for (uint i = 0u; i < 4u; i++) {
				for (uint j = 0u; j < 4u; j++) {
					acc[i][j] += wv[i] * xv[j];
				}
			}
		}
		barrier();
	}
	for (uint i = 0u; i < 4u; i++) {
		uint o = o0 + ty + 16u * i;
		if (o >= p.o) {
			continue;
		}
		float b = p.has_bias != 0u ? bias[o] : 0.0;
		for (uint j = 0u; j < 4u; j++) {
			uint gp = p0 + tx + 16u * j;
			if (gp < npix) {
				y[(n * p.o + o) * npix + gp] = acc[i][j] + b;
			}
		}
	}
}
