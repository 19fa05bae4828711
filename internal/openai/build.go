package openai

import "crypto/rand"

// NewCompletionID returns a fresh completion id, "cmpl-" and 26 random
// base32 characters (130 bits).
func NewCompletionID() string { return "cmpl-" + rand.Text() }

// NewChatID returns a fresh chat completion id, "chatcmpl-" and 26 random
// base32 characters.
func NewChatID() string { return "chatcmpl-" + rand.Text() }

// NewUsage returns the usage of a request; cached is the number of prompt
// tokens served from the prefix cache, reported only when positive.
func NewUsage(prompt, completion, cached int) Usage {
	u := Usage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}
	if cached > 0 {
		u.PromptTokensDetails = &PromptTokensDetails{CachedTokens: cached}
	}
	return u
}

// OwnedBy is the "owned_by" of every model this server lists.
const OwnedBy = "npumesh"

// NewModelList returns the body of GET /v1/models for ids, all created at
// created (Unix seconds); no ids give an empty "data" array, not null.
func NewModelList(ids []string, created int64) ModelList {
	data := make([]Model, len(ids))
	for i, id := range ids {
		data[i] = Model{ID: id, Object: ObjectModel, Created: created, OwnedBy: OwnedBy}
	}
	return ModelList{Object: ObjectList, Data: data}
}

// finishPtr turns "" into JSON null.
func finishPtr(finish string) *string {
	if finish == "" {
		return nil
	}
	return &finish
}

// NewCompletionResponse returns the body of a non-streamed completion.
func NewCompletionResponse(id, model string, created int64, text, finish string, usage Usage) *CompletionResponse {
	return &CompletionResponse{
		ID: id, Object: ObjectTextCompletion, Created: created, Model: model,
		Choices: []CompletionChoice{{Text: text, FinishReason: finishPtr(finish)}},
		Usage:   &usage,
	}
}

// NewCompletionChunk returns one streamed completion event. finish is ""
// (null) until the last chunk, which carries FinishStop or FinishLength.
func NewCompletionChunk(id, model string, created int64, text, finish string) *CompletionChunk {
	return &CompletionChunk{
		ID: id, Object: ObjectTextCompletion, Created: created, Model: model,
		Choices: []CompletionChoice{{Text: text, FinishReason: finishPtr(finish)}},
	}
}

// NewCompletionUsageChunk returns the chunk sent before [DONE] when the
// request set stream_options.include_usage: no choices, only usage.
func NewCompletionUsageChunk(id, model string, created int64, usage Usage) *CompletionChunk {
	return &CompletionChunk{
		ID: id, Object: ObjectTextCompletion, Created: created, Model: model,
		Choices: []CompletionChoice{}, Usage: &usage,
	}
}

// NewChatResponse returns the body of a non-streamed chat completion.
func NewChatResponse(id, model string, created int64, content, finish string, usage Usage) *ChatCompletionResponse {
	return &ChatCompletionResponse{
		ID: id, Object: ObjectChatCompletion, Created: created, Model: model,
		Choices: []ChatChoice{{
			Message:      ResponseMessage{Role: RoleAssistant, Content: content},
			FinishReason: finish,
		}},
		Usage: usage,
	}
}

// NewChatRoleChunk returns the first chunk of a chat stream: the assistant
// role and empty content, as OpenAI sends before any text.
func NewChatRoleChunk(id, model string, created int64) *ChatCompletionChunk {
	empty := ""
	return chatChunk(id, model, created, ChatDelta{Role: RoleAssistant, Content: &empty}, "")
}

// NewChatChunk returns a chat chunk carrying text. finish is "" (null) until
// the last chunk; a last chunk without text has an empty delta, as OpenAI's.
func NewChatChunk(id, model string, created int64, text, finish string) *ChatCompletionChunk {
	var d ChatDelta
	if text != "" || finish == "" {
		d.Content = &text
	}
	return chatChunk(id, model, created, d, finish)
}

// NewChatUsageChunk returns the chunk sent before [DONE] when the request set
// stream_options.include_usage: no choices, only usage.
func NewChatUsageChunk(id, model string, created int64, usage Usage) *ChatCompletionChunk {
	return &ChatCompletionChunk{
		ID: id, Object: ObjectChatChunk, Created: created, Model: model,
		Choices: []ChatChunkChoice{}, Usage: &usage,
	}
}

func chatChunk(id, model string, created int64, d ChatDelta, finish string) *ChatCompletionChunk {
	return &ChatCompletionChunk{
		ID: id, Object: ObjectChatChunk, Created: created, Model: model,
		Choices: []ChatChunkChoice{{Delta: d, FinishReason: finishPtr(finish)}},
	}
}
