package tokenizer

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"

	"github.com/npumesh/npumesh/internal/testdata"
)

var hfFolders = []string{"gpt2", "llama2-spm", "llama3", "qwen2"}

// loaded caches the tokenizers across tests: the big vocabularies take a
// noticeable fraction of a second each.
var loaded sync.Map // folder → *HF

func loadHF(t testing.TB, folder string) *HF {
	t.Helper()
	dir := testdata.Dir(t, "tokenizers", folder)
	if v, ok := loaded.Load(folder); ok {
		return v.(*HF)
	}
	tok, err := FromHFDir(dir)
	if err != nil {
		t.Fatalf("FromHFDir(%s): %v", folder, err)
	}
	loaded.Store(folder, tok)
	return tok
}

type expectedLine struct {
	Text             string  `json:"text"`
	IDs              []int32 `json:"ids"`
	AddSpecialTokens bool    `json:"add_special_tokens"`
	Source           string  `json:"source"`
}

func readExpected(t *testing.T, folder string) []expectedLine {
	t.Helper()
	f, err := os.Open(filepath.Join(testdata.Dir(t, "tokenizers", folder), "expected.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []expectedLine
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l expectedLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("%s/expected.jsonl line %d: %v", folder, len(lines)+1, err)
		}
		lines = append(lines, l)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(lines) == 0 {
		t.Fatalf("%s/expected.jsonl is empty", folder)
	}
	return lines
}

func TestHFExpected(t *testing.T) {
	for _, folder := range hfFolders {
		t.Run(folder, func(t *testing.T) {
			tok := loadHF(t, folder)
			lines := readExpected(t, folder)
			matched := 0
			for i, l := range lines {
				got, err := tok.Encode(l.Text, l.AddSpecialTokens)
				if err != nil {
					t.Errorf("line %d: Encode(%q): %v", i+1, l.Text, err)
					continue
				}
				if !slices.Equal(got, l.IDs) {
					t.Errorf("line %d: Encode(%q, %v)\n got %v\nwant %v", i+1, l.Text, l.AddSpecialTokens, got, l.IDs)
					continue
				}
				matched++
			}
			t.Logf("%s: %d/%d lines match", folder, matched, len(lines))
		})
	}
}

// TestHFRoundTrip checks Decode(Encode(x)) == x for the expected texts.
// Qwen2 normalizes to NFC, so only its NFC texts come back unchanged.
func TestHFRoundTrip(t *testing.T) {
	for _, folder := range hfFolders {
		t.Run(folder, func(t *testing.T) {
			tok := loadHF(t, folder)
			for i, l := range readExpected(t, folder) {
				for _, addSpecial := range []bool{false, true} {
					ids, err := tok.Encode(l.Text, addSpecial)
					if err != nil {
						t.Fatal(err)
					}
					want := l.Text
					if folder == "qwen2" {
						want = norm.NFC.String(want)
					}
					if got := Decode(tok, ids); got != want {
						t.Errorf("line %d: Decode(Encode(%q, %v)) = %q", i+1, l.Text, addSpecial, got)
					}
				}
			}
		})
	}
}

// TestHFStreamingDecode feeds ids one at a time and checks that no
// partial UTF-8 character is ever returned and the pieces add up.
func TestHFStreamingDecode(t *testing.T) {
	texts := []string{"Hello 世界 👋🏽 café", "🤖🦀 ∀ε>0", "naïve — ünïcödé 日本語のテキスト", "𝓐𝓑𝓒𝓓 ꙮ 𒀀"}
	for _, folder := range hfFolders {
		t.Run(folder, func(t *testing.T) {
			tok := loadHF(t, folder)
			split := false // some token holds part of a character
			for _, text := range texts {
				ids, err := tok.Encode(text, true)
				if err != nil {
					t.Fatal(err)
				}
				for _, id := range ids {
					if b := tok.TokenBytes(id, false); len(b) > 0 && !utf8.Valid(b) {
						split = true
					}
				}
				d := NewDecoder(tok)
				var sb strings.Builder
				for _, id := range ids {
					s := d.Add(id)
					if !utf8.ValidString(s) {
						t.Errorf("%q: Add(%d) returned invalid UTF-8 %q", text, id, s)
					}
					sb.WriteString(s)
				}
				sb.WriteString(d.Flush())
				if sb.String() != text {
					t.Errorf("streamed %q, want %q", sb.String(), text)
				}
			}
			if !split {
				t.Error("no token holds a partial character; the test does not test streaming")
			}
		})
	}
}

func TestHFSpecialTokens(t *testing.T) {
	tests := []struct {
		folder, text string
		want         []int32
	}{
		{"qwen2", "<|im_start|>user\nHi<|im_end|>", []int32{151644, 872, 198, 13048, 151645}},
		{"llama3", "<|start_header_id|>user<|end_header_id|>", []int32{128006, 882, 128007}},
		{"gpt2", "a<|endoftext|>b", []int32{64, 50256, 65}},
		// Llama-2's <s> is a normalized added token: it is looked for as
		// "▁<s>" in the normalized text, taking the space before it.
		{"llama2-spm", "Hello <s> world", []int32{15043, 1, 3186}},
	}
	for _, tc := range tests {
		t.Run(tc.folder, func(t *testing.T) {
			tok := loadHF(t, tc.folder)
			got, err := tok.Encode(tc.text, false)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
			}
			for _, id := range got {
				if tok.IsSpecial(id) {
					if string(tok.TokenBytes(id, false)) != tok.Token(id) {
						t.Errorf("TokenBytes(%d) = %q, want the literal %q", id, tok.TokenBytes(id, false), tok.Token(id))
					}
				}
			}
		})
	}
}

