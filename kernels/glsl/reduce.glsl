// Workgroup sum for the row-reduction kernels (softmax, norms). The backend
// always launches them with a power-of-two workgroup of at most MAX_WG.
#define MAX_WG 256
shared float red_buf[MAX_WG];

float wg_sum(float v) {
	uint t = gl_LocalInvocationID.x;
	barrier();
	red_buf[t] = v;
	barrier();
	for (uint s = WG / 2u; s > 0u; s >>= 1u) {
		if (t < s) {
			red_buf[t] += red_buf[t + s];
		}
		barrier();
	}
	return red_buf[0];
}

float wg_max(float v) {
	uint t = gl_LocalInvocationID.x;
	barrier();
	red_buf[t] = v;
	barrier();
	for (uint s = WG / 2u; s > 0u; s >>= 1u) {
		if (t < s) {
			red_buf[t] = max(red_buf[t], red_buf[t + s]);
		}
		barrier();
	}
	return red_buf[0];
}
