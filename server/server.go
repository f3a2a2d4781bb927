// Package server is `zimage serve`: a web UI and an AUTOMATIC1111-
// compatible HTTP API (/sdapi/v1) over the zimage library, plus health,
// readiness and Prometheus endpoints for running many workers behind a
// load balancer.
//
// Generation is serialized: handlers validate and queue jobs (FIFO, bounded)
// and wait for their own; one worker, run by the caller through Run, takes
// them one at a time to the device. Nothing a handler does waits for the
// device, so progress, health and the UI answer while a job runs.
package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"image/png"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/sched"
	"github.com/zimage/zimage/sched/sampler"
)

// Config configures a Server.
type Config struct {
	// Model is a model to load first (a diffusers folder or single file).
	Model string
	// ModelsDir holds several models (diffusers folders, .safetensors
	// files); one is loaded at a time and requests may switch it.
	ModelsDir string
	// Load opens a model on the device. Hash names checkpoints in listings
	// (optional).
	Load LoadFunc
	Hash HashFunc
	// Outputs is where images are saved (default "outputs").
	Outputs string
	// Queue is how many jobs may wait (default 16); more get 503.
	Queue int
	// MaxSide caps width and height (default 2048).
	MaxSide int
	// Auth maps user names to passwords for HTTP basic auth on everything
	// but /healthz and /readyz; empty = no auth.
	Auth map[string]string
	// CORSOrigins may send cross-origin requests ("*" = any); browser POSTs
	// from other origins are refused otherwise.
	CORSOrigins []string
	// Logger receives one line per event (default slog.Default()).
	Logger *slog.Logger
	// Flags are reported by /sdapi/v1/cmd-flags (secrets left out).
	Flags map[string]any
	// VAETiling and Tile go into every request (the CLI's --vae-tiling and
	// --tile-size).
	VAETiling sched.Tiling
	Tile      int
	// LoRADir is the folder of LoRA files that <lora:NAME:MULT> tags in
	// prompts name; /sdapi/v1/loras lists it. Load must open models with
	// the same folder (zimage.WithLoRADir), which finds the files.
	LoRADir string
	// Previews turns live previews on (A1111's live_previews_enable, which
	// POST /sdapi/v1/options also sets): models with a TAESD (Load's
	// zimage.WithTAESD, or a taesd folder in the model folder) show a
	// TAESD picture after every step in /sdapi/v1/progress and the UI.
	Previews bool
}

// Server is the HTTP side and the job queue. Create it with New, serve
// Handler, and call Run to process jobs.
type Server struct {
	cfg     Config
	log     *slog.Logger
	q       *queue
	models  *registry
	loras   *loraList
	out     *outputs
	met     *metrics
	handler http.Handler
	started time.Time
	closing chan struct{} // closed when Run begins shutting down
	// previews is Config.Previews, switchable through the options.
	previews atomic.Bool
}

// New checks the configuration, lists the models and opens the outputs
// folder. It loads nothing: Run loads the first model, so the server can
// answer (health, UI, "loading") within milliseconds.
func New(cfg Config) (*Server, error) {
	if cfg.Load == nil {
		return nil, errors.New("server: Config.Load is required")
	}
	if cfg.Model == "" && cfg.ModelsDir == "" {
		return nil, errors.New("server: want a model (-m) or a models folder (--models-dir)")
	}
	if cfg.Outputs == "" {
		cfg.Outputs = "outputs"
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 16
	}
	if cfg.MaxSide <= 0 {
		cfg.MaxSide = 2048
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, q: newQueue(cfg.Queue), met: newMetrics(cfg.Queue),
		started: time.Now(), closing: make(chan struct{})}
	s.previews.Store(cfg.Previews)
	s.models = &registry{dir: cfg.ModelsDir, initial: cfg.Model, load: cfg.Load, hash: cfg.Hash}
	if err := s.models.scan(); err != nil {
		return nil, err
	}
	s.loras = &loraList{dir: cfg.LoRADir}
	if err := s.loras.scan(); err != nil {
		return nil, fmt.Errorf("server: --lora-dir: %w", err)
	}
	out, err := openOutputs(cfg.Outputs)
	if err != nil {
		return nil, err
	}
	s.out = out
	s.handler = s.routes()
	return s, nil
}

// Handler serves the UI and the API.
func (s *Server) Handler() http.Handler { return s.handler }

