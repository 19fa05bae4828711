package openai

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

func post(body string) *http.Request {
	return httptest.NewRequest(http.MethodPost, "/v1/x", strings.NewReader(body))
}

func ptr[T any](v T) *T { return &v }

// base returns the defaults a request gets when it sets nothing optional.
func base(chat bool) Request {
	r := Request{Model: "m", Chat: chat, Temperature: 1, TopP: 1, RepetitionPenalty: 1}
	if !chat {
		r.MaxTokens = DefaultCompletionMaxTokens
	}
	return r
}

func TestDecodeCompletionOK(t *testing.T) {
	with := func(f func(r *Request)) *Request {
		r := base(false)
		f(&r)
		return &r
	}
	tests := []struct {
		name string
		body string
		want *Request
	}{
		{"string prompt with defaults", `{"model":"m","prompt":"Hello"}`,
			with(func(r *Request) { r.Prompt = "Hello" })},
		{"empty string prompt", `{"model":"m","prompt":""}`,
			with(func(r *Request) {})},
		{"array of one string", `{"model":"m","prompt":["Hello"]}`,
			with(func(r *Request) { r.Prompt = "Hello" })},
		{"token ids", `{"model":"m","prompt":[1,2,2147483647]}`,
			with(func(r *Request) { r.PromptIDs = []int32{1, 2, 2147483647} })},
		{"array of one array of ids", `{"model":"m","prompt":[[5,6]]}`,
			with(func(r *Request) { r.PromptIDs = []int32{5, 6} })},
		{"everything set", `{"model":"m","prompt":"x","max_tokens":100,"temperature":0,"top_p":0.5,"n":1,
			"stream":true,"stream_options":{"include_usage":true},"stop":["a","b","c","d"],"seed":42,
			"frequency_penalty":-2,"presence_penalty":2,"user":"u1","top_k":40,"min_p":0.05,"repetition_penalty":1.1,
			"logprobs":null,"echo":false,"best_of":1,"suffix":"","logit_bias":{}}`,
			with(func(r *Request) {
				r.Prompt, r.MaxTokens, r.Temperature, r.TopP = "x", 100, 0, 0.5
				r.Stream, r.IncludeUsage, r.Stop, r.Seed = true, true, []string{"a", "b", "c", "d"}, ptr(uint64(42))
				r.FrequencyPenalty, r.PresencePenalty, r.User = -2, 2, "u1"
				r.TopK, r.MinP, r.RepetitionPenalty = 40, 0.05, 1.1
			})},
		{"stop as a string", `{"model":"m","prompt":"x","stop":"\n"}`,
			with(func(r *Request) { r.Prompt, r.Stop = "x", []string{"\n"} })},
		{"empty stop strings dropped", `{"model":"m","prompt":"x","stop":["","a"]}`,
			with(func(r *Request) { r.Prompt, r.Stop = "x", []string{"a"} })},
		{"stop null", `{"model":"m","prompt":"x","stop":null}`,
			with(func(r *Request) { r.Prompt = "x" })},
		{"null optionals take defaults", `{"model":"m","prompt":"x","max_tokens":null,"temperature":null,"top_p":null,"n":null}`,
			with(func(r *Request) { r.Prompt = "x" })},
		{"include_usage ignored without stream", `{"model":"m","prompt":"x","stream_options":{"include_usage":true}}`,
			with(func(r *Request) { r.Prompt = "x" })},
		{"negative seed", `{"model":"m","prompt":"x","seed":-1}`,
			with(func(r *Request) { r.Prompt, r.Seed = "x", ptr(^uint64(0)) })},
		{"top_k -1 is no limit", `{"model":"m","prompt":"x","top_k":-1}`,
			with(func(r *Request) { r.Prompt = "x" })},
		{"max_tokens at the cap", `{"model":"m","prompt":"x","max_tokens":32768}`,
			with(func(r *Request) { r.Prompt, r.MaxTokens = "x", 32768 })},
		{"unknown fields ignored", `{"model":"m","prompt":"x","foo":{"bar":[1]},"metadata":{"a":"b"}}`,
			with(func(r *Request) { r.Prompt = "x" })},
		{"temperature 2 and top_p 1", `{"model":"m","prompt":"x","temperature":2,"top_p":1}`,
			with(func(r *Request) { r.Prompt, r.Temperature = "x", 2 })},
		{"logprobs false", `{"model":"m","prompt":"x","logprobs":false}`,
			with(func(r *Request) { r.Prompt = "x" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, e := DecodeCompletion(post(tt.body), Limits{})
			if e != nil {
				t.Fatalf("got error %v, want none", e)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", *got, *tt.want)
			}
		})
	}
}

// errCase is a request that must fail with status and param.
type errCase struct {
	name   string
	body   string
	status int
	param  string
	// code and contains, when set, must match too.
	code     string
	contains string
}

func checkErr(t *testing.T, e *Error, tt errCase) {
	t.Helper()
	if e == nil {
		t.Fatalf("got no error, want %d param %q", tt.status, tt.param)
	}
	if e.Status != tt.status || e.Param != tt.param {
		t.Errorf("got %d param %q, want %d param %q (%v)", e.Status, e.Param, tt.status, tt.param, e)
	}
	if tt.code != "" && e.Code != tt.code {
		t.Errorf("got code %q, want %q", e.Code, tt.code)
	}
	if tt.contains != "" && !strings.Contains(e.Message, tt.contains) {
		t.Errorf("got message %q, want it to contain %q", e.Message, tt.contains)
	}
	if e.Type != TypeInvalidRequest {
		t.Errorf("got type %q, want %q", e.Type, TypeInvalidRequest)
	}
}

// sharedErrCases hold the rules completions and chat share; "%s" in body
// stands for the prompt or messages field.
var sharedErrCases = []errCase{
	{"malformed JSON", `{"model":`, 400, "", "", "parse the JSON"},
	{"trailing garbage", `{"model":"m"} x`, 400, "", "", "parse the JSON"},
	{"not an object", `[1,2]`, 400, "", "", "JSON object"},
	{"empty body", ``, 400, "", "", "empty"},
	{"whitespace body", "  \n", 400, "", "", "empty"},
	{"null body", `null`, 400, "model", "", ""},
	{"missing model", `{%s}`, 400, "model", "", "required"},
	{"blank model", `{"model":" ",%s}`, 400, "model", "", ""},
	{"model not a string", `{"model":5,%s}`, 400, "model", "", "expected a string, got number"},
	{"max_tokens zero", `{"model":"m",%s,"max_tokens":0}`, 400, "max_tokens", "", "at least 1"},
	{"max_tokens negative", `{"model":"m",%s,"max_tokens":-5}`, 400, "max_tokens", "", "at least 1"},
	{"max_tokens over the cap", `{"model":"m",%s,"max_tokens":32769}`, 400, "max_tokens", "", "at most 32768"},
	{"max_tokens fraction", `{"model":"m",%s,"max_tokens":1.5}`, 400, "max_tokens", "", "expected an integer"},
	{"max_tokens string", `{"model":"m",%s,"max_tokens":"16"}`, 400, "max_tokens", "", "expected an integer, got string"},
	{"max_tokens huge", `{"model":"m",%s,"max_tokens":1e40}`, 400, "max_tokens", "", ""},
	{"temperature negative", `{"model":"m",%s,"temperature":-0.1}`, 400, "temperature", "", "between 0 and 2"},
	{"temperature above 2", `{"model":"m",%s,"temperature":2.01}`, 400, "temperature", "", "between 0 and 2"},
	{"temperature string", `{"model":"m",%s,"temperature":"hot"}`, 400, "temperature", "", "expected a number"},
	{"top_p zero", `{"model":"m",%s,"top_p":0}`, 400, "top_p", "", ""},
	{"top_p above 1", `{"model":"m",%s,"top_p":1.5}`, 400, "top_p", "", ""},
	{"top_p negative", `{"model":"m",%s,"top_p":-1}`, 400, "top_p", "", ""},
	{"n two", `{"model":"m",%s,"n":2}`, 400, "n", "unsupported_parameter", "not supported"},
	{"n zero", `{"model":"m",%s,"n":0}`, 400, "n", "", "at least 1"},
	{"stop five", `{"model":"m",%s,"stop":["a","b","c","d","e"]}`, 400, "stop", "", "at most 4"},
	{"stop number", `{"model":"m",%s,"stop":5}`, 400, "stop", "", "a string or an array of strings"},
	{"stop array of numbers", `{"model":"m",%s,"stop":[1]}`, 400, "stop", "", ""},
	{"stream not a bool", `{"model":"m",%s,"stream":"yes"}`, 400, "stream", "", "expected a boolean"},
	{"include_usage not a bool", `{"model":"m",%s,"stream":true,"stream_options":{"include_usage":1}}`, 400, "stream_options.include_usage", "", ""},
	{"seed fraction", `{"model":"m",%s,"seed":1.5}`, 400, "seed", "", ""},
	{"frequency_penalty out of range", `{"model":"m",%s,"frequency_penalty":2.5}`, 400, "frequency_penalty", "", ""},
	{"presence_penalty out of range", `{"model":"m",%s,"presence_penalty":-3}`, 400, "presence_penalty", "", ""},
	{"top_k below -1", `{"model":"m",%s,"top_k":-2}`, 400, "top_k", "", ""},
	{"top_k string", `{"model":"m",%s,"top_k":"x"}`, 400, "top_k", "", ""},
	{"min_p above 1", `{"model":"m",%s,"min_p":1.5}`, 400, "min_p", "", ""},
	{"repetition_penalty zero", `{"model":"m",%s,"repetition_penalty":0}`, 400, "repetition_penalty", "", ""},
	{"user not a string", `{"model":"m",%s,"user":1}`, 400, "user", "", ""},
	{"logprobs requested", `{"model":"m",%s,"logprobs":5}`, 400, "logprobs", "unsupported_parameter", "not supported yet"},
}

func TestDecodeCompletionErrors(t *testing.T) {
	tests := []errCase{
		{"missing prompt", `{"model":"m"}`, 400, "prompt", "", "required"},
		{"null prompt", `{"model":"m","prompt":null}`, 400, "prompt", "", "required"},
		{"two strings", `{"model":"m","prompt":["a","b"]}`, 400, "prompt", "", "one prompt per request"},
		{"two id arrays", `{"model":"m","prompt":[[1],[2]]}`, 400, "prompt", "", "one prompt per request"},
		{"empty array", `{"model":"m","prompt":[]}`, 400, "prompt", "", ""},
		{"empty id array", `{"model":"m","prompt":[[]]}`, 400, "prompt", "", ""},
		{"number", `{"model":"m","prompt":5}`, 400, "prompt", "", "expected a string"},
		{"object", `{"model":"m","prompt":{}}`, 400, "prompt", "", ""},
		{"mixed array", `{"model":"m","prompt":["a",1]}`, 400, "prompt", "", ""},
		{"mixed ids", `{"model":"m","prompt":[1,"a"]}`, 400, "prompt", "", ""},
		{"negative id", `{"model":"m","prompt":[1,-1]}`, 400, "prompt", "", "token id -1"},
		{"id over int32", `{"model":"m","prompt":[2147483648]}`, 400, "prompt", "", ""},
		{"fractional id", `{"model":"m","prompt":[1.5]}`, 400, "prompt", "", ""},
		{"nested strings", `{"model":"m","prompt":[["a"]]}`, 400, "prompt", "", ""},
		{"array of nulls", `{"model":"m","prompt":[null]}`, 400, "prompt", "", ""},
		{"echo", `{"model":"m","prompt":"x","echo":true}`, 400, "echo", "unsupported_parameter", ""},
		{"best_of", `{"model":"m","prompt":"x","best_of":3}`, 400, "best_of", "unsupported_parameter", ""},
		{"suffix", `{"model":"m","prompt":"x","suffix":"end"}`, 400, "suffix", "unsupported_parameter", ""},
		{"logit_bias", `{"model":"m","prompt":"x","logit_bias":{"50256":-100}}`, 400, "logit_bias", "unsupported_parameter", ""},
		{"logprobs zero", `{"model":"m","prompt":"x","logprobs":0}`, 400, "logprobs", "unsupported_parameter", ""},
	}
	for _, tt := range sharedErrCases {
		tt.body = strings.Replace(tt.body, "%s", `"prompt":"x"`, 1)
		tests = append(tests, tt)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, e := DecodeCompletion(post(tt.body), Limits{})
			checkErr(t, e, tt)
		})
	}
}

