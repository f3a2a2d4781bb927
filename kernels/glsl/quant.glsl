// Block-quantized weights (engine/quant.go): ggml's blocks, unchanged, read
// as little-endian 32-bit words through qword(i), which the including
// kernel defines over a uint storage buffer or an R32UI texel buffer. One
// of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K is defined.
// Blocks of 18, 22, 34, 110 and 210 bytes start at even byte offsets, so
// words are assembled from two fetches there. The backend pads every
// quantized tensor by a word, which those reads may touch but never use.
//
// The decoding is ggml's dequantize_row_* with its float32 roundings (the
// reference backend's engine.Dequantize): every product and sum is
// "precise", so no compiler fuses them into a multiply-add.
//
// It provides:
//   QBS, QBB          elements and bytes per block
//   float dq_elem(e)  element e of the tensor (any element, any layout)
// and, for the register-blocked matmul, a block in QNS steps of 32
// elements each, decoded into 8 vec4 (elements q_koff(s, g) .. +3 of the
// block for group g) after QNH vec4 of header that q_head computes before
// every QHS-th step (K-quants whose kernel reads RGBA32UI texels, QUAD,
// provide qquad(i), texel i, as well):
//   void q_head(base, s, out vec4 h[QNH])
//   void q_step(base, s, vec4 h[QNH], out vec4 w[8])
//   uint q_koff(s, g)

#ifndef QUAD
// 16 bytes from word 4i on (kernels reading RGBA32UI texels define it).
uvec4 qquad(uint i) { return uvec4(qword(4u * i), qword(4u * i + 1u), qword(4u * i + 2u), qword(4u * i + 3u)); }
#endif

uint qbyte(uint off) { return (qword(off >> 2u) >> ((off & 3u) * 8u)) & 0xffu; }
float qhalf(uint off) { return unpackHalf2x16(qword(off >> 2u) >> ((off & 2u) * 8u)).x; }

// QWORDS fetches the NW 32-bit words at an even byte offset base into v
// (v[t] holds bytes base+4t .. base+4t+3), from NW+1 fetches.
#define QWORDS(NW, base, v) { \
	uint i0_ = (base) >> 2u, sh_ = ((base) & 2u) * 8u; \
	uint r_[NW + 1]; \
	for (uint t_ = 0u; t_ <= NW; t_++) { r_[t_] = qword(i0_ + t_); } \
	for (uint t_ = 0u; t_ < NW; t_++) { v[t_] = (r_[t_] >> sh_) | ((r_[t_ + 1u] << 1u) << (31u - sh_)); } \
}
// QWORDS_BLOCK is QWORDS for a whole block whose last word is half used
// (18, 22 and 34-byte blocks): NW fetches, and v[NW-1] holds only bytes
// base+4(NW-1) and the next.
#define QWORDS_BLOCK(NW, base, v) { \
	uint i0_ = (base) >> 2u, sh_ = ((base) & 2u) * 8u; \
	uint r_[NW + 1]; \
	for (uint t_ = 0u; t_ < NW; t_++) { r_[t_] = qword(i0_ + t_); } \
	r_[NW] = 0u; \
	for (uint t_ = 0u; t_ < NW; t_++) { v[t_] = (r_[t_] >> sh_) | ((r_[t_ + 1u] << 1u) << (31u - sh_)); } \
}
// QWORDS_ALIGNED is QWORDS for blocks at 4-byte offsets.
#define QWORDS_ALIGNED(NW, base, v) { \
	uint i0_ = (base) >> 2u; \
	for (uint t_ = 0u; t_ < NW; t_++) { v[t_] = qword(i0_ + t_); } \
}

