#version 450
#extension GL_EXT_samplerless_texture_functions : require
#include "common.glsl"
#include "conv2d.glsl"
// im2col for convolutions run as a matmul (engine/vk/ops_conv.go): x [N, C,
// H, W] -> col [N, OH*OW, C*KH*KW], one row per output pixel in the order
// of the weights' [O, C, KH, KW] rows, zeros where the window leaves the
// image. One invocation writes the KH*KW taps of one pixel and channel. x
// is a scalar texel buffer (Kernel.ScalarTexels).
layout(local_size_x_id = 0) in;
layout(binding = 0) uniform textureBuffer X;
layout(std430, binding = 1) writeonly buffer Col { float col[]; };

void main() {
	uint i = flat_id();
	uint pix = p.oh * p.ow;
	if (i >= pix * p.c) {
		return;
	}
	uint n = gl_WorkGroupID.z;
	uint c = i % p.c;
	uint px = i / p.c;
	uint oy = px / p.ow;
	uint ox = px - oy * p.ow;
	int iy0 = int(oy * STRIDE) - int(PAD);
	int ix0 = int(ox * STRIDE) - int(PAD);
	int plane = int((n * p.c + c) * p.h * p.w);
	uint khw = KH * KW;
	uint dst = (n * pix + px) * p.c * khw + c * khw;
	for (uint ky = 0u; ky < KH; ky++) {
		int iy = iy0 + int(ky);
		bool rowok = iy >= 0 && iy < int(p.h);
		int row = plane + clamp(iy, 0, int(p.h) - 1) * int(p.w);
		for (uint kx = 0u; kx < KW; kx++) {
			int ix = ix0 + int(kx);
			float v = texelFetch(X, row + clamp(ix, 0, int(p.w) - 1)).r;
			col[dst + ky * KW + kx] = (rowok && ix >= 0 && ix < int(p.w)) ? v : 0.0;
		}
	}
}
