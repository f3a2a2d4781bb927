#version 450
#include "common.glsl"
// dst = alpha*x + beta; dst may alias x.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform ScaleParams {
	uint n;
	float alpha;
	float beta;
} p;
// With VEC4, n counts vec4s.
#if VEC4
layout(std430, binding = 0) readonly buffer X { vec4 x[]; };
layout(std430, binding = 1) writeonly buffer Y { vec4 y[]; };
#else
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Y { float y[]; };
#endif

void main() {
	uint i = flat_id();
	if (i < p.n) {
		y[i] = p.alpha * x[i] + p.beta;
	}
}
