package model

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

// MemoryEstimate is the device memory of one Z-Image generation at one
// size, stage by stage.
type MemoryEstimate struct {
	Size   int           `json:"size"` // image side in pixels
	Rows   int           `json:"rows"` // batch rows: 1, or 2 with guidance (prompt and negative prompt)
	Stages []StageMemory `json:"stages"`
	// PeakBytes is the largest stage's weights plus activations: the
	// device memory of a run that keeps only the running stage's weights
	// resident (the text encoder released before denoising).
	PeakBytes int64 `json:"peak_bytes"`
	// ResidentBytes is every stage's weights plus the largest stage's
	// activations: all weights resident.
	ResidentBytes int64 `json:"resident_bytes"`
}

// StageMemory is one stage of a MemoryEstimate.
type StageMemory struct {
	Stage string `json:"stage"` // "text_encoder", "transformer", "vae"
	// Tokens is the sequence length assumed: the text encoder's 512
	// tokens, the transformer's image plus caption tokens (each padded to
	// 32), the VAE's latent pixels.
	Tokens          int   `json:"tokens"`
	WeightBytes     int64 `json:"weight_bytes"`
	ActivationBytes int64 `json:"activation_bytes"`
}

// ZImageCaptionTokens is the longest caption ZImagePipeline encodes
// (max_sequence_length), which the estimates assume.
const ZImageCaptionTokens = 512

// zimageSeqMultiple is the transformer's SEQ_MULTI_OF: caption and image
// token runs are padded to multiples of it.
const zimageSeqMultiple = 32

// ZImageImageTokens is the transformer's image token count for an image of
// height x width pixels: the latent is 1/latentScale of the image, and the
// transformer patches it patch x patch.
func ZImageImageTokens(cfg *ZImageConfig, latentScale, height, width int) int {
	p := 2
	if len(cfg.AllPatchSize) > 0 && cfg.AllPatchSize[0] > 0 {
		p = cfg.AllPatchSize[0]
	}
	return (height / latentScale / p) * (width / latentScale / p)
}

func padSeq(n int) int { return (n + zimageSeqMultiple - 1) / zimageSeqMultiple * zimageSeqMultiple }

// ZImageFFNDim is the transformer blocks' SwiGLU width, int(dim / 3 * 8)
// as diffusers computes it.
func ZImageFFNDim(dim int) int { return int(float64(dim) / 3 * 8) }

// ZImageTransformerActivationBytes estimates the transformer's largest F32
// working set for rows sequences of imageTokens + captionTokens (each
// padded to 32): in a main block the residual stream, its normalised
// input, q, k, v, the attention output and its projection, and the
// modulated sum (8 x dim per token), the SwiGLU's two projections and
// their product (3 x the FFN width per token), and one head's score matrix
// for a backend without fused attention.
func ZImageTransformerActivationBytes(cfg *ZImageConfig, rows, imageTokens, captionTokens int) int64 {
	s := int64(padSeq(imageTokens) + padSeq(captionTokens))
	perRow := s*int64(8*cfg.Dim+3*ZImageFFNDim(cfg.Dim)) + s*s
	return 4 * int64(rows) * perRow
}

// Qwen3ActivationBytes estimates a Qwen3 text encoder's largest F32 working
// set for rows prompts of tokens tokens: the hidden state, its norm, the
// residual sum and attention output (4 x hidden), q (heads x head size),
// k and v (key/value heads x head size), the attention's pre-projection
// output (as wide as q), the MLP's gate, up and product (3 x
// intermediate), and one head's score matrix.
func Qwen3ActivationBytes(cfg *Qwen3Config, rows, tokens int) int64 {
	hd := cfg.HeadDim
	if hd == 0 && cfg.NumAttentionHeads > 0 {
		hd = cfg.HiddenSize / cfg.NumAttentionHeads
	}
	q, kv := cfg.NumAttentionHeads*hd, cfg.NumKeyValueHeads*hd
	t := int64(tokens)
	perRow := t*int64(4*cfg.HiddenSize+2*q+2*kv+3*cfg.IntermediateSize) + t*t
	return 4 * int64(rows) * perRow
}

