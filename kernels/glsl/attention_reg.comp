#version 450
#extension GL_EXT_samplerless_texture_functions : require
#include "common.glsl"
#include "attention.glsl"
// Flash-style attention for D % 4 == 0. Each invocation owns QB queries of
// one head and walks the keys in blocks of KB: scores for the block, one
// rescale of the running sums, then the weighted values. Neighbouring
// invocations share the head, so they read the same keys and values.
// q, k and v are texel buffers (Kernel.Texels): llvmpipe gathers texels
// branch-free, unlike storage-buffer loads.
#define KB 8
#define NEG_BIG -1.0e30
layout(local_size_x_id = 0) in;
layout(binding = 0) uniform textureBuffer Q;
layout(binding = 1) uniform textureBuffer K;
layout(binding = 2) uniform textureBuffer V;
layout(std430, binding = 3) writeonly buffer O { vec4 o[]; };

const uint D4 = D / 4u;

void main() {
	uint qtiles = (p.lq + QB - 1u) / QB;
	uint t = flat_id();
	if (t >= qtiles * p.heads) {
		return;
	}
	uint b = gl_WorkGroupID.z;
	uint h = t / qtiles;
	uint q0 = (t - h * qtiles) * QB;
	uint row4 = p.heads * D4;      // vec4s per query token
	uint kvrow4 = p.kv_heads * D4; // vec4s per key/value token
	// Scores are computed in base 2: exp(x) = exp2(x * log2 e).
	float sc = p.scale * 1.4426950408889634;
	vec4 qr[QB][D4];
	vec4 acc[QB][D4];
	float m[QB], l[QB];
	for (uint qi = 0u; qi < QB; qi++) {
		int qrow = int((b * p.lq + min(q0 + qi, p.lq - 1u)) * row4 + h * D4);
		for (uint d = 0u; d < D4; d++) {
			qr[qi][d] = texelFetch(Q, qrow + int(d)) * sc;
			acc[qi][d] = vec4(0.0);
		}
		m[qi] = NEG_BIG;
		l[qi] = 0.0;
	}
	uint kend = p.kv_len;
	if (p.causal != 0u) {
		kend = min(kend, p.q_off + q0 + QB);
	}
	uint last = p.kv_len - 1u; // loads past the valid keys are clamped, then masked
	uint kvbase = b * p.lk * kvrow4 + (h / (p.heads / p.kv_heads)) * D4;
	for (uint j0 = 0u; j0 < kend; j0 += KB) {
		float s[QB][KB];
		for (uint kb = 0u; kb < KB; kb++) {
			uint j = min(j0 + kb, last);
			int krow = int(kvbase + j * kvrow4);
			for (uint qi = 0u; qi < QB; qi++) {
				s[qi][kb] = 0.0;
			}
			for (uint d = 0u; d < D4; d++) {
				vec4 kv = texelFetch(K, krow + int(d));
				for (uint qi = 0u; qi < QB; qi++) {
					s[qi][kb] += dot(qr[qi][d], kv);
				}
			}
		}
		float pr[QB][KB];
		for (uint qi = 0u; qi < QB; qi++) {
			float bm = m[qi];
			for (uint kb = 0u; kb < KB; kb++) {
				uint j = j0 + kb;
				bool masked = j >= p.kv_len || (p.causal != 0u && j > p.q_off + q0 + qi);
				s[qi][kb] = masked ? NEG_BIG : s[qi][kb];
				bm = max(bm, s[qi][kb]);
			}
			float corr = exp2(m[qi] - bm);
			m[qi] = bm;
			float sum = 0.0;
			for (uint kb = 0u; kb < KB; kb++) {
				// Masked keys give exp2(-1e30 - bm) = 0 unless every key so
				// far is masked, where bm is -1e30 too: zero them explicitly.
				float e = s[qi][kb] <= NEG_BIG ? 0.0 : exp2(s[qi][kb] - bm);
				pr[qi][kb] = e;
				sum += e;
			}
			l[qi] = l[qi] * corr + sum;
			for (uint d = 0u; d < D4; d++) {
				acc[qi][d] *= corr;
			}
		}
		for (uint kb = 0u; kb < KB; kb++) {
			uint j = min(j0 + kb, last);
			int vrow = int(kvbase + j * kvrow4);
			for (uint d = 0u; d < D4; d++) {
				vec4 vv = texelFetch(V, vrow + int(d));
				for (uint qi = 0u; qi < QB; qi++) {
					acc[qi][d] += pr[qi][kb] * vv;
				}
			}
		}
	}
	for (uint qi = 0u; qi < QB; qi++) {
		uint qq = q0 + qi;
		if (qq >= p.lq) {
			break;
		}
		uint orow = (b * p.lq + qq) * row4 + h * D4;
		float inv = l[qi] > 0.0 ? 1.0 / l[qi] : 0.0;
		for (uint d = 0u; d < D4; d++) {
			o[orow + d] = acc[qi][d] * inv;
		}
	}
}
