package tokenizer

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/testdata"
)

type chatCase struct {
	Model               string         `json:"model"`
	TemplateFile        string         `json:"template_file"`
	Messages            []Message      `json:"messages"`
	AddGenerationPrompt bool           `json:"add_generation_prompt"`
	Kwargs              map[string]any `json:"kwargs"`
	Expected            string         `json:"expected"`
}

func TestRenderChatCases(t *testing.T) {
	dir := testdata.Dir(t, "tokenizers", "chat-templates")
	f, err := os.Open(filepath.Join(dir, "cases.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	n, matched := 0, 0
	for sc.Scan() {
		n++
		var c chatCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatalf("case %d: %v", n, err)
		}
		src, err := os.ReadFile(filepath.Join(dir, c.TemplateFile))
		if err != nil {
			t.Fatal(err)
		}
		got, err := RenderChat(string(src), c.Messages, ChatOptions{AddGenerationPrompt: c.AddGenerationPrompt, Kwargs: c.Kwargs})
		if err != nil {
			t.Errorf("case %d (%s): %v", n, c.Model, err)
			continue
		}
		if got != c.Expected {
			t.Errorf("case %d (%s, kwargs %v, add_generation_prompt %v):\n got %q\nwant %q", n, c.Model, c.Kwargs, c.AddGenerationPrompt, got, c.Expected)
			continue
		}
		matched++
	}
	if n == 0 {
		t.Fatal("no cases")
	}
	t.Logf("%d/%d chat template cases match", matched, n)
}

// TestRenderChatModelTemplates renders the other shipped templates for a
// simple conversation, a tool call and a tool answer.
func TestRenderChatModelTemplates(t *testing.T) {
	dir := testdata.Dir(t, "tokenizers", "chat-templates")
	now := time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)
	simple := []Message{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "Hi"}}
	tools := []Message{
		{Role: "user", Content: "Weather in Paris?"},
		{Role: "assistant", ToolCalls: []ToolCall{{ID: "c1", Function: FunctionCall{Name: "get_weather", Arguments: `{"city": "Paris", "days": 2}`}}}},
		{Role: "tool", Content: `{"temp": 21}`, ToolCallID: "c1"},
	}
	toolDefs := []json.RawMessage{json.RawMessage(`{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}`)}
	tests := []struct {
		file     string
		messages []Message
		opts     ChatOptions
		want     []string // substrings
	}{
		{"llama-Llama-3.1-8B-Instruct.jinja", simple, ChatOptions{AddGenerationPrompt: true, BOSToken: "<|begin_of_text|>", Now: now},
			[]string{"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"}},
		{"llama-Llama-3.2-3B-Instruct.jinja", simple, ChatOptions{AddGenerationPrompt: true, BOSToken: "<|begin_of_text|>", Now: now},
			[]string{"Today Date: 25 Nov 2026\n\nBe brief.<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n"}},
		{"Qwen2.5-7B-Instruct.jinja", simple, ChatOptions{AddGenerationPrompt: true},
			[]string{"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"}},
		{"Qwen2.5-7B-Instruct.jinja", tools, ChatOptions{AddGenerationPrompt: true, Tools: toolDefs},
			[]string{`<tools>` + "\n" + `{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}`,
				"<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>",
				"<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n"}},
		{"llama-Llama-3.1-8B-Instruct.jinja", tools, ChatOptions{AddGenerationPrompt: true, BOSToken: "<|begin_of_text|>", Tools: toolDefs},
			[]string{`{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}<|eot_id|>`, "<|start_header_id|>ipython<|end_header_id|>\n\n"}},
		{"Qwen3-0.6B.jinja", []Message{{Role: "user", Content: "2+2?"}, {Role: "assistant", Content: "4", ReasoningContent: "easy"}, {Role: "user", Content: "Sure?"}}, ChatOptions{AddGenerationPrompt: true},
			[]string{"<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join(dir, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := RenderChat(string(src), tc.messages, tc.opts)
			if err != nil {
				t.Fatalf("RenderChat: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("got %q\nwant it to contain %q", got, w)
				}
			}
		})
	}
}

