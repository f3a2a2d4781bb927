#version 450
#include "common.glsl"
// Nearest-neighbour 2x: x [N, C, H, W] -> dst [N, C, 2H, 2W].
layout(local_size_x_id = 0) in;
layout(push_constant) uniform Upsample2xParams {
	uint n; // elements of dst
	uint h;
	uint w;
} p;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Y { float y[]; };

void main() {
	uint i = flat_id();
	if (i >= p.n) {
		return;
	}
	uint w2 = 2u * p.w;
	uint ox = i % w2;
	uint r = i / w2;
	uint oy = r % (2u * p.h);
	uint plane = r / (2u * p.h);
	y[i] = x[(plane * p.h + oy / 2u) * p.w + ox / 2u];
}
