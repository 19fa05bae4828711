package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/npumesh/npumesh/internal/tokenizer"
)

// Request is one completion request.
type Request struct {
	// Prompt is encoded with the model's special tokens (BOS for llama);
	// the empty prompt is just BOS.
	Prompt string
	// PromptIDs, when non-nil, is used as-is instead of Prompt: no BOS
	// is added. It must not be empty.
	PromptIDs []int32
	// MaxTokens caps the completion; 0 means up to the end of the context.
	MaxTokens int
	// Temperature 0 is greedy decoding; TopK 0 and TopP 0 or 1 disable
	// those filters.
	Temperature, TopP float32
	TopK              int
	// Seed makes sampling reproducible; nil draws a random seed.
	Seed *uint64
	// Stop ends generation at the first of these strings, which is not
	// emitted (nor anything after it).
	Stop []string
}

// Delta is a piece of the completion. Text is always whole UTF-8
// characters; it can lag IDs, because bytes of an unfinished character and
// text that may begin a stop string are held back until decided. IDs are
// the tokens sampled since the previous Delta (end-of-generation tokens
// excluded; tokens that completed a stop string included).
type Delta struct {
	IDs  []int32
	Text string
}

// Result summarizes a finished generation.
type Result struct {
	PromptTokens     int
	CompletionTokens int // tokens sampled, an end-of-generation token included
	FinishReason     string
	// CachedTokens is the number of prompt tokens whose keys and values
	// came from the prefix cache instead of being computed.
	CachedTokens int
}

// Finish reasons.
const (
	FinishStop   = "stop"   // an end-of-generation token or a stop string
	FinishLength = "length" // MaxTokens or the end of the context
)

// Errors about the request itself, which an API reports as HTTP 400.
// Generate returns them inside an *InvalidRequestError, so
// errors.Is(err, ErrInvalidRequest) matches all of them and
// errors.Is(err, ErrPromptTooLong) a specific one.
var (
	ErrInvalidRequest = errors.New("invalid request")
	ErrPromptTooLong  = errors.New("prompt longer than the context")
	ErrTokenRange     = errors.New("token id out of range")
	ErrInvalidParam   = errors.New("invalid parameter")
)

// InvalidRequestError is a request Generate refuses before it starts.
type InvalidRequestError struct {
	Param  string // the Request field at fault: "prompt", "temperature", ...
	Err    error  // ErrPromptTooLong, ErrTokenRange or ErrInvalidParam
	Detail string // what was wrong, for the user
}

func (e *InvalidRequestError) Error() string {
	return fmt.Sprintf("invalid request: %s: %v: %s", e.Param, e.Err, e.Detail)
}

// Unwrap lets errors.Is match both ErrInvalidRequest and the specific error.
func (e *InvalidRequestError) Unwrap() []error { return []error{ErrInvalidRequest, e.Err} }

func invalid(param string, err error, format string, args ...any) error {
	return &InvalidRequestError{Param: param, Err: err, Detail: fmt.Sprintf(format, args...)}
}

func (m *Model) checkRequest(req *Request) error {
	switch {
	case req.MaxTokens < 0:
		return invalid("max_tokens", ErrInvalidParam, "%d is negative", req.MaxTokens)
	case !(req.Temperature >= 0) || math.IsInf(float64(req.Temperature), 0):
		return invalid("temperature", ErrInvalidParam, "%v is not a finite number >= 0", req.Temperature)
	case !(req.TopP >= 0 && req.TopP <= 1):
		return invalid("top_p", ErrInvalidParam, "%v is not in [0, 1]", req.TopP)
	case req.TopK < 0:
		return invalid("top_k", ErrInvalidParam, "%d is negative", req.TopK)
	case req.PromptIDs != nil && len(req.PromptIDs) == 0:
		return invalid("prompt", ErrInvalidParam, "empty list of token ids (send a nil list to use the text prompt)")
	}
	for _, s := range req.Stop {
		if s == "" {
			return invalid("stop", ErrInvalidParam, "empty stop string")
		}
	}
	n := int32(m.hp.Vocab)
	for i, id := range req.PromptIDs {
		if id < 0 || id >= n {
			return invalid("prompt", ErrTokenRange, "token %d at index %d is outside the vocabulary [0, %d)", id, i, n)
		}
	}
	return nil
}