vec4 nibbles_lo(uint u) { return vec4(u & 15u, (u >> 8u) & 15u, (u >> 16u) & 15u, (u >> 24u) & 15u); }
vec4 nibbles_hi(uint u) { return vec4((u >> 4u) & 15u, (u >> 12u) & 15u, (u >> 20u) & 15u, u >> 28u); }
vec4 bytes4(uint u) { return vec4(u & 255u, (u >> 8u) & 255u, (u >> 16u) & 255u, u >> 24u); }
vec4 sbytes4(uint u) {
	int s = int(u);
	return vec4(bitfieldExtract(s, 0, 8), bitfieldExtract(s, 8, 8), bitfieldExtract(s, 16, 8), bitfieldExtract(s, 24, 8));
}
// bits4(u, b): bit b of each byte of u, as 0 or 1.
vec4 bits4(uint u, uint b) { return vec4((u >> b) & 1u, (u >> (b + 8u)) & 1u, (u >> (b + 16u)) & 1u, (u >> (b + 24u)) & 1u); }
// crumbs4(u, s): bits s, s+1 of each byte of u.
vec4 crumbs4(uint u, uint s) { return vec4((u >> s) & 3u, (u >> (s + 8u)) & 3u, (u >> (s + 16u)) & 3u, (u >> (s + 24u)) & 3u); }
// funnel(a, b): the word at byte 2 of the pair a, b.
uint funnel(uint a, uint b) { return (a >> 16u) | (b << 16u); }

// get_scale_min_k4 over the 12 scale bytes at byte offset off.
void scale_min_k4(uint off, uint j, out float sc, out float m) {
	if (j < 4u) {
		sc = float(qbyte(off + j) & 63u);
		m = float(qbyte(off + j + 4u) & 63u);
	} else {
		sc = float((qbyte(off + j + 4u) & 15u) | ((qbyte(off + j - 4u) >> 6u) << 4u));
		m = float((qbyte(off + j + 4u) >> 4u) | ((qbyte(off + j) >> 6u) << 4u));
	}
}

// get_scale_min_k4 of sub-block j from a Q4_K/Q5_K block's first texel
// (hd.y, hd.z, hd.w are the 12 scale bytes).
void k4_scale(uvec4 hd, uint j, out float sc, out float m) {
	uint r = 8u * (j % 4u);
	uint a = (hd.y >> r) & 255u, b = (hd.z >> r) & 255u, c = (hd.w >> r) & 255u;
	if (j < 4u) {
		sc = float(a & 63u);
		m = float(b & 63u);
	} else {
		sc = float((c & 15u) | ((a >> 6u) << 4u));
		m = float((c >> 4u) | ((b >> 6u) << 4u));
	}
}

#if defined(Q8_0)
#define QBS 32u
#define QBB 34u
#define QNS 1u
#define QNH 1
float dq_elem(uint e) {
	uint base = (e / QBS) * QBB, l = e % QBS;
	int q = bitfieldExtract(int(qbyte(base + 2u + l)), 0, 8);
	precise float y = float(q) * qhalf(base);
	return y;
}
void q_head(uint base, uint s, out vec4 h[QNH]) { h[0] = vec4(0.0); }
void q_step(uint base, uint s, vec4 h[QNH], out vec4 w[8]) {
	uint v[9];
	QWORDS_BLOCK(9u, base, v)
	float d = unpackHalf2x16(v[0]).x;
	for (uint g = 0u; g < 8u; g++) {
		precise vec4 y = sbytes4(funnel(v[g], v[g + 1u])) * d;
		w[g] = y;
	}
}
uint q_koff(uint s, uint g) { return 4u * g; }

#elif defined(Q4_0)
#define QBS 32u
#define QBB 18u
#define QNS 1u
#define QNH 1
float dq_elem(uint e) {
	uint base = (e / QBS) * QBB, l = e % QBS;
	uint b = qbyte(base + 2u + (l & 15u));
	uint q = l < 16u ? (b & 15u) : (b >> 4u);
	precise float y = float(int(q) - 8) * qhalf(base);
	return y;
}
void q_head(uint base, uint s, out vec4 h[QNH]) { h[0] = vec4(0.0); }
void q_step(uint base, uint s, vec4 h[QNH], out vec4 w[8]) {
	uint v[5];
	QWORDS_BLOCK(5u, base, v)
	float d = unpackHalf2x16(v[0]).x;
	for (uint t = 0u; t < 4u; t++) {
		uint u = funnel(v[t], v[t + 1u]);
		precise vec4 lo = (nibbles_lo(u) - 8.0) * d, hi = (nibbles_hi(u) - 8.0) * d;
		w[t] = lo;
		w[t + 4u] = hi;
	}
}
uint q_koff(uint s, uint g) { return 4u * g; }

