// Push and specialization constants shared by the attention kernels:
// q [B, Lq, H*D], k and v [B, Lk, H*D], dst like q; softmax(scale q kᵀ) v per
// head, never materialising the score matrix (online softmax). causal != 0
// masks keys j > query i. The batch index is gl_WorkGroupID.z.
layout(push_constant) uniform AttentionParams {
	uint lq;
	uint lk;
	uint heads;
	float scale;
	uint causal;
} p;
layout(constant_id = 1) const uint D = 64;  // head dim
layout(constant_id = 2) const uint QB = 2;  // queries per invocation
