package clustertest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// streamResult is what a client saw of one streamed completion.
type streamResult struct {
	status int
	node   string // X-Npumesh-Node
	text   string
	finish string
	chunks int
	errMsg string // an error event in the stream, "" for none
	done   bool   // data: [DONE] arrived
}

// streamFollow posts a streamed completion and reads it to the end;
// onChunk runs after each text chunk with the number seen so far.
func streamFollow(ctx context.Context, api string, body map[string]any, onChunk func(n int, node string)) (streamResult, error) {
	return streamFollowClient(ctx, http.DefaultClient, api, body, onChunk)
}

// streamFollowClient is streamFollow through client.
func streamFollowClient(ctx context.Context, client *http.Client, api string, body map[string]any, onChunk func(n int, node string)) (streamResult, error) {
	body["stream"] = true
	raw, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, api+"/v1/completions", bytes.NewReader(raw))
	if err != nil {
		return streamResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return streamResult{}, err
	}
	defer resp.Body.Close()
	r := streamResult{status: resp.StatusCode, node: resp.Header.Get("X-Npumesh-Node")}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		r.errMsg = string(b)
		return r, nil
	}
	sc := bufio.NewScanner(resp.Body)
	var sb strings.Builder
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			r.done = true
			continue
		}
		var ch struct {
			Choices []struct {
				Text         string  `json:"text"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			return r, fmt.Errorf("bad chunk %q: %v", data, err)
		}
		if ch.Error != nil {
			r.errMsg = ch.Error.Message
			continue
		}
		if len(ch.Choices) == 0 {
			continue
		}
		if f := ch.Choices[0].FinishReason; f != nil && *f != "" {
			r.finish = *f
		}
		if ch.Choices[0].Text != "" {
			sb.WriteString(ch.Choices[0].Text)
			r.chunks++
			if onChunk != nil {
				onChunk(r.chunks, r.node)
			}
		}
	}
	r.text = sb.String()
	return r, sc.Err()
}

// completeText runs a non-streamed completion and returns its text.
func completeText(t testing.TB, api string, body map[string]any) (string, string) {
	t.Helper()
	body["stream"] = false
	raw, _ := json.Marshal(body)
	resp, err := http.Post(api+"/v1/completions", "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	var cr completion
	if err := json.Unmarshal(out, &cr); err != nil || len(cr.Choices) == 0 {
		t.Fatalf("bad response %s: %v", out, err)
	}
	return cr.Choices[0].Text, cr.Choices[0].FinishReason
}

// metricValue sums a Prometheus counter's samples in the coordinator's /metrics.
func metricValue(t *testing.T, api, name string) float64 {
	t.Helper()
	resp, err := http.Get(api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^` + name + `(\{[^}]*\})? ([0-9.e+-]+)$`)
	sum := 0.0
	for _, m := range re.FindAllStringSubmatch(string(raw), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		sum += v
	}
	return sum
}

// nodeProc finds the process of node name among up's children.
func nodeProc(c *Cluster, name string) (Proc, bool) {
	for _, p := range c.Children() {
		if p.Role() == "node" && p.Name() == name {
			return p, true
		}
	}
	return Proc{}, false
}

