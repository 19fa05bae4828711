package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/bench"
)

func TestRatioSummaryPerRound(t *testing.T) {
	res := func(mean, p50, p99, tok, hit, oracle float64) *bench.Result {
		return &bench.Result{TTFTMean: mean, TTFT: bench.Percentiles{P50: p50, P99: p99}, OutputTokS: tok, CacheHitRate: hit, Oracle: &bench.OracleResult{HitRate: oracle}}
	}
	rounds := [][]*bench.Result{
		{res(100, 80, 400, 10, 0.4, 0.8), res(30, 20, 200, 20, 0.72, 0.8)},
		{res(300, 200, 900, 5, 0.4, 0.8), res(60, 40, 300, 15, 0.76, 0.8)},
		{res(200, 100, 800, 8, 0.4, 0.8), res(100, 50, 400, 12, 0.8, 0.8)},
	}
	var b bytes.Buffer
	printRatioSummary(&b, []string{"round-robin", "prefix"}, rounds)
	out := b.String()
	// Ratios within each round: mean 0.30, 0.20, 0.50; p50 0.25, 0.20, 0.50;
	// p99 0.50, 0.33, 0.50; tok/s 2.0, 3.0, 1.5; hit/oracle 0.90, 0.95, 1.00.
	for _, want := range []string{"0.30 [0.20, 0.50]", "0.25 [0.20, 0.50]", "0.50 [0.33, 0.50]", "2.00 [1.50, 3.00]", "0.95 [0.90, 1.00]"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}

func TestLoadLabels(t *testing.T) {
	if s := loadLabel(&policyLoad{}); !strings.Contains(s, "closed loop") {
		t.Error(s)
	}
	if s := loadLabel(&policyLoad{Fraction: 0.7, Rate: 7}); !strings.Contains(s, "7.00 req/s") || !strings.Contains(s, "0.70 of") {
		t.Error(s)
	}
	if s := loadName(&bench.Result{Rate: 3, MaxInFlight: 16}); !strings.Contains(s, "Poisson 3.00 req/s") || !strings.Contains(s, "16") {
		t.Error(s)
	}
}
