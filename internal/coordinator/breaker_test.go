package coordinator

import (
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	b := breakers{failures: 3, cooldown: time.Second, m: map[string]*breaker{}}
	now := time.Unix(1000, 0)
	for i := 0; i < 2; i++ {
		if b.failure("a", now) {
			t.Fatalf("circuit opened after %d failures, want 3", i+1)
		}
	}
	b.success("a") // a success resets the count
	for i := 0; i < 2; i++ {
		b.failure("a", now)
	}
	if !b.allow("a", now) {
		t.Fatal("2 failures after a success opened the circuit")
	}
	if !b.failure("a", now) || b.allow("a", now) || b.state("a", now) != "open" {
		t.Fatalf("3 consecutive failures: allow=%v state=%s, want the circuit open", b.allow("a", now), b.state("a", now))
	}
	if !b.allow("b", now) {
		t.Fatal("another node is affected")
	}
	// After the cool-down one probe goes through; others wait for it.
	later := now.Add(1500 * time.Millisecond)
	if !b.allow("a", later) || b.state("a", later) != "half-open" {
		t.Fatalf("after the cool-down: allow=%v state=%s, want a half-open probe", b.allow("a", later), b.state("a", later))
	}
	b.started("a", later)
	if b.allow("a", later) {
		t.Fatal("a second request allowed while the probe runs")
	}
	// A probe that ends without a verdict (the client left) lets another through.
	b.release("a")
	if !b.allow("a", later) {
		t.Fatal("no new probe after an inconclusive one")
	}
	b.started("a", later)
	// A failed probe opens the circuit again at once.
	if !b.failure("a", later) || b.allow("a", later.Add(500*time.Millisecond)) {
		t.Fatal("a failed probe did not reopen the circuit")
	}
	// A successful probe closes it.
	end := later.Add(2 * time.Second)
	b.started("a", end)
	b.success("a")
	if !b.allow("a", end) || b.state("a", end) != "closed" {
		t.Fatal("a successful probe did not close the circuit")
	}
}
