#version 450
#include "common.glsl"
// x [rows, 2*half] -> dst [rows, half] = x[:, :half] * gelu(x[:, half:]).
layout(local_size_x_id = 0) in;
layout(push_constant) uniform GEGLUParams {
	uint n;    // elements of dst
	uint half_; // half the last dim of x
} p;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Y { float y[]; };

void main() {
	uint i = flat_id();
	if (i >= p.n) {
		return;
	}
	uint row = i / p.half_;
	uint c = i - row * p.half_;
	uint base = row * 2u * p.half_ + c;
	y[i] = x[base] * gelu_erf(x[base + p.half_]);
}
