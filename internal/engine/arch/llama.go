package arch

import "github.com/npumesh/npumesh/internal/gguf"

// llama covers Llama 1-3, TinyLlama, SmolLM, Mistral 7B (run without a
// sliding window) and llama2.c exports: llama.cpp writes all of them as
// "llama", with Q and K permuted for the normal RoPE layout.
func init() {
	Register("llama", func(f *gguf.File) (Params, error) {
		p, err := ReadLlamaFamily(f, "llama")
		if err != nil {
			return p, err
		}
		p.Scaling, err = ReadRopeScaling(f, "llama")
		return p, err
	})
}
