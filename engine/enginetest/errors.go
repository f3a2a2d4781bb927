package enginetest

import (
	"strings"
	"testing"

	"github.com/zimage/zimage/engine"
)

// Errors calls every op with operands of the wrong shape, a nil operand or
// an out-of-range argument: each call must return an error, not panic, and
// the error must name one of the tensors involved.
func Errors(t *testing.T, b engine.Backend, opts ...Option) {
	var all []*engine.Tensor
	defer func() {
		for _, x := range all {
			b.Free(x)
		}
	}()
	mk := func(name string, dt engine.DType, shape ...int) *engine.Tensor {
		x, err := b.Alloc(name, dt, shape)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, x)
		return x
	}
	f32, f16 := engine.F32, engine.F16
	img := mk("err.img", f32, 2, 3, 5, 5)      // [N, C, H, W]
	img4 := mk("err.img4", f32, 2, 4, 5, 5)    // 4 channels
	convW := mk("err.conv_w", f16, 4, 3, 3, 3) // 3 -> 4 channels
	convOut := mk("err.conv_out", f32, 2, 4, 5, 5)
	bias4 := mk("err.bias4", f32, 4)
	bias3 := mk("err.bias3", f32, 3)
	tok := mk("err.tok", f32, 2, 7, 8)   // [B, L, C]
	tok6 := mk("err.tok6", f32, 2, 6, 8) // other length
	tok5 := mk("err.tok5", f32, 2, 7, 5) // other width
	tok3 := mk("err.tok3", f32, 3, 7, 8) // other batch
	linW := mk("err.lin_w", f16, 5, 8)   // 8 -> 5
	linOut := mk("err.lin_out", f32, 2, 7, 5)
	vec8 := mk("err.vec8", f32, 8)
	vec5 := mk("err.vec5", f32, 5)
	big := mk("err.big", f32, 2, 3, 10, 10)
	odd := mk("err.odd", f32, 2, 7)
	tab := mk("err.table", f16, 10, 8)
	emb := mk("err.emb", f32, 3, 8)
	b5 := mk("err.5d", f32, 1, 1, 1, 1, 1)
	h16 := mk("err.f16", f16, 2, 7, 8)
	kv4 := mk("err.kv4", f32, 2, 7, 4)       // one key/value head of 4
	tab2 := mk("err.rope_tab", f32, 1, 7, 2) // rope table for heads of 4
	tab3 := mk("err.rope_tab3", f32, 1, 7, 3)
	tab6 := mk("err.rope_tab6", f32, 1, 6, 2)
	tabB := mk("err.rope_tab_b2", f32, 2, 7, 2)
	p := engine.Conv2dParams{Stride: 1, Pad: 1}

	for _, c := range []struct {
		name  string
		names []*engine.Tensor // the error must name one of these (none: nil operands)
		f     func() error
	}{
		{"linear K mismatch", []*engine.Tensor{tok5, linW}, func() error { return b.Linear(linOut, tok5, linW, nil) }},
		{"linear dst shape", []*engine.Tensor{tok, linOut, tok6}, func() error { return b.Linear(tok6, tok, linW, nil) }},
		{"linear bias length", []*engine.Tensor{vec8}, func() error { return b.Linear(linOut, tok, linW, vec8) }},
		{"linear nil weight", nil, func() error { return b.Linear(linOut, tok, nil, nil) }},
		{"linear nil dst", nil, func() error { return b.Linear(nil, tok, linW, nil) }},
		{"matmul batch mismatch", []*engine.Tensor{tok, tok3}, func() error { return b.MatMul(tok, tok, tok3, true, 1) }},
		{"matmul K mismatch", []*engine.Tensor{tok, tok6}, func() error { return b.MatMul(tok, tok, tok6, false, 1) }},
		{"matmul dst shape", []*engine.Tensor{tok6, tok}, func() error { return b.MatMul(tok6, tok, tok, true, 1) }},
		{"conv2d channel mismatch", []*engine.Tensor{img4, convW}, func() error { return b.Conv2d(convOut, img4, convW, nil, p) }},
		{"conv2d dst shape", []*engine.Tensor{img4, img, convOut}, func() error { return b.Conv2d(img4, img, convW, nil, engine.Conv2dParams{Stride: 2, Pad: 1}) }},
		{"conv2d kernel larger than input", []*engine.Tensor{img, big}, func() error {
			return b.Conv2d(convOut, img, big, nil, engine.Conv2dParams{Stride: 1})
		}},
		{"conv2d kernel one larger than padded input at stride 2", []*engine.Tensor{img, big}, func() error {
			return b.Conv2d(convOut, img, big, nil, engine.Conv2dParams{Stride: 2, Pad: 2})
		}},
		{"conv2d stride 0", []*engine.Tensor{img, convW}, func() error { return b.Conv2d(convOut, img, convW, nil, engine.Conv2dParams{}) }},
		{"conv2d negative pad", []*engine.Tensor{img, convW}, func() error {
			return b.Conv2d(convOut, img, convW, nil, engine.Conv2dParams{Stride: 1, Pad: -1})
		}},
		{"conv2d bias length", []*engine.Tensor{bias3}, func() error { return b.Conv2d(convOut, img, convW, bias3, p) }},
		{"conv2d nil input", nil, func() error { return b.Conv2d(convOut, nil, convW, bias4, p) }},
		{"group_norm channels not divisible", []*engine.Tensor{img}, func() error { return b.GroupNorm(img, img, bias3, bias3, 2, 1e-5, false) }},
		{"group_norm zero groups", []*engine.Tensor{img}, func() error { return b.GroupNorm(img, img, bias3, bias3, 0, 1e-5, false) }},
		{"group_norm gamma length", []*engine.Tensor{bias4}, func() error { return b.GroupNorm(img, img, bias4, bias3, 3, 1e-5, true) }},
		{"group_norm dst shape", []*engine.Tensor{img4, img}, func() error { return b.GroupNorm(img4, img, bias3, bias3, 3, 1e-5, false) }},
		{"group_norm nil beta", nil, func() error { return b.GroupNorm(img, img, bias3, nil, 3, 1e-5, false) }},
		{"layer_norm gamma length", []*engine.Tensor{vec5}, func() error { return b.LayerNorm(tok, tok, vec5, vec8, 1e-5) }},
		{"layer_norm dst shape", []*engine.Tensor{tok6, tok}, func() error { return b.LayerNorm(tok6, tok, vec8, vec8, 1e-5) }},
		{"softmax dst shape", []*engine.Tensor{tok6, tok}, func() error { return b.Softmax(tok6, tok) }},
		{"attention heads do not divide width", []*engine.Tensor{tok}, func() error { return b.Attention(tok, tok, tok, tok, engine.AttentionOptions{Heads: 3, Scale: 1}) }},
		{"attention zero heads", []*engine.Tensor{tok}, func() error { return b.Attention(tok, tok, tok, tok, engine.AttentionOptions{Heads: 0, Scale: 1}) }},
		{"attention k/v mismatch", []*engine.Tensor{tok, tok6}, func() error { return b.Attention(tok, tok, tok, tok6, engine.AttentionOptions{Heads: 2, Scale: 1}) }},
		{"attention batch mismatch", []*engine.Tensor{tok, tok3}, func() error { return b.Attention(tok, tok, tok3, tok3, engine.AttentionOptions{Heads: 2, Scale: 1}) }},
		{"attention dst shape", []*engine.Tensor{tok6, tok}, func() error { return b.Attention(tok6, tok, tok6, tok6, engine.AttentionOptions{Heads: 2, Scale: 1}) }},
		{"attention kv heads do not divide heads", []*engine.Tensor{tok}, func() error {
			return b.Attention(tok, tok, kv4, kv4, engine.AttentionOptions{Heads: 2, KVHeads: 3, Scale: 1})
		}},
		{"attention k width not kv heads x d", []*engine.Tensor{tok, kv4}, func() error {
			return b.Attention(tok, tok, kv4, kv4, engine.AttentionOptions{Heads: 2, KVHeads: 2, Scale: 1})
		}},
		{"attention key lengths count", []*engine.Tensor{kv4}, func() error {
			return b.Attention(tok, tok, kv4, kv4, engine.AttentionOptions{Heads: 2, KVHeads: 1, Scale: 1, KeyLens: []int{7}})
		}},
		{"attention key length zero", []*engine.Tensor{kv4}, func() error {
			return b.Attention(tok, tok, kv4, kv4, engine.AttentionOptions{Heads: 2, KVHeads: 1, Scale: 1, KeyLens: []int{7, 0}})
		}},
		{"attention key length past the keys", []*engine.Tensor{kv4}, func() error {
			return b.Attention(tok, tok, kv4, kv4, engine.AttentionOptions{Heads: 2, KVHeads: 1, Scale: 1, KeyLens: []int{8, 7}})
		}},
		{"rms_norm gamma length", []*engine.Tensor{vec5}, func() error { return b.RMSNorm(tok, tok, vec5, 1e-6) }},
		{"rms_norm dst shape", []*engine.Tensor{tok6, tok}, func() error { return b.RMSNorm(tok6, tok, nil, 1e-6) }},
		{"rms_norm nil input", nil, func() error { return b.RMSNorm(tok, nil, vec8, 1e-6) }},
		{"rope heads do not divide width", []*engine.Tensor{tok}, func() error { return b.Rope(tok, tok, tab2, tab2, 3, engine.RopeHalf) }},
		{"rope odd head dim", []*engine.Tensor{tok5}, func() error { return b.Rope(tok5, tok5, tab2, tab2, 1, engine.RopeHalf) }},
		{"rope table width", []*engine.Tensor{tok}, func() error { return b.Rope(tok, tok, tab3, tab3, 2, engine.RopeInterleaved) }},
		{"rope table length", []*engine.Tensor{tok}, func() error { return b.Rope(tok, tok, tab6, tab6, 2, engine.RopeHalf) }},
		{"rope table batch", []*engine.Tensor{tok3, tabB}, func() error { return b.Rope(tok3, tok3, tabB, tabB, 2, engine.RopeHalf) }},
		{"rope cos and sin differ", []*engine.Tensor{tok}, func() error { return b.Rope(tok, tok, tab2, tab6, 2, engine.RopeHalf) }},
		{"rope unknown mode", []*engine.Tensor{tok}, func() error { return b.Rope(tok, tok, tab2, tab2, 2, engine.RopeMode(9)) }},
		{"rope dst shape", []*engine.Tensor{tok6, tok}, func() error { return b.Rope(tok6, tok, tab2, tab2, 2, engine.RopeHalf) }},
		{"rope nil table", nil, func() error { return b.Rope(tok, tok, nil, tab2, 2, engine.RopeHalf) }},
		{"swiglu shape mismatch", []*engine.Tensor{tok, tok6}, func() error { return b.SwiGLU(tok, tok, tok6) }},
		{"swiglu dst shape", []*engine.Tensor{tok6, tok}, func() error { return b.SwiGLU(tok6, tok, tok) }},
		{"swiglu F16 operand", []*engine.Tensor{h16}, func() error { return b.SwiGLU(tok, h16, tok) }},
		{"unary dst shape", []*engine.Tensor{tok6, tok}, func() error { return b.Unary(tok6, tok, engine.SiLU) }},
		{"unary unknown op", []*engine.Tensor{tok}, func() error { return b.Unary(tok, tok, engine.UnaryOp(200)) }},
		{"unary nil", nil, func() error { return b.Unary(nil, nil, engine.GELU) }},
		{"geglu odd width", []*engine.Tensor{odd, tok}, func() error { return b.GEGLU(tok, odd) }},
		{"geglu dst shape", []*engine.Tensor{tok}, func() error { return b.GEGLU(tok, tok) }},
		{"binary not broadcastable", []*engine.Tensor{tok, tok6}, func() error { return b.Binary(tok, tok, tok6, engine.Add) }},
		{"binary dst shape", []*engine.Tensor{vec8, tok}, func() error { return b.Binary(vec8, tok, vec8, engine.Mul) }},
		{"binary 5 dims", []*engine.Tensor{b5}, func() error { return b.Binary(b5, b5, b5, engine.Add) }},
		{"binary unknown op", []*engine.Tensor{tok}, func() error { return b.Binary(tok, tok, tok, engine.BinaryOp(200)) }},
		{"scale dst shape", []*engine.Tensor{tok6, tok}, func() error { return b.Scale(tok6, tok, 2, 0) }},
		{"upsample2x 3-d input", []*engine.Tensor{tok}, func() error { return b.Upsample2x(img, tok) }},
		{"upsample2x dst shape", []*engine.Tensor{img4, img}, func() error { return b.Upsample2x(img4, img) }},
		{"concat batch mismatch", []*engine.Tensor{tok, tok3}, func() error { return b.Concat(tok, tok, tok3) }},
		{"concat spatial mismatch", []*engine.Tensor{tok, tok5}, func() error { return b.Concat(tok, tok, tok5) }},
		{"concat dst shape", []*engine.Tensor{img4, img}, func() error { return b.Concat(img4, img, img) }},
		{"permute not a permutation", []*engine.Tensor{tok}, func() error { return b.Permute(tok, tok, []int{0, 1, 1}) }},
		{"permute wrong length", []*engine.Tensor{tok}, func() error { return b.Permute(tok, tok, []int{0, 1}) }},
		{"permute dst shape", []*engine.Tensor{tok, tok6}, func() error { return b.Permute(tok6, tok, []int{0, 2, 1}) }},
		{"embedding id out of range", []*engine.Tensor{tab}, func() error { return b.Embedding(emb, tab, []int32{0, 10, 1}) }},
		{"embedding negative id", []*engine.Tensor{tab}, func() error { return b.Embedding(emb, tab, []int32{0, -1, 1}) }},
		{"embedding no ids", []*engine.Tensor{tab}, func() error { return b.Embedding(emb, tab, nil) }},
		{"embedding dst shape", []*engine.Tensor{emb, tab}, func() error { return b.Embedding(emb, tab, []int32{0, 1}) }},
		{"copy dst shape", []*engine.Tensor{tok6, h16}, func() error { return b.Copy(tok6, h16) }},
		{"copy nil source", nil, func() error { return b.Copy(tok, nil) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := call(t, c.name, c.f)
			if err == nil {
				t.Fatalf("%s: no error", c.name)
			}
			if c.names == nil {
				return
			}
			msg := err.Error()
			for _, x := range c.names {
				if strings.Contains(msg, x.Name) {
					return
				}
			}
			t.Errorf("%s: error %q names none of the tensors involved", c.name, msg)
		})
	}
}
