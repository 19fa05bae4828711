package engine

import (
	"testing"

	"github.com/npumesh/npumesh/internal/kvcache"
)

// single runs one sequence through Model.forward a token at a time, with
// a cache of its own, bypassing the scheduler.
type single struct {
	m  *Model
	kv *kvcache.Seq
	b  batch
}

func newSingle(t testing.TB, m *Model) *single {
	t.Helper()
	c, err := kvcache.New(kvcache.Config{ModelID: t.Name(), BlockSize: m.cache.BlockSize(),
		Layers: m.hp.Layers, KVDim: m.hp.KVDim(), BudgetBytes: 1 << 30, Half: m.kvHalf})
	if err != nil {
		t.Fatal(err)
	}
	return &single{m: m, kv: c.NewSeq()}
}

// forward runs token at position pos (which must be the sequence's
// length) and returns the next-token logits (nil for a stage before the
// last).
func (s *single) forward(token int32, pos int) []float32 {
	if pos != s.kv.Len() {
		panic("single.forward: position out of order")
	}
	if err := s.kv.Reserve(1); err != nil {
		panic(err)
	}
	s.b.reset()
	s.b.add(token, pos, s.kv, true)
	s.m.forward(&s.b)
	s.kv.Commit([]int32{token})
	if !s.m.last() {
		return nil // a pipeline stage's output is in s.b.x
	}
	return s.b.logits[:s.m.hp.Vocab]
}
