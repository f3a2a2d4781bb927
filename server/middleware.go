package server

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
)

// MaxBody caps a request body: room for img2img's base64 pictures.
const MaxBody = 64 << 20

// ParseAuth reads --api-auth "user:pass[,user2:pass2]".
func ParseAuth(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, pair := range strings.Split(s, ",") {
		pair = strings.TrimSpace(pair)
		u, p, ok := strings.Cut(pair, ":")
		if !ok || u == "" || p == "" {
			return nil, &fieldError{field: "--api-auth", msg: "want user:password[,user2:password2]"}
		}
		out[u] = p
	}
	return out, nil
}

// withAuth asks for HTTP basic auth on everything but the probes, which a
// load balancer or kubelet calls without credentials.
func (s *Server) withAuth(next http.Handler) http.Handler {
	if len(s.cfg.Auth) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(w, r)
			return
		}
		u, p, ok := r.BasicAuth()
		want, known := s.cfg.Auth[u]
		// Compare even for unknown users so the timing does not tell them apart.
		if !known {
			want = "\x00"
		}
		if !ok || subtle.ConstantTimeCompare([]byte(p), []byte(want)) != 1 || !known {
			w.Header().Set("WWW-Authenticate", `Basic realm="zimage"`)
			writeJSON(w, http.StatusUnauthorized, apiError{Error: "HTTPException", Detail: "Incorrect username or password"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// withOrigins refuses browser requests with side effects from other
// origins (cross-site request forgery: any page could otherwise make a
// visitor's browser queue work on a LAN server) unless --cors-allow-origins
// lists them, and answers CORS for those it lists.
func (s *Server) withOrigins(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	any := slices.Contains(s.cfg.CORSOrigins, "*")
	for _, o := range s.cfg.CORSOrigins {
		if o != "*" {
			// Errors only for malformed origins, which cli checks first.
			_ = cop.AddTrustedOrigin(o)
		}
	}
	allowed := func(origin string) bool {
		return origin != "" && (any || slices.Contains(s.cfg.CORSOrigins, origin))
	}
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusForbidden, apiError{Error: "HTTPException",
			Detail: "cross-origin request refused: start the server with --cors-allow-origins " + r.Header.Get("Origin") + " to allow it"})
	}))
	inner := cop.Handler(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if allowed(origin) {
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Credentials", "true")
			h.Add("Vary", "Origin")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
				h.Set("Access-Control-Allow-Headers", "Content-Type, Authorization")
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
			if any {
				next.ServeHTTP(w, r)
				return
			}
		}
		inner.ServeHTTP(w, r)
	})
}

// withLimits caps request bodies (a larger one reads as an error that the
// handlers answer 413).
func withLimits(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}
