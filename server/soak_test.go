package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/server"
)

var serveSoak = flag.Int("serve.soak", 2, "passes TestServeSoak makes over its request mix (at least 2; long run: 40, 440 requests)")

// serveState is what must return to its baseline in a server that runs
// for weeks.
type serveState struct {
	goroutines, fds int
	devInUse        int64
	objects         vk.Objects
	rss, anon       int64
}

func (s serveState) String() string {
	return fmt.Sprintf("%d goroutines, %d open files, device %d B in use, %d Vulkan objects, RSS %.1f MiB (anonymous %.1f)",
		s.goroutines, s.fds, s.devInUse, s.objects.Total(), float64(s.rss)/(1<<20), float64(s.anon)/(1<<20))
}

// serveNow reads the process's and the device's (nil: none) numbers once
// the HTTP stack is quiet: idle client connections are closed first, and
// the goroutines and files of closed connections end asynchronously, so
// it waits up to 10 s for them to drop to want's (when given).
func serveNow(t *testing.T, d *vk.Device, want *serveState) serveState {
	t.Helper()
	var s serveState
	deadline := time.Now().Add(10 * time.Second)
	for {
		http.DefaultClient.CloseIdleConnections()
		runtime.GC()
		s.goroutines = runtime.NumGoroutine()
		if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
			s.fds = len(fds) - 1 // the directory being read
		}
		if want == nil || (s.goroutines <= want.goroutines && s.fds <= want.fds) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d != nil {
		require.NoError(t, d.Flush())
		s.devInUse, s.objects = d.MemStats().InUse, d.Objects()
	}
	if raw, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			var kb int64
			if _, err := fmt.Sscanf(l, "VmRSS: %d kB", &kb); err == nil {
				s.rss = kb << 10
			}
			if _, err := fmt.Sscanf(l, "RssAnon: %d kB", &kb); err == nil {
				s.anon = kb << 10
			}
		}
	}
	if want != nil && (s.goroutines != want.goroutines || s.fds != want.fds) {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines %d (want %d), open files %d (want %d):\n%s", s.goroutines, want.goroutines, s.fds, want.fds,
			buf[:runtime.Stack(buf, true)])
	}
	return s
}

