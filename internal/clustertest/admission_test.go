package clustertest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/coordinator"
	"github.com/npumesh/npumesh/internal/demo"
	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/pki"
	"github.com/npumesh/npumesh/internal/tokenizer"
)

// admissionCluster runs a coordinator with cfg's limits and one node per
// backend in this process, and returns the API URL.
func admissionCluster(t *testing.T, cfg coordinator.Config, backends []*node.Builtin) string {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	lo := []net.IP{net.IPv4(127, 0, 0, 1)}
	cb, _, err := ca.EnsureBundle(filepath.Join(dir, "coord"), pki.IssueRequest{Name: "coordinator", Role: pki.RoleCoordinator, IPs: lo})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen, cfg.API, cfg.TLS, cfg.Logger, cfg.HeartbeatInterval = "127.0.0.1:0", "127.0.0.1:0", cb, log, 200*time.Millisecond
	co, err := coordinator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, apiAddr, err := co.Listen()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var cancels []context.CancelFunc
	run := func(f func(context.Context) error) {
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		wg.Add(1)
		go func() { defer wg.Done(); _ = f(ctx) }()
	}
	run(co.Run)
	for i, b := range backends {
		name := fmt.Sprintf("node-%d", i+1)
		nb, _, err := ca.EnsureBundle(filepath.Join(dir, name), pki.IssueRequest{Name: name, Role: pki.RoleNode, IPs: lo})
		if err != nil {
			t.Fatal(err)
		}
		n, err := node.New(node.Config{Listen: "127.0.0.1:0", Coordinators: []string{grpcAddr.String()}, TLS: nb, Backends: []node.Backend{b}, Logger: log, DrainTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		run(n.Run)
	}
	t.Cleanup(func() {
		for i := len(cancels) - 1; i >= 0; i-- {
			cancels[i]()
		}
		wg.Wait()
	})
	api := "http://" + apiAddr.String()
	if !WaitFor(10*time.Second, func() bool {
		resp, err := http.Get(api + "/v1/models")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), `"id"`)
	}) {
		t.Fatal("no model registered within 10s")
	}
	return api
}

