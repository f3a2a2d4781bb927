package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/sched/sampler"
)

// routes maps every path:
// parse into a spec, submit a job, answer from its outcome.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /sdapi/v1/txt2img", s.txt2img)
	mux.HandleFunc("POST /sdapi/v1/img2img", s.img2img)
	mux.HandleFunc("GET /sdapi/v1/progress", s.progress)
	mux.HandleFunc("POST /sdapi/v1/interrupt", s.interrupt)
	mux.HandleFunc("POST /sdapi/v1/skip", s.skip)
	mux.HandleFunc("GET /sdapi/v1/sd-models", s.sdModels)
	mux.HandleFunc("GET /sdapi/v1/samplers", s.samplerList)
	mux.HandleFunc("GET /sdapi/v1/schedulers", s.schedulerList)
	mux.HandleFunc("GET /sdapi/v1/options", s.getOptions)
	mux.HandleFunc("POST /sdapi/v1/options", s.setOptions)
	mux.HandleFunc("POST /sdapi/v1/refresh-checkpoints", s.refreshCheckpoints)
	mux.HandleFunc("GET /sdapi/v1/loras", s.lorasList)
	mux.HandleFunc("POST /sdapi/v1/refresh-loras", s.refreshLoRAs)
	mux.HandleFunc("POST /sdapi/v1/png-info", s.pngInfo)
	mux.HandleFunc("GET /sdapi/v1/memory", s.memory)
	mux.HandleFunc("GET /sdapi/v1/cmd-flags", s.cmdFlags)
	mux.HandleFunc("POST /internal/progress", s.taskProgress)
	mux.HandleFunc("GET /zimage/v1/info", s.info)
	mux.HandleFunc("GET /zimage/v1/gallery", s.gallery)
	mux.HandleFunc("GET /outputs/{path...}", s.out.serve)
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", s.met.handler())
	mux.HandleFunc("GET /{$}", s.index)
	mux.Handle("GET /static/", staticHandler())
	return withLimits(s.withOrigins(s.withAuth(mux)))
}

// readBody reads a capped body; false means an error was answered.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeJSON(w, http.StatusRequestEntityTooLarge, apiError{Error: "HTTPException",
				Detail: fmt.Sprintf("request body over %d MiB", MaxBody>>20)})
			return nil, false
		}
		writeJSON(w, http.StatusBadRequest, apiError{Error: "HTTPException", Detail: "reading the body: " + err.Error()})
		return nil, false
	}
	return body, true
}

// writeInvalid answers 422 in FastAPI's validation shape.
func writeInvalid(w http.ResponseWriter, err error) {
	loc := []any{"body"}
	var fe *fieldError
	msg := err.Error()
	if errors.As(err, &fe) {
		if fe.field != "" {
			loc = append(loc, fe.field)
		}
		msg = err.Error()
		if fe.field == "" {
			msg = fe.msg
		}
	}
	writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"detail": []validationDetail{{Loc: loc, Msg: msg, Type: "value_error"}}})
}

func newTaskID() string {
	var b [8]byte
	rand.Read(b[:])
	return "task(" + hex.EncodeToString(b[:]) + ")"
}

func (s *Server) sizeMultiple() int {
	if m, _ := s.models.current(); m != nil {
		return m.SizeMultiple()
	}
	return 8
}

// submit queues a job and waits for it, or for its client to leave.
// false means an answer was already written.
func (s *Server) submit(w http.ResponseWriter, r *http.Request, sp spec) (*job, bool) {
	id := newTaskID()
	if sp.req.ForceTaskID != nil && *sp.req.ForceTaskID != "" {
		id = *sp.req.ForceTaskID
	}
	ctx, stop := context.WithCancelCause(context.Background())
	j := &job{id: id, spec: sp, ctx: ctx, stop: stop, done: make(chan struct{})}
	if err := s.q.submit(j); err != nil {
		stop(err)
		s.met.jobs.WithLabelValues("rejected").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(s.retryAfter()))
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "HTTPException",
			Detail: fmt.Sprintf("%v: %d jobs are waiting; retry later", err, s.cfg.Queue)})
		return nil, false
	}
	s.updateQueueMetrics()
	select {
	case <-j.done:
		return j, true
	case <-r.Context().Done():
		s.q.mu.Lock()
		waiting := s.q.position(j) > 0
		s.q.mu.Unlock()
		s.q.abandon(j)
		if waiting {
			s.met.jobs.WithLabelValues("cancelled").Inc()
		}
		s.updateQueueMetrics()
		s.log.Info("client gone, job cancelled", "id", j.id)
		return nil, false
	}
}

