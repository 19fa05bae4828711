package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
)

// Object names, as OpenAI writes them in the "object" field.
const (
	ObjectList           = "list"
	ObjectModel          = "model"
	ObjectTextCompletion = "text_completion"
	ObjectChatCompletion = "chat.completion"
	ObjectChatChunk      = "chat.completion.chunk"
)

// Finish reasons.
const (
	FinishStop   = "stop"   // EOS or a stop string
	FinishLength = "length" // max_tokens or the end of the context
)

// Chat roles accepted in requests. RoleAssistant is also the role of every
// generated message.
const (
	RoleSystem    = "system"
	RoleDeveloper = "developer"
	RoleUser      = "user"
	RoleAssistant = "assistant"
	RoleTool      = "tool"
)

// Model is one entry of GET /v1/models.
type Model struct {
	ID      string `json:"id"`
	Object  string `json:"object"` // always "model"
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// ModelList is the body of GET /v1/models.
type ModelList struct {
	Object string  `json:"object"` // always "list"
	Data   []Model `json:"data"`
}

// Usage counts the tokens of one request.
type Usage struct {
	PromptTokens        int                  `json:"prompt_tokens"`
	CompletionTokens    int                  `json:"completion_tokens"`
	TotalTokens         int                  `json:"total_tokens"`
	PromptTokensDetails *PromptTokensDetails `json:"prompt_tokens_details,omitempty"`
}

// PromptTokensDetails says how many prompt tokens came from the prefix cache.
type PromptTokensDetails struct {
	CachedTokens int `json:"cached_tokens"`
}

// StreamOptions is the "stream_options" request object.
type StreamOptions struct {
	// IncludeUsage asks for one more chunk before [DONE] whose choices are
	// empty and whose usage covers the whole request.
	IncludeUsage bool `json:"include_usage"`
}

// CompletionRequest is the body of POST /v1/completions. Optional numbers are
// pointers so that an absent field and zero differ. Fields OpenAI defines but
// this server cannot honour (logprobs, echo, best_of > 1, suffix, logit_bias)
// are decoded only to be refused; other unknown fields are ignored.
type CompletionRequest struct {
	Model            string             `json:"model"`
	Prompt           *Prompt            `json:"prompt,omitempty"`
	MaxTokens        *int               `json:"max_tokens,omitempty"`
	Temperature      *float64           `json:"temperature,omitempty"`
	TopP             *float64           `json:"top_p,omitempty"`
	N                *int               `json:"n,omitempty"`
	Stream           bool               `json:"stream,omitempty"`
	StreamOptions    *StreamOptions     `json:"stream_options,omitempty"`
	Stop             StopList           `json:"stop,omitempty"`
	Seed             *int64             `json:"seed,omitempty"`
	FrequencyPenalty *float64           `json:"frequency_penalty,omitempty"`
	PresencePenalty  *float64           `json:"presence_penalty,omitempty"`
	User             string             `json:"user,omitempty"`
	Logprobs         json.RawMessage    `json:"logprobs,omitempty"`
	Echo             bool               `json:"echo,omitempty"`
	BestOf           *int               `json:"best_of,omitempty"`
	Suffix           string             `json:"suffix,omitempty"`
	LogitBias        map[string]float64 `json:"logit_bias,omitempty"`

	// Not OpenAI's: vLLM, llama.cpp server and Ollama accept these, so
	// clients written for them work. (Not an embedded struct: encoding/json
	// would name it in error paths.)
	TopK              *int     `json:"top_k,omitempty"` // -1 or 0: no limit
	MinP              *float64 `json:"min_p,omitempty"`
	RepetitionPenalty *float64 `json:"repetition_penalty,omitempty"`
}

// ChatCompletionRequest is the body of POST /v1/chat/completions.
type ChatCompletionRequest struct {
	Model               string          `json:"model"`
	Messages            []ChatMessage   `json:"messages"`
	MaxTokens           *int            `json:"max_tokens,omitempty"`
	MaxCompletionTokens *int            `json:"max_completion_tokens,omitempty"`
	Temperature         *float64        `json:"temperature,omitempty"`
	TopP                *float64        `json:"top_p,omitempty"`
	N                   *int            `json:"n,omitempty"`
	Stream              bool            `json:"stream,omitempty"`
	StreamOptions       *StreamOptions  `json:"stream_options,omitempty"`
	Stop                StopList        `json:"stop,omitempty"`
	Seed                *int64          `json:"seed,omitempty"`
	FrequencyPenalty    *float64        `json:"frequency_penalty,omitempty"`
	PresencePenalty     *float64        `json:"presence_penalty,omitempty"`
	User                string          `json:"user,omitempty"`
	Logprobs            json.RawMessage `json:"logprobs,omitempty"`
	TopLogprobs         *int            `json:"top_logprobs,omitempty"`
	Tools               json.RawMessage `json:"tools,omitempty"`
	Functions           json.RawMessage `json:"functions,omitempty"`
	ResponseFormat      *ResponseFormat `json:"response_format,omitempty"`

	// Not OpenAI's: vLLM, llama.cpp server and Ollama accept these, so
	// clients written for them work. (Not an embedded struct: encoding/json
	// would name it in error paths.)
	TopK              *int     `json:"top_k,omitempty"` // -1 or 0: no limit
	MinP              *float64 `json:"min_p,omitempty"`
	RepetitionPenalty *float64 `json:"repetition_penalty,omitempty"`
}

// ResponseFormat is the "response_format" request object; only "text" is served.
type ResponseFormat struct {
	Type string `json:"type"`
}

// ChatMessage is one message of a chat request.
type ChatMessage struct {
	Role string `json:"role"`
	// Content is nil when the message has none (JSON null or absent), which
	// only an assistant message may do.
	Content    *MessageContent `json:"content,omitempty"`
	Name       string          `json:"name,omitempty"`
	ToolCallID string          `json:"tool_call_id,omitempty"`
	ToolCalls  json.RawMessage `json:"tool_calls,omitempty"`
}

// MessageContent is a chat message's content: a string, or an array of typed
// parts. It encodes as a string unless Parts is set.
type MessageContent struct {
	Text  string
	Parts []ContentPart
}

// ContentPart is one element of an array content. Only "text" parts are
// served; the others are decoded so that the error can name them.
type ContentPart struct {
	Type string `json:"type"`
	Text string `json:"text,omitempty"`
}

// TextContent returns content holding s as a plain string.
func TextContent(s string) *MessageContent { return &MessageContent{Text: s} }

// MarshalJSON implements json.Marshaler.
func (c MessageContent) MarshalJSON() ([]byte, error) {
	if c.Parts != nil {
		return json.Marshal(c.Parts)
	}
	return json.Marshal(c.Text)
}

// UnmarshalJSON implements json.Unmarshaler. It checks the shape only; which
// part types are served is the decoder's business.
func (c *MessageContent) UnmarshalJSON(b []byte) error {
	switch jsonKind(b) {
	case "string":
		c.Parts = nil
		return json.Unmarshal(b, &c.Text)
	case "array":
		var raws []json.RawMessage
		if err := json.Unmarshal(b, &raws); err != nil {
			return typeError(b, c)
		}
		parts := make([]ContentPart, len(raws))
		for j, raw := range raws {
			// Field paths name the part ("[1].text"); encoding/json
			// prepends the path of the content itself.
			if k := jsonKind(raw); k != "object" {
				return &json.UnmarshalTypeError{Value: k, Type: reflect.TypeFor[ContentPart](), Field: fmt.Sprintf("[%d]", j)}
			}
			if err := json.Unmarshal(raw, &parts[j]); err != nil {
				var te *json.UnmarshalTypeError
				if errors.As(err, &te) {
					te.Field = fmt.Sprintf("[%d].%s", j, te.Field)
				}
				return err
			}
		}
		*c = MessageContent{Parts: parts}
		return nil
	}
	return typeError(b, c)
}

// StopList is the "stop" field: a string or an array of strings on the wire.
type StopList []string

// UnmarshalJSON implements json.Unmarshaler.
func (s *StopList) UnmarshalJSON(b []byte) error {
	switch jsonKind(b) {
	case "null":
		*s = nil
		return nil
	case "string":
		var one string
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = StopList{one}
		return nil
	case "array":
		var list []string
		if err := json.Unmarshal(b, &list); err != nil {
			return typeError(b, s)
		}
		*s = list
		return nil
	}
	return typeError(b, s)
}

// Prompt is the "prompt" field of a completion request: a string, an array of
// strings, an array of token ids or an array of arrays of token ids. The
// array forms are batches; this server serves batches of one.
type Prompt struct {
	Texts []string  // set for the string forms
	IDs   [][]int32 // set for the token-id forms
}

// TextPrompt returns a prompt that encodes as a plain string.
func TextPrompt(s string) *Prompt { return &Prompt{Texts: []string{s}} }

// TokenPrompt returns a prompt that encodes as an array of token ids.
func TokenPrompt(ids []int32) *Prompt { return &Prompt{IDs: [][]int32{ids}} }

// MarshalJSON implements json.Marshaler.
func (p Prompt) MarshalJSON() ([]byte, error) {
	switch {
	case len(p.IDs) == 1:
		return json.Marshal(p.IDs[0])
	case p.IDs != nil:
		return json.Marshal(p.IDs)
	case len(p.Texts) == 1:
		return json.Marshal(p.Texts[0])
	}
	return json.Marshal(p.Texts)
}

// UnmarshalJSON implements json.Unmarshaler. Token ids must fit in int32 and
// not be negative.
func (p *Prompt) UnmarshalJSON(b []byte) error {
	*p = Prompt{}
	switch jsonKind(b) {
	case "string":
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		p.Texts = []string{s}
		return nil
	case "array":
	default:
		return typeError(b, p)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(b, &elems); err != nil {
		return typeError(b, p)
	}
	if len(elems) == 0 {
		return &fieldError{param: "prompt", msg: "'prompt' is an empty array; send a string or an array of token ids."}
	}
	switch jsonKind(elems[0]) {
	case "string":
		var texts []string
		if err := json.Unmarshal(b, &texts); err != nil {
			return typeError(b, p)
		}
		p.Texts = texts
		return nil
	case "number":
		ids, err := tokenIDs(b)
		if err != nil {
			return err
		}
		p.IDs = [][]int32{ids}
		return nil
	case "array":
		for _, e := range elems {
			ids, err := tokenIDs(e)
			if err != nil {
				return err
			}
			p.IDs = append(p.IDs, ids)
		}
		return nil
	}
	return typeError(b, p)
}

// tokenIDs decodes an array of token ids.
func tokenIDs(b []byte) ([]int32, error) {
	var raw []int64
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, typeError(b, (*Prompt)(nil))
	}
	ids := make([]int32, len(raw))
	for i, v := range raw {
		if v < 0 || v > math.MaxInt32 {
			return nil, &fieldError{param: "prompt", msg: "'prompt' holds token id " + strconv.FormatInt(v, 10) + "; token ids are between 0 and 2147483647."}
		}
		ids[i] = int32(v)
	}
	return ids, nil
}

// CompletionResponse is the body of a non-streamed POST /v1/completions.
type CompletionResponse struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"` // "text_completion"
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []CompletionChoice `json:"choices"`
	Usage   *Usage             `json:"usage,omitempty"`
}

