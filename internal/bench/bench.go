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
	"math"
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
	// Result.Log, marked, because they shaped the caches). The warmup is
	// always a closed loop of Concurrency clients (it fills the caches as
	// fast as the cluster serves); with Rate > 0 its requests all finish
	// before the measured open loop starts.
	Warmup time.Duration
	// Rate > 0 makes the measured load an open loop: requests arrive as a
	// Poisson process of Rate requests per second (seeded by Seed), whether
	// or not earlier ones are done, for Duration. 0 is the closed loop of
	// Concurrency clients. Open-loop TTFT is measured from a request's
	// scheduled arrival, so time spent waiting for MaxInFlight counts.
	Rate float64
	// MaxInFlight bounds the open loop's requests in flight (default 64): an
	// arrival that finds it full waits, and so do those behind it.
	MaxInFlight int
	// Drain bounds how long requests still in flight after Duration may take
	// (default 30s); those still running then are cancelled and counted as
	// errors. It applies to both loops.
	Drain  time.Duration
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
	Workload    string `json:"workload"`
	Prefixes    int    `json:"prefixes"`
	Model       string `json:"model"`
	Concurrency int    `json:"concurrency"`
	// Rate is the open loop's arrival rate (requests/s), 0 for a closed
	// loop; MaxInFlight its bound; Delayed the measured arrivals that found
	// the bound full and waited; Unsent the arrivals due before the end
	// that were never sent because the bound stayed full until then.
	Rate         float64        `json:"rate,omitempty"`
	MaxInFlight  int            `json:"max_in_flight,omitempty"`
	Delayed      int            `json:"delayed,omitempty"`
	Unsent       int            `json:"unsent,omitempty"`
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
		// Keep a connection per request in flight, not the default 2.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = max(o.Concurrency, o.MaxInFlight, 64)
		o.Client = &http.Client{Transport: tr}
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
	if o.Rate < 0 || math.IsNaN(o.Rate) || math.IsInf(o.Rate, 0) {
		return nil, fmt.Errorf("bad rate %v", o.Rate)
	}
	if o.Rate > 0 && o.Workload == LongContext {
		return nil, errors.New("the long-context workload is a closed loop (each client's next turn needs its last answer); use --rate 0")
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 64
	}
	if o.Drain <= 0 {
		o.Drain = 30 * time.Second
	}
	gen := newPrompts(o)
	if o.Rate <= 0 {
		start := time.Now().Add(o.Warmup)
		obs := closedLoop(ctx, o, gen, start.Add(o.Duration))
		// Requests started in the warmup count in no result; the measured
		// span starts when the warmup ends, and the requests running then
		// finish (and count) after it: a closed loop keeps Concurrency in
		// flight.
		return summarize(o, obs, start, time.Since(start)), nil
	}
	var obs []sample
	if o.Warmup > 0 {
		obs = closedLoop(ctx, o, gen, time.Now().Add(o.Warmup))
	}
	start := time.Now()
	open, unsent := openLoop(ctx, o, gen, start, NewPoisson(o.Seed, o.Rate))
	r := summarize(o, append(obs, open...), start, time.Since(start))
	r.Unsent = unsent
	return r, nil
}

// closedLoop runs o.Concurrency clients, each sending its next request when
// its last one ends, until stop; requests running at stop finish (within
// o.Drain).
func closedLoop(ctx context.Context, o Options, gen *prompts, stop time.Time) []sample {
	var (
		mu  sync.Mutex
		obs []sample
		wg  sync.WaitGroup
	)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for w := 0; w < o.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			conv := gen.conversation(w)
			for i := 0; time.Now().Before(stop) && ctx.Err() == nil; i++ {
				spec := gen.next(w, i, conv)
				s := one(rctx, o, spec, time.Time{})
				if spec.session != "" && s.err == "" {
					conv.answered(s.text)
				}
				mu.Lock()
				obs = append(obs, s)
				mu.Unlock()
			}
		}(w)
	}
	drain(&wg, cancel, time.Until(stop)+o.Drain)
	return obs
}

// openLoop sends a request at each arrival of arr (offsets from start)
// before start+o.Duration, at most o.MaxInFlight at once, and waits for
// them (within o.Drain after the end). Its prompts are those of a client
// numbered o.Concurrency, one past the warmup's, so none repeats a warmup
// prompt.
func openLoop(ctx context.Context, o Options, gen *prompts, start time.Time, arr *Poisson) (_ []sample, unsent int) {
	var (
		mu  sync.Mutex
		obs []sample
		wg  sync.WaitGroup
	)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := start.Add(o.Duration)
	slots := make(chan struct{}, o.MaxInFlight)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	w := o.Concurrency
send:
	for i := 0; ; i++ {
		at := start.Add(arr.Next())
		if !at.Before(stop) {
			break
		}
		if d := time.Until(at); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				break send
			}
		}
		delayed := false
		select {
		case slots <- struct{}{}:
		default:
			delayed = true
			timer.Reset(time.Until(stop))
			select {
			case slots <- struct{}{}:
				timer.Stop() // (Go 1.23 timers: no stale tick after Stop)
			case <-timer.C:
				// The bound stayed full to the end: this arrival and the
				// rest are never sent.
				unsent = 1
				for start.Add(arr.Next()).Before(stop) {
					unsent++
				}
				break send
			case <-ctx.Done():
				break send
			}
		}
		spec := gen.next(w, i, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := one(rctx, o, spec, at)
			<-slots
			s.delayed = delayed
			mu.Lock()
			obs = append(obs, s)
			mu.Unlock()
		}()
	}
	drain(&wg, cancel, time.Until(stop)+o.Drain)
	return obs, unsent
}

// drain waits for wg at most d, then cancels what still runs and waits for
// it to end (a cancelled request returns at once).
func drain(wg *sync.WaitGroup, cancel context.CancelFunc, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(max(d, 0))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		cancel()
		<-done
	}
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
	delayed      bool
}

// spec is one request to send.
type spec struct {
	prefix    int // the shared prompt it starts with, -1 for none
	prompt    string
	maxTokens int
	session   string
}

// one sends sp and reads its stream. at is when it was due (an open loop's
// arrival; zero: now): its start and the origin of its TTFT.
func one(ctx context.Context, o Options, sp spec, at time.Time) (s sample) {
	s.start, s.promptText, s.prefix = time.Now(), sp.prompt, sp.prefix
	if !at.IsZero() {
		s.start = at
	}
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
	if !at.IsZero() {
		t0 = at
	}
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
	last := time.Now()
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
	if o.Rate > 0 {
		r.Rate, r.MaxInFlight = o.Rate, o.MaxInFlight
	}
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
		if s.delayed {
			r.Delayed++
		}
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
