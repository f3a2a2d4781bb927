#version 450
#include "common.glsl"
// dst[i] = op(x[i]); dst may alias x. op: 0 SiLU, 1 GELU (erf), 2 QuickGELU, 3 GELU (tanh).
layout(local_size_x_id = 0) in;
layout(push_constant) uniform UnaryParams {
	uint n;
	uint op;
} p;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Y { float y[]; };

void main() {
	uint i = flat_id();
	if (i >= p.n) {
		return;
	}
	float v = x[i];
	float r;
	switch (p.op) {
	case 0: r = silu(v); break;
	case 1: r = gelu_erf(v); break;
	case 2: r = v * sigmoid(1.702 * v); break;
	default: r = gelu_tanh(v); break;
	}
	y[i] = r;
}
