package node

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/testdata"
)

// TestStageSweep: later stages no stream uses are closed once idle, and a
// stage in use is kept however old.
func TestStageSweep(t *testing.T) {
	path := filepath.Join(testdata.Dir(t, "stories260K"), "stories260K.gguf")
	b, err := LoadBuiltin(path, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	n := &Node{log: slog.New(slog.NewTextHandler(io.Discard, nil)), backends: map[string]Backend{"stories260K": b}}
	h := newStageHost(n)
	defer h.close()
	_, releaseA, err := h.laterModel("stories260K", 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	_, releaseB, err := h.laterModel("stories260K", 3, 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.laterModel("stories260K", 3, 9); err == nil {
		t.Error("layers [3,9) of a 5-layer model loaded")
	}
	if _, _, err := h.laterModel("missing", 1, 2); err == nil {
		t.Error("a model the node lacks loaded")
	}
	releaseB()
	h.sweep(time.Now().Add(time.Hour), time.Minute)
	h.mu.Lock()
	_, keptA := h.later["stories260K[1,3)"]
	_, keptB := h.later["stories260K[3,5)"]
	h.mu.Unlock()
	if !keptA || keptB {
		t.Fatalf("after the sweep: in-use stage kept %v (want true), idle stage kept %v (want false)", keptA, keptB)
	}
	releaseA()
	h.sweep(time.Now(), time.Minute) // released just now: not idle yet
	h.mu.Lock()
	_, keptA = h.later["stories260K[1,3)"]
	h.mu.Unlock()
	if !keptA {
		t.Fatal("a stage released a moment ago was closed")
	}
}
