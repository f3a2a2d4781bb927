#version 450
#include "common.glsl"
// Concatenation on axis 1: a [N, Ca, ...] ++ b [N, Cb, ...]. sa = Ca*inner and
// sb = Cb*inner are the per-batch element counts of a and b.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform ConcatParams {
	uint n;
	uint sa;
	uint sb;
} p;
// With VEC4 every count (n, sa, sb) is in vec4s: used when sa and sb are
// multiples of 4.
#if VEC4
#define VT vec4
#else
#define VT float
#endif
layout(std430, binding = 0) readonly buffer A { VT a[]; };
layout(std430, binding = 1) readonly buffer B { VT b[]; };
layout(std430, binding = 2) writeonly buffer Y { VT y[]; };

void main() {
	uint i = flat_id();
	if (i >= p.n) {
		return;
	}
	uint row = p.sa + p.sb;
	uint o = i / row;
	uint r = i - o * row;
	y[i] = r < p.sa ? a[o * p.sa + r] : b[o * p.sb + r - p.sa];
}
