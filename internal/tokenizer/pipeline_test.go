package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// spmJSON is a tiny SentencePiece-style BPE (Llama-2 layout): byte
// fallback, Prepend/Replace normalizer, Replace/ByteFallback/Fuse/Strip
// decoder.
func spmJSON(mergesJSON string) string {
	var vocab []string
	vocab = append(vocab, `"<unk>":0`, `"<s>":1`, `"</s>":2`)
	for b := 0; b < 256; b++ {
		vocab = append(vocab, fmt.Sprintf(`"<0x%02X>":%d`, b, 3+b))
	}
	vocab = append(vocab, `"▁":259`, `"a":260`, `"b":261`, `"ab":262`, `"▁ab":263`)
	return `{"added_tokens":[{"id":0,"content":"<unk>","special":true,"normalized":false},{"id":1,"content":"<s>","special":true,"normalized":false},{"id":2,"content":"</s>","special":true,"normalized":false}],` +
		`"normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]},` +
		`"pre_tokenizer":null,` +
		`"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}},` +
		`"decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},` +
		`"model":{"type":"BPE","unk_token":"<unk>","byte_fallback":true,"fuse_unk":true,"vocab":{` + strings.Join(vocab, ",") + `},"merges":` + mergesJSON + `}}`
}

func mustJSON(t *testing.T, tokJSON, cfgJSON string) *HF {
	t.Helper()
	var cfg []byte
	if cfgJSON != "" {
		cfg = []byte(cfgJSON)
	}
	tok, err := FromJSON([]byte(tokJSON), cfg)
	if err != nil {
		t.Fatalf("FromJSON: %v", err)
	}
	return tok
}

func TestSPMStyleBPE(t *testing.T) {
	for _, merges := range []string{`["a b","▁ ab"]`, `[["a","b"],["▁","ab"]]`} {
		tok := mustJSON(t, spmJSON(merges), "")
		tests := []struct {
			text       string
			addSpecial bool
			want       []int32
		}{
			{"ab ab", false, []int32{263, 263}},
			{"ab ab", true, []int32{1, 263, 263}},
			{"abc", false, []int32{263, 3 + 'c'}},
			{"é", false, []int32{259, 3 + 0xC3, 3 + 0xA9}},
			{"a<s>b", false, []int32{259, 260, 1, 259, 261}},
			{"", true, []int32{1}},
		}
		for _, tc := range tests {
			got, err := tok.Encode(tc.text, tc.addSpecial)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("merges %s: Encode(%q, %v) = %v, want %v", merges, tc.text, tc.addSpecial, got, tc.want)
			}
			if dec := Decode(tok, got); !strings.Contains(tc.text, "<s>") && dec != tc.text {
				t.Errorf("Decode(%v) = %q, want %q", got, dec, tc.text)
			}
		}
	}
}

func TestConfigAddsSpecialTokens(t *testing.T) {
	cfg := `{"add_bos_token": false, "add_eos_token": true, "bos_token": "<s>", "eos_token": {"content": "</s>"}}`
	tok := mustJSON(t, spmJSON(`["a b","▁ ab"]`), cfg)
	got, _ := tok.Encode("ab", true)
	if want := []int32{263, 2}; !slices.Equal(got, want) {
		t.Errorf("Encode = %v, want %v", got, want)
	}
	if tok.BOS() != 1 || tok.EOS() != 2 || !tok.IsEOG(2) {
		t.Errorf("BOS %d EOS %d IsEOG(2) %v, want 1 2 true", tok.BOS(), tok.EOS(), tok.IsEOG(2))
	}
}

func TestUnknownFused(t *testing.T) {
	tok := mustJSON(t, `{"model":{"type":"BPE","unk_token":"<unk>","fuse_unk":true,"vocab":{"<unk>":0,"a":1},"merges":[]}}`, "")
	got, _ := tok.Encode("xxaxa", false)
	if want := []int32{0, 1, 0, 1}; !slices.Equal(got, want) {
		t.Errorf("Encode = %v, want %v", got, want)
	}
}

func TestAddedTokenFlags(t *testing.T) {
	js := `{"added_tokens":[
		{"id":10,"content":"<X>","lstrip":true,"rstrip":true,"special":true,"normalized":false},
		{"id":11,"content":"Y","single_word":true,"special":false,"normalized":false},
		{"id":12,"content":"ab","special":false,"normalized":true}],
		"normalizer":{"type":"Lowercase"},
		"model":{"type":"BPE","vocab":{"a":0,"b":1," ":2,"y":3},"merges":[]}}`
	tok := mustJSON(t, js, "")
	tests := []struct {
		text string
		want []int32
	}{
		{"a <X> b", []int32{0, 10, 1}},
		{"a  <X>\n", []int32{0, 10}},
		{"aYb", []int32{0, 3, 1}},
		{"a Y b", []int32{0, 2, 11, 2, 1}},
		{"Y", []int32{11}},
		{"AB", []int32{12}},
		{"<x>", nil}, // lowercased text is not matched against raw tokens
	}
	for _, tc := range tests {
		got, _ := tok.Encode(tc.text, false)
		if tc.want == nil {
			if slices.Contains(got, 10) {
				t.Errorf("Encode(%q) = %v, matched <X>", tc.text, got)
			}
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
		}
	}
	if !tok.IsSpecial(10) || tok.IsSpecial(11) {
		t.Error("special flags not kept")
	}
	if got := string(tok.TokenBytes(12, false)); got != "ab" {
		t.Errorf("TokenBytes(12) = %q, want ab", got)
	}
}

