package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/coordinator"
	"github.com/npumesh/npumesh/internal/demo"
	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/pki"
	"github.com/npumesh/npumesh/internal/upstream"
)

// TestUpstreamSupervisedFailover runs, in this process (so the race
// detector sees it), a coordinator and two nodes serving stories260K: one
// with the built-in engine, one through an upstream server that it supervises
// (`npumesh up` on a fixed port, a real OpenAI-compatible server). The
// upstream server is killed with SIGKILL: the model turns unavailable on that
// node at once, every request meanwhile is served by the other node, and the
// supervisor restarts the server, after which both nodes serve again.
func TestUpstreamSupervisedFailover(t *testing.T) {
	bin := Binary(t)
	want := expectedGreedy(t)
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(&testWriter{t}, nil))
	}
	modelPath, err := demo.Install(filepath.Join(dir, "models"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.InitCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	lo := []net.IP{net.IPv4(127, 0, 0, 1)}
	bundle := func(name string, role pki.Role) *pki.Bundle {
		b, _, err := ca.EnsureBundle(filepath.Join(dir, name), pki.IssueRequest{Name: name, Role: role, IPs: lo})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// Least-outstanding routing: this test is about availability, and the
	// default policy would rightly favour whichever node measures faster
	// (here the in-process engine under the race detector is the slow one).
	co, err := coordinator.New(coordinator.Config{Listen: "127.0.0.1:0", API: "127.0.0.1:0", TLS: bundle("coordinator", pki.RoleCoordinator), Logger: log.With("n", "coordinator"), HeartbeatInterval: 500 * time.Millisecond, RoutePolicy: "least-outstanding"})
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, apiAddr, err := co.Listen()
	if err != nil {
		t.Fatal(err)
	}
	var procs inProcess
	t.Cleanup(procs.stop)
	run := func(f func(ctx context.Context) error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f(ctx) }()
		procs.cancel = append(procs.cancel, cancel)
		procs.done = append(procs.done, done)
	}
	run(co.Run)

	builtin, err := node.LoadBuiltin(modelPath, engine.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	upAPI := FreeAddr(t)
	upData := filepath.Join(dir, "upstream-data")
	ub, err := upstream.New(upstream.Config{
		ID: "stories260K", URL: "http://" + upAPI + "/v1",
		Command: []string{bin, "up", "--nodes", "1", "--threads", "1", "--api", upAPI, "--data-dir", upData},
		// The first restart waits 2s, so requests can be sent meanwhile.
		HealthInterval: 200 * time.Millisecond, RestartBackoff: 2 * time.Second, StopTimeout: 20 * time.Second,
		Logger: log.With("n", "node-upstream"),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range []struct {
		name string
		b    node.Backend
	}{{"node-builtin", builtin}, {"node-upstream", ub}} {
		n, err := node.New(node.Config{Listen: "127.0.0.1:0", Coordinators: []string{grpcAddr.String()}, TLS: bundle(nd.name, pki.RoleNode), Backends: []node.Backend{nd.b}, Logger: log.With("n", nd.name)})
		if err != nil {
			t.Fatal(err)
		}
		run(n.Run) // Run closes the backend, which stops the upstream server
	}
	api := "http://" + apiAddr.String()
	c := &Cluster{t: t, API: api}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := ub.WaitAvailable(ctx); err != nil {
		t.Fatal(err)
	}
	waitServing(t, api, []string{"node-builtin", "node-upstream"}, 10*time.Second)

	// burst sends n concurrent greedy completions; all must succeed with
	// the expected text. It counts them by the node that served them.
	burst := func(n int) map[string]int {
		t.Helper()
		var mu sync.Mutex
		var wg sync.WaitGroup
		byNode := map[string]int{}
		var failures []string
		for range n {
			wg.Go(func() {
				status, hdr, body, err := c.Post(context.Background(), "/v1/completions", map[string]any{"model": "stories260K", "prompt": "", "max_tokens": 200, "temperature": 0})
				var cr completion
				_ = json.Unmarshal(body, &cr)
				mu.Lock()
				defer mu.Unlock()
				if err != nil || status != 200 || len(cr.Choices) != 1 || !strings.HasPrefix(cr.Choices[0].Text, want) {
					failures = append(failures, fmt.Sprintf("status %d err %v body %.300s", status, err, body))
					return
				}
				byNode[hdr.Get("X-Npumesh-Node")]++
			})
		}
		wg.Wait()
		if len(failures) > 0 {
			t.Fatalf("%d of %d requests failed; first: %s", len(failures), n, failures[0])
		}
		return byNode
	}
	if got := burst(8); got["node-upstream"] == 0 || got["node-builtin"] == 0 {
		t.Fatalf("8 concurrent requests went to %v, want both nodes", got)
	}

	// Kill the upstream server (up; its coordinator and node follow it).
	var victim Proc
	for _, p := range ChildrenOf(os.Getpid()) {
		if p.Role() == "up" && slices.Contains(p.Args, upData) {
			victim = p
		}
	}
	if victim.PID == 0 {
		t.Fatalf("the supervised up process is not among this process's children %v", ChildrenOf(os.Getpid()))
	}
	killed := time.Now()
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for ub.Available() {
		if time.Since(killed) > 5*time.Second {
			t.Fatal("the upstream model is still available 5s after its server was killed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("upstream unavailable %s after SIGKILL", time.Since(killed).Round(time.Millisecond))
	waitServing(t, api, []string{"node-builtin"}, 3*time.Second)
	t.Logf("coordinator stopped routing to node-upstream %s after SIGKILL", time.Since(killed).Round(time.Millisecond))

	// While it is down, every request succeeds on the other node. (Short
	// requests, one at a time: the race detector makes the engine slow.)
	down := 0
	for !ub.Available() && time.Since(killed) < 60*time.Second {
		status, hdr, body, err := c.Post(context.Background(), "/v1/completions", map[string]any{"model": "stories260K", "prompt": "", "max_tokens": 16, "temperature": 0})
		var cr completion
		_ = json.Unmarshal(body, &cr)
		if err != nil || status != 200 || len(cr.Choices) != 1 || cr.Choices[0].Text == "" || !strings.HasPrefix(want, cr.Choices[0].Text) {
			t.Fatalf("request while the upstream is down: status %d err %v body %.300s", status, err, body)
		}
		if ub.Available() {
			break // it came back meanwhile: this one proves nothing
		}
		down++
		if n := hdr.Get("X-Npumesh-Node"); n != "node-builtin" {
			t.Fatalf("request served by %s while the upstream was down", n)
		}
	}
	if down == 0 {
		t.Fatal("no request was served while the upstream was down")
	}
	if err := ub.WaitAvailable(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("upstream restarted and available %s after SIGKILL; %d requests served by node-builtin meanwhile", time.Since(killed).Round(time.Millisecond), down)
	if Alive(victim.PID) {
		t.Errorf("the killed up process %d is still alive", victim.PID)
	}
	waitServing(t, api, []string{"node-builtin", "node-upstream"}, 5*time.Second)
	if got := burst(8); got["node-upstream"] == 0 {
		t.Fatalf("after the restart 8 concurrent requests went to %v, want node-upstream among them", got)
	}

	// Stopping the node stops its upstream server: no process is left.
	procs.stop()
	for _, p := range ChildrenOf(os.Getpid()) {
		if slices.Contains(p.Args, upData) {
			t.Errorf("upstream process %d %v still runs after its node stopped", p.PID, p.Args)
		}
	}
}

// waitServing waits until exactly the nodes in want list stories260K in
// the coordinator's view.
func waitServing(t *testing.T, api string, want []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var got []string
	for {
		got = got[:0]
		resp, err := http.Get(api + "/api/v1/nodes")
		if err == nil {
			var v struct {
				Nodes []Node `json:"nodes"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&v)
			resp.Body.Close()
			for _, n := range v.Nodes {
				if n.State != "departed" && slices.Contains(n.Models, "stories260K") {
					got = append(got, n.Name)
				}
			}
			slices.Sort(got)
			if slices.Equal(got, want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes serving stories260K: %v, want %v within %s", got, want, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
