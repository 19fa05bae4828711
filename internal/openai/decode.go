package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
)

// Defaults of Limits and of the request fields a client may leave out.
const (
	DefaultMaxBodyBytes = 4 << 20
	DefaultMaxTokensCap = 32768
	DefaultMaxStop      = 4
	// DefaultCompletionMaxTokens is OpenAI's max_tokens default for the
	// legacy completions endpoint.
	DefaultCompletionMaxTokens = 16
)

// Limits bound what a request may ask for. A zero field takes its default.
type Limits struct {
	MaxBodyBytes int64 // request body size; DefaultMaxBodyBytes
	MaxTokensCap int   // largest max_tokens accepted; DefaultMaxTokensCap
	MaxStop      int   // most stop strings; DefaultMaxStop
}

func (l Limits) withDefaults() Limits {
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if l.MaxTokensCap <= 0 {
		l.MaxTokensCap = DefaultMaxTokensCap
	}
	if l.MaxStop <= 0 {
		l.MaxStop = DefaultMaxStop
	}
	return l
}

// Request is a validated completion or chat request, free of wire details.
// The coordinator turns it into a node request.
type Request struct {
	Model string
	Chat  bool // from /v1/chat/completions: Messages is set, Prompt and PromptIDs are not

	// Prompt is the completion prompt as text; PromptIDs is set instead when
	// the client sent token ids (which are used exactly as given).
	Prompt    string
	PromptIDs []int32
	Messages  []Message

	// MaxTokens is the most tokens to generate. 0 means until the end of the
	// model's context (the chat default): the coordinator bounds it by the
	// context and by its own cap.
	MaxTokens int

	Temperature       float32 // 0 is greedy; default 1
	TopP              float32 // in (0, 1]; default 1
	TopK              int     // 0 is no limit
	MinP              float32 // 0 is off
	RepetitionPenalty float32 // 1 is off (the default)
	FrequencyPenalty  float32 // in [-2, 2]
	PresencePenalty   float32 // in [-2, 2]
	Seed              *uint64 // set for reproducible sampling

	// Stop holds the stop strings, none of them empty.
	Stop []string

	Stream bool
	// IncludeUsage asks for a usage chunk before [DONE]; only set when Stream is.
	IncludeUsage bool

	User string
}

// Message is one chat message with its content flattened to text.
type Message struct {
	Role    string
	Content string
	Name    string
}

// DecodeCompletion reads and validates the body of POST /v1/completions.
// The Content-Type header is not checked: a body that parses is accepted.
func DecodeCompletion(r *http.Request, limits Limits) (*Request, *Error) {
	limits = limits.withDefaults()
	body, e := readBody(r, limits.MaxBodyBytes)
	if e != nil {
		return nil, e
	}
	var in CompletionRequest
	if e := unmarshal(body, &in, ""); e != nil {
		return nil, e
	}
	req := &Request{Model: in.Model, Stream: in.Stream, User: in.User}
	if e := checkModel(in.Model); e != nil {
		return nil, e
	}

	switch {
	case in.Prompt == nil:
		return nil, ErrInvalidRequest("prompt", "'prompt' is required: send the text to complete as a string, or token ids as an array of integers.")
	case len(in.Prompt.IDs) > 1 || len(in.Prompt.Texts) > 1:
		return nil, ErrInvalidRequest("prompt", "Batched prompts are not supported: send one prompt per request.")
	case len(in.Prompt.IDs) == 1:
		if len(in.Prompt.IDs[0]) == 0 {
			return nil, ErrInvalidRequest("prompt", "'prompt' is an empty array of token ids; send at least one token.")
		}
		req.PromptIDs = in.Prompt.IDs[0]
	case len(in.Prompt.Texts) == 1:
		req.Prompt = in.Prompt.Texts[0]
	default:
		return nil, ErrInvalidRequest("prompt", "'prompt' is empty; send a string or an array of token ids.")
	}

	req.MaxTokens = min(DefaultCompletionMaxTokens, limits.MaxTokensCap)
	if in.MaxTokens != nil {
		if e := checkMaxTokens("max_tokens", *in.MaxTokens, limits); e != nil {
			return nil, e
		}
		req.MaxTokens = *in.MaxTokens
	}

	switch {
	case notNull(in.Logprobs) && string(in.Logprobs) != "false":
		return nil, unsupported("logprobs", "'logprobs' is not supported yet; leave it out.")
	case in.Echo:
		return nil, unsupported("echo", "'echo' is not supported; prepend the prompt to the completion yourself.")
	case in.BestOf != nil && *in.BestOf > 1:
		return nil, unsupported("best_of", "'best_of' greater than 1 is not supported; send several requests instead.")
	case in.Suffix != "":
		return nil, unsupported("suffix", "'suffix' is not supported; leave it out.")
	case len(in.LogitBias) > 0:
		return nil, unsupported("logit_bias", "'logit_bias' is not supported yet; leave it out.")
	}

	common := commonFields{
		temperature: in.Temperature, topP: in.TopP, n: in.N, streamOptions: in.StreamOptions,
		stop: in.Stop, seed: in.Seed, frequencyPenalty: in.FrequencyPenalty,
		presencePenalty: in.PresencePenalty,
		topK:            in.TopK, minP: in.MinP, repetitionPenalty: in.RepetitionPenalty,
	}
	if e := common.apply(req, limits); e != nil {
		return nil, e
	}
	return req, nil
}