// CompletionChunk is one event of a streamed POST /v1/completions. OpenAI
// gives chunks the same object name as the response.
type CompletionChunk = CompletionResponse

// CompletionChoice is a choice of a completion response or chunk.
// FinishReason is null until the choice ends; Logprobs is always null.
type CompletionChoice struct {
	Text         string          `json:"text"`
	Index        int             `json:"index"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
}

// ChatCompletionResponse is the body of a non-streamed POST /v1/chat/completions.
type ChatCompletionResponse struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"` // "chat.completion"
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []ChatChoice `json:"choices"`
	Usage   Usage        `json:"usage"`
}

// ChatChoice is a choice of a chat response.
type ChatChoice struct {
	Index        int             `json:"index"`
	Message      ResponseMessage `json:"message"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason string          `json:"finish_reason"`
}

// ResponseMessage is the generated message of a chat response.
type ResponseMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ChatCompletionChunk is one event of a streamed POST /v1/chat/completions.
type ChatCompletionChunk struct {
	ID      string            `json:"id"`
	Object  string            `json:"object"` // "chat.completion.chunk"
	Created int64             `json:"created"`
	Model   string            `json:"model"`
	Choices []ChatChunkChoice `json:"choices"`
	Usage   *Usage            `json:"usage,omitempty"`
}

// ChatChunkChoice is a choice of a chat chunk.
type ChatChunkChoice struct {
	Index        int             `json:"index"`
	Delta        ChatDelta       `json:"delta"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
}

// ChatDelta is what a chunk adds to the message: the role on the first chunk,
// then content; the last chunk's delta is empty.
type ChatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

// ErrorResponse is the error envelope of every failed request.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody is the inside of the envelope; Param and Code are null when unset.
type ErrorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// jsonKind names the kind of the JSON value b from its first byte: "null",
// "string", "array", "object", "boolean" or "number".
func jsonKind(b []byte) string {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 {
		return ""
	}
	switch b[0] {
	case 'n':
		return "null"
	case '"':
		return "string"
	case '[':
		return "array"
	case '{':
		return "object"
	case 't', 'f':
		return "boolean"
	}
	return "number"
}

// typeError reports that b is not of the shape v's type accepts. Returned
// from UnmarshalJSON, it gets the field path added by encoding/json.
func typeError(b []byte, v any) error {
	return &json.UnmarshalTypeError{Value: jsonKind(b), Type: reflect.TypeOf(v)}
}

// fieldError is a problem found while decoding a field whose name is known.
type fieldError struct {
	param, msg string
}

func (e *fieldError) Error() string { return e.msg }
