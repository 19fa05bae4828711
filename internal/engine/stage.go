package engine

import (
	"errors"
	"fmt"
	"time"

	"github.com/npumesh/npumesh/internal/kvcache"
)

// Pipeline parallelism: a model too big for one machine (or split on
// purpose) runs as a chain of stages, each a Model loaded with
// Options.Layers. The first stage tokenizes, schedules and streams text as
// a whole Model does; after each step it passes the step's hidden states
// (one vector per row) to the next stage through its Downstream. Each
// later stage runs its layers over them in a StageRunner, which keeps the
// KV cache of its layers per sequence; the last one samples and its
// tokens travel back to the first stage's Model.StageResults. The engine
// knows nothing of how the stages talk (the node daemon chains them with
// gRPC streams).
//
// Several sequences are in flight at once: the first stage schedules at
// most 1/Options.MicroBatches of its running sequences per step, so while
// a later stage works on one micro-batch the first computes the next.
//
// Prefix reuse is off in a pipeline: every stage would need the same
// cached blocks, and each stage's cache evicts on its own.

// LayerRange is the layers [Lo, Hi) of a pipeline stage. The zero value
// means the whole model.
type LayerRange struct{ Lo, Hi int }

// IsZero reports whether r is the zero value (the whole model).
func (r LayerRange) IsZero() bool { return r == LayerRange{} }

func (r LayerRange) String() string { return fmt.Sprintf("[%d,%d)", r.Lo, r.Hi) }

// SamplingParams are what the last stage needs to sample a sequence.
type SamplingParams struct {
	Temperature, TopP float32
	TopK              int
	Seed              uint64
}

// StageRow is one sequence's part of a pipeline step: the positions
// [From, From+len(Tokens)), whose hidden states are the next
// len(Tokens) vectors of the step.
type StageRow struct {
	Seq    uint64
	From   int
	Tokens []int32
	// Sample asks the last stage for the token after the row's last
	// position.
	Sample bool
	// Open carries the sampling parameters; the first stage sets it on
	// every row from position 0, so a stage that meets the sequence
	// (again) knows them.
	Open *SamplingParams
}

// StageStep is one step passed down a pipeline.
type StageStep struct {
	Rows []StageRow
	// Hidden holds a vector of the model's Dim floats for each token of
	// the rows, in order.
	Hidden []float32
	// Close lists sequences the first stage has finished: later stages
	// free their cache blocks.
	Close []uint64
}

// Positions is the number of token positions of the step's rows.
func (s *StageStep) Positions() int {
	n := 0
	for _, r := range s.Rows {
		n += len(r.Tokens)
	}
	return n
}

// StageResult is a token the last stage sampled for a sequence.
type StageResult struct {
	Seq   uint64
	Token int32
}

// Downstream carries a first stage's steps to the rest of its pipeline.
// Send is called on the scheduler goroutine, in step order; it must not
// keep step (nor its slices) after it returns. An error fails every
// sequence in flight, as does Model.StageFailed.
type Downstream interface {
	Send(step *StageStep) error
}

// ErrStageFailed wraps the error of a pipeline whose downstream stages
// failed: the caller may run the request again on another pipeline.
var ErrStageFailed = errors.New("pipeline stage failed")

// timeLayers adds a single-position step that started at start to the
// layer timing: an exponentially weighted mean over about 16 steps.
func (m *Model) timeLayers(start time.Time) {
	per := float64(time.Since(start).Nanoseconds()) / float64(max(len(m.w.layers), 1))
	for {
		old := m.layerNanos.Load()
		next := per
		if old != 0 {
			next = float64(old) + (per-float64(old))/16
		}
		if m.layerNanos.CompareAndSwap(old, int64(next)) {
			return
		}
	}
}

// LayerSeconds is the measured compute time of one layer for one position
// (decode, batch 1) on this machine, from the model's recent single-position
// steps; 0 before any. Pipeline plans split layers by it.
func (m *Model) LayerSeconds() float64 { return float64(m.layerNanos.Load()) / 1e9 }

// last reports whether the model holds the output head.
func (m *Model) last() bool { return m.stage.IsZero() || m.stage.Hi == m.hp.Layers }

// selectLayers keeps the layers of r (all when r is zero) and drops the
// embedding and head a stage does not hold.
func selectLayers(hp *hparams, w *weights, r LayerRange) (LayerRange, error) {
	if r.IsZero() {
		return LayerRange{0, hp.Layers}, nil
	}
	if r.Lo < 0 || r.Hi > hp.Layers || r.Lo >= r.Hi {
		return r, fmt.Errorf("stage layers %v: the model has layers [0,%d); a stage needs at least one", r, hp.Layers)
	}
	w.layers = w.layers[r.Lo:r.Hi:r.Hi]
	if r.Hi < hp.Layers {
		w.output, w.outNorm = matrix{}, nil
	}
	if r.Lo > 0 {
		w.embd = matrix{}
	}
	return r, nil
}

// StageRunner runs a later stage's layers (Lo > 0) for the sequences of
// one upstream: it keeps their KV cache, and on the last stage their
// samplers. It is not safe for concurrent use; runners of one Model may
// run concurrently (their passes take turns).
type StageRunner struct {
	m    *Model
	seqs map[uint64]*stageSeq
	seen map[uint64]bool // the sequences of the step being checked
	b    batch
	rows []StageResult
}

