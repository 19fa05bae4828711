package engine

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"testing"

	"github.com/npumesh/npumesh/internal/kvcache"
	"github.com/npumesh/npumesh/internal/kvcache/blockhash"
)

var storyPrompts = []string{
	"Once upon a time", "Lily and Ben", "The little dog", "One day, a girl",
	"Tom had a big red ball", "The sun was", "Mom said", "There was a tree",
}

type outcome struct {
	text string
	ids  []int32
	res  Result
	err  error
}

// runConcurrently starts every request at once and waits for all.
func runConcurrently(t *testing.T, m *Model, reqs []Request) []outcome {
	t.Helper()
	out := make([]outcome, len(reqs))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, req := range reqs {
		wg.Go(func() {
			<-start
			o := &out[i]
			o.text, o.ids, o.res, o.err = generate(t, m, context.Background(), req)
		})
	}
	close(start)
	wg.Wait()
	return out
}

func greedyRequests(m *Model, maxTokens func(i int) int) []Request {
	reqs := make([]Request, len(storyPrompts))
	for i, p := range storyPrompts {
		reqs[i] = Request{Prompt: p, MaxTokens: maxTokens(i)}
	}
	return reqs
}

// checkAlone compares each outcome with the same request run alone on
// a fresh model.
func checkAlone(t *testing.T, alone *Model, reqs []Request, got []outcome) {
	t.Helper()
	for i, req := range reqs {
		text, ids, res, err := generate(t, alone, context.Background(), req)
		g := got[i]
		if err != nil || g.err != nil {
			t.Fatalf("request %d: alone %v, batched %v", i, err, g.err)
		}
		if g.text != text || !slices.Equal(g.ids, ids) || g.res.CompletionTokens != res.CompletionTokens || g.res.FinishReason != res.FinishReason {
			t.Errorf("request %d (%q): batched got %q %+v, alone %q %+v", i, req.Prompt, g.text, g.res, text, res)
		}
	}
}

func checkNoBlocksHeld(t *testing.T, m *Model) {
	t.Helper()
	st := m.CacheStats()
	if st.InUse != 0 || st.Free+st.Cached != st.Capacity {
		t.Errorf("cache after the requests: %+v, want nothing in use", st)
	}
}

// Eight concurrent requests decoded in one batch each get exactly the
// tokens they get alone: greedy ones, and seeded sampling ones.
func TestBatchedMatchesAlone(t *testing.T) {
	m := loadStories(t, Options{Threads: 2})
	reqs := greedyRequests(m, func(i int) int { return 60 + 10*i })
	for i := 1; i < len(reqs); i += 3 {
		reqs[i].Temperature, reqs[i].TopK, reqs[i].Seed = 0.8, 40, seed(uint64(i))
	}
	got := runConcurrently(t, m, reqs)
	checkAlone(t, loadStories(t, Options{Threads: 1}), reqs, got)
	peak := m.sched.peak.Load()
	t.Logf("peak batch %d", peak)
	if peak < 2 {
		t.Errorf("peak batch %d: the requests never ran together", peak)
	}
	checkNoBlocksHeld(t, m)
}

// Chunk sizes do not change the output: prefill in chunks computes what
// token-by-token prefill computes.
func TestPrefillChunks(t *testing.T) {
	story := expectedGreedy(t)
	var want string
	for _, chunk := range []int{1, 7, 64} {
		m := loadStories(t, Options{PrefillChunk: chunk})
		text, _, _, err := generate(t, m, context.Background(), Request{Prompt: story[:400], MaxTokens: 30})
		if err != nil {
			t.Fatal(err)
		}
		if want == "" {
			want = text
		} else if text != want {
			t.Errorf("chunk %d: got %q, want %q", chunk, text, want)
		}
	}
}

// A request that shares a long prefix with an earlier one reuses its
// blocks and still produces what an uncached run produces.
func TestPrefixReuse(t *testing.T) {
	m := loadStories(t, Options{})
	base, _ := m.Tokenizer().Encode(expectedGreedy(t)+expectedGreedy(t), true)
	p1 := slices.Clone(base[:90])
	p2 := append(slices.Clone(base[:70]), base[120:135]...)

	_, ids1, r1, err := generate(t, m, context.Background(), Request{PromptIDs: p1, MaxTokens: 30})
	if err != nil || r1.CachedTokens != 0 {
		t.Fatalf("first request: %+v, %v", r1, err)
	}
	for _, tc := range []struct {
		name   string
		prompt []int32
		cached int
	}{
		{"shared prefix", p2, 64}, // 70 shared tokens: 4 blocks
		{"same prompt", p1, 80},   // all but the last token, in whole blocks
		{"follow-up", append(append(slices.Clone(p1), ids1...), 5, 6), 112}, // prompt and completion cached
	} {
		t.Run(tc.name, func(t *testing.T) {
			text, ids, res, err := generate(t, m, context.Background(), Request{PromptIDs: tc.prompt, MaxTokens: 30})
			if err != nil {
				t.Fatal(err)
			}
			if res.CachedTokens != tc.cached {
				t.Errorf("cached %d tokens, want %d", res.CachedTokens, tc.cached)
			}
			fresh := loadStories(t, Options{})
			wtext, wids, wres, err := generate(t, fresh, context.Background(), Request{PromptIDs: tc.prompt, MaxTokens: 30})
			if err != nil || wres.CachedTokens != 0 {
				t.Fatalf("uncached run: %+v, %v", wres, err)
			}
			if text != wtext || !slices.Equal(ids, wids) {
				t.Errorf("got %q, uncached %q", text, wtext)
			}
		})
	}
	if st := m.CacheStats(); st.Hits == 0 {
		t.Errorf("stats %+v", st)
	}
}

