// Package bench is the serving load generator: it sends OpenAI-style
// streamed completions to a running cluster under a named workload at a
// fixed concurrency, and measures time to first token, inter-token
// latency, output tokens/s, errors, and the prefix-cache hit rate the
// nodes report (usage.prompt_tokens_details.cached_tokens). It talks HTTP
// to the public API only; it knows nothing of the cluster's insides.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Workload names.
const (
	// SharedPrefix: long system prompts (Options.Prefixes of them) shared by all requests, each
	// followed by a short unique question; short answers. Prefill of the
	// shared part dominates unless a node has it cached.
	SharedPrefix = "shared-prefix"
	// Mixed: half shared-prefix requests, a third short unique prompts with
	// longer answers, the rest long unique prompts.
	Mixed = "mixed"
	// LongContext: each worker holds a conversation whose prompt grows by
	// every answer and a new turn (sent with X-Session-Id), until it nears
	// the context, then starts over.
	LongContext = "long-context"
)

// Workloads lists the workload names.
var Workloads = []string{SharedPrefix, Mixed, LongContext}

// Options configure Run.
type Options struct {
	// API is the cluster's base URL (http://host:port).
	API    string
	APIKey string
	// Model defaults to the first model the API lists.
	Model       string
	Workload    string
	Concurrency int
	Duration    time.Duration
	// PrefixWords is the length of shared prompts in words (default 150).
	PrefixWords int
	// Prefixes is the number of distinct shared prompts (default 16). More
	// than a node's KV cache holds makes routing by prefix matter.
	Prefixes int
	// MaxTokens is the completion length (default 16; mixed varies it).
	MaxTokens int
	// Seed makes the prompts reproducible (default 1).
	Seed uint64
	// Warmup runs the workload this long before the measured Duration; its
	// requests fill the caches but count in no result (they stay in
	// Result.Log, marked, because they shaped the caches).
	Warmup time.Duration
	Client *http.Client
}

// Percentiles of a latency, in milliseconds.
type Percentiles struct {
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
}

// Result of one run.
type Result struct {
	Workload     string         `json:"workload"`
	Prefixes     int            `json:"prefixes"`
	Model        string         `json:"model"`
	Concurrency  int            `json:"concurrency"`
	Seconds      float64        `json:"seconds"`
	Requests     int            `json:"requests"`
	Errors       int            `json:"errors"`
	ErrorSamples []string       `json:"error_samples,omitempty"`
	TTFT         Percentiles    `json:"ttft"`
	TTFTMean     float64        `json:"ttft_mean_ms"`
	ITL          Percentiles    `json:"itl"`
	OutputTokens int            `json:"output_tokens"`
	OutputTokS   float64        `json:"output_tok_s"`
	PromptTokens int            `json:"prompt_tokens"`
	CachedTokens int            `json:"cached_tokens"`
	CacheHitRate float64        `json:"cache_hit_rate"`
	Nodes        map[string]int `json:"requests_per_node"`
	// Oracle is filled by Oracle when the caller can tokenize (bench
	// policies does): the hit rates a router that knows every node's cache
	// could reach on the same requests.
	Oracle *OracleResult `json:"oracle,omitempty"`
	// Log is every request sent, warmup included, in the order sent.
	Log []Sent `json:"-"`
}

// Sent is one request as sent and answered, for replays (Oracle).
type Sent struct {
	Start  time.Time
	Prompt string
	// Prefix is the shared prompt it starts with, -1 for none.
	Prefix int
	Warmup bool
	OK     bool
	Node   string
	// PromptTokens and CachedTokens are the node's usage numbers;
	// OutputTokens the completion's length.
	PromptTokens, CachedTokens, OutputTokens int
}

