package kernels

// Variant is one compilation of a GLSL source: a name (the .spv file and,
// CamelCased, the Go variable) and the preprocessor defines that select
// types or code paths. The define ScalarTexelsDefine marks a kernel whose
// texel buffers hold one element per texel (Kernel.ScalarTexels).
type Variant struct {
	Name    string
	Source  string // file in glsl/
	Defines []string
}

// GlslcArgs is the exact glslc command line (without "glslc") that compiles
// v from glslDir into out. The generator and the freshness test share it so
// that both produce identical bytes.
func (v Variant) GlslcArgs(glslDir, out string) []string {
	args := []string{"-fshader-stage=compute", "--target-env=vulkan1.2", "-O", "-I", glslDir}
	for _, d := range v.Defines {
		args = append(args, "-D"+d)
	}
	return append(args, glslDir+"/"+v.Source, "-o", out)
}

// ScalarTexelsDefine is the define that sets Kernel.ScalarTexels.
const ScalarTexelsDefine = "SCALAR_TEXELS=1"

// QuadTexelsDefine is the define that sets Kernel.QuadTexels.
const QuadTexelsDefine = "QUAD=1"

// Weight operands (Linear, Conv2d, Embedding, and MatMul's b) come in F32 or
// F16 storage; everything accumulates in float32.
var (
	f32W = []string{"W_T=float", "W4_T=vec4"}
	f16W = []string{"W_T=float16_t", "W4_T=f16vec4"}
)

// QuantTypes are the block-quantized weight types the kernels read (the
// engine's dtypes of the same names, ggml's block layouts), as the lower-
// case names their variants carry: matmul_reg_q4_k is MatMulRegQ4K.
var QuantTypes = []string{"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"}

// quantVariants are, per block type (glsl/quant.glsl), the register-blocked
// and shared-memory matmuls with a quantized B, the GPU convolution, the
// Winograd weight transform and the dequantizing copies to F32 and F16.
func quantVariants() []Variant {
	var out []Variant
	for _, q := range QuantTypes {
		def := upper(q) + "=1"
		qt := []string{def, "QTYPE=1"}
		reg := []string{def}
		if q == "q4_k" || q == "q5_k" {
			// 144- and 176-byte blocks are whole 16-byte texels: one fetch
			// reads 32 elements' quants.
			reg = append(reg, QuadTexelsDefine)
		}
		out = append(out,
			Variant{"matmul_reg_q" + q[1:], "matmul_reg_q.comp", reg},
			Variant{"matmul_tile_q" + q[1:], "matmul_tile.comp", qt},
			Variant{"conv2d_tile_q" + q[1:], "conv2d_tile.comp", qt},
			Variant{"winograd_weights_q" + q[1:], "winograd_weights.comp", append(qt, ScalarTexelsDefine)},
			Variant{"dequant_q" + q[1:] + "_f32", "dequant.comp", []string{def, "DST_T=float"}},
			Variant{"dequant_q" + q[1:] + "_f16", "dequant.comp", []string{def, "DST_T=float16_t"}},
		)
	}
	return out
}

// upper is strings.ToUpper for the ASCII type names (this package imports
// only embed).
func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// Variants lists every kernel zimage ships.
var Variants = append([]Variant{
	// matmul: register-blocked (CPU-like devices) and shared-memory tiled
	// (GPUs); both need K%4 == 0. The scalar kernel handles any shape.
	// matmul_reg reads A and B as texels, so one kernel serves F32 and F16
	// weights (the view's format converts); one variant per B layout.
	{"matmul_reg_nt", "matmul_reg.comp", []string{"TRANS_B=1"}},
	{"matmul_reg_nt_m32", "matmul_reg.comp", []string{"TRANS_B=1", "TM=32"}},
	{"matmul_reg_nn", "matmul_reg.comp", nil},
	{"matmul_tile_f32", "matmul_tile.comp", f32W},
	{"matmul_tile_f16", "matmul_tile.comp", f16W},
	{"matmul_scalar_f32", "matmul_scalar.comp", f32W},
	{"matmul_scalar_f16", "matmul_scalar.comp", f16W},

	// conv2d_reg reads x and w as scalar texels (any alignment), so one
	// kernel serves F32 and F16 weights.
	{"conv2d_reg", "conv2d_reg.comp", []string{ScalarTexelsDefine}},
	// im2col feeds matmul_reg for convs the direct kernel tiles badly
	// (maps narrower than its 16-pixel rows, strides).
	{"im2col", "im2col.comp", []string{ScalarTexelsDefine}},
	{"conv2d_tile_f32", "conv2d_tile.comp", f32W},
	{"conv2d_tile_f16", "conv2d_tile.comp", f16W},

	// Winograd F(4x4, 3x3) transforms around matmul_reg for 3x3 stride-1
	// convs (engine/vk/ops_winograd.go).
	{"winograd_weights", "winograd_weights.comp", []string{ScalarTexelsDefine}},
	{"winograd_input", "winograd_input.comp", []string{ScalarTexelsDefine}},
	{"winograd_output", "winograd_output.comp", nil},

	{"attention_reg", "attention_reg.comp", nil},
	{"attention_scalar", "attention_scalar.comp", nil},

	{"group_norm", "group_norm.comp", nil},
	{"group_norm_vec4", "group_norm.comp", []string{"VEC4=1"}},
	{"layer_norm", "layer_norm.comp", nil},
	{"layer_norm_rows", "layer_norm_rows.comp", nil},
	{"rms_norm", "rms_norm.comp", nil},
	{"rms_norm_rows", "rms_norm_rows.comp", nil},
	{"softmax", "softmax.comp", nil},

	{"unary", "unary.comp", nil},
	{"unary_vec4", "unary.comp", []string{"VEC4=1"}},
	{"geglu", "geglu.comp", nil},
	{"swiglu", "swiglu.comp", nil},
	{"swiglu_vec4", "swiglu.comp", []string{"VEC4=1"}},
	{"rope", "rope.comp", nil},
	{"rope_vec4", "rope.comp", []string{"VEC4=1"}},
	{"binary", "binary.comp", nil},
	{"binary_vec4", "binary.comp", []string{"VEC4=1"}},
	{"scale", "scale.comp", nil},
	{"scale_vec4", "scale.comp", []string{"VEC4=1"}},
	{"upsample2x", "upsample2x.comp", nil},
	{"upsample2x_vec4", "upsample2x.comp", []string{"VEC4=1"}},
	{"concat", "concat.comp", nil},
	{"concat_vec4", "concat.comp", []string{"VEC4=1"}},
	{"permute", "permute.comp", nil},
	{"embedding_f32", "embedding.comp", f32W},
	{"embedding_f16", "embedding.comp", f16W},

	{"copy_f32_f32", "copy.comp", []string{"SRC_T=float", "DST_T=float"}},
	{"copy_f16_f32", "copy.comp", []string{"SRC_T=float16_t", "DST_T=float"}},
	{"copy_f32_f16", "copy.comp", []string{"SRC_T=float", "DST_T=float16_t"}},
	{"copy_f16_f16", "copy.comp", []string{"SRC_T=float16_t", "DST_T=float16_t"}},
}, quantVariants()...)
