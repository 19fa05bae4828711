package upstream_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/clustertest"
	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/testdata"
	"github.com/npumesh/npumesh/internal/upstream"
)

func TestMain(m *testing.M) {
	code := m.Run()
	clustertest.Cleanup()
	os.Exit(code)
}

func expectedGreedy(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata.Dir(t, "stories260K"), "expected_greedy_noprompt_200steps.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// open starts a backend and closes it at cleanup.
func open(t *testing.T, cfg upstream.Config) *upstream.Backend {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	b, err := upstream.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func waitAvailable(t *testing.T, b *upstream.Backend, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := b.WaitAvailable(ctx); err != nil {
		t.Fatal(err)
	}
}

// generate collects the deltas of one request.
func generate(b *upstream.Backend, req node.Request) (text string, deltas int, res engine.Result, err error) {
	var sb strings.Builder
	res, err = b.Generate(context.Background(), req, func(d engine.Delta) error {
		sb.WriteString(d.Text)
		deltas++
		return nil
	})
	return sb.String(), deltas, res, err
}

// TestAgainstNpumesh serves the demo model through another npumesh cluster,
// a real OpenAI-compatible server, and checks text, usage and errors.
func TestAgainstNpumesh(t *testing.T) {
	c := clustertest.Start(t, clustertest.Options{Nodes: 1})
	want := expectedGreedy(t)
	b := open(t, upstream.Config{ID: "stories-upstream", Model: "stories260K", URL: c.API + "/v1", TokenPrompts: true, HealthInterval: 200 * time.Millisecond})
	waitAvailable(t, b, 10*time.Second)
	if i := b.Info(); i.ID != "stories-upstream" || i.Backend != "upstream" {
		t.Errorf("Info() = %+v, want id stories-upstream, backend upstream", i)
	}

	greedy200 := node.Request{Request: engine.Request{Prompt: "", MaxTokens: 200}}
	t.Run("completion", func(t *testing.T) {
		text, deltas, res, err := generate(b, greedy200)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(text, want) {
			t.Fatalf("greedy text differs\ngot:  %q\nwant: %q", text, want)
		}
		if deltas < 20 {
			t.Errorf("got %d deltas, want a stream of many", deltas)
		}
		if res.CompletionTokens != 200 || res.PromptTokens != 1 || res.FinishReason != engine.FinishLength {
			t.Errorf("result %+v, want 1 prompt token, 200 completion tokens, finish length", res)
		}
	})
	t.Run("token prompt", func(t *testing.T) {
		text, _, res, err := generate(b, node.Request{Request: engine.Request{PromptIDs: []int32{1}, MaxTokens: 200}}) // BOS
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(text, want) || res.CompletionTokens != 200 {
			t.Fatalf("token prompt [BOS]: %d tokens, text %q, want the greedy text", res.CompletionTokens, text)
		}
	})
	t.Run("chat", func(t *testing.T) {
		msgs := []map[string]string{{"role": "system", "content": "Tell a story."}, {"role": "user", "content": "Once upon a time"}}
		status, _, body, err := c.Post(context.Background(), "/v1/chat/completions", map[string]any{"model": "stories260K", "messages": msgs, "max_tokens": 40, "temperature": 0})
		if err != nil || status != 200 {
			t.Fatalf("direct chat: status %d err %v body %s", status, err, body)
		}
		var direct struct {
			Choices []struct {
				Message struct{ Content string } `json:"message"`
			} `json:"choices"`
		}
		if err := json.Unmarshal(body, &direct); err != nil || len(direct.Choices) != 1 {
			t.Fatalf("direct chat body %s: %v", body, err)
		}
		text, _, res, err := generate(b, node.Request{
			Request:  engine.Request{MaxTokens: 40},
			Messages: []node.ChatMessage{{Role: "system", Content: "Tell a story."}, {Role: "user", Content: "Once upon a time"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if text == "" || text != direct.Choices[0].Message.Content {
			t.Fatalf("chat through upstream = %q, want the direct answer %q", text, direct.Choices[0].Message.Content)
		}
		if res.CompletionTokens != 40 || res.FinishReason != engine.FinishLength {
			t.Errorf("chat result %+v, want 40 tokens, finish length", res)
		}
	})
	t.Run("stop string", func(t *testing.T) {
		cut := want[:strings.Index(want, ".")]
		text, _, res, err := generate(b, node.Request{Request: engine.Request{MaxTokens: 200, Stop: []string{"."}}})
		if err != nil {
			t.Fatal(err)
		}
		if text != cut || res.FinishReason != engine.FinishStop {
			t.Fatalf("stop \".\": text %q finish %q, want %q and stop", text, res.FinishReason, cut)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		n := 0
		_, err := b.Generate(ctx, greedy200, func(engine.Delta) error {
			if n++; n == 3 {
				cancel()
			}
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled request: err %v, want context.Canceled", err)
		}
	})
	t.Run("invalid request", func(t *testing.T) {
		// The upstream refuses max_tokens beyond the model's context: 400.
		_, _, _, err := generate(b, node.Request{Request: engine.Request{MaxTokens: 1 << 20}})
		var ue *upstream.Error
		if !errors.Is(err, engine.ErrInvalidRequest) || !errors.As(err, &ue) || ue.Status != 400 {
			t.Fatalf("max_tokens 1<<20: err %v, want an *upstream.Error 400 wrapping engine.ErrInvalidRequest", err)
		}
	})
	t.Run("unlisted model stays unavailable", func(t *testing.T) {
		nb := open(t, upstream.Config{ID: "ghost", URL: c.API + "/v1", HealthInterval: 100 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		if err := nb.WaitAvailable(ctx); err == nil || !strings.Contains(err.Error(), `does not list model "ghost"`) {
			t.Fatalf("WaitAvailable = %v, want a timeout saying the server does not list the model", err)
		}
		if _, _, _, err := generate(nb, greedy200); !errors.Is(err, node.ErrUnavailable) {
			t.Fatalf("err %v, want node.ErrUnavailable", err)
		}
	})
	t.Run("unknown model", func(t *testing.T) {
		// A health path that does not list models lets the request reach
		// the server, which answers 404.
		nb := open(t, upstream.Config{ID: "ghost", URL: c.API + "/v1", HealthPath: "/healthz", HealthInterval: 200 * time.Millisecond})
		waitAvailable(t, nb, 10*time.Second)
		_, _, _, err := generate(nb, greedy200)
		var ue *upstream.Error
		if !errors.Is(err, engine.ErrInvalidRequest) || !errors.As(err, &ue) || ue.Status != 404 || !strings.Contains(ue.Message, "ghost") {
			t.Fatalf("unknown model: err %v, want an *upstream.Error 404 naming the model, wrapping engine.ErrInvalidRequest", err)
		}
	})
	t.Run("token prompt on a text-only server", func(t *testing.T) {
		nb := open(t, upstream.Config{ID: "stories260K", URL: c.API + "/v1"})
		waitAvailable(t, nb, 10*time.Second)
		_, _, _, err := generate(nb, node.Request{Request: engine.Request{PromptIDs: []int32{1}}})
		if !errors.Is(err, engine.ErrInvalidRequest) || !strings.Contains(err.Error(), "token_prompts") {
			t.Fatalf("err %v, want an invalid request that names token_prompts", err)
		}
	})

	// The server goes away: the model turns unavailable, requests fail
	// as unavailable.
	t.Run("server down", func(t *testing.T) {
		changed := make(chan struct{}, 1)
		b.OnAvailabilityChange(func() {
			select {
			case changed <- struct{}{}:
			default:
			}
		})
		if err := c.Stop(); err != nil {
			t.Fatal(err)
		}
		deadline := time.After(5 * time.Second)
		for b.Available() {
			select {
			case <-changed:
			case <-deadline:
				t.Fatal("still available 5s after the upstream server stopped")
			}
		}
		_, _, _, err := generate(b, greedy200)
		if !errors.Is(err, node.ErrUnavailable) {
			t.Fatalf("err %v, want node.ErrUnavailable", err)
		}
	})
}

// TestNothingListening checks a server that is not there at all.
func TestNothingListening(t *testing.T) {
	addr := clustertest.FreeAddr(t)
	b := open(t, upstream.Config{ID: "m", URL: "http://" + addr + "/v1", HealthInterval: 100 * time.Millisecond})
	if b.Available() {
		t.Fatal("available with nothing listening")
	}
	_, _, _, err := generate(b, node.Request{Request: engine.Request{Prompt: "hi"}})
	if !errors.Is(err, node.ErrUnavailable) || errors.Is(err, engine.ErrInvalidRequest) {
		t.Fatalf("err %v, want node.ErrUnavailable", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := b.WaitAvailable(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitAvailable: %v, want a deadline error", err)
	}
	if b.Available() {
		t.Fatal("available with nothing listening")
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		cfg  upstream.Config
		want string
	}{
		{upstream.Config{URL: "http://127.0.0.1:1/v1"}, "model id"},
		{upstream.Config{ID: "m"}, "URL is required"},
		{upstream.Config{ID: "m", URL: "127.0.0.1:8000/v3"}, "http(s)"},
		{upstream.Config{ID: "m", URL: "ftp://h/v1"}, "http(s)"},
		{upstream.Config{ID: "m", URL: "http://h/v1?x=1"}, "query"},
		{upstream.Config{ID: "m", URL: "http://h/v1", HealthPath: "health"}, "must start with /"},
		{upstream.Config{ID: "m", URL: "http://h/v1", Command: []string{""}}, "program"},
		{upstream.Config{ID: "m", URL: "http://h/v1", Env: []string{"NOEQUALS"}}, "KEY=VALUE"},
	}
	for _, tc := range cases {
		_, err := upstream.New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error mentioning %q", tc.cfg, err, tc.want)
		}
	}
}
