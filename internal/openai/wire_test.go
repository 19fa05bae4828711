package openai

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func marshal(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %T: %v", v, err)
	}
	return string(b)
}

// TestShapes pins the exact JSON of every response shape against what
// OpenAI sends (field names, nulls, empty arrays).
func TestShapes(t *testing.T) {
	const id, model, created = "chatcmpl-1", "qwen", int64(1700000000)
	tests := []struct {
		name string
		v    any
		want string
	}{
		{"model list", NewModelList([]string{"qwen", "llama"}, created),
			`{"object":"list","data":[{"id":"qwen","object":"model","created":1700000000,"owned_by":"npumesh"},{"id":"llama","object":"model","created":1700000000,"owned_by":"npumesh"}]}`},
		{"empty model list", NewModelList(nil, 0), `{"object":"list","data":[]}`},
		{"usage", NewUsage(3, 4, 0), `{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}`},
		{"usage with cached tokens", NewUsage(3, 4, 2),
			`{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":2}}`},
		{"completion response", NewCompletionResponse("cmpl-1", model, created, "Hi", FinishLength, NewUsage(1, 2, 0)),
			`{"id":"cmpl-1","object":"text_completion","created":1700000000,"model":"qwen","choices":[{"text":"Hi","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`},
		{"completion chunk", NewCompletionChunk("cmpl-1", model, created, "Hi", ""),
			`{"id":"cmpl-1","object":"text_completion","created":1700000000,"model":"qwen","choices":[{"text":"Hi","index":0,"logprobs":null,"finish_reason":null}]}`},
		{"last completion chunk", NewCompletionChunk("cmpl-1", model, created, "", FinishStop),
			`{"id":"cmpl-1","object":"text_completion","created":1700000000,"model":"qwen","choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}]}`},
		{"completion usage chunk", NewCompletionUsageChunk("cmpl-1", model, created, NewUsage(1, 2, 0)),
			`{"id":"cmpl-1","object":"text_completion","created":1700000000,"model":"qwen","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`},
		{"chat response", NewChatResponse(id, model, created, "Hello!", FinishStop, NewUsage(9, 3, 0)),
			`{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"qwen","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}`},
		{"first chat chunk carries the role", NewChatRoleChunk(id, model, created),
			`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"qwen","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`},
		{"chat content chunk", NewChatChunk(id, model, created, "Hel", ""),
			`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"qwen","choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}]}`},
		{"last chat chunk has an empty delta", NewChatChunk(id, model, created, "", FinishLength),
			`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"qwen","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"length"}]}`},
		{"last chat chunk with text", NewChatChunk(id, model, created, "!", FinishStop),
			`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"qwen","choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":"stop"}]}`},
		{"chat usage chunk", NewChatUsageChunk(id, model, created, NewUsage(9, 3, 0)),
			`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"qwen","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}`},
		{"error envelope without param and code", ErrInternal("boom").Envelope(),
			`{"error":{"message":"boom","type":"server_error","param":null,"code":null}}`},
		{"error envelope with param and code", ErrModelNotFound("x").Envelope(),
			`{"error":{"message":"The model \"x\" does not exist or no node serves it; GET /v1/models lists the models you can use.","type":"invalid_request_error","param":"model","code":"model_not_found"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := marshal(t, tt.v); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// TestRequestRoundTrip checks that request types a client builds encode to
// bodies the decoders accept, with the same meaning.
func TestRequestRoundTrip(t *testing.T) {
	chat := ChatCompletionRequest{
		Model: "m",
		Messages: []ChatMessage{
			{Role: RoleSystem, Content: TextContent("be brief")},
			{Role: RoleUser, Content: &MessageContent{Parts: []ContentPart{{Type: "text", Text: "hi"}}}},
		},
		MaxCompletionTokens: ptr(5),
		Stream:              true,
		StreamOptions:       &StreamOptions{IncludeUsage: true},
		Stop:                StopList{"x"},
	}
	body := marshal(t, chat)
	want := `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":5,"stream":true,"stream_options":{"include_usage":true},"stop":["x"]}`
	if body != want {
		t.Errorf("got  %s\nwant %s", body, want)
	}
	r, e := DecodeChat(post(body), Limits{})
	if e != nil {
		t.Fatal(e)
	}
	if r.MaxTokens != 5 || !r.IncludeUsage || len(r.Messages) != 2 || r.Messages[1].Content != "hi" {
		t.Errorf("got %+v", r)
	}

	for _, p := range []*Prompt{TextPrompt("hello"), TokenPrompt([]int32{1, 2})} {
		body := marshal(t, CompletionRequest{Model: "m", Prompt: p})
		r, e := DecodeCompletion(post(body), Limits{})
		if e != nil {
			t.Fatalf("%s: %v", body, e)
		}
		if r.Prompt != strings.Join(p.Texts, "") || !slices.Equal(r.PromptIDs, firstIDs(p)) {
			t.Errorf("%s: got %+v", body, r)
		}
	}
}

func firstIDs(p *Prompt) []int32 {
	if len(p.IDs) == 0 {
		return nil
	}
	return p.IDs[0]
}

func TestIDs(t *testing.T) {
	for _, tt := range []struct {
		got  string
		want *regexp.Regexp
	}{
		{NewCompletionID(), regexp.MustCompile(`^cmpl-[A-Z2-7]{26}$`)},
		{NewChatID(), regexp.MustCompile(`^chatcmpl-[A-Z2-7]{26}$`)},
	} {
		if !tt.want.MatchString(tt.got) {
			t.Errorf("got id %q, want it to match %s", tt.got, tt.want)
		}
	}
	if a, b := NewChatID(), NewChatID(); a == b {
		t.Errorf("got the same id twice: %s", a)
	}
}

func TestWriteError(t *testing.T) {
	tests := []struct {
		name       string
		err        *Error
		status     int
		code       string
		headers    map[string]string
		errType    string
		wantFields bool
	}{
		{"model not found", ErrModelNotFound("x"), 404, "model_not_found", nil, TypeInvalidRequest, true},
		{"unauthorized", ErrUnauthorized(), 401, "invalid_api_key", map[string]string{"WWW-Authenticate": `Bearer realm="npumesh"`}, TypeInvalidRequest, true},
		{"overloaded", ErrOverloaded(1500 * time.Millisecond), 429, "overloaded", map[string]string{"Retry-After": "2"}, TypeRateLimit, true},
		{"overloaded tiny wait", ErrOverloaded(time.Millisecond), 429, "overloaded", map[string]string{"Retry-After": "1"}, TypeRateLimit, true},
		{"unavailable", ErrUnavailable("no nodes are connected"), 503, "unavailable", nil, TypeServer, true},
		{"internal", ErrInternal("oops"), 500, "", nil, TypeServer, true},
		{"not found", ErrNotFound("Unknown endpoint POST /v1/x."), 404, "", nil, TypeInvalidRequest, true},
		{"timeout", ErrTimeout("the node did not answer in 30s"), 504, "timeout", nil, TypeServer, true},
		{"client closed", ErrClientClosed(), 499, "client_closed", nil, TypeInvalidRequest, true},
		{"context length", ErrContextLength("messages", 5000, 4096), 400, "context_length_exceeded", nil, TypeInvalidRequest, true},
		{"bad status becomes 500", &Error{Status: 200, Message: "x", Type: TypeServer}, 500, "", nil, TypeServer, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			if err := WriteError(rec, tt.err); err != nil {
				t.Fatal(err)
			}
			if rec.Code != tt.status {
				t.Errorf("got status %d, want %d", rec.Code, tt.status)
			}
			if got := rec.Header().Get("Content-Type"); got != "application/json" {
				t.Errorf("got Content-Type %q, want application/json", got)
			}
			for k, v := range tt.headers {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("got %s %q, want %q", k, got, v)
				}
			}
			var env ErrorResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			gotCode := ""
			if env.Error.Code != nil {
				gotCode = *env.Error.Code
			}
			if gotCode != tt.code || env.Error.Type != tt.errType || env.Error.Message == "" {
				t.Errorf("got %+v code %q, want type %q code %q and a message", env.Error, gotCode, tt.errType, tt.code)
			}
		})
	}
}

func TestWriteJSON(t *testing.T) {
	rec := httptest.NewRecorder()
	if err := WriteJSON(rec, http.StatusOK, NewModelList(nil, 0)); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.Body.String(), `{"object":"list","data":[]}`+"\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}

	rec = httptest.NewRecorder()
	if err := WriteJSON(rec, http.StatusOK, map[string]any{"bad": make(chan int)}); err == nil {
		t.Error("got no error for an unencodable value, want one")
	}
	if rec.Code != http.StatusInternalServerError {
		t.Errorf("got status %d, want 500", rec.Code)
	}
	if !strings.Contains(rec.Body.String(), `"type":"server_error"`) {
		t.Errorf("got body %q, want an error envelope", rec.Body)
	}
}

func TestErrorString(t *testing.T) {
	var err error = ErrInvalidRequest("top_p", "bad")
	if got, want := err.Error(), "400 invalid_request_error (param top_p): bad"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