// retryAfter guesses when a place in the queue frees: the last image's
// time, at least a second.
func (s *Server) retryAfter() int {
	s.models.mu.Lock()
	last := s.models.last
	s.models.mu.Unlock()
	if last == nil {
		return 5
	}
	return max(1, int(math.Ceil(last.Total.Seconds())))
}

func (s *Server) txt2img(w http.ResponseWriter, r *http.Request) {
	s.serveJob(w, r, parseTxt2img, func(j *job, o *outcome) any { return s.txt2imgAnswer(j, o) })
}

// serveJob is a generation route: the body parsed into a spec (a 422
// naming the field when it is invalid), queued, waited for, and answered.
func (s *Server) serveJob(w http.ResponseWriter, r *http.Request, parse func(body []byte, mult, maxSide int) (spec, error),
	answer func(*job, *outcome) any) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	sp, err := parse(body, s.sizeMultiple(), s.cfg.MaxSide)
	if err == nil {
		err = s.checkLoRAs(sp.prompt)
	}
	if err != nil {
		s.met.jobs.WithLabelValues("invalid").Inc()
		writeInvalid(w, err)
		return
	}
	if !s.checkpointKnown(w, sp.checkpoint) {
		return
	}
	j, ok := s.submit(w, r, sp)
	if !ok {
		return
	}
	o := j.out
	if o.err != nil && !o.interrupted {
		s.writeJobError(w, o.err)
		return
	}
	writeJSON(w, http.StatusOK, answer(j, o))
}

// checkpointKnown reports whether a requested checkpoint ("" = the current
// one) exists, answering 404 when it does not.
func (s *Server) checkpointKnown(w http.ResponseWriter, name string) bool {
	if name == "" {
		return true
	}
	if _, ok := s.models.find(name); !ok {
		s.models.scan() // A1111 refreshes once before giving up
		if _, ok := s.models.find(name); !ok {
			writeJSON(w, http.StatusNotFound, apiError{Error: "HTTPException", Detail: "Model not found"})
			return false
		}
	}
	return true
}

// writeJobError answers a job that failed, A1111-shaped.
func (s *Server) writeJobError(w http.ResponseWriter, err error) {
	var fe *fieldError
	var nf *notFoundError
	var nan *model.NonFiniteOutputError
	var se *sampler.StrengthError
	var ie *zimage.InputError
	switch {
	case errors.As(err, &fe):
		writeInvalid(w, err)
	case errors.As(err, &se):
		writeInvalid(w, fieldf("denoising_strength", "%v with %d steps runs no step: steps x denoising_strength must reach 1", se.Strength, se.Steps))
	case errors.As(err, &ie):
		field := "init_images"
		if ie.What == "mask" {
			field = "mask"
		}
		writeInvalid(w, fieldf(field, "%v", ie.Err))
	case loraRequestError(err):
		writeInvalid(w, fieldf("prompt", "%v", err))
	case errors.As(err, &nf):
		writeJSON(w, http.StatusNotFound, apiError{Error: "HTTPException", Detail: "Model not found", Errors: err.Error()})
	case errors.Is(err, errShuttingDown):
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "HTTPException", Detail: err.Error()})
	case errors.As(err, &nan):
		writeJSON(w, http.StatusInternalServerError, apiError{Error: "NonFiniteOutputError",
			Detail: "the model produced NaN or Inf values, so no image is returned: " + err.Error(), Errors: err.Error()})
	default:
		// A1111 names the exception's class; the innermost error's type is
		// the closest (e.g. *errors.errorString for a plain error).
		inner := err
		for u := errors.Unwrap(inner); u != nil; u = errors.Unwrap(inner) {
			inner = u
		}
		writeJSON(w, http.StatusInternalServerError, apiError{Error: strings.TrimPrefix(fmt.Sprintf("%T", inner), "*"), Detail: err.Error(), Errors: err.Error()})
	}
}

