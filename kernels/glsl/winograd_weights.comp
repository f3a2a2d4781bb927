#version 450
#extension GL_EXT_samplerless_texture_functions : require
#include "common.glsl"
#include "winograd.glsl"
// U[a][o][c] = (G g G^T)[a] for w [O, C, 3, 3] (W_T storage), four input
// channels per invocation written as one vec4. Rows o >= O and channels
// c >= C are zero (the padding of winograd.glsl). With QTYPE defined the
// weights are block-quantized (quant.glsl, R32UI texels of the whole
// tensor) and this dispatch's channels start at element p.w_off.
layout(local_size_x_id = 0) in;
#ifdef QTYPE
layout(binding = 0) uniform utextureBuffer Wq;
uint qword(uint i) { return texelFetch(Wq, int(i)).r; }
#include "quant.glsl"
#define W_AT(i) dq_elem(p.w_off + uint(i))
#else
layout(binding = 0) uniform textureBuffer Wt; // scalar texels, F32 or F16
#define W_AT(i) texelFetch(Wt, i).r
#endif
layout(std430, binding = 1) writeonly buffer U { vec4 u[]; };

void main() {
	uint i = flat_id();
	uint op = p.op4 * 4u;
	if (i >= op * p.cp4) {
		return;
	}
	uint c4 = i % p.cp4;
	uint o = i / p.cp4;
	vec4 g[3][3];
	for (uint ky = 0u; ky < 3u; ky++) {
		for (uint kx = 0u; kx < 3u; kx++) {
			g[ky][kx] = vec4(0.0);
		}
	}
	for (uint q = 0u; q < 4u; q++) {
		uint c = c4 * 4u + q;
		if (o < p.o && c < p.c) {
			int base = int((o * p.c + c) * 9u);
			for (uint ky = 0u; ky < 3u; ky++) {
				for (uint kx = 0u; kx < 3u; kx++) {
					g[ky][kx][q] = W_AT(base + int(ky * 3u + kx));
				}
			}
		}
	}
	// t = G g (6x3), then U = t G^T (6x6).
	vec4 t[6][3];
	for (uint kx = 0u; kx < 3u; kx++) {
		vec4 r[6];
		WINO_G(g[0][kx], g[1][kx], g[2][kx], r)
		for (uint a = 0u; a < 6u; a++) {
			t[a][kx] = r[a];
		}
	}
	uint stride = op * p.cp4; // between positions a
	for (uint ay = 0u; ay < 6u; ay++) {
		vec4 r[6];
		WINO_G(t[ay][0], t[ay][1], t[ay][2], r)
		for (uint ax = 0u; ax < 6u; ax++) {
			u[(ay * 6u + ax) * stride + i] = r[ax];
		}
	}
}