// Run drives the workload until o.Duration passes (requests running then
// finish and count) or ctx ends.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Client == nil {
		o.Client = &http.Client{}
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.Duration <= 0 {
		o.Duration = 30 * time.Second
	}
	if o.PrefixWords <= 0 {
		o.PrefixWords = 150
	}
	if o.MaxTokens <= 0 {
		o.MaxTokens = 16
	}
	if o.Prefixes <= 0 {
		o.Prefixes = 16
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Workload == "" {
		o.Workload = SharedPrefix
	}
	if !slices.Contains(Workloads, o.Workload) {
		return nil, fmt.Errorf("unknown workload %q (known: %s)", o.Workload, strings.Join(Workloads, ", "))
	}
	o.API = strings.TrimRight(o.API, "/")
	if o.Model == "" {
		m, err := firstModel(ctx, o)
		if err != nil {
			return nil, err
		}
		o.Model = m
	}
	gen := newPrompts(o)
	var (
		mu    sync.Mutex
		obs   []sample
		wg    sync.WaitGroup
		start = time.Now().Add(o.Warmup)
		stop  = start.Add(o.Duration)
	)
	for w := 0; w < o.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			conv := gen.conversation(w)
			for i := 0; time.Now().Before(stop) && ctx.Err() == nil; i++ {
				spec := gen.next(w, i, conv)
				s := one(ctx, o, spec)
				if spec.session != "" && s.err == "" {
					conv.answered(s.text)
				}
				mu.Lock()
				obs = append(obs, s)
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	// Requests started in the warmup count in no result; the measured span
	// starts when the warmup ends, and the requests running then finish
	// (and count) after it: a closed loop keeps Concurrency in flight.
	return summarize(o, obs, start, time.Since(start)), nil
}

// sample is one request's measurements.
type sample struct {
	start        time.Time
	promptText   string
	prefix       int
	node         string
	err          string
	ttft         time.Duration
	gaps         []time.Duration
	text         string
	output       int
	prompt       int
	cached       int
	hasFirstTime bool
}

// spec is one request to send.
type spec struct {
	prefix    int // the shared prompt it starts with, -1 for none
	prompt    string
	maxTokens int
	session   string
}

func one(ctx context.Context, o Options, sp spec) (s sample) {
	s.start, s.promptText, s.prefix = time.Now(), sp.prompt, sp.prefix
	body, _ := json.Marshal(map[string]any{
		"model": o.Model, "prompt": sp.prompt, "max_tokens": sp.maxTokens, "temperature": 0,
		"stream": true, "stream_options": map[string]any{"include_usage": true},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.API+"/v1/completions", bytes.NewReader(body))
	if err != nil {
		s.err = err.Error()
		return s
	}
	req.Header.Set("Content-Type", "application/json")
	if o.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+o.APIKey)
	}
	if sp.session != "" {
		req.Header.Set("X-Session-Id", sp.session)
	}
	t0 := time.Now()
	resp, err := o.Client.Do(req)
	if err != nil {
		s.err = err.Error()
		return s
	}
	defer resp.Body.Close()
	s.node = resp.Header.Get("X-Npumesh-Node")
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		s.err = fmt.Sprintf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
		return s
	}
	var text strings.Builder
	last := t0
	done := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			break
		}
		var ch chunk
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			s.err = "bad chunk: " + err.Error()
			return s
		}
		if ch.Error != nil {
			s.err = "stream error: " + ch.Error.Message
			return s
		}
		if ch.Usage != nil {
			s.output = ch.Usage.CompletionTokens
			s.prompt = ch.Usage.PromptTokens
			if ch.Usage.Details != nil {
				s.cached = ch.Usage.Details.CachedTokens
			}
		}
		if len(ch.Choices) > 0 && ch.Choices[0].Text != "" {
			now := time.Now()
			if !s.hasFirstTime {
				s.hasFirstTime = true
				s.ttft = now.Sub(t0)
			} else {
				s.gaps = append(s.gaps, now.Sub(last))
			}
			last = now
			text.WriteString(ch.Choices[0].Text)
		}
	}
	if err := sc.Err(); err != nil {
		s.err = err.Error()
	} else if !done {
		s.err = "stream ended without [DONE]"
	}
	s.text = text.String()
	return s
}

