package upstream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/openai"
)

// Error is an error answer of the upstream server. It wraps
// engine.ErrInvalidRequest for what the request got wrong (4xx), which the
// node reports as InvalidArgument, and node.ErrUnavailable for what the
// server cannot do now (408, 429, 5xx, a wrong API key on the node), which the
// coordinator retries on another node.
type Error struct {
	Status  int    // HTTP status, 0 for an error event inside a stream
	Message string // the server's message
	Type    string // the OpenAI error type, when the server sent one
	Param   string
	Err     error // engine.ErrInvalidRequest or node.ErrUnavailable
}

func (e *Error) Error() string {
	var sb strings.Builder
	sb.WriteString("upstream server")
	if e.Status != 0 {
		fmt.Fprintf(&sb, " answered %d", e.Status)
	} else {
		sb.WriteString(" failed mid-stream")
	}
	if e.Param != "" {
		fmt.Fprintf(&sb, " (param %s)", e.Param)
	}
	sb.WriteString(": ")
	sb.WriteString(e.Message)
	return sb.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Generate implements node.Backend: it sends req to the server's streaming
// API and emits the text as it arrives. Deltas carry text only (the server's
// token ids are not ours). The result's token counts come from the server's
// usage report or, when it sends none, from counting the chunks that carried
// text (one token each on the servers above).
func (b *Backend) Generate(ctx context.Context, req node.Request, emit func(engine.Delta) error) (engine.Result, error) {
	if emit == nil {
		emit = func(engine.Delta) error { return nil }
	}
	if !b.Available() {
		return engine.Result{}, fmt.Errorf("%w: %s: %s", node.ErrUnavailable, b.cfg.ID, b.unavailableReason())
	}
	target, body, err := b.encode(req)
	if err != nil {
		return engine.Result{}, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return engine.Result{}, fmt.Errorf("upstream %s: %w", b.cfg.ID, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "text/event-stream")
	if b.cfg.APIKey != "" {
		hreq.Header.Set("Authorization", "Bearer "+b.cfg.APIKey)
	}
	resp, err := b.client.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return engine.Result{}, ctx.Err()
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			b.setAvailable(false, "connection refused at "+b.cfg.URL)
		}
		b.checkNow()
		return engine.Result{}, fmt.Errorf("%w: upstream %s at %s: %v", node.ErrUnavailable, b.cfg.ID, b.cfg.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return engine.Result{}, statusError(resp)
	}
	var res engine.Result
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		// A server that ignored "stream": one JSON answer.
		res, err = decodeWhole(resp.Body, emit)
	} else {
		res, err = relay(ctx, resp.Body, emit)
	}
	if err != nil && ctx.Err() != nil {
		return res, ctx.Err()
	}
	return res, err
}

// encode builds the streaming request for req: chat messages go to the chat
// API, text and token prompts to the completions API.
func (b *Backend) encode(req node.Request) (target string, body []byte, err error) {
	if req.MaxTokens < 0 {
		return "", nil, &engine.InvalidRequestError{Param: "max_tokens", Err: engine.ErrInvalidParam, Detail: fmt.Sprintf("%d is negative", req.MaxTokens)}
	}
	var (
		maxTokens *int
		topP      *float64
		topK      *int
		seed      *int64
	)
	if req.MaxTokens > 0 {
		maxTokens = &req.MaxTokens // 0: the server's own limit
	}
	temp := float64(req.Temperature)
	if req.TopP > 0 && req.TopP < 1 {
		p := float64(req.TopP)
		topP = &p
	}
	if req.TopK > 0 {
		topK = &req.TopK
	}
	if req.Seed != nil {
		s := int64(*req.Seed)
		seed = &s
	}
	usage := &openai.StreamOptions{IncludeUsage: true}
	if req.Messages != nil {
		msgs := make([]openai.ChatMessage, len(req.Messages))
		for i, m := range req.Messages {
			msgs[i] = openai.ChatMessage{Role: m.Role, Content: openai.TextContent(m.Content)}
		}
		body, err = json.Marshal(openai.ChatCompletionRequest{
			Model: b.cfg.Model, Messages: msgs, MaxTokens: maxTokens, Temperature: &temp, TopP: topP, TopK: topK,
			Seed: seed, Stop: req.Stop, Stream: true, StreamOptions: usage,
		})
		return b.chatURL, body, err
	}
	prompt := openai.TextPrompt(req.Prompt)
	if req.PromptIDs != nil {
		if !b.cfg.TokenPrompts {
			return "", nil, &engine.InvalidRequestError{Param: "prompt", Err: engine.ErrInvalidParam,
				Detail: fmt.Sprintf("model %s is served by an upstream server that takes text prompts only; send the prompt as text (or, if the server takes token ids, set token_prompts in the node's config)", b.cfg.ID)}
		}
		if len(req.PromptIDs) == 0 {
			return "", nil, &engine.InvalidRequestError{Param: "prompt", Err: engine.ErrInvalidParam, Detail: "empty list of token ids"}
		}
		prompt = openai.TokenPrompt(req.PromptIDs)
	}
	body, err = json.Marshal(openai.CompletionRequest{
		Model: b.cfg.Model, Prompt: prompt, MaxTokens: maxTokens, Temperature: &temp, TopP: topP, TopK: topK,
		Seed: seed, Stop: req.Stop, Stream: true, StreamOptions: usage,
	})
	return b.completionsURL, body, err
}

