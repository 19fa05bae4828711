package engine

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/npumesh/npumesh/internal/kvcache"
)

// seq is one request's sequence as the scheduler runs it.
type seq struct {
	// Set by Generate before submission, then the scheduler's alone.
	ctx    context.Context
	tokens []int32 // the prompt, then each sampled token
	prompt int     // prompt length
	limit  int     // tokens to sample at most
	smp    *sampler
	params SamplingParams // smp's, for a pipeline's last stage
	order  uint64         // submission order (and id in a pipeline): older sequences go first
	kv     *kvcache.Seq   // nil until first admitted
	seen   bool           // admitted once (prefix reuse counted)
	// In a pipeline: inflight while the last stage samples its next
	// token; sent once any of its rows went downstream.
	inflight, sent bool

	// mu guards ready, end, err and cached, which pass results to
	// Generate; notify (capacity 1) wakes it after a change.
	mu     sync.Mutex
	ready  []int32 // sampled, not yet taken
	end    bool    // no more tokens will come
	err    error   // why the scheduler gave up, if it did
	cached int     // prompt tokens served from the cache
	notify chan struct{}
	// finished is closed when the scheduler has dropped the sequence and
	// released its cache blocks.
	finished chan struct{}
}

func (q *seq) signal() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// take returns what the scheduler produced since the last take.
func (q *seq) take() (ids []int32, end bool, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	ids, q.ready = q.ready, nil
	return ids, q.end, q.err
}

// scheduler runs the Model's sequences in steps: in each, every running
// sequence advances by one token (decoding) or one chunk of its prompt
// (prefill), and all of them go through the weights together. New
// sequences join between steps. When the KV budget runs out, the newest
// running sequence is preempted: it gives its blocks back (the full ones
// stay cached) and later resumes by recomputing what was evicted.
//
// The scheduler goroutine is owned by the Model: started by Load, stopped
// by Close (quit, then wait for done), which first waits for every
// Generate call, so no sequence is left when it stops.
type scheduler struct {
	m        *Model
	chunk    int // prompt tokens per sequence per step
	budget   int // prompt tokens per step, all sequences together
	maxBatch int // running sequences at most
	submit   chan *seq
	quit     chan struct{}
	done     chan struct{}
	// peak is the largest number of sequences run in one step (tests
	// read it).
	peak atomic.Int64

	// A first pipeline stage's Downstream and number of micro-batches
	// (nil and 1 otherwise); results and failed bring what Model.StageResults and
	// StageFailed are given.
	pipe  Downstream
	micro int
	// resMu guards results, which Model.StageResults appends to without
	// ever blocking (a pipeline's receiver must not wait for a scheduler
	// that waits in Send); resNotify (capacity 1) wakes the scheduler.
	resMu     sync.Mutex
	results   []StageResult
	resNotify chan struct{}
	failed    chan error

	// The rest belongs to the scheduler goroutine.
	order            uint64
	waiting, running []*seq // both in submission order
	b                batch
	plans            []plan
	// A pipeline's sequences waiting for their next token, by order; the
	// sequences finished since the last step, for the other stages to
	// free; and the error that broke the pipeline.
	inflight map[uint64]*seq
	closes   []uint64
	broken   error
	out      StageStep
}

// plan is one sequence's part of a step: k tokens from position from.
type plan struct {
	q        *seq
	from, k  int
	sampling bool // the chunk ends the known tokens: sample the next
}

func startScheduler(m *Model, chunk, maxBatch int, pipe Downstream, micro int) *scheduler {
	s := &scheduler{
		m: m, chunk: chunk, budget: max(chunk, prefillBudget), maxBatch: maxBatch,
		submit: make(chan *seq), quit: make(chan struct{}), done: make(chan struct{}),
		pipe: pipe, micro: max(micro, 1), resNotify: make(chan struct{}, 1), failed: make(chan error),
		inflight: map[uint64]*seq{},
	}
	go s.loop()
	return s
}

// stop ends the goroutine and waits for it. No sequence may be running.
func (s *scheduler) stop() {
	close(s.quit)
	<-s.done
}

