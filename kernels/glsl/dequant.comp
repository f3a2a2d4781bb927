#version 450
#include "common.glsl"
// y[i] = element i of a block-quantized tensor x (quant.glsl), for Copy to
// F32 or F16 (DST_T). x is bound as whole 32-bit words.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform DequantParams {
	uint n;
} p;
layout(std430, binding = 0) readonly buffer X { uint xq[]; };
layout(std430, binding = 1) writeonly buffer Y { DST_T y[]; };

uint qword(uint i) { return xq[i]; }
#include "quant.glsl"

void main() {
	uint i = flat_id();
	if (i < p.n) {
		y[i] = DST_T(dq_elem(i));
	}
}