func loadSynth(t *testing.T) *node.Builtin {
	t.Helper()
	b, err := node.LoadBuiltin(SynthModel(t), engine.Options{Threads: 1, ID: "synth"})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestClientDisconnectFreesSequence checks that a client hanging up
// mid-stream ends the node's engine sequence at once: its KV blocks are no
// longer in use within a fraction of a second.
func TestClientDisconnectFreesSequence(t *testing.T) {
	b := loadSynth(t)
	api := admissionCluster(t, coordinator.Config{}, []*node.Builtin{b})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, api+"/v1/completions",
		strings.NewReader(`{"model":"synth","prompt":"hello there","stream":true,"max_tokens":900,"temperature":0}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	for i := 0; i < 3; i++ { // a few chunks: the sequence is decoding
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	if b.CacheStats().InUse == 0 {
		t.Fatal("no KV blocks in use while streaming")
	}
	hungUp := time.Now()
	cancel()
	resp.Body.Close()
	if !WaitFor(2*time.Second, func() bool { return b.CacheStats().InUse == 0 }) {
		t.Fatalf("KV blocks still in use 2s after the client hung up: %+v", b.CacheStats())
	}
	t.Logf("sequence freed %s after the client hung up", time.Since(hungUp).Round(time.Millisecond))
}

// TestAdmissionLimitsAndTimeout checks the global queue limit (429 with
// Retry-After) and the request timeout (504).
func TestAdmissionLimitsAndTimeout(t *testing.T) {
	b := loadSynth(t)
	api := admissionCluster(t, coordinator.Config{MaxOutstanding: 1, RequestTimeout: 1500 * time.Millisecond}, []*node.Builtin{b})

	// One long stream holds the only admission slot.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, api+"/v1/completions",
		strings.NewReader(`{"model":"synth","prompt":"hello","stream":true,"max_tokens":900,"temperature":0}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	r2, err := http.Post(api+"/v1/completions", "application/json", strings.NewReader(`{"model":"synth","prompt":"x","max_tokens":2}`))
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusTooManyRequests || r2.Header.Get("Retry-After") == "" {
		t.Fatalf("second request: status %d, Retry-After %q; want 429 with Retry-After", r2.StatusCode, r2.Header.Get("Retry-After"))
	}
	cancel()

	if !WaitFor(3*time.Second, func() bool { return b.CacheStats().InUse == 0 }) {
		t.Fatal("the cancelled stream did not end")
	}

	// A request longer than the timeout ends with 504 (non-streamed). Its
	// own cluster has a 200 ms timeout, several times less than 1000
	// tokens take on this model (about 1 s or more), so it does not
	// depend on how fast the engine got.
	slow := admissionCluster(t, coordinator.Config{RequestTimeout: 200 * time.Millisecond}, []*node.Builtin{loadSynth(t)})
	r3, err := http.Post(slow+"/v1/completions", "application/json", strings.NewReader(`{"model":"synth","prompt":"hello","max_tokens":1000,"temperature":0}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r3.Body)
	r3.Body.Close()
	if r3.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("long request: status %d (%s), want 504", r3.StatusCode, body)
	}
}

// TestPrefixRoutingKeepsOutput checks that the coordinator's tokenization
// for prefix routing changes nothing: the tokenizer it loads from a node
// encodes like the engine's, and a completion through the API (sent to the
// node as token ids) equals the engine's own from the text.
func TestPrefixRoutingKeepsOutput(t *testing.T) {
	model, err := demo.Install(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := node.LoadBuiltin(model, engine.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	kind, data, err := b.TokenizerSpec()
	if err != nil || kind != "spm" {
		t.Fatalf("TokenizerSpec = %q, %v", kind, err)
	}
	var cfg tokenizer.SPMConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	loaded, err := tokenizer.NewSPM(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := engine.Load(model, engine.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	prompts := []string{"", "Once upon a time", "Once upon a time, there was a little girl named Lily who loved to play in the park with her big red ball every single day.", "  two  spaces\nand a newline", "héllo wörld — ünïcode ✓ 日本", "Lily said: \"stop!\" <s> </s>"}
	for _, p := range prompts {
		got, err1 := loaded.Encode(p, true)
		want, err2 := ref.Tokenizer().Encode(p, true)
		if err1 != nil || err2 != nil || !slices.Equal(got, want) {
			t.Fatalf("Encode(%q): coordinator %v (%v), engine %v (%v)", p, got, err1, want, err2)
		}
	}

	api := admissionCluster(t, coordinator.Config{RoutePolicy: "prefix"}, []*node.Builtin{b})
	for _, p := range prompts[1:] {
		var sb strings.Builder
		res, err := ref.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: 40}, func(d engine.Delta) error {
			sb.WriteString(d.Text)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ { // the second time from the prefix cache
			raw, _ := json.Marshal(map[string]any{"model": "stories260K", "prompt": p, "max_tokens": 40, "temperature": 0})
			resp, err := http.Post(api+"/v1/completions", "application/json", bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			var cr completion
			err = json.NewDecoder(resp.Body).Decode(&cr)
			resp.Body.Close()
			if err != nil || len(cr.Choices) == 0 {
				t.Fatalf("prompt %q: %v", p, err)
			}
			if cr.Choices[0].Text != sb.String() || cr.Usage.PromptTokens != res.PromptTokens {
				t.Fatalf("prompt %q through the API: %q (%d prompt tokens), engine: %q (%d)", p, cr.Choices[0].Text, cr.Usage.PromptTokens, sb.String(), res.PromptTokens)
			}
		}
	}
}

// TestHedging sends short non-streamed requests with hedging after 1 ms, so
// most are sent to both nodes: every answer is whole and right, and no
// attempt is left running.
func TestHedging(t *testing.T) {
	a, b := loadSynth(t), loadSynth(t)
	api := admissionCluster(t, coordinator.Config{HedgeAfter: time.Millisecond}, []*node.Builtin{a, b})
	body := map[string]any{"model": "synth", "prompt": "hedge me", "max_tokens": 12, "temperature": 0}
	want, _ := completeText(t, api, body)
	for i := 0; i < 10; i++ {
		if got, finish := completeText(t, api, map[string]any{"model": "synth", "prompt": "hedge me", "max_tokens": 12, "temperature": 0}); got != want || finish != "length" {
			t.Fatalf("hedged request %d: %q (%s), want %q", i, got, finish, want)
		}
	}
	if !WaitFor(2*time.Second, func() bool { return a.CacheStats().InUse == 0 && b.CacheStats().InUse == 0 }) {
		t.Fatalf("sequences still running after hedged requests: %+v %+v", a.CacheStats(), b.CacheStats())
	}
}
