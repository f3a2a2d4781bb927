package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/server"
)

// One pipeline for the whole test binary: loading and the first kernel
// compiles are the slow part on lavapipe.
var (
	pipeOnce sync.Once
	pipe     *zimage.Pipeline
	pipeErr  error
	pipeDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pipe != nil {
		pipe.Close()
	}
	os.Exit(code)
}

// tinyModel is the shared tiny SD-Turbo pipeline on the Vulkan device,
// skipping without the test models or a device.
func tinyModel(t *testing.T) *zimage.Pipeline {
	t.Helper()
	dir := testref.Dir(t, "tiny-sd-turbo")
	pipeOnce.Do(func() { pipeDir = dir; pipe, pipeErr = zimage.Load(dir) })
	if pipeErr != nil {
		if _, err := vk.ListDevices(); err != nil {
			t.Skipf("no Vulkan device: %v", err)
		}
		t.Fatal(pipeErr)
	}
	return pipe
}

// shared lends the pipeline to a server without letting it close it.
type shared struct{ *zimage.Pipeline }

func (shared) Close() error { return nil }

// hooked wraps a model to hold or fail its Generate calls.
// innerModel names the embedded model so that its field does not clash
// with the Model method.
type innerModel = server.Model

type hooked struct {
	innerModel
	gate  chan struct{} // when set, Generate waits for it (or ctx)
	fail  atomic.Pointer[error]
	calls atomic.Int32
}

func (h *hooked) Generate(ctx context.Context, req zimage.Request) (*zimage.Result, error) {
	h.calls.Add(1)
	if h.gate != nil {
		select {
		case <-h.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if e := h.fail.Load(); e != nil {
		return nil, *e
	}
	return h.innerModel.Generate(ctx, req)
}

type testServer struct {
	*httptest.Server
	srv   *server.Server
	out   string
	loads atomic.Int32
	log   *bytes.Buffer
	logMu sync.Mutex
	stop  context.CancelFunc
	done  chan error
}

// startServer runs a server over the shared pipeline (wrapped by wrap, if
// given) on a loopback httptest server.
func startServer(t *testing.T, cfg server.Config, wrap func(server.Model) server.Model) *testServer {
	t.Helper()
	p := tinyModel(t)
	ts := &testServer{out: t.TempDir(), log: &bytes.Buffer{}, done: make(chan error, 1)}
	if cfg.Model == "" && cfg.ModelsDir == "" {
		cfg.Model = pipeDir
	}
	cfg.Outputs = ts.out
	logMu := &ts.logMu
	cfg.Logger = slog.New(slog.NewTextHandler(lockedWriter{logMu, ts.log}, nil))
	if cfg.Load != nil {
		load := cfg.Load
		cfg.Load = func(path string) (server.Model, error) { ts.loads.Add(1); return load(path) }
	} else {
		cfg.Load = ts.sharedLoader(p, wrap)
	}
	cfg.Hash = func(path string) string { return zimage.ModelHash(path) }
	srv, err := server.New(cfg)
	require.NoError(t, err)
	ts.srv = srv
	ts.Server = httptest.NewServer(srv.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	ts.stop = cancel
	go func() { ts.done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-ts.done
		ts.Server.Close()
		if t.Failed() {
			logMu.Lock()
			t.Logf("server log:\n%s", ts.log.String())
			logMu.Unlock()
		}
	})
	ts.waitReady(t)
	return ts
}

func (ts *testServer) logText() string {
	ts.logMu.Lock()
	defer ts.logMu.Unlock()
	return ts.log.String()
}

func (ts *testServer) sharedLoader(p *zimage.Pipeline, wrap func(server.Model) server.Model) server.LoadFunc {
	return func(string) (server.Model, error) {
		ts.loads.Add(1)
		var m server.Model = shared{p}
		if wrap != nil {
			m = wrap(m)
		}
		return m, nil
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (ts *testServer) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if code, _ := ts.get(t, "/readyz"); code == 200 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("server not ready after 30 s")
}

func (ts *testServer) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(ts.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (ts *testServer) post(t *testing.T, path string, body any) (int, []byte, http.Header) {
	t.Helper()
	return ts.postCtx(t, context.Background(), path, body)
}

func (ts *testServer) postCtx(t *testing.T, ctx context.Context, path string, body any) (int, []byte, http.Header) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case string:
		rd = bytes.NewBufferString(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		js, err := json.Marshal(b)
		require.NoError(t, err)
		rd = bytes.NewReader(js)
	}
	req, err := http.NewRequestWithContext(ctx, "POST", ts.URL+path, rd)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// waitFor polls cond for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
}

func progress(t *testing.T, ts *testServer) map[string]any {
	t.Helper()
	code, b := ts.get(t, "/sdapi/v1/progress")
	require.Equal(t, 200, code)
	var p map[string]any
	require.NoError(t, json.Unmarshal(b, &p))
	return p
}

// hostRSS reads the process's resident set from /proc.
func hostRSS() (uint64, error) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, err
	}
	var size, res uint64
	if _, err := fmt.Sscan(string(b), &size, &res); err != nil {
		return 0, err
	}
	return res * uint64(os.Getpagesize()), nil
}
