package clustertest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/testdata"
)

func TestMain(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

// expectedGreedy is the upstream greedy text of stories260K from BOS.
func expectedGreedy(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(testdata.Dir(t, "stories260K"), "expected_greedy_noprompt_200steps.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type completion struct {
	Choices []struct {
		Text         string `json:"text"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
}

// TestUpServesDemoModel is the newcomer's path: up, list, complete, stream.
func TestUpServesDemoModel(t *testing.T) {
	c := Start(t, Options{Nodes: 3})
	want := expectedGreedy(t)

	resp, err := http.Get(c.API + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID     string `json:"id"`
			Object string `json:"object"`
		} `json:"data"`
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if list.Object != "list" || len(list.Data) != 1 || list.Data[0].ID != "stories260K" || list.Data[0].Object != "model" {
		t.Fatalf("GET /v1/models = %+v, want one model stories260K", list)
	}

	ctx := context.Background()
	status, hdr, body, err := c.Post(ctx, "/v1/completions", map[string]any{"model": "stories260K", "prompt": "", "max_tokens": 200, "temperature": 0})
	if err != nil || status != 200 {
		t.Fatalf("completion: status %d err %v body %s", status, err, body)
	}
	var cr completion
	if err := json.Unmarshal(body, &cr); err != nil {
		t.Fatal(err)
	}
	if got := cr.Choices[0].Text; !strings.HasPrefix(got, want) {
		t.Fatalf("greedy text differs from upstream\ngot:  %q\nwant: %q", got, want)
	}
	if cr.Usage.CompletionTokens != 200 || cr.Choices[0].FinishReason != "length" {
		t.Errorf("usage %+v finish %q, want 200 completion tokens and finish length", cr.Usage, cr.Choices[0].FinishReason)
	}
	if hdr.Get("X-Npumesh-Node") == "" || hdr.Get("X-Request-Id") == "" {
		t.Errorf("missing X-Npumesh-Node or X-Request-Id header: %v", hdr)
	}

	text, usage, node := streamCompletion(t, c, map[string]any{
		"model": "stories260K", "prompt": "", "max_tokens": 200, "temperature": 0,
		"stream": true, "stream_options": map[string]any{"include_usage": true},
	})
	if text != cr.Choices[0].Text {
		t.Fatalf("streamed text differs from the non-streamed one\ngot:  %q\nwant: %q", text, cr.Choices[0].Text)
	}
	if usage == nil || usage["completion_tokens"] != 200 {
		t.Errorf("stream usage = %v, want completion_tokens 200", usage)
	}
	if node == "" {
		t.Error("stream has no X-Npumesh-Node header")
	}

	// A text prompt and a chat request work too.
	status, _, body, _ = c.Post(ctx, "/v1/chat/completions", map[string]any{"model": "stories260K", "messages": []map[string]string{{"role": "user", "content": "Once upon a time"}}, "max_tokens": 20, "temperature": 0})
	if status != 200 || !bytes.Contains(body, []byte(`"chat.completion"`)) || !bytes.Contains(body, []byte(`"assistant"`)) {
		t.Fatalf("chat: status %d body %s", status, body)
	}
}

// streamCompletion reads an SSE completion stream; it checks the framing.
func streamCompletion(t *testing.T, c *Cluster, body map[string]any) (text string, usage map[string]int, node string) {
	t.Helper()
	raw, _ := json.Marshal(body)
	resp, err := http.Post(c.API+"/v1/completions", "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: status %d content-type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	done := false
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("stream line without data: prefix: %q", line)
		}
		if data == "[DONE]" {
			done = true
			break
		}
		var ch struct {
			Object  string `json:"object"`
			Choices []struct {
				Text string `json:"text"`
			} `json:"choices"`
			Usage map[string]int `json:"usage"`
		}
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			t.Fatalf("bad chunk %q: %v", data, err)
		}
		if ch.Object != "text_completion" {
			t.Fatalf("chunk object %q, want text_completion", ch.Object)
		}
		for _, c := range ch.Choices {
			text += c.Text
		}
		if ch.Usage != nil {
			usage = ch.Usage
		}
	}
	if !done {
		t.Fatal("stream ended without data: [DONE]")
	}
	return text, usage, resp.Header.Get("X-Npumesh-Node")
}

// TestOpenAIClient drives the cluster with the official openai npm package.
func TestOpenAIClient(t *testing.T) {
	root := testdata.Root(t)
	script := filepath.Join(root, "test", "openai-client", "client.mjs")
	if _, err := exec.LookPath("node"); err != nil {
		testdata.Missing(t, "node (apt-get install nodejs, or run scripts/install-test-deps.sh)")
	}
	if _, err := os.Stat(filepath.Join(root, "test", "openai-client", "node_modules", "openai")); err != nil {
		testdata.Missing(t, "the openai npm package (cd test/openai-client && npm ci)")
	}
	c := Start(t, Options{Nodes: 2})
	cmd := exec.Command("node", script)
	cmd.Env = append(os.Environ(), "NPUMESH_API_BASE="+c.API+"/v1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node client.mjs: %v\n%s", err, stderr.String())
	}
	var got struct {
		Models     []string `json:"models"`
		Completion struct {
			Text         string `json:"text"`
			FinishReason string `json:"finish_reason"`
		} `json:"completion"`
		Chat struct {
			Role, Content, FinishReason string
		} `json:"chat"`
		Stream struct {
			Text   string         `json:"text"`
			Chunks int            `json:"chunks"`
			Usage  map[string]int `json:"usage"`
		} `json:"stream"`
		ChatStream struct {
			Text string `json:"text"`
		} `json:"chat_stream"`
		NotFound struct {
			Status int    `json:"status"`
			Type   string `json:"type"`
		} `json:"not_found"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	want := expectedGreedy(t)
	if len(got.Models) != 1 || got.Models[0] != "stories260K" {
		t.Errorf("models = %v, want [stories260K]", got.Models)
	}
	if !strings.HasPrefix(got.Completion.Text, want) {
		t.Errorf("completion text = %q, want prefix %q", got.Completion.Text, want)
	}
	if got.Stream.Text != got.Completion.Text || got.Stream.Chunks < 10 || got.Stream.Usage["completion_tokens"] != 200 {
		t.Errorf("stream: text equal %v, %d chunks, usage %v", got.Stream.Text == got.Completion.Text, got.Stream.Chunks, got.Stream.Usage)
	}
	if got.Chat.Role != "assistant" || got.Chat.Content == "" {
		t.Errorf("chat = %+v, want an assistant message", got.Chat)
	}
	if got.ChatStream.Text == "" {
		t.Error("chat stream produced no text")
	}
	if got.NotFound.Status != 404 {
		t.Errorf("unknown model: status %d, want 404", got.NotFound.Status)
	}
}

// TestLoadSpreadsAndSurvivesKill sends 30 concurrent requests to 3 nodes,
// then kills one node with SIGKILL under load.
func TestLoadSpreadsAndSurvivesKill(t *testing.T) {
	c := Start(t, Options{Nodes: 3})
	ctx := context.Background()
	req := map[string]any{"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 120, "temperature": 0.8, "seed": 7}

	burst := func(n int) (byNode map[string]int, failures []string) {
		byNode = map[string]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				status, hdr, body, err := c.Post(ctx, "/v1/completions", req)
				mu.Lock()
				defer mu.Unlock()
				if err != nil || status != 200 {
					failures = append(failures, fmt.Sprintf("status %d err %v body %s", status, err, body))
					return
				}
				byNode[hdr.Get("X-Npumesh-Node")]++
			}()
		}
		wg.Wait()
		return byNode, failures
	}

	byNode, failures := burst(30)
	if len(failures) > 0 {
		t.Fatalf("%d of 30 requests failed: %v", len(failures), failures[0])
	}
	if len(byNode) != 3 {
		t.Fatalf("30 concurrent requests were served by %v, want all 3 nodes", byNode)
	}
	nodes, err := c.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Served == 0 || uint64(byNode[n.Name]) != n.Served {
			t.Errorf("node %s: /api/v1/nodes served=%d, headers counted %d", n.Name, n.Served, byNode[n.Name])
		}
	}
	t.Logf("30 requests by node: %v", byNode)

	// Kill node-2 with SIGKILL while a load runs.
	var victim Proc
	for _, p := range c.Children() {
		if p.Role() == "node" && p.Name() == "node-2" {
			victim = p
		}
	}
	if victim.PID == 0 {
		t.Fatalf("node-2 process not found among %v", c.Children())
	}
	loadDone := make(chan struct{})
	go func() { defer close(loadDone); burst(20) }() // in-flight requests may fail: the node dies under them
	time.Sleep(20 * time.Millisecond)
	killed := time.Now()
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-loadDone

	// Requests sent afterwards all succeed.
	byNode, failures = burst(30)
	if len(failures) > 0 {
		t.Fatalf("after the kill, %d of 30 requests failed: %v", len(failures), failures[0])
	}
	if byNode["node-2"] > 0 {
		t.Errorf("dead node-2 served %d requests after the kill", byNode["node-2"])
	}
	// The dead node leaves the cluster view within 10 s.
	for {
		nodes, _ := c.Nodes()
		gone := true
		for _, n := range nodes {
			if n.Name == "node-2" {
				gone = false
			}
		}
		if gone {
			t.Logf("node-2 left /api/v1/nodes %s after SIGKILL", time.Since(killed).Round(time.Millisecond))
			break
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("node-2 still listed 10s after SIGKILL: %+v", nodes)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSIGTERMLeavesNoProcess stops up with SIGTERM after one node already
// crashed and checks that no process of the cluster is left.
func TestSIGTERMLeavesNoProcess(t *testing.T) {
	c := Start(t, Options{Nodes: 3})
	kids := c.Children()
	if len(kids) != 4 {
		t.Fatalf("want 4 children (coordinator + 3 nodes), got %d: %v", len(kids), kids)
	}
	// One child crashes first.
	for _, p := range kids {
		if p.Name() == "node-1" {
			syscall.Kill(p.PID, syscall.SIGKILL)
		}
	}
	c.WaitNodes(2, 10*time.Second)
	start := time.Now()
	if err := c.Stop(); err != nil {
		t.Fatalf("up exited with %v after SIGTERM, want success", err)
	}
	t.Logf("up stopped %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	for _, p := range kids {
		if Alive(p.PID) {
			t.Errorf("child %d (%v) still running after up exited", p.PID, p.Args)
		}
	}
}

// TestUpReusesCertificates runs up twice on one data dir.
func TestUpReusesCertificates(t *testing.T) {
	dir := t.TempDir()
	c := Start(t, Options{Nodes: 1, DataDir: dir})
	ca1, _ := os.ReadFile(filepath.Join(dir, "ca", "ca.crt"))
	node1, _ := os.ReadFile(filepath.Join(dir, "certs", "node-1", "tls.crt"))
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	c = Start(t, Options{Nodes: 1, DataDir: dir})
	ca2, _ := os.ReadFile(filepath.Join(dir, "ca", "ca.crt"))
	node2, _ := os.ReadFile(filepath.Join(dir, "certs", "node-1", "tls.crt"))
	if len(ca1) == 0 || !bytes.Equal(ca1, ca2) || !bytes.Equal(node1, node2) {
		t.Fatal("second up on the same data dir did not reuse the CA and certificates")
	}
}

// TestUpStopsWithItsParent kills the wrapper that started up (as happens to
// `go run`, which does not pass SIGTERM on): up and its children stop.
func TestUpStopsWithItsParent(t *testing.T) {
	dir := t.TempDir()
	api := FreeAddr(t)
	sh := exec.Command("sh", "-c", fmt.Sprintf("'%s' up --nodes 2 --api %s --data-dir '%s'; true", Binary(t), api, dir))
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer sh.Process.Kill()
	ours := func() []int {
		var pids []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if err == nil && bytes.Contains(cmdline, []byte(dir)) && !bytes.HasPrefix(cmdline, []byte("sh\x00")) {
				var pid int
				fmt.Sscan(e.Name(), &pid)
				if Alive(pid) {
					pids = append(pids, pid)
				}
			}
		}
		return pids
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(ours()) < 4 { // up, coordinator, 2 nodes
		if time.Now().After(deadline) {
			t.Fatalf("cluster did not start: processes %v", ours())
		}
		time.Sleep(100 * time.Millisecond)
	}
	procs := ours()
	if err := sh.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	sh.Wait()
	deadline = time.Now().Add(20 * time.Second)
	for len(ours()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("processes %v of the cluster (of %v) still run 20s after their parent was killed", ours(), procs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