// TestServeSoak runs the server in-process, as `zimage serve` does, with
// its models on a device of the test's own, and sends passes of a request
// mix: txt2img of several sizes, a batch, LoRAs (stacked, switched,
// removed), a model switch to Z-Image-Turbo and back, a LoRA for the
// other model and a bad size (both answered 422), a job interrupted
// mid-denoise, a client that disconnects while its job runs and one whose
// job is still queued. After every pass goroutines, open files, device
// bytes and Vulkan objects equal those after the first, and every image
// equals the first pass's; once the server stops, the device is empty and
// closes clean and goroutines and files are back where they were before
// it started. -serve.soak sets the passes (long run: 40).
func TestServeSoak(t *testing.T) {
	sd := testref.Dir(t, "tiny-sd-turbo")
	zi := testref.Dir(t, "tiny-z-image-turbo")
	if _, err := os.Stat(zi); err != nil {
		t.Skipf("no tiny Z-Image model: %v", err)
	}
	models := t.TempDir()
	require.NoError(t, os.Symlink(sd, filepath.Join(models, "sd-turbo")))
	require.NoError(t, os.Symlink(zi, filepath.Join(models, "z-image")))
	loras := filepath.Join(sd, "loras")
	start := serveNow(t, nil, nil)
	d, err := vk.Open(vk.DefaultOptions())
	if err != nil {
		t.Skipf("no Vulkan device: %v", err)
	}
	ts := &testServer{out: t.TempDir(), log: &bytes.Buffer{}, done: make(chan error, 1)}
	cfg := server.Config{ModelsDir: models, Outputs: ts.out, LoRADir: loras, Queue: 4,
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&ts.logMu, ts.log}, nil)),
		Load: func(path string) (server.Model, error) {
			ts.loads.Add(1)
			return zimage.Load(path, zimage.WithBackend(d), zimage.WithLoRADir(loras))
		}}
	srv, err := server.New(cfg)
	require.NoError(t, err)
	ts.srv = srv
	ts.Server = httptest.NewServer(srv.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	ts.stop = cancel
	go func() { ts.done <- srv.Run(ctx) }()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-ts.done
			ts.Server.Close()
			d.Close()
		}
		if t.Failed() {
			t.Logf("server log:\n%s", ts.logText())
		}
	}()
	ts.waitReady(t)

	idle := func() {
		waitFor(t, 30*time.Second, "an idle queue", func() bool {
			return metric(t, ts, "zimage_queue_waiting") == 0 && metric(t, ts, "zimage_queue_running") == 0
		})
	}
	first := map[string][]string{} // request -> its images in pass 1
	images := func(name string, code int, body []byte, n int) {
		t.Helper()
		require.Equal(t, 200, code, "%s: %s", name, body)
		var r struct{ Images []string }
		require.NoError(t, json.Unmarshal(body, &r), name)
		require.Len(t, r.Images, n, name)
		if want, ok := first[name]; ok {
			require.Equal(t, want, r.Images, "%s: another image than in pass 1", name)
		} else {
			first[name] = r.Images
		}
	}
	txt2img := func(name, body string, n int) {
		t.Helper()
		code, b, _ := ts.post(t, "/sdapi/v1/txt2img", body)
		images(name, code, b, n)
	}
	invalid := func(name, body, want string) {
		t.Helper()
		code, b, _ := ts.post(t, "/sdapi/v1/txt2img", body)
		require.Equal(t, 422, code, "%s: %s", name, b)
		require.Contains(t, string(b), want, name)
	}
	stepping := func() {
		waitFor(t, 60*time.Second, "a denoising step", func() bool {
			st := progress(t, ts)["state"].(map[string]any)
			return metric(t, ts, "zimage_queue_running") == 1 && st["sampling_step"].(float64) >= 1
		})
	}
	const long = `{"prompt": "a long run", "steps": 150, "width": 64, "height": 64, "seed": 7}`
	requests := 0
	pass := func() {
		txt2img("64x64", `{"prompt": "a red cube", "width": 64, "height": 64, "seed": 1}`, 1)
		txt2img("batch lora", `{"prompt": "a blue sphere <lora:style_a:1>", "width": 64, "height": 96, "batch_size": 2, "seed": 2, "save_images": true}`, 2)
		txt2img("lora a+b cfg", `{"prompt": "a cat <lora:style_a:0.7> <lora:style_b:0.4>", "negative_prompt": "blurry", "cfg_scale": 7.5, "steps": 2, "width": 64, "height": 64, "seed": 3}`, 1)
		invalid("bad size", `{"prompt": "x", "width": 60, "height": 64}`, "width")

		// Interrupted mid-denoise: 200 with no image.
		running := postAsync(t, context.Background(), ts, long)
		stepping()
		code, _, _ := ts.post(t, "/sdapi/v1/interrupt", "")
		require.Equal(t, 200, code)
		a := <-running
		images("interrupted", a.code, a.body, 0)

		// A client that leaves while its job runs, and one that leaves
		// while its job waits behind another.
		gone, leave := context.WithCancel(context.Background())
		running = postAsync(t, gone, ts, long)
		stepping()
		waiting, leaveQueue := context.WithCancel(context.Background())
		queued := postAsync(t, waiting, ts, `{"prompt": "never runs", "width": 64, "height": 64}`)
		waitFor(t, 10*time.Second, "a waiting job", func() bool { return metric(t, ts, "zimage_queue_waiting") == 1 })
		leaveQueue()
		<-queued
		leave()
		<-running
		idle()

		// Z-Image and back: each switch closes one model and loads the other.
		txt2img("z-image", `{"prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "seed": 4, "override_settings": {"sd_model_checkpoint": "z-image"}}`, 1)
		invalid("sd lora on z-image", `{"prompt": "a fox <lora:style_a:1>", "width": 64, "height": 64, "steps": 1}`, "style_a")
		txt2img("z-image cfg", `{"prompt": "a red fox", "negative_prompt": "blurry", "cfg_scale": 4, "width": 64, "height": 64, "steps": 2, "seed": 5}`, 1)
		txt2img("back to sd lora", `{"prompt": "a cat <lora:locon_c:1>", "width": 64, "height": 64, "seed": 6, "override_settings": {"sd_model_checkpoint": "sd-turbo"}}`, 1)
		// The pass ends on the base model without LoRAs, the state it
		// compares.
		txt2img("64x64", `{"prompt": "a red cube", "width": 64, "height": 64, "seed": 1}`, 1)
		requests += 14
		idle()
	}
	passes := max(2, *serveSoak)
	var base, last serveState
	t0 := time.Now()
	for i := range passes {
		pass()
		if i == 0 {
			base = serveNow(t, d, nil)
			t.Logf("after pass 1 (%d requests, %d model loads): %v", requests, ts.loads.Load(), base)
			continue
		}
		last = serveNow(t, d, &base)
		if (i+1)%max(1, passes/8) == 0 {
			t.Logf("after pass %d (%d requests): %v", i+1, requests, last)
		}
		require.Equal(t, base.devInUse, last.devInUse, "device bytes in use after pass %d", i+1)
		require.Equal(t, base.objects, last.objects, "Vulkan objects after pass %d", i+1)
	}
	t.Logf("%d requests in %d passes (%d model loads) in %v; from pass 1 to the end: RSS %+.1f MiB (anonymous %+.1f MiB)",
		requests, passes, ts.loads.Load(), time.Since(t0).Round(time.Second),
		float64(last.rss-base.rss)/(1<<20), float64(last.anon-base.anon)/(1<<20))
	// As in the library's soak: anonymous memory, which the mapped model
	// files do not count in.
	require.Less(t, last.anon-base.anon, int64(24<<20), "anonymous RSS grew from %.1f to %.1f MiB", float64(base.anon)/(1<<20), float64(last.anon)/(1<<20))

	cancel()
	require.NoError(t, <-ts.done, "Run closes the model")
	ts.Server.Close()
	stopped = true
	require.Zero(t, d.MemStats().InUse, "device bytes once the server stopped")
	require.NoError(t, d.Close(), "closing the device checks every Vulkan object was destroyed")
	end := serveNow(t, nil, &start)
	t.Logf("before the server: %v; after it stopped: %v", start, end)
}

