#version 450
#include "common.glsl"
// dst[i0,i1,i2,i3] = x[i0*s0 + i1*s1 + i2*s2 + i3*s3]: dst dims are
// [d0, d1, d2, d3] (fewer dims are padded with leading 1s) and s* are x's
// strides reordered into dst's dim order.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform PermuteParams {
	uint n;
	uint d1;
	uint d2;
	uint d3;
	uint s0;
	uint s1;
	uint s2;
	uint s3;
} p;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Y { float y[]; };

void main() {
	uint i = flat_id();
	if (i >= p.n) {
		return;
	}
	uint i3 = i % p.d3;
	uint r = i / p.d3;
	uint i2 = r % p.d2;
	r /= p.d2;
	uint i1 = r % p.d1;
	uint i0 = r / p.d1;
	y[i] = x[i0 * p.s0 + i1 * p.s1 + i2 * p.s2 + i3 * p.s3];
}