func TestDecodeChatOK(t *testing.T) {
	with := func(f func(r *Request)) *Request {
		r := base(true)
		r.Messages = []Message{{Role: "user", Content: "hi"}}
		f(&r)
		return &r
	}
	user := `"messages":[{"role":"user","content":"hi"}]`
	tests := []struct {
		name string
		body string
		want *Request
	}{
		{"defaults: max_tokens 0 means until the context ends", `{"model":"m",` + user + `}`,
			with(func(r *Request) {})},
		{"all roles, names and null assistant content", `{"model":"m","messages":[
			{"role":"system","content":"s"},{"role":"developer","content":"d"},
			{"role":"user","content":"u","name":"ann"},{"role":"assistant","content":null},
			{"role":"assistant"},{"role":"tool","content":"t","tool_call_id":"c1"}]}`,
			with(func(r *Request) {
				r.Messages = []Message{{"system", "s", ""}, {"developer", "d", ""}, {"user", "u", "ann"},
					{"assistant", "", ""}, {"assistant", "", ""}, {"tool", "t", ""}}
			})},
		{"text parts joined with newlines", `{"model":"m","messages":[{"role":"user","content":[
			{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}`,
			with(func(r *Request) { r.Messages = []Message{{"user", "a\nb", ""}} })},
		{"empty parts", `{"model":"m","messages":[{"role":"user","content":[]}]}`,
			with(func(r *Request) { r.Messages = []Message{{"user", "", ""}} })},
		{"max_tokens", `{"model":"m",` + user + `,"max_tokens":7}`,
			with(func(r *Request) { r.MaxTokens = 7 })},
		{"max_completion_tokens", `{"model":"m",` + user + `,"max_completion_tokens":9}`,
			with(func(r *Request) { r.MaxTokens = 9 })},
		{"max_completion_tokens wins", `{"model":"m",` + user + `,"max_tokens":7,"max_completion_tokens":9}`,
			with(func(r *Request) { r.MaxTokens = 9 })},
		{"stream with usage", `{"model":"m",` + user + `,"stream":true,"stream_options":{"include_usage":true},"stop":"x"}`,
			with(func(r *Request) { r.Stream, r.IncludeUsage, r.Stop = true, true, []string{"x"} })},
		{"harmless extras clients send", `{"model":"m",` + user + `,"tools":[],"functions":null,"tool_choice":"none",
			"response_format":{"type":"text"},"logprobs":false,"top_logprobs":0,"parallel_tool_calls":false,"store":false}`,
			with(func(r *Request) {})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, e := DecodeChat(post(tt.body), Limits{})
			if e != nil {
				t.Fatalf("got error %v, want none", e)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", *got, *tt.want)
			}
		})
	}
}

