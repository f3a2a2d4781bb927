package server

import (
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// txt2imgDir and img2imgDir are A1111's folders for txt2img and img2img
// samples under the outputs.
const (
	txt2imgDir = "txt2img-images"
	img2imgDir = "img2img-images"
)

// outputs saves images in A1111's layout, DIR/txt2img-images/YYYY-MM-DD/
// NNNNN-SEED.png, lists them newest first, and serves them. File names
// come from the server only: a request names nothing on disk.
type outputs struct {
	dir  string
	root *os.Root // every read goes through it: no path leaves the folder

	mu    sync.Mutex
	items []galleryItem // oldest first
}

type galleryItem struct {
	URL  string `json:"url"`
	Name string `json:"name"`
	Time int64  `json:"time"` // Unix seconds
}

// servedPath is the only shape of path /outputs/ serves.
var servedPath = regexp.MustCompile(`^(` + txt2imgDir + `|` + img2imgDir + `)/\d{4}-\d{2}-\d{2}/\d{5}-\d+\.png$`)

func openOutputs(dir string) (*outputs, error) {
	if err := os.MkdirAll(filepath.Join(dir, txt2imgDir), 0o755); err != nil {
		return nil, fmt.Errorf("server: --outputs: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("server: --outputs: %w", err)
	}
	o := &outputs{dir: dir, root: root}
	o.scan()
	return o, nil
}

func (o *outputs) Close() error { return o.root.Close() }

// scan indexes the images already there (earlier runs, other servers).
func (o *outputs) scan() {
	var items []galleryItem
	for _, top := range []string{txt2imgDir, img2imgDir} {
		fs.WalkDir(o.root.FS(), top, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !servedPath.MatchString(p) {
				return nil
			}
			var t int64
			if info, err := d.Info(); err == nil {
				t = info.ModTime().Unix()
			}
			items = append(items, galleryItem{URL: "/outputs/" + p, Name: path.Base(p), Time: t})
			return nil
		})
	}
	// Oldest first: by time, then by day folder and counter.
	slices.SortStableFunc(items, func(a, b galleryItem) int {
		if a.Time != b.Time {
			return int(a.Time - b.Time)
		}
		return strings.Compare(path.Base(path.Dir(a.URL))+a.Name, path.Base(path.Dir(b.URL))+b.Name)
	})
	o.mu.Lock()
	o.items = items
	o.mu.Unlock()
}

// save writes one PNG under today's folder, through a temporary file and a
// rename so that no reader (nor a crash) ever sees half a file. Only the
// worker saves, so the counter needs no lock across the scan and write.
func (o *outputs) save(kind string, data []byte, seed int64, now time.Time) (string, error) {
	day := now.Format("2006-01-02")
	rel := path.Join(kind, day)
	dir := filepath.Join(o.dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("server: outputs: %w", err)
	}
	n := nextCounter(dir)
	name := fmt.Sprintf("%05d-%d.png", n, seed)
	final := filepath.Join(dir, name)
	tmp, err := os.CreateTemp(dir, ".tmp-*.png")
	if err != nil {
		return "", fmt.Errorf("server: outputs: %w", err)
	}
	_, werr := tmp.Write(data)
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), final)
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("server: outputs: %s: %w", final, werr)
	}
	o.mu.Lock()
	o.items = append(o.items, galleryItem{URL: "/outputs/" + rel + "/" + name, Name: name, Time: now.Unix()})
	o.mu.Unlock()
	return final, nil
}

// nextCounter is one past the highest NNNNN- prefix in dir (A1111 numbers
// each day's images from 00000).
func nextCounter(dir string) int {
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		if p, _, ok := strings.Cut(e.Name(), "-"); ok && len(p) == 5 {
			if v, err := strconv.Atoi(p); err == nil && v >= n {
				n = v + 1
			}
		}
	}
	return n
}

// page returns images newest first.
func (o *outputs) page(offset, limit int) (items []galleryItem, total int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	total = len(o.items)
	for i := total - 1 - offset; i >= 0 && len(items) < limit; i-- {
		items = append(items, o.items[i])
	}
	return items, total
}

// serve answers GET /outputs/{path...} for the images the server wrote.
func (o *outputs) serve(w http.ResponseWriter, r *http.Request) {
	p := r.PathValue("path")
	if !servedPath.MatchString(p) {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	f, err := o.root.Open(filepath.FromSlash(p))
	if err != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, path.Base(p), st.ModTime(), f)
}