// chunk is one streamed event of either API: completions put the text in
// choices[].text, chat in choices[].delta.content.
type chunk struct {
	Choices []struct {
		Index int    `json:"index"`
		Text  string `json:"text"`
		Delta struct {
			Content *string `json:"content"`
		} `json:"delta"`
		// Message is set in a non-streamed chat answer.
		Message struct {
			Content *string `json:"content"`
		} `json:"message"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *openai.Usage `json:"usage"`
	// Error is an error event (vLLM, llama.cpp send one mid-stream).
	Error json.RawMessage `json:"error"`
}

// add folds the chunk into res and returns the text it carries.
func (c *chunk) add(res *engine.Result) string {
	var text string
	for _, ch := range c.Choices {
		if ch.Index != 0 {
			continue
		}
		text += ch.Text
		if ch.Delta.Content != nil {
			text += *ch.Delta.Content
		}
		if ch.Message.Content != nil {
			text += *ch.Message.Content
		}
		if ch.FinishReason != nil && *ch.FinishReason != "" {
			res.FinishReason = *ch.FinishReason
		}
	}
	if c.Usage != nil {
		res.PromptTokens = c.Usage.PromptTokens
		res.CompletionTokens = c.Usage.CompletionTokens
	}
	return text
}

// relay reads the server's event stream to its end and emits the text. It
// checks ctx between events, since buffered events outlive a cancellation.
func relay(ctx context.Context, body io.Reader, emit func(engine.Delta) error) (engine.Result, error) {
	var res engine.Result
	var textChunks int
	usage, done := false, false
	ev := newEventReader(body)
	for !done {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		data, err := ev.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return res, fmt.Errorf("%w: reading the upstream stream: %v", node.ErrUnavailable, err)
		}
		if strings.TrimSpace(data) == "[DONE]" {
			done = true
			break
		}
		var c chunk
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			return res, fmt.Errorf("%w: the upstream server sent an event that is not a JSON chunk (%v): %.200q", node.ErrUnavailable, err, data)
		}
		if len(c.Error) > 0 && string(c.Error) != "null" {
			return res, streamError(c.Error)
		}
		usage = usage || c.Usage != nil
		if text := c.add(&res); text != "" {
			textChunks++
			if err := emit(engine.Delta{Text: text}); err != nil {
				return res, fmt.Errorf("emit: %w", err)
			}
		}
	}
	if !done && res.FinishReason == "" {
		return res, fmt.Errorf("%w: the upstream stream ended before it finished", node.ErrUnavailable)
	}
	if !usage || res.CompletionTokens == 0 {
		res.CompletionTokens = textChunks
	}
	res.FinishReason = finishReason(res.FinishReason)
	return res, nil
}

// decodeWhole handles a non-streamed answer.
func decodeWhole(body io.Reader, emit func(engine.Delta) error) (engine.Result, error) {
	var res engine.Result
	var c chunk
	if err := json.NewDecoder(io.LimitReader(body, 64<<20)).Decode(&c); err != nil {
		return res, fmt.Errorf("%w: the upstream answer is not JSON: %v", node.ErrUnavailable, err)
	}
	if len(c.Error) > 0 && string(c.Error) != "null" {
		return res, streamError(c.Error)
	}
	if text := c.add(&res); text != "" {
		if c.Usage == nil {
			res.CompletionTokens = 1
		}
		if err := emit(engine.Delta{Text: text}); err != nil {
			return res, fmt.Errorf("emit: %w", err)
		}
	}
	res.FinishReason = finishReason(res.FinishReason)
	return res, nil
}

// finishReason maps the server's reason onto ours; "" (a server that does
// not say) is a stop.
func finishReason(r string) string {
	switch r {
	case "length", "max_tokens":
		return engine.FinishLength
	case "", "stop", "eos", "stop_sequence", "end_turn":
		return engine.FinishStop
	}
	return r
}

// errorBody reads the shapes servers use for errors: OpenAI's
// {"error": {"message", "type", "param", "code"}}, {"error": "message"}
// (OVMS, Ollama), {"detail": ...} (FastAPI servers) and {"message": ...}.
func errorBody(raw []byte) (msg, typ, param string) {
	var env struct {
		Error   json.RawMessage `json:"error"`
		Detail  json.RawMessage `json:"detail"`
		Message string          `json:"message"`
	}
	if json.Unmarshal(raw, &env) != nil {
		return strings.TrimSpace(string(raw)), "", ""
	}
	var obj struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Param   string `json:"param"`
	}
	var s string
	switch {
	case json.Unmarshal(env.Error, &obj) == nil && obj.Message != "":
		return obj.Message, obj.Type, obj.Param
	case json.Unmarshal(env.Error, &s) == nil && s != "":
		return s, "", ""
	case json.Unmarshal(env.Detail, &s) == nil && s != "":
		return s, "", ""
	case len(env.Detail) > 0:
		return string(env.Detail), "", ""
	case env.Message != "":
		return env.Message, "", ""
	}
	return strings.TrimSpace(string(raw)), "", ""
}

// statusError turns a non-200 answer into an *Error.
func statusError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	msg, typ, param := errorBody(raw)
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	e := &Error{Status: resp.StatusCode, Message: clip(msg), Type: typ, Param: param, Err: node.ErrUnavailable}
	switch s := resp.StatusCode; {
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		// The node's key, not the client's request: check the node config.
		e.Message += " (check the API key in the node's config)"
	case s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || s >= 500:
	case s >= 400:
		e.Err = engine.ErrInvalidRequest
	}
	return e
}

// streamError turns an error event inside a stream into an *Error.
func streamError(raw json.RawMessage) error {
	msg, typ, param := errorBody([]byte(`{"error":` + string(raw) + `}`))
	e := &Error{Message: clip(msg), Type: typ, Param: param, Err: node.ErrUnavailable}
	if typ == openai.TypeInvalidRequest {
		e.Err = engine.ErrInvalidRequest
	}
	return e
}

func clip(s string) string {
	if len(s) > 500 {
		return s[:500] + "..."
	}
	return s
}

// eventReader reads server-sent events and returns the data of each
// (multi-line data joined with "\n"); comments and other fields are skipped.
type eventReader struct {
	r *bufio.Reader
}

func newEventReader(r io.Reader) *eventReader { return &eventReader{r: bufio.NewReaderSize(r, 64<<10)} }

// maxEvent bounds one event, so a broken server cannot grow memory forever.
const maxEvent = 16 << 20

func (e *eventReader) next() (string, error) {
	var data strings.Builder
	have := false
	for {
		line, err := e.readLine()
		if err != nil {
			if errors.Is(err, io.EOF) && have {
				return data.String(), nil // a last event without its blank line
			}
			return "", err
		}
		if line == "" {
			if have {
				return data.String(), nil
			}
			continue
		}
		if line[0] == ':' {
			continue // a comment (keep-alive)
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		if field != "data" {
			continue // event, id, retry
		}
		if have {
			data.WriteByte('\n')
		}
		if data.Len()+len(value) > maxEvent {
			return "", fmt.Errorf("an event is longer than %d bytes", maxEvent)
		}
		data.WriteString(value)
		have = true
	}
}

// readLine returns one line without its end (\n, \r\n or \r-less).
func (e *eventReader) readLine() (string, error) {
	var buf []byte
	for {
		part, isPrefix, err := e.r.ReadLine()
		if err != nil {
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				return string(buf), nil
			}
			return "", err
		}
		buf = append(buf, part...)
		if len(buf) > maxEvent {
			return "", fmt.Errorf("a line is longer than %d bytes", maxEvent)
		}
		if !isPrefix {
			return string(buf), nil
		}
	}
}
