package upstream

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/node"
)

// The streams below are the shapes real servers send (recorded from
// llama.cpp, vLLM, OVMS and Ollama documentation and npumesh); the
// integration tests run a real server, these pin the edge cases one server
// alone does not produce.
func TestRelay(t *testing.T) {
	cases := []struct {
		name, stream string
		text         string
		res          engine.Result
		err          error
	}{
		{
			name: "completions with usage chunk",
			stream: "data: {\"choices\":[{\"text\":\"Once\",\"index\":0,\"finish_reason\":null}]}\n\n" +
				"data: {\"choices\":[{\"text\":\" upon\",\"index\":0,\"finish_reason\":\"length\"}]}\n\n" +
				"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n" +
				"data: [DONE]\n\n",
			text: "Once upon", res: engine.Result{PromptTokens: 3, CompletionTokens: 2, FinishReason: "length"},
		},
		{
			name: "chat without usage, CRLF, comments, usage null",
			stream: ": ping\r\n\r\n" +
				"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\r\n\r\n" +
				"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\r\n\r\n" +
				"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"}}]}\r\n\r\n" +
				"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\r\n\r\n" +
				"data: [DONE]\r\n\r\n",
			text: "Hi there", res: engine.Result{CompletionTokens: 2, FinishReason: "stop"},
		},
		{
			name:   "data without space, event field, last event without blank line",
			stream: "event: message\ndata:{\"choices\":[{\"text\":\"x\",\"finish_reason\":\"eos\"}]}\n\ndata: [DONE]",
			text:   "x", res: engine.Result{CompletionTokens: 1, FinishReason: "stop"},
		},
		{
			name:   "ends with a finish reason but no [DONE]",
			stream: "data: {\"choices\":[{\"text\":\"a\",\"finish_reason\":\"length\"}]}\n\n",
			text:   "a", res: engine.Result{CompletionTokens: 1, FinishReason: "length"},
		},
		{
			name:   "cut off mid-stream",
			stream: "data: {\"choices\":[{\"text\":\"a\"}]}\n\n",
			text:   "a", err: node.ErrUnavailable,
		},
		{
			name:   "error event, invalid request",
			stream: "data: {\"error\":{\"message\":\"bad prompt\",\"type\":\"invalid_request_error\",\"code\":400}}\n\n",
			err:    engine.ErrInvalidRequest,
		},
		{
			name:   "error event, server",
			stream: "data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"error\":\"out of memory\"}\n\n",
			text:   "a", err: node.ErrUnavailable,
		},
		{
			name:   "not JSON",
			stream: "data: <html>\n\n",
			err:    node.ErrUnavailable,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var sb strings.Builder
			res, err := relay(context.Background(), strings.NewReader(tc.stream), func(d engine.Delta) error { sb.WriteString(d.Text); return nil })
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
			} else if err != nil {
				t.Fatal(err)
			} else if res != tc.res {
				t.Errorf("result %+v, want %+v", res, tc.res)
			}
			if sb.String() != tc.text {
				t.Errorf("text %q, want %q", sb.String(), tc.text)
			}
		})
	}
}

func TestErrorBody(t *testing.T) {
	cases := []struct{ body, msg, typ, param string }{
		{`{"error":{"message":"The model \"x\" does not exist","type":"invalid_request_error","param":"model","code":"model_not_found"}}`, `The model "x" does not exist`, "invalid_request_error", "model"},
		{`{"error":"Model with requested name is not found"}`, "Model with requested name is not found", "", ""},
		{`{"detail":"Not Found"}`, "Not Found", "", ""},
		{`{"detail":[{"loc":["body","messages"],"msg":"field required"}]}`, `[{"loc":["body","messages"],"msg":"field required"}]`, "", ""},
		{`{"message":"busy"}`, "busy", "", ""},
		{"plain text\n", "plain text", "", ""},
	}
	for _, tc := range cases {
		msg, typ, param := errorBody([]byte(tc.body))
		if msg != tc.msg || typ != tc.typ || param != tc.param {
			t.Errorf("errorBody(%s) = %q, %q, %q; want %q, %q, %q", tc.body, msg, typ, param, tc.msg, tc.typ, tc.param)
		}
	}
}

func TestFinishReason(t *testing.T) {
	for in, want := range map[string]string{"": "stop", "stop": "stop", "eos": "stop", "length": "length", "max_tokens": "length", "content_filter": "content_filter"} {
		if got := finishReason(in); got != want {
			t.Errorf("finishReason(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzEventReader checks that any byte stream ends the reader with events
// or an error, never a panic or a loop.
func FuzzEventReader(f *testing.F) {
	f.Add("data: {\"choices\":[]}\n\ndata: [DONE]\n\n")
	f.Add(": c\r\ndata:a\r\ndata:b\r\n\r\nevent: x\n")
	f.Add("data")
	f.Fuzz(func(t *testing.T, s string) {
		ev := newEventReader(strings.NewReader(s))
		for i := 0; ; i++ {
			if i > len(s)+1 {
				t.Fatalf("more events than bytes in %q", s)
			}
			if _, err := ev.next(); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
		}
	})
}

// FuzzRelay checks that relay never panics on a hostile stream.
func FuzzRelay(f *testing.F) {
	f.Add("data: {\"choices\":[{\"text\":\"a\",\"finish_reason\":\"stop\"}],\"usage\":{\"completion_tokens\":1}}\n\ndata: [DONE]\n\n")
	f.Add("data: {\"error\":{\"message\":\"x\",\"type\":\"invalid_request_error\"}}\n\n")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = relay(context.Background(), strings.NewReader(s), func(engine.Delta) error { return nil })
		_, _, _ = errorBody([]byte(s))
	})
}
