package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/zimage/zimage"
)

// Model is what the server needs of a loaded pipeline; *zimage.Pipeline
// has it. Generate is only ever called by the server's one worker.
type Model interface {
	Generate(ctx context.Context, req zimage.Request) (*zimage.Result, error)
	Defaults() (width, height, steps int, guidance float64)
	SizeMultiple() int
	Model() zimage.ModelInfo
	Device() zimage.DeviceInfo
	Close() error
}

// LoadFunc opens a model (a diffusers folder or a single file) on the
// device; cli passes zimage.Load with the device flags.
type LoadFunc func(path string) (Model, error)

// HashFunc computes a checkpoint's short A1111 hash for listing
// (zimage.ModelHash); "" when unknown.
type HashFunc func(path string) string

// checkpoint is one entry of /sdapi/v1/sd-models.
type checkpoint struct {
	name  string // file or folder name, as A1111's model_name
	title string // "name [hash]", A1111's title
	path  string
	hash  string
}

// registry lists the checkpoints and holds the one loaded. Only the worker
// loads and closes models; handlers read under mu.
type registry struct {
	mu      sync.Mutex
	dir     string // --models-dir
	initial string // -m
	load    LoadFunc
	hash    HashFunc
	list    []checkpoint
	cur     Model
	curCk   checkpoint
	loading string // path being loaded
	loadErr error  // the last load's failure
	last    *zimage.Result
}

// scan rebuilds the list from --models-dir and -m.
func (r *registry) scan() error {
	var list []checkpoint
	add := func(path string) {
		name := filepath.Base(filepath.Clean(path))
		for _, c := range list {
			if c.path == path {
				return
			}
		}
		c := checkpoint{name: name, title: name, path: path}
		if r.hash != nil {
			if c.hash = r.hash(path); c.hash != "" {
				c.title = fmt.Sprintf("%s [%s]", name, c.hash)
			}
		}
		list = append(list, c)
	}
	if r.initial != "" {
		add(r.initial)
	}
	if r.dir != "" {
		ents, err := os.ReadDir(r.dir)
		if err != nil {
			return fmt.Errorf("server: --models-dir: %w", err)
		}
		for _, e := range ents {
			p := filepath.Join(r.dir, e.Name())
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			st, err := os.Stat(p) // follows links: models are often linked in
			if err != nil {
				continue
			}
			if st.IsDir() {
				if _, err := os.Stat(filepath.Join(p, "model_index.json")); err == nil {
					add(p)
				}
			} else if strings.HasSuffix(strings.ToLower(e.Name()), ".safetensors") {
				add(p)
			}
		}
	}
	if len(list) == 0 {
		return fmt.Errorf("server: no models: --models-dir %s holds no diffusers folder (with model_index.json) or .safetensors file", r.dir)
	}
	r.mu.Lock()
	r.list = list
	r.mu.Unlock()
	return nil
}

// find resolves a name as A1111 does: by title, file name (with or without
// extension), hash or path.
func (r *registry) find(name string) (checkpoint, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	name = strings.TrimSpace(name)
	for _, c := range r.list {
		base := strings.TrimSuffix(c.name, filepath.Ext(c.name))
		if name == c.title || name == c.name || name == base || (c.hash != "" && name == c.hash) || name == c.path {
			return c, true
		}
	}
	return checkpoint{}, false
}

// current is the loaded model and its checkpoint (nil before the first
// load finishes).
func (r *registry) current() (Model, checkpoint) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur, r.curCk
}

func (r *registry) checkpoints() []checkpoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.list)
}

// ensure makes the named checkpoint (or, for "", the loaded one or the
// first) the loaded model. The worker alone calls it.
func (s *Server) ensureModel(name string) (Model, checkpoint, error) {
	r := s.models
	cur, ck := r.current()
	if name == "" && cur != nil {
		return cur, ck, nil
	}
	if name == "" && ck.path != "" {
		name = ck.path // reload the last model after a drop
	}
	var want checkpoint
	if name == "" {
		list := r.checkpoints()
		if len(list) == 0 {
			return nil, ck, fmt.Errorf("server: no models")
		}
		want = list[0]
	} else {
		var ok bool
		if want, ok = r.find(name); !ok {
			return nil, ck, &notFoundError{what: "model", name: name}
		}
	}
	if cur != nil && want.path == ck.path {
		return cur, ck, nil
	}
	r.mu.Lock()
	r.cur, r.loading = nil, want.path
	r.mu.Unlock()
	if cur != nil {
		if err := cur.Close(); err != nil {
			s.log.Error("closing model", "path", ck.path, "err", err)
		}
	}
	t0 := time.Now()
	m, err := r.load(want.path)
	r.mu.Lock()
	r.loading, r.loadErr, r.last = "", err, nil
	if err == nil {
		r.cur, r.curCk = m, want
	}
	r.mu.Unlock()
	s.met.modelLoaded(err == nil)
	if err != nil {
		s.log.Error("model load failed", "path", want.path, "err", err)
		return nil, want, err
	}
	mi := m.Model()
	s.log.Info("model loaded", "name", want.name, "arch", mi.Arch, "path", want.path, "seconds", time.Since(t0).Seconds())
	return m, want, nil
}

// notFoundError is A1111's 404 for an unknown model.
type notFoundError struct{ what, name string }

func (e *notFoundError) Error() string { return fmt.Sprintf("%s %q not found", e.what, e.name) }

// drop closes the loaded model (after a device loss); the next job loads
// it again.
func (r *registry) drop(log interface{ Error(string, ...any) }) {
	r.mu.Lock()
	m, ck := r.cur, r.curCk
	r.cur, r.last = nil, nil
	r.mu.Unlock()
	if m != nil {
		if err := m.Close(); err != nil {
			log.Error("closing model", "path", ck.path, "err", err)
		}
	}
}