// DecodeChat reads and validates the body of POST /v1/chat/completions.
// max_completion_tokens wins over the deprecated max_tokens when both are
// sent. Array contents are flattened by joining their text parts with "\n"
// (as vLLM does).
func DecodeChat(r *http.Request, limits Limits) (*Request, *Error) {
	limits = limits.withDefaults()
	body, e := readBody(r, limits.MaxBodyBytes)
	if e != nil {
		return nil, e
	}
	// Messages are decoded one by one first, so that errors name their
	// index (encoding/json paths have none); the second pass over them in
	// the whole body costs little next to generating.
	var raw struct {
		Messages []json.RawMessage `json:"messages"`
	}
	if e := unmarshal(body, &raw, ""); e != nil {
		return nil, e
	}
	msgs := make([]ChatMessage, len(raw.Messages))
	for i, m := range raw.Messages {
		if e := unmarshal(m, &msgs[i], fmt.Sprintf("messages[%d]", i)); e != nil {
			return nil, e
		}
	}
	var in ChatCompletionRequest
	if e := unmarshal(body, &in, ""); e != nil {
		return nil, e
	}
	req := &Request{Model: in.Model, Chat: true, Stream: in.Stream, User: in.User}
	if e := checkModel(in.Model); e != nil {
		return nil, e
	}

	if len(msgs) == 0 {
		return nil, ErrInvalidRequest("messages", "'messages' is required and must hold at least one message.")
	}
	req.Messages = make([]Message, len(msgs))
	for i, m := range msgs {
		msg, e := chatMessage(i, m)
		if e != nil {
			return nil, e
		}
		req.Messages[i] = msg
	}

	switch {
	case in.MaxCompletionTokens != nil:
		if e := checkMaxTokens("max_completion_tokens", *in.MaxCompletionTokens, limits); e != nil {
			return nil, e
		}
		req.MaxTokens = *in.MaxCompletionTokens
	case in.MaxTokens != nil:
		if e := checkMaxTokens("max_tokens", *in.MaxTokens, limits); e != nil {
			return nil, e
		}
		req.MaxTokens = *in.MaxTokens
	}

	switch {
	case notNull(in.Logprobs) && string(in.Logprobs) != "false":
		return nil, unsupported("logprobs", "'logprobs' is not supported yet; leave it out or set it to false.")
	case in.TopLogprobs != nil && *in.TopLogprobs > 0:
		return nil, unsupported("top_logprobs", "'top_logprobs' is not supported yet; leave it out.")
	case nonEmptyArray(in.Tools):
		return nil, unsupported("tools", "Tool calling is not supported yet; leave 'tools' out.")
	case nonEmptyArray(in.Functions):
		return nil, unsupported("functions", "Function calling is not supported; leave 'functions' out.")
	case in.ResponseFormat != nil && in.ResponseFormat.Type != "" && in.ResponseFormat.Type != "text":
		return nil, unsupported("response_format", fmt.Sprintf("'response_format' of type %q is not supported yet; only \"text\" is.", in.ResponseFormat.Type))
	}

	common := commonFields{
		temperature: in.Temperature, topP: in.TopP, n: in.N, streamOptions: in.StreamOptions,
		stop: in.Stop, seed: in.Seed, frequencyPenalty: in.FrequencyPenalty,
		presencePenalty: in.PresencePenalty,
		topK:            in.TopK, minP: in.MinP, repetitionPenalty: in.RepetitionPenalty,
	}
	if e := common.apply(req, limits); e != nil {
		return nil, e
	}
	return req, nil
}

