package node

import (
	"math"
	"testing"
	"time"
)

func TestSpeedsAverage(t *testing.T) {
	var s speeds
	t0 := time.Unix(100, 0)
	if got := s.get("m"); got != 0 {
		t.Fatalf("unmeasured speed = %v, want 0", got)
	}
	s.observe("m", 11, t0, t0.Add(time.Second)) // 10 tok/s after the first token
	if got := s.get("m"); got != 10 {
		t.Fatalf("first observation = %v, want 10", got)
	}
	s.observe("m", 21, t0, t0.Add(time.Second)) // 20 tok/s moves the average by alpha
	if got, want := s.get("m"), 10+speedAlpha*10; math.Abs(got-want) > 1e-9 {
		t.Fatalf("average = %v, want %v", got, want)
	}
	s.observe("m", 1, t0, t0.Add(time.Second)) // one token: nothing to measure
	s.observe("m", 5, t0, t0)                  // no time passed: ignored
	if got, want := s.get("m"), 10+speedAlpha*10; math.Abs(got-want) > 1e-9 {
		t.Fatalf("ignored observations changed the average to %v", got)
	}
}