#elif defined(Q4_1)
#define QBS 32u
#define QBB 20u
#define QNS 1u
#define QNH 1
float dq_elem(uint e) {
	uint base = (e / QBS) * QBB, l = e % QBS;
	uint b = qbyte(base + 4u + (l & 15u));
	uint q = l < 16u ? (b & 15u) : (b >> 4u);
	precise float y = float(q) * qhalf(base) + qhalf(base + 2u);
	return y;
}
void q_head(uint base, uint s, out vec4 h[QNH]) { h[0] = vec4(0.0); }
void q_step(uint base, uint s, vec4 h[QNH], out vec4 w[8]) {
	uint v[5];
	QWORDS_ALIGNED(5u, base, v)
	vec2 dm = unpackHalf2x16(v[0]);
	for (uint t = 0u; t < 4u; t++) {
		precise vec4 lo = nibbles_lo(v[t + 1u]) * dm.x + dm.y, hi = nibbles_hi(v[t + 1u]) * dm.x + dm.y;
		w[t] = lo;
		w[t + 4u] = hi;
	}
}
uint q_koff(uint s, uint g) { return 4u * g; }

#elif defined(Q5_0)
#define QBS 32u
#define QBB 22u
#define QNS 1u
#define QNH 1
float dq_elem(uint e) {
	uint base = (e / QBS) * QBB, l = e % QBS;
	uint qh = qbyte(base + 2u + l / 8u) >> (l % 8u);
	uint b = qbyte(base + 6u + (l & 15u));
	uint q = (l < 16u ? (b & 15u) : (b >> 4u)) | ((qh & 1u) << 4u);
	precise float y = float(int(q) - 16) * qhalf(base);
	return y;
}
void q_head(uint base, uint s, out vec4 h[QNH]) { h[0] = vec4(0.0); }
void q_step(uint base, uint s, vec4 h[QNH], out vec4 w[8]) {
	uint v[6];
	QWORDS_BLOCK(6u, base, v)
	float d = unpackHalf2x16(v[0]).x;
	uint qh = funnel(v[0], v[1]);
	for (uint t = 0u; t < 4u; t++) {
		uint u = funnel(v[t + 1u], v[t + 2u]);
		// Element 4t+i takes bit 4t+i of qh, element 16+4t+i bit 16+4t+i.
		vec4 h0 = vec4((qh >> (4u * t)) & 1u, (qh >> (4u * t + 1u)) & 1u, (qh >> (4u * t + 2u)) & 1u, (qh >> (4u * t + 3u)) & 1u);
		vec4 h1 = vec4((qh >> (4u * t + 16u)) & 1u, (qh >> (4u * t + 17u)) & 1u, (qh >> (4u * t + 18u)) & 1u, (qh >> (4u * t + 19u)) & 1u);
		precise vec4 lo = (nibbles_lo(u) + 16.0 * h0 - 16.0) * d, hi = (nibbles_hi(u) + 16.0 * h1 - 16.0) * d;
		w[t] = lo;
		w[t + 4u] = hi;
	}
}
uint q_koff(uint s, uint g) { return 4u * g; }