func (s *scheduler) loop() {
	defer close(s.done)
	for {
	drain:
		for {
			select {
			case q := <-s.submit:
				s.enqueue(q)
			case <-s.resNotify:
				s.deliver()
			case err := <-s.failed:
				s.fail(err)
			default:
				break drain
			}
		}
		if s.broken != nil {
			for _, list := range [][]*seq{s.waiting, s.running} {
				for _, q := range slices.Clone(list) {
					s.finish(q, s.broken)
				}
			}
		}
		s.dropCancelled()
		s.admit()
		if s.ready() > 0 {
			if n := int64(len(s.running)); n > s.peak.Load() {
				s.peak.Store(n)
			}
			s.step()
			continue
		}
		if len(s.closes) > 0 {
			s.send(&StageStep{Close: s.closes})
			s.closes = s.closes[:0]
		}
		// Nothing to run until a request or a pipeline's token comes.
		select {
		case q := <-s.submit:
			s.enqueue(q)
		case <-s.resNotify:
			s.deliver()
		case err := <-s.failed:
			s.fail(err)
		case <-s.quit:
			return
		}
	}
}

// ready is the number of running sequences that can take a step: all of
// them, but in a pipeline those waiting for a token.
func (s *scheduler) ready() int {
	n := 0
	for _, q := range s.running {
		if !q.inflight {
			n++
		}
	}
	return n
}

// send passes a step downstream; an error breaks the pipeline.
func (s *scheduler) send(step *StageStep) {
	if s.broken != nil {
		return
	}
	if err := s.pipe.Send(step); err != nil {
		s.fail(err)
	}
}

// fail breaks the pipeline: every sequence ends with the error, now and
// when it comes.
func (s *scheduler) fail(err error) {
	if s.broken == nil {
		s.broken = fmt.Errorf("%w: %w", ErrStageFailed, err)
	}
}

// deliver hands the tokens the last stage sampled to their sequences.
func (s *scheduler) deliver() {
	s.resMu.Lock()
	res := s.results
	s.results = nil
	s.resMu.Unlock()
	for _, r := range res {
		q := s.inflight[r.Seq]
		if q == nil {
			continue // finished (cancelled) meanwhile
		}
		delete(s.inflight, r.Seq)
		q.inflight = false
		s.accept(q, r.Token)
	}
}

// accept appends a sampled token to q and passes it to Generate.
func (s *scheduler) accept(q *seq, id int32) {
	q.tokens = append(q.tokens, id)
	end := s.m.tok.IsEOG(id) || len(q.tokens)-q.prompt >= q.limit
	q.mu.Lock()
	q.ready = append(q.ready, id)
	q.mu.Unlock()
	q.signal()
	if end {
		s.finish(q, nil)
	}
}

func (s *scheduler) enqueue(q *seq) {
	s.order++
	q.order = s.order
	s.waiting = append(s.waiting, q)
}

// finish drops q from the scheduler, releases its blocks and tells
// Generate, with err when q did not end normally.
func (s *scheduler) finish(q *seq, err error) {
	s.running = slices.DeleteFunc(s.running, func(x *seq) bool { return x == q })
	s.waiting = slices.DeleteFunc(s.waiting, func(x *seq) bool { return x == q })
	if q.kv != nil {
		q.kv.Release()
	}
	delete(s.inflight, q.order)
	if q.sent {
		s.closes = append(s.closes, q.order)
	}
	q.mu.Lock()
	q.end = true
	if q.err == nil {
		q.err = err
	}
	q.mu.Unlock()
	q.signal()
	close(q.finished)
}

// dropCancelled frees the sequences whose Generate call has returned or
// whose client went away.
func (s *scheduler) dropCancelled() {
	for _, list := range []*[]*seq{&s.waiting, &s.running} {
		for i := 0; i < len(*list); {
			if q := (*list)[i]; q.ctx.Err() != nil {
				s.finish(q, q.ctx.Err()) // removes q: i is the next one
				continue
			}
			i++
		}
	}
}

