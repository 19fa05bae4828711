package kernels

import (
	"sync"
	"sync/atomic"
)

// Pool is a fixed set of worker goroutines that the products split their
// rows over. Dispatch costs one channel send per helping worker and no
// goroutine start, so a Pool pays off even for the small matrices of a
// decode step. A Pool may be used by several goroutines at once; their
// calls share the workers. A nil *Pool runs everything on the caller.
//
// Close stops the workers; using a Pool after Close panics.
type Pool struct {
	threads int
	jobs    chan *job
	workers sync.WaitGroup
	running atomic.Int32 // workers not yet returned; for tests
	closed  atomic.Bool
}

// job is one parallel loop: helpers and the caller take chunks of [0,n)
// from next until none are left.
type job struct {
	fn    func(lo, hi int)
	n     int
	grain int
	next  atomic.Int64
	done  sync.WaitGroup
}

// NewPool starts threads−1 workers: the goroutine that calls a product is
// the last thread. threads < 1 is treated as 1.
func NewPool(threads int) *Pool {
	threads = max(threads, 1)
	p := &Pool{threads: threads, jobs: make(chan *job, threads)}
	p.running.Store(int32(threads - 1))
	for range threads - 1 {
		p.workers.Go(func() {
			defer p.running.Add(-1)
			for j := range p.jobs {
				j.work()
				j.done.Done()
			}
		})
	}
	return p
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
		lo := int(j.next.Add(int64(j.grain))) - j.grain
		if lo >= j.n {
			return
		}
		j.fn(lo, min(lo+j.grain, j.n))
	}
}

// parallel calls fn on disjoint chunks covering [0,n), each at most grain
// long, on up to p.threads goroutines, and returns when all are done.
// Chunks are handed out dynamically, so a core that the (shared, noisy)
// machine slows down takes fewer of them.
func (p *Pool) parallel(n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	grain = max(grain, 1)
	chunks := (n + grain - 1) / grain
	if p == nil || p.threads == 1 || chunks == 1 {
		fn(0, n)
		return
	}
	if p.closed.Load() {
		panic("kernels: Pool used after Close")
	}
	j := &job{fn: fn, n: n, grain: grain}
	helpers := min(p.threads-1, chunks-1)
	j.done.Add(helpers)
	for range helpers {
		p.jobs <- j
	}
	j.work()
	j.done.Wait()
}
