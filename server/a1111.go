package server

import (
	"fmt"
	"math"
	"strings"
)

// The request and response shapes of AUTOMATIC1111's /sdapi/v1 API
// (modules/api/models.py and processing.py there), written for zimage:
// field names and JSON types match; fields zimage has no feature for are
// accepted and ignored, as A1111 ignores fields it does not know.

// txt2imgRequest is StableDiffusionProcessingTxt2Img's API model. Pointers
// tell a field left out (the model's default) from a zero.
type txt2imgRequest struct {
	Prompt           string         `json:"prompt"`
	NegativePrompt   string         `json:"negative_prompt"`
	Styles           []string       `json:"styles"`
	Seed             *int64         `json:"seed"`
	Subseed          *int64         `json:"subseed"`
	SubseedStrength  *float64       `json:"subseed_strength"`
	SeedResizeFromH  *int           `json:"seed_resize_from_h"`
	SeedResizeFromW  *int           `json:"seed_resize_from_w"`
	SamplerName      string         `json:"sampler_name"`
	SamplerIndex     string         `json:"sampler_index"`
	Scheduler        string         `json:"scheduler"`
	BatchSize        *int           `json:"batch_size"`
	NIter            *int           `json:"n_iter"`
	Steps            *int           `json:"steps"`
	CFGScale         *float64       `json:"cfg_scale"`
	Width            *int           `json:"width"`
	Height           *int           `json:"height"`
	RestoreFaces     *bool          `json:"restore_faces"`
	Tiling           *bool          `json:"tiling"`
	DoNotSaveSamples bool           `json:"do_not_save_samples"`
	DoNotSaveGrid    bool           `json:"do_not_save_grid"`
	Eta              *float64       `json:"eta"`
	OverrideSettings map[string]any `json:"override_settings"`
	RestoreAfter     *bool          `json:"override_settings_restore_afterwards"`
	EnableHR         bool           `json:"enable_hr"`
	ScriptName       *string        `json:"script_name"`
	ScriptArgs       []any          `json:"script_args"`
	SendImages       *bool          `json:"send_images"`
	SaveImages       bool           `json:"save_images"`
	AlwaysOnScripts  map[string]any `json:"alwayson_scripts"`
	ForceTaskID      *string        `json:"force_task_id"`
	Infotext         *string        `json:"infotext"`
}

// txt2imgParameters is the "parameters" echo of a txt2img response: the
// request with the defaults this model filled in.
type txt2imgParameters struct {
	Prompt            string         `json:"prompt"`
	NegativePrompt    string         `json:"negative_prompt"`
	Styles            []string       `json:"styles"`
	Seed              int64          `json:"seed"`
	Subseed           int64          `json:"subseed"`
	SubseedStrength   float64        `json:"subseed_strength"`
	SeedResizeFromH   int            `json:"seed_resize_from_h"`
	SeedResizeFromW   int            `json:"seed_resize_from_w"`
	SamplerName       string         `json:"sampler_name"`
	Scheduler         string         `json:"scheduler"`
	BatchSize         int            `json:"batch_size"`
	NIter             int            `json:"n_iter"`
	Steps             int            `json:"steps"`
	CFGScale          float64        `json:"cfg_scale"`
	Width             int            `json:"width"`
	Height            int            `json:"height"`
	RestoreFaces      *bool          `json:"restore_faces"`
	Tiling            *bool          `json:"tiling"`
	DoNotSaveSamples  bool           `json:"do_not_save_samples"`
	DoNotSaveGrid     bool           `json:"do_not_save_grid"`
	Eta               *float64       `json:"eta"`
	DenoisingStrength *float64       `json:"denoising_strength"`
	OverrideSettings  map[string]any `json:"override_settings"`
	RestoreAfter      bool           `json:"override_settings_restore_afterwards"`
	EnableHR          bool           `json:"enable_hr"`
	SamplerIndex      string         `json:"sampler_index"`
	ScriptName        *string        `json:"script_name"`
	ScriptArgs        []any          `json:"script_args"`
	SendImages        bool           `json:"send_images"`
	SaveImages        bool           `json:"save_images"`
	AlwaysOnScripts   map[string]any `json:"alwayson_scripts"`
	ForceTaskID       *string        `json:"force_task_id"`
	Infotext          *string        `json:"infotext"`
}