func TestHFMetadata(t *testing.T) {
	tests := []struct {
		folder    string
		bos       int32
		eog       []int32
		vocabSize int
	}{
		{"gpt2", 50256, []int32{50256}, 50257},
		{"llama2-spm", 1, []int32{2}, 32000},
		{"llama3", 128000, []int32{128001, 128008, 128009}, 128256},
		{"qwen2", -1, []int32{151643, 151645}, 151646},
	}
	for _, tc := range tests {
		t.Run(tc.folder, func(t *testing.T) {
			tok := loadHF(t, tc.folder)
			if got := tok.BOS(); got != tc.bos {
				t.Errorf("BOS() = %d, want %d", got, tc.bos)
			}
			if got := tok.VocabSize(); got != tc.vocabSize {
				t.Errorf("VocabSize() = %d, want %d", got, tc.vocabSize)
			}
			for _, id := range tc.eog {
				if !tok.IsEOG(id) {
					t.Errorf("IsEOG(%d %q) = false, want true", id, tok.Token(id))
				}
			}
			if tok.IsEOG(10) || tok.IsSpecial(10) {
				t.Errorf("id 10 %q is reported special or end-of-generation", tok.Token(10))
			}
		})
	}
}

// BenchmarkHFLoad measures loading the biggest vocabulary (Qwen2, 151k
// tokens); speed is measured here, never asserted in a test.
func BenchmarkHFLoad(b *testing.B) {
	dir := testdata.Dir(b, "tokenizers", "qwen2")
	for b.Loop() {
		if _, err := FromHFDir(dir); err != nil {
			b.Fatal(err)
		}
	}
}

func TestFromHFDirErrors(t *testing.T) {
	if _, err := FromHFDir(t.TempDir()); err == nil {
		t.Error("FromHFDir(empty dir) succeeded")
	}
	tests := map[string]string{
		"unknown regex":  `{"model":{"type":"BPE","vocab":{},"merges":[]},"pre_tokenizer":{"type":"Split","pattern":{"Regex":"\\w+"},"behavior":"Isolated"}}`,
		"unknown model":  `{"model":{"type":"WordPiece","vocab":{}}}`,
		"bad merge":      `{"model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}}`,
		"not json":       `{`,
		"unknown normal": `{"model":{"type":"BPE","vocab":{},"merges":[]},"normalizer":{"type":"Precompiled"}}`,
	}
	for name, js := range tests {
		if _, err := FromJSON([]byte(js), nil); err == nil {
			t.Errorf("%s: FromJSON succeeded", name)
		}
	}
}

func BenchmarkHFEncode(b *testing.B) {
	for _, folder := range hfFolders {
		b.Run(folder, func(b *testing.B) {
			tok := loadHF(b, folder)
			text := strings.Repeat("The quick brown fox jumps over the lazy dog; 12345 café 世界. ", 100)
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				if _, err := tok.Encode(text, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
