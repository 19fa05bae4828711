package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/ardanlabs/jinja"
)

// Chat templates are rendered with github.com/ardanlabs/jinja, a pure-Go
// Jinja made for LLM chat templates: no dependencies, Python-compatible
// tojson, string methods and loop controls, and HF's trim_blocks and
// lstrip_blocks behaviour. It has no execution limits of its own, so
// RenderChat adds them (see renderLimits).

// Message is one turn of a conversation as chat templates see it. Empty
// optional fields are left undefined for the template, so `is defined`
// tests behave as with transformers.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
	// ReasoningContent is an assistant's thinking (Qwen3, DeepSeek-R1).
	ReasoningContent string     `json:"reasoning_content,omitempty"`
	ToolCalls        []ToolCall `json:"tool_calls,omitempty"`
	// ToolCallID and Name identify the call a "tool" message answers.
	ToolCallID string `json:"tool_call_id,omitempty"`
	Name       string `json:"name,omitempty"`
}

// ToolCall is a function call made by the assistant, in OpenAI's shape.
type ToolCall struct {
	ID       string       `json:"id,omitempty"`
	Type     string       `json:"type,omitempty"`
	Function FunctionCall `json:"function"`
}

// FunctionCall names the function and its arguments. Arguments is the JSON
// text of the arguments object, as OpenAI's API carries it; templates see
// it as an object (with its key order) when it parses as one, else as the
// string.
type FunctionCall struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// ChatOptions are the variables a chat template is rendered with besides
// the messages.
type ChatOptions struct {
	AddGenerationPrompt bool
	BOSToken, EOSToken  string
	// Tools are tool definitions as JSON objects (OpenAI's
	// {"type":"function","function":{...}}); key order is kept.
	Tools []json.RawMessage
	// Kwargs are extra template variables (enable_thinking, ...); they
	// override the ones above. Values may be nil, bool, int, int64,
	// float64, string, []any, map[string]any or json.RawMessage; other
	// types are undefined in the template.
	Kwargs map[string]any
	// Now is what strftime_now formats; the zero value means time.Now().
	Now time.Time
	// Timeout bounds the render; zero means DefaultRenderTimeout.
	Timeout time.Duration
}

// Limits that keep a hostile or broken template from hanging the caller or
// exhausting memory.
const (
	// MaxTemplateBytes bounds the template source.
	MaxTemplateBytes = 1 << 20
	// MaxRenderBytes bounds the rendered prompt.
	MaxRenderBytes = 64 << 20
	// DefaultRenderTimeout bounds a render's wall-clock time.
	DefaultRenderTimeout = 5 * time.Second
	// maxRange bounds the list range() builds.
	maxRange = 1 << 16
)

// Template is a compiled chat template, safe for concurrent use.
type Template struct {
	tmpl *jinja.Template
}

// CompileTemplate compiles a Jinja chat template (the chat_template of
// tokenizer_config.json or of GGUF metadata) once for many renders.
func CompileTemplate(src string) (*Template, error) {
	if len(src) > MaxTemplateBytes {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrTemplateTooLarge, len(src), MaxTemplateBytes)
	}
	if err := checkMacroRecursion(src); err != nil {
		return nil, err
	}
	tmpl, err := jinja.Compile(src)
	if err != nil {
		return nil, fmt.Errorf("compile chat template: %w", err)
	}
	return &Template{tmpl: tmpl}, nil
}

// RenderChat compiles template and renders it for messages; see
// Template.Render.
func RenderChat(template string, messages []Message, opts ChatOptions) (string, error) {
	t, err := CompileTemplate(template)
	if err != nil {
		return "", err
	}
	return t.Render(messages, opts)
}

// Render renders the template for messages.
//
// The render is bounded: the template's size, range() lengths and the
// output size are limited, a macro may not call itself, a panic in the
// engine becomes an error, and a render that exceeds opts.Timeout returns
// ErrTemplateTimeout. The engine cannot be interrupted, so in that case
// its goroutine runs on until it finishes by itself (it holds no locks and
// its result is dropped); the limits above keep that finite for the
// templates models ship, not for deliberately hostile ones.
func (t *Template) Render(messages []Message, opts ChatOptions) (string, error) {
	data, err := chatData(messages, opts)
	if err != nil {
		return "", err
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultRenderTimeout
	}
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1) // buffered: a late render never blocks
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{err: fmt.Errorf("render chat template: engine panic: %v", p)}
			}
		}()
		out, err := t.tmpl.RenderValues(data)
		done <- result{out, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-done:
		if r.err != nil {
			return "", fmt.Errorf("render chat template: %w", r.err)
		}
		if len(r.out) > MaxRenderBytes {
			return "", fmt.Errorf("render chat template: output of %d bytes exceeds %d", len(r.out), MaxRenderBytes)
		}
		return r.out, nil
	case <-timer.C:
		return "", fmt.Errorf("%w after %v", ErrTemplateTimeout, timeout)
	}
}