// txt2imgResponse is TextToImageResponse: images as base64 PNGs, the
// parameters echo, and info, a JSON document in a string.
type txt2imgResponse struct {
	Images     []string          `json:"images"`
	Parameters txt2imgParameters `json:"parameters"`
	Info       string            `json:"info"`
}

// processedInfo is Processed.js(): the info string's fields.
type processedInfo struct {
	Prompt             string         `json:"prompt"`
	AllPrompts         []string       `json:"all_prompts"`
	NegativePrompt     string         `json:"negative_prompt"`
	AllNegativePrompts []string       `json:"all_negative_prompts"`
	Seed               int64          `json:"seed"`
	AllSeeds           []int64        `json:"all_seeds"`
	Subseed            int64          `json:"subseed"`
	AllSubseeds        []int64        `json:"all_subseeds"`
	SubseedStrength    float64        `json:"subseed_strength"`
	Width              int            `json:"width"`
	Height             int            `json:"height"`
	SamplerName        string         `json:"sampler_name"`
	CFGScale           float64        `json:"cfg_scale"`
	Steps              int            `json:"steps"`
	BatchSize          int            `json:"batch_size"`
	RestoreFaces       bool           `json:"restore_faces"`
	FaceRestoration    *string        `json:"face_restoration_model"`
	SDModelName        string         `json:"sd_model_name"`
	SDModelHash        string         `json:"sd_model_hash"`
	SDVAEName          *string        `json:"sd_vae_name"`
	SDVAEHash          *string        `json:"sd_vae_hash"`
	SeedResizeFromW    int            `json:"seed_resize_from_w"`
	SeedResizeFromH    int            `json:"seed_resize_from_h"`
	DenoisingStrength  *float64       `json:"denoising_strength"`
	ExtraGenParams     map[string]any `json:"extra_generation_params"`
	IndexOfFirstImage  int            `json:"index_of_first_image"`
	Infotexts          []string       `json:"infotexts"`
	Styles             []string       `json:"styles"`
	JobTimestamp       string         `json:"job_timestamp"`
	ClipSkip           int            `json:"clip_skip"`
	IsUsingInpainting  bool           `json:"is_using_inpainting_conditioning"`
	Version            string         `json:"version"`
}

// progressResponse is ProgressResponse of GET /sdapi/v1/progress.
type progressResponse struct {
	Progress     float64       `json:"progress"`
	EtaRelative  float64       `json:"eta_relative"`
	State        progressState `json:"state"`
	CurrentImage *string       `json:"current_image"`
	Textinfo     *string       `json:"textinfo"`
}

// progressState is shared.state.dict().
type progressState struct {
	Skipped       bool   `json:"skipped"`
	Interrupted   bool   `json:"interrupted"`
	Job           string `json:"job"`
	JobCount      int    `json:"job_count"`
	JobTimestamp  string `json:"job_timestamp"`
	JobNo         int    `json:"job_no"`
	SamplingStep  int    `json:"sampling_step"`
	SamplingSteps int    `json:"sampling_steps"`
}

// taskProgress is the web UI's POST /internal/progress answer (A1111's
// ProgressResponse in modules/progress.py) with zimage's stage and queue
// position added.
type taskProgress struct {
	Active        bool     `json:"active"`
	Queued        bool     `json:"queued"`
	Completed     bool     `json:"completed"`
	Progress      *float64 `json:"progress"`
	Eta           *float64 `json:"eta"`
	LivePreview   *string  `json:"live_preview"`
	IDLivePreview int      `json:"id_live_preview"`
	Textinfo      *string  `json:"textinfo"`
	QueuePosition int      `json:"queue_position"`
	Stage         string   `json:"stage"`
	Step          int      `json:"step"`
	Steps         int      `json:"steps"`
	Image         int      `json:"image"`
	Images        int      `json:"images"`
}

