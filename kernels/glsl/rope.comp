#version 450
#include "common.glsl"
// Rotary position embedding: x [B, L, H*D] -> y, each head's pairs rotated
// by per-token angles, cos and sin [Bt, L, D/2] (table_batch != 0: Bt = B,
// one table per batch row; else one table shared by the batch). Pair p of a
// head becomes (x0·cos[p] - x1·sin[p], x0·sin[p] + x1·cos[p]); mode 0
// (rotate-half, Qwen3) pairs elements p and p + D/2, mode 1 (interleaved,
// the complex product of Z-Image/FLUX) 2p and 2p + 1. Each invocation reads
// its elements before writing them, so y may alias x.
layout(local_size_x_id = 0) in;
layout(push_constant) uniform RopeParams {
	uint n;     // invocations: pairs, or quads of elements with VEC4
	uint heads;
	uint d;     // head dim
	uint l;     // tokens per batch row
	uint table_batch;
	uint mode;
} p;
#if VEC4
// Four elements per invocation: for rotate-half, pairs p..p+3 of a head
// (x0 and x1 are vec4s, D/2 % 4 == 0); interleaved, the two pairs of
// elements 4q..4q+3 (D % 4 == 0). Tables are read as vec2s.
layout(std430, binding = 0) readonly buffer X { vec4 x[]; };
layout(std430, binding = 1) readonly buffer C { vec2 cs[]; };
layout(std430, binding = 2) readonly buffer S { vec2 sn[]; };
layout(std430, binding = 3) writeonly buffer Y { vec4 y[]; };

void main() {
	uint i = flat_id();
	if (i >= p.n) {
		return;
	}
	uint half_ = p.d / 2u;
	uint per = p.mode == 0u ? half_ / 4u : p.d / 4u; // invocations per head
	uint q = i % per;
	uint r = i / per;
	uint tok = r / p.heads;                // b * L + t
	uint base = r * (p.d / 4u);            // the head's first vec4
	uint t = tok % p.l;
	uint tb = p.table_batch != 0u ? tok / p.l : 0u;
	uint trow = (tb * p.l + t) * (half_ / 2u); // the token's first vec2 of the table
	if (p.mode == 0u) {
		vec4 c = vec4(cs[trow + 2u * q], cs[trow + 2u * q + 1u]);
		vec4 s = vec4(sn[trow + 2u * q], sn[trow + 2u * q + 1u]);
		uint i0 = base + q, i1 = base + half_ / 4u + q;
		vec4 x0 = x[i0], x1 = x[i1];
		y[i0] = x0 * c - x1 * s;
		y[i1] = x0 * s + x1 * c;
	} else {
		vec2 c = cs[trow + q], s = sn[trow + q];
		vec4 v = x[base + q];
		y[base + q] = vec4(v.x * c.x - v.y * s.x, v.x * s.x + v.y * c.x,
		                   v.z * c.y - v.w * s.y, v.z * s.y + v.w * c.y);
	}
}
#else
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer C { float cs[]; };
layout(std430, binding = 2) readonly buffer S { float sn[]; };
layout(std430, binding = 3) writeonly buffer Y { float y[]; };

void main() {
	uint i = flat_id();
	if (i >= p.n) {
		return;
	}
	uint half_ = p.d / 2u;
	uint pr = i % half_;
	uint r = i / half_;
	uint tok = r / p.heads;
	uint base = r * p.d;
	uint t = tok % p.l;
	uint tb = p.table_batch != 0u ? tok / p.l : 0u;
	uint ti = (tb * p.l + t) * half_ + pr;
	uint i0 = base + pr, i1 = base + pr + half_;
	if (p.mode != 0u) {
		i0 = base + 2u * pr;
		i1 = i0 + 1u;
	}
	float x0 = x[i0], x1 = x[i1];
	float c = cs[ti], s = sn[ti];
	y[i0] = x0 * c - x1 * s;
	y[i1] = x0 * s + x1 * c;
}
#endif