#elif defined(Q5_1)
#define QBS 32u
#define QBB 24u
#define QNS 1u
#define QNH 1
float dq_elem(uint e) {
	uint base = (e / QBS) * QBB, l = e % QBS;
	uint qh = qbyte(base + 4u + l / 8u) >> (l % 8u);
	uint b = qbyte(base + 8u + (l & 15u));
	uint q = (l < 16u ? (b & 15u) : (b >> 4u)) | ((qh & 1u) << 4u);
	precise float y = float(q) * qhalf(base) + qhalf(base + 2u);
	return y;
}
void q_head(uint base, uint s, out vec4 h[QNH]) { h[0] = vec4(0.0); }
void q_step(uint base, uint s, vec4 h[QNH], out vec4 w[8]) {
	uint v[6];
	QWORDS_ALIGNED(6u, base, v)
	vec2 dm = unpackHalf2x16(v[0]);
	uint qh = v[1];
	for (uint t = 0u; t < 4u; t++) {
		uint u = v[t + 2u];
		vec4 h0 = vec4((qh >> (4u * t)) & 1u, (qh >> (4u * t + 1u)) & 1u, (qh >> (4u * t + 2u)) & 1u, (qh >> (4u * t + 3u)) & 1u);
		vec4 h1 = vec4((qh >> (4u * t + 16u)) & 1u, (qh >> (4u * t + 17u)) & 1u, (qh >> (4u * t + 18u)) & 1u, (qh >> (4u * t + 19u)) & 1u);
		precise vec4 lo = (nibbles_lo(u) + 16.0 * h0) * dm.x + dm.y, hi = (nibbles_hi(u) + 16.0 * h1) * dm.x + dm.y;
		w[t] = lo;
		w[t + 4u] = hi;
	}
}
uint q_koff(uint s, uint g) { return 4u * g; }

#elif defined(Q4_K)
#define QBS 256u
#define QBB 144u
#define QNS 8u
#define QNH 1
float dq_elem(uint e) {
	uint base = (e / QBS) * QBB, l = e % QBS;
	uint c = l / 64u, r = l % 64u, g = 2u * c + r / 32u;
	uint b = qbyte(base + 16u + 32u * c + r % 32u);
	uint q = r < 32u ? (b & 15u) : (b >> 4u);
	float sc, m;
	scale_min_k4(base + 4u, g, sc, m);
	precise float d1 = qhalf(base) * sc, m1 = qhalf(base + 2u) * m;
	precise float y = d1 * float(q) - m1;
	return y;
}
// Read as RGBA32UI texels (Kernel.QuadTexels: 144-byte blocks are 9
// texels). Every second step (a chunk of 64 elements) the header texel
// gives the chunk's two sub-blocks' scales and mins (h[0] = d1, m1, d2,
// m2); step s decodes the 16 quant bytes of chunk s/2, half s%2: low
// nibbles are elements 64c+16(s%2)+0..15 of sub-block 2c, high nibbles
// the same + 32 of sub-block 2c+1. Two fetches per 32 elements at most.
#define QHS 2u
void q_head(uint base, uint s, out vec4 h[QNH]) {
	uvec4 hd = qquad(base >> 4u);
	uint c = s / 2u;
	vec2 dm = unpackHalf2x16(hd.x);
	float sc1, m1, sc2, m2;
	k4_scale(hd, 2u * c, sc1, m1);
	k4_scale(hd, 2u * c + 1u, sc2, m2);
	precise vec4 y = vec4(dm.x * sc1, dm.y * m1, dm.x * sc2, dm.y * m2);
	h[0] = y;
}
void q_step(uint base, uint s, vec4 h[QNH], out vec4 w[8]) {
	uvec4 q = qquad((base >> 4u) + 1u + s);
	for (uint t = 0u; t < 4u; t++) {
		precise vec4 lo = h[0].x * nibbles_lo(q[t]) - h[0].y, hi = h[0].z * nibbles_hi(q[t]) - h[0].w;
		w[t] = lo;
		w[t + 4u] = hi;
	}
}
uint q_koff(uint s, uint g) { return 64u * (s / 2u) + 16u * (s % 2u) + (g < 4u ? 4u * g : 32u + 4u * (g - 4u)); }