// ownDevice is a model that owns its device, with a fault hook, as
// `zimage serve` models own theirs: Close closes both.
type ownDevice struct {
	*zimage.Pipeline
	d *vk.Device
}

func (m ownDevice) Close() error { return errors.Join(m.Pipeline.Close(), m.d.Close()) }

// TestServeFaults fails the first, middle and last allocation and submit
// of a txt2img request in the server's model (its own device, as `zimage
// serve` opens): the request is answered 500 naming the failure, the
// device holds what it held before, and the next request makes the same
// image. A lost device is answered 500 too; the server drops the model
// and the next request loads it again on a fresh device. Every device
// closes clean, and goroutines and open files return to where they were.
func TestServeFaults(t *testing.T) {
	sd := testref.Dir(t, "tiny-sd-turbo")
	if _, err := vk.ListDevices(); err != nil {
		t.Skipf("no Vulkan device: %v", err)
	}
	start := serveNow(t, nil, nil)
	var (
		mu     sync.Mutex
		point  vk.FaultPoint
		at     int
		fault  error
		fired  int
		seen   [vk.NumFaultPoints]int
		dev    *vk.Device
		closed []error
	)
	hook := func(p vk.FaultPoint, n int) error {
		mu.Lock()
		defer mu.Unlock()
		seen[p]++ // across devices: the count since the test began
		if at > 0 && p == point && seen[p] == at {
			fired++
			return fault
		}
		return nil
	}
	arm := func(p vk.FaultPoint, n int, err error) {
		mu.Lock()
		point, at, fault, fired = p, seen[p]+n, err, 0
		mu.Unlock()
	}
	ts := &testServer{out: t.TempDir(), log: &bytes.Buffer{}, done: make(chan error, 1)}
	srv, err := server.New(server.Config{Model: sd, Outputs: ts.out,
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&ts.logMu, ts.log}, nil)),
		Load: func(path string) (server.Model, error) {
			ts.loads.Add(1)
			opts := vk.DefaultOptions()
			opts.Fault = hook
			d, err := vk.Open(opts)
			if err != nil {
				return nil, err
			}
			p, err := zimage.Load(path, zimage.WithBackend(d))
			if err != nil {
				return nil, errors.Join(err, d.Close())
			}
			mu.Lock()
			dev = d
			mu.Unlock()
			return closeRecorder{ownDevice{p, d}, &mu, &closed}, nil
		}})
	require.NoError(t, err)
	ts.srv = srv
	ts.Server = httptest.NewServer(srv.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	go func() { ts.done <- srv.Run(ctx) }()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-ts.done
			ts.Server.Close()
		}
		if t.Failed() {
			t.Logf("server log:\n%s", ts.logText())
		}
	}()
	ts.waitReady(t)

	const req = `{"prompt": "a red cube", "negative_prompt": "blue", "cfg_scale": 7.5, "steps": 2, "width": 64, "height": 64, "seed": 5}`
	image := func(what string) string {
		t.Helper()
		code, b, _ := ts.post(t, "/sdapi/v1/txt2img", req)
		require.Equal(t, 200, code, "%s: %s", what, b)
		var r struct{ Images []string }
		require.NoError(t, json.Unmarshal(b, &r))
		require.Len(t, r.Images, 1, what)
		return r.Images[0]
	}
	want := image("the first request")
	device := func() *vk.Device { mu.Lock(); defer mu.Unlock(); return dev }
	mem := func() (int64, vk.Objects) {
		d := device()
		require.NoError(t, d.Flush())
		return d.MemStats().InUse, d.Objects()
	}
	counted := func(p vk.FaultPoint) int {
		mu.Lock()
		before := seen[p]
		mu.Unlock()
		require.Equal(t, want, image("a request without faults"))
		mu.Lock()
		defer mu.Unlock()
		return seen[p] - before
	}
	base, objects := mem()
	injected := 0
	for _, p := range []vk.FaultPoint{vk.FaultAlloc, vk.FaultSubmit} {
		per := counted(p)
		for _, n := range []int{1, (per + 1) / 2, per} {
			arm(p, n, vk.ErrOutOfDeviceMemory)
			code, b, _ := ts.post(t, "/sdapi/v1/txt2img", req)
			mu.Lock()
			f := fired
			at = 0
			mu.Unlock()
			if f == 0 {
				// Submits depend on timing: this request made fewer.
				require.Equal(t, 200, code, "%s", b)
				continue
			}
			require.Equal(t, 500, code, "%v %d of %d: %s", p, n, per, b)
			require.Contains(t, string(b), "out of device memory", "%v %d of %d", p, n, per)
			require.Equal(t, want, image(fmt.Sprintf("the request after %v fault %d of %d", p, n, per)))
			inUse, objs := mem()
			require.Equal(t, base, inUse, "device bytes after %v fault %d of %d", p, n, per)
			require.Equal(t, objects, objs, "Vulkan objects after %v fault %d of %d", p, n, per)
			injected++
		}
	}

	// A lost device: the model is dropped and loaded again.
	per := counted(vk.FaultSubmit)
	arm(vk.FaultSubmit, (per+1)/2, vk.ErrDeviceLost)
	code, b, _ := ts.post(t, "/sdapi/v1/txt2img", req)
	require.Equal(t, 500, code, "%s", b)
	require.Contains(t, string(b), "device lost")
	loads := ts.loads.Load()
	require.Equal(t, want, image("the request after a lost device"))
	require.Equal(t, loads+1, ts.loads.Load(), "the model is loaded again after a lost device")
	injected++

	cancel()
	require.NoError(t, <-ts.done)
	ts.Server.Close()
	stopped = true
	mu.Lock()
	require.Len(t, closed, 2, "both models closed")
	for _, err := range closed {
		require.NoError(t, err, "closing a model and its device")
	}
	mu.Unlock()
	end := serveNow(t, nil, &start)
	t.Logf("%d faults injected (allocations, submits, a lost device), each answered 500 and recovered; %d model loads; before: %v; after: %v",
		injected, ts.loads.Load(), start, end)
}

// closeRecorder records the error of Close.
type closeRecorder struct {
	innerModel
	mu   *sync.Mutex
	errs *[]error
}

func (c closeRecorder) Close() error {
	err := c.innerModel.Close()
	c.mu.Lock()
	*c.errs = append(*c.errs, err)
	c.mu.Unlock()
	return err
}
