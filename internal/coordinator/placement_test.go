package coordinator

import (
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/modelstore"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

func placeCoordinator(nodes map[string]uint64) *Coordinator {
	c := &Coordinator{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	c.reg = newRegistry(c.log, nil, time.Second)
	for name, free := range nodes {
		c.reg.members[name] = &member{name: name, info: &pb.NodeInfo{Os: "linux", Arch: "amd64", MemoryAvailableBytes: free}}
	}
	c.cat = &catalog{entries: map[string]*catalogEntry{}, observed: map[string]map[string]*pb.ModelInfo{}, kick: make(chan struct{}, 1)}
	return c
}

func addEntry(c *Coordinator, name, format string, size int64, replicas int) *catalogEntry {
	e := &catalogEntry{Name: name, Replicas: replicas, KVBudget: 1 << 20,
		manifest: &modelstore.Manifest{Name: name, Format: format, ChunkSize: 1 << 20, Files: []modelstore.File{{Name: "m", Size: size}}}}
	c.cat.entries[name] = e
	return e
}

func sorted(xs []string) []string { s := slices.Clone(xs); slices.Sort(s); return s }

func TestPlacement(t *testing.T) {
	const gib = 1 << 30
	t.Run("spread and memory fit", func(t *testing.T) {
		c := placeCoordinator(map[string]uint64{"a": 8 * gib, "b": 8 * gib, "small": 100 << 20})
		a := addEntry(c, "m1", modelstore.FormatGGUF, 1*gib, 2)
		b := addEntry(c, "m2", modelstore.FormatGGUF, 1*gib, 1)
		c.place()
		if got := sorted(a.Assigned); !slices.Equal(got, []string{"a", "b"}) {
			t.Errorf("m1 on %v, want [a b] (small cannot fit 1 GiB)", got)
		}
		if len(b.Assigned) != 1 {
			t.Fatalf("m2 on %v, want one node", b.Assigned)
		}
		big := addEntry(c, "huge", modelstore.FormatGGUF, 64*gib, 1)
		c.place()
		if len(big.Assigned) != 0 {
			t.Errorf("huge placed on %v, want nowhere", big.Assigned)
		}
		if d := strings.Join(big.Decisions, "\n"); !strings.Contains(d, "0 of 1 replicas placed") || !strings.Contains(d, "free") {
			t.Errorf("decisions %q do not say why", d)
		}
	})
	t.Run("spreads models across nodes", func(t *testing.T) {
		c := placeCoordinator(map[string]uint64{"a": 8 * gib, "b": 8 * gib, "c": 8 * gib})
		var on []string
		for _, n := range []string{"x", "y", "z"} {
			e := addEntry(c, n, modelstore.FormatGGUF, 1<<20, 1)
			c.place()
			on = append(on, e.Assigned...)
		}
		if got := sorted(on); !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Errorf("three models on %v, want one per node", got)
		}
	})
	t.Run("safetensors placed like GGUF", func(t *testing.T) {
		c := placeCoordinator(map[string]uint64{"a": 8 * gib, "b": 8 * gib, "small": 100 << 20})
		e := addEntry(c, "st", modelstore.FormatSafetensors, 1*gib, 2)
		c.place()
		if got := sorted(e.Assigned); !slices.Equal(got, []string{"a", "b"}) {
			t.Errorf("safetensors on %v, want [a b] (small cannot fit 1 GiB); decisions %v", got, e.Decisions)
		}
	})
	t.Run("unknown format not placed", func(t *testing.T) {
		c := placeCoordinator(map[string]uint64{"a": 8 * gib})
		e := addEntry(c, "onnx", "onnx", 1<<20, 1)
		c.place()
		if len(e.Assigned) != 0 || !strings.Contains(strings.Join(e.Decisions, ""), "onnx models need an upstream backend") {
			t.Errorf("onnx: assigned %v, decisions %v", e.Assigned, e.Decisions)
		}
	})
	t.Run("node leaves and comes back", func(t *testing.T) {
		c := placeCoordinator(map[string]uint64{"a": 8 * gib, "b": 8 * gib, "c": 8 * gib})
		e := addEntry(c, "m", modelstore.FormatGGUF, 1<<20, 2)
		c.place()
		first := slices.Clone(e.Assigned)
		gone := c.reg.members[first[0]]
		delete(c.reg.members, first[0])
		c.place()
		if len(e.Assigned) != 3 || e.Gone[first[0]].IsZero() {
			t.Fatalf("after %s left: assigned %v gone %v; want it kept (grace) plus a new node", first[0], e.Assigned, e.Gone)
		}
		v := c.catalogView("m")
		if v.ReplicaStatus[0].State != "left" {
			t.Errorf("left replica shows state %q", v.ReplicaStatus[0].State)
		}
		// It comes back: one replica too many, the newest unloaded one goes.
		c.reg.members[first[0]] = gone
		for _, n := range e.Assigned {
			if n != e.Assigned[2] {
				c.cat.observed[n] = map[string]*pb.ModelInfo{"m": {Id: "m", State: "loaded"}}
			}
		}
		c.place()
		if got := sorted(e.Assigned); !slices.Equal(got, sorted(first)) {
			t.Errorf("after %s came back: assigned %v, want %v", first[0], e.Assigned, first)
		}
	})
	t.Run("failed replica replaced", func(t *testing.T) {
		c := placeCoordinator(map[string]uint64{"a": 8 * gib, "b": 8 * gib})
		e := addEntry(c, "m", modelstore.FormatGGUF, 1<<20, 1)
		c.place()
		c.cat.observed[e.Assigned[0]] = map[string]*pb.ModelInfo{"m": {Id: "m", State: "failed", Reason: "disk full"}}
		c.place()
		if len(e.Assigned) != 2 {
			t.Fatalf("assigned %v, want the failed node kept (to show why) and another", e.Assigned)
		}
		if r := c.catalogView("m").ReplicaStatus[0]; r.State != "failed" || r.Reason != "disk full" {
			t.Errorf("replica status %v", r)
		}
	})
}
