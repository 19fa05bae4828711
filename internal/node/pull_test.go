package node

import (
	"testing"
	"time"
)

func TestPickSourceByThroughput(t *testing.T) {
	p := &puller{rates: map[string]float64{}}
	srcs := []source{{node: "peer-a", addr: "a"}, {node: "peer-b", addr: "b"}, {addr: "coord"}}
	banned := map[string]time.Time{}
	// Unmeasured sources are tried first, in the coordinator's order.
	for _, want := range []string{"peer-a", "peer-b", "coordinator"} {
		got, ok := p.pickSource(srcs, banned)
		if !ok || got.key() != want {
			t.Fatalf("pick = %q, want %q", got.key(), want)
		}
		p.measure(got, map[string]int64{"peer-a": 10 << 20, "peer-b": 40 << 20, "coordinator": 20 << 20}[want], time.Second)
	}
	if got, _ := p.pickSource(srcs, banned); got.key() != "peer-b" {
		t.Fatalf("pick = %q, want the fastest, peer-b", got.key())
	}
	// A banned source is skipped until its ban ends.
	banned["peer-b"] = time.Now().Add(time.Minute)
	if got, _ := p.pickSource(srcs, banned); got.key() != "coordinator" {
		t.Fatalf("pick with peer-b banned = %q, want coordinator", got.key())
	}
	banned["peer-b"] = time.Now().Add(-time.Second)
	if got, _ := p.pickSource(srcs, banned); got.key() != "peer-b" {
		t.Fatalf("pick after the ban = %q, want peer-b", got.key())
	}
	// A source that slows down loses its place.
	p.measure(source{node: "peer-b"}, 1<<20, time.Second)
	p.measure(source{node: "peer-b"}, 1<<20, time.Second)
	if got, _ := p.pickSource(srcs, banned); got.key() != "coordinator" {
		t.Fatalf("pick after peer-b slowed = %q, want coordinator", got.key())
	}
}
