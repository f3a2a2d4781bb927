package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/model/lora"
	"github.com/zimage/zimage/model/safetensors"
)

// loraItem is one entry of /sdapi/v1/loras, as A1111's Lora extension
// returns it (create_lora_json): the name prompt tags use, the alias from
// the file's ss_output_name, the path and the safetensors metadata (values
// that hold JSON objects decoded, as A1111 decodes them).
type loraItem struct {
	Name     string         `json:"name"`
	Alias    string         `json:"alias"`
	Path     string         `json:"path"`
	Metadata map[string]any `json:"metadata"`
}

// loraList is the server's view of --lora-dir. The pipeline finds tagged
// files in the same folder itself (zimage.WithLoRADir); the server lists
// them and refuses a request naming one that is not there before it
// queues.
type loraList struct {
	dir   string
	mu    sync.Mutex
	d     *lora.Dir
	items []loraItem
}

// scan lists the folder again (A1111's refresh).
func (l *loraList) scan() error {
	if l.dir == "" {
		return nil
	}
	d, err := lora.OpenDir(l.dir)
	if err != nil {
		return err
	}
	items := []loraItem{}
	for _, name := range d.Names() {
		path, err := d.Find(name)
		if err != nil {
			continue
		}
		it := loraItem{Name: name, Alias: name, Path: path, Metadata: map[string]any{}}
		if st, err := safetensors.Open(path); err == nil {
			for k, v := range st.Metadata {
				it.Metadata[k] = v
				if strings.HasPrefix(v, "{") {
					var obj any
					if json.Unmarshal([]byte(v), &obj) == nil {
						it.Metadata[k] = obj
					}
				}
			}
			if a := st.Metadata["ss_output_name"]; a != "" {
				it.Alias = a
			}
			st.Close()
		}
		items = append(items, it)
	}
	l.mu.Lock()
	l.d, l.items = d, items
	l.mu.Unlock()
	return nil
}

func (l *loraList) list() []loraItem {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.items == nil {
		return []loraItem{}
	}
	return l.items
}

// find reports whether a tag's name (a file name or an alias) is in the
// folder, listing it again once on a miss (a file copied in since).
func (l *loraList) find(name string) bool {
	for try := 0; try < 2; try++ {
		if l.has(name) {
			return true
		}
		if try == 0 && l.scan() != nil {
			return false
		}
	}
	return false
}

// has looks name up under the lock: lora.Dir reads the aliases on its
// first miss and is not safe for concurrent use.
func (l *loraList) has(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.d == nil {
		return false
	}
	_, err := l.d.Find(name)
	return err == nil
}

// checkLoRAs refuses a prompt whose <lora:...> tags cannot be read or name
// LoRAs the folder does not have, with A1111's 422 shape.
func (s *Server) checkLoRAs(prompt string) error {
	_, tags, _, err := lora.ParsePrompt(prompt)
	if err != nil {
		return fieldf("prompt", "%v", err)
	}
	for _, t := range tags {
		if s.cfg.LoRADir == "" {
			return fieldf("prompt", "%s: this server has no LoRA folder (zimage serve --lora-dir)", t.Text)
		}
		if !s.loras.find(t.Name) {
			return fieldf("prompt", "%s: no LoRA named %q in %s (GET /sdapi/v1/loras lists them)", t.Text, t.Name, s.cfg.LoRADir)
		}
	}
	return nil
}

// loraRequestError reports whether a job failed on the LoRAs its prompt
// named (an unknown or unreadable name, a file that is not a LoRA for this
// model): the client's to fix, so 422 rather than 500.
func loraRequestError(err error) bool {
	var le *zimage.LoRAError
	var ue *lora.UnknownLoRAError
	var te *lora.TagError
	return errors.As(err, &le) || errors.As(err, &ue) || errors.As(err, &te)
}

func (s *Server) lorasList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.loras.list())
}

// refreshLoRAs lists the folder again; A1111 answers null.
func (s *Server) refreshLoRAs(w http.ResponseWriter, r *http.Request) {
	if err := s.loras.scan(); err != nil {
		writeJSON(w, http.StatusInternalServerError, apiError{Error: "RuntimeError", Detail: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, nil)
}