// Run loads the first model and then runs queued jobs one at a time until
// ctx ends. Then it refuses new jobs, answers the waiting ones 503, stops
// the running one at its next step (its client gets the images finished so
// far), closes the model and returns. Call it once.
func (s *Server) Run(ctx context.Context) error {
	defer s.out.Close()
	if _, _, err := s.ensureModel(""); err != nil {
		// Keep serving: the UI and /readyz say why, and a later request
		// or model switch may load another.
		s.log.Error("no model loaded", "err", err)
	}
	stopRunning := context.AfterFunc(ctx, func() {
		close(s.closing)
		for _, j := range s.q.close() {
			j.stop(errShuttingDown)
			s.q.finish(j, &outcome{err: errShuttingDown})
			s.met.jobs.WithLabelValues("rejected").Inc()
		}
		s.q.interrupt("")
		s.updateQueueMetrics()
	})
	defer stopRunning()
	for {
		j := s.q.next(ctx)
		if j == nil {
			break
		}
		s.updateQueueMetrics()
		s.q.finish(j, s.runJob(j))
		s.updateQueueMetrics()
	}
	// Jobs that arrived between the last next and close.
	for _, j := range s.q.close() {
		s.q.finish(j, &outcome{err: errShuttingDown})
	}
	m, _ := s.models.current()
	if m != nil {
		return m.Close()
	}
	return nil
}

func (s *Server) updateQueueMetrics() {
	w, r := s.q.depth()
	s.met.waiting.Set(float64(w))
	if r {
		s.met.running.Set(1)
	} else {
		s.met.running.Set(0)
	}
}

// runJob makes a job's images one at a time, each with its own seed (seed,
// seed+1, ... as A1111 numbers them), so that any image is reproduced
// alone by its seed and "skip" can drop one image.
func (s *Server) runJob(j *job) *outcome {
	o := &outcome{}
	if err := context.Cause(j.ctx); err != nil {
		o.err, o.interrupted = err, errors.Is(err, errInterrupted)
		s.countOutcome(o)
		return o
	}
	m, _, err := s.ensureModel(j.spec.checkpoint)
	if err != nil {
		o.err = err
		s.countOutcome(o)
		return o
	}
	sp := j.spec
	if sp.loadOnly {
		return o // a model switch, not a generation: not counted
	}
	w, h, steps, cfg := m.Defaults()
	if i := sp.i2i; i != nil {
		// The picture's size, rounded down to the model's multiple, and
		// enough steps for the strength to keep one.
		mult, b := m.SizeMultiple(), i.init.Bounds()
		w, h = max(b.Dx()/mult*mult, mult), max(b.Dy()/mult*mult, mult)
		steps = zimage.Img2ImgSteps(steps, i.strength)
	}
	if sp.width != 0 {
		w = sp.width
	}
	if sp.height != 0 {
		h = sp.height
	}
	if sp.steps != 0 {
		steps = sp.steps
	}
	if sp.cfg != nil {
		cfg = *sp.cfg
	}
	if mult := m.SizeMultiple(); w%mult != 0 || h%mult != 0 {
		o.err = fieldf("width", "%dx%d: this model wants sizes that are multiples of %d", w, h, mult)
		s.countOutcome(o)
		return o
	}
	seed := sp.seed
	if seed == -1 {
		seed = int64(rand.Uint32N(4294967294)) // A1111's range for a random seed
	}
	o.model, o.seed, o.width, o.height, o.steps, o.cfg = m.Model(), seed, w, h, steps, cfg
	o.sampler = sp.sampler
	n := sp.batch * sp.iter
	s.models.mu.Lock()
	est := newEstimate(s.models.last, w*h)
	s.models.mu.Unlock()
	s.q.mu.Lock()
	j.images, j.steps, j.estimate = n, steps, est
	s.q.mu.Unlock()
	s.log.Info("generation start", "id", j.id, "prompt", sp.prompt, "negative_prompt", sp.negative,
		"width", w, "height", h, "steps", steps, "cfg_scale", cfg, "sampler", sp.sampler, "karras", sp.karras,
		"seed", seed, "images", n, "model", o.model.Name)
	if len(sp.ignored) > 0 {
		s.log.Warn("request fields without effect in zimage", "id", j.id, "fields", sp.ignored)
	}
	for i := 0; i < n; i++ {
		imgCtx, cancel := context.WithCancel(j.ctx)
		s.q.mu.Lock()
		j.image, j.skipped, j.skipImage, j.stage, j.step, j.stageStart = i, false, cancel, "", 0, time.Now()
		s.q.mu.Unlock()
		g := cfg
		req := zimage.Request{
			Prompt: sp.prompt, NegativePrompt: sp.negative, Width: w, Height: h, Steps: steps, Guidance: &g,
			Seed: uint64(seed + int64(i)), Batch: 1, Sampler: sp.sampler, Karras: sp.karras,
			VAETiling: s.cfg.VAETiling, Tile: s.cfg.Tile,
			Preview: s.previews.Load() && hasTAESD(m),
			Progress: func(e zimage.Progress) {
				if len(e.Previews) > 0 {
					var buf bytes.Buffer
					if png.Encode(&buf, e.Previews[0]) == nil {
						b64 := base64.StdEncoding.EncodeToString(buf.Bytes())
						s.q.mu.Lock()
						j.preview, j.previewID = b64, j.previewID+1
						s.q.mu.Unlock()
					}
					return
				}
				s.q.mu.Lock()
				if e.Stage != j.stage {
					j.stageStart = time.Now()
				}
				j.stage, j.step, j.steps = e.Stage, e.Step, e.Steps
				s.q.mu.Unlock()
			},
		}
		if sp.i2i != nil {
			sp.i2i.apply(&req)
		}
		res, err := m.Generate(imgCtx, req)
		cancel()
		s.q.mu.Lock()
		j.skipImage = nil
		skipped := j.skipped && j.ctx.Err() == nil
		s.q.mu.Unlock()
		if skipped {
			continue
		}
		if err != nil {
			if cause := context.Cause(j.ctx); cause != nil {
				o.err, o.interrupted = cause, errors.Is(cause, errInterrupted)
			} else if loraRequestError(err) || requestError(err) {
				o.err = err // the request's LoRAs: answered 422
				s.log.Warn("request refused", "id", j.id, "err", err)
			} else {
				o.err = err
				s.log.Error("generation failed", "id", j.id, "image", i+1, "err", err)
				if errors.Is(err, vk.ErrDeviceLost) {
					// A lost device stays lost: drop the model so that
					// the next job opens the device afresh.
					s.models.drop(s.log)
					s.met.modelLoaded(false)
				}
			}
			break
		}
		img, err := s.finishImage(j, res, seed+int64(i), sp.save)
		if err != nil {
			o.err = err
			s.log.Error("generation failed", "id", j.id, "image", i+1, "err", err)
			break
		}
		o.images = append(o.images, img)
		o.result = res
		o.sampler = res.Parameters.Sampler
		s.models.mu.Lock()
		s.models.last = res
		s.models.mu.Unlock()
	}
	s.q.mu.Lock()
	j.image = n
	s.q.mu.Unlock()
	s.countOutcome(o)
	return o
}