// chatMessage validates message i and flattens its content.
func chatMessage(i int, m ChatMessage) (Message, *Error) {
	param := fmt.Sprintf("messages[%d]", i)
	switch m.Role {
	case RoleSystem, RoleDeveloper, RoleUser, RoleAssistant, RoleTool:
	case "":
		return Message{}, ErrInvalidRequest(param+".role", fmt.Sprintf("'%s.role' is required: one of system, developer, user, assistant, tool.", param))
	default:
		return Message{}, ErrInvalidRequest(param+".role", fmt.Sprintf("'%s.role' is %q; use one of system, developer, user, assistant, tool.", param, m.Role))
	}
	if nonEmptyArray(m.ToolCalls) {
		return Message{}, unsupported(param+".tool_calls", "Tool calls are not supported yet; send the assistant's reply as content.")
	}
	msg := Message{Role: m.Role, Name: m.Name}
	if m.Content == nil {
		if m.Role != RoleAssistant {
			return Message{}, ErrInvalidRequest(param+".content", fmt.Sprintf("'%s.content' is required for role %q.", param, m.Role))
		}
		return msg, nil
	}
	if m.Content.Parts == nil {
		msg.Content = m.Content.Text
		return msg, nil
	}
	texts := make([]string, 0, len(m.Content.Parts))
	for j, p := range m.Content.Parts {
		pparam := fmt.Sprintf("%s.content[%d]", param, j)
		switch p.Type {
		case "text":
			texts = append(texts, p.Text)
		case "image_url", "input_image", "input_audio", "file":
			return Message{}, unsupported(pparam+".type", fmt.Sprintf("Content parts of type %q are not supported: the models served here take text only. Send text parts or a string.", p.Type))
		default:
			return Message{}, ErrInvalidRequest(pparam+".type", fmt.Sprintf("'%s.type' is %q; only \"text\" parts are supported.", pparam, p.Type))
		}
	}
	msg.Content = strings.Join(texts, "\n")
	return msg, nil
}

// commonFields are the sampling fields completions and chat share.
type commonFields struct {
	temperature, topP                 *float64
	n                                 *int
	streamOptions                     *StreamOptions
	stop                              StopList
	seed                              *int64
	frequencyPenalty, presencePenalty *float64
	topK                              *int
	minP, repetitionPenalty           *float64
}

func (c commonFields) apply(req *Request, limits Limits) *Error {
	req.Temperature, req.TopP, req.RepetitionPenalty = 1, 1, 1
	if v := c.temperature; v != nil {
		if *v < 0 || *v > 2 {
			return ErrInvalidRequest("temperature", fmt.Sprintf("'temperature' is %g; it must be between 0 and 2 (0 picks the most likely token).", *v))
		}
		req.Temperature = float32(*v)
	}
	if v := c.topP; v != nil {
		if !(*v > 0 && *v <= 1) {
			return ErrInvalidRequest("top_p", fmt.Sprintf("'top_p' is %g; it must be greater than 0 and at most 1.", *v))
		}
		req.TopP = float32(*v)
	}
	if v := c.n; v != nil {
		switch {
		case *v < 1:
			return ErrInvalidRequest("n", fmt.Sprintf("'n' is %d; it must be at least 1.", *v))
		case *v > 1:
			return unsupported("n", fmt.Sprintf("'n' is %d; generating several choices per request is not supported. Send n=1, or several requests.", *v))
		}
	}
	if c.streamOptions != nil && req.Stream {
		req.IncludeUsage = c.streamOptions.IncludeUsage
	}
	if len(c.stop) > limits.MaxStop {
		return ErrInvalidRequest("stop", fmt.Sprintf("'stop' holds %d strings; send at most %d.", len(c.stop), limits.MaxStop))
	}
	for _, s := range c.stop {
		// An empty stop string would end every generation at once; OpenAI
		// clients send it to mean "no stop", so it is dropped.
		if s != "" {
			req.Stop = append(req.Stop, s)
		}
	}
	if c.seed != nil {
		s := uint64(*c.seed) // negative seeds are as good as positive ones
		req.Seed = &s
	}
	for _, p := range []struct {
		name string
		v    *float64
		dst  *float32
	}{
		{"frequency_penalty", c.frequencyPenalty, &req.FrequencyPenalty},
		{"presence_penalty", c.presencePenalty, &req.PresencePenalty},
	} {
		if p.v == nil {
			continue
		}
		if *p.v < -2 || *p.v > 2 {
			return ErrInvalidRequest(p.name, fmt.Sprintf("'%s' is %g; it must be between -2 and 2.", p.name, *p.v))
		}
		*p.dst = float32(*p.v)
	}
	if v := c.topK; v != nil {
		if *v < -1 {
			return ErrInvalidRequest("top_k", fmt.Sprintf("'top_k' is %d; it must be at least 1, or 0 or -1 for no limit.", *v))
		}
		req.TopK = max(*v, 0)
	}
	if v := c.minP; v != nil {
		if *v < 0 || *v > 1 {
			return ErrInvalidRequest("min_p", fmt.Sprintf("'min_p' is %g; it must be between 0 and 1.", *v))
		}
		req.MinP = float32(*v)
	}
	if v := c.repetitionPenalty; v != nil {
		if !(*v > 0 && *v <= 10) {
			return ErrInvalidRequest("repetition_penalty", fmt.Sprintf("'repetition_penalty' is %g; it must be greater than 0 and at most 10 (1 is off).", *v))
		}
		req.RepetitionPenalty = float32(*v)
	}
	return nil
}

