package tokenizer

import (
	"container/heap"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// SPMTokenType is a SentencePiece token type as stored in GGUF's
// tokenizer.ggml.token_type (llama.cpp's llama_token_type).
type SPMTokenType int32

// The SentencePiece token types.
const (
	SPMUndefined   SPMTokenType = 0
	SPMNormal      SPMTokenType = 1
	SPMUnknown     SPMTokenType = 2
	SPMControl     SPMTokenType = 3
	SPMUserDefined SPMTokenType = 4
	SPMUnused      SPMTokenType = 5
	SPMByte        SPMTokenType = 6
)

// spmSpace is the SentencePiece meta symbol "▁" (U+2581) that stands for a space.
const spmSpace = "\u2581"

// spmUnknownPiece is what llama.cpp prints for the unknown token (U+2585).
const spmUnknownPiece = "\u2585"

// SPMConfig is a SentencePiece-BPE vocabulary as GGUF stores it (the
// tokenizer.ggml.* keys of a "llama" tokenizer).
type SPMConfig struct {
	Tokens []string  // tokenizer.ggml.tokens; the id is the index
	Scores []float32 // tokenizer.ggml.scores; nil means all 0
	// Types is tokenizer.ggml.token_type. When nil, <0xNN> pieces are
	// bytes, UNK is unknown, BOS and EOS are control, the rest normal.
	Types []SPMTokenType
	// BOS, EOS and UNK are token ids, -1 for none.
	BOS, EOS, UNK int32
	// EOG lists further ids that end generation besides EOS (EOT, ...).
	EOG []int32
	// AddBOS and AddEOS say what Encode adds with addSpecial
	// (tokenizer.ggml.add_bos_token / add_eos_token; llama.cpp defaults
	// them to true and false for SentencePiece).
	AddBOS, AddEOS bool
	// AddSpacePrefix prepends a space to the text, as SentencePiece's
	// add_dummy_prefix does (tokenizer.ggml.add_space_prefix; llama.cpp
	// defaults it to true).
	AddSpacePrefix bool
}

// SPM is a SentencePiece-BPE tokenizer that reproduces llama.cpp's
// llm_tokenizer_spm: text is split into UTF-8 characters, the adjacent pair
// whose merge is the highest-scoring token is merged until no pair merges,
// and what is left without a token falls back to <0xNN> byte tokens.
// Control tokens in the text are not parsed: they are tokenized as plain
// text, so user input cannot inject a BOS or an end of turn. User-defined
// tokens are matched in the text, as llama.cpp does.
// An SPM is immutable and safe for concurrent use.
type SPM struct {
	cfg     SPMConfig
	ids     map[string]int32
	byteIDs [256]int32
	eog     map[int32]bool
	// userDefined are the user-defined tokens, longest first, which
	// Encode matches in the text before running BPE.
	userDefined []int32
}

var _ Tokenizer = (*SPM)(nil)

// NewSPM checks cfg and builds the tokenizer. cfg's slices are kept, not copied.
func NewSPM(cfg SPMConfig) (*SPM, error) {
	n := len(cfg.Tokens)
	if n == 0 {
		return nil, errors.New("spm: empty vocabulary")
	}
	if n > 1<<30 {
		return nil, fmt.Errorf("spm: %d tokens is more than supported", n)
	}
	if cfg.Scores != nil && len(cfg.Scores) != n {
		return nil, fmt.Errorf("spm: %d scores for %d tokens", len(cfg.Scores), n)
	}
	if cfg.Types != nil && len(cfg.Types) != n {
		return nil, fmt.Errorf("spm: %d token types for %d tokens", len(cfg.Types), n)
	}
	for _, c := range []struct {
		name string
		id   int32
	}{{"BOS", cfg.BOS}, {"EOS", cfg.EOS}, {"UNK", cfg.UNK}} {
		if c.id < -1 || int(c.id) >= n {
			return nil, fmt.Errorf("spm: %s id %d outside the vocabulary of %d", c.name, c.id, n)
		}
	}
	if cfg.AddBOS && cfg.BOS < 0 {
		return nil, errors.New("spm: AddBOS without a BOS token")
	}
	if cfg.AddEOS && cfg.EOS < 0 {
		return nil, errors.New("spm: AddEOS without an EOS token")
	}
	t := &SPM{cfg: cfg, ids: make(map[string]int32, n), eog: map[int32]bool{}}
	if t.cfg.Types == nil {
		t.cfg.Types = make([]SPMTokenType, n)
		for i, s := range cfg.Tokens {
			t.cfg.Types[i] = SPMNormal
			if _, ok := spmParseByte(s); ok {
				t.cfg.Types[i] = SPMByte
			}
		}
		for _, id := range []int32{cfg.BOS, cfg.EOS} {
			if id >= 0 {
				t.cfg.Types[id] = SPMControl
			}
		}
		if cfg.UNK >= 0 {
			t.cfg.Types[cfg.UNK] = SPMUnknown
		}
	}
	for i, s := range cfg.Tokens {
		// Later duplicates win, as in llama.cpp's token_to_id map.
		t.ids[s] = int32(i)
		if t.cfg.Types[i] == SPMUserDefined && s != "" {
			t.userDefined = append(t.userDefined, int32(i))
		}
	}
	sort.SliceStable(t.userDefined, func(a, b int) bool {
		return len(cfg.Tokens[t.userDefined[a]]) > len(cfg.Tokens[t.userDefined[b]])
	})
	for b := range 256 {
		id, ok := t.ids[fmt.Sprintf("<0x%02X>", b)]
		if !ok {
			// Vocabularies without byte tokens may hold the raw byte.
			if id, ok = t.ids[string([]byte{byte(b)})]; !ok {
				id = cfg.UNK
			}
		}
		t.byteIDs[b] = id
	}
	if cfg.EOS >= 0 {
		t.eog[cfg.EOS] = true
	}
	for _, id := range cfg.EOG {
		if id < 0 || int(id) >= n {
			return nil, fmt.Errorf("spm: end-of-generation id %d outside the vocabulary of %d", id, n)
		}
		t.eog[id] = true
	}
	return t, nil
}

// spmParseByte parses a byte-fallback piece "<0xNN>".
func spmParseByte(s string) (byte, bool) {
	if len(s) != 6 || !strings.HasPrefix(s, "<0x") || s[5] != '>' {
		return 0, false
	}
	var b byte
	for _, c := range []byte(s[3:5]) {
		switch {
		case c >= '0' && c <= '9':
			b = b<<4 | (c - '0')
		case c >= 'A' && c <= 'F':
			b = b<<4 | (c - 'A' + 10)
		case c >= 'a' && c <= 'f':
			b = b<<4 | (c - 'a' + 10)
		default:
			return 0, false
		}
	}
	return b, true
}

// Encode tokenizes text; with addSpecial it adds BOS/EOS as configured.
// The empty text with addSpecial is just [BOS]. It never fails; the error
// is there for the Tokenizer interface.
func (t *SPM) Encode(text string, addSpecial bool) ([]int32, error) {
	var out []int32
	if addSpecial && t.cfg.AddBOS {
		out = append(out, t.cfg.BOS)
	}
	// prevSpecial says the next text fragment starts the text or follows a
	// token, so it gets the space prefix (llama.cpp's is_prev_special).
	prevSpecial := true
	for _, frag := range t.splitUserDefined(text) {
		if frag.id >= 0 {
			out = append(out, frag.id)
			prevSpecial = true
			continue
		}
		s := frag.text
		if t.cfg.AddSpacePrefix && prevSpecial {
			s = " " + s
		}
		out = t.encodeText(strings.ReplaceAll(s, " ", spmSpace), out)
		prevSpecial = false
	}
	if addSpecial && t.cfg.AddEOS {
		out = append(out, t.cfg.EOS)
	}
	return out, nil
}

type spmFragment struct {
	text string
	id   int32 // a matched token, or -1 for text
}

// splitUserDefined cuts text at user-defined tokens, longest tokens first,
// like llama.cpp's tokenizer_st_partition. Empty text yields no fragment.
func (t *SPM) splitUserDefined(text string) []spmFragment {
	if text == "" {
		return nil
	}
	frags := []spmFragment{{text: text, id: -1}}
	for _, id := range t.userDefined {
		tok := t.cfg.Tokens[id]
		var next []spmFragment
		for _, f := range frags {
			if f.id >= 0 {
				next = append(next, f)
				continue
			}
			s := f.text
			for {
				i := strings.Index(s, tok)
				if i < 0 {
					break
				}
				if i > 0 {
					next = append(next, spmFragment{text: s[:i], id: -1})
				}
				next = append(next, spmFragment{id: id})
				s = s[i+len(tok):]
			}
			if s != "" {
				next = append(next, spmFragment{text: s, id: -1})
			}
		}
		frags = next
	}
	return frags
}

type spmSymbol struct {
	prev, next int
	start, n   int // bytes of the text; n == 0 once merged into its left neighbour
}

type spmBigram struct {
	left, right int
	score       float32
	size        int
}

// spmQueue is a max-heap of bigrams by score; on equal scores the leftmost
// pair first, as llama.cpp's llm_bigram_spm comparator orders them.
type spmQueue []spmBigram

func (q spmQueue) Len() int { return len(q) }
func (q spmQueue) Less(i, j int) bool {
	if q[i].score != q[j].score {
		return q[i].score > q[j].score
	}
	return q[i].left < q[j].left
}
func (q spmQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *spmQueue) Push(x any)   { *q = append(*q, x.(spmBigram)) }
func (q *spmQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}

// encodeText is llm_tokenizer_spm::tokenize on text whose spaces are
// already escaped.
func (t *SPM) encodeText(text string, out []int32) []int32 {
	syms := make([]spmSymbol, 0, len(text))
	for off := 0; off < len(text); {
		// llama.cpp's utf8_len: the length from the lead byte alone, so
		// invalid UTF-8 still advances and falls back to bytes.
		n := min(spmUTF8Len(text[off]), len(text)-off)
		next := len(syms) + 1
		if off+n == len(text) {
			next = -1
		}
		syms = append(syms, spmSymbol{prev: len(syms) - 1, next: next, start: off, n: n})
		off += n
	}
	q := &spmQueue{}
	tryAdd := func(left, right int) {
		if left < 0 || right < 0 {
			return
		}
		s := text[syms[left].start : syms[right].start+syms[right].n]
		id, ok := t.ids[s]
		if !ok {
			return
		}
		heap.Push(q, spmBigram{left: left, right: right, score: t.score(id), size: len(s)})
	}
	for i := 1; i < len(syms); i++ {
		tryAdd(i-1, i)
	}
	for q.Len() > 0 {
		b := heap.Pop(q).(spmBigram)
		l, r := &syms[b.left], &syms[b.right]
		// Skip pairs that an earlier merge has changed.
		if l.n == 0 || r.n == 0 || l.n+r.n != b.size {
			continue
		}
		l.n += r.n
		r.n = 0
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = b.left
		}
		tryAdd(l.prev, b.left)
		tryAdd(b.left, l.next)
	}
	for i := 0; i != -1 && len(syms) > 0; i = syms[i].next {
		s := text[syms[i].start : syms[i].start+syms[i].n]
		// Merged symbols are always tokens; a single character may not
		// be, and then becomes its bytes.
		if id, ok := t.ids[s]; ok {
			out = append(out, id)
			continue
		}
		for j := 0; j < len(s); j++ {
			out = append(out, t.byteIDs[s[j]])
		}
	}
	return out
}

