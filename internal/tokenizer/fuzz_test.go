package tokenizer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/testdata"
)

// FuzzFromJSON feeds arbitrary bytes to the tokenizer.json parser: errors
// are fine, panics are not, and whatever loads must encode and decode.
func FuzzFromJSON(f *testing.F) {
	seeds := []string{
		`{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}}`,
		`{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2,"<0x41>":3},"merges":[["a","b"]],"byte_fallback":true,"unk_token":"a"},` +
			`"normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]},` +
			`"decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},` +
			`"added_tokens":[{"id":4,"content":"<s>","special":true,"lstrip":true,"rstrip":true}],` +
			`"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{"<s>":{"id":"<s>","ids":[4],"tokens":["<s>"]}}}}`,
		`{"model":{"type":"BPE","vocab":{"Ġ":0,"a":1},"merges":[]},"pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":` +
			`"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated"},` +
			`{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]},"decoder":{"type":"ByteLevel"},"normalizer":{"type":"NFC"}}`,
		`{"model":{"type":"BPE","vocab":{"▁":0,"a":1},"merges":[]},"pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":true},"decoder":{"type":"Metaspace"}}`,
		`{"model":{"type":"BPE","vocab":{"a":-1},"merges":[]}}`,
		`{"model":{"type":"BPE","vocab":{"a":99999999},"merges":[]}}`,
		`{"added_tokens":[{"id":0,"content":""}],"model":{"type":"BPE","vocab":{},"merges":[]}}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tok, err := FromJSON(data, nil)
		if err != nil {
			return
		}
		for _, text := range []string{"", "ab a b", "<s> x\n\n1234 ▁", "\xff"} {
			ids, err := tok.Encode(text, true)
			if err != nil {
				t.Fatalf("Encode(%q): %v", text, err)
			}
			for _, id := range ids {
				if id < 0 || int(id) >= tok.VocabSize() {
					t.Fatalf("Encode(%q) gave id %d outside [0, %d)", text, id, tok.VocabSize())
				}
			}
			_ = Decode(tok, ids)
		}
	})
}

// FuzzEncode encodes arbitrary text with each real vocabulary: no panic,
// ids in range, and (for the lossless ones) the text decodes back.
func FuzzEncode(f *testing.F) {
	for _, s := range []string{"Hello, world!", "  x\n\n\t12345 'll", "<|im_start|>user<|im_end|>", "\xff\xfe", "日本語 🤖", "<s></s><unk>"} {
		f.Add(s)
	}
	dir := testdata.Dir(f, "tokenizers")
	var toks []*HF
	var names []string
	for _, folder := range hfFolders {
		if _, err := os.Stat(filepath.Join(dir, folder)); err != nil {
			continue
		}
		toks = append(toks, loadHF(f, folder))
		names = append(names, folder)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for i, tok := range toks {
			ids, err := tok.Encode(s, false)
			if err != nil {
				t.Fatalf("%s: Encode(%q): %v", names[i], s, err)
			}
			for _, id := range ids {
				if id < 0 || int(id) >= tok.VocabSize() {
					t.Fatalf("%s: id %d out of range", names[i], id)
				}
			}
			// Byte-level vocabularies without normalization are lossless
			// for text holding no special-token strings; invalid bytes come
			// back as U+FFFD each.
			if (names[i] == "gpt2" || names[i] == "llama3") && !hasSpecialText(tok, s) {
				if got, want := Decode(tok, ids), toValidUTF8([]byte(s)); got != want {
					t.Fatalf("%s: Decode(Encode(%q)) = %q, want %q", names[i], s, got, want)
				}
			}
		}
	})
}

func hasSpecialText(t *HF, s string) bool {
	for _, a := range t.added {
		if a.Special && len(a.Content) > 0 && len(s) >= len(a.Content) && strings.Contains(s, a.Content) {
			return true
		}
	}
	return false
}
