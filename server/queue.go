package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/zimage/zimage"
)

// Why a job ended early; the cause of its context.
var (
	errInterrupted  = errors.New("interrupted")
	errClientGone   = errors.New("client disconnected")
	errShuttingDown = errors.New("server is shutting down")
	errQueueFull    = errors.New("queue is full")
)

// job is one txt2img request: queued, then run by the worker, then done.
// Its progress fields are guarded by the queue's mutex.
type job struct {
	id   string
	spec spec
	ctx  context.Context
	stop context.CancelCauseFunc // interrupt (errInterrupted) or abandon (errClientGone)
	done chan struct{}           // closed when the worker is finished with it
	out  *outcome                // set before done closes

	// progress, guarded by queue.mu
	started    time.Time
	stage      string
	stageStart time.Time
	step       int
	steps      int
	image      int // images finished (or skipped) so far
	images     int
	skipped    bool
	skipImage  context.CancelFunc // cancels only the current image
	estimate   *estimate
	finishedAt time.Time
	preview    string // base64 PNG of the latest live preview, "" = none
	previewID  int    // counts previews, for /internal/progress
}

// kind is A1111's job name: "img2img" or "txt2img".
func (j *job) kind() string {
	if j.spec.i2i != nil {
		return "img2img"
	}
	return "txt2img"
}

// outcome is what the worker hands back to the waiting handler.
type outcome struct {
	images      []generated
	err         error // nil, or why the job failed or stopped
	interrupted bool
	model       zimage.ModelInfo
	result      *zimage.Result // the last image's (timings, peaks)
	seed        int64
	sampler     string
	width       int
	height      int
	steps       int
	cfg         float64
}

// generated is one finished image.
type generated struct {
	png  []byte
	seed int64
	info string // the A1111 "parameters" text
	path string // under --outputs when saved, "" otherwise
}

// queue is the FIFO of waiting jobs with a bounded length, plus the one
// job running on the device. Handlers only enqueue, look and cancel: they
// never wait for the device.
type queue struct {
	mu      sync.Mutex
	wake    chan struct{} // one token: "something was queued or closed"
	waiting []*job
	running *job
	recent  []*job // finished jobs, newest last, for /internal/progress
	max     int
	closed  bool
}

func newQueue(max int) *queue {
	return &queue{wake: make(chan struct{}, 1), max: max}
}

// submit queues j, or fails with errQueueFull or errShuttingDown.
func (q *queue) submit(j *job) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.closed:
		return errShuttingDown
	case len(q.waiting) >= q.max:
		return errQueueFull
	}
	q.waiting = append(q.waiting, j)
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return nil
}

// next blocks until a job is waiting (and marks it running) or ctx ends.
func (q *queue) next(ctx context.Context) *job {
	for {
		q.mu.Lock()
		if len(q.waiting) > 0 {
			j := q.waiting[0]
			q.waiting = q.waiting[1:]
			q.running = j
			j.started = time.Now()
			q.mu.Unlock()
			return j
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-ctx.Done():
			return nil
		}
	}
}

// finish records j's outcome and wakes its handler.
func (q *queue) finish(j *job, o *outcome) {
	q.mu.Lock()
	if q.running == j {
		q.running = nil
	}
	j.out = o
	j.finishedAt = time.Now()
	q.recent = append(q.recent, j)
	if len(q.recent) > 64 {
		q.recent = q.recent[len(q.recent)-64:]
	}
	q.mu.Unlock()
	close(j.done)
}

// abandon takes a job its client gave up on out of the queue, or stops it
// when it runs.
func (q *queue) abandon(j *job) {
	j.stop(errClientGone)
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, w := range q.waiting {
		if w == j {
			q.waiting = append(q.waiting[:i], q.waiting[i+1:]...)
			return
		}
	}
}

// position is j's place in the queue (1 = next), 0 when it is not waiting.
func (q *queue) position(j *job) int {
	for i, w := range q.waiting {
		if w == j {
			return i + 1
		}
	}
	return 0
}

// find looks a job up by id among the waiting, running and recent ones.
// The caller holds q.mu.
func (q *queue) find(id string) *job {
	if q.running != nil && q.running.id == id {
		return q.running
	}
	for _, w := range q.waiting {
		if w.id == id {
			return w
		}
	}
	for i := len(q.recent) - 1; i >= 0; i-- {
		if q.recent[i].id == id {
			return q.recent[i]
		}
	}
	return nil
}

// interrupt stops the job with that id (or the running one when id is ""):
// a waiting job leaves the queue and is answered at once, a running one
// stops at the next step and returns the images it finished.
func (q *queue) interrupt(id string) bool {
	q.mu.Lock()
	j := q.running
	if id != "" {
		j = q.find(id)
	}
	if j == nil || j.out != nil {
		q.mu.Unlock()
		return false
	}
	j.stop(errInterrupted)
	waiting := false
	for i, w := range q.waiting {
		if w == j {
			q.waiting = append(q.waiting[:i], q.waiting[i+1:]...)
			waiting = true
			break
		}
	}
	q.mu.Unlock()
	if waiting {
		q.finish(j, &outcome{err: errInterrupted, interrupted: true})
	}
	return true
}

// skip abandons the running job's current image and goes on with the next.
func (q *queue) skip() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.running == nil || q.running.skipImage == nil {
		return false
	}
	q.running.skipped = true
	q.running.skipImage()
	return true
}

// close refuses new jobs and hands back the waiting ones.
func (q *queue) close() []*job {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	w := q.waiting
	q.waiting = nil
	return w
}

// depth is the number of waiting jobs and whether one is running.
func (q *queue) depth() (waiting int, running bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiting), q.running != nil
}
