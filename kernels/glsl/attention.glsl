// Push and specialization constants shared by the attention kernels:
// q [B, Lq, H*D], k and v [B, Lk, KV*D], dst like q; softmax(scale q kᵀ) v
// per head, never materialising the score matrix (online softmax). Query
// head h reads key/value head h / (heads / kv_heads) (grouped-query
// attention). Only keys j < kv_len take part (a batch row's key length;
// the backend dispatches rows of unequal lengths separately), and
// causal != 0 masks keys j > q_off + i for query i: q_off is the index of
// the dispatch's first query when the backend splits the queries into
// pieces. The batch index is gl_WorkGroupID.z.
layout(push_constant) uniform AttentionParams {
	uint lq;
	uint lk;
	uint heads;
	uint kv_heads;
	float scale;
	uint causal;
	uint kv_len;
	uint q_off;
} p;
layout(constant_id = 1) const uint D = 64;  // head dim
layout(constant_id = 2) const uint QB = 2;  // queries per invocation
