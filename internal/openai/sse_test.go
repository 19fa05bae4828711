package openai

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestSSEStream(t *testing.T) {
	rec := httptest.NewRecorder()
	s, err := NewSSEWriter(rec)
	if err != nil {
		t.Fatal(err)
	}
	if s.Started() || rec.Flushed {
		t.Fatal("got a started stream before the first event, want nothing sent yet")
	}
	const id, model, created = "chatcmpl-1", "m", int64(1)
	events := []any{
		NewChatRoleChunk(id, model, created),
		NewChatChunk(id, model, created, "Hi", ""),
		NewChatChunk(id, model, created, "", FinishStop),
		NewChatUsageChunk(id, model, created, NewUsage(2, 1, 0)),
	}
	for _, ev := range events {
		if err := s.Send(ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Done(); err != nil {
		t.Fatal(err)
	}
	if !s.Started() || !rec.Flushed {
		t.Errorf("got started=%v flushed=%v, want both", s.Started(), rec.Flushed)
	}
	if rec.Code != http.StatusOK {
		t.Errorf("got status %d, want 200", rec.Code)
	}
	for k, want := range map[string]string{
		"Content-Type":  "text/event-stream",
		"Cache-Control": "no-cache",
		"Connection":    "keep-alive",
	} {
		if got := rec.Header().Get(k); got != want {
			t.Errorf("got %s %q, want %q", k, got, want)
		}
	}
	want := `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}

data: [DONE]

`
	if got := rec.Body.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// TestSSEParsesAsClientsDo reads the stream the way SSE clients do: lines
// starting with "data: ", events ending at a blank line.
func TestSSEParsesAsClientsDo(t *testing.T) {
	rec := httptest.NewRecorder()
	s, err := NewSSEWriter(rec)
	if err != nil {
		t.Fatal(err)
	}
	texts := []string{"line one\nline two", "tab\there", "quote \" and \\ and \u2028"}
	for _, txt := range texts {
		if err := s.Send(NewCompletionChunk("cmpl-1", "m", 1, txt, "")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Ping(); err != nil {
		t.Fatal(err)
	}
	if err := s.Done(); err != nil {
		t.Fatal(err)
	}

	var got []string
	done := false
	sc := bufio.NewScanner(strings.NewReader(rec.Body.String()))
	for sc.Scan() {
		line := sc.Text()
		data, ok := strings.CutPrefix(line, "data: ")
		switch {
		case line == "" || strings.HasPrefix(line, ":"):
			continue
		case !ok:
			t.Fatalf("got line %q, want data lines, comments and blanks only", line)
		case data == "[DONE]":
			done = true
			continue
		}
		var c CompletionChunk
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatalf("event %q: %v", data, err)
		}
		got = append(got, c.Choices[0].Text)
	}
	if !done {
		t.Error("got no [DONE], want it last")
	}
	if strings.Join(got, "|") != strings.Join(texts, "|") {
		t.Errorf("got %q, want %q", got, texts)
	}
}

func TestSSESendError(t *testing.T) {
	rec := httptest.NewRecorder()
	s, err := NewSSEWriter(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(NewChatRoleChunk("c", "m", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.SendError(ErrUnavailable("the node went away; retry the request")); err != nil {
		t.Fatal(err)
	}
	events := strings.Split(strings.TrimSuffix(rec.Body.String(), "\n\n"), "\n\n")
	got := events[len(events)-1]
	want := `data: {"error":{"message":"the node went away; retry the request","type":"server_error","param":null,"code":"unavailable"}}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// plainWriter is a ResponseWriter that cannot flush.
type plainWriter struct{ http.ResponseWriter }

// wrapped is middleware that hides the Flusher but offers Unwrap.
type wrapped struct{ http.ResponseWriter }

func (w wrapped) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func TestSSEWriterNeedsFlusher(t *testing.T) {
	var h http.Header = make(http.Header)
	if _, err := NewSSEWriter(plainWriter{headerOnly{h}}); !errors.Is(err, ErrNoFlush) {
		t.Errorf("got %v, want ErrNoFlush", err)
	}
	rec := httptest.NewRecorder()
	s, err := NewSSEWriter(wrapped{rec})
	if err != nil {
		t.Fatalf("got %v for a wrapped flusher, want none", err)
	}
	if err := s.Done(); err != nil {
		t.Fatal(err)
	}
	if !rec.Flushed {
		t.Error("got no flush through the wrapper, want one")
	}
}

// headerOnly implements only http.ResponseWriter.
type headerOnly struct{ h http.Header }

func (w headerOnly) Header() http.Header         { return w.h }
func (w headerOnly) Write(b []byte) (int, error) { return len(b), nil }
func (w headerOnly) WriteHeader(int)             {}

// TestSSEOverHTTP streams through a real server on port 0 and checks that
// each event reaches the client before the handler finishes.
func TestSSEOverHTTP(t *testing.T) {
	next := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := NewSSEWriter(w)
		if err != nil {
			t.Error(err)
			return
		}
		for i := 0; i < 3; i++ {
			if err := s.Send(NewCompletionChunk("cmpl-1", "m", 1, "x", "")); err != nil {
				t.Error(err)
				return
			}
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
		s.Done()
	}))
	defer srv.Close()

	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := 0; i < 3; i++ {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if !strings.HasPrefix(line, "data: {") {
			t.Fatalf("event %d: got %q", i, line)
		}
		br.ReadString('\n') // blank line ending the event
		next <- struct{}{}  // the handler waits, so the event was flushed
	}
	rest, _ := br.ReadString(0)
	if rest != "data: [DONE]\n\n" {
		t.Errorf("got %q, want the [DONE] event", rest)
	}
}
