#version 450
#include "common.glsl"
// dst = a op b with broadcasting over up to 4 dims. dst's dims are
// [d0, d1, d2, d3] (only d1..d3 are needed); sa*/sb* are a's and b's element
// strides per dst dim, 0 where the operand is broadcast. flat bit 0 (1): a
// (b) has dst's shape, so its index is i. op: 0 add, 1 sub, 2 mul.
// dst may alias a or b.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform BinaryParams {
	uint n;
	uint op;
	uint flat_;
	uint d1;
	uint d2;
	uint d3;
	uint sa0;
	uint sa1;
	uint sa2;
	uint sa3;
	uint sb0;
	uint sb1;
	uint sb2;
	uint sb3;
} p;
layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer B { float b[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };

void main() {
	uint i = flat_id();
	if (i >= p.n) {
		return;
	}
	uint ia = i, ib = i;
	if (p.flat_ != 3u) {
		uint i3 = i % p.d3;
		uint r = i / p.d3;
		uint i2 = r % p.d2;
		r /= p.d2;
		uint i1 = r % p.d1;
		uint i0 = r / p.d1;
		if ((p.flat_ & 1u) == 0u) {
			ia = i0 * p.sa0 + i1 * p.sa1 + i2 * p.sa2 + i3 * p.sa3;
		}
		if ((p.flat_ & 2u) == 0u) {
			ib = i0 * p.sb0 + i1 * p.sb1 + i2 * p.sb2 + i3 * p.sb3;
		}
	}
	float va = a[ia], vb = b[ib];
	float r;
	switch (p.op) {
	case 0: r = va + vb; break;
	case 1: r = va - vb; break;
	default: r = va * vb; break;
	}
	y[i] = r;
}