func (s *Server) txt2imgAnswer(j *job, o *outcome) txt2imgResponse {
	sp := j.spec
	r := sp.req
	label, _ := strings.CutSuffix(o.sampler, " Karras")
	if label == "" {
		label = samplerLabel(sp.sampler)
	}
	sched := "automatic"
	if sp.karras {
		sched = "karras"
	}
	p := txt2imgParameters{
		Prompt: r.Prompt, NegativePrompt: r.NegativePrompt, Styles: r.Styles, Seed: sp.seed, Subseed: -1,
		SeedResizeFromH: -1, SeedResizeFromW: -1, SamplerName: label, Scheduler: sched,
		BatchSize: sp.batch, NIter: sp.iter, Steps: o.steps, CFGScale: o.cfg, Width: o.width, Height: o.height,
		RestoreFaces: r.RestoreFaces, Tiling: r.Tiling, DoNotSaveSamples: r.DoNotSaveSamples, DoNotSaveGrid: r.DoNotSaveGrid,
		Eta: r.Eta, OverrideSettings: r.OverrideSettings, RestoreAfter: true, EnableHR: r.EnableHR,
		SamplerIndex: "Euler", ScriptName: r.ScriptName, ScriptArgs: r.ScriptArgs, SendImages: sp.send,
		SaveImages: sp.save, AlwaysOnScripts: r.AlwaysOnScripts, ForceTaskID: r.ForceTaskID, Infotext: r.Infotext,
	}
	if r.Subseed != nil {
		p.Subseed = *r.Subseed
	}
	if r.SubseedStrength != nil {
		p.SubseedStrength = *r.SubseedStrength
	}
	if r.SamplerIndex != "" {
		p.SamplerIndex = r.SamplerIndex
	}
	if r.RestoreAfter != nil {
		p.RestoreAfter = *r.RestoreAfter
	}
	if p.Styles == nil {
		p.Styles = []string{}
	}
	if p.OverrideSettings == nil {
		p.OverrideSettings = map[string]any{}
	}
	if p.ScriptArgs == nil {
		p.ScriptArgs = []any{}
	}
	if p.AlwaysOnScripts == nil {
		p.AlwaysOnScripts = map[string]any{}
	}
	n := sp.batch * sp.iter
	subseed := o.seed
	if p.Subseed >= 0 {
		subseed = p.Subseed
	}
	info := processedInfo{
		Prompt: sp.prompt, NegativePrompt: sp.negative, Seed: o.seed, Subseed: subseed,
		SubseedStrength: p.SubseedStrength, Width: o.width, Height: o.height, SamplerName: label,
		CFGScale: o.cfg, Steps: o.steps, BatchSize: sp.batch, SDModelName: o.model.Name, SDModelHash: o.model.Hash,
		SeedResizeFromW: -1, SeedResizeFromH: -1, ExtraGenParams: map[string]any{}, Infotexts: []string{},
		Styles: p.Styles, JobTimestamp: j.started.Format("20060102150405"), ClipSkip: 1, Version: "zimage " + zimage.Version,
	}
	if sp.karras {
		info.ExtraGenParams["Schedule type"] = "Karras"
	}
	for i := 0; i < n; i++ {
		info.AllPrompts = append(info.AllPrompts, sp.prompt)
		info.AllNegativePrompts = append(info.AllNegativePrompts, sp.negative)
		info.AllSeeds = append(info.AllSeeds, o.seed+int64(i))
		info.AllSubseeds = append(info.AllSubseeds, subseed+int64(i))
	}
	if o.result != nil && o.result.Parameters.LoRAHashes != "" {
		info.ExtraGenParams["Lora hashes"] = o.result.Parameters.LoRAHashes
	}
	if i := sp.i2i; i != nil {
		d := i.strength
		info.DenoisingStrength = &d
		p.DenoisingStrength = &d
		if i.mask != nil {
			info.ExtraGenParams["Mask blur"] = i.maskBlur
		}
	}
	images := []string{}
	for _, g := range o.images {
		info.Infotexts = append(info.Infotexts, g.info)
		if sp.send {
			images = append(images, base64.StdEncoding.EncodeToString(g.png))
		}
	}
	js, _ := json.Marshal(info)
	return txt2imgResponse{Images: images, Parameters: p, Info: string(js)}
}

