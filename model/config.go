package model

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// IntOrList is a config value that diffusers accepts as one int or as a list
// with one entry per block (attention_head_dim, transformer_layers_per_block,
// cross_attention_dim, num_attention_heads). Null leaves it empty.
type IntOrList []int

// UnmarshalJSON accepts an int, a list of ints, or null.
func (v *IntOrList) UnmarshalJSON(b []byte) error {
	if string(bytes.TrimSpace(b)) == "null" {
		*v = nil // json.Unmarshal of null into an int would give 0
		return nil
	}
	var n int
	if err := json.Unmarshal(b, &n); err == nil {
		*v = IntOrList{n}
		return nil
	}
	var l []int
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("want an int or a list of ints, got %s", b)
	}
	*v = l
	return nil
}

// At returns the value for block i: the single value, or the list's entry.
func (v IntOrList) At(i int) int {
	if len(v) == 1 {
		return v[0]
	}
	if i < len(v) {
		return v[i]
	}
	return 0
}

// UNetConfig is diffusers' UNet2DConditionModel config.json
// (diffusers/models/unets/unet_2d_condition.py). Only the fields the
// supported architectures use are read; Validate rejects the rest.
type UNetConfig struct {
	InChannels                   int       `json:"in_channels"`
	OutChannels                  int       `json:"out_channels"`
	BlockOutChannels             []int     `json:"block_out_channels"`
	DownBlockTypes               []string  `json:"down_block_types"`
	UpBlockTypes                 []string  `json:"up_block_types"`
	MidBlockType                 *string   `json:"mid_block_type"`
	LayersPerBlock               int       `json:"layers_per_block"`
	AttentionHeadDim             IntOrList `json:"attention_head_dim"`
	NumAttentionHeads            IntOrList `json:"num_attention_heads"`
	CrossAttentionDim            IntOrList `json:"cross_attention_dim"`
	TransformerLayersPerBlock    IntOrList `json:"transformer_layers_per_block"`
	UseLinearProjection          bool      `json:"use_linear_projection"`
	NormNumGroups                int       `json:"norm_num_groups"`
	NormEps                      float32   `json:"norm_eps"`
	FlipSinToCos                 bool      `json:"flip_sin_to_cos"`
	FreqShift                    float64   `json:"freq_shift"`
	DownsamplePadding            int       `json:"downsample_padding"`
	AdditionEmbedType            *string   `json:"addition_embed_type"`
	AdditionTimeEmbedDim         int       `json:"addition_time_embed_dim"`
	ProjectionClassEmbedInputDim int       `json:"projection_class_embeddings_input_dim"`
	UpcastAttention              bool      `json:"upcast_attention"`
	SampleSize                   int       `json:"sample_size"`
	ResnetTimeScaleShift         string    `json:"resnet_time_scale_shift"`
	TimeCondProjDim              *int      `json:"time_cond_proj_dim"`
	ClassEmbedType               *string   `json:"class_embed_type"`
	ConvInKernel                 int       `json:"conv_in_kernel"`
	ConvOutKernel                int       `json:"conv_out_kernel"`

	// Read only so that Validate can reject variants the UNet does not
	// implement; the SD 1.x/2.x/XL configs leave them at their defaults.
	CenterInputSample                bool            `json:"center_input_sample"`
	TimeEmbeddingType                string          `json:"time_embedding_type"`
	TimeEmbeddingDim                 *int            `json:"time_embedding_dim"`
	TimeEmbeddingActFn               *string         `json:"time_embedding_act_fn"`
	TimestepPostAct                  *string         `json:"timestep_post_act"`
	ActFn                            string          `json:"act_fn"`
	NumClassEmbeds                   *int            `json:"num_class_embeds"`
	EncoderHidDimType                *string         `json:"encoder_hid_dim_type"`
	OnlyCrossAttention               json.RawMessage `json:"only_cross_attention"` // bool or list
	DualCrossAttention               bool            `json:"dual_cross_attention"`
	MidBlockOnlyCrossAttention       *bool           `json:"mid_block_only_cross_attention"`
	MidBlockScaleFactor              *float64        `json:"mid_block_scale_factor"`
	ResnetOutScaleFactor             *float64        `json:"resnet_out_scale_factor"`
	ResnetSkipTimeAct                bool            `json:"resnet_skip_time_act"`
	CrossAttentionNorm               *string         `json:"cross_attention_norm"`
	AttentionType                    string          `json:"attention_type"`
	ReverseTransformerLayersPerBlock json.RawMessage `json:"reverse_transformer_layers_per_block"` // list of lists
}

