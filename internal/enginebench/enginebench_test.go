package enginebench

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/testdata"
)

func TestRunMeasuresEverything(t *testing.T) {
	model := filepath.Join(testdata.Dir(t, "stories260K"), "stories260K.gguf")
	r, err := Run(context.Background(), Options{Model: model, Threads: 1, Batches: []int{1, 2}, Prompt: 32, Decode: 8})
	if err != nil {
		t.Fatal(err)
	}
	if r.PrefillTokS <= 0 || r.DecodeTokS["1"] <= 0 || r.DecodeTokS["2"] <= 0 {
		t.Errorf("rates not measured: %+v", r)
	}
	if r.MemoryBandwidthBytesS <= 0 || r.BandwidthBoundTokS <= 0 || r.PeakRSSBytes <= 0 || r.KVBudgetBytes <= 0 {
		t.Errorf("bandwidth, bound, RSS or KV budget missing: %+v", r)
	}
	// stories260K has a separate output tensor: the embedding is not read.
	if r.WeightBytesPerToken <= 0 || r.WeightBytesPerToken >= r.FileBytes {
		t.Errorf("weight bytes per token = %d, want in (0, %d)", r.WeightBytesPerToken, r.FileBytes)
	}
}

func TestRunErrors(t *testing.T) {
	if _, err := Run(context.Background(), Options{Model: "/nonexistent.gguf"}); err == nil {
		t.Fatal("no error for a missing model")
	}
}

// TestRoundsReportMedian: with Rounds every batch size is measured that many
// times and reported as the median of its rounds.
func TestRoundsReportMedian(t *testing.T) {
	model := filepath.Join(testdata.Dir(t, "stories260K"), "stories260K.gguf")
	r, err := Run(context.Background(), Options{Model: model, Threads: 1, Batches: []int{1, 2}, Prompt: 16, Decode: 6, Rounds: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"1", "2"} {
		rs := r.DecodeRounds[k]
		if len(rs) != 3 {
			t.Fatalf("batch %s: %d rounds recorded, want 3", k, len(rs))
		}
		if m := median(rs); r.DecodeTokS[k] != m || m <= 0 {
			t.Errorf("batch %s: reported %v, median of %v is %v", k, r.DecodeTokS[k], rs, m)
		}
	}
	if len(r.BandwidthRounds) != 3 || len(r.OfBoundRounds) != 3 || r.MemoryBandwidthBytesS != median(r.BandwidthRounds) {
		t.Errorf("bandwidth per round %v (median %v), batch 1 of bound per round %v; want 3 each and their median", r.BandwidthRounds, r.MemoryBandwidthBytesS, r.OfBoundRounds)
	}
	if r.DecodeOfBound != median(r.OfBoundRounds) || r.PeakRSSBytes <= 0 {
		t.Errorf("share of bound %v, want the rounds' median %v; peak RSS %d", r.DecodeOfBound, median(r.OfBoundRounds), r.PeakRSSBytes)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median of 4 values = %v, want 2.5", got)
	}
}

// TestFullSpan: the decode rate of a batch counts only the span in which
// every sequence decodes, not the staggered joins before it nor the drain
// after it.
func TestFullSpan(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	seq := func(from, to, n int) []mark {
		var ms []mark
		for s := from; s <= to; s++ {
			ms = append(ms, mark{at(s), n})
		}
		return ms
	}
	// A decodes from 0 to 5, B (two tokens per delivery) from 2 to 7, C from 1 to 9.
	total, first, last, err := fullSpan([][]mark{seq(0, 5, 1), seq(2, 7, 2), seq(1, 9, 1)})
	if err != nil {
		t.Fatal(err)
	}
	// The span is (2, 5]: A's 3, 4, 5; B's 3, 4, 5 (two each); C's 3, 4, 5.
	if !first.Equal(at(2)) || !last.Equal(at(5)) || total != 12 {
		t.Errorf("span %v..%v with %d tokens, want 2s..5s with 12", first.Sub(t0), last.Sub(t0), total)
	}
	// One sequence: its first token to its last.
	if total, first, last, _ := fullSpan([][]mark{seq(3, 8, 1)}); total != 5 || !first.Equal(at(3)) || !last.Equal(at(8)) {
		t.Errorf("one sequence: span %v..%v with %d tokens, want 3s..8s with 5", first.Sub(t0), last.Sub(t0), total)
	}
	if _, _, _, err := fullSpan([][]mark{seq(0, 3, 1), nil}); err == nil {
		t.Error("no error for a sequence without tokens")
	}
}
