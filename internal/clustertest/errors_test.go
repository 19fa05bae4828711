package clustertest

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestBadRequests checks that bad input gets an OpenAI-style error with the
// right status, and that the cluster keeps serving afterwards (no panic).
func TestBadRequests(t *testing.T) {
	c := Start(t, Options{Nodes: 1, APIKey: "sk-test-key"})
	ctx := context.Background()
	huge := `{"model":"stories260K","prompt":"` + strings.Repeat("a", 5<<20) + `"}`
	cases := []struct {
		name   string
		path   string
		body   string
		auth   string // "" = the right key
		status int
		param  string
	}{
		{"malformed json", "/v1/completions", `{"model": "stories260K", "prompt": `, "", 400, ""},
		{"not an object", "/v1/completions", `[1,2,3]`, "", 400, ""},
		{"missing model", "/v1/completions", `{"prompt": "hi"}`, "", 400, "model"},
		{"unknown model", "/v1/completions", `{"model": "gpt-9", "prompt": "hi"}`, "", 404, "model"},
		{"negative max_tokens", "/v1/completions", `{"model": "stories260K", "prompt": "hi", "max_tokens": -5}`, "", 400, "max_tokens"},
		{"huge max_tokens", "/v1/completions", `{"model": "stories260K", "prompt": "hi", "max_tokens": 100000000}`, "", 400, "max_tokens"},
		{"max_tokens over context", "/v1/completions", `{"model": "stories260K", "prompt": "hi", "max_tokens": 5000}`, "", 400, "max_tokens"},
		{"max_tokens wrong type", "/v1/completions", `{"model": "stories260K", "prompt": "hi", "max_tokens": "ten"}`, "", 400, "max_tokens"},
		{"negative temperature", "/v1/completions", `{"model": "stories260K", "prompt": "hi", "temperature": -1}`, "", 400, "temperature"},
		{"top_p zero", "/v1/completions", `{"model": "stories260K", "prompt": "hi", "top_p": 0}`, "", 400, "top_p"},
		{"top_p above one", "/v1/completions", `{"model": "stories260K", "prompt": "hi", "top_p": 1.5}`, "", 400, "top_p"},
		{"chat without messages", "/v1/chat/completions", `{"model": "stories260K"}`, "", 400, "messages"},
		{"chat bad role", "/v1/chat/completions", `{"model": "stories260K", "messages": [{"role": "wizard", "content": "x"}]}`, "", 400, ""},
		{"wrong api key", "/v1/completions", `{"model": "stories260K", "prompt": "hi"}`, "Bearer sk-wrong", 401, ""},
		{"no api key", "/v1/completions", `{"model": "stories260K", "prompt": "hi"}`, "none", 401, ""},
		{"body over the limit", "/v1/completions", huge, "", 413, ""},
		{"token id out of range", "/v1/completions", `{"model": "stories260K", "prompt": [1, 99999], "max_tokens": 4}`, "", 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.API+tc.path, strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			switch tc.auth {
			case "":
				req.Header.Set("Authorization", "Bearer sk-test-key")
			case "none":
			default:
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var env struct {
				Error *struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
				} `json:"error"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
				t.Fatalf("status %d, body is not JSON: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (error %+v)", resp.StatusCode, tc.status, env.Error)
			}
			if env.Error == nil || env.Error.Message == "" || env.Error.Type == "" {
				t.Fatalf("want an OpenAI error object with message and type, got %+v", env.Error)
			}
			if tc.param != "" && (env.Error.Param == nil || *env.Error.Param != tc.param) {
				t.Errorf("param = %v, want %q", env.Error.Param, tc.param)
			}
		})
	}
	// Still serving.
	status, _, body, err := c.Post(ctx, "/v1/completions", map[string]any{"model": "stories260K", "prompt": "Lily", "max_tokens": 8})
	if err != nil || status != 200 {
		t.Fatalf("after bad requests: status %d err %v body %s", status, err, body)
	}
}
