package engine

// UnaryOp selects an elementwise activation.
type UnaryOp uint8

const (
	SiLU      UnaryOp = iota // x * sigmoid(x)
	GELU                     // exact GELU: 0.5 x (1 + erf(x / sqrt 2))
	QuickGELU                // x * sigmoid(1.702 x), as CLIP ViT-L/14 uses
	GELUTanh                 // tanh approximation of GELU
	Tanh                     // tanh(x), the gates of Z-Image's adaLN
	ReLU                     // max(x, 0), TAESD's activation; NaN stays NaN as in torch
)

func (o UnaryOp) String() string {
	switch o {
	case SiLU:
		return "silu"
	case GELU:
		return "gelu"
	case QuickGELU:
		return "quick_gelu"
	case GELUTanh:
		return "gelu_tanh"
	case Tanh:
		return "tanh"
	case ReLU:
		return "relu"
	}
	return "unary?"
}

// BinaryOp selects an elementwise binary op with numpy-style broadcasting.
type BinaryOp uint8

const (
	Add BinaryOp = iota
	Sub
	Mul
)

func (o BinaryOp) String() string {
	switch o {
	case Add:
		return "add"
	case Sub:
		return "sub"
	case Mul:
		return "mul"
	}
	return "binary?"
}

// Conv2dParams describes a 2-D convolution with symmetric zero padding.
type Conv2dParams struct {
	Stride int
	Pad    int
}

// AttentionOptions are the settings of Backend.Attention.
type AttentionOptions struct {
	Heads int // query heads H
	// KVHeads is the number of key/value heads; 0 means Heads. With fewer
	// (grouped-query attention, as in Qwen3) H must be a multiple of it and
	// query head h reads key/value head h / (H / KVHeads).
	KVHeads int
	Scale   float32 // multiplies q·k before the softmax
	Causal  bool    // query i sees keys j <= i only
	// KeyLens, when set, has one entry per batch row b: keys j >= KeyLens[b]
	// are masked (sequences of unequal length padded into one batch, as in
	// a CFG batch of two captions). 1 <= KeyLens[b] <= Lk.
	KeyLens []int
}

// KV is the number of key/value heads the options describe.
func (o AttentionOptions) KV() int {
	if o.KVHeads == 0 {
		return o.Heads
	}
	return o.KVHeads
}

// RopeMode selects which elements of a head a rotary embedding rotates
// together.
type RopeMode uint8

const (
	// RopeHalf pairs element i with i + D/2 (GPT-NeoX, Llama and Qwen's
	// rotate_half).
	RopeHalf RopeMode = iota
	// RopeInterleaved pairs element 2i with 2i+1 (the complex product of
	// FLUX and Z-Image).
	RopeInterleaved
)

func (m RopeMode) String() string {
	switch m {
	case RopeHalf:
		return "half"
	case RopeInterleaved:
		return "interleaved"
	}
	return "rope?"
}

// MemStats is a backend's device-memory accounting, in bytes.
type MemStats struct {
	InUse  int64
	Peak   int64
	Budget int64 // 0 = unlimited
}

