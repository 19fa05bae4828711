package clustertest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/synth"
)

// SynthModel writes a random-weight llama model big enough that decoding
// takes a few milliseconds per token, so a test can act mid-stream.
func SynthModel(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "synth.gguf")
	o := synth.Options{Dim: 256, Layers: 4, Heads: 8, KVHeads: 4, FF: 768, Vocab: 2000, Context: 1024, Type: gguf.TypeF32, Seed: 3}
	if err := synth.WriteFile(path, o, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestNodeDrainsOnSIGTERM stops a node while it streams: the stream
// completes, the node exits afterwards, and new work goes elsewhere.
func TestNodeDrainsOnSIGTERM(t *testing.T) {
	c := Start(t, Options{Nodes: 2, Args: []string{"--model", SynthModel(t)}})
	body, _ := json.Marshal(map[string]any{"model": c.Model, "prompt": "hello", "max_tokens": 400, "temperature": 0, "stream": true, "stream_options": map[string]any{"include_usage": true}})
	resp, err := http.Post(c.API+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	serving := resp.Header.Get("X-Npumesh-Node")
	var victim Proc
	for _, p := range c.Children() {
		if p.Name() == serving {
			victim = p
		}
	}
	if victim.PID == 0 {
		t.Fatalf("process of %q not found", serving)
	}
	sc := bufio.NewScanner(resp.Body)
	var chunks, completion int
	var finish string
	signalled := false
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			break
		}
		if strings.Contains(data, `"error"`) {
			t.Fatalf("stream carried an error after SIGTERM: %s", data)
		}
		var ch struct {
			Choices []struct {
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		json.Unmarshal([]byte(data), &ch)
		chunks++
		if len(ch.Choices) > 0 && ch.Choices[0].FinishReason != nil {
			finish = *ch.Choices[0].FinishReason
		}
		if ch.Usage != nil {
			completion = ch.Usage.CompletionTokens
		}
		if !signalled {
			// The first token is out: the request is in flight. Stop the node.
			if err := syscall.Kill(victim.PID, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			signalled = true
		}
	}
	if finish == "" || completion == 0 {
		t.Fatalf("stream did not complete after SIGTERM: %d chunks, finish %q, completion tokens %d", chunks, finish, completion)
	}
	t.Logf("the draining node finished its stream: %d chunks, %d tokens, finish %q", chunks, completion, finish)
	// While or after it drains, new requests go to the other node.
	for i := 0; i < 3; i++ {
		status, hdr, b, err := c.Post(t.Context(), "/v1/completions", map[string]any{"model": c.Model, "prompt": "x", "max_tokens": 4})
		if err != nil || status != 200 {
			t.Fatalf("request during drain: status %d err %v body %s", status, err, b)
		}
		if hdr.Get("X-Npumesh-Node") == serving {
			t.Fatalf("draining node %s got new work", serving)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for Alive(victim.PID) {
		if time.Now().After(deadline) {
			t.Fatalf("node %s still running 15s after SIGTERM", serving)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.WaitNodes(1, 10*time.Second)
}