func TestMetaspace(t *testing.T) {
	js := `{"added_tokens":[{"id":3,"content":"<s>","special":true,"normalized":false}],
		"pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":true},
		"decoder":{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":true},
		"model":{"type":"BPE","vocab":{"▁":0,"a":1,"▁a":2,"<s>":3},"merges":["▁ a"]}}`
	tok := mustJSON(t, js, "")
	tests := []struct {
		text string
		want []int32
	}{
		{"a a", []int32{2, 2}},
		{"a  a", []int32{2, 0, 2}},
		{"a<s>a", []int32{2, 3, 1}},
	}
	for _, tc := range tests {
		got, _ := tok.Encode(tc.text, false)
		if !slices.Equal(got, tc.want) {
			t.Errorf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
		}
	}
	for _, tc := range []struct {
		ids  []int32
		want string
	}{
		{[]int32{2, 0, 2}, "a  a"},
		// As the reference: the first token loses all its ▁, not one.
		{[]int32{0, 2}, " a"},
	} {
		if got := Decode(tok, tc.ids); got != tc.want {
			t.Errorf("Decode(%v) = %q, want %q", tc.ids, got, tc.want)
		}
	}
}

func TestSplitBehaviors(t *testing.T) {
	find := func(s string) [][2]int {
		var spans [][2]int
		for i := 0; i < len(s); i++ {
			if s[i] == '-' {
				spans = append(spans, [2]int{i, i + 1})
			}
		}
		return spans
	}
	tests := []struct {
		behavior string
		invert   bool
		want     []string
	}{
		{"Isolated", false, []string{"a", "-", "b", "-", "-", "c"}},
		{"Removed", false, []string{"a", "b", "c"}},
		{"MergedWithPrevious", false, []string{"a-", "b-", "-", "c"}},
		{"MergedWithNext", false, []string{"a", "-b", "-", "-c"}},
		{"Contiguous", false, []string{"a", "-", "b", "--", "c"}},
		{"Removed", true, []string{"-", "-", "-"}},
	}
	for _, tc := range tests {
		var got []string
		for _, p := range appendSplit(nil, piece{s: "a-b--c"}, find, tc.behavior, tc.invert) {
			got = append(got, p.s)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s invert=%v: got %q, want %q", tc.behavior, tc.invert, got, tc.want)
		}
	}
}

func TestFromHFDirFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "my-tokenizer.json")
	if err := os.WriteFile(file, []byte(spmJSON(`["a b","▁ ab"]`)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(map[string]any{"add_bos_token": false, "chat_template": []map[string]string{{"name": "default", "template": "T"}, {"name": "tool_use", "template": "U"}}})
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := FromHFDir(file)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := tok.Encode("ab", true); !slices.Equal(got, []int32{263}) {
		t.Errorf("Encode with add_bos_token false = %v, want [263]", got)
	}
	if tmpl, ok := tok.ChatTemplate(""); !ok || tmpl != "T" {
		t.Errorf("ChatTemplate(\"\") = %q, %v", tmpl, ok)
	}
	if tmpl, ok := tok.ChatTemplate("tool_use"); !ok || tmpl != "U" {
		t.Errorf("ChatTemplate(tool_use) = %q, %v", tmpl, ok)
	}
	if tmpl, builtin := tok.ChatTemplateFor(); builtin || tmpl != "T" {
		t.Errorf("ChatTemplateFor() = %q, %v", tmpl, builtin)
	}
}

func TestHFConcurrentEncode(t *testing.T) {
	tok := loadHF(t, "qwen2")
	texts := []string{"Hello world, 12345!", "日本語のテキスト", "func main() { fmt.Println(\"hi\") }"}
	want := make([][]int32, len(texts))
	for i, s := range texts {
		want[i], _ = tok.Encode(s, false)
	}
	done := make(chan error)
	for g := 0; g < 8; g++ {
		go func() {
			for k := 0; k < 50; k++ {
				i := k % len(texts)
				got, _ := tok.Encode(texts[i], false)
				if !slices.Equal(got, want[i]) {
					done <- fmt.Errorf("Encode(%q) = %v, want %v", texts[i], got, want[i])
					return
				}
			}
			done <- nil
		}()
	}
	for g := 0; g < 8; g++ {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}
