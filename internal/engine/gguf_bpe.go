package engine

import (
	"errors"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/tokenizer"
)

// bpeFromGGUF builds the byte-level BPE tokenizer (tokenizer.ggml.model
// "gpt2": Llama-3, Qwen2, SmolLM2 GGUFs) from tokenizer.ggml.*.
func bpeFromGGUF(f *gguf.File) (*tokenizer.HF, error) {
	var err error
	cfg := tokenizer.GGUFBPEConfig{BOS: -1, EOS: -1}
	if cfg.Tokens, err = f.Strings("tokenizer.ggml.tokens"); err != nil {
		return nil, err
	}
	if cfg.Types, err = f.Int32s("tokenizer.ggml.token_type"); err != nil && !errors.Is(err, gguf.ErrNotFound) {
		return nil, err
	}
	if cfg.Merges, err = f.Strings("tokenizer.ggml.merges"); err != nil && !errors.Is(err, gguf.ErrNotFound) {
		return nil, err
	}
	if cfg.Pre, err = f.String("tokenizer.ggml.pre"); err != nil && !errors.Is(err, gguf.ErrNotFound) {
		return nil, err
	}
	if cfg.Pre == "" {
		cfg.Pre = "default"
	}
	// Ids are stored as uint32 with 0xFFFFFFFF (or any id past the
	// vocabulary) meaning none.
	optID := func(key string) (int32, error) {
		v, err := f.Uint(key)
		switch {
		case errors.Is(err, gguf.ErrNotFound):
			return -1, nil
		case err != nil:
			return 0, err
		case v >= uint64(len(cfg.Tokens)):
			return -1, nil
		}
		return int32(v), nil
	}
	if cfg.BOS, err = optID("tokenizer.ggml.bos_token_id"); err != nil {
		return nil, err
	}
	if cfg.EOS, err = optID("tokenizer.ggml.eos_token_id"); err != nil {
		return nil, err
	}
	// Without add_bos_token, Llama-3 adds BOS and Qwen2 does not.
	cfg.AddBOS = cfg.Pre == "llama-bpe" || cfg.Pre == "llama3"
	if v, err := f.Bool("tokenizer.ggml.add_bos_token"); err == nil {
		cfg.AddBOS = v
	} else if !errors.Is(err, gguf.ErrNotFound) {
		return nil, err
	}
	return tokenizer.NewBPEFromGGUF(cfg)
}