func TestDecodeChatErrors(t *testing.T) {
	tests := []errCase{
		{"missing messages", `{"model":"m"}`, 400, "messages", "", "required"},
		{"empty messages", `{"model":"m","messages":[]}`, 400, "messages", "", ""},
		{"messages object", `{"model":"m","messages":{}}`, 400, "messages", "", "expected an array"},
		{"message string", `{"model":"m","messages":["hi"]}`, 400, "messages[0]", "", "expected an object"},
		{"missing role", `{"model":"m","messages":[{"content":"x"}]}`, 400, "messages[0].role", "", "required"},
		{"unknown role", `{"model":"m","messages":[{"role":"user","content":"x"},{"role":"function","content":"x"}]}`, 400, "messages[1].role", "", `"function"`},
		{"role number", `{"model":"m","messages":[{"role":1,"content":"x"}]}`, 400, "messages[0].role", "", "expected a string"},
		{"user without content", `{"model":"m","messages":[{"role":"user"}]}`, 400, "messages[0].content", "", "required"},
		{"content number", `{"model":"m","messages":[{"role":"user","content":5}]}`, 400, "messages[0].content", "", "a string or an array of content parts"},
		{"content object", `{"model":"m","messages":[{"role":"user","content":{"type":"text"}}]}`, 400, "messages[0].content", "", ""},
		{"part not an object", `{"model":"m","messages":[{"role":"user","content":["a"]}]}`, 400, "messages[0].content[0]", "", "expected an object"},
		{"part text number", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":1}]}]}`, 400, "messages[0].content[1].text", "", "expected a string"},
		{"image part", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"http://x"}}]}]}`, 400, "messages[0].content[1].type", "unsupported_parameter", "text only"},
		{"unknown part", `{"model":"m","messages":[{"role":"user","content":[{"type":"video"}]}]}`, 400, "messages[0].content[0].type", "", ""},
		{"tool calls", `{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"1"}]}]}`, 400, "messages[0].tool_calls", "unsupported_parameter", ""},
		{"max_completion_tokens zero", `{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":0}`, 400, "max_completion_tokens", "", ""},
		{"max_completion_tokens over cap", `{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":99999}`, 400, "max_completion_tokens", "", ""},
		{"logprobs true", `{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true}`, 400, "logprobs", "unsupported_parameter", "not supported yet"},
		{"top_logprobs", `{"model":"m","messages":[{"role":"user","content":"x"}],"top_logprobs":3}`, 400, "top_logprobs", "unsupported_parameter", ""},
		{"tools", `{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}`, 400, "tools", "unsupported_parameter", ""},
		{"json mode", `{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}`, 400, "response_format", "unsupported_parameter", ""},
	}
	for _, tt := range sharedErrCases {
		tt.body = strings.Replace(tt.body, "%s", `"messages":[{"role":"user","content":"x"}]`, 1)
		if tt.name == "logprobs requested" {
			tt.body = strings.Replace(tt.body, `"logprobs":5`, `"logprobs":true`, 1)
		}
		tests = append(tests, tt)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, e := DecodeChat(post(tt.body), Limits{})
			checkErr(t, e, tt)
		})
	}
}

