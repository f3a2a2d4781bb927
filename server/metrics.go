package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the server's Prometheus series, on a registry of its own
// (no process-wide default registry: two servers in one test binary must
// not collide).
type metrics struct {
	reg      *prometheus.Registry
	waiting  prometheus.Gauge
	running  prometheus.Gauge
	capacity prometheus.Gauge
	loaded   prometheus.Gauge
	jobs     *prometheus.CounterVec
	images   prometheus.Counter
	stage    *prometheus.HistogramVec
	peakDev  prometheus.Gauge
	peakRSS  prometheus.Gauge
}

func newMetrics(queueLen int) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{Name: "zimage_queue_waiting",
			Help: "Jobs waiting in the queue."}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{Name: "zimage_queue_running",
			Help: "Jobs running on the device (0 or 1)."}),
		capacity: prometheus.NewGauge(prometheus.GaugeOpts{Name: "zimage_queue_capacity",
			Help: "Most jobs that may wait (--queue); more are refused with 503."}),
		loaded: prometheus.NewGauge(prometheus.GaugeOpts{Name: "zimage_model_loaded",
			Help: "1 when a model is loaded and ready."}),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "zimage_jobs_total",
			Help: "txt2img jobs by outcome: ok, interrupted, cancelled (client gone), failed, invalid, rejected (queue full or shutting down)."}, []string{"outcome"}),
		images: prometheus.NewCounter(prometheus.CounterOpts{Name: "zimage_images_total",
			Help: "Images generated."}),
		stage: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "zimage_stage_seconds",
			Help:    "Time of each generation stage per image (text, denoise, decode).",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}, []string{"stage"}),
		peakDev: prometheus.NewGauge(prometheus.GaugeOpts{Name: "zimage_peak_device_bytes",
			Help: "Peak device memory of the last image."}),
		peakRSS: prometheus.NewGauge(prometheus.GaugeOpts{Name: "zimage_peak_host_rss_bytes",
			Help: "The process's peak resident memory."}),
	}
	m.reg.MustRegister(m.waiting, m.running, m.capacity, m.loaded, m.jobs, m.images, m.stage, m.peakDev, m.peakRSS,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.capacity.Set(float64(queueLen))
	for _, o := range []string{"ok", "interrupted", "cancelled", "failed", "invalid", "rejected"} {
		m.jobs.WithLabelValues(o)
	}
	return m
}

func (m *metrics) modelLoaded(ok bool) {
	if ok {
		m.loaded.Set(1)
	} else {
		m.loaded.Set(0)
	}
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
