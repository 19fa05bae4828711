package bench

import (
	"hash/fnv"
	"math"
	"strings"
	"testing"
)

// wordTokens is a tokenizer for tests: one token per word.
func wordTokens(p string) ([]int32, error) {
	var out []int32
	for _, w := range strings.Fields(p) {
		h := fnv.New32a()
		h.Write([]byte(w))
		out = append(out, int32(h.Sum32()&0x7fffffff))
	}
	return out, nil
}

func TestOracle(t *testing.T) {
	log := []Sent{
		{Prompt: "A B C D x1", OK: true},
		{Prompt: "A B C D x2", OK: true},
		{Prompt: "E F G H y1", OK: true},
		{Prompt: "Z Z Z Z z1", OK: false}, // failed: not replayed
		{Prompt: "A B C D x3", OK: true},
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	// Two blocks of two words are reusable per prompt (the last token never
	// is); the 2nd and 4th prompts reuse both: 8 of 20 tokens.
	o, err := Oracle(OracleOptions{Tokenize: wordTokens, BlockSize: 2, Nodes: 2}, log)
	if err != nil {
		t.Fatal(err)
	}
	if !near(o.BoundHitRate, 0.4) || !near(o.HitRate, 0.4) || o.PromptTokens != 20 {
		t.Fatalf("unbounded: %+v, want both hit rates 0.4 of 20 tokens", o)
	}
	// Nodes of one block keep only the leading block of a prompt: the
	// omniscient router reuses 1 block per repeat, the bound still 2.
	o, _ = Oracle(OracleOptions{Tokenize: wordTokens, BlockSize: 2, Nodes: 2, NodeBlocks: 1}, log)
	if !near(o.BoundHitRate, 0.4) || !near(o.HitRate, 0.2) {
		t.Fatalf("one block per node: %+v, want bound 0.4, hit rate 0.2", o)
	}
	// Warmup requests fill the caches but are not counted.
	log[0].Warmup = true
	o, _ = Oracle(OracleOptions{Tokenize: wordTokens, BlockSize: 2, Nodes: 2}, log)
	if !near(o.BoundHitRate, 8.0/15) || o.PromptTokens != 15 {
		t.Fatalf("with warmup: %+v, want 8/15", o)
	}
	// The token counts are checked against the nodes' usage.
	log[1].PromptTokens = 6
	if o, _ = Oracle(OracleOptions{Tokenize: wordTokens, BlockSize: 2, Nodes: 2}, log); o.Mismatched != 1 {
		t.Fatalf("mismatched = %d, want 1", o.Mismatched)
	}
}

// TestOracleSpreadsNewPrefixes: the omniscient router sends a prompt no node
// holds to the node sent fewest requests, so distinct prefixes spread and a
// per-node capacity that fits one prefix still keeps every prefix cached.
func TestOracleSpreadsNewPrefixes(t *testing.T) {
	var log []Sent
	for i := 0; i < 10; i++ {
		for _, p := range []string{"A B C D q", "E F G H q"} {
			log = append(log, Sent{Prompt: p, OK: true})
		}
	}
	o, err := Oracle(OracleOptions{Tokenize: wordTokens, BlockSize: 2, Nodes: 2, NodeBlocks: 2}, log)
	if err != nil {
		t.Fatal(err)
	}
	if o.HitRate != o.BoundHitRate || o.HitRate != 18*4/100.0 {
		t.Fatalf("%+v, want 72 of 100 tokens cached by both", o)
	}
}