func chatData(messages []Message, opts ChatOptions) (map[string]jinja.Value, error) {
	msgs := make([]jinja.Value, len(messages))
	for i, m := range messages {
		v, err := messageValue(m)
		if err != nil {
			return nil, fmt.Errorf("message %d: %w", i, err)
		}
		msgs[i] = v
	}
	data := map[string]jinja.Value{
		"messages":              jinja.NewList(msgs),
		"add_generation_prompt": jinja.NewBool(opts.AddGenerationPrompt),
		"bos_token":             jinja.NewString(opts.BOSToken),
		"eos_token":             jinja.NewString(opts.EOSToken),
		"range":                 jinja.NewCallable("range", boundedRange),
		"strftime_now":          jinja.NewCallable("strftime_now", strftimeNow(opts.Now)),
	}
	if len(opts.Tools) > 0 {
		tools := make([]jinja.Value, len(opts.Tools))
		for i, raw := range opts.Tools {
			v, err := jsonValue(raw)
			if err != nil {
				return nil, fmt.Errorf("tool %d: %w", i, err)
			}
			tools[i] = v
		}
		data["tools"] = jinja.NewList(tools)
	}
	for k, v := range opts.Kwargs {
		if raw, ok := v.(json.RawMessage); ok {
			jv, err := jsonValue(raw)
			if err != nil {
				return nil, fmt.Errorf("kwarg %q: %w", k, err)
			}
			data[k] = jv
			continue
		}
		data[k] = jinja.FromGoValue(v)
	}
	return data, nil
}

func messageValue(m Message) (jinja.Value, error) {
	v := jinja.NewDict()
	d := v.AsDict()
	d.Set("role", jinja.NewString(m.Role))
	d.Set("content", jinja.NewString(m.Content))
	if m.ReasoningContent != "" {
		d.Set("reasoning_content", jinja.NewString(m.ReasoningContent))
	}
	if len(m.ToolCalls) > 0 {
		calls := make([]jinja.Value, len(m.ToolCalls))
		for i, c := range m.ToolCalls {
			cv := jinja.NewDict()
			cd := cv.AsDict()
			if c.ID != "" {
				cd.Set("id", jinja.NewString(c.ID))
			}
			typ := c.Type
			if typ == "" {
				typ = "function"
			}
			cd.Set("type", jinja.NewString(typ))
			fv := jinja.NewDict()
			fd := fv.AsDict()
			fd.Set("name", jinja.NewString(c.Function.Name))
			args := jinja.NewString(c.Function.Arguments)
			if a, err := jsonValue([]byte(c.Function.Arguments)); err == nil && a.IsDict() {
				args = a
			}
			fd.Set("arguments", args)
			cd.Set("function", fv)
			calls[i] = cv
		}
		d.Set("tool_calls", jinja.NewList(calls))
	}
	if m.ToolCallID != "" {
		d.Set("tool_call_id", jinja.NewString(m.ToolCallID))
	}
	if m.Name != "" {
		d.Set("name", jinja.NewString(m.Name))
	}
	return v, nil
}

// maxJSONDepth bounds the nesting of JSON turned into template values.
const maxJSONDepth = 64

// jsonValue converts JSON to a template value, keeping object key order
// and the difference between integers and floats (as Python's json does).
func jsonValue(raw []byte) (jinja.Value, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := jsonNext(dec, 0)
	if err != nil {
		return jinja.Undefined(), err
	}
	if _, err := dec.Token(); err != io.EOF {
		return jinja.Undefined(), errors.New("trailing data after JSON value")
	}
	return v, nil
}

func jsonNext(dec *json.Decoder, depth int) (jinja.Value, error) {
	if depth > maxJSONDepth {
		return jinja.Undefined(), errors.New("JSON nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return jinja.Undefined(), err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			v := jinja.NewDict()
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return jinja.Undefined(), err
				}
				k, ok := kt.(string)
				if !ok {
					return jinja.Undefined(), errors.New("JSON object key is not a string")
				}
				val, err := jsonNext(dec, depth+1)
				if err != nil {
					return jinja.Undefined(), err
				}
				v.AsDict().Set(k, val)
			}
			_, err := dec.Token() // '}'
			return v, err
		case '[':
			var items []jinja.Value
			for dec.More() {
				val, err := jsonNext(dec, depth+1)
				if err != nil {
					return jinja.Undefined(), err
				}
				items = append(items, val)
			}
			_, err := dec.Token() // ']'
			return jinja.NewList(items), err
		}
		return jinja.Undefined(), fmt.Errorf("unexpected JSON delimiter %v", t)
	default:
		return jinja.FromGoValue(tok), nil
	}
}