// encodePNG encodes a result's one image with its A1111 parameters chunk.
func encodePNG(res *zimage.Result) ([]byte, error) {
	var buf bytes.Buffer
	if err := zimage.EncodePNG(&buf, res.Images[0], res.Metadata); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (s *Server) progress(w http.ResponseWriter, r *http.Request) {
	s.q.mu.Lock()
	defer s.q.mu.Unlock()
	resp := progressResponse{State: progressState{JobTimestamp: "0"}}
	if j := s.q.running; j != nil {
		frac, eta := progressOf(j, time.Now())
		resp.Progress, resp.EtaRelative = frac, eta
		resp.State = progressState{
			Skipped: j.skipped, Interrupted: errors.Is(context.Cause(j.ctx), errInterrupted), Job: j.kind(),
			JobCount: j.images, JobTimestamp: j.started.Format("20060102150405"), JobNo: j.image,
			SamplingStep: j.step, SamplingSteps: j.steps,
		}
		if j.stage != "" {
			t := fmt.Sprintf("%s: step %d/%d, image %d/%d", j.stage, j.step, j.steps, j.image+1, j.images)
			resp.Textinfo = &t
		}
		if j.preview != "" {
			img := j.preview
			resp.CurrentImage = &img
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) taskProgress(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var req struct {
		IDTask        string `json:"id_task"`
		IDLivePreview *int   `json:"id_live_preview"`
	}
	if err := decodeBody(body, &req); err != nil {
		writeInvalid(w, err)
		return
	}
	s.q.mu.Lock()
	defer s.q.mu.Unlock()
	resp := taskProgress{IDLivePreview: -1}
	j := s.q.find(req.IDTask)
	switch {
	case j == nil:
		t := "Waiting..."
		resp.Textinfo = &t
	case j.out != nil:
		resp.Completed = true
		one := 1.0
		resp.Progress = &one
	case s.q.running == j:
		resp.Active = true
		frac, eta := progressOf(j, time.Now())
		resp.Progress, resp.Eta = &frac, &eta
		resp.Stage, resp.Step, resp.Steps, resp.Image, resp.Images = j.stage, j.step, j.steps, j.image, j.images
		// A1111 sends a preview only when it is newer than the client's.
		if j.preview != "" && (req.IDLivePreview == nil || *req.IDLivePreview < j.previewID) {
			lp := "data:image/png;base64," + j.preview
			resp.LivePreview = &lp
		}
		if j.preview != "" {
			resp.IDLivePreview = j.previewID
		}
	default:
		resp.Queued = true
		resp.QueuePosition = s.q.position(j)
		t := fmt.Sprintf("In queue: %d/%d", resp.QueuePosition, len(s.q.waiting))
		resp.Textinfo = &t
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) interrupt(w http.ResponseWriter, r *http.Request) {
	// A1111's interrupt takes no body and stops the running job; the web UI
	// names its own task so that it never stops another browser's.
	var req struct {
		IDTask string `json:"id_task"`
	}
	if body, ok := readBody(w, r); !ok {
		return
	} else if len(bytes.TrimSpace(body)) > 0 {
		if err := decodeBody(body, &req); err != nil {
			writeInvalid(w, err)
			return
		}
	}
	if s.q.interrupt(req.IDTask) {
		s.log.Info("interrupt", "id", req.IDTask)
	}
	s.updateQueueMetrics()
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) skip(w http.ResponseWriter, r *http.Request) {
	s.q.skip()
	writeJSON(w, http.StatusOK, nil)
}

func (s *Server) sdModels(w http.ResponseWriter, r *http.Request) {
	out := []sdModelItem{}
	for _, c := range s.models.checkpoints() {
		it := sdModelItem{Title: c.title, ModelName: strings.TrimSuffix(c.name, filepath.Ext(c.name)), Filename: c.path}
		if c.hash != "" {
			h := c.hash
			it.Hash = &h
		}
		out = append(out, it)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) samplerList(w http.ResponseWriter, r *http.Request) {
	out := []samplerItem{}
	for _, sm := range samplers {
		out = append(out, samplerItem{Name: sm.label, Aliases: sm.aliases, Options: sm.options})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) schedulerList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, []schedulerItem{
		{Name: "automatic", Label: "Automatic", DefaultRho: -1},
		{Name: "karras", Label: "Karras", DefaultRho: 7},
	})
}

func (s *Server) getOptions(w http.ResponseWriter, r *http.Request) {
	_, ck := s.models.current()
	writeJSON(w, http.StatusOK, map[string]any{
		"sd_model_checkpoint":         ck.title,
		"sd_checkpoint_hash":          ck.hash,
		"samples_save":                true,
		"samples_format":              "png",
		"outdir_samples":              "",
		"outdir_txt2img_samples":      filepath.Join(s.cfg.Outputs, txt2imgDir),
		"enable_pnginfo":              true,
		"CLIP_stop_at_last_layers":    1,
		"sd_vae":                      "Automatic",
		"live_previews_enable":        s.previews.Load(),
		"show_progress_every_n_steps": -1,
	})
}

// setOptions honours sd_model_checkpoint (switching the model in the
// queue, after the jobs ahead of it) and accepts the rest without effect.
func (s *Server) setOptions(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var req map[string]any
	if err := decodeBody(body, &req); err != nil {
		writeInvalid(w, err)
		return
	}
	if v, ok := req["live_previews_enable"]; ok {
		on, isBool := v.(bool)
		if !isBool {
			writeInvalid(w, fieldf("live_previews_enable", "want true or false, got %T", v))
			return
		}
		s.previews.Store(on)
	}
	v, ok := req["sd_model_checkpoint"]
	if !ok {
		writeJSON(w, http.StatusOK, nil)
		return
	}
	name, isStr := v.(string)
	if !isStr {
		writeInvalid(w, fieldf("sd_model_checkpoint", "want a string, got %T", v))
		return
	}
	if _, found := s.models.find(name); !found {
		writeJSON(w, http.StatusNotFound, apiError{Error: "RuntimeError", Detail: fmt.Sprintf("model %q not found", name)})
		return
	}
	j, ok := s.submit(w, r, spec{checkpoint: name, loadOnly: true})
	if !ok {
		return
	}
	if j.out.err != nil {
		s.writeJobError(w, j.out.err)
		return
	}
	writeJSON(w, http.StatusOK, nil)
}

func (s *Server) refreshCheckpoints(w http.ResponseWriter, r *http.Request) {
	if err := s.models.scan(); err != nil {
		writeJSON(w, http.StatusInternalServerError, apiError{Error: "RuntimeError", Detail: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, nil)
}

func (s *Server) pngInfo(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var req pngInfoRequest
	if err := decodeBody(body, &req); err != nil {
		writeInvalid(w, err)
		return
	}
	b64 := strings.TrimSpace(req.Image)
	if strings.HasPrefix(b64, "data:") {
		if _, after, ok := strings.Cut(b64, ","); ok {
			b64 = after
		}
	}
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		writeInvalid(w, fieldf("image", "not base64: %v", err))
		return
	}
	if len(data) == 0 {
		writeJSON(w, http.StatusOK, pngInfoResponse{Items: map[string]string{}, Parameters: map[string]any{}})
		return
	}
	text, err := zimage.ReadPNGText(bytes.NewReader(data))
	if err != nil {
		writeInvalid(w, fieldf("image", "%v", err))
		return
	}
	info := text["parameters"]
	delete(text, "parameters")
	writeJSON(w, http.StatusOK, pngInfoResponse{Info: info, Items: text, Parameters: parseInfotext(info)})
}

func (s *Server) memory(w http.ResponseWriter, r *http.Request) {
	ram := map[string]any{}
	rss, total := hostMemory()
	if total > 0 {
		ram = map[string]any{"free": total - rss, "used": rss, "total": total}
	} else {
		ram["error"] = "unavailable"
	}
	// zimage's device in the shape A1111 gives CUDA: the total from the
	// device's heap, the peak of the last image from zimage's allocator.
	dev := map[string]any{"error": "unavailable"}
	if m, _ := s.models.current(); m != nil {
		d := m.Device()
		s.models.mu.Lock()
		var peak int64
		if s.models.last != nil {
			peak = s.models.last.PeakDevice
		}
		s.models.mu.Unlock()
		dev = map[string]any{
			"device":    d.Name,
			"system":    map[string]any{"free": max(0, d.MemoryBytes-peak), "used": peak, "total": d.MemoryBytes},
			"allocated": map[string]any{"current": peak, "peak": peak},
			"events":    map[string]any{"retries": 0, "oom": 0},
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"ram": ram, "cuda": dev})
}

// hostMemory is the process's resident set and the machine's memory.
func hostMemory() (rss, total int64) {
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		f := strings.Fields(string(b))
		if len(f) > 1 {
			pages, _ := strconv.ParseInt(f[1], 10, 64)
			rss = pages * int64(os.Getpagesize())
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				total = kb * 1024
			}
		}
	}
	return rss, total
}

func (s *Server) cmdFlags(w http.ResponseWriter, r *http.Request) {
	flags := s.cfg.Flags
	if flags == nil {
		flags = map[string]any{}
	}
	writeJSON(w, http.StatusOK, flags)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
}

// readyz is 200 when a model is loaded and the queue has room, so a load
// balancer sends work only to workers that can take it.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	m, _ := s.models.current()
	waiting, _ := s.q.depth()
	var reason string
	select {
	case <-s.closing:
		reason = "shutting down"
	default:
		switch {
		case m == nil:
			reason = "no model loaded"
		case waiting >= s.cfg.Queue:
			reason = "queue full"
		}
	}
	if reason != "" {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": reason})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "waiting": waiting})
}

// uiInfo is what the web UI's system tab and form defaults read.
type uiInfo struct {
	Version    string             `json:"version"`
	Model      *zimage.ModelInfo  `json:"model"`
	Checkpoint string             `json:"checkpoint"`
	Loading    string             `json:"loading"`
	LoadError  string             `json:"load_error"`
	Models     []string           `json:"models"`
	ModelsDir  string             `json:"models_dir"`
	LoRAs      []uiLoRA           `json:"loras"`
	LoRADir    string             `json:"lora_dir"`
	Device     *zimage.DeviceInfo `json:"device"`
	Defaults   map[string]any     `json:"defaults"`
	Samplers   []string           `json:"samplers"`
	Limits     map[string]int     `json:"limits"`
	LastRun    map[string]any     `json:"last_run"`
	Outputs    string             `json:"outputs"`
	Queue      map[string]any     `json:"queue"`
}

// uiLoRA is a LoRA of the web UI's picker (the metadata stays out: it can
// be large, and /sdapi/v1/loras has it).
type uiLoRA struct {
	Name  string `json:"name"`
	Alias string `json:"alias"`
}

func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	out := uiInfo{Version: zimage.Version, ModelsDir: s.cfg.ModelsDir, Models: []string{}, Samplers: []string{},
		Limits: map[string]int{"max_side": s.cfg.MaxSide, "min_side": MinSide, "max_images": MaxImages, "max_steps": MaxSteps, "max_cfg": MaxCFG}}
	for _, c := range s.models.checkpoints() {
		out.Models = append(out.Models, c.title)
	}
	out.LoRADir, out.LoRAs = s.cfg.LoRADir, []uiLoRA{}
	for _, l := range s.loras.list() {
		out.LoRAs = append(out.LoRAs, uiLoRA{Name: l.Name, Alias: l.Alias})
	}
	for _, sm := range samplers {
		out.Samplers = append(out.Samplers, sm.label)
	}
	if abs, err := filepath.Abs(s.cfg.Outputs); err == nil {
		out.Outputs = abs
	}
	m, ck := s.models.current()
	s.models.mu.Lock()
	out.Loading = s.models.loading
	if s.models.loadErr != nil {
		out.LoadError = s.models.loadErr.Error()
	}
	last := s.models.last
	s.models.mu.Unlock()
	if m != nil {
		mi, di := m.Model(), m.Device()
		out.Model, out.Device, out.Checkpoint = &mi, &di, ck.title
		wd, ht, steps, cfg := m.Defaults()
		out.Defaults = map[string]any{"width": wd, "height": ht, "steps": steps, "cfg_scale": cfg,
			"size_multiple": m.SizeMultiple(), "turbo": mi.Turbo, "base_size": mi.BaseSize}
	}
	if last != nil {
		var stages []map[string]any
		for _, st := range last.Stages {
			stages = append(stages, map[string]any{"name": st.Name, "seconds": st.Duration.Seconds(), "peak_device": st.PeakDev})
		}
		out.LastRun = map[string]any{"stages": stages, "total_seconds": last.Total.Seconds(), "peak_device": last.PeakDevice,
			"peak_host_rss": last.PeakHostRSS, "width": last.Parameters.Width, "height": last.Parameters.Height,
			"steps": last.Parameters.Steps, "sampler": last.Parameters.Sampler}
	}
	waiting, running := s.q.depth()
	out.Queue = map[string]any{"waiting": waiting, "running": running, "capacity": s.cfg.Queue}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) gallery(w http.ResponseWriter, r *http.Request) {
	offset, _ := strconv.Atoi(r.URL.Query().Get("offset"))
	limit, err := strconv.Atoi(r.URL.Query().Get("limit"))
	if err != nil || limit <= 0 || limit > 200 {
		limit = 48
	}
	items, total := s.out.page(max(offset, 0), limit)
	if items == nil {
		items = []galleryItem{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"total": total, "items": items})
}