// Backend executes typed ops on tensors it allocated.
//
// Conventions every backend follows (the conformance suite in
// engine/enginetest checks them):
//   - Layouts are contiguous row-major; images are NCHW; token sequences are
//     [batch, tokens, channels].
//   - Activations are F32. Weight operands of Linear, Conv2d and Embedding
//     may be F16 or F32; biases and norm parameters are F32. Copy converts
//     between dtypes. All arithmetic accumulates in float32.
//   - The destination comes first and must already have the result's shape.
//     Ops may be recorded and run later: results are visible to Read, which
//     runs all pending work. Flush runs pending work without reading.
//   - Free may be called on a tensor that pending ops still read or write; a
//     backend must keep such reuse safe (Vulkan orders every dispatch after
//     the previous one, and Write flushes pending work first).
//   - Errors name the op and the tensors involved; ops never panic on bad
//     shapes.
type Backend interface {
	Name() string
	Close() error

	// Alloc returns an uninitialised tensor owned by the backend.
	Alloc(name string, dt DType, shape Shape) (*Tensor, error)
	// Free releases a tensor's memory; views and nil are ignored.
	Free(t *Tensor)
	// Write stores host values into t, converting to t's dtype.
	Write(t *Tensor, data []float32) error
	// WriteRaw stores little-endian raw elements of type src (F16 or F32)
	// into t, converting to t's dtype. len(data) must match t's element count.
	WriteRaw(t *Tensor, data []byte, src DType) error
	// Read runs pending work and returns t's elements as float32.
	Read(t *Tensor) ([]float32, error)
	// Flush runs pending work and waits for it.
	Flush() error
	MemStats() MemStats
	// ResetPeak sets the peak to the current use.
	ResetPeak()

	// Linear: x [..., K], w [N, K], bias [N] or nil -> dst [..., N].
	Linear(dst, x, w, bias *Tensor) error
	// MatMul: a [B, M, K], b [B, K, N] (transB: [B, N, K]) -> dst [B, M, N],
	// dst = alpha * a·b.
	MatMul(dst, a, b *Tensor, transB bool, alpha float32) error
	// Conv2d: x [N, C, H, W], w [O, C, KH, KW], bias [O] or nil ->
	// dst [N, O, (H+2p-KH)/s+1, (W+2p-KW)/s+1].
	Conv2d(dst, x, w, bias *Tensor, p Conv2dParams) error
	// GroupNorm: x [N, C, ...], gamma/beta [C]; normalises each of the
	// groups of C/groups channels over those channels and all trailing
	// dims; silu applies SiLU to the result.
	GroupNorm(dst, x, gamma, beta *Tensor, groups int, eps float32, silu bool) error
	// LayerNorm normalises over the last dim; gamma/beta [D].
	LayerNorm(dst, x, gamma, beta *Tensor, eps float32) error
	// Softmax over the last dim.
	Softmax(dst, x *Tensor) error
	// RMSNorm normalises over the last dim by the root mean square:
	// x / sqrt(mean(x²) + eps) * gamma; gamma [D], or nil for no scale.
	RMSNorm(dst, x, gamma *Tensor, eps float32) error
	// Attention: q [B, Lq, H*D], k and v [B, Lk, KV*D] -> dst [B, Lq, H*D],
	// softmax(scale · q kᵀ) v per head, with the masks o describes.
	Attention(dst, q, k, v *Tensor, o AttentionOptions) error
	// Rope rotates pairs of each head of x [B, L, H*D] (pairs chosen by
	// mode) by per-token angles: cos and sin are [Bt, L, D/2] with Bt 1
	// (shared by the batch) or B, and pair p of a token becomes
	// (x0·cos[p] - x1·sin[p], x0·sin[p] + x1·cos[p]). dst may be x.
	Rope(dst, x, cos, sin *Tensor, heads int, mode RopeMode) error
	// Unary applies op elementwise; dst may be x.
	Unary(dst, x *Tensor, op UnaryOp) error
	// GEGLU: x [..., 2N] -> dst [..., N] = x[..., :N] * gelu(x[..., N:]).
	GEGLU(dst, x *Tensor) error
	// SwiGLU: dst = silu(gate) * up, all of one shape; dst may be gate or up.
	SwiGLU(dst, gate, up *Tensor) error
	// Binary: dst = a op b with numpy-style broadcasting (up to 4 dims);
	// dst may be a or b when it has the broadcast shape.
	Binary(dst, a, b *Tensor, op BinaryOp) error
	// Scale: dst = alpha*x + beta; dst may be x.
	Scale(dst, x *Tensor, alpha, beta float32) error
	// Upsample2x: nearest-neighbour x [N, C, H, W] -> dst [N, C, 2H, 2W].
	Upsample2x(dst, x *Tensor) error
	// Concat joins a [N, Ca, ...] and b [N, Cb, ...] on axis 1.
	Concat(dst, a, b *Tensor) error
	// Permute: dst dims are x's dims reordered by perm (up to 4 dims).
	Permute(dst, x *Tensor, perm []int) error
	// Embedding gathers rows: table [V, D], ids in [0, V) -> dst [len(ids), D].
	Embedding(dst, table *Tensor, ids []int32) error
	// Copy copies x into dst of the same shape, converting dtypes.
	Copy(dst, x *Tensor) error
}

// TensorLimiter is implemented by backends that cannot bind a tensor larger
// than some size (Vulkan's maxStorageBufferRange: 128 MiB on many GPUs).
// Ops over rows, elements, batch rows or groups run bigger tensors in
// pieces themselves; a convolution over one image that large does not, so
// callers that can split such work (the tiled VAE decoder) size it to fit.
type TensorLimiter interface {
	MaxTensorBytes() int64
}