// Under a budget of one context, concurrent requests preempt each other
// and evict cached blocks, and still produce their own output.
func TestTinyBudget(t *testing.T) {
	m := loadStories(t, Options{ContextLength: 64, KVBudgetBytes: 1, PrefillChunk: 8})
	if c := m.CacheStats().Capacity; c != 4 {
		t.Fatalf("capacity %d blocks, want one context: 4", c)
	}
	reqs := greedyRequests(m, func(i int) int { return 30 + 3*i })
	got := runConcurrently(t, m, reqs)
	checkAlone(t, loadStories(t, Options{ContextLength: 64}), reqs, got)
	st := m.CacheStats()
	if st.Evictions == 0 {
		t.Errorf("no evictions: %+v", st)
	}
	checkNoBlocksHeld(t, m)
}

// A cancelled request leaves the batch and gives back its blocks by the
// time Generate returns, during prefill or decoding.
func TestCancelFreesBlocks(t *testing.T) {
	m := loadStories(t, Options{PrefillChunk: 2})
	initial := m.CacheStats()
	long, _ := m.Tokenizer().Encode(expectedGreedy(t)+expectedGreedy(t), true)

	// During prefill (400+ tokens at 2 per step): cancelled as soon as
	// the sequence holds blocks.
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for m.CacheStats().InUse == 0 && ctx.Err() == nil {
			runtime.Gosched()
		}
		cancel()
	}()
	_, _, res, err := generate(t, m, ctx, Request{PromptIDs: long})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled in prefill: %+v, %v", res, err)
	}
	t.Logf("cancelled after %d completion tokens", res.CompletionTokens)
	checkNoBlocksHeld(t, m)

	// While decoding, several at once, one cancelled by its emit.
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n := 0
			_, err := m.Generate(ctx, Request{Prompt: storyPrompts[i]}, func(Delta) error {
				if n++; n == 3+i {
					cancel()
				}
				return nil
			})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("got %v, want context.Canceled", err)
			}
		})
	}
	wg.Wait()
	checkNoBlocksHeld(t, m)
	if st := m.CacheStats(); st.Free+st.Cached != initial.Free {
		t.Errorf("free %d + cached %d, want the initial %d", st.Free, st.Cached, initial.Free)
	}
	// Stop strings end the sequence the same way.
	if _, _, _, err := generate(t, m, context.Background(), Request{Stop: []string{"Lily"}}); err != nil {
		t.Fatal(err)
	}
	checkNoBlocksHeld(t, m)
}

// Cache events carry the hashes the router computes with blockhash.
func TestCacheEvents(t *testing.T) {
	var mu sync.Mutex
	var stored []uint64
	m := loadStories(t, Options{ID: "tiny-model", OnCacheEvent: func(e kvcache.Event) {
		mu.Lock()
		defer mu.Unlock()
		if e.Kind == kvcache.EventStored {
			stored = append(stored, e.Hashes...)
		}
	}})
	prompt, _ := m.Tokenizer().Encode(expectedGreedy(t), true)
	prompt = prompt[:40]
	_, ids, _, err := generate(t, m, context.Background(), Request{PromptIDs: prompt, MaxTokens: 30})
	if err != nil {
		t.Fatal(err)
	}
	// Computed positions: the prompt and every sampled token but the last.
	fed := append(slices.Clone(prompt), ids[:len(ids)-1]...)
	want := blockhash.Chain("tiny-model", fed, m.Info().BlockSize)
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(stored, want) {
		t.Errorf("stored %x, want %x", stored, want)
	}
}

func TestCloseStopsScheduler(t *testing.T) {
	m, err := Load(storiesPath(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	type done struct {
		res Result
		err error
	}
	finished := make(chan done, 1)
	go func() {
		var once sync.Once
		res, err := m.Generate(context.Background(), Request{MaxTokens: 50}, func(Delta) error {
			once.Do(func() { close(started) })
			return nil
		})
		finished <- done{res, err}
	}()
	<-started
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// Close let the running call finish, then stopped the scheduler.
	if d := <-finished; d.err != nil || d.res.CompletionTokens != 50 {
		t.Errorf("running call: %+v, %v", d.res, d.err)
	}
	select {
	case <-m.sched.done:
	default:
		t.Error("scheduler still running after Close")
	}
}

// MaxBatch caps the sequences run together; the others wait their turn.
func TestMaxBatch(t *testing.T) {
	m := loadStories(t, Options{MaxBatch: 2, PrefillChunk: 3})
	reqs := greedyRequests(m, func(i int) int { return 20 + i })
	got := runConcurrently(t, m, reqs)
	checkAlone(t, loadStories(t, Options{}), reqs, got)
	if peak := m.sched.peak.Load(); peak > 2 {
		t.Errorf("peak batch %d, want at most 2", peak)
	}
	checkNoBlocksHeld(t, m)
}
