#version 450
#include "common.glsl"
// dst[i] = op(x[i]); dst may alias x. op: 0 SiLU, 1 GELU (erf), 2 QuickGELU, 3 GELU (tanh), 4 tanh,
// 5 ReLU.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform UnaryParams {
	uint n;
	uint op;
} p;
// With VEC4 each invocation handles 4 elements and n counts vec4s: on
// llvmpipe this is several times faster than one element per invocation.
#if VEC4
#define VT vec4
#else
#define VT float
#endif
layout(std430, binding = 0) readonly buffer X { VT x[]; };
layout(std430, binding = 1) writeonly buffer Y { VT y[]; };

// relu keeps NaN (as torch does): max() may return the other operand.
VT relu(VT v) {
#if VEC4
	return mix(v, VT(0.0), lessThan(v, VT(0.0)));
#else
	return v < 0.0 ? 0.0 : v;
#endif
}

VT apply(VT v) {
	switch (p.op) {
	case 0: return v / (1.0 + exp(-v));
	case 1: return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
	case 2: return v / (1.0 + exp(-1.702 * v));
	// Clamped: tanh(15) rounds to 1 in float32, and an exp-based tanh
	// overflows to NaN far beyond it on some drivers.
	case 4: return tanh(clamp(v, -15.0, 15.0));
	case 5: return relu(v);
	}
	VT u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
	return 0.5 * v * (1.0 + tanh(u));
}

void main() {
	uint i = flat_id();
	if (i < p.n) {
		y[i] = apply(x[i]);
	}
}
