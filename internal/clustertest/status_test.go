package clustertest

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runStatus runs `npumesh status` with args, bounded in time.
func runStatus(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, Binary(t), append([]string{"status"}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// statusRows parses the node table of `npumesh status` into name → fields.
func statusRows(out string) map[string][]string {
	rows := map[string][]string{}
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if i == 0 || strings.TrimSpace(l) == "" {
			if i > 0 {
				break // the table ends at the first blank line
			}
			continue
		}
		f := strings.Fields(l)
		if len(f) >= 7 && strings.HasPrefix(f[0], "node-") {
			rows[f[0]] = f
		}
	}
	return rows
}

// TestStatus runs `npumesh status` against a cluster with an API key: the
// table lists the nodes and their states, a SIGKILLed node shows as DOWN
// with its reason, --json carries the API's data, --watch redraws until
// interrupted, and bad flags fail with one line.
func TestStatus(t *testing.T) {
	const key = "sk-status-test"
	c := Start(t, Options{Nodes: 3, APIKey: key})
	for i := 0; i < 3; i++ {
		if status, _, body, err := c.Post(context.Background(), "/v1/completions", map[string]any{"model": c.Model, "prompt": "Hi", "max_tokens": 8}); err != nil || status != 200 {
			t.Fatalf("completion: %d %v %s", status, err, body)
		}
	}

	out, stderr, err := runStatus(t, "--api", c.API, "--api-key", key)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, stderr)
	}
	t.Logf("npumesh status:\n%s", out)
	if want := "NAME  ARCH  STATE  MODELS  IN-FLIGHT  SERVED  LAST-SEEN"; strings.Join(strings.Fields(strings.SplitN(out, "\n", 2)[0]), "  ") != want {
		t.Errorf("header = %q, want the columns %s", strings.SplitN(out, "\n", 2)[0], want)
	}
	rows := statusRows(out)
	for _, n := range []string{"node-1", "node-2", "node-3"} {
		r, ok := rows[n]
		if !ok {
			t.Errorf("no row for %s", n)
			continue
		}
		if r[2] != "ready" || r[3] != c.Model || !strings.HasSuffix(strings.Join(r[6:], " "), "ago") {
			t.Errorf("%s row = %q, want state ready, model %s and a last-seen age", n, r, c.Model)
		}
	}
	if !strings.Contains(out, "3 ready, 0 draining, 0 down") || !strings.Contains(out, "models: "+c.Model) || !strings.Contains(out, "3 requests") {
		t.Errorf("summary line lacks node counts, request total or models:\n%s", out)
	}

	// The key is required; without it the command says how to give it.
	_, stderr, err = runStatus(t, "--api", c.API)
	if msg := strings.TrimSpace(stderr); err == nil || strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "--api-key") {
		t.Errorf("status without the key: err %v, stderr %q; want non-zero exit and one line naming --api-key", err, msg)
	}

	killNode(t, c, "node-3")
	killed := time.Now()
	for {
		out, stderr, err = runStatus(t, "--api", c.API, "--api-key", key)
		if err != nil {
			t.Fatalf("status: %v\n%s", err, stderr)
		}
		if r := statusRows(out)["node-3"]; r != nil && r[2] == "DOWN" {
			t.Logf("node-3 DOWN in npumesh status %s after SIGKILL:\n%s", time.Since(killed).Round(time.Millisecond), out)
			break
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("node-3 not DOWN 10s after SIGKILL:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(out, "node-3 is down: ") || !strings.Contains(out, "2 ready, 0 draining, 1 down") {
		t.Errorf("status lacks the down node's reason or the counts:\n%s", out)
	}

	// --json passes on the API's own data.
	out, stderr, err = runStatus(t, "--api", c.API, "--api-key", key, "--json")
	if err != nil {
		t.Fatalf("status --json: %v\n%s", err, stderr)
	}
	var js struct {
		Cluster struct {
			Nodes    []struct{ Name, State string }  `json:"nodes"`
			Departed []struct{ Name, Reason string } `json:"departed"`
		} `json:"cluster"`
		Stats struct {
			RequestsTotal int `json:"requests_total"`
			NodesReady    int `json:"nodes_ready"`
		} `json:"stats"`
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("status --json output %q: %v", out, err)
	}
	if len(js.Cluster.Nodes) != 2 || len(js.Cluster.Departed) != 1 || js.Cluster.Departed[0].Name != "node-3" || js.Stats.NodesReady != 2 || js.Stats.RequestsTotal < 3 {
		t.Errorf("status --json = %+v, want 2 nodes, node-3 departed, 2 ready, ≥3 requests", js)
	}

	// --watch redraws every 2 s until interrupted, then exits 0.
	cmd := exec.Command(Binary(t), "status", "--api", c.API, "--api-key", key, "--watch")
	wout, werr := &syncBuffer{}, &syncBuffer{}
	cmd.Stdout, cmd.Stderr = wout, werr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			_ = cmd.Process.Kill()
			<-done
		}
	})
	started := time.Now()
	for strings.Count(wout.String(), "NAME ") < 2 {
		if time.Since(started) > 10*time.Second {
			t.Fatalf("status --watch drew %d frames in 10s, want 2:\n%s\n%s", strings.Count(wout.String(), "NAME "), wout.String(), werr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("status --watch drew its second frame %s after start", time.Since(started).Round(time.Millisecond))
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		done <- err // for the cleanup
		if err != nil {
			t.Errorf("status --watch after SIGINT: %v\n%s", err, werr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("status --watch did not stop within 10s of SIGINT")
	}

	// Bad or unreachable URLs: one line saying what to do, non-zero exit.
	for _, tc := range []struct{ api, want string }{
		{"127.0.0.1:1", "bad --api URL"},
		{"ftp://127.0.0.1:1", "bad --api URL"},
		{"http://127.0.0.1:1", "cannot reach"},
	} {
		_, stderr, err := runStatus(t, "--api", tc.api)
		msg := strings.TrimRight(stderr, "\n")
		if err == nil || strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "npumesh: ") || !strings.Contains(msg, tc.want) {
			t.Errorf("status --api %s: err %v, stderr %q; want non-zero exit and one line with %q", tc.api, err, msg, tc.want)
		}
	}
}