type samplerItem struct {
	Name    string            `json:"name"`
	Aliases []string          `json:"aliases"`
	Options map[string]string `json:"options"`
}

type schedulerItem struct {
	Name           string   `json:"name"`
	Label          string   `json:"label"`
	Aliases        []string `json:"aliases"`
	DefaultRho     float64  `json:"default_rho"`
	NeedInnerModel bool     `json:"need_inner_model"`
}

type sdModelItem struct {
	Title     string  `json:"title"`
	ModelName string  `json:"model_name"`
	Hash      *string `json:"hash"`
	SHA256    *string `json:"sha256"`
	Filename  string  `json:"filename"`
	Config    *string `json:"config"`
}

type pngInfoRequest struct {
	Image string `json:"image"`
}

type pngInfoResponse struct {
	Info       string            `json:"info"`
	Items      map[string]string `json:"items"`
	Parameters map[string]any    `json:"parameters"`
}

// samplers are A1111's names for zimage's samplers, with A1111's aliases
// (and zimage's own short names, so CLI users can use either).
var samplers = []struct {
	label   string // A1111 name
	name    string // zimage's
	aliases []string
	options map[string]string
}{
	{"Euler a", "euler_a", []string{"k_euler_a", "k_euler_ancestral"}, map[string]string{"uses_ensd": "True"}},
	{"Euler", "euler", []string{"k_euler"}, map[string]string{}},
	{"DPM++ 2M", "dpmpp_2m", []string{"k_dpmpp_2m"}, map[string]string{}},
	{"DDIM", "ddim", []string{"ddim"}, map[string]string{}},
	{"PLMS", "pndm", []string{"plms"}, map[string]string{}},
	{"LCM", "lcm", []string{"k_lcm"}, map[string]string{}},
}

// karrasSamplers support the Karras sigma spacing.
var karrasSamplers = map[string]bool{"euler": true, "dpmpp_2m": true}

// resolveSampler maps an A1111 sampler name (with an optional " Karras"
// suffix), an alias or a zimage name to zimage's name; "" keeps the
// model's scheduler.
func resolveSampler(s string) (name string, karras bool, ok bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", false, true
	}
	if base, found := strings.CutSuffix(s, " Karras"); found {
		s, karras = base, true
	}
	l := strings.ToLower(s)
	for _, sm := range samplers {
		if l == strings.ToLower(sm.label) || l == sm.name {
			return sm.name, karras, true
		}
		for _, a := range sm.aliases {
			if l == a {
				return sm.name, karras, true
			}
		}
	}
	return "", false, false
}

// samplerLabel is the A1111 name of a zimage sampler.
func samplerLabel(name string) string {
	for _, sm := range samplers {
		if sm.name == name {
			return sm.label
		}
	}
	return name
}

// fieldError is a validation failure of one request field.
type fieldError struct {
	field, msg string
}

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

func fieldf(field, format string, args ...any) *fieldError {
	return &fieldError{field: field, msg: fmt.Sprintf(format, args...)}
}

// validationDetail is FastAPI's 422 body, which A1111 clients parse:
// {"detail": [{"loc": ["body", field], "msg": ..., "type": ...}]}.
type validationDetail struct {
	Loc  []any  `json:"loc"`
	Msg  string `json:"msg"`
	Type string `json:"type"`
}

// apiError is the body of A1111's other errors (api_middleware's
// handle_exception).
type apiError struct {
	Error  string `json:"error"`
	Detail string `json:"detail"`
	Body   string `json:"body"`
	Errors string `json:"errors"`
}

// finite reports whether a JSON number is usable.
func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