type chunk struct {
	Choices []struct {
		Text string `json:"text"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		Details          *struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	} `json:"usage"`
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

func summarize(o Options, obs []sample, measured time.Time, elapsed time.Duration) *Result {
	r := &Result{Workload: o.Workload, Prefixes: o.Prefixes, Model: o.Model, Concurrency: o.Concurrency, Seconds: elapsed.Seconds(), Nodes: map[string]int{}}
	slices.SortStableFunc(obs, func(a, b sample) int { return a.start.Compare(b.start) })
	var ttft, itl []time.Duration
	var ttftSum time.Duration
	for _, s := range obs {
		warm := s.start.Before(measured)
		r.Log = append(r.Log, Sent{Start: s.start, Prompt: s.promptText, Prefix: s.prefix, Warmup: warm, OK: s.err == "",
			Node: s.node, PromptTokens: s.prompt, CachedTokens: s.cached, OutputTokens: s.output})
		if warm {
			continue
		}
		r.Requests++
		if s.err != "" {
			r.Errors++
			if len(r.ErrorSamples) < 5 {
				r.ErrorSamples = append(r.ErrorSamples, s.err)
			}
			continue
		}
		if s.node != "" {
			r.Nodes[s.node]++
		}
		if s.hasFirstTime {
			ttft = append(ttft, s.ttft)
			ttftSum += s.ttft
		}
		itl = append(itl, s.gaps...)
		r.OutputTokens += s.output
		r.PromptTokens += s.prompt
		r.CachedTokens += s.cached
	}
	r.TTFT, r.ITL = percentiles(ttft), percentiles(itl)
	if len(ttft) > 0 {
		r.TTFTMean = float64((ttftSum / time.Duration(len(ttft))).Microseconds()) / 1e3
	}
	if elapsed > 0 {
		r.OutputTokS = float64(r.OutputTokens) / elapsed.Seconds()
	}
	if r.PromptTokens > 0 {
		r.CacheHitRate = float64(r.CachedTokens) / float64(r.PromptTokens)
	}
	return r
}

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	slices.Sort(d)
	at := func(q float64) float64 {
		i := min(int(q*float64(len(d))), len(d)-1)
		return float64(d[i].Microseconds()) / 1e3
	}
	return Percentiles{P50: at(0.50), P90: at(0.90), P99: at(0.99)}
}

func firstModel(ctx context.Context, o Options) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.API+"/v1/models", nil)
	if err != nil {
		return "", err
	}
	if o.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+o.APIKey)
	}
	resp, err := o.Client.Do(req)
	if err != nil {
		return "", fmt.Errorf("list models at %s: %w", o.API, err)
	}
	defer resp.Body.Close()
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return "", fmt.Errorf("list models at %s: %w", o.API, err)
	}
	if len(list.Data) == 0 {
		return "", errors.New("the API lists no model; is a node registered?")
	}
	return list.Data[0].ID, nil
}

// prompts makes the workload's prompts from a fixed word list and seed.
type prompts struct {
	o        Options
	prefixes []string
}

var words = strings.Fields(`the a little girl boy dog cat sun tree house garden river friend happy sad big small red blue
green went saw played found wanted said looked ran jumped smiled day night morning park school ball book toy flower bird
fish water cake apple door window road car train boat sky cloud rain snow wind star moon forest hill lake bread milk`)

func sentence(rng *rand.Rand, n int) string {
	var sb strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(words[rng.IntN(len(words))])
	}
	return sb.String()
}

func newPrompts(o Options) *prompts {
	rng := rand.New(rand.NewPCG(o.Seed, 7))
	p := &prompts{o: o}
	for i := 0; i < o.Prefixes; i++ {
		p.prefixes = append(p.prefixes, fmt.Sprintf("System %d. ", i)+sentence(rng, o.PrefixWords)+".")
	}
	return p
}

// conv is one worker's conversation (long-context).
type conv struct {
	id      string
	history string
	turns   int
}

func (c *conv) answered(text string) { c.history += text }

func (p *prompts) conversation(w int) *conv { return &conv{id: fmt.Sprintf("bench-%d", w)} }

func (p *prompts) next(w, i int, c *conv) spec {
	rng := rand.New(rand.NewPCG(p.o.Seed+uint64(w)*1_000_003, uint64(i)))
	question := fmt.Sprintf(" Question %d.%d: ", w, i) + sentence(rng, 8) + "?"
	switch p.o.Workload {
	case Mixed:
		switch k := rng.IntN(10); {
		case k < 5:
			k := rng.IntN(len(p.prefixes))
			return spec{prefix: k, prompt: p.prefixes[k] + question, maxTokens: p.o.MaxTokens}
		case k < 8:
			return spec{prefix: -1, prompt: sentence(rng, 12), maxTokens: 4 * p.o.MaxTokens}
		default:
			return spec{prefix: -1, prompt: sentence(rng, p.o.PrefixWords), maxTokens: p.o.MaxTokens}
		}
	case LongContext:
		if c.turns == 0 || len(strings.Fields(c.history)) > 3*p.o.PrefixWords {
			c.history, c.turns = p.prefixes[w%len(p.prefixes)], 0
			c.id = fmt.Sprintf("bench-%d-%d", w, i)
		}
		c.turns++
		c.history += question
		return spec{prefix: w % len(p.prefixes), prompt: c.history, maxTokens: p.o.MaxTokens, session: c.id}
	}
	k := rng.IntN(len(p.prefixes))
	return spec{prefix: k, prompt: p.prefixes[k] + question, maxTokens: p.o.MaxTokens}
}