#elif defined(Q5_K)
#define QBS 256u
#define QBB 176u
#define QNS 8u
#define QNH 1
float dq_elem(uint e) {
	uint base = (e / QBS) * QBB, l = e % QBS;
	uint c = l / 64u, r = l % 64u, g = 2u * c + r / 32u;
	uint b = qbyte(base + 48u + 32u * c + r % 32u);
	uint q = (r < 32u ? (b & 15u) : (b >> 4u)) + 16u * ((qbyte(base + 16u + r % 32u) >> g) & 1u);
	float sc, m;
	scale_min_k4(base + 4u, g, sc, m);
	precise float d1 = qhalf(base) * sc, m1 = qhalf(base + 2u) * m;
	precise float y = d1 * float(q) - m1;
	return y;
}
// As Q4_K's, with the high bits (texel 1 + s%2) beside the quants (texel
// 3 + s): 176-byte blocks are 11 texels.
#define QHS 2u
void q_head(uint base, uint s, out vec4 h[QNH]) {
	uvec4 hd = qquad(base >> 4u);
	uint c = s / 2u;
	vec2 dm = unpackHalf2x16(hd.x);
	float sc1, m1, sc2, m2;
	k4_scale(hd, 2u * c, sc1, m1);
	k4_scale(hd, 2u * c + 1u, sc2, m2);
	precise vec4 y = vec4(dm.x * sc1, dm.y * m1, dm.x * sc2, dm.y * m2);
	h[0] = y;
}
void q_step(uint base, uint s, vec4 h[QNH], out vec4 w[8]) {
	uint i = base >> 4u, c = s / 2u;
	uvec4 qh = qquad(i + 1u + s % 2u);
	uvec4 q = qquad(i + 3u + s);
	for (uint t = 0u; t < 4u; t++) {
		precise vec4 lo = h[0].x * (nibbles_lo(q[t]) + 16.0 * bits4(qh[t], 2u * c)) - h[0].y;
		precise vec4 hi = h[0].z * (nibbles_hi(q[t]) + 16.0 * bits4(qh[t], 2u * c + 1u)) - h[0].w;
		w[t] = lo;
		w[t + 4u] = hi;
	}
}
uint q_koff(uint s, uint g) { return 64u * (s / 2u) + 16u * (s % 2u) + (g < 4u ? 4u * g : 32u + 4u * (g - 4u)); }

#elif defined(Q6_K)
#define QBS 256u
#define QBB 210u
#define QNS 8u
#define QNH 1
float dq_elem(uint e) {
	uint base = (e / QBS) * QBB, l = e % QBS;
	uint n = l / 128u, r = l % 128u, quarter = r / 32u, ll = r % 32u;
	uint b = qbyte(base + 64u * n + ll + 32u * (quarter % 2u));
	uint lo = quarter < 2u ? (b & 15u) : (b >> 4u);
	uint hi = (qbyte(base + 128u + 32u * n + ll) >> (2u * quarter)) & 3u;
	int sc = bitfieldExtract(int(qbyte(base + 192u + 8u * n + ll / 16u + 2u * quarter)), 0, 8);
	precise float dl = qhalf(base + 208u) * float(sc);
	precise float y = dl * float(int(lo | (hi << 4u)) - 32);
	return y;
}
// No per-row header: each step fetches its 4 scales and d itself (the
// kernels compile several times faster without header arrays).
void q_head(uint base, uint s, out vec4 h[QNH]) { h[0] = vec4(0.0); }
// Step s covers positions ll = 8(s%4)..+7 of half n = s/4, in its four
// quarters (elements 128n + 32q + ll), whose scales are bytes
// 192 + 8n + (s%4)/2 + 2q.
void q_step(uint base, uint s, vec4 h[QNH], out vec4 w[8]) {
	uint n = s / 4u, ll0 = 8u * (s % 4u);
	uint a[2], b[2], hq[2], sw[2], dw[1];
	QWORDS(2u, base + 64u * n + ll0, a)
	QWORDS(2u, base + 64u * n + 32u + ll0, b)
	QWORDS(2u, base + 128u + 32u * n + ll0, hq)
	QWORDS(2u, base + 192u + 8u * n, sw)
	QWORDS_BLOCK(1u, base + 208u, dw)
	float d = unpackHalf2x16(dw[0]).x;
	uint si = (s % 4u) / 2u; // byte of quarter 0's scale in sw
	vec4 sc = vec4(bitfieldExtract(int(sw[0]), int(8u * si), 8), bitfieldExtract(int(sw[0]), int(8u * si + 16u), 8),
		bitfieldExtract(int(sw[1]), int(8u * si), 8), bitfieldExtract(int(sw[1]), int(8u * si + 16u), 8));
	precise vec4 ds = d * sc;
	for (uint sub = 0u; sub < 2u; sub++) {
		precise vec4 y0 = ds.x * (nibbles_lo(a[sub]) + 16.0 * crumbs4(hq[sub], 0u) - 32.0);
		precise vec4 y1 = ds.y * (nibbles_lo(b[sub]) + 16.0 * crumbs4(hq[sub], 2u) - 32.0);
		precise vec4 y2 = ds.z * (nibbles_hi(a[sub]) + 16.0 * crumbs4(hq[sub], 4u) - 32.0);
		precise vec4 y3 = ds.w * (nibbles_hi(b[sub]) + 16.0 * crumbs4(hq[sub], 6u) - 32.0);
		w[sub] = y0;
		w[2u + sub] = y1;
		w[4u + sub] = y2;
		w[6u + sub] = y3;
	}
}
uint q_koff(uint s, uint g) { return 128u * (s / 4u) + 32u * (g / 2u) + 8u * (s % 4u) + 4u * (g % 2u); }

