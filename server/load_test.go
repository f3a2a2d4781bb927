package server_test

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/server"
)

// TestLoad64 sends 64 txt2img requests at once to a server with --queue 8,
// over loopback only, bounded in time: every request gets 200 or 503, the
// server answers /healthz throughout, and once the queue drains the
// goroutines and the Go heap are back where they were.
func TestLoad64(t *testing.T) {
	if testing.Short() {
		t.Skip("load test: -short")
	}
	const clients, queueLen = 64, 8
	ts := startServer(t, server.Config{Queue: queueLen}, nil)
	// Warm up: the first image compiles kernels; measure after it.
	code, body, _ := ts.post(t, "/sdapi/v1/txt2img", `{"prompt": "warm", "seed": 1}`)
	require.Equal(t, 200, code, string(body))
	http.DefaultClient.CloseIdleConnections()
	heapBefore, rssBefore, gBefore := memNow()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var health atomic.Int32
	var healthFails atomic.Int32
	var healthMax atomic.Int64
	stopHealth := make(chan struct{})
	var hw sync.WaitGroup
	hw.Add(1)
	go func() {
		defer hw.Done()
		for {
			select {
			case <-stopHealth:
				return
			case <-time.After(50 * time.Millisecond):
			}
			t0 := time.Now()
			req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+"/healthz", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil || resp.StatusCode != 200 {
				healthFails.Add(1)
			} else {
				health.Add(1)
			}
			if resp != nil {
				resp.Body.Close()
			}
			if d := time.Since(t0).Microseconds(); d > healthMax.Load() {
				healthMax.Store(d)
			}
		}
	}()

	type result struct {
		code int
		dur  time.Duration
	}
	results := make([]result, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			code, _, _ := ts.postCtx(t, ctx, "/sdapi/v1/txt2img", fmt.Sprintf(`{"prompt": "load %d", "seed": %d}`, i, i))
			results[i] = result{code, time.Since(t0)}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	close(stopHealth)
	hw.Wait()

	var ok, busy []time.Duration
	for i, r := range results {
		switch r.code {
		case 200:
			ok = append(ok, r.dur)
		case 503:
			busy = append(busy, r.dur)
		default:
			t.Errorf("request %d: status %d, want 200 or 503", i, r.code)
		}
	}
	assert.GreaterOrEqual(t, len(ok), queueLen+1, "the running job and a full queue are served")
	assert.Zero(t, healthFails.Load(), "/healthz failed during the load")
	assert.Positive(t, health.Load())

	http.DefaultClient.CloseIdleConnections()
	waitFor(t, 10*time.Second, "queue drained", func() bool {
		return metric(t, ts, "zimage_queue_waiting") == 0 && metric(t, ts, "zimage_queue_running") == 0
	})
	var heapAfter, rssAfter uint64
	var gAfter int
	deadline := time.Now().Add(10 * time.Second)
	for {
		heapAfter, rssAfter, gAfter = memNow()
		if gAfter <= gBefore+2 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines %d -> %d after the drain:\n%s", gBefore, gAfter, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("load: %d requests, queue %d, %v wall: %d ok (p50 %v, p90 %v, p99 %v, max %v), %d 503 (p50 %v, max %v)",
		clients, queueLen, wall.Round(time.Millisecond), len(ok), pct(ok, 50), pct(ok, 90), pct(ok, 99), pct(ok, 100),
		len(busy), pct(busy, 50), pct(busy, 100))
	t.Logf("healthz: %d answers, worst %v; goroutines %d -> %d; Go heap %.1f -> %.1f MiB; RSS %.1f -> %.1f MiB",
		health.Load(), time.Duration(healthMax.Load())*time.Microsecond, gBefore, gAfter,
		float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20), float64(rssBefore)/(1<<20), float64(rssAfter)/(1<<20))
	// The queue holds PNGs and request bodies only while jobs live; after
	// the drain the heap is back within a few MiB (GC noise, pooled
	// buffers of the HTTP stack).
	assert.Less(t, int64(heapAfter)-int64(heapBefore), int64(16<<20), "Go heap grew by more than 16 MiB")
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))].Round(time.Millisecond)
}

// memNow is the live Go heap after a GC, the RSS and the goroutine count.
// Idle keep-alive connections (three goroutines each) are closed first.
func memNow() (heap, rss uint64, goroutines int) {
	http.DefaultClient.CloseIdleConnections()
	time.Sleep(20 * time.Millisecond)
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r, _ := hostRSS()
	return ms.HeapAlloc, r, runtime.NumGoroutine()
}
