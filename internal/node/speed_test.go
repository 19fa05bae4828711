package node

import (
	"math"
	"testing"
	"time"
)

func TestSpeedsThroughputWhileBusy(t *testing.T) {
	var s speeds
	t0 := time.Unix(100, 0)
	if got := s.get("m", t0); got != 0 {
		t.Fatalf("unmeasured speed = %v, want 0", got)
	}
	// Two overlapping requests: 1 s busy in all, 30 tokens → 30 tok/s.
	s.start("m", t0)
	s.start("m", t0.Add(200*time.Millisecond))
	s.end("m", 10, t0.Add(600*time.Millisecond))
	s.end("m", 20, t0.Add(time.Second))
	// Idle time does not count.
	if got := s.get("m", t0.Add(10*time.Second)); math.Abs(got-30) > 1e-9 {
		t.Fatalf("throughput = %v, want 30", got)
	}
	// A window shorter than speedWindow does not move the average yet.
	s.start("m", t0.Add(20*time.Second))
	s.end("m", 90, t0.Add(20*time.Second+100*time.Millisecond))
	if got := s.get("m", t0.Add(21*time.Second)); math.Abs(got-30) > 1e-9 {
		t.Fatalf("after a short window = %v, want still 30", got)
	}
	// Another 1 s of busy time at 60 tok/s (with the short window's 90
	// tokens in 0.1 s): the window is 1.1 s and 150 tokens.
	s.start("m", t0.Add(30*time.Second))
	s.end("m", 60, t0.Add(31*time.Second))
	want := 30 + speedAlpha*(150/1.1-30)
	if got := s.get("m", t0.Add(40*time.Second)); math.Abs(got-want) > 1e-9 {
		t.Fatalf("average = %v, want %v", got, want)
	}
}