func TestFallbackTemplates(t *testing.T) {
	conv := []Message{{Role: "system", Content: "S"}, {Role: "user", Content: "Hi"}, {Role: "assistant", Content: "Hello"}, {Role: "user", Content: "Bye"}}
	opts := ChatOptions{AddGenerationPrompt: true, BOSToken: "<s>", EOSToken: "</s>"}
	tests := []struct{ name, want string }{
		{"chatml", "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"},
		{"llama2", "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]"},
		{"llama3", "<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
		{"zephyr", "<|system|>\nS</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n<|user|>\nBye</s>\n<|assistant|>\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, err := FallbackTemplate(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			got, err := RenderChat(src, conv, opts)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %q\nwant %q", got, tc.want)
			}
		})
	}
	if _, err := FallbackTemplate("vicuna"); err == nil {
		t.Error("FallbackTemplate(vicuna) succeeded")
	}
	src, _ := FallbackTemplate("llama2")
	if _, err := RenderChat(src, []Message{{Role: "assistant", Content: "x"}}, opts); err == nil {
		t.Error("llama2 template accepted a conversation starting with the assistant")
	}
}

func TestGuessFallbackTemplate(t *testing.T) {
	for folder, want := range map[string]string{"qwen2": "chatml", "llama3": "llama3", "gpt2": "chatml", "llama2-spm": "chatml"} {
		tok := loadHF(t, folder)
		got := GuessFallbackTemplate(func(s string) bool { _, ok := tok.TokenID(s); return ok })
		if got != want {
			t.Errorf("%s: got %q, want %q", folder, got, want)
		}
		if tmpl, builtin := tok.ChatTemplateFor(); !builtin || tmpl != fallbackTemplates[want] {
			t.Errorf("%s: ChatTemplateFor() = builtin %v, want the %s fallback", folder, builtin, want)
		}
	}
	has := func(set ...string) func(string) bool {
		return func(s string) bool {
			for _, x := range set {
				if x == s {
					return true
				}
			}
			return false
		}
	}
	if got := GuessFallbackTemplate(has("[INST]", "[/INST]")); got != "llama2" {
		t.Errorf("[INST] vocabulary: got %q, want llama2", got)
	}
	if got := GuessFallbackTemplate(has("<|user|>")); got != "zephyr" {
		t.Errorf("<|user|> vocabulary: got %q, want zephyr", got)
	}
}

func TestRenderChatBounded(t *testing.T) {
	tests := []struct {
		name, src string
		want      error // nil: any error
	}{
		{"huge range", `{% for i in range(100000000) %}x{% endfor %}`, nil},
		{"recursive macro", `{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}`, ErrTemplateRecursive},
		{"mutual recursion", `{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}{{ a() }}{% endmacro %}{{ a() }}`, ErrTemplateRecursive},
		{"too large", strings.Repeat("x", MaxTemplateBytes+1), ErrTemplateTooLarge},
		// About half a second of work: longer than the timeout, short
		// enough that the abandoned render ends soon after.
		{"slow", `{% for i in range(700) %}{% for j in range(700) %}{% endfor %}{% endfor %}`, ErrTemplateTimeout},
		{"syntax", `{% if %}`, nil},
		{"raise", `{{ raise_exception('no') }}`, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := RenderChat(tc.src, nil, ChatOptions{Timeout: 20 * time.Millisecond})
			if err == nil {
				t.Fatal("RenderChat succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestStrftime(t *testing.T) {
	at := time.Date(2024, 7, 6, 15, 4, 5, 0, time.UTC)
	if got, want := strftime("%d %b %Y|%Y-%m-%d %H:%M:%S %A %B %%", at), "06 Jul 2024|2024-07-06 15:04:05 Saturday July %"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func FuzzRenderChat(f *testing.F) {
	for _, s := range []string{"{{ messages[0].content }}", "{% for m in messages %}{{ m.role }}{% endfor %}", "{% set x = namespace(a=1) %}{{ x.a }}", "{{ 'a' * 3 }}"} {
		f.Add(s)
	}
	msgs := []Message{{Role: "user", Content: "hi"}}
	f.Fuzz(func(t *testing.T, src string) {
		if strings.Contains(src, "*") {
			// The engine repeats strings without a limit; see the report.
			return
		}
		_, _ = RenderChat(src, msgs, ChatOptions{Timeout: time.Second})
	})
}
