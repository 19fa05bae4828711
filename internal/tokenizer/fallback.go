package tokenizer

import "fmt"

// Fallback chat templates for models that ship none, written for
// RenderChat (whitespace control as transformers renders them).
var fallbackTemplates = map[string]string{
	"chatml": `{%- for message in messages %}` +
		`{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}` +
		`{%- endfor %}` +
		`{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}`,

	// Meta's Llama-2-chat format: the system prompt goes inside the first
	// user turn.
	"llama2": `{%- if messages and messages[0].role == 'system' %}` +
		`{%- set loop_messages = messages[1:] %}{%- set system_message = messages[0].content %}` +
		`{%- else %}{%- set loop_messages = messages %}{%- set system_message = '' %}{%- endif %}` +
		`{%- for message in loop_messages %}` +
		`{%- if (message.role == 'user') != (loop.index0 % 2 == 0) %}` +
		`{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}` +
		`{%- endif %}` +
		`{%- if loop.index0 == 0 and system_message %}` +
		`{%- set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message.content %}` +
		`{%- else %}{%- set content = message.content %}{%- endif %}` +
		`{%- if message.role == 'user' %}{{- bos_token + '[INST] ' + content.strip() + ' [/INST]' }}` +
		`{%- elif message.role == 'assistant' %}{{- ' ' + content.strip() + ' ' + eos_token }}{%- endif %}` +
		`{%- endfor %}`,

	"llama3": `{%- for message in messages %}` +
		`{%- set content = '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content | trim + '<|eot_id|>' %}` +
		`{%- if loop.index0 == 0 %}{%- set content = bos_token + content %}{%- endif %}` +
		`{{- content }}` +
		`{%- endfor %}` +
		`{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}`,

	"zephyr": `{%- for message in messages %}` +
		`{{- '<|' + message.role + '|>\n' + message.content + eos_token + '\n' }}` +
		`{%- endfor %}` +
		`{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}`,
}

// FallbackTemplate returns the built-in chat template called name:
// "chatml", "llama2", "llama3" or "zephyr".
func FallbackTemplate(name string) (string, error) {
	t, ok := fallbackTemplates[name]
	if !ok {
		return "", fmt.Errorf("no fallback chat template %q (have chatml, llama2, llama3, zephyr)", name)
	}
	return t, nil
}

// GuessFallbackTemplate names the fallback template that fits a
// vocabulary, judged by which marker tokens has reports: <|im_start|> →
// chatml, <|start_header_id|> → llama3, [INST] → llama2, <|user|> →
// zephyr, and chatml when none is present.
func GuessFallbackTemplate(has func(token string) bool) string {
	switch {
	case has("<|im_start|>"):
		return "chatml"
	case has("<|start_header_id|>"):
		return "llama3"
	case has("[INST]"):
		return "llama2"
	case has("<|user|>"):
		return "zephyr"
	}
	return "chatml"
}

// ChatTemplateFor returns the template to render t's chats with: the
// model's own default template when tokenizer_config.json has one, else
// the fallback that fits its vocabulary. builtin says it is a fallback.
func (t *HF) ChatTemplateFor() (tmpl string, builtin bool) {
	if tmpl, ok := t.ChatTemplate(""); ok && tmpl != "" {
		return tmpl, false
	}
	name := GuessFallbackTemplate(func(s string) bool { _, ok := t.tokenID(s); return ok })
	return fallbackTemplates[name], true
}
