package kvcache

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/npumesh/npumesh/internal/kvcache/blockhash"
)

// newCache makes a cache of capacity blocks of 4 positions (1 layer, KV
// dim 2) that records its events.
func newCache(t *testing.T, capacity int) (*Cache, *[]Event) {
	t.Helper()
	var mu sync.Mutex
	events := &[]Event{}
	c, err := New(Config{ModelID: "m", BlockSize: 4, Layers: 1, KVDim: 2, BudgetBytes: int64(capacity) * 4 * 2 * 4 * 2,
		OnEvent: func(e Event) {
			mu.Lock()
			*events = append(*events, e)
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	return c, events
}

func toks(lo, n int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(lo + i)
	}
	return out
}

// fill writes a sequence of tokens: reserve, write a recognizable key per
// position, commit.
func fill(t *testing.T, s *Seq, tokens []int32) {
	t.Helper()
	if err := s.Reserve(len(tokens)); err != nil {
		t.Fatal(err)
	}
	bs := s.c.BlockSize()
	for i, tok := range tokens {
		p := s.Len() + i
		s.Block(p / bs).K(0)[(p%bs)*2] = float32(tok)
	}
	s.Commit(tokens)
}

func checkStats(t *testing.T, c *Cache, inUse, cached, free int) {
	t.Helper()
	st := c.Stats()
	if st.InUse != inUse || st.Cached != cached || st.Free != free {
		t.Errorf("got in use %d, cached %d, free %d; want %d, %d, %d", st.InUse, st.Cached, st.Free, inUse, cached, free)
	}
}

func TestPrefixReuse(t *testing.T) {
	c, events := newCache(t, 8)
	prompt := toks(100, 10) // two full blocks and a partial one
	a := c.NewSeq()
	fill(t, a, prompt)
	checkStats(t, c, 3, 0, 5)
	want := blockhash.Chain("m", prompt, 4)
	if len(*events) != 1 || (*events)[0].Kind != EventStored || !slices.Equal((*events)[0].Hashes, want) {
		t.Errorf("events %+v, want stored %x", *events, want)
	}

	// A second sequence with the same first 9 tokens reuses two blocks,
	// shared with a, and writes its own third block.
	b := c.NewSeq()
	if n := b.Reuse(append(toks(100, 9), 7), 9); n != 8 {
		t.Fatalf("reused %d positions, want 8", n)
	}
	if b.Block(0) != a.Block(0) || b.Block(1) != a.Block(1) || b.Block(1).K(0)[3*2] != 107 {
		t.Error("reused blocks are not a's")
	}
	fill(t, b, []int32{108, 7})
	if b.Block(2) == a.Block(2) {
		t.Error("partial block shared")
	}
	checkStats(t, c, 4, 0, 4)

	// maxTokens caps reuse to whole blocks below it.
	d := c.NewSeq()
	if n := d.Reuse(prompt, 7); n != 4 {
		t.Errorf("reused %d positions under a cap of 7, want 4", n)
	}
	d.Release()

	a.Release()
	b.Release()
	checkStats(t, c, 0, 2, 6)
	if st := c.Stats(); st.Hits != 3 || st.Misses != 0 {
		t.Errorf("hits %d misses %d", st.Hits, st.Misses)
	}
	// Released full blocks still serve a new sequence.
	e := c.NewSeq()
	if n := e.Reuse(prompt, len(prompt)); n != 8 {
		t.Errorf("after release: reused %d, want 8", n)
	}
	checkStats(t, c, 2, 0, 6)
	e.Release()
}

func TestEvictionLRU(t *testing.T) {
	c, events := newCache(t, 4)
	a := c.NewSeq()
	fill(t, a, toks(0, 8)) // blocks A0 A1
	a.Release()
	b := c.NewSeq()
	fill(t, b, toks(50, 8)) // blocks B0 B1
	b.Release()
	checkStats(t, c, 0, 4, 0)

	// Two new blocks evict a's, the least recently used, tail first.
	s := c.NewSeq()
	fill(t, s, toks(90, 6))
	ha := blockhash.Chain("m", toks(0, 8), 4)
	var evicted []uint64
	for _, e := range *events {
		if e.Kind == EventEvicted {
			evicted = append(evicted, e.Hashes...)
		}
	}
	if !slices.Equal(evicted, []uint64{ha[1], ha[0]}) {
		t.Errorf("evicted %x, want %x", evicted, []uint64{ha[1], ha[0]})
	}
	if n := c.NewSeq().Reuse(toks(0, 8), 8); n != 0 {
		t.Errorf("evicted prefix still reused: %d", n)
	}
	if st := c.Stats(); st.Evictions != 2 {
		t.Errorf("evictions %d", st.Evictions)
	}
	// Everything referenced: no space, and nothing changes.
	s2 := c.NewSeq()
	s2.Reuse(toks(50, 8), 8)
	if err := s.Reserve(3); !errors.Is(err, ErrNoSpace) {
		t.Errorf("got %v, want ErrNoSpace", err)
	}
	checkStats(t, c, 4, 0, 0)
	s.Release()
	s2.Release()
	checkStats(t, c, 0, 3, 1)
}

func TestDuplicatePublish(t *testing.T) {
	c, _ := newCache(t, 8)
	a, b := c.NewSeq(), c.NewSeq()
	fill(t, a, toks(0, 4))
	fill(t, b, toks(0, 4)) // computed concurrently, published second
	a.Release()
	b.Release()
	checkStats(t, c, 0, 1, 7)
}

func TestConfig(t *testing.T) {
	c, err := New(Config{Layers: 2, KVDim: 8, BudgetBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	if c.BlockSize() != DefaultBlockSize || c.Stats().Capacity != 1 || c.BlockBytes() != 4*2*2*16*8 {
		t.Errorf("block size %d, capacity %d, block bytes %d", c.BlockSize(), c.Stats().Capacity, c.BlockBytes())
	}
	if _, err := New(Config{Layers: 0, KVDim: 8}); err == nil {
		t.Error("zero layers accepted")
	}
	// Half floats: half the bytes a block, twice the blocks a budget, and
	// per layer keys and values of their own.
	h, err := New(Config{Layers: 2, KVDim: 8, BudgetBytes: 4 * 2 * 2 * 16 * 8, Half: true})
	if err != nil {
		t.Fatal(err)
	}
	if h.BlockBytes() != 2*2*2*16*8 || h.Stats().Capacity != 2 {
		t.Errorf("half floats: block bytes %d, capacity %d; want %d, 2", h.BlockBytes(), h.Stats().Capacity, 2*2*2*16*8)
	}
	s := h.NewSeq()
	if err := s.Reserve(1); err != nil {
		t.Fatal(err)
	}
	b := s.Block(0)
	for l := range 2 {
		if len(b.KHalf(l)) != 16*8 || len(b.VHalf(l)) != 16*8 {
			t.Fatalf("layer %d: %d keys, %d values; want %d each", l, len(b.KHalf(l)), len(b.VHalf(l)), 16*8)
		}
	}
	b.KHalf(1)[0], b.VHalf(0)[16*8-1] = 1, 2
	if b.VHalf(0)[0] != 0 || b.KHalf(1)[0] != 1 || b.KHalf(1)[16*8-1] != 0 || b.VHalf(0)[16*8-1] != 2 {
		t.Error("half-float keys and values overlap")
	}
	s.Release()
	if fmt.Sprint(EventStored, EventEvicted) != "stored evicted" {
		t.Error(EventStored, EventEvicted)
	}
}

// Sequences on several goroutines share one cache (run with -race).
func TestConcurrent(t *testing.T) {
	c, _ := newCache(t, 64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				s := c.NewSeq()
				p := toks(g%3, 12+i%9)
				n := s.Reuse(p, len(p)-1)
				if err := s.Reserve(len(p) - n); err != nil {
					t.Error(err)
					return
				}
				s.Commit(p[n:])
				s.Release()
			}
		})
	}
	wg.Wait()
	if st := c.Stats(); st.InUse != 0 || st.Hits == 0 {
		t.Errorf("stats %+v", st)
	}
}
