package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAPI streams three text chunks and a usage chunk per request, half of
// the prompt cached, and fails every fifth request with a 429.
func fakeAPI(t *testing.T) (*httptest.Server, *sync.Map) {
	var n sync.Mutex
	count := 0
	sessions := &sync.Map{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			io.WriteString(w, `{"data":[{"id":"m"}]}`)
			return
		}
		var req struct {
			Model, Prompt string
			MaxTokens     int `json:"max_tokens"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		if s := r.Header.Get("X-Session-Id"); s != "" {
			sessions.Store(s, req.Prompt)
		}
		n.Lock()
		count++
		c := count
		n.Unlock()
		if c%5 == 0 {
			w.Header().Set("Retry-After", "1")
			http.Error(w, `{"error":{"message":"busy"}}`, http.StatusTooManyRequests)
			return
		}
		w.Header().Set("X-Npumesh-Node", fmt.Sprintf("node-%d", c%2))
		fl := w.(http.Flusher)
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "data: {\"choices\":[{\"text\":\"t%d \"}]}\n\n", i)
			fl.Flush()
			time.Sleep(time.Millisecond)
		}
		fmt.Fprintf(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":50}}}\n\n")
		fmt.Fprintf(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(srv.Close)
	return srv, sessions
}

func TestRunMeasures(t *testing.T) {
	srv, _ := fakeAPI(t)
	for _, wl := range Workloads {
		t.Run(wl, func(t *testing.T) {
			r, err := Run(context.Background(), Options{API: srv.URL, Workload: wl, Concurrency: 3, Duration: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			if r.Model != "m" || r.Requests == 0 {
				t.Fatalf("model %q, %d requests", r.Model, r.Requests)
			}
			if r.Errors == 0 || r.Errors > r.Requests/4+1 {
				t.Errorf("errors = %d of %d, want about a fifth", r.Errors, r.Requests)
			}
			ok := r.Requests - r.Errors
			if r.OutputTokens != 3*ok || r.CacheHitRate != 0.5 {
				t.Errorf("output %d (want %d), hit rate %v (want 0.5)", r.OutputTokens, 3*ok, r.CacheHitRate)
			}
			if r.TTFT.P50 <= 0 || r.ITL.P50 < 0.5 || r.TTFT.P99 < r.TTFT.P50 {
				t.Errorf("TTFT %+v, ITL %+v", r.TTFT, r.ITL)
			}
			if len(r.Nodes) != 2 {
				t.Errorf("per node %v, want two nodes", r.Nodes)
			}
			if r.TTFTMean < r.TTFT.P50/2 || r.TTFTMean > r.TTFT.P99 || len(r.Log) != r.Requests {
				t.Errorf("TTFT mean %v (p50 %v), log of %d for %d requests", r.TTFTMean, r.TTFT.P50, len(r.Log), r.Requests)
			}
		})
	}
}

func TestLongContextGrows(t *testing.T) {
	srv, sessions := fakeAPI(t)
	if _, err := Run(context.Background(), Options{API: srv.URL, Workload: LongContext, Concurrency: 1, Duration: 100 * time.Millisecond, PrefixWords: 20}); err != nil {
		t.Fatal(err)
	}
	grew := false
	sessions.Range(func(_, v any) bool {
		grew = grew || strings.Count(v.(string), "Question") > 1
		return true
	})
	if !grew {
		t.Fatal("no conversation carried its history into a second turn")
	}
}

func TestUnknownWorkload(t *testing.T) {
	if _, err := Run(context.Background(), Options{API: "http://127.0.0.1:1", Workload: "nope"}); err == nil || !strings.Contains(err.Error(), "unknown workload") {
		t.Fatalf("err = %v", err)
	}
}

func TestWarmupNotCounted(t *testing.T) {
	srv, _ := fakeAPI(t)
	r, err := Run(context.Background(), Options{API: srv.URL, Concurrency: 2, Warmup: 150 * time.Millisecond, Duration: 150 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	warm := 0
	for i, s := range r.Log {
		if s.Warmup {
			warm++
		}
		if i > 0 && s.Start.Before(r.Log[i-1].Start) {
			t.Fatal("log not in the order sent")
		}
		if s.Prefix < 0 || !strings.Contains(s.Prompt, "System ") {
			t.Fatalf("log entry %+v lacks its shared prompt", s)
		}
	}
	if warm == 0 || warm+r.Requests != len(r.Log) || r.Requests == 0 {
		t.Fatalf("%d warmup + %d measured requests, log of %d", warm, r.Requests, len(r.Log))
	}
	if r.Seconds < 0.14 || r.Seconds > 1 {
		t.Fatalf("measured %.3fs, want about the duration (not the warmup)", r.Seconds)
	}
}