// VAEConfig is diffusers' AutoencoderKL config.json
// (diffusers/models/autoencoders/autoencoder_kl.py).
type VAEConfig struct {
	InChannels           int      `json:"in_channels"`
	OutChannels          int      `json:"out_channels"`
	LatentChannels       int      `json:"latent_channels"`
	BlockOutChannels     []int    `json:"block_out_channels"`
	DownBlockTypes       []string `json:"down_block_types"`
	UpBlockTypes         []string `json:"up_block_types"`
	LayersPerBlock       int      `json:"layers_per_block"`
	NormNumGroups        int      `json:"norm_num_groups"`
	ScalingFactor        float64  `json:"scaling_factor"`
	ShiftFactor          *float64 `json:"shift_factor"`
	ForceUpcast          bool     `json:"force_upcast"`
	MidBlockAddAttention *bool    `json:"mid_block_add_attention"`
	UsePostQuantConv     *bool    `json:"use_post_quant_conv"`
	UseQuantConv         *bool    `json:"use_quant_conv"`
	SampleSize           int      `json:"sample_size"`
}

// CLIPTextConfig is transformers' CLIPTextConfig config.json
// (transformers/models/clip/configuration_clip.py), for CLIPTextModel and
// CLIPTextModelWithProjection.
type CLIPTextConfig struct {
	Architectures         []string `json:"architectures"`
	HiddenSize            int      `json:"hidden_size"`
	IntermediateSize      int      `json:"intermediate_size"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumAttentionHeads     int      `json:"num_attention_heads"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	VocabSize             int      `json:"vocab_size"`
	HiddenAct             string   `json:"hidden_act"`
	LayerNormEps          float32  `json:"layer_norm_eps"`
	ProjectionDim         int      `json:"projection_dim"`
	EOSTokenID            int      `json:"eos_token_id"`
}

// WithProjection reports whether the checkpoint is a
// CLIPTextModelWithProjection (SDXL's second encoder).
func (c *CLIPTextConfig) WithProjection() bool {
	for _, a := range c.Architectures {
		if a == "CLIPTextModelWithProjection" {
			return true
		}
	}
	return false
}

// Qwen3Config is transformers' Qwen3Config config.json
// (transformers/models/qwen3/configuration_qwen3.py): Z-Image's text
// encoder, a Qwen3Model (the decoder stack without the LM head).
type Qwen3Config struct {
	Architectures         []string `json:"architectures"`
	HiddenSize            int      `json:"hidden_size"`
	IntermediateSize      int      `json:"intermediate_size"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumAttentionHeads     int      `json:"num_attention_heads"`
	NumKeyValueHeads      int      `json:"num_key_value_heads"`
	HeadDim               int      `json:"head_dim"`
	HiddenAct             string   `json:"hidden_act"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	RMSNormEps            float32  `json:"rms_norm_eps"`
	RopeTheta             float64  `json:"rope_theta"`
	RopeScaling           any      `json:"rope_scaling"` // null for Z-Image; anything else is refused
	AttentionBias         bool     `json:"attention_bias"`
	VocabSize             int      `json:"vocab_size"`
	TieWordEmbeddings     bool     `json:"tie_word_embeddings"`
	UseSlidingWindow      bool     `json:"use_sliding_window"`
	BOSTokenID            int      `json:"bos_token_id"`
	EOSTokenID            int      `json:"eos_token_id"`
	TorchDType            string   `json:"torch_dtype"`
}