// Generate runs the prompt and streams the completion to emit, which is
// called from this goroutine. It returns when the model emits an
// end-of-generation token or a stop string ("stop"), at MaxTokens or the
// end of the context ("length"), when emit fails (its error, wrapped), or
// when ctx is done (ctx.Err(), checked between tokens). Errors about the
// request are *InvalidRequestError. A nil emit discards the text.
//
// Calls may run concurrently: the Model's scheduler decodes them together
// in one batch, and a prompt that begins with a cached prefix (whole KV
// blocks of an earlier sequence) skips computing it. When Generate
// returns, its sequence has left the batch and released its cache blocks.
func (m *Model) Generate(ctx context.Context, req Request, emit func(Delta) error) (res Result, err error) {
	if emit == nil {
		emit = func(Delta) error { return nil }
	}
	if err := m.checkRequest(&req); err != nil {
		return Result{}, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return Result{}, ErrClosed
	}
	if m.stage.Lo != 0 {
		return Result{}, fmt.Errorf("layers %v are a later pipeline stage: requests go to the first stage", m.stage)
	}
	if !m.last() && m.sched.pipe == nil {
		return Result{}, fmt.Errorf("layers %v are a first pipeline stage without a downstream", m.stage)
	}
	prompt := req.PromptIDs
	if prompt == nil {
		var err error
		if prompt, err = m.tok.Encode(req.Prompt, true); err != nil {
			return Result{}, fmt.Errorf("encode prompt: %w", err)
		}
	}
	res = Result{PromptTokens: len(prompt)}
	if len(prompt) > m.hp.Context {
		return res, invalid("prompt", ErrPromptTooLong, "%d tokens, the context holds %d; shorten the prompt", len(prompt), m.hp.Context)
	}
	limit := m.hp.Context - len(prompt)
	if req.MaxTokens > 0 {
		limit = min(limit, req.MaxTokens)
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if limit == 0 {
		res.FinishReason = FinishLength
		return res, nil
	}
	var seed uint64
	if req.Seed != nil {
		seed = *req.Seed
	} else {
		seed = rand.Uint64()
	}
	out := NewStreamer(m.tok, prompt, req.Stop, emit)

	// The scheduler drops the sequence when sctx is done: when the client
	// goes away or this call returns for any reason.
	sctx, cancel := context.WithCancel(ctx)
	q := &seq{
		ctx: sctx, tokens: slices.Clone(prompt), prompt: len(prompt), limit: limit,
		smp:    newSampler(req.Temperature, req.TopP, req.TopK, seed),
		params: SamplingParams{Temperature: req.Temperature, TopP: req.TopP, TopK: req.TopK, Seed: seed},
		notify: make(chan struct{}, 1), finished: make(chan struct{}),
	}
	select {
	case m.sched.submit <- q:
	case <-ctx.Done():
		cancel()
		return res, ctx.Err()
	}
	defer func() {
		cancel()
		<-q.finished
		q.mu.Lock()
		res.CachedTokens = q.cached
		q.mu.Unlock()
	}()
	for {
		select {
		case <-q.notify:
		case <-ctx.Done():
			return res, ctx.Err()
		}
		ids, end, serr := q.take()
		for _, id := range ids {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			res.CompletionTokens++
			if m.tok.IsEOG(id) {
				res.FinishReason = FinishStop
				return res, out.Flush()
			}
			stopped, err := out.Add(id)
			if err != nil {
				return res, err
			}
			if stopped {
				res.FinishReason = FinishStop
				return res, nil
			}
		}
		if serr != nil {
			return res, serr
		}
		if end {
			res.FinishReason = FinishLength
			return res, out.Flush()
		}
	}
}

// Streamer turns tokens into Deltas: it decodes, holds back text that may
// begin a stop string, and cuts the text at a stop string. Generate uses
// one per request; a node that resumes another node's completion replays
// the tokens already sent through one (with an emit that drops them), so it
// holds back exactly what the first node held.
type Streamer struct {
	dec   *tokenizer.Decoder
	stops []string
	emit  func(Delta) error
	held  string  // decoded text not yet emitted
	ids   []int32 // tokens not yet emitted
}

// NewStreamer returns a Streamer for tokens that continue prompt.
func NewStreamer(tok tokenizer.Tokenizer, prompt []int32, stops []string, emit func(Delta) error) *Streamer {
	return &Streamer{dec: tokenizer.NewDecoderAfter(tok, prompt), stops: stops, emit: emit}
}

// SetEmit replaces where Deltas go.
func (s *Streamer) SetEmit(emit func(Delta) error) { s.emit = emit }

// Add takes one sampled token and reports whether a stop string ended
// the completion.
func (s *Streamer) Add(id int32) (stopped bool, err error) {
	s.ids = append(s.ids, id)
	s.held += s.dec.Add(id)
	if i := s.firstStop(); i >= 0 {
		s.held = s.held[:i]
		return true, s.send(len(s.held), true)
	}
	return false, s.send(len(s.held)-s.stopPrefixLen(), false)
}

// Flush emits what is left at the end of the completion.
func (s *Streamer) Flush() error {
	s.held += s.dec.Flush()
	return s.send(len(s.held), true)
}

// send emits held[:n] with the pending ids when there is text to send, or
// at the end of the completion (final) when ids are still unsent.
func (s *Streamer) send(n int, final bool) error {
	if n == 0 && !(final && len(s.ids) > 0) {
		return nil
	}
	d := Delta{IDs: s.ids, Text: s.held[:n]}
	s.held = s.held[n:]
	s.ids = nil
	if err := s.emit(d); err != nil {
		return fmt.Errorf("emit: %w", err)
	}
	return nil
}

// firstStop returns where the earliest stop string starts in held, or -1.
// Text before held was checked when it was emitted, and the held-back
// tail covers any stop string that began there.
func (s *Streamer) firstStop() int {
	first := -1
	for _, stop := range s.stops {
		if i := strings.Index(s.held, stop); i >= 0 && (first < 0 || i < first) {
			first = i
		}
	}
	return first
}

// stopPrefixLen is the length of the longest tail of held that is a
// proper prefix of a stop string: text that must wait for the next token.
func (s *Streamer) stopPrefixLen() int {
	longest := 0
	for _, stop := range s.stops {
		for k := min(len(stop)-1, len(s.held)); k > longest; k-- {
			if strings.HasSuffix(s.held, stop[:k]) {
				longest = k
				break
			}
		}
	}
	return longest
}