type stageSeq struct {
	kv  *kvcache.Seq
	smp *sampler
}

// NewStageRunner returns a runner for a Model loaded as a later stage.
func (m *Model) NewStageRunner() (*StageRunner, error) {
	if m.stage.Lo == 0 {
		return nil, fmt.Errorf("layers %v hold the embedding: run them with Generate", m.stage)
	}
	return &StageRunner{m: m, seqs: map[uint64]*stageSeq{}, seen: map[uint64]bool{}}, nil
}

// Step runs in's rows through the stage's layers. On a middle stage it
// returns their output vectors (valid until the next Step); on the last
// stage the tokens sampled for the rows that asked. Sequences in in.Close
// are freed first. An error leaves the runner unusable for the sequences
// of the step (the first stage fails them).
func (r *StageRunner) Step(in *StageStep) (hidden []float32, results []StageResult, err error) {
	m := r.m
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return nil, nil, ErrClosed
	}
	for _, id := range in.Close {
		if q, ok := r.seqs[id]; ok {
			q.kv.Release()
			delete(r.seqs, id)
		}
	}
	dim := m.hp.Dim
	n := in.Positions()
	if len(in.Hidden) != n*dim {
		return nil, nil, fmt.Errorf("stage step: %d hidden floats for %d positions of %d", len(in.Hidden), n, dim)
	}
	if len(in.Rows) == 0 {
		return nil, nil, nil // only closes
	}
	b := &r.b
	b.reset()
	clear(r.seen)
	for _, row := range in.Rows {
		if len(row.Tokens) == 0 || r.seen[row.Seq] {
			return nil, nil, fmt.Errorf("stage step: sequence %d has no positions or appears twice", row.Seq)
		}
		r.seen[row.Seq] = true
		q := r.seqs[row.Seq]
		if q == nil {
			if row.From != 0 || row.Open == nil {
				return nil, nil, fmt.Errorf("stage step: sequence %d starts at position %d without its parameters", row.Seq, row.From)
			}
			q = &stageSeq{kv: m.cache.NewSeq()}
			r.seqs[row.Seq] = q
		}
		if row.Open != nil && q.smp == nil {
			o := row.Open
			q.smp = newSampler(o.Temperature, o.TopP, o.TopK, o.Seed)
		}
		if row.From == 0 && q.kv.Len() > 0 {
			// The first stage was preempted and recomputes the sequence.
			q.kv.Release()
		}
		if row.From != q.kv.Len() {
			return nil, nil, fmt.Errorf("stage step: sequence %d continues at position %d but this stage holds %d", row.Seq, row.From, q.kv.Len())
		}
		if row.From+len(row.Tokens) > m.hp.Context {
			return nil, nil, fmt.Errorf("stage step: sequence %d reaches position %d past the context of %d", row.Seq, row.From+len(row.Tokens), m.hp.Context)
		}
		if err := q.kv.Reserve(len(row.Tokens)); err != nil {
			return nil, nil, fmt.Errorf("stage step: sequence %d: kv cache: %w", row.Seq, err)
		}
		for i, tok := range row.Tokens {
			b.add(tok, row.From+i, q.kv, row.Sample && i == len(row.Tokens)-1)
		}
	}
	b.x = grow(b.x, n*dim)
	copy(b.x, in.Hidden)
	m.stageMu.Lock()
	m.forward(b)
	m.stageMu.Unlock()
	for _, row := range in.Rows {
		r.seqs[row.Seq].kv.Commit(row.Tokens)
	}
	if !m.last() {
		return b.x[:n*dim], nil, nil
	}
	r.rows = r.rows[:0]
	li := 0
	vocab := m.hp.Vocab
	for _, row := range in.Rows {
		if !row.Sample {
			continue
		}
		q := r.seqs[row.Seq]
		if q.smp == nil {
			return nil, nil, fmt.Errorf("stage step: sequence %d samples without parameters", row.Seq)
		}
		r.rows = append(r.rows, StageResult{Seq: row.Seq, Token: q.smp.sample(b.logits[li*vocab : (li+1)*vocab])})
		li++
	}
	return nil, r.rows, nil
}

// Logits returns the logits the last Step computed on a last stage, a
// vocabulary's worth per sampling row (for tests comparing activation
// encodings).
func (r *StageRunner) Logits() []float32 { return r.b.logits }

// Sequences is the number of sequences whose cache the runner holds.
func (r *StageRunner) Sequences() int { return len(r.seqs) }

// Close frees every sequence's cache blocks.
func (r *StageRunner) Close() {
	for id, q := range r.seqs {
		q.kv.Release()
		delete(r.seqs, id)
	}
}

// StageResults passes tokens the last stage sampled to a first stage's
// scheduler. Results of sequences that are gone are ignored.
// It never blocks.
func (m *Model) StageResults(res []StageResult) {
	s := m.sched
	s.resMu.Lock()
	s.results = append(s.results, res...)
	s.resMu.Unlock()
	select {
	case s.resNotify <- struct{}{}:
	default:
	}
}

// StageFailed fails every sequence of a first stage, and every later
// Generate, with err wrapped in ErrStageFailed: the pipeline is broken.
func (m *Model) StageFailed(err error) {
	s := m.sched
	select {
	case s.failed <- err:
	case <-s.done:
	}
}