#elif defined(Q2_K)
#define QBS 256u
#define QBB 84u
#define QNS 8u
#define QNH 1
float dq_elem(uint e) {
	uint base = (e / QBS) * QBB, l = e % QBS;
	uint n = l / 128u, r = l % 128u, s2 = r / 32u, h = (r % 32u) / 16u, ll = r % 16u;
	uint sc = qbyte(base + 8u * n + 2u * s2 + h);
	uint q = (qbyte(base + 16u + 32u * n + 16u * h + ll) >> (2u * s2)) & 3u;
	precise float dl = qhalf(base + 80u) * float(sc & 15u), ml = qhalf(base + 82u) * float(sc >> 4u);
	precise float y = dl * float(q) - ml;
	return y;
}
void q_head(uint base, uint s, out vec4 h[QNH]) { h[0] = vec4(0.0); }
// Step s covers bytes 16h + ll0..+7 (h = (s/2)%2, ll0 = 8(s%2)) of the 32
// qs bytes of half n = s/4, at the four shifts s2, whose groups' scale
// bytes are 8n + 2s2 + h.
void q_step(uint base, uint s, vec4 h[QNH], out vec4 w[8]) {
	uint n = s / 4u, hh = (s / 2u) % 2u;
	uint i = base >> 2u;
	uint q0 = qword(i + 4u + 8u * n + 4u * hh + 2u * (s % 2u)), q1 = qword(i + 5u + 8u * n + 4u * hh + 2u * (s % 2u));
	uint sc0 = qword(i + 2u * n), sc1 = qword(i + 2u * n + 1u);
	vec2 dm = unpackHalf2x16(qword(i + 20u));
	// Scale bytes hh, 2+hh of sc0 (s2 = 0, 1) and of sc1 (s2 = 2, 3).
	uvec4 sc = uvec4((sc0 >> (8u * hh)) & 255u, (sc0 >> (8u * hh + 16u)) & 255u, (sc1 >> (8u * hh)) & 255u, (sc1 >> (8u * hh + 16u)) & 255u);
	precise vec4 dl = dm.x * vec4(sc & 15u), ml = dm.y * vec4(sc >> 4u);
	for (uint s2 = 0u; s2 < 4u; s2++) {
		precise vec4 a = dl[s2] * crumbs4(q0, 2u * s2) - ml[s2], b = dl[s2] * crumbs4(q1, 2u * s2) - ml[s2];
		w[2u * s2] = a;
		w[2u * s2 + 1u] = b;
	}
}
uint q_koff(uint s, uint g) { return 128u * (s / 4u) + 32u * (g / 2u) + 16u * ((s / 2u) % 2u) + 8u * (s % 2u) + 4u * (g % 2u); }

