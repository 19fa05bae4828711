package tokenizer

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/npumesh/npumesh/internal/testdata"
)

// ggufConfigFromJSON lays a tokenizer.json out as GGUF metadata holds it.
func ggufConfigFromJSON(t *testing.T, folder, pre string, addBOS bool) GGUFBPEConfig {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testdata.Dir(t, "tokenizers", folder), "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		AddedTokens []struct {
			ID      int32  `json:"id"`
			Content string `json:"content"`
			Special bool   `json:"special"`
		} `json:"added_tokens"`
		Model struct {
			Vocab  map[string]int32 `json:"vocab"`
			Merges []string         `json:"merges"`
		} `json:"model"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	size := 0
	for _, id := range f.Model.Vocab {
		size = max(size, int(id)+1)
	}
	for _, a := range f.AddedTokens {
		size = max(size, int(a.ID)+1)
	}
	cfg := GGUFBPEConfig{Tokens: make([]string, size), Types: make([]int32, size), Merges: f.Model.Merges, BOS: -1, EOS: -1, AddBOS: addBOS, Pre: pre}
	for i := range cfg.Types {
		cfg.Types[i] = 1
	}
	for tok, id := range f.Model.Vocab {
		cfg.Tokens[id] = tok
	}
	for _, a := range f.AddedTokens {
		cfg.Tokens[a.ID] = a.Content
		cfg.Types[a.ID] = 4
		if a.Special {
			cfg.Types[a.ID] = 3
		}
		switch a.Content {
		case "<|begin_of_text|>":
			cfg.BOS = a.ID
		case "<|end_of_text|>", "<|endoftext|>":
			cfg.EOS = a.ID
		}
	}
	return cfg
}

func TestNewBPEFromGGUFExpected(t *testing.T) {
	for _, c := range []struct {
		folder, pre string
		addBOS      bool
	}{{"qwen2", "qwen2", false}, {"llama3", "llama-bpe", true}} {
		t.Run(c.folder, func(t *testing.T) {
			tok, err := NewBPEFromGGUF(ggufConfigFromJSON(t, c.folder, c.pre, c.addBOS))
			if err != nil {
				t.Fatal(err)
			}
			lines := readExpected(t, c.folder)
			matched := 0
			for i, l := range lines {
				got, err := tok.Encode(l.Text, l.AddSpecialTokens)
				if err != nil {
					t.Errorf("line %d: %v", i+1, err)
					continue
				}
				if !slicesEqual(got, l.IDs) {
					t.Errorf("line %d %q: got %v, want %v", i+1, l.Text, got, l.IDs)
					continue
				}
				matched++
			}
			t.Logf("%s: %d/%d lines matched", c.folder, matched, len(lines))
		})
	}
}

func slicesEqual(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestNewBPEFromGGUFUnknownPre(t *testing.T) {
	_, err := NewBPEFromGGUF(GGUFBPEConfig{Tokens: []string{"a"}, BOS: -1, EOS: -1, Pre: "deepseek-llm"})
	if !errors.Is(err, ErrUnsupported) || err == nil || !contains(err.Error(), "deepseek-llm") {
		t.Fatalf("err = %v", err)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// SmolLM splits digits one by one before the GPT-2 regex; gpt2 keeps runs.
func TestNewBPEFromGGUFSmolLMDigits(t *testing.T) {
	tokens := []string{"1", "2", "3", "Ġ", "12", "123", "Ġ1"}
	merges := []string{"1 2", "12 3", "Ġ 1"}
	for pre, want := range map[string][]int32{"gpt2": {3, 5}, "smollm": {3, 0, 1, 2}} {
		tok, err := NewBPEFromGGUF(GGUFBPEConfig{Tokens: tokens, Merges: merges, BOS: -1, EOS: -1, Pre: pre})
		if err != nil {
			t.Fatal(err)
		}
		got, err := tok.Encode(" 123", false)
		if err != nil || !slicesEqual(got, want) {
			t.Errorf("%s: Encode(\" 123\") = %v, %v; want %v", pre, got, err, want)
		}
	}
}