// zimageInfo fills the component summaries and the memory estimates of a
// Z-Image checkpoint.
func (c *Checkpoint) zimageInfo(in *Info) {
	q := c.Qwen
	last := fmt.Sprintf("model.layers.%d.", q.Config.NumHiddenLayers-1)
	te := in.add(q.Name, q.Class, q.Source, func(k string) bool {
		// hidden_states[-2] needs neither the last layer nor the final
		// norm; the LM head (absent in Z-Image) is never used.
		return strings.HasPrefix(k, "model.") && !strings.HasPrefix(k, last) && !strings.HasPrefix(k, "model.norm.")
	})
	tr := in.add("transformer", c.Transformer.Class, c.Transformer.Source, nil)
	vae := in.add("vae", c.VAE.Class, c.VAE.Source, vaeDecoderKey)

	scale := 1 << max(len(c.VAE.Config.BlockOutChannels)-1, 0)
	for _, m := range []struct{ size, rows int }{{512, 1}, {1024, 1}, {1024, 2}} {
		img := ZImageImageTokens(c.Transformer.Config, scale, m.size, m.size)
		lat := m.size / scale
		e := MemoryEstimate{Size: m.size, Rows: m.rows, Stages: []StageMemory{
			{Stage: "text_encoder", Tokens: ZImageCaptionTokens, WeightBytes: te.DeviceBytes,
				ActivationBytes: Qwen3ActivationBytes(q.Config, m.rows, ZImageCaptionTokens)},
			{Stage: "transformer", Tokens: padSeq(img) + padSeq(ZImageCaptionTokens), WeightBytes: tr.DeviceBytes,
				ActivationBytes: ZImageTransformerActivationBytes(c.Transformer.Config, m.rows, img, ZImageCaptionTokens)},
			{Stage: "vae", Tokens: lat * lat, WeightBytes: vae.DeviceBytes,
				ActivationBytes: VAEDecodeBytes(c.VAE.Config, 1, lat, lat)},
		}}
		var act int64
		for _, s := range e.Stages {
			e.PeakBytes = max(e.PeakBytes, s.WeightBytes+s.ActivationBytes)
			act = max(act, s.ActivationBytes)
		}
		e.ResidentBytes = in.DeviceWeightBytes + act
		in.Memory = append(in.Memory, e)
		if m.size == 1024 && m.rows == 1 {
			in.ActivationBytes, in.ActivationSize, in.ActivationRows = act, m.size, m.rows
		}
	}
	in.DeviceBytes = in.DeviceWeightBytes + in.ActivationBytes
}

// writeMemory renders Memory.
func (in *Info) writeMemory(b *strings.Builder) {
	b.WriteString("\nestimated device memory (weights as the device holds them: F16 matrices, F32 vectors, quantized blocks, F32 activations, whole-image VAE decode):\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "size\trows\tstage\ttokens\tweights\tactivations\t")
	for _, e := range in.Memory {
		for _, s := range e.Stages {
			fmt.Fprintf(tw, "%dx%d\t%d\t%s\t%d\t%s\t%s\t\n", e.Size, e.Size, e.Rows, s.Stage, s.Tokens, FormatBytes(s.WeightBytes), FormatBytes(s.ActivationBytes))
		}
		fmt.Fprintf(tw, "\t\tpeak, one stage resident\t\t\t%s\t\n", FormatBytes(e.PeakBytes))
		fmt.Fprintf(tw, "\t\tpeak, all resident\t\t\t%s\t\n", FormatBytes(e.ResidentBytes))
	}
	tw.Flush()
	b.WriteString("rows 2: classifier-free guidance (Z-Image-Turbo runs with guidance 0, 1 row); the caption is assumed at its 512-token maximum\n")
}
