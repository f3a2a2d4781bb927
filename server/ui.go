package server

import (
	"bytes"
	"embed"
	"io/fs"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// The web UI: plain HTML, CSS and JavaScript in the binary. No CDN and no
// build step, so it works on a LAN without internet.
//
//go:embed web
var webFS embed.FS

func staticHandler() http.Handler {
	sub, _ := fs.Sub(webFS, "web")
	fsrv := http.StripPrefix("/static/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		fsrv.ServeHTTP(w, r)
	})
}

// index serves the page in the language the browser asks for first (the
// page's switch overrides it and remembers the choice).
func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	page, err := webFS.ReadFile("web/index.html")
	if err != nil {
		http.Error(w, "web UI missing from the binary", http.StatusInternalServerError)
		return
	}
	lang := pickLanguage(r.Header.Get("Accept-Language"))
	page = bytes.Replace(page, []byte(`<html lang="en">`), []byte(`<html lang="`+lang+`">`), 1)
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Add("Vary", "Accept-Language")
	w.Write(page)
}

// pickLanguage returns "zh-CN" or "en" from an Accept-Language header,
// by quality, English when neither is listed.
func pickLanguage(header string) string {
	type tag struct {
		lang string
		q    float64
	}
	var tags []tag
	for _, part := range strings.Split(header, ",") {
		l, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		q := 1.0
		if v, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				q = f
			}
		}
		tags = append(tags, tag{strings.ToLower(l), q})
	}
	sort.SliceStable(tags, func(i, j int) bool { return tags[i].q > tags[j].q })
	for _, t := range tags {
		switch {
		case strings.HasPrefix(t.lang, "zh"):
			return "zh-CN"
		case strings.HasPrefix(t.lang, "en"):
			return "en"
		}
	}
	return "en"
}
