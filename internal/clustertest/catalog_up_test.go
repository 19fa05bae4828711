package clustertest

import (
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// lsModel is one model of `npumesh model ls --json`.
type lsModel struct {
	Name     string `json:"name"`
	Replicas int    `json:"replicas"`
	Status   []struct {
		Node   string `json:"node"`
		State  string `json:"state"`
		Reason string `json:"reason"`
	} `json:"replica_status"`
	Decisions []string `json:"decisions"`
}

func modelLS(t *testing.T, args ...string) []lsModel {
	t.Helper()
	out, err := exec.Command(Binary(t), append([]string{"model", "ls", "--json"}, args...)...).Output()
	if err != nil {
		t.Fatalf("npumesh model ls: %v", err)
	}
	var ms []lsModel
	if err := json.Unmarshal(out, &ms); err != nil {
		t.Fatalf("model ls --json: %v\n%s", err, out)
	}
	return ms
}

func loadedOn(ms []lsModel, name string) []string {
	var nodes []string
	for _, m := range ms {
		if m.Name != name {
			continue
		}
		for _, r := range m.Status {
			if r.State == "loaded" {
				nodes = append(nodes, r.Node)
			}
		}
	}
	slices.Sort(nodes)
	return nodes
}

// TestModelPlacementUp: a model added with 2 replicas in a 3-node cluster
// (real processes) is loaded on 2 nodes and serves requests; when one of
// them dies, the model is placed on the third.
func TestModelPlacementUp(t *testing.T) {
	c := Start(t, Options{Nodes: 3})
	path := SynthModel(t)
	out, err := exec.Command(Binary(t), "model", "add", path, "--name", "syn", "--replicas", "2", "--data-dir", c.DataDir, "--wait", "60s").CombinedOutput()
	if err != nil {
		t.Fatalf("model add: %v\n%s", err, out)
	}
	t.Logf("model add:\n%s", out)
	first := loadedOn(modelLS(t, "--data-dir", c.DataDir), "syn")
	if len(first) != 2 {
		t.Fatalf("loaded on %v, want 2 nodes", first)
	}
	serve := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		code, hdr, body, err := c.Post(ctx, "/v1/completions", map[string]any{"model": "syn", "prompt": "Once", "max_tokens": 4})
		if err != nil || code != http.StatusOK {
			t.Fatalf("completion on syn: %v %d %s", err, code, body)
		}
		return hdr.Get("X-Npumesh-Node")
	}
	if n := serve(); !slices.Contains(first, n) {
		t.Fatalf("served by %s, want one of %v", n, first)
	}
	killNode(t, c, first[0])
	var now []string
	if !WaitFor(60*time.Second, func() bool {
		now = loadedOn(modelLS(t, "--data-dir", c.DataDir), "syn")
		return len(now) == 2 && !slices.Contains(now, first[0])
	}) {
		t.Fatalf("after %s died: loaded on %v, want 2 nodes without it", first[0], now)
	}
	var third string
	for _, n := range now {
		if !slices.Contains(first, n) {
			third = n
		}
	}
	if third == "" {
		t.Fatalf("loaded on %v after %s died; want the third node", now, first[0])
	}
	served := map[string]bool{}
	for range 6 {
		served[serve()] = true
	}
	if served[first[0]] {
		t.Fatalf("dead node %s served", first[0])
	}
	ls, _ := exec.Command(Binary(t), "model", "ls", "--data-dir", c.DataDir).CombinedOutput()
	t.Logf("model ls after %s died:\n%s", first[0], ls)
	if !strings.Contains(string(ls), first[0]+" left") {
		t.Errorf("model ls shows no re-placement decision:\n%s", ls)
	}
	resp, err := http.Get(c.API + "/api/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		Nodes []struct {
			Name       string   `json:"name"`
			Placements []string `json:"placements"`
		} `json:"nodes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	for _, n := range v.Nodes {
		if n.Name == third && !slices.Contains(n.Placements, "syn: loaded") {
			t.Errorf("/api/v1/nodes: %s placements %v, want syn: loaded", third, n.Placements)
		}
	}

	// A restart of the whole cluster loses nothing: the catalog comes back
	// from the coordinator's data dir and the nodes load from their stores.
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	c2 := Start(t, Options{Nodes: 3, DataDir: c.DataDir})
	if !WaitFor(60*time.Second, func() bool { return len(loadedOn(modelLS(t, "--data-dir", c.DataDir), "syn")) == 2 }) {
		t.Fatalf("after a restart: %v", modelLS(t, "--data-dir", c.DataDir))
	}
	if strings.Contains(c2.Log.String(), `"model transfer done"`) || strings.Contains(c2.Log.String(), "msg=\"model transfer done\"") {
		t.Errorf("after a restart a node pulled the model again:\n%s", c2.Log.String())
	}
	c = c2
	serve()
}
