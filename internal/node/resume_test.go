package node

import (
	"context"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/demo"
	"github.com/npumesh/npumesh/internal/engine"
)

// TestResumeContinuesExactly cuts a greedy completion after every delta and
// resumes it from the ids delivered so far: the text of the first part and
// the resumed part together must be the undisturbed text, with the same
// finish reason, also when a stop string ends it.
func TestResumeContinuesExactly(t *testing.T) {
	path, err := demo.Install(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadBuiltin(path, engine.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, tc := range []struct {
		name string
		req  Request
	}{
		{"text", Request{Request: engine.Request{Prompt: "Once upon a time", MaxTokens: 60}}},
		{"stop", Request{Request: engine.Request{Prompt: "Once upon a time", MaxTokens: 200, Stop: []string{"park.", "Lily was"}}}},
		{"chat", Request{Request: engine.Request{MaxTokens: 40}, Messages: []ChatMessage{{Role: "user", Content: "Tell me a story"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var deltas []engine.Delta
			full, err := b.Generate(context.Background(), tc.req, func(d engine.Delta) error {
				deltas = append(deltas, engine.Delta{IDs: append([]int32(nil), d.IDs...), Text: d.Text})
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var want strings.Builder
			for _, d := range deltas {
				want.WriteString(d.Text)
			}
			if tc.req.Stop != nil && full.FinishReason != engine.FinishStop {
				t.Fatalf("the reference run finished %q, want it ended by a stop string: %q", full.FinishReason, want.String())
			}
			for cut := 1; cut < len(deltas); cut += max(1, len(deltas)/12) {
				var sent strings.Builder
				var ids []int32
				for _, d := range deltas[:cut] {
					sent.WriteString(d.Text)
					ids = append(ids, d.IDs...)
				}
				req := tc.req
				req.Resume = ids
				if req.MaxTokens > 0 {
					req.MaxTokens -= len(ids)
				}
				res, err := b.Generate(context.Background(), req, func(d engine.Delta) error {
					sent.WriteString(d.Text)
					return nil
				})
				if err != nil {
					t.Fatalf("cut %d: %v", cut, err)
				}
				if sent.String() != want.String() || res.FinishReason != full.FinishReason {
					t.Fatalf("cut after %d deltas (%d ids): got %q (%s)\nwant %q (%s)", cut, len(ids), sent.String(), res.FinishReason, want.String(), full.FinishReason)
				}
				if res.CompletionTokens != full.CompletionTokens || res.PromptTokens != full.PromptTokens {
					t.Fatalf("cut %d: usage %d+%d, want %d+%d", cut, res.PromptTokens, res.CompletionTokens, full.PromptTokens, full.CompletionTokens)
				}
			}
		})
	}
}
