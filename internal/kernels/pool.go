package kernels

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Pool is a fixed set of worker goroutines that the products split their
// rows over. Dispatch costs one channel send per helping worker and no
// goroutine start, so a Pool pays off even for the small matrices of a
// decode step. A Pool may be used by several goroutines at once; their
// calls share the workers. A nil *Pool runs everything on the caller.
//
// Workers and callers poll for a short while (spinWait) before they
// sleep: a decode step is a few hundred products back to back, and on a
// virtual machine a sleeping thread's vCPU halts and takes a long time to
// wake (hundreds of microseconds measured here, the length of a whole
// product), so a pool that slept between products ran most of them on
// one thread.
//
// Close stops the workers; using a Pool after Close panics.
type Pool struct {
	threads int
	spin    time.Duration // how long waits poll before they block
	jobs    chan *job
	workers sync.WaitGroup
	running atomic.Int32 // workers not yet returned; for tests
	closed  atomic.Bool
}

// spinWait is how long an idle worker, or a caller waiting for its
// helpers, polls before it blocks. It covers the gaps between the
// products of one step (the norms, a small batch's attention, sampling:
// microseconds). It is short because polling longer does harm when
// other processes want the cores: a thread that waits long is waiting for
// one the kernel has descheduled, and polling takes the core that thread
// needs. With 2 ms of polling (yielding to other goroutines after the
// first 100 µs), decoding with a test suite running on the same two
// vCPUs fell to 7-26 tok/s at batch 1 and 29-36 at batch 8, against
// 15-24 and 69-87 without polling; with 100 µs it ran at 27-31 and
// 70-135.
const spinWait = 100 * time.Microsecond

// job is one parallel loop: helpers and the caller take chunks of [0,n)
// from next until none are left.
type job struct {
	fn    func(lo, hi int)
	n     int
	grain int
	// A guided job (ForGuided) hands out chunks of 1/div of what is
	// left, at least grain and in multiples of unit; div 0 is For's
	// fixed chunks.
	div, unit int
	next      atomic.Int64
	spin      time.Duration // the pool's
	left      atomic.Int32  // helpers that have not finished
	done      chan struct{} // the last helper to finish sends one value
}

// NewPool starts threads−1 workers: the goroutine that calls a product is
// the last thread. threads < 1 is treated as 1.
func NewPool(threads int) *Pool {
	threads = max(threads, 1)
	p := &Pool{threads: threads, jobs: make(chan *job, threads)}
	if threads <= runtime.GOMAXPROCS(0) {
		// More threads than processors would poll on processors the
		// working ones need: then waits block at once.
		p.spin = spinWait
	}
	p.running.Store(int32(threads - 1))
	for range threads - 1 {
		p.workers.Go(func() {
			defer p.running.Add(-1)
			for {
				j, ok := p.take()
				if !ok {
					return
				}
				j.work()
				if j.left.Add(-1) == 0 {
					j.done <- struct{}{}
				}
			}
		})
	}
	return p
}

// take returns the next job for a worker, polling for spinWait before it
// blocks; false once the pool is closed.
func (p *Pool) take() (*job, bool) {
	sp := spinner{limit: p.spin}
	for {
		select {
		case j, ok := <-p.jobs:
			return j, ok
		default:
		}
		if !sp.spin() {
			break
		}
	}
	j, ok := <-p.jobs
	return j, ok
}

// spinner bounds a polling loop to limit. It polls without yielding the
// processor: runtime.Gosched takes the scheduler's lock, and yielding at
// every poll cost a tenth of a batch-8 step at a few hundred products per
// step.
type spinner struct {
	limit time.Duration
	start time.Time
	n     int
}

// spin is called after each poll that found nothing; false means the
// caller should block instead.
func (s *spinner) spin() bool {
	if s.limit <= 0 {
		return false
	}
	s.n++
	if s.n&63 == 0 {
		now := time.Now()
		if s.start.IsZero() {
			s.start = now
		} else if now.Sub(s.start) > s.limit {
			return false
		}
	}
	return true
}

// Threads returns the number of threads a product on p uses.
func (p *Pool) Threads() int {
	if p == nil {
		return 1
	}
	return p.threads
}

// Close stops the workers and waits for them to exit. It must not be
// called while a product is running on p; calling it twice is harmless.
func (p *Pool) Close() {
	if p == nil || p.closed.Swap(true) {
		return
	}
	close(p.jobs)
	p.workers.Wait()
}

func (j *job) work() {
	for {
		lo, hi := j.claim()
		if lo >= j.n {
			return
		}
		j.fn(lo, hi)
	}
}

// claim takes the next chunk [lo,hi); lo ≥ j.n when none is left.
func (j *job) claim() (lo, hi int) {
	if j.div == 0 {
		lo = int(j.next.Add(int64(j.grain))) - j.grain
		return lo, min(lo+j.grain, j.n)
	}
	for {
		lo = int(j.next.Load())
		if lo >= j.n {
			return lo, lo
		}
		size := max((j.n-lo)/j.div, j.grain)
		size = (size + j.unit - 1) / j.unit * j.unit
		hi = min(lo+size, j.n)
		if j.next.CompareAndSwap(int64(lo), int64(hi)) {
			return lo, hi
		}
	}
}

// wait returns when every helper of j has finished, polling for spinWait
// before it blocks.
func (j *job) wait() {
	sp := spinner{limit: j.spin}
	for j.left.Load() != 0 {
		if !sp.spin() {
			<-j.done
			return
		}
	}
}

// For calls fn on disjoint chunks covering [0,n), each at most grain long,
// on up to p.threads goroutines (the caller's included), and returns when
// all are done. Chunks are handed out dynamically, so a core that the
// (shared, noisy) machine slows down takes fewer of them. The row-major
// products use it, and so does code outside this package that should run
// on the same threads (the engine's attention and element-wise work): a
// goroutine started per call instead would wait behind a worker that is
// polling for its next product.
func (p *Pool) For(n, grain int, fn func(lo, hi int)) {
	grain = max(grain, 1)
	p.run(&job{fn: fn, n: n, grain: grain}, (n+grain-1)/grain)
}

// ForGuided is For with chunks that shrink as the work runs out: each
// takes 1/(2·threads) of the rows left, at least least rows, and starts at
// a multiple of unit (each chunk but the last is a multiple of unit
// long). The packed products use it: the threads read long runs of rows at
// first, and the last chunks are small, so that no thread waits long for
// the others to finish theirs.
func (p *Pool) ForGuided(n, unit, least int, fn func(lo, hi int)) {
	unit = max(unit, 1)
	least = max(least, 1)
	p.run(&job{fn: fn, n: n, grain: least, unit: unit, div: 2 * p.Threads()}, (n+least-1)/least)
}

// run runs j on the pool; chunks is how many chunks of j there are at
// most.
func (p *Pool) run(j *job, chunks int) {
	n, fn := j.n, j.fn
	if n <= 0 {
		return
	}
	if p == nil || p.threads == 1 || chunks <= 1 {
		fn(0, n)
		return
	}
	if p.closed.Load() {
		panic("kernels: Pool used after Close")
	}
	helpers := min(p.threads-1, chunks-1)
	j.spin, j.done = p.spin, make(chan struct{}, 1)
	j.left.Store(int32(helpers))
	for range helpers {
		p.jobs <- j
	}
	j.work()
	j.wait()
}
