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
#if VEC4
// Each invocation writes 4 outputs (2 inputs, each twice); n counts vec4s
// and W must be even.
layout(std430, binding = 1) writeonly buffer Y { vec4 y[]; };
#else
layout(std430, binding = 1) writeonly buffer Y { float y[]; };
#endif

void main() {
	uint i = flat_id();
	if (i >= p.n) {
		return;
	}
	uint w2 = 2u * p.w;
#if VEC4
	uint e = 4u * i;
#else
	uint e = i;
#endif
	uint ox = e % w2;
	uint r = e / w2;
	uint oy = r % (2u * p.h);
	uint plane = r / (2u * p.h);
	uint src = (plane * p.h + oy / 2u) * p.w + ox / 2u;
#if VEC4
	float a = x[src], b = x[src + 1u];
	y[i] = vec4(a, a, b, b);
#else
	y[i] = x[src];
#endif
}
