package clustertest

import (
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stageLoaded matches a node's log line for a later pipeline stage.
var stageLoaded = regexp.MustCompile(`msg="pipeline stage loaded" node=(\S+) model=\S+ layers=\[(\d+),(\d+)\)`)

// laterStages returns the node of each later stage the cluster's log
// reports, by its first layer.
func laterStages(c *Cluster) map[int]string {
	out := map[int]string{}
	for _, m := range stageLoaded.FindAllStringSubmatch(c.Log.String(), -1) {
		lo, _ := strconv.Atoi(m[2])
		out[lo] = m[1]
	}
	return out
}

// TestShardedPipeline runs the demo model (stories260K, 5 layers) as a
// pipeline of 3 stages on a 4-node cluster, with f32 activations: the
// greedy text equals upstream's, streamed and not. Then the middle
// stage's node is SIGKILLed mid-stream: the coordinator re-plans on the
// three nodes left and resumes, and the client's stream completes with
// the undisturbed text.
func TestShardedPipeline(t *testing.T) {
	c := Start(t, Options{Nodes: 4, Args: []string{"--threads", "1", "--shard", "stories260K=3:f32"}})
	want := expectedGreedy(t)
	body := func() map[string]any {
		return map[string]any{"model": c.Model, "prompt": "", "max_tokens": 200, "temperature": 0}
	}
	got, finish := completeText(t, c.API, body())
	if got != want || finish != "length" {
		t.Fatalf("3-stage pipeline, finish %q:\n got %q\nwant %q", finish, got, want)
	}
	// The CLI shows the plan, and refuses a bad setting in one line.
	out, err := exec.Command(Binary(t), "model", "shard", "stories260K", "--stages", "3", "--activations", "f32", "--data-dir", c.DataDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "stories260K: 3 stages, f32 activations") || strings.Count(string(out), "  stage ") != 3 {
		t.Fatalf("model shard: %v\n%s", err, out)
	}
	out, err = exec.Command(Binary(t), "model", "shard", "stories260K", "--stages", "2", "--activations", "f8", "--data-dir", c.DataDir).CombinedOutput()
	if err == nil || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 || !strings.Contains(string(out), "want f16, f32 or q8") {
		t.Fatalf("model shard with a bad activation type: %v\n%s", err, out)
	}
	stages := laterStages(c)
	if len(stages) != 2 {
		t.Fatalf("want 2 later stages in the nodes' logs, got %v\n%s", stages, c.Log.String())
	}
	res, err := streamFollow(context.Background(), c.API, body(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.text != want || res.errMsg != "" || !res.done {
		t.Fatalf("streamed through the pipeline: error %q, done %v\n got %q\nwant %q", res.errMsg, res.done, res.text, want)
	}

	// The middle stage: the later stage that does not hold the last layer.
	middle, last := "", 0
	for lo := range stages {
		last = max(last, lo)
	}
	for lo, n := range stages {
		if lo != last {
			middle = n
		}
	}
	if middle == "" || middle == res.node {
		t.Fatalf("no middle stage distinct from the first (%s): %v", res.node, stages)
	}
	before := metricValue(t, c.API, "npumesh_migrations_total")
	killed := false
	res, err = streamFollow(context.Background(), c.API, body(), func(n int, node string) {
		if n == 10 && !killed {
			p, ok := nodeProc(c, middle)
			if !ok {
				t.Errorf("no process for node %q", middle)
				return
			}
			killed = true
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
			// Let the failure reach the first stage before more text
			// is read, so the kill lands mid-stream.
			time.Sleep(50 * time.Millisecond)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if !killed {
		t.Fatalf("the stream ended after %d chunks, before the kill", res.chunks)
	}
	if res.errMsg != "" || !res.done || res.finish != "length" {
		t.Fatalf("stream after killing the middle stage: error %q, done %v, finish %q", res.errMsg, res.done, res.finish)
	}
	if res.text != want {
		t.Fatalf("stream after killing the middle stage %s differs:\n got %q\nwant %q", middle, res.text, want)
	}
	if got := metricValue(t, c.API, "npumesh_migrations_total"); got < before+1 {
		t.Fatalf("npumesh_migrations_total = %v, want at least %v (the stream was not resumed)", got, before+1)
	}
	t.Logf("killed middle stage %s after 10 chunks; the stream completed (%d chunks) on a re-planned pipeline", middle, res.chunks)
}