// TestStreamMigratesWhenNodeDies kills the serving node after some tokens
// went out: the client's stream goes on from another node and its text is
// exactly that of an undisturbed greedy run, with a stop string in play.
func TestStreamMigratesWhenNodeDies(t *testing.T) {
	c := Start(t, Options{Nodes: 2, Args: []string{"--model", SynthModel(t), "--threads", "1"}})
	body := func() map[string]any {
		return map[string]any{"model": c.Model, "prompt": "the quick brown fox jumps over the lazy dog", "max_tokens": 160, "temperature": 0}
	}
	want, finish := completeText(t, c.API, body())
	if finish != "length" || len(want) == 0 {
		t.Fatalf("undisturbed run finished %q with %d bytes; want a full-length completion", finish, len(want))
	}
	before := metricValue(t, c.API, "npumesh_migrations_total")

	killed := ""
	var victim Proc
	res, err := streamFollow(context.Background(), c.API, body(), func(n int, node string) {
		if n == 10 && killed == "" {
			p, ok := nodeProc(c, node)
			if !ok {
				t.Errorf("no process for node %q", node)
				return
			}
			killed, victim = node, p
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if killed == "" {
		t.Fatalf("the stream ended after %d chunks, before the kill", res.chunks)
	}
	if res.errMsg != "" || !res.done || res.finish != "length" {
		t.Fatalf("stream after the kill: error %q, done %v, finish %q", res.errMsg, res.done, res.finish)
	}
	if res.text != want {
		t.Fatalf("migrated stream text differs from the undisturbed run:\n got %q\nwant %q", res.text, want)
	}
	if got := metricValue(t, c.API, "npumesh_migrations_total"); got < before+1 {
		t.Fatalf("npumesh_migrations_total = %v, want at least %v", got, before+1)
	}
	t.Logf("killed %s after 10 chunks; stream of %d chunks completed on the other node", killed, res.chunks)

	// Again with a stop string that first occurs after the switch: the new
	// node must find it (the text held back for it came from the first).
	restartNode(t, c, victim)
	c.WaitNodes(2, 20*time.Second)
	stop := want[len(want)*2/3:][:3]
	withStop := body()
	withStop["stop"] = []string{stop}
	want2, finish2 := completeText(t, c.API, withStop)
	if finish2 != "stop" || len(want2) >= len(want) {
		t.Fatalf("undisturbed run with stop %q: finish %q, %d bytes", stop, finish2, len(want2))
	}
	killed = ""
	res, err = streamFollow(context.Background(), c.API, withStop, func(n int, node string) {
		if n == 3 && killed == "" {
			if p, ok := nodeProc(c, node); ok {
				killed = node
				_ = syscall.Kill(p.PID, syscall.SIGKILL)
			} else if p, ok := restartedProc(node); ok {
				killed = node
				_ = syscall.Kill(p.PID, syscall.SIGKILL)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if killed == "" || res.errMsg != "" || !res.done || res.finish != "stop" || res.text != want2 {
		t.Fatalf("stream with stop %q after killing %q: error %q, finish %q\n got %q\nwant %q", stop, killed, res.errMsg, res.finish, res.text, want2)
	}
}

// restarted are node processes the tests started again after killing
// them, by node name.
var restarted sync.Map // name -> *exec.Cmd

func restartedProc(name string) (Proc, bool) {
	v, ok := restarted.Load(name)
	if !ok {
		return Proc{}, false
	}
	cmd := v.(*exec.Cmd)
	if !Alive(cmd.Process.Pid) {
		return Proc{}, false
	}
	return Proc{PID: cmd.Process.Pid, Args: cmd.Args}, true
}

// restartNode starts a killed node process again with the same arguments
// (certificate, model, coordinator), as the test's child, stopped at cleanup.
func restartNode(t *testing.T, c *Cluster, p Proc) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(p.Args[0], p.Args[1:]...)
	cmd.Stdout, cmd.Stderr = c.Log, c.Log
	if err := cmd.Start(); err != nil {
		t.Fatalf("restart %s: %v", p.Name(), err)
	}
	restarted.Store(p.Name(), cmd)
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return cmd
}

// TestChaosKillRestart runs steady streamed load on 4 nodes while, every
// couple of seconds, a random node is SIGKILLed and started again. No
// request may fail: streams move to another node. Bounded in time.
func TestChaosKillRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test in -short mode")
	}
	c := Start(t, Options{Nodes: 4, Args: []string{"--model", SynthModel(t), "--threads", "1"}})
	const (
		duration    = 20 * time.Second
		killEvery   = 2 * time.Second
		concurrency = 6
	)
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()

	var ok, failed atomic.Int64
	var failMu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				body := map[string]any{"model": c.Model, "prompt": fmt.Sprintf("worker %d request %d: once upon a time", w, i), "max_tokens": 60, "temperature": 0}
				// Requests run to the end even past the test's deadline.
				res, err := streamFollow(context.Background(), c.API, body, nil)
				switch {
				case err != nil:
					failed.Add(1)
					failMu.Lock()
					failures = append(failures, err.Error())
					failMu.Unlock()
				case res.status != http.StatusOK || res.errMsg != "" || !res.done:
					failed.Add(1)
					failMu.Lock()
					failures = append(failures, fmt.Sprintf("status %d, error %q, done %v", res.status, res.errMsg, res.done))
					failMu.Unlock()
				default:
					ok.Add(1)
				}
			}
		}(w)
	}

	// The chaos monkey: kill a random node, start it again with the same
	// arguments (its certificate and model), wait for it to register.
	kills := 0
	var restartedCmds []*exec.Cmd
	tick := time.NewTicker(killEvery)
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
		var nodes []Proc
		for _, p := range c.Children() {
			if p.Role() == "node" {
				nodes = append(nodes, p)
			}
		}
		for _, cmd := range restartedCmds {
			if Alive(cmd.Process.Pid) {
				nodes = append(nodes, Proc{PID: cmd.Process.Pid, Args: cmd.Args})
			}
		}
		if len(nodes) < 2 {
			continue
		}
		victim := nodes[rand.IntN(len(nodes))]
		if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
			continue
		}
		kills++
		// Start it again as the test's own child.
		restartedCmds = append(restartedCmds, restartNode(t, c, victim))
	}
	wg.Wait()
	migrations := metricValue(t, c.API, "npumesh_migrations_total")
	retries := metricValue(t, c.API, "npumesh_retries_total")
	t.Logf("chaos: %d kills, %d requests ok, %d failed, %v migrations, %v retries", kills, ok.Load(), failed.Load(), migrations, retries)
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed under chaos, e.g. %v", failed.Load(), failures[:min(3, len(failures))])
	}
	if kills == 0 || ok.Load() == 0 {
		t.Fatalf("chaos did nothing: %d kills, %d requests", kills, ok.Load())
	}
}