// boundedRange is Jinja's range() with at most maxRange items.
func boundedRange(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
	var start, stop, step int64 = 0, 0, 1
	n := make([]int64, len(args))
	for i, a := range args {
		if !a.IsInt() {
			return jinja.Undefined(), fmt.Errorf("range: argument %d is not an integer", i+1)
		}
		n[i] = a.AsInt()
	}
	switch len(n) {
	case 1:
		stop = n[0]
	case 2:
		start, stop = n[0], n[1]
	case 3:
		start, stop, step = n[0], n[1], n[2]
	default:
		return jinja.Undefined(), fmt.Errorf("range: expected 1 to 3 arguments, got %d", len(args))
	}
	if step == 0 {
		return jinja.Undefined(), errors.New("range: step must not be zero")
	}
	var items []jinja.Value
	for i := start; (step > 0 && i < stop) || (step < 0 && i > stop); {
		if len(items) == maxRange {
			return jinja.Undefined(), fmt.Errorf("range: more than %d items", maxRange)
		}
		items = append(items, jinja.NewInt(i))
		next := i + step
		if (step > 0) != (next > i) {
			break // overflow
		}
		i = next
	}
	return jinja.NewList(items), nil
}

// strftimeNow returns strftime_now(format) for the given time (zero: the
// time of the call).
func strftimeNow(at time.Time) func([]jinja.Value, map[string]jinja.Value) (jinja.Value, error) {
	return func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		if len(args) != 1 || !args[0].IsString() {
			return jinja.Undefined(), errors.New("strftime_now: expected one format string")
		}
		t := at
		if t.IsZero() {
			t = time.Now()
		}
		return jinja.NewString(strftime(args[0].AsString(), t)), nil
	}
}

// strftime formats t with the C/Python directives chat templates use.
func strftime(format string, t time.Time) string {
	var sb strings.Builder
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' || i+1 == len(format) {
			sb.WriteByte(c)
			continue
		}
		i++
		switch format[i] {
		case 'Y':
			fmt.Fprintf(&sb, "%04d", t.Year())
		case 'y':
			fmt.Fprintf(&sb, "%02d", t.Year()%100)
		case 'm':
			fmt.Fprintf(&sb, "%02d", int(t.Month()))
		case 'd':
			fmt.Fprintf(&sb, "%02d", t.Day())
		case 'e':
			fmt.Fprintf(&sb, "%2d", t.Day())
		case 'j':
			fmt.Fprintf(&sb, "%03d", t.YearDay())
		case 'H':
			fmt.Fprintf(&sb, "%02d", t.Hour())
		case 'I':
			fmt.Fprintf(&sb, "%02d", (t.Hour()+11)%12+1)
		case 'M':
			fmt.Fprintf(&sb, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&sb, "%02d", t.Second())
		case 'p':
			sb.WriteString(t.Format("PM"))
		case 'b', 'h':
			sb.WriteString(t.Format("Jan"))
		case 'B':
			sb.WriteString(t.Format("January"))
		case 'a':
			sb.WriteString(t.Format("Mon"))
		case 'A':
			sb.WriteString(t.Format("Monday"))
		case 'Z':
			sb.WriteString(t.Format("MST"))
		case 'z':
			sb.WriteString(t.Format("-0700"))
		case '%':
			sb.WriteByte('%')
		default:
			sb.WriteByte('%')
			sb.WriteByte(format[i])
		}
	}
	return sb.String()
}

var (
	macroDef = regexp.MustCompile(`\{%-?\s*macro\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(`)
	macroEnd = regexp.MustCompile(`\{%-?\s*endmacro\b`)
	callSite = regexp.MustCompile(`\b([A-Za-z_][A-Za-z0-9_]*)\s*\(`)
)

// checkMacroRecursion rejects templates whose macros call themselves,
// directly or through other macros: Go cannot recover from the stack
// overflow that unbounded recursion in the engine would cause.
func checkMacroRecursion(src string) error {
	defs := macroDef.FindAllStringSubmatchIndex(src, -1)
	if len(defs) == 0 {
		return nil
	}
	bodies := map[string]string{}
	for i, d := range defs {
		name := src[d[2]:d[3]]
		end := len(src)
		if i+1 < len(defs) {
			end = defs[i+1][0]
		}
		body := src[d[1]:end]
		if loc := macroEnd.FindStringIndex(body); loc != nil {
			body = body[:loc[0]]
		}
		bodies[name] += body
	}
	calls := map[string][]string{}
	for name, body := range bodies {
		for _, m := range callSite.FindAllStringSubmatch(body, -1) {
			if _, ok := bodies[m[1]]; ok {
				calls[name] = append(calls[name], m[1])
			}
		}
	}
	const (
		unseen = iota
		active
		finished
	)
	state := map[string]int{}
	var visit func(string) bool
	visit = func(n string) bool {
		switch state[n] {
		case active:
			return true
		case finished:
			return false
		}
		state[n] = active
		for _, c := range calls[n] {
			if visit(c) {
				return true
			}
		}
		state[n] = finished
		return false
	}
	for name := range bodies {
		if visit(name) {
			return fmt.Errorf("%w (macro %q)", ErrTemplateRecursive, name)
		}
	}
	return nil
}
