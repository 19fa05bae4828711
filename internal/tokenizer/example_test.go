package tokenizer_test

import (
	"fmt"

	"github.com/npumesh/npumesh/internal/tokenizer"
)

func ExampleRenderChat() {
	tmpl, _ := tokenizer.FallbackTemplate("chatml")
	prompt, err := tokenizer.RenderChat(tmpl, []tokenizer.Message{
		{Role: "system", Content: "Be brief."},
		{Role: "user", Content: "Hi"},
	}, tokenizer.ChatOptions{AddGenerationPrompt: true})
	if err != nil {
		panic(err)
	}
	fmt.Printf("%q\n", prompt)
	// Output:
	// "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
}
