// Shared by every kernel. Each .comp starts with "#version 450" and then
// includes this file.
#extension GL_EXT_shader_16bit_storage : require

// The workgroup's x size is specialization constant 0: kernels declare
// layout(local_size_x_id = 0) and read the size as WG, never as
// gl_WorkGroupSize, because spirv-opt (glslc -O, shaderc 2023.2) folds
// WG to its default of 1 before specialization.
layout(constant_id = 0) const uint WG = 64;

// Flat invocation index over a 2-D grid of 1-D workgroups: the backend splits
// big element counts over x and y because x is limited to 65535 groups.
uint flat_id() {
	return (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * WG + gl_LocalInvocationID.x;
}

// Flat workgroup index over the same 2-D grid (one workgroup per row).
uint flat_group() {
	return gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
}

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), enough for float32.
#define ERF_APPROX(T) \
	T erf_approx(T x) { \
		T a = abs(x); \
		T t = 1.0 / (1.0 + 0.3275911 * a); \
		T y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a); \
		return sign(x) * y; \
	}
ERF_APPROX(float)
ERF_APPROX(vec4)

float gelu_erf(float x) { return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752)); }

float gelu_tanh(float x) {
	// tanh's argument is clamped: some drivers compute tanh as a ratio of
	// exponentials that overflows to NaN beyond |x| ~ 44.
	float u = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -15.0, 15.0);
	return 0.5 * x * (1.0 + tanh(u));
}

float sigmoid(float x) { return 1.0 / (1.0 + exp(-x)); }

float silu(float x) { return x * sigmoid(x); }