#elif defined(Q3_K)
#define QBS 256u
#define QBB 110u
#define QNS 8u
#define QNH 1
// The signed 6-bit scale i of the 12 scale bytes at off (see q3Scales).
float q3_scale(uint off, uint i) {
	uint lo = i < 8u ? (qbyte(off + i) & 15u) : (qbyte(off + i - 8u) >> 4u);
	uint hi = (qbyte(off + 8u + i % 4u) >> (2u * (i / 4u))) & 3u;
	return float(int(lo | (hi << 4u)) - 32);
}
float dq_elem(uint e) {
	uint base = (e / QBS) * QBB, l = e % QBS;
	uint n = l / 128u, r = l % 128u, s2 = r / 32u, h = (r % 32u) / 16u, ll = r % 16u;
	int q = int((qbyte(base + 32u + 32u * n + 16u * h + ll) >> (2u * s2)) & 3u);
	if (((qbyte(base + 16u * h + ll) >> (4u * n + s2)) & 1u) == 0u) {
		q -= 4;
	}
	precise float dl = qhalf(base + 108u) * q3_scale(base + 96u, 8u * n + 2u * s2 + h);
	precise float y = dl * float(q);
	return y;
}
void q_head(uint base, uint s, out vec4 h[QNH]) { h[0] = vec4(0.0); }
// Step s covers bytes 16h + ll0..+7 (h = (s/2)%2, ll0 = 8(s%2)) of the 32
// qs bytes of half n = s/4 and of hmask, at the four shifts s2: groups
// is = 8n + 2s2 + h, whose scales it decodes from the 12 scale bytes.
void q_step(uint base, uint s, vec4 h[QNH], out vec4 w[8]) {
	uint n = s / 4u, hh = (s / 2u) % 2u, ll0 = 8u * (s % 2u);
	uint q[2], m[2], v[4];
	QWORDS(2u, base + 32u + 32u * n + 16u * hh + ll0, q)
	QWORDS(2u, base + 16u * hh + ll0, m)
	QWORDS_BLOCK(4u, base + 96u, v) // scales at 96..107, d at 108..109
	float d = unpackHalf2x16(v[3]).x;
	// Scale is = 8n + 2s2 + hh: low nibble from byte (2s2+hh) of bytes 0..7
	// (low nibbles for n = 0, high for n = 1), top bits from byte 8 +
	// (2s2+hh)%4 at shift 2(2n + (2s2+hh)/4).
	vec4 sc;
	for (uint s2 = 0u; s2 < 4u; s2++) {
		uint j = 2u * s2 + hh;
		uint lo = (v[j / 4u] >> (8u * (j % 4u) + 4u * n)) & 15u;
		uint hi = (v[2] >> (8u * (j % 4u) + 2u * (2u * n + j / 4u))) & 3u;
		sc[s2] = float(int(lo | (hi << 4u)) - 32);
	}
	precise vec4 dl = d * sc;
	for (uint s2 = 0u; s2 < 4u; s2++) {
		uint mb = 4u * n + s2;
		precise vec4 a = dl[s2] * (crumbs4(q[0], 2u * s2) - 4.0 + 4.0 * bits4(m[0], mb));
		precise vec4 b = dl[s2] * (crumbs4(q[1], 2u * s2) - 4.0 + 4.0 * bits4(m[1], mb));
		w[2u * s2] = a;
		w[2u * s2 + 1u] = b;
	}
}
uint q_koff(uint s, uint g) { return 128u * (s / 4u) + 32u * (g / 2u) + 16u * ((s / 2u) % 2u) + 8u * (s % 2u) + 4u * (g % 2u); }
#endif
