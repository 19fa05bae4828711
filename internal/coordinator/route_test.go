package coordinator

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/route"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

func testCoordinator(maxPerNode int, nodes ...*member) *Coordinator {
	c := &Coordinator{cfg: Config{MaxOutstandingPerNode: maxPerNode, RoutePolicy: "least-outstanding"}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	c.reg = newRegistry(c.log, nil, time.Second)
	if err := c.initRouting(); err != nil {
		panic(err)
	}
	for _, m := range nodes {
		c.reg.members[m.name] = m
	}
	return c
}

func testMember(name string, outstanding int32, draining bool, models ...string) *member {
	m := &member{name: name, models: map[string]*pb.ModelInfo{}, draining: draining}
	for _, id := range models {
		m.models[id] = &pb.ModelInfo{Id: id}
	}
	m.outstanding.Store(outstanding)
	return m
}

func TestPickLeastOutstanding(t *testing.T) {
	c := testCoordinator(4,
		testMember("a", 3, false, "m"),
		testMember("b", 1, false, "m"),
		testMember("c", 0, true, "m"),  // draining: never picked
		testMember("d", 0, false, "x"), // other model
	)
	for i := 0; i < 20; i++ {
		m, err := c.pick(&routeReq{r: route.Request{Model: "m"}}, nil)
		if err != nil || m.name != "b" {
			t.Fatalf("pick = %v, %v; want b (fewest outstanding among eligible)", m, err)
		}
	}
	// Tried nodes are skipped.
	if m, err := c.pick(&routeReq{r: route.Request{Model: "m"}}, map[string]bool{"b": true}); err != nil || m.name != "a" {
		t.Fatalf("pick excluding b = %v, %v; want a", m, err)
	}
}

func TestPickSpreadsTies(t *testing.T) {
	c := testCoordinator(4, testMember("a", 0, false, "m"), testMember("b", 0, false, "m"), testMember("c", 0, false, "m"))
	seen := map[string]int{}
	for i := 0; i < 300; i++ {
		m, err := c.pick(&routeReq{r: route.Request{Model: "m"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		seen[m.name]++
	}
	if len(seen) != 3 {
		t.Fatalf("300 picks among 3 idle nodes went to %v, want all three", seen)
	}
}

func TestPickErrors(t *testing.T) {
	cases := []struct {
		name   string
		c      *Coordinator
		model  string
		status int
	}{
		{"no nodes", testCoordinator(4), "m", http.StatusServiceUnavailable},
		{"unknown model", testCoordinator(4, testMember("a", 0, false, "m")), "other", http.StatusNotFound},
		{"all full", testCoordinator(2, testMember("a", 2, false, "m"), testMember("b", 5, false, "m")), "m", http.StatusTooManyRequests},
		{"all draining", testCoordinator(2, testMember("a", 0, true, "m")), "m", http.StatusServiceUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := tc.c.pick(&routeReq{r: route.Request{Model: tc.model}}, nil)
			if err == nil {
				t.Fatalf("pick = %s, want an error", m.name)
			}
			if err.Status != tc.status {
				t.Fatalf("status = %d, want %d (%v)", err.Status, tc.status, err)
			}
			if tc.status == http.StatusTooManyRequests && err.RetryAfter <= 0 {
				t.Error("429 without Retry-After")
			}
		})
	}
}

func TestCheckAPIAddr(t *testing.T) {
	cases := []struct {
		addr          string
		tls, insecure bool
		ok            bool
	}{
		{"127.0.0.1:8080", false, false, true},
		{"[::1]:8080", false, false, true},
		{"localhost:8080", false, false, true},
		{"0.0.0.0:8080", false, false, false},
		{"192.0.2.1:8080", false, false, false},
		{"0.0.0.0:8080", true, false, true},
		{"0.0.0.0:8080", false, true, true},
		{"no-port", false, false, false},
	}
	for _, tc := range cases {
		err := checkAPIAddr(tc.addr, tc.tls, tc.insecure)
		if (err == nil) != tc.ok {
			t.Errorf("checkAPIAddr(%q, tls=%v, insecure=%v) = %v, want ok=%v", tc.addr, tc.tls, tc.insecure, err, tc.ok)
		}
	}
}

// BenchmarkCoordinatorPick1000 measures what the coordinator adds to a
// routing decision among 1,000 nodes holding the model: building the
// candidate list from the registry (per node: its state under its lock, the
// router's id, the circuit breaker) and recording the choice. The prompt is
// not hashed (least-outstanding), so the router's own share is the one pass.
func BenchmarkCoordinatorPick1000(b *testing.B) {
	nodes := make([]*member, 1000)
	for i := range nodes {
		nodes[i] = testMember(fmt.Sprintf("node-%04d", i), int32(i%7), false, "m")
	}
	c := testCoordinator(64, nodes...)
	rr := &routeReq{r: route.Request{Model: "m"}}
	times := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		m, err := c.pick(rr, nil)
		times = append(times, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		_ = m
	}
	b.StopTimer()
	slices.Sort(times)
	if len(times) > 0 {
		b.ReportMetric(float64(times[len(times)/2].Nanoseconds())/1e3, "p50-µs")
		b.ReportMetric(float64(times[len(times)*99/100].Nanoseconds())/1e3, "p99-µs")
	}
}
