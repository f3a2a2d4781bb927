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
layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer B { float b[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };

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
