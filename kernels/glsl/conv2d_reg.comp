#version 450
#extension GL_EXT_samplerless_texture_functions : require
#include "common.glsl"
#include "conv2d.glsl"
// Implicit-GEMM convolution for CPU-like devices: each invocation computes
// TO output channels x TP consecutive output pixels of one row. For each
// input channel and kernel row it loads the SEG input pixels those TP
// outputs touch once and reuses them across the KW taps and TO channels, so
// no im2col matrix is ever built. Edge tiles clamp loads and skip stores.
// x and w are scalar texel buffers (Kernel.ScalarTexels): llvmpipe gathers
// texels branch-free, unlike storage-buffer loads.
#ifndef TO
#define TO 16
#endif
#ifndef TP
#define TP 16
#endif
layout(local_size_x_id = 0) in;
layout(binding = 0) uniform textureBuffer X;
layout(binding = 1) uniform textureBuffer Wt;
layout(std430, binding = 2) readonly buffer Bias { float bias[]; };
layout(std430, binding = 3) writeonly buffer Y { float y[]; };

const uint SEG = (TP - 1u) * STRIDE + KW;

void main() {
	uint tiles_x = (p.ow + TP - 1u) / TP;
	uint tiles_o = (p.o + TO - 1u) / TO;
	uint t = flat_id();
	if (t >= tiles_x * p.oh * tiles_o) {
		return;
	}
	uint n = gl_WorkGroupID.z;
	uint tx = t % tiles_x;
	uint r = t / tiles_x;
	uint oy = r % p.oh;
	uint o0 = (r / p.oh) * TO;
	uint ox0 = tx * TP;
	uint khw = KH * KW;
	int wrow[TO];
	for (uint i = 0u; i < TO; i++) {
		wrow[i] = int(min(o0 + i, p.o - 1u) * p.c * khw);
	}
	// Input columns this tile reads, clamped into the row; valid marks
	// the ones inside the image (the rest are zero padding).
	int ix0 = int(ox0 * STRIDE) - int(PAD);
	int xcol[SEG];
	bool xok[SEG];
	for (uint s = 0u; s < SEG; s++) {
		int ix = ix0 + int(s);
		xok[s] = ix >= 0 && ix < int(p.w);
		xcol[s] = clamp(ix, 0, int(p.w) - 1);
	}
	float acc[TO][TP];
	for (uint i = 0u; i < TO; i++) {
		for (uint j = 0u; j < TP; j++) {
			acc[i][j] = 0.0;
		}
	}
	int iy0 = int(oy * STRIDE) - int(PAD);
	// Rows outside the image read row 0 and are zeroed by rowok.
	int xrowoff[KH];
	bool rowok[KH];
	for (uint ky = 0u; ky < KH; ky++) {
		int iy = iy0 + int(ky);
		rowok[ky] = iy >= 0 && iy < int(p.h);
		xrowoff[ky] = clamp(iy, 0, int(p.h) - 1) * int(p.w);
	}
	for (uint c0 = 0u; c0 < p.c; c0 += CB) {
		// All the input this tile needs from channels c0..c0+CB-1, then
		// each accumulator takes its CB*KH*KW taps in one chain: touching
		// an accumulator once per block keeps spills (llvmpipe has far
		// fewer registers than TO*TP accumulators) to a minimum. Channels
		// past C read channel C-1 with zero weights.
		float seg[CB][KH][SEG];
		int wcol[CB];
		bool chok[CB];
		for (uint cb = 0u; cb < CB; cb++) {
			uint c = min(c0 + cb, p.c - 1u);
			chok[cb] = c0 + cb < p.c;
			wcol[cb] = int(c * khw);
			int xplane = int((n * p.c + c) * p.h * p.w);
			for (uint ky = 0u; ky < KH; ky++) {
				for (uint s = 0u; s < SEG; s++) {
					float v = texelFetch(X, xplane + xrowoff[ky] + xcol[s]).r;
					seg[cb][ky][s] = (xok[s] && rowok[ky]) ? v : 0.0;
				}
			}
		}
		for (uint i = 0u; i < TO; i++) {
			float wv[CB][KH * KW];
			for (uint cb = 0u; cb < CB; cb++) {
				for (int t = 0; t < int(KH * KW); t++) {
					float w = texelFetch(Wt, wrow[i] + wcol[cb] + t).r;
					wv[cb][t] = chok[cb] ? w : 0.0;
				}
			}
			for (uint j = 0u; j < TP; j++) {
				float a = acc[i][j];
				for (uint cb = 0u; cb < CB; cb++) {
					for (uint ky = 0u; ky < KH; ky++) {
						for (uint kx = 0u; kx < KW; kx++) {
							a += wv[cb][ky * KW + kx] * seg[cb][ky][j * STRIDE + kx];
						}
					}
				}
				acc[i][j] = a;
			}
		}
	}
	for (uint i = 0u; i < TO; i++) {
		uint o = o0 + i;
		if (o >= p.o) {
			break;
		}
		float b = p.has_bias != 0u ? bias[o] : 0.0;
		uint ybase = ((n * p.o + o) * p.oh + oy) * p.ow;
		for (uint j = 0u; j < TP; j++) {
			uint ox = ox0 + j;
			if (ox < p.ow) {
				y[ybase + ox] = acc[i][j] + b;
			}
		}
	}
}
