// Winograd F(4x4, 3x3) convolution (Lavin & Gray, points 0, ±1, ±2, ∞) for
// 3x3 stride-1 convs, in three kernels around a batched matmul:
//   U[a][o][c] = (G g G^T)[a]        winograd_weights, once per call
//   V[a][t][c] = (B^T d B)[a]        winograd_input, per 6x6 input tile t
//   M[a][t][o] = sum_c V[a][t][c]·U[a][o][c]   matmul_reg, 36 batches
//   y          = A^T M A + bias      winograd_output, 4x4 outputs per tile
// a is one of the 36 positions of the transformed 6x6 tile. Channel counts
// are padded to cp4*4 and op4*4 (zero weights) so that every operand is
// vec4-aligned. Tiles are numbered over [N, th, tw]; one call covers tiles
// t0 .. t0+tn-1 (scratch is chunked over tiles).
layout(push_constant) uniform WinogradParams {
	uint c;
	uint h;
	uint w;
	uint o;
	uint oh;
	uint ow;
	uint cp4;
	uint op4;
	uint th;
	uint tw;
	uint t0;
	uint tn;
	uint pad;
	uint has_bias;
	uint o_stride; // channels of the output tensor; o is this dispatch's share
	uint w_off;    // first weight element of this share (block-quantized weights, bound whole)
} p;

// B^T applied to one column of 6 (four channels at once).
#define WINO_BT(d0, d1, d2, d3, d4, d5, r) \
	r[0] = 4.0 * d0 - 5.0 * d2 + d4; \
	r[1] = -4.0 * (d1 + d2) + d3 + d4; \
	r[2] = 4.0 * (d1 - d2) - d3 + d4; \
	r[3] = 2.0 * (d3 - d1) - d2 + d4; \
	r[4] = 2.0 * (d1 - d3) - d2 + d4; \
	r[5] = 4.0 * d1 - 5.0 * d3 + d5;

// G applied to one column of 3.
#define WINO_G(g0, g1, g2, r) \
	r[0] = 0.25 * g0; \
	r[1] = (-1.0 / 6.0) * (g0 + g1 + g2); \
	r[2] = (-1.0 / 6.0) * (g0 - g1 + g2); \
	r[3] = (1.0 / 24.0) * g0 + (1.0 / 12.0) * g1 + (1.0 / 6.0) * g2; \
	r[4] = (1.0 / 24.0) * g0 - (1.0 / 12.0) * g1 + (1.0 / 6.0) * g2; \
	r[5] = g2;

// A^T applied to one column of 6.
#define WINO_AT(m0, m1, m2, m3, m4, m5, r) \
	r[0] = m0 + (m1 + m2) + (m3 + m4); \
	r[1] = (m1 - m2) + 2.0 * (m3 - m4); \
	r[2] = (m1 + m2) + 4.0 * (m3 + m4); \
	r[3] = (m1 - m2) + 8.0 * (m3 - m4) + m5;
