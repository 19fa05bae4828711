package engine

import (
	"context"
	"testing"

	"github.com/npumesh/npumesh/internal/tokenizer"
)

// byteLevelVocab is the 256 GPT-2 byte tokens (ids 0-255, in the
// bytes-to-unicode order), a few merges and an <|endoftext|> control token.
func byteLevelVocab() *synthBPE {
	var bs []int
	for b := '!'; b <= '~'; b++ {
		bs = append(bs, int(b))
	}
	for b := 0xA1; b <= 0xAC; b++ {
		bs = append(bs, b)
	}
	for b := 0xAE; b <= 0xFF; b++ {
		bs = append(bs, b)
	}
	char := map[int]rune{}
	for _, b := range bs {
		char[b] = rune(b)
	}
	n := 0
	for b := range 256 {
		if _, ok := char[b]; !ok {
			char[b] = rune(256 + n)
			n++
		}
	}
	v := &synthBPE{pre: "qwen2", bos: -1}
	for b := range 256 {
		v.tokens = append(v.tokens, string(char[b]))
		v.types = append(v.types, 1)
	}
	for _, m := range [][2]string{{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"Ġ", "w"}, {"Ġw", "o"}} {
		v.merges = append(v.merges, m[0]+" "+m[1])
		v.tokens = append(v.tokens, m[0]+m[1])
		v.types = append(v.types, 1)
	}
	v.eos = int32(len(v.tokens))
	v.tokens = append(v.tokens, "<|endoftext|>")
	v.types = append(v.types, 3)
	return v
}

func TestLoadGGUFByteLevelBPE(t *testing.T) {
	v := byteLevelVocab()
	c := synthConfig{arch: "qwen2", dim: 32, hidden: 48, layers: 2, heads: 4, kvHeads: 2,
		vocab: len(v.tokens), ctx: 64, ropeBase: 1e6, bias: true, tied: true, seed: 11, bpe: v}
	sm := writeSynthetic(t, c)
	m, err := Load(sm.path, Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tok := m.Tokenizer()
	text := "hello world<|endoftext|> héllo\n"
	ids, err := tok.Encode(text, true)
	if err != nil {
		t.Fatal(err)
	}
	// "hello" is one merged token, " wo" another, the control token is
	// matched whole, and Qwen2 adds no BOS.
	if len(ids) < 2 || ids[0] != 256+3 || ids[1] != 256+5 {
		t.Fatalf("Encode(%q) = %v", text, ids)
	}
	found := false
	for _, id := range ids {
		found = found || id == v.eos
	}
	if !found {
		t.Fatalf("Encode(%q) = %v: no <|endoftext|> (%d)", text, ids, v.eos)
	}
	// Decode skips special tokens, as the HF path does.
	if back, want := tokenizer.Decode(tok, ids), "hello world héllo\n"; back != want {
		t.Fatalf("Decode(Encode(%q)) = %q", text, back)
	}
	if bos, eos := m.SpecialTokens(); bos != "" || eos != "<|endoftext|>" {
		t.Fatalf("SpecialTokens() = %q, %q", bos, eos)
	}
	res, err := m.Generate(context.Background(), Request{Prompt: "hello world", MaxTokens: 5}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.PromptTokens != 5 || res.CompletionTokens == 0 {
		t.Fatalf("Generate: %+v", res)
	}
}

func TestLoadGGUFUnknownPre(t *testing.T) {
	v := byteLevelVocab()
	v.pre = "no-such-pre"
	c := synthConfig{arch: "qwen2", dim: 32, hidden: 48, layers: 1, heads: 4, kvHeads: 2,
		vocab: len(v.tokens), ctx: 64, ropeBase: 1e6, tied: true, seed: 3, bpe: v}
	if _, err := Load(writeSynthetic(t, c).path, Options{Threads: 1}); err == nil {
		t.Fatal("Load accepted an unknown tokenizer.ggml.pre")
	}
}
