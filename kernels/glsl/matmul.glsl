// Push constants shared by the matmul kernels: C[z] = alpha * A[z]·B[z] (+ bias)
// with A [M, K] F32, B [K, N] or, when trans_b != 0, [N, K] (W_T storage),
// bias [N] F32 when has_bias != 0, C [M, N] F32, or (matmul_reg only) when
// trans_c != 0 C stored transposed, [N, M] (convolutions run as matmuls
// write their output channels as rows). stride_* are the per-batch
// element strides (stride_b is 0 when every batch shares one weight).
layout(push_constant) uniform MatMulParams {
	uint m;
	uint n;
	uint k;
	uint stride_a;
	uint stride_b;
	uint stride_c;
	uint trans_b;
	uint has_bias;
	float alpha;
	uint trans_c;
} p;
