// Push constants and specialization constants shared by the conv2d kernels:
// x [N, C, H, W] F32, w [O, C, KH, KW] (W_T storage), bias [O] F32 when
// has_bias != 0, dst [N, O, OH, OW] F32; the batch index is gl_WorkGroupID.z.
layout(push_constant) uniform Conv2dParams {
	uint c;
	uint h;
	uint w;
	uint o;
	uint oh;
	uint ow;
	uint has_bias;
} p;
layout(constant_id = 1) const uint KH = 3;
layout(constant_id = 2) const uint KW = 3;
layout(constant_id = 3) const uint STRIDE = 1;
layout(constant_id = 4) const uint PAD = 1;
layout(constant_id = 5) const uint CB = 1; // input channels per block (conv2d_reg)