func checkModel(model string) *Error {
	if strings.TrimSpace(model) == "" {
		return ErrInvalidRequest("model", "'model' is required; GET /v1/models lists the models you can use.")
	}
	return nil
}

func checkMaxTokens(param string, v int, limits Limits) *Error {
	switch {
	case v < 1:
		return ErrInvalidRequest(param, fmt.Sprintf("'%s' is %d; it must be at least 1.", param, v))
	case v > limits.MaxTokensCap:
		return ErrInvalidRequest(param, fmt.Sprintf("'%s' is %d; this server generates at most %d tokens per request. Lower it.", param, v, limits.MaxTokensCap))
	}
	return nil
}

// unsupported is the 400 for a feature OpenAI has and this server has not.
func unsupported(param, msg string) *Error {
	e := ErrInvalidRequest(param, msg)
	e.Code = "unsupported_parameter"
	return e
}

func notNull(b json.RawMessage) bool { return len(b) > 0 && jsonKind(b) != "null" }

// nonEmptyArray reports whether b holds anything but null, [] or {}: clients
// often send empty tool lists, which mean no tools.
func nonEmptyArray(b json.RawMessage) bool {
	if !notNull(b) {
		return false
	}
	t := string(bytes.Join(bytes.Fields(b), nil))
	return t != "[]" && t != "{}"
}

// readBody reads the whole body, refusing more than limit bytes.
func readBody(r *http.Request, limit int64) ([]byte, *Error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, ErrInvalidRequest("", "The request body is empty; send a JSON object.")
	}
	if r.ContentLength > limit {
		return nil, errTooLarge(limit)
	}
	// No ResponseWriter here: net/http closes the connection by itself when
	// a handler leaves a large body unread.
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, limit))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, errTooLarge(limit)
	case err != nil:
		return nil, ErrInvalidRequest("", fmt.Sprintf("Could not read the request body: %v.", err))
	case len(bytes.TrimSpace(body)) == 0:
		return nil, ErrInvalidRequest("", "The request body is empty; send a JSON object.")
	}
	return body, nil
}

// unmarshal decodes body into v and turns decoding errors into 400s that
// name the field at fault; prefix is the path of body in the request.
func unmarshal(body []byte, v any, prefix string) *Error {
	err := json.Unmarshal(body, v)
	if err == nil {
		return nil
	}
	var fe *fieldError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &fe):
		return ErrInvalidRequest(fe.param, fe.msg)
	case errors.As(err, &te):
		field := te.Field
		if prefix != "" && field != "" {
			field = prefix + "." + field
		} else if prefix != "" {
			field = prefix
		}
		if field == "" {
			return ErrInvalidRequest("", fmt.Sprintf("The request body must be a JSON object, not %s.", te.Value))
		}
		field = strings.ReplaceAll(field, ".[", "[")
		return ErrInvalidRequest(field, fmt.Sprintf("Invalid type for '%s': expected %s, got %s.", field, expected(te.Type), te.Value))
	}
	return ErrInvalidRequest("", fmt.Sprintf("Could not parse the JSON body of the request (%v). Send a JSON object, with Content-Type: application/json.", err))
}

var (
	typeMessageContent = reflect.TypeFor[*MessageContent]()
	typeStopList       = reflect.TypeFor[*StopList]()
	typePrompt         = reflect.TypeFor[*Prompt]()
)

// expected says in words what a value of type t looks like in JSON.
func expected(t reflect.Type) string {
	switch t {
	case typeMessageContent:
		return "a string or an array of content parts"
	case typeStopList:
		return "a string or an array of strings"
	case typePrompt:
		return "a string, an array of strings, an array of token ids or an array of arrays of token ids"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return "a value of another type"
}
