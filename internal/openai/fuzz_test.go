package openai

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
)

var fuzzSeeds = []string{
	``, `null`, `{}`, `[]`, `"x"`, `{"model":`,
	`{"model":"m","prompt":"Hello","max_tokens":5,"temperature":0.7,"top_p":0.9,"stop":["\n"],"stream":true,"stream_options":{"include_usage":true},"seed":1}`,
	`{"model":"m","prompt":[1,2,3]}`, `{"model":"m","prompt":[[1,2]]}`, `{"model":"m","prompt":["a","b"]}`,
	`{"model":"m","prompt":[-1]}`, `{"model":"m","prompt":[[],[1]]}`, `{"model":"m","prompt":[1.5,"x",null]}`,
	`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":3}`,
	`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url"}]}]}`,
	`{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[]}],"tools":[],"logprobs":false}`,
	`{"model":"m","messages":[null,5,"x",{"role":{}}]}`,
	`{"model":"m","messages":[{"role":"user","content":[null,{"type":5}]}],"stop":[1]}`,
	`{"model":"m","prompt":"x","max_tokens":1e400,"n":2,"top_k":-5,"logprobs":1}`,
}

// checkFuzz decodes data and checks the invariants every outcome must keep.
func checkFuzz(t *testing.T, data []byte, decode func(*http.Request, Limits) (*Request, *Error)) {
	limits := Limits{MaxBodyBytes: 1 << 16, MaxTokensCap: 1000}
	r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(data))
	req, e := decode(r, limits)
	if e != nil {
		if req != nil {
			t.Fatalf("got both a request and error %v", e)
		}
		if e.Status < 400 || e.Status > 499 || e.Message == "" || e.Type != TypeInvalidRequest {
			t.Fatalf("got error %+v, want a 4xx invalid_request_error with a message", e)
		}
		return
	}
	switch {
	case req.Model == "":
		t.Fatal("accepted a request without a model")
	case req.MaxTokens < 0 || req.MaxTokens > limits.MaxTokensCap:
		t.Fatalf("accepted max_tokens %d", req.MaxTokens)
	case len(req.Stop) > DefaultMaxStop:
		t.Fatalf("accepted %d stop strings", len(req.Stop))
	case req.Temperature < 0 || req.Temperature > 2:
		t.Fatalf("accepted temperature %g", req.Temperature)
	case req.TopP <= 0 || req.TopP > 1:
		t.Fatalf("accepted top_p %g", req.TopP)
	case req.TopK < 0:
		t.Fatalf("accepted top_k %d", req.TopK)
	case req.IncludeUsage && !req.Stream:
		t.Fatal("IncludeUsage set without Stream")
	}
	for _, s := range req.Stop {
		if s == "" {
			t.Fatal("accepted an empty stop string")
		}
	}
	for _, id := range req.PromptIDs {
		if id < 0 {
			t.Fatalf("accepted token id %d", id)
		}
	}
	if req.Chat && len(req.Messages) == 0 {
		t.Fatal("accepted a chat without messages")
	}
	if !req.Chat && req.MaxTokens == 0 {
		t.Fatal("completion without a max_tokens default")
	}
}

func FuzzDecodeCompletion(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkFuzz(t, data, DecodeCompletion) })
}

func FuzzDecodeChat(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkFuzz(t, data, DecodeChat) })
}
