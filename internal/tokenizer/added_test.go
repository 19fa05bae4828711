package tokenizer

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
)

// extract runs the two added-token passes of Encode and describes the
// result: text segments as themselves (normalized), tokens as "#id".
func extract(t *HF, text string) []string {
	var out []string
	for _, seg := range t.splitAdded(text, false, true) {
		if seg.id >= 0 {
			out = append(out, fmt.Sprintf("#%d", seg.id))
			continue
		}
		s := seg.s
		if t.normalize != nil {
			s = t.normalize(s)
		}
		for _, seg2 := range t.splitAdded(s, true, seg.first) {
			if seg2.id >= 0 {
				out = append(out, fmt.Sprintf("#%d", seg2.id))
			} else {
				out = append(out, seg2.s)
			}
		}
	}
	return out
}

// TestAddedVocabularyReference ports the cases of the reference's own
// added-vocabulary tests (huggingface/tokenizers added_vocabulary.rs),
// with a Lowercase normalizer.
func TestAddedVocabularyReference(t *testing.T) {
	type tok struct {
		Content                     string
		Special, LStrip, RStrip, SW bool
	}
	build := func(toks []tok) *HF {
		var added []map[string]any
		for i, a := range toks {
			added = append(added, map[string]any{"id": i, "content": a.Content, "special": a.Special,
				"normalized": !a.Special, "lstrip": a.LStrip, "rstrip": a.RStrip, "single_word": a.SW})
		}
		js, _ := json.Marshal(map[string]any{
			"added_tokens": added,
			"normalizer":   map[string]any{"type": "Lowercase"},
			"model":        map[string]any{"type": "BPE", "vocab": map[string]int{}, "merges": []string{}},
		})
		h, err := FromJSON(js, nil)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	tests := []struct {
		name string
		toks []tok
		text string
		want []string
	}{
		{"options", []tok{{Content: "my", LStrip: true, RStrip: true}, {Content: "name"}, {Content: "ony", SW: true}, {Content: "[CLS]", Special: true}, {Content: "[SEP]", Special: true}},
			"[CLS] My name is Anthony [SEP]", []string{"#3", "#0", "#1", " is anthony ", "#4"}},
		{"single word", []tok{{Content: "<mask>", SW: true}},
			"<mask> My name <mask> A<mask> <mask>ony <mask>", []string{"#0", " my name ", "#0", " a<mask> <mask>ony ", "#0"}},
		{"single word unicode", []tok{{Content: "<mask>", SW: true}},
			"<mask>, <mask>- ◌̰<mask>", []string{"#0", ", ", "#0", "- ◌̰<mask>"}},
		{"lstrip unicode space", []tok{{Content: "<mask>", LStrip: true, RStrip: true, SW: true}},
			"Hi <mask> there\t<mask>\t<mask>\u2000", []string{"hi", "#0", "there", "#0", "#0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := extract(build(tc.toks), tc.text); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