func TestDecodeLimits(t *testing.T) {
	t.Run("custom max_tokens cap", func(t *testing.T) {
		_, e := DecodeCompletion(post(`{"model":"m","prompt":"x","max_tokens":101}`), Limits{MaxTokensCap: 100})
		checkErr(t, e, errCase{status: 400, param: "max_tokens", contains: "at most 100"})
	})
	t.Run("completion default bounded by a small cap", func(t *testing.T) {
		r, e := DecodeCompletion(post(`{"model":"m","prompt":"x"}`), Limits{MaxTokensCap: 8})
		if e != nil {
			t.Fatal(e)
		}
		if r.MaxTokens != 8 {
			t.Errorf("got MaxTokens %d, want 8", r.MaxTokens)
		}
	})
	t.Run("custom stop limit", func(t *testing.T) {
		_, e := DecodeChat(post(`{"model":"m","messages":[{"role":"user","content":"x"}],"stop":["a","b"]}`), Limits{MaxStop: 1})
		checkErr(t, e, errCase{status: 400, param: "stop", contains: "at most 1"})
	})
}

func TestDecodeBodyLimit(t *testing.T) {
	prompt := strings.Repeat("a", 2000)
	body := fmt.Sprintf(`{"model":"m","prompt":%q}`, prompt)
	limits := Limits{MaxBodyBytes: 1000}
	tooLarge := errCase{status: 413, code: "request_too_large", contains: "1000 bytes"}

	t.Run("declared length", func(t *testing.T) {
		_, e := DecodeCompletion(post(body), limits)
		checkErr(t, e, tooLarge)
	})
	t.Run("chunked, length unknown", func(t *testing.T) {
		r := post(body)
		r.ContentLength = -1
		r.Body = io.NopCloser(strings.NewReader(body))
		_, e := DecodeChat(r, limits)
		checkErr(t, e, tooLarge)
	})
	t.Run("exactly at the limit", func(t *testing.T) {
		b := fmt.Sprintf(`{"model":"m","prompt":%q}`, strings.Repeat("a", 1000-len(`{"model":"m","prompt":""}`)))
		if len(b) != 1000 {
			t.Fatalf("test body is %d bytes, want 1000", len(b))
		}
		if _, e := DecodeCompletion(post(b), limits); e != nil {
			t.Errorf("got %v, want no error", e)
		}
	})
	t.Run("default is 4 MiB", func(t *testing.T) {
		big := fmt.Sprintf(`{"model":"m","prompt":%q}`, strings.Repeat("a", 4<<20))
		_, e := DecodeCompletion(post(big), Limits{})
		checkErr(t, e, errCase{status: 413, code: "request_too_large", contains: "4194304"})
	})
	t.Run("no body", func(t *testing.T) {
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		_, e := DecodeCompletion(r, Limits{})
		checkErr(t, e, errCase{status: 400, contains: "empty"})
	})
}

func TestDecodeIgnoresContentType(t *testing.T) {
	r := post(`{"model":"m","prompt":"x"}`)
	r.Header.Set("Content-Type", "text/plain")
	if _, e := DecodeCompletion(r, Limits{}); e != nil {
		t.Errorf("got %v, want no error", e)
	}
}
