package server_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/server"
)

func metric(t *testing.T, ts *testServer, name string) float64 {
	t.Helper()
	_, b := ts.get(t, "/metrics")
	for _, l := range splitLines(string(b)) {
		if len(l) > len(name) && l[:len(name)] == name && l[len(name)] == ' ' {
			v, err := strconv.ParseFloat(l[len(name)+1:], 64)
			require.NoError(t, err)
			return v
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

type answer struct {
	code int
	body []byte
	hdr  map[string][]string
}

func postAsync(t *testing.T, ctx context.Context, ts *testServer, body string) chan answer {
	ch := make(chan answer, 1)
	go func() {
		code, b, h := ts.postCtx(t, ctx, "/sdapi/v1/txt2img", body)
		ch <- answer{code, b, h}
	}()
	return ch
}

// TestQueueFull: with the device held, --queue 2 takes two waiting jobs
// and refuses the next with 503 and Retry-After; /readyz says so; all
// accepted jobs finish once the device is free, in order.
func TestQueueFull(t *testing.T) {
	gate := make(chan struct{})
	ts := startServer(t, server.Config{Queue: 2}, func(m server.Model) server.Model { return &hooked{innerModel: m, gate: gate} })
	var chans []chan answer
	for i := 0; i < 3; i++ {
		chans = append(chans, postAsync(t, context.Background(), ts, `{"prompt": "x", "seed": `+strconv.Itoa(i)+`}`))
		want := float64(i) // the first runs, the next two wait
		waitFor(t, 5*time.Second, "queue depth", func() bool {
			return metric(t, ts, "zimage_queue_waiting") == want && metric(t, ts, "zimage_queue_running") == 1
		})
	}
	code, body, hdr := ts.post(t, "/sdapi/v1/txt2img", `{"prompt": "one too many"}`)
	assert.Equal(t, 503, code, string(body))
	assert.NotEmpty(t, hdr.Get("Retry-After"))
	code, _ = ts.get(t, "/readyz")
	assert.Equal(t, 503, code, "readyz while the queue is full")
	code, _ = ts.get(t, "/healthz")
	assert.Equal(t, 200, code)
	close(gate)
	for i, ch := range chans {
		a := <-ch
		require.Equal(t, 200, a.code, "job %d: %s", i, a.body)
		var r struct{ Info string }
		require.NoError(t, json.Unmarshal(a.body, &r))
		var info struct{ Seed int }
		require.NoError(t, json.Unmarshal([]byte(r.Info), &info))
		assert.Equal(t, i, info.Seed)
	}
	assert.EqualValues(t, 1, metric(t, ts, `zimage_jobs_total{outcome="rejected"}`))
}

// TestDisconnectCancels: a client that leaves takes its job out of the
// queue, or stops it between steps when it runs.
func TestDisconnectCancels(t *testing.T) {
	gate := make(chan struct{})
	var h *hooked
	ts := startServer(t, server.Config{}, func(m server.Model) server.Model { h = &hooked{innerModel: m, gate: gate}; return h })
	first := postAsync(t, context.Background(), ts, `{"prompt": "held"}`)
	waitFor(t, 5*time.Second, "first job running", func() bool { return metric(t, ts, "zimage_queue_running") == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	gone := postAsync(t, ctx, ts, `{"prompt": "leaves"}`)
	waitFor(t, 5*time.Second, "second job waiting", func() bool { return metric(t, ts, "zimage_queue_waiting") == 1 })
	cancel()
	<-gone
	waitFor(t, 5*time.Second, "queue emptied", func() bool { return metric(t, ts, "zimage_queue_waiting") == 0 })
	close(gate)
	require.Equal(t, 200, (<-first).code)
	assert.EqualValues(t, 1, h.calls.Load(), "the abandoned job never ran")
	assert.EqualValues(t, 1, metric(t, ts, `zimage_jobs_total{outcome="cancelled"}`))

	// Running: 150 steps would take many seconds; leaving after the first
	// step frees the device at the next one.
	ctx, cancel = context.WithCancel(context.Background())
	running := postAsync(t, ctx, ts, `{"prompt": "long", "steps": 150}`)
	waitFor(t, 20*time.Second, "a denoising step", func() bool {
		st := progress(t, ts)["state"].(map[string]any)
		return st["sampling_step"].(float64) >= 1
	})
	t0 := time.Now()
	cancel()
	<-running
	waitFor(t, 5*time.Second, "the device freed", func() bool { return metric(t, ts, "zimage_queue_running") == 0 })
	t.Logf("device free %v after the client left", time.Since(t0))
	assert.EqualValues(t, 2, metric(t, ts, `zimage_jobs_total{outcome="cancelled"}`))
	code, body, _ := ts.post(t, "/sdapi/v1/txt2img", `{"prompt": "after", "seed": 1}`)
	assert.Equal(t, 200, code, string(body))
}

// TestInterruptAndSkip: interrupt stops a job mid-denoise and answers
// 200 with the images finished so far (A1111's behaviour); skip drops the
// current image of a batch and goes on.
func TestInterruptAndSkip(t *testing.T) {
	ts := startServer(t, server.Config{}, nil)
	waitStep := func() {
		waitFor(t, 20*time.Second, "a denoising step", func() bool {
			st := progress(t, ts)["state"].(map[string]any)
			return st["sampling_step"].(float64) >= 1
		})
	}
	done := postAsync(t, context.Background(), ts, `{"prompt": "long", "steps": 150, "n_iter": 2, "seed": 5}`)
	waitStep()
	p := progress(t, ts)
	assert.Greater(t, p["progress"].(float64), 0.0)
	assert.Greater(t, p["eta_relative"].(float64), 0.0)
	assert.EqualValues(t, 2, p["state"].(map[string]any)["job_count"])
	assert.EqualValues(t, 150, p["state"].(map[string]any)["sampling_steps"])
	t0 := time.Now()
	code, _, _ := ts.post(t, "/sdapi/v1/interrupt", "")
	require.Equal(t, 200, code)
	a := <-done
	t.Logf("answered %v after the interrupt", time.Since(t0))
	require.Equal(t, 200, a.code, string(a.body))
	var r struct{ Images []string }
	require.NoError(t, json.Unmarshal(a.body, &r))
	assert.Empty(t, r.Images, "interrupted during the first image")
	assert.EqualValues(t, 1, metric(t, ts, `zimage_jobs_total{outcome="interrupted"}`))

	done = postAsync(t, context.Background(), ts, `{"prompt": "skip one", "steps": 150, "batch_size": 2, "seed": 9}`)
	waitStep()
	code, _, _ = ts.post(t, "/sdapi/v1/skip", "")
	require.Equal(t, 200, code)
	waitFor(t, 20*time.Second, "the second image", func() bool {
		st := progress(t, ts)["state"].(map[string]any)
		return st["job_no"].(float64) == 1 && st["sampling_step"].(float64) >= 1
	})
	ts.post(t, "/sdapi/v1/interrupt", "")
	a = <-done
	require.Equal(t, 200, a.code)

	// Skip on a short batch: the second image is the one returned.
	done = postAsync(t, context.Background(), ts, `{"prompt": "skip first", "steps": 40, "batch_size": 2, "seed": 9}`)
	waitStep()
	ts.post(t, "/sdapi/v1/skip", "")
	a = <-done
	require.Equal(t, 200, a.code)
	var r2 struct {
		Images []string
		Info   string
	}
	require.NoError(t, json.Unmarshal(a.body, &r2))
	require.Len(t, r2.Images, 1)
	_, params := decodePNG(t, r2.Images[0])
	assert.Contains(t, params, "Seed: 10,", "the skipped image was the first (seed 9)")
}

// TestTaskProgress: each browser sees its own job, with its queue position.
func TestTaskProgress(t *testing.T) {
	gate := make(chan struct{})
	ts := startServer(t, server.Config{}, func(m server.Model) server.Model { return &hooked{innerModel: m, gate: gate} })
	a := postAsync(t, context.Background(), ts, `{"prompt": "a", "force_task_id": "task(a)"}`)
	waitFor(t, 5*time.Second, "a running", func() bool { return metric(t, ts, "zimage_queue_running") == 1 })
	b := postAsync(t, context.Background(), ts, `{"prompt": "b", "force_task_id": "task(b)"}`)
	waitFor(t, 5*time.Second, "b waiting", func() bool { return metric(t, ts, "zimage_queue_waiting") == 1 })
	get := func(id string) map[string]any {
		code, body, _ := ts.post(t, "/internal/progress", map[string]any{"id_task": id, "id_live_preview": -1})
		require.Equal(t, 200, code)
		var m map[string]any
		require.NoError(t, json.Unmarshal(body, &m))
		return m
	}
	pa, pb := get("task(a)"), get("task(b)")
	assert.Equal(t, true, pa["active"])
	assert.Equal(t, false, pa["queued"])
	assert.Equal(t, true, pb["queued"])
	assert.EqualValues(t, 1, pb["queue_position"])
	assert.Equal(t, "In queue: 1/1", pb["textinfo"])
	// The web UI interrupts its own task only.
	code, _, _ := ts.post(t, "/sdapi/v1/interrupt", map[string]any{"id_task": "task(b)"})
	require.Equal(t, 200, code)
	ab := <-b
	assert.Equal(t, 200, ab.code)
	assert.Equal(t, true, get("task(a)")["active"], "interrupting b left a running")
	close(gate)
	require.Equal(t, 200, (<-a).code)
	assert.Equal(t, true, get("task(a)")["completed"])
}

// TestModelsDir: several models, one loaded at a time, switched by
// options or by a request's override_settings.
func TestModelsDir(t *testing.T) {
	tinyModel(t)
	root, _ := testref.Root()
	dir := t.TempDir()
	require.NoError(t, os.Symlink(filepath.Join(root, "tiny-sd-turbo"), filepath.Join(dir, "a-turbo")))
	require.NoError(t, os.Symlink(filepath.Join(root, "tiny-sd15"), filepath.Join(dir, "b-sd15")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a model"), 0o644))
	var mu sync.Mutex
	var loaded []string
	load := func(path string) (server.Model, error) {
		mu.Lock()
		loaded = append(loaded, filepath.Base(path))
		mu.Unlock()
		return zimage.Load(path, zimage.WithBackend(pipe.Backend()))
	}
	ts := startServer(t, server.Config{ModelsDir: dir, Load: load}, nil)
	var models []map[string]any
	_, b := ts.get(t, "/sdapi/v1/sd-models")
	require.NoError(t, json.Unmarshal(b, &models))
	require.Len(t, models, 2)
	assert.Equal(t, "a-turbo", models[0]["model_name"])

	code, body, _ := ts.post(t, "/sdapi/v1/options", map[string]any{"sd_model_checkpoint": "b-sd15"})
	require.Equal(t, 200, code, string(body))
	var opts map[string]any
	_, b = ts.get(t, "/sdapi/v1/options")
	require.NoError(t, json.Unmarshal(b, &opts))
	assert.Contains(t, opts["sd_model_checkpoint"], "b-sd15")

	code, body, _ = ts.post(t, "/sdapi/v1/txt2img", `{"prompt": "x", "seed": 1, "override_settings": {"sd_model_checkpoint": "a-turbo"}}`)
	require.Equal(t, 200, code, string(body))
	var r struct{ Info string }
	require.NoError(t, json.Unmarshal(body, &r))
	var info struct {
		SDModelName string `json:"sd_model_name"`
		Steps       int
	}
	require.NoError(t, json.Unmarshal([]byte(r.Info), &info))
	assert.Equal(t, "a-turbo", info.SDModelName)
	assert.Equal(t, 1, info.Steps, "the turbo model's default steps")
	mu.Lock()
	assert.Equal(t, []string{"a-turbo", "b-sd15", "a-turbo"}, loaded)
	mu.Unlock()
}

// TestShutdown: stopping the server answers the waiting jobs 503, stops
// the running one between steps, and returns.
func TestShutdown(t *testing.T) {
	ts := startServer(t, server.Config{}, nil)
	running := postAsync(t, context.Background(), ts, `{"prompt": "long", "steps": 150}`)
	waitFor(t, 20*time.Second, "a denoising step", func() bool {
		return progress(t, ts)["state"].(map[string]any)["sampling_step"].(float64) >= 1
	})
	waiting := postAsync(t, context.Background(), ts, `{"prompt": "waits"}`)
	waitFor(t, 5*time.Second, "one waiting", func() bool { return metric(t, ts, "zimage_queue_waiting") == 1 })
	t0 := time.Now()
	ts.stop()
	select {
	case err := <-ts.done:
		require.NoError(t, err)
		ts.done <- nil // for the cleanup
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	t.Logf("stopped in %v", time.Since(t0))
	assert.Equal(t, 503, (<-waiting).code)
	assert.Equal(t, 200, (<-running).code, "the running job answers with what it finished")
	code, _, _ := ts.post(t, "/sdapi/v1/txt2img", `{"prompt": "late"}`)
	assert.Equal(t, 503, code)
	code, _ = ts.get(t, "/readyz")
	assert.Equal(t, 503, code)
}
