#version 450
#extension GL_EXT_samplerless_texture_functions : require
#include "common.glsl"
#include "winograd.glsl"
// V[a][t][c] = (B^T d B)[a] for the 6x6 input tile d of tile t (rows from
// ty*4-pad, columns from tx*4-pad; zero outside the image), four channels
// per invocation written as one vec4; channels c >= C are zero.
layout(local_size_x_id = 0) in;
layout(binding = 0) uniform textureBuffer X; // scalar texels
layout(std430, binding = 1) writeonly buffer V { vec4 v[]; };

void main() {
	uint i = flat_id();
	if (i >= p.tn * p.cp4) {
		return;
	}
	uint c4 = i % p.cp4;
	uint tl = i / p.cp4;
	uint t = p.t0 + tl;
	uint tx = t % p.tw;
	uint r = t / p.tw;
	uint ty = r % p.th;
	uint n = r / p.th;
	int iy0 = int(ty * 4u) - int(p.pad);
	int ix0 = int(tx * 4u) - int(p.pad);
	// Clamped addresses and in-image flags, as in conv2d_reg.comp.
	int rowoff[6];
	bool rowok[6];
	int col[6];
	bool colok[6];
	for (uint k = 0u; k < 6u; k++) {
		int iy = iy0 + int(k);
		rowok[k] = iy >= 0 && iy < int(p.h);
		rowoff[k] = clamp(iy, 0, int(p.h) - 1) * int(p.w);
		int ix = ix0 + int(k);
		colok[k] = ix >= 0 && ix < int(p.w);
		col[k] = clamp(ix, 0, int(p.w) - 1);
	}
	vec4 d[6][6];
	for (uint q = 0u; q < 4u; q++) {
		uint c = c4 * 4u + q;
		bool chok = c < p.c;
		int plane = int((n * p.c + min(c, p.c - 1u)) * p.h * p.w);
		for (uint ky = 0u; ky < 6u; ky++) {
			for (uint kx = 0u; kx < 6u; kx++) {
				float xv = texelFetch(X, plane + rowoff[ky] + col[kx]).r;
				d[ky][kx][q] = (chok && rowok[ky] && colok[kx]) ? xv : 0.0;
			}
		}
	}
	// s = B^T d (columns), then V = s B (rows).
	vec4 s[6][6];
	for (uint kx = 0u; kx < 6u; kx++) {
		vec4 rr[6];
		WINO_BT(d[0][kx], d[1][kx], d[2][kx], d[3][kx], d[4][kx], d[5][kx], rr)
		for (uint a = 0u; a < 6u; a++) {
			s[a][kx] = rr[a];
		}
	}
	uint stride = p.tn * p.cp4; // between positions a
	for (uint ay = 0u; ay < 6u; ay++) {
		vec4 rr[6];
		WINO_BT(s[ay][0], s[ay][1], s[ay][2], s[ay][3], s[ay][4], s[ay][5], rr)
		for (uint ax = 0u; ax < 6u; ax++) {
			v[(ay * 6u + ax) * stride + i] = rr[ax];
		}
	}
}