// ZImageConfig is diffusers' ZImageTransformer2DModel config.json
// (diffusers/models/transformers/transformer_z_image.py): the S3-DiT of
// Z-Image-Turbo.
type ZImageConfig struct {
	AllPatchSize   []int   `json:"all_patch_size"`
	AllFPatchSize  []int   `json:"all_f_patch_size"`
	InChannels     int     `json:"in_channels"`
	Dim            int     `json:"dim"`
	NLayers        int     `json:"n_layers"`
	NRefinerLayers int     `json:"n_refiner_layers"`
	NHeads         int     `json:"n_heads"`
	NKVHeads       int     `json:"n_kv_heads"`
	NormEps        float32 `json:"norm_eps"`
	QKNorm         bool    `json:"qk_norm"`
	CapFeatDim     int     `json:"cap_feat_dim"`
	RopeTheta      float64 `json:"rope_theta"`
	TScale         float64 `json:"t_scale"`
	AxesDims       []int   `json:"axes_dims"`
	AxesLens       []int   `json:"axes_lens"`
}

// SchedulerConfig is a diffusers scheduler_config.json; the fields are the
// union of what the supported schedulers read.
type SchedulerConfig struct {
	ClassName              string    `json:"_class_name"`
	NumTrainTimesteps      int       `json:"num_train_timesteps"`
	BetaStart              float64   `json:"beta_start"`
	BetaEnd                float64   `json:"beta_end"`
	BetaSchedule           string    `json:"beta_schedule"`
	TrainedBetas           []float64 `json:"trained_betas"`
	PredictionType         string    `json:"prediction_type"`
	TimestepSpacing        string    `json:"timestep_spacing"`
	StepsOffset            int       `json:"steps_offset"`
	SetAlphaToOne          bool      `json:"set_alpha_to_one"`
	SkipPRKSteps           bool      `json:"skip_prk_steps"`
	ClipSample             bool      `json:"clip_sample"`
	UseKarrasSigmas        bool      `json:"use_karras_sigmas"`
	InterpolationType      string    `json:"interpolation_type"`
	TimestepType           string    `json:"timestep_type"`
	RescaleBetasZeroSNR    bool      `json:"rescale_betas_zero_snr"`
	OriginalInferenceSteps int       `json:"original_inference_steps"`
	FinalSigmasType        string    `json:"final_sigmas_type"`
	SolverOrder            int       `json:"solver_order"`
	AlgorithmType          string    `json:"algorithm_type"`
	LowerOrderFinal        *bool     `json:"lower_order_final"`

	// FlowMatchEulerDiscreteScheduler (Z-Image, FLUX, SD3).
	Shift                *float64 `json:"shift"`
	UseDynamicShifting   bool     `json:"use_dynamic_shifting"`
	BaseShift            *float64 `json:"base_shift"`
	MaxShift             *float64 `json:"max_shift"`
	BaseImageSeqLen      *int     `json:"base_image_seq_len"`
	MaxImageSeqLen       *int     `json:"max_image_seq_len"`
	ShiftTerminal        *float64 `json:"shift_terminal"`
	InvertSigmas         bool     `json:"invert_sigmas"`
	TimeShiftType        string   `json:"time_shift_type"`
	StochasticSampling   bool     `json:"stochastic_sampling"`
	UseExponentialSigmas bool     `json:"use_exponential_sigmas"`
	UseBetaSigmas        bool     `json:"use_beta_sigmas"`
}

// ModelIndex is a diffusers pipeline's model_index.json: the pipeline class
// and, per component, [library, class] (null for absent components).
type ModelIndex struct {
	ClassName                string
	ForceZerosForEmptyPrompt bool
	Components               map[string][2]string
}

// UnmarshalJSON reads the mixed object diffusers writes.
func (m *ModelIndex) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	m.Components = map[string][2]string{}
	for k, v := range raw {
		switch k {
		case "_class_name":
			if err := json.Unmarshal(v, &m.ClassName); err != nil {
				return fmt.Errorf("_class_name: %w", err)
			}
		case "force_zeros_for_empty_prompt":
			if err := json.Unmarshal(v, &m.ForceZerosForEmptyPrompt); err != nil {
				return fmt.Errorf("force_zeros_for_empty_prompt: %w", err)
			}
		default:
			var pair []*string
			if json.Unmarshal(v, &pair) == nil && len(pair) == 2 && pair[0] != nil && pair[1] != nil {
				m.Components[k] = [2]string{*pair[0], *pair[1]}
			}
		}
	}
	return nil
}