// admit moves waiting sequences to running, oldest first, while the batch
// has room and the cache has blocks for a sequence's first chunk plus one
// of headroom per running sequence (the estimate ignores reuse, which can
// only lower the need; a shortfall later is met by preemption). A sequence
// attaches its longest cached prefix on admission.
func (s *scheduler) admit() {
	cache := s.m.cache
	bs := cache.BlockSize()
	for len(s.waiting) > 0 && len(s.running) < s.maxBatch {
		q := s.waiting[0]
		need := (min(s.chunk, len(q.tokens)) + bs - 1) / bs
		if len(s.running) > 0 && cache.Available() < need+len(s.running) {
			return
		}
		if q.kv == nil {
			q.kv = cache.NewSeq()
		}
		// The last known token is always computed: its logits are needed.
		// A pipeline reuses nothing (stage.go).
		reused := 0
		if s.pipe == nil {
			reused = q.kv.Reuse(q.tokens, len(q.tokens)-1)
		}
		if !q.seen {
			q.seen = true
			q.mu.Lock()
			q.cached = reused
			q.mu.Unlock()
		}
		s.waiting = s.waiting[1:]
		s.running = append(s.running, q)
	}
}

// preempt returns the newest running sequence to the waiting list.
func (s *scheduler) preempt() *seq {
	q := s.running[len(s.running)-1]
	s.running = s.running[:len(s.running)-1]
	q.kv.Release()
	i, _ := slices.BinarySearchFunc(s.waiting, q.order, func(x *seq, o uint64) int { return cmp.Compare(x.order, o) })
	s.waiting = slices.Insert(s.waiting, i, q)
	return q
}

// prefillBudget bounds the prompt tokens of one step (unless the chunk is
// larger), which bounds the step's activations and the delay it adds to
// the running decodes.
const prefillBudget = 256

// step advances every running sequence once: by its next token when
// decoding, by up to a chunk of its prompt when prefilling while the
// step's prompt budget lasts.
func (s *scheduler) step() {
	m := s.m
	s.plans = s.plans[:0]
	budget := s.budget
	// A pipeline's first stage takes a 1/micro share of the running
	// sequences per step, so that every stage has a micro-batch to work on.
	micro := (len(s.running) + s.micro - 1) / s.micro
	for i := 0; i < len(s.running) && len(s.plans) < micro; i++ {
		q := s.running[i]
		if q.inflight {
			continue
		}
		from := q.kv.Len()
		k := min(s.chunk, len(q.tokens)-from)
		if k > 1 {
			if k = min(k, budget); k == 0 {
				continue
			}
			budget -= k
		}
		preempted := false
		for q.kv.Reserve(k) != nil {
			if len(s.running) == 1 {
				// Cannot happen: the budget holds a full context.
				s.finish(q, fmt.Errorf("kv cache: %w", kvcache.ErrNoSpace))
				preempted = true
				break
			}
			if s.preempt() == q {
				preempted = true
				break
			}
		}
		if preempted {
			break // q was the last running sequence
		}
		s.plans = append(s.plans, plan{q: q, from: from, k: k, sampling: from+k == len(q.tokens)})
	}
	b := &s.b
	b.reset()
	for _, p := range s.plans {
		for pos := p.from; pos < p.from+p.k; pos++ {
			b.add(p.q.tokens[pos], pos, p.q.kv, p.sampling && pos == p.from+p.k-1)
		}
	}
	if b.n == 0 {
		return
	}
	m.forward(b)
	if s.pipe != nil {
		s.passDown()
		return
	}
	vocab := m.hp.Vocab
	li := 0
	for _, p := range s.plans {
		q := p.q
		q.kv.Commit(q.tokens[p.from : p.from+p.k])
		if !p.sampling {
			continue
		}
		s.accept(q, q.smp.sample(b.logits[li*vocab:(li+1)*vocab]))
		li++
	}
}

// passDown sends the step's hidden states to the next stage, with the
// sequences finished since the last one; the sampling sequences wait for
// their tokens.
func (s *scheduler) passDown() {
	out := &s.out
	out.Rows, out.Close = out.Rows[:0], s.closes
	out.Hidden = s.b.x[:s.b.n*s.m.hp.Dim]
	for _, p := range s.plans {
		q := p.q
		q.kv.Commit(q.tokens[p.from : p.from+p.k])
		row := StageRow{Seq: q.order, From: p.from, Tokens: q.tokens[p.from : p.from+p.k], Sample: p.sampling}
		if p.from == 0 {
			row.Open = &q.params
		}
		out.Rows = append(out.Rows, row)
		q.sent = true
		if p.sampling {
			q.inflight = true
			s.inflight[q.order] = q
		}
	}
	s.send(out)
	s.closes = s.closes[:0]
}
