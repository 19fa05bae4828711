package route

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/kvcache/blockhash"
)

func mustRouter(t testing.TB, policy string) *Router {
	t.Helper()
	r, err := New(Config{Default: policy, MaxOutstanding: 8})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func cands(r *Router, names ...string) []Candidate {
	out := make([]Candidate, len(names))
	for i, n := range names {
		out[i] = Candidate{ID: r.NodeID(n)}
	}
	return out
}

// name returns the name of candidate c.
func name(r *Router, c Candidate) string {
	r.idMu.Lock()
	defer r.idMu.Unlock()
	for n, id := range r.ids {
		if int32(id) == c.ID {
			return n
		}
	}
	return "?"
}

func tokens(n, seed int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32((i*7 + seed*131) % 1000)
	}
	return out
}

func TestParsePolicies(t *testing.T) {
	cases := []struct {
		in      string
		def     string
		per     map[string]string
		wantErr bool
	}{
		{"", PolicyComposite, nil, false},
		{"p2c", PolicyP2C, nil, false},
		{"prefix,big=round-robin", PolicyPrefix, map[string]string{"big": PolicyRoundRobin}, false},
		{"nonsense", "", nil, true},
		{"prefix,least-outstanding", "", nil, true},
	}
	for _, tc := range cases {
		def, per, err := ParsePolicies(tc.in)
		if (err != nil) != tc.wantErr {
			t.Fatalf("ParsePolicies(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
		}
		if err == nil && (def != tc.def || fmt.Sprint(per) != fmt.Sprint(tc.per)) {
			t.Errorf("ParsePolicies(%q) = %q %v, want %q %v", tc.in, def, per, tc.def, tc.per)
		}
	}
}

func TestFilters(t *testing.T) {
	r := mustRouter(t, PolicyComposite)
	c := cands(r, "a", "b", "c", "d", "e")
	c[0].Draining = true
	c[1].Tried = true
	c[2].Open = true
	c[3].Outstanding = 8 // at the limit
	for i := 0; i < 50; i++ {
		d, err := r.Pick(Request{Model: "m"}, c)
		if err != nil || name(r, c[d.Index]) != "e" {
			t.Fatalf("pick = %v, %v; want e, the only eligible node", d, err)
		}
	}
	c[4].Outstanding = 9
	_, err := r.Pick(Request{Model: "m"}, c)
	var nc *ErrNoCandidate
	if err == nil || !asNoCandidate(err, &nc) || !nc.Full {
		t.Fatalf("err = %v, want ErrNoCandidate{Full: true}", err)
	}
}

func asNoCandidate(err error, out **ErrNoCandidate) bool {
	e, ok := err.(*ErrNoCandidate)
	*out = e
	return ok
}

func TestPolicies(t *testing.T) {
	t.Run("least-outstanding", func(t *testing.T) {
		r := mustRouter(t, PolicyLeastOutstanding)
		c := cands(r, "a", "b", "c")
		c[0].Outstanding, c[1].Outstanding, c[2].Outstanding = 3, 1, 2
		for i := 0; i < 20; i++ {
			if d, _ := r.Pick(Request{Model: "m"}, c); name(r, c[d.Index]) != "b" {
				t.Fatalf("got %s, want b", name(r, c[d.Index]))
			}
		}
	})
	t.Run("round-robin", func(t *testing.T) {
		r := mustRouter(t, PolicyRoundRobin)
		c := cands(r, "a", "b", "c")
		c[0].Outstanding = 7 // ignored by round-robin
		seen := map[string]int{}
		for i := 0; i < 30; i++ {
			d, _ := r.Pick(Request{Model: "m"}, c)
			seen[name(r, c[d.Index])]++
		}
		if seen["a"] != 10 || seen["b"] != 10 || seen["c"] != 10 {
			t.Fatalf("round-robin spread = %v, want 10 each", seen)
		}
		// It cycles over nodes, not slice positions: the coordinator lists
		// its nodes in no particular order.
		clear(seen)
		for i := 0; i < 30; i++ {
			rand.Shuffle(len(c), func(i, j int) { c[i], c[j] = c[j], c[i] })
			d, _ := r.Pick(Request{Model: "m"}, c)
			seen[name(r, c[d.Index])]++
		}
		if seen["a"] != 10 || seen["b"] != 10 || seen["c"] != 10 {
			t.Fatalf("round-robin over shuffled candidates = %v, want 10 each", seen)
		}
	})
	t.Run("p2c", func(t *testing.T) {
		r := mustRouter(t, PolicyP2C)
		c := cands(r, "a", "b", "c", "d")
		c[0].Outstanding, c[1].Outstanding, c[2].Outstanding, c[3].Outstanding = 0, 5, 5, 5
		seen := map[string]int{}
		for i := 0; i < 400; i++ {
			d, _ := r.Pick(Request{Model: "m"}, c)
			seen[name(r, c[d.Index])]++
		}
		// a wins every pair it is in: about half of all picks.
		if seen["a"] < 120 {
			t.Fatalf("p2c picked the idle node %d times of 400 (%v), want most pairs", seen["a"], seen)
		}
	})
	t.Run("capability", func(t *testing.T) {
		r := mustRouter(t, PolicyCapability)
		c := cands(r, "slow", "fast", "hot")
		c[0].DecodeTokS, c[1].DecodeTokS, c[2].DecodeTokS = 10, 40, 40
		c[2].Throttling = true
		for i := 0; i < 20; i++ {
			if d, _ := r.Pick(Request{Model: "m"}, c); name(r, c[d.Index]) != "fast" {
				t.Fatalf("got %s, want fast (the throttling node is as fast but hot)", name(r, c[d.Index]))
			}
		}
		// A throttling node gets less new work: with equal queues it loses
		// to a cool node of the same speed.
		c[0].DecodeTokS = 40
		c[1].Outstanding = 1
		if d, _ := r.Pick(Request{Model: "m"}, c); name(r, c[d.Index]) == "hot" {
			t.Fatal("picked the throttling node")
		}
	})
	t.Run("session", func(t *testing.T) {
		r := mustRouter(t, PolicySession)
		c := cands(r, "a", "b", "c")
		req := Request{Model: "m", Session: "alice"}
		d, _ := r.Pick(req, c)
		first := name(r, c[d.Index])
		r.Routed(first, req)
		for i := range c {
			if name(r, c[i]) == first {
				c[i].Outstanding = 3 // busier, but the session sticks
			}
		}
		for i := 0; i < 10; i++ {
			if d, _ := r.Pick(req, c); name(r, c[d.Index]) != first {
				t.Fatalf("session moved from %s to %s", first, name(r, c[d.Index]))
			}
		}
		// A node that left (tried/failed) releases the session.
		for i := range c {
			c[i].Tried = name(r, c[i]) == first
		}
		if d, _ := r.Pick(req, c); name(r, c[d.Index]) == first {
			t.Fatal("picked a tried node for a session")
		}
	})
}

func TestPrefixPrecise(t *testing.T) {
	r := mustRouter(t, PolicyPrefix)
	c := cands(r, "a", "b", "c")
	const bs = 4
	p := tokens(40, 1)
	h := blockhash.Chain("m", p, bs) // 10 blocks
	r.CacheEvent("b", Stored, "m", h[:6])
	r.CacheEvent("c", Stored, "m", h[:9])
	r.CacheEvent("c", Evicted, "m", h[3:4]) // a hole: c's prefix is 3 blocks
	d, err := r.Pick(Request{Model: "m", Hashes: h}, c)
	if err != nil || name(r, c[d.Index]) != "b" || d.PrefixBlocks != 6 {
		t.Fatalf("pick = %s (%d blocks), %v; want b with 6 blocks", name(r, c[d.Index]), d.PrefixBlocks, err)
	}
	// Another model's blocks never match.
	r.CacheEvent("a", Stored, "other", h)
	if d, _ := r.Pick(Request{Model: "m", Hashes: h}, c); name(r, c[d.Index]) != "b" {
		t.Fatalf("got %s, want b", name(r, c[d.Index]))
	}
	// CLEARED drops b's set.
	r.CacheEvent("b", Cleared, "m", nil)
	if d, _ := r.Pick(Request{Model: "m", Hashes: h}, c); name(r, c[d.Index]) != "c" || d.PrefixBlocks != 3 {
		t.Fatalf("after clear got %s (%d), want c with 3", name(r, c[d.Index]), d.PrefixBlocks)
	}
	// A restarted node is forgotten.
	r.ForgetNode("c")
	if got := r.index.matchOne(Request{Model: "m", Hashes: h}, int(r.NodeID("c"))); got != 0 {
		t.Fatalf("forgotten node still matches %d blocks", got)
	}
}

// TestPrefixAgainstLoad: a miss costs fullMiss queued requests times the
// share of the prompt not cached.
func TestPrefixAgainstLoad(t *testing.T) {
	r, err := New(Config{Default: PolicyPrefix, MaxOutstanding: 64}) // the coordinator's default limit
	if err != nil {
		t.Fatal(err)
	}
	c := cands(r, "a", "b")
	h := blockhash.Chain("m", tokens(41, 1), 4) // 10 blocks
	if len(h) != 10 {
		t.Fatalf("%d blocks, want 10", len(h))
	}
	r.CacheEvent("a", Stored, "m", h)
	r.CacheEvent("b", Stored, "m", h[:3])
	req := Request{Model: "m", Hashes: h}
	// b holds 3 of the 10 blocks: its miss is 0.7·16 = 11.2 requests.
	for _, tc := range []struct {
		queued int32
		want   string
	}{{0, "a"}, {11, "a"}, {12, "b"}, {30, "b"}} {
		c[0].Outstanding = tc.queued
		d, err := r.Pick(req, c)
		if err != nil || name(r, c[d.Index]) != tc.want {
			t.Fatalf("a (whole prompt) with %d queued, b (3 blocks) idle: got %s, %v; want %s", tc.queued, name(r, c[d.Index]), err, tc.want)
		}
	}
}

func TestPrefixApproximate(t *testing.T) {
	r, _ := New(Config{Default: PolicyComposite, ApproxBlocksPerNode: 8})
	c := cands(r, "a", "b", "c")
	h := blockhash.Chain("m", tokens(64, 2), 4) // 16 blocks
	// No events from anyone: the coordinator's own record decides.
	r.Routed("c", Request{Model: "m", Hashes: h[:6]})
	d, _ := r.Pick(Request{Model: "m", Hashes: h}, c)
	if name(r, c[d.Index]) != "c" || d.PrefixBlocks != 6 {
		t.Fatalf("got %s (%d), want c with 6", name(r, c[d.Index]), d.PrefixBlocks)
	}
	// The record is bounded: 16 blocks into a capacity of 8 evicts the
	// oldest, which are the leading ones.
	r.Routed("b", Request{Model: "m", Hashes: h})
	if got := r.index.matchOne(Request{Model: "m", Hashes: h}, int(r.NodeID("b"))); got != 0 {
		t.Fatalf("b matches %d blocks after its record overflowed; want 0", got)
	}
	// Once c reports events, its approximate record no longer counts.
	r.CacheEvent("c", Stored, "m", h[:1])
	if got := r.index.matchOne(Request{Model: "m", Hashes: h}, int(r.NodeID("c"))); got != 1 {
		t.Fatalf("c matches %d, want 1 (its reported block)", got)
	}
}

func TestNodeIDReuse(t *testing.T) {
	r := mustRouter(t, "")
	a, b := r.NodeID("a"), r.NodeID("b")
	if a == b || r.NodeID("a") != a {
		t.Fatalf("ids a=%d b=%d not stable and distinct", a, b)
	}
}

// benchCluster is a router with n nodes, each reporting a cache of
// blocksPerNode blocks from a few shared system prompts and its own
// conversations, and a request whose prompt shares a prefix with some.
func benchCluster(b *testing.B, n, blocksPerNode int) (*Router, []Candidate, Request) {
	r, err := New(Config{Default: PolicyComposite, MaxOutstanding: 64})
	if err != nil {
		b.Fatal(err)
	}
	const bs = 16
	rng := rand.New(rand.NewPCG(1, 2))
	shared := make([][]int32, 8)
	for i := range shared {
		shared[i] = tokens(512, i)
	}
	c := make([]Candidate, n)
	for i := range c {
		name := fmt.Sprintf("node-%04d", i)
		c[i] = Candidate{ID: r.NodeID(name), Outstanding: rng.Int32N(8), QueueDepth: rng.Int32N(4), DecodeTokS: 20 + rng.Float32()*40, Throttling: i%17 == 0}
		held := 0
		for held < blocksPerNode {
			// A shared system prompt (some of it) followed by a unique turn.
			p := append(slices.Clone(shared[rng.IntN(len(shared))][:bs*(1+rng.IntN(32))]), tokens(bs*8, rng.IntN(1<<20))...)
			h := blockhash.Chain("m", p, bs)
			r.CacheEvent(name, Stored, "m", h)
			held += len(h)
		}
	}
	// The request: shared prompt 3 (all 32 blocks) and a new question.
	p := append(slices.Clone(shared[3]), tokens(bs*4, 99)...)
	return r, c, Request{Model: "m", Hashes: blockhash.Chain("m", p, bs)}
}

// BenchmarkPick1000 measures one routing decision among 1,000 nodes with a
// populated prefix index (about 200 blocks per node) and reports the 99th
// percentile of per-decision times.
func BenchmarkPick1000(b *testing.B) {
	r, c, req := benchCluster(b, 1000, 200)
	times := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		d, err := r.Pick(req, c)
		times = append(times, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		c[d.Index].Outstanding++ // decisions change the load, as in service
		if c[d.Index].Outstanding > 40 {
			c[d.Index].Outstanding = 0
		}
	}
	b.StopTimer()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	if len(times) > 0 {
		b.ReportMetric(float64(times[len(times)*99/100].Nanoseconds())/1e3, "p99-µs")
		b.ReportMetric(float64(times[len(times)/2].Nanoseconds())/1e3, "p50-µs")
	}
}

// BenchmarkPickWithHash1000 adds hashing a 600-token prompt to the decision.
func BenchmarkPickWithHash1000(b *testing.B) {
	r, c, req := benchCluster(b, 1000, 200)
	p := append(tokens(512, 3), tokens(16*4, 99)...)
	times := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		req.Hashes = blockhash.Chain("m", p, 16)
		_, err := r.Pick(req, c)
		times = append(times, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	if len(times) > 0 {
		b.ReportMetric(float64(times[len(times)*99/100].Nanoseconds())/1e3, "p99-µs")
	}
}

// TestPendingUntilReported: a node that reports cache events learns of a
// prompt's blocks only with its next heartbeat after the prefill; the
// requests routed before that must still find the prefix where it went, not
// start copies on the other nodes. Unconfirmed blocks expire.
func TestPendingUntilReported(t *testing.T) {
	now := time.Unix(1000, 0)
	r, err := New(Config{Default: PolicyPrefix, PendingTTL: 2 * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	c := cands(r, "a", "b", "c")
	h := blockhash.Chain("m", tokens(64, 3), 4) // 16 blocks
	other := blockhash.Chain("m", tokens(64, 4), 4)
	for _, n := range []string{"a", "b", "c"} {
		r.CacheEvent(n, Stored, "m", other[:1]) // every node reports events
	}
	req := Request{Model: "m", Hashes: h}
	d, err := r.Pick(req, c)
	if err != nil || d.PrefixBlocks != 0 {
		t.Fatalf("cold pick = %+v, %v", d, err)
	}
	first := name(r, c[d.Index])
	r.Routed(first, req)
	c[d.Index].Outstanding = 1 // it is busy with that request
	// The follower, before any event: same node, whole prefix believed held.
	d, _ = r.Pick(req, c)
	if name(r, c[d.Index]) != first || d.PrefixBlocks != len(h) {
		t.Fatalf("follower went to %s with %d blocks; want %s with %d (pending)", name(r, c[d.Index]), d.PrefixBlocks, first, len(h))
	}
	// Confirmed blocks outlive the TTL; unconfirmed ones do not.
	r.CacheEvent(first, Stored, "m", h[:10])
	now = now.Add(3 * time.Second)
	r.Routed(first, Request{Model: "m", Hashes: other[:1]}) // any routing expires old entries
	if got := r.index.matchOne(req, int(r.NodeID(first))); got != 10 {
		t.Fatalf("after the TTL %s matches %d blocks, want the 10 it reported", first, got)
	}
	// An eviction reported while a block is pending removes it at once.
	r.Routed(first, req) // pending again: blocks 10..15
	if got := r.index.matchOne(req, int(r.NodeID(first))); got != len(h) {
		t.Fatalf("re-routed: %d blocks, want %d", got, len(h))
	}
	r.CacheEvent(first, Evicted, "m", h[12:13])
	if got := r.index.matchOne(req, int(r.NodeID(first))); got != 12 {
		t.Fatalf("after evicting block 12: %d blocks, want 12", got)
	}
	// A node that registers again starts empty, pending blocks included.
	r.ForgetNode(first)
	if got := r.index.matchOne(req, int(r.NodeID(first))); got != 0 {
		t.Fatalf("forgotten node matches %d", got)
	}
	if mi := r.index.model("m", false); len(mi.precise) != 1 { // only other[0], from the others
		t.Fatalf("index holds %d hashes after forgetting, want 1", len(mi.precise))
	}
}

// TestCompositeKeepsPrefixOverNoisySpeed: the default policy weighs the
// prefix miss in the same time units as the queue, so a node measured
// somewhat slower that holds the prompt keeps it (a second copy elsewhere
// costs a full prefill and cache room), but a throttling one does not.
func TestCompositeKeepsPrefixOverNoisySpeed(t *testing.T) {
	r := mustRouter(t, PolicyComposite)
	c := cands(r, "a", "b")
	h := blockhash.Chain("m", tokens(64, 5), 4)
	r.CacheEvent("a", Stored, "m", h)
	r.CacheEvent("b", Stored, "m", blockhash.Chain("m", tokens(64, 6), 4))
	c[0].DecodeTokS, c[0].Outstanding = 30, 1
	c[1].DecodeTokS = 50
	req := Request{Model: "m", Hashes: h}
	for i := 0; i < 10; i++ {
		if d, _ := r.Pick(req, c); name(r, c[d.Index]) != "a" || d.PrefixBlocks != len(h) {
			t.Fatalf("got %s (%d blocks), want a, which holds the prompt", name(r, c[d.Index]), d.PrefixBlocks)
		}
	}
	c[0].Throttling = true
	if d, _ := r.Pick(req, c); name(r, c[d.Index]) != "b" {
		t.Fatal("a throttling node kept the request")
	}
	// Without a prefix anywhere, the faster idle node wins.
	c[0].Throttling, c[0].Outstanding = false, 0
	if d, _ := r.Pick(Request{Model: "m", Hashes: blockhash.Chain("m", tokens(64, 7), 4)}, c); name(r, c[d.Index]) != "b" {
		t.Fatal("with no cached prefix the slower node won")
	}
}
