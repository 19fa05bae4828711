package clustertest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/npumesh/npumesh/internal/demo"
	"github.com/npumesh/npumesh/internal/node"
)

// memRoot is a sysfs/procfs root whose /proc/meminfo reports availKB free.
func memRoot(t *testing.T, availKB int) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	info := fmt.Sprintf("MemTotal:       %d kB\nMemFree:        %d kB\nMemAvailable:   %d kB\n", 4*availKB, availKB, availKB)
	if err := os.WriteFile(filepath.Join(root, "proc", "meminfo"), []byte(info), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestAutomaticSharding: three nodes each report 2.0 MB free, and
// stories260K needs about 2.5 MB (1.2 MB of weights and a 2048-position
// context of f16 KV over 5 layers): no node holds it, so the coordinator
// serves it as a pipeline, without being asked, and the text is the
// unsharded model's (the default f16 activations keep the greedy text of
// this prompt).
func TestAutomaticSharding(t *testing.T) {
	model, err := demo.Install(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	roots := []string{memRoot(t, 2000), memRoot(t, 2000), memRoot(t, 2000)}
	p := startInProcessWith(t, 3, model, func(i int, cfg *node.Config) { cfg.SysRoot = roots[i] })
	got, finish := completeText(t, p.api, map[string]any{"model": "stories260K", "prompt": "", "max_tokens": 200, "temperature": 0})
	if want := expectedGreedy(t); got != want || finish != "length" {
		t.Fatalf("automatically sharded, finish %q:\n got %q\nwant %q", finish, got, want)
	}
	if n := metricValue(t, p.api, "npumesh_pipeline_attempts_total"); n < 1 {
		t.Fatalf("npumesh_pipeline_attempts_total = %v: the model was not served by a pipeline", n)
	}
	// The cluster view shows the plan: stages covering the 5 layers.
	resp, err := http.Get(p.api + "/api/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var view struct {
		Pipelines []struct {
			Model  string `json:"model"`
			Stages []struct {
				Node   string `json:"node"`
				Layers [2]int `json:"layers"`
			} `json:"stages"`
		} `json:"pipelines"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&view); err != nil {
		t.Fatal(err)
	}
	if len(view.Pipelines) != 1 || view.Pipelines[0].Model != "stories260K" || len(view.Pipelines[0].Stages) < 2 {
		t.Fatalf("cluster view pipelines: %+v", view.Pipelines)
	}
	next := 0
	for _, s := range view.Pipelines[0].Stages {
		if s.Layers[0] != next || s.Layers[1] <= s.Layers[0] {
			t.Fatalf("stages %+v do not cover the layers in order", view.Pipelines[0].Stages)
		}
		next = s.Layers[1]
	}
	if next != 5 {
		t.Fatalf("stages %+v end at layer %d, want 5", view.Pipelines[0].Stages, next)
	}
}
