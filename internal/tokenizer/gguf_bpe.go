package tokenizer

import (
	"encoding/json"
	"fmt"
)

// GGUFBPEConfig is a byte-level BPE tokenizer as GGUF metadata holds it
// (tokenizer.ggml.model = "gpt2").
type GGUFBPEConfig struct {
	Tokens []string // tokenizer.ggml.tokens, by id
	Types  []int32  // tokenizer.ggml.token_type: 1 normal, 3 control, 4 user-defined, ...
	Merges []string // tokenizer.ggml.merges, "a b"
	BOS    int32    // -1: none
	EOS    int32    // -1: none
	AddBOS bool     // tokenizer.ggml.add_bos_token
	Pre    string   // tokenizer.ggml.pre: "gpt2", "llama-bpe", "qwen2", "smollm"
}

// NewBPEFromGGUF builds the byte-level BPE tokenizer from GGUF-style
// metadata. Control (3) and user-defined (4) tokens become added special
// tokens, matched in the input before the model runs.
func NewBPEFromGGUF(cfg GGUFBPEConfig) (*HF, error) {
	var regex, normalizer string
	ignoreMerges := false
	switch cfg.Pre {
	case "gpt2", "smollm", "default", "":
		regex = regexGPT2 // knownRegexes (split.go) selects the scanner
	case "llama-bpe", "llama3":
		regex, ignoreMerges = regexLlama3, true
	case "qwen2":
		regex, normalizer = regexQwen2, "NFC"
	default:
		return nil, fmt.Errorf("tokenizer.ggml.pre %q (known: gpt2, llama-bpe, qwen2, smollm): %w", cfg.Pre, ErrUnsupported)
	}
	if len(cfg.Types) != 0 && len(cfg.Types) != len(cfg.Tokens) {
		return nil, fmt.Errorf("%d token types for %d tokens", len(cfg.Types), len(cfg.Tokens))
	}
	vocab := make(map[string]int32, len(cfg.Tokens))
	var added []map[string]any
	for id, tok := range cfg.Tokens {
		typ := int32(1)
		if len(cfg.Types) != 0 {
			typ = cfg.Types[id]
		}
		if (typ == 3 || typ == 4) && tok != "" {
			added = append(added, map[string]any{
				"id": id, "content": tok, "special": true, "normalized": false,
			})
			continue
		}
		if _, dup := vocab[tok]; !dup {
			vocab[tok] = int32(id)
		}
	}
	merges := cfg.Merges
	if merges == nil {
		merges = []string{}
	}
	var norm any
	if normalizer != "" {
		norm = map[string]any{"type": normalizer}
	}
	split := []any{map[string]any{"type": "Split", "pattern": map[string]any{"Regex": regex}, "behavior": "Isolated", "invert": false}}
	if cfg.Pre == "smollm" {
		// SmolLM's tokenizer.json: individual digits, then the GPT-2 regex.
		split = []any{
			map[string]any{"type": "Digits", "individual_digits": true},
			split[0],
		}
	}
	f := map[string]any{
		"added_tokens": added,
		"normalizer":   norm,
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": append(split,
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
		)},
		"decoder": map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		"model": map[string]any{
			"type": "BPE", "vocab": vocab, "merges": merges, "ignore_merges": ignoreMerges,
		},
	}
	data, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	t, err := FromJSON(data, nil)
	if err != nil {
		return nil, fmt.Errorf("byte-level BPE from GGUF: %w", err)
	}
	size := int32(len(t.tokens))
	if cfg.BOS >= size || cfg.EOS >= size {
		return nil, fmt.Errorf("bos %d / eos %d out of range of %d tokens", cfg.BOS, cfg.EOS, size)
	}
	t.bos, t.eos = max(cfg.BOS, -1), max(cfg.EOS, -1)
	t.post = postProcessor{}
	if cfg.AddBOS && t.bos >= 0 {
		t.post.prefix = []int32{t.bos}
	}
	if t.eos >= 0 {
		t.eog[t.eos] = true
	}
	return t, nil
}
