package accel

import (
	"context"
	"sync"
	"time"
)

// DefaultInterval is how often a Sampler reads telemetry: often enough for
// the router to see heat and load, rarely enough to cost nothing (the ivpu
// documentation asks for npu_busy_time_us reads no more than once a second).
const DefaultInterval = 5 * time.Second

// Sampler samples telemetry periodically in one goroutine and keeps the
// latest sample, with rates against the one before. The node daemon owns it:
// it calls Start once and Stop once on shutdown; Latest may be called from any
// goroutine.
type Sampler struct {
	root     string
	interval time.Duration

	mu      sync.Mutex // guards latest and started
	latest  Telemetry
	started bool

	stopOnce sync.Once
	stop     chan struct{} // closed by Stop
	done     chan struct{} // closed when the goroutine has returned
}

// NewSampler returns a sampler of the machine at root; interval <= 0 means
// DefaultInterval.
func NewSampler(root string, interval time.Duration) *Sampler {
	if interval <= 0 {
		interval = DefaultInterval
	}
	return &Sampler{root: root, interval: interval, stop: make(chan struct{}), done: make(chan struct{})}
}

// Start takes a first sample, so that Latest is useful at once, then samples
// every interval until Stop is called or ctx is done. Calling it again does
// nothing.
func (s *Sampler) Start(ctx context.Context) {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return
	}
	s.started = true
	s.latest = Sample(s.root)
	s.mu.Unlock()
	go s.run(ctx)
}

func (s *Sampler) run(ctx context.Context) {
	defer close(s.done)
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		case <-tick.C:
		}
		cur := Sample(s.root)
		s.mu.Lock()
		s.latest = cur.Since(s.latest)
		s.mu.Unlock()
	}
}

// Stop ends sampling and waits for the goroutine to return. It is safe to
// call more than once, and without Start.
func (s *Sampler) Stop() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if started {
		<-s.done
	}
}

// Latest returns the most recent sample; the zero Telemetry before Start.
func (s *Sampler) Latest() Telemetry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest
}
