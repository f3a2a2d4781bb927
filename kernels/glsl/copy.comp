#version 450
#include "common.glsl"
// dst[dst_off + i] = convert(src[src_off + i]). The element offsets let the
// backend copy views whose byte offset is not aligned for a descriptor.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform CopyParams {
	uint n;
	uint src_off;
	uint dst_off;
} p;
layout(std430, binding = 0) readonly buffer X { SRC_T x[]; };
layout(std430, binding = 1) writeonly buffer Y { DST_T y[]; };

void main() {
	uint i = flat_id();
	if (i < p.n) {
		y[p.dst_off + i] = DST_T(float(x[p.src_off + i]));
	}
}
