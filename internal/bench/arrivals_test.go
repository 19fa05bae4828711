package bench

import (
	"context"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPoissonDeterministic(t *testing.T) {
	a := Schedule(7, 20, 30*time.Second, 0)
	b := Schedule(7, 20, 30*time.Second, 0)
	c := Schedule(8, 20, 30*time.Second, 0)
	if len(a) == 0 || !slices.Equal(a, b) {
		t.Fatalf("same seed, different arrivals: %d vs %d", len(a), len(b))
	}
	if slices.Equal(a, c) {
		t.Fatal("different seeds, same arrivals")
	}
}

func TestPoissonRate(t *testing.T) {
	const rate = 50.0
	d := 400 * time.Second // virtual time: nothing waits
	for seed := uint64(1); seed <= 5; seed++ {
		at := Schedule(seed, rate, d, 0)
		// Poisson count: mean rate*d = 20000, standard deviation about 141.
		want := rate * d.Seconds()
		if n := float64(len(at)); math.Abs(n-want) > 5*math.Sqrt(want) {
			t.Errorf("seed %d: %v arrivals in %v, want %v +- 5 sigma", seed, n, d, want)
		}
		// Gaps are exponential: mean 1/rate, coefficient of variation 1.
		var sum, sq float64
		prev := time.Duration(0)
		for i, x := range at {
			if x < prev || x >= d {
				t.Fatalf("seed %d: arrival %d at %v after %v (end %v)", seed, i, x, prev, d)
			}
			g := (x - prev).Seconds()
			sum, sq, prev = sum+g, sq+g*g, x
		}
		n := float64(len(at))
		mean := sum / n
		cv := math.Sqrt(sq/n-mean*mean) / mean
		if math.Abs(mean*rate-1) > 0.05 || math.Abs(cv-1) > 0.05 {
			t.Errorf("seed %d: mean gap %.4fs (want %.4f), coefficient of variation %.3f (want 1)", seed, mean, 1/rate, cv)
		}
	}
}

func TestPoissonBounded(t *testing.T) {
	if at := Schedule(1, 1000, time.Hour, 25); len(at) != 25 {
		t.Fatalf("limit 25: %d arrivals", len(at))
	}
	if at := Schedule(1, 0, time.Hour, 0); len(at) != 0 {
		t.Fatalf("rate 0: %d arrivals", len(at))
	}
	if p := NewPoisson(1, 0); p.Next() != time.Duration(math.MaxInt64) {
		t.Fatal("rate 0 has a next arrival")
	}
}

// TestOpenLoopFollowsSchedule: the open loop sends exactly the scheduled
// arrivals, at their scheduled offsets (Start is the arrival, not the send),
// with prompts that repeat none of the warmup's, and the same prompts for
// the same seed.
func TestOpenLoopFollowsSchedule(t *testing.T) {
	srv, _ := fakeAPI(t)
	const rate = 100.0
	d := 300 * time.Millisecond
	run := func() *Result {
		r, err := Run(context.Background(), Options{API: srv.URL, Rate: rate, Concurrency: 2, Warmup: 50 * time.Millisecond, Duration: d, Seed: 3})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r1, r2 := run(), run()
	want := Schedule(3, rate, d, 0)
	for _, r := range []*Result{r1, r2} {
		if r.Rate != rate || r.MaxInFlight != 64 || r.Unsent != 0 {
			t.Fatalf("rate %v, max in flight %d, unsent %d", r.Rate, r.MaxInFlight, r.Unsent)
		}
		var measured []Sent
		warm := map[string]bool{}
		for _, s := range r.Log {
			if s.Warmup {
				warm[s.Prompt] = true
			} else {
				measured = append(measured, s)
			}
		}
		if len(measured) != len(want) || r.Requests != len(want) {
			t.Fatalf("%d requests sent (%d counted), %d scheduled", len(measured), r.Requests, len(want))
		}
		for i, s := range measured {
			if got := s.Start.Sub(measured[0].Start); got != want[i]-want[0] {
				t.Fatalf("arrival %d at +%v, scheduled +%v", i, got, want[i]-want[0])
			}
			if warm[s.Prompt] {
				t.Fatalf("arrival %d repeats a warmup prompt", i)
			}
		}
	}
	var p1, p2 []string
	for _, s := range r1.Log {
		if !s.Warmup {
			p1 = append(p1, s.Prompt)
		}
	}
	for _, s := range r2.Log {
		if !s.Warmup {
			p2 = append(p2, s.Prompt)
		}
	}
	if !slices.Equal(p1, p2) {
		t.Fatal("same seed, different prompts")
	}
}

// TestOpenLoopBoundedAndStops: a server that never answers. The open loop
// keeps at most MaxInFlight requests open, counts the arrivals that waited
// and those never sent, and returns by itself, cancelling what still runs
// after the drain bound (counted as errors).
func TestOpenLoopBoundedAndStops(t *testing.T) {
	var mu sync.Mutex
	open, most := 0, 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			io.WriteString(w, `{"data":[{"id":"m"}]}`)
			return
		}
		mu.Lock()
		open++
		most = max(most, open)
		mu.Unlock()
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		mu.Lock()
		open--
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	r, err := Run(context.Background(), Options{API: srv.URL, Rate: 2000, MaxInFlight: 3, Duration: 100 * time.Millisecond, Drain: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if most > 3 {
		t.Errorf("%d requests open at once, bound 3", most)
	}
	// The first 3 arrivals take the slots and never end; the 4th waits
	// until the end, and it and the rest are never sent.
	if r.Requests != 3 || r.Errors != 3 || r.Delayed != 0 || r.Unsent < 1 {
		t.Errorf("requests %d, errors %d, delayed %d, unsent %d; want 3, 3, 0, >= 1", r.Requests, r.Errors, r.Delayed, r.Unsent)
	}
	if total := r.Requests + r.Unsent; total != len(Schedule(1, 2000, 100*time.Millisecond, 0)) {
		t.Errorf("%d sent + unsent, %d scheduled", total, len(Schedule(1, 2000, 100*time.Millisecond, 0)))
	}
}

func TestOpenLoopRejectsLongContext(t *testing.T) {
	_, err := Run(context.Background(), Options{API: "http://127.0.0.1:1", Model: "m", Workload: LongContext, Rate: 1})
	if err == nil || !strings.Contains(err.Error(), "closed loop") {
		t.Fatalf("err = %v", err)
	}
	_, err = Run(context.Background(), Options{API: "http://127.0.0.1:1", Model: "m", Rate: math.Inf(1)})
	if err == nil || !strings.Contains(err.Error(), "bad rate") {
		t.Fatalf("err = %v", err)
	}
}