// finishImage encodes (and saves) one image and records its metrics.
func (s *Server) finishImage(j *job, res *zimage.Result, seed int64, save bool) (generated, error) {
	if len(res.Images) != 1 {
		return generated{}, fmt.Errorf("server: the model returned %d images, want 1", len(res.Images))
	}
	g := generated{seed: seed, info: res.Metadata}
	data, err := encodePNG(res)
	if err != nil {
		return g, err
	}
	g.png = data
	if save {
		p, err := s.out.save(dirFor(j), data, seed, time.Now())
		if err != nil {
			return g, err
		}
		g.path = p
		s.log.Info("saved image to "+p, "id", j.id, "path", p)
	}
	for _, st := range res.Stages {
		s.met.stage.WithLabelValues(st.Name).Observe(st.Duration.Seconds())
	}
	s.met.images.Inc()
	s.met.peakDev.Set(float64(res.PeakDevice))
	s.met.peakRSS.Set(float64(res.PeakHostRSS))
	return g, nil
}

// requestError reports a job refused for its request: a strength that
// keeps no step, a picture or mask the library cannot use.
func requestError(err error) bool {
	var se *sampler.StrengthError
	var ie *zimage.InputError
	return errors.As(err, &se) || errors.As(err, &ie)
}

// hasTAESD reports a model that can draw previews (zimage.Pipeline with a
// TAESD; test models may not say).
func hasTAESD(m Model) bool {
	t, ok := m.(interface{ HasTAESD() bool })
	return ok && t.HasTAESD()
}

// dirFor is the outputs folder of a job's images.
func dirFor(j *job) string {
	if j.spec.i2i != nil {
		return img2imgDir
	}
	return txt2imgDir
}

func (s *Server) countOutcome(o *outcome) {
	var fe *fieldError
	switch {
	case o.err == nil:
		s.met.jobs.WithLabelValues("ok").Inc()
	case o.interrupted:
		s.met.jobs.WithLabelValues("interrupted").Inc()
	case errors.Is(o.err, errClientGone):
		s.met.jobs.WithLabelValues("cancelled").Inc()
	case errors.Is(o.err, errShuttingDown):
		s.met.jobs.WithLabelValues("rejected").Inc()
	case errors.As(o.err, &fe) || loraRequestError(o.err) || requestError(o.err):
		s.met.jobs.WithLabelValues("invalid").Inc()
	default:
		s.met.jobs.WithLabelValues("failed").Inc()
	}
}
