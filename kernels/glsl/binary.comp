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
// With VEC4 each invocation handles 4 consecutive elements and n counts
// vec4s; the backend uses it when d3 % 4 == 0 (so the 4 elements share
// i0..i2) or when both operands are flat. An operand with sa3 == 0 is then
// one broadcast scalar; otherwise its 4 elements are one aligned vec4.
#if VEC4
layout(std430, binding = 0) readonly buffer A { vec4 a[]; };
layout(std430, binding = 1) readonly buffer B { vec4 b[]; };
layout(std430, binding = 2) writeonly buffer Y { vec4 y[]; };
#define VT vec4
#define ELEM(buf, idx, s3) ((s3) == 0u ? vec4(buf[(idx) / 4u][(idx) % 4u]) : buf[(idx) / 4u])
#define FIRST (4u * i)
#else
layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer B { float b[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };
#define VT float
#define ELEM(buf, idx, s3) buf[idx]
#define FIRST i
#endif

void main() {
	uint i = flat_id();
	if (i >= p.n) {
		return;
	}
	VT va, vb;
	if (p.flat_ == 3u) {
		va = a[i];
		vb = b[i];
	} else {
		uint e = FIRST;
		uint i3 = e % p.d3;
		uint r = e / p.d3;
		uint i2 = r % p.d2;
		r /= p.d2;
		uint i1 = r % p.d1;
		uint i0 = r / p.d1;
		if ((p.flat_ & 1u) != 0u) {
			va = a[i];
		} else {
			uint ia = i0 * p.sa0 + i1 * p.sa1 + i2 * p.sa2 + i3 * p.sa3;
			va = ELEM(a, ia, p.sa3);
		}
		if ((p.flat_ & 2u) != 0u) {
			vb = b[i];
		} else {
			uint ib = i0 * p.sb0 + i1 * p.sb1 + i2 * p.sb2 + i3 * p.sb3;
			vb = ELEM(b, ib, p.sb3);
		}
	}
	VT r;
	switch (p.op) {
	case 0: r = va + vb; break;
	case 1: r = va - vb; break;
	default: r = va * vb; break;
	}
	y[i] = r;
}