func spmUTF8Len(b byte) int {
	return [16]int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4}[b>>4]
}

func (t *SPM) score(id int32) float32 {
	if t.cfg.Scores == nil {
		return 0
	}
	return t.cfg.Scores[id]
}

// TokenBytes returns the text of id: "▁" becomes a space (dropped at the
// start of the text when AddSpacePrefix put it there), <0xNN> its byte,
// control tokens their literal text, the unknown token "▅" (as llama.cpp
// prints it), unused tokens and ids outside the vocabulary nothing.
func (t *SPM) TokenBytes(id int32, first bool) []byte {
	if id < 0 || int(id) >= len(t.cfg.Tokens) {
		return nil
	}
	s := t.cfg.Tokens[id]
	switch t.cfg.Types[id] {
	case SPMByte:
		if b, ok := spmParseByte(s); ok {
			return []byte{b}
		}
		return []byte(s)
	case SPMUnknown:
		return []byte(spmUnknownPiece)
	case SPMUnused:
		return nil
	case SPMControl, SPMUserDefined:
		return []byte(s)
	}
	s = strings.ReplaceAll(s, spmSpace, " ")
	if first && t.cfg.AddSpacePrefix {
		s = strings.TrimPrefix(s, " ")
	}
	return []byte(s)
}

// IsSpecial reports whether id is a control token (BOS, EOS, ...).
func (t *SPM) IsSpecial(id int32) bool {
	return id >= 0 && int(id) < len(t.cfg.Tokens) && t.cfg.Types[id] == SPMControl
}

// IsEOG reports whether id is EOS or one of SPMConfig.EOG.
func (t *SPM) IsEOG(id int32) bool { return t.eog[id] }

// BOS returns the BOS id, or -1.
func (t *SPM) BOS() int32 { return t.cfg.BOS }

// EOS returns the EOS id, or -1.
func (t *SPM) EOS() int32 { return t.cfg.EOS }

// VocabSize is the number of tokens.
func (t *SPM) VocabSize() int { return len(t.cfg.Tokens) }

// Config returns the configuration t was built from, so that another
// process (the coordinator's router) can build the same tokenizer with
// NewSPM. Its slices are shared: do not modify them.
func (t *SPM) Config() SPMConfig { return t.cfg }

// Token returns the piece of id as stored in the vocabulary ("▁the", "<0x0A>").
func (t *SPM) Token(id int32) string {
	if id < 0 || int(id) >= len(t.cfg.Tokens) {
		return ""
	}
	return t.cfg.Tokens[id]
}
