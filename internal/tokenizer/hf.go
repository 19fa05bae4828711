package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// HF is a tokenizer loaded from Hugging Face's tokenizer.json (with
// tokenizer_config.json when present), reproducing the ids of the
// reference implementation. It is safe for concurrent use.
//
// Supported: the BPE model (byte-level, or SentencePiece-style with
// byte_fallback; ignore_merges, unk_token, fuse_unk); normalizers NFC, NFD,
// NFKC, NFKD, Lowercase, Prepend, Replace (a Regex pattern goes through
// Go's regexp, whose \s is ASCII-only) and Sequence; pre-tokenizers
// ByteLevel, Split (string patterns, and the GPT-2, Llama-3 and Qwen2
// regexes), Metaspace, Digits and Sequence; post-processors
// TemplateProcessing, ByteLevel, Roberta/Bert and Sequence; decoders
// ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace and Sequence.
// Anything else fails to load with an error wrapping ErrUnsupported rather
// than tokenizing subtly wrong.
type HF struct {
	model     *bpe
	normalize normalizer   // nil: none
	preTok    preTokenizer // nil: the whole segment is one word
	post      postProcessor
	dec       decoder

	tokens  []string // id → token string; "" for unused ids
	added   []addedToken
	byFirst [256][]int // indices into added by first byte, longest first
	// starts[normalized][b] says some added token of that class begins
	// with byte b, so text without such bytes is skipped quickly.
	starts  [2][256]bool
	isAdded []bool // by id
	addedID map[string]int32
	special []bool // by id
	eog     []bool // by id
	bos     int32
	eos     int32

	chatTemplates map[string]string // by name; "default" is the model's own
}

var _ Tokenizer = (*HF)(nil)

// addedToken is a token matched in the input before the model runs.
type addedToken struct {
	ID         int32  `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"-"`
	Special    bool   `json:"special"`

	// NormalizedJSON is the file's flag; when missing, tokens that are not
	// special are normalized, as the reference's AddedToken defaults.
	NormalizedJSON *bool `json:"normalized"`

	// pattern is what is searched for: Content, passed through the
	// normalizer for normalized tokens (Llama-2's "<s>" is looked for
	// as "▁<s>" in the normalized text, as the reference does).
	pattern string
}

type hfFile struct {
	AddedTokens   []addedToken    `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         struct {
		Type                    string           `json:"type"`
		Vocab                   map[string]int32 `json:"vocab"`
		Merges                  json.RawMessage  `json:"merges"`
		UnkToken                *string          `json:"unk_token"`
		ByteFallback            bool             `json:"byte_fallback"`
		FuseUnk                 bool             `json:"fuse_unk"`
		IgnoreMerges            bool             `json:"ignore_merges"`
		ContinuingSubwordPrefix *string          `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string          `json:"end_of_word_suffix"`
	} `json:"model"`
}

// hfConfig is the part of tokenizer_config.json used here.
type hfConfig struct {
	AddBOSToken  *bool           `json:"add_bos_token"`
	AddEOSToken  *bool           `json:"add_eos_token"`
	BOSToken     json.RawMessage `json:"bos_token"`
	EOSToken     json.RawMessage `json:"eos_token"`
	ChatTemplate json.RawMessage `json:"chat_template"`
}

// FromHFDir loads a tokenizer from a directory holding tokenizer.json (and
// optionally tokenizer_config.json), or from the path of a tokenizer.json
// itself, next to which tokenizer_config.json is looked for.
func FromHFDir(path string) (*HF, error) {
	dir, file := path, filepath.Join(path, "tokenizer.json")
	if st, err := os.Stat(path); err == nil && !st.IsDir() {
		dir, file = filepath.Dir(path), path
	}
	data, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("load tokenizer from %q: %w (download the model's tokenizer.json beside its weights)", path, ErrNoTokenizer)
		}
		return nil, fmt.Errorf("load tokenizer: %w", err)
	}
	cfg, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load tokenizer config: %w", err)
	}
	t, err := FromJSON(data, cfg)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer %q: %w", file, err)
	}
	return t, nil
}

// FromJSON builds a tokenizer from the contents of tokenizer.json and of
// tokenizer_config.json (nil when there is none).
func FromJSON(tokenizerJSON, configJSON []byte) (*HF, error) {
	var f hfFile
	if err := json.Unmarshal(tokenizerJSON, &f); err != nil {
		return nil, fmt.Errorf("parse tokenizer.json: %w", err)
	}
	var cfg hfConfig
	if len(configJSON) > 0 {
		if err := json.Unmarshal(configJSON, &cfg); err != nil {
			return nil, fmt.Errorf("parse tokenizer_config.json: %w", err)
		}
	}
	if f.Model.Type != "BPE" && !(f.Model.Type == "" && f.Model.Merges != nil) {
		return nil, fmt.Errorf("model type %q: only BPE is implemented: %w", f.Model.Type, ErrUnsupported)
	}
	if p := f.Model.ContinuingSubwordPrefix; p != nil && *p != "" {
		return nil, fmt.Errorf("BPE continuing_subword_prefix %q: %w", *p, ErrUnsupported)
	}
	if p := f.Model.EndOfWordSuffix; p != nil && *p != "" {
		return nil, fmt.Errorf("BPE end_of_word_suffix %q: %w", *p, ErrUnsupported)
	}
	merges, err := parseMerges(f.Model.Merges)
	if err != nil {
		return nil, err
	}
	unk := ""
	if f.Model.UnkToken != nil {
		unk = *f.Model.UnkToken
	}
	vocab := f.Model.Vocab
	if vocab == nil {
		vocab = map[string]int32{}
	}
	model, err := newBPE(vocab, merges, unk, f.Model.ByteFallback, f.Model.FuseUnk, f.Model.IgnoreMerges)
	if err != nil {
		return nil, fmt.Errorf("BPE model: %w", err)
	}
	t := &HF{model: model, bos: -1, eos: -1}

	// Token table.
	size := 0
	for tok, id := range vocab {
		if id < 0 {
			return nil, fmt.Errorf("vocabulary token %q has negative id %d", tok, id)
		}
		size = max(size, int(id)+1)
	}
	for _, a := range f.AddedTokens {
		if a.ID < 0 {
			return nil, fmt.Errorf("added token %q has negative id %d", a.Content, a.ID)
		}
		size = max(size, int(a.ID)+1)
	}
	if size > maxVocab {
		return nil, fmt.Errorf("vocabulary of %d ids is implausibly large", size)
	}
	t.tokens = make([]string, size)
	for tok, id := range vocab {
		t.tokens[id] = tok
	}
	t.special = make([]bool, size)
	t.isAdded = make([]bool, size)
	t.addedID = make(map[string]int32, len(f.AddedTokens))
	t.eog = make([]bool, size)
	for _, a := range f.AddedTokens {
		if a.Content == "" {
			continue
		}
		a.Normalized = !a.Special
		if a.NormalizedJSON != nil {
			a.Normalized = *a.NormalizedJSON
		}
		t.tokens[a.ID] = a.Content
		t.special[a.ID] = a.Special
		t.isAdded[a.ID] = true
		t.addedID[a.Content] = a.ID
		t.added = append(t.added, a)
	}

	if t.normalize, err = compileNormalizer(f.Normalizer); err != nil {
		return nil, err
	}
	if t.preTok, err = compilePreTokenizer(f.PreTokenizer); err != nil {
		return nil, err
	}
	if t.dec, err = compileDecoder(f.Decoder); err != nil {
		return nil, err
	}
	if t.post, err = compilePostProcessor(f.PostProcessor); err != nil {
		return nil, err
	}
	for _, ids := range [][]int32{t.post.prefix, t.post.suffix} {
		for _, id := range ids {
			if id < 0 || int(id) >= size {
				return nil, fmt.Errorf("post_processor token id %d out of range", id)
			}
		}
	}

	// tokenizer_config.json.
	if name := tokenName(cfg.BOSToken); name != "" {
		if id, ok := t.tokenID(name); ok {
			t.bos = id
		}
	}
	if name := tokenName(cfg.EOSToken); name != "" {
		if id, ok := t.tokenID(name); ok {
			t.eos = id
		}
	}
	if cfg.AddBOSToken != nil || cfg.AddEOSToken != nil {
		// The config decides, as transformers' Llama-style tokenizers
		// rebuild their post-processor from these flags.
		t.post = postProcessor{}
		if cfg.AddBOSToken != nil && *cfg.AddBOSToken && t.bos >= 0 {
			t.post.prefix = []int32{t.bos}
		}
		if cfg.AddEOSToken != nil && *cfg.AddEOSToken && t.eos >= 0 {
			t.post.suffix = []int32{t.eos}
		}
	}
	if t.eos >= 0 {
		t.eog[t.eos] = true
	}
	for _, name := range eogNames {
		if id, ok := t.tokenID(name); ok && t.special[id] {
			t.eog[id] = true
		}
	}
	if t.chatTemplates, err = parseChatTemplates(cfg.ChatTemplate); err != nil {
		return nil, err
	}

	// Longest patterns first, for leftmost-longest matching.
	matchable := t.added[:0:0]
	for _, a := range t.added {
		a.pattern = a.Content
		if a.Normalized && t.normalize != nil {
			a.pattern = t.normalize(a.Content)
		}
		if a.pattern != "" {
			matchable = append(matchable, a)
		}
	}
	t.added = matchable
	slices.SortStableFunc(t.added, func(a, b addedToken) int { return len(b.pattern) - len(a.pattern) })
	for i, a := range t.added {
		t.byFirst[a.pattern[0]] = append(t.byFirst[a.pattern[0]], i)
		t.starts[b2i(a.Normalized)][a.pattern[0]] = true
	}
	return t, nil
}

// maxVocab bounds the number of ids; the largest real vocabularies have
// about 260k.
const maxVocab = 1 << 22

// eogNames are tokens that end a turn in the chat formats of common models.
var eogNames = []string{
	"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
	"</s>", "<|end|>", "<end_of_turn>", "<|return|>", "<|call|>",
}

func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var lines []string
	if err := json.Unmarshal(raw, &lines); err == nil {
		out := make([][2]string, len(lines))
		for i, l := range lines {
			a, b, ok := strings.Cut(l, " ")
			if !ok || strings.Contains(b, " ") {
				return nil, fmt.Errorf("merge %d %q is not two tokens separated by a space", i, l)
			}
			out[i] = [2]string{a, b}
		}
		return out, nil
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, fmt.Errorf("merges are neither strings nor pairs: %w", err)
	}
	out := make([][2]string, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, fmt.Errorf("merge %d has %d parts, want 2", i, len(p))
		}
		out[i] = [2]string{p[0], p[1]}
	}
	return out, nil
}

// tokenName reads a token given as a string or as {"content": ...}.
func tokenName(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var obj struct {
		Content string `json:"content"`
	}
	if json.Unmarshal(raw, &obj) == nil {
		return obj.Content
	}
	return ""
}

func parseChatTemplates(raw json.RawMessage) (map[string]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return map[string]string{"default": s}, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("tokenizer_config.json chat_template: %w", err)
	}
	m := make(map[string]string, len(list))
	for _, e := range list {
		m[e.Name] = e.Template
	}
	return m, nil
}

// tokenID returns the id of an added token or vocabulary entry.
func (t *HF) tokenID(s string) (int32, bool) {
	if id, ok := t.addedID[s]; ok {
		return id, true
	}
	id, ok := t.model.vocab[s]
	return id, ok
}

// TokenID returns the id of token s (as spelled in the vocabulary).
func (t *HF) TokenID(s string) (int32, bool) { return t.tokenID(s) }

// ChatTemplate returns the model's chat template from
// tokenizer_config.json: name "" is the default one. ok is false when the
// model has none of that name.
func (t *HF) ChatTemplate(name string) (tmpl string, ok bool) {
	if name == "" {
		name = "default"
	}
	tmpl, ok = t.chatTemplates[name]
	return tmpl, ok
}

// Token returns the vocabulary string of id ("" when out of range).
func (t *HF) Token(id int32) string {
	if id < 0 || int(id) >= len(t.tokens) {
		return ""
	}
	return t.tokens[id]
}

// Encode implements Tokenizer.
func (t *HF) Encode(text string, addSpecial bool) ([]int32, error) {
	var ids []int32
	if addSpecial {
		ids = append(ids, t.post.prefix...)
	}
	// Added tokens that match the raw text are found first; the rest is
	// normalized, then searched for the added tokens that match
	// normalized text, as the reference's AddedVocabulary does.
	for _, seg := range t.splitAdded(text, false, true) {
		if seg.id >= 0 {
			ids = append(ids, seg.id)
			continue
		}
		s := seg.s
		if t.normalize != nil {
			s = t.normalize(s)
		}
		for _, seg2 := range t.splitAdded(s, true, seg.first) {
			if seg2.id >= 0 {
				ids = append(ids, seg2.id)
				continue
			}
			ids = t.encodeSegment(seg2.s, seg2.first, ids)
		}
	}
	if addSpecial {
		ids = append(ids, t.post.suffix...)
	}
	return ids, nil
}

func (t *HF) encodeSegment(s string, first bool, ids []int32) []int32 {
	if s == "" {
		return ids
	}
	if t.preTok == nil {
		return t.model.encode(s, ids)
	}
	for _, p := range t.preTok([]piece{{s: s, first: first}}) {
		ids = t.model.encode(p.s, ids)
	}
	return ids
}

type segment struct {
	s     string
	id    int32 // -1: text
	first bool  // starts the input
}

// splitAdded cuts s at the added tokens whose normalized flag equals
// normalized, as the reference's AddedVocabulary does: leftmost-longest
// matches, scanning on after each; a single_word token inside a word is
// dropped (its text stays text); lstrip/rstrip take the whitespace beside
// the token into it.
func (t *HF) splitAdded(s string, normalized, first bool) []segment {
	var segs []segment
	starts := &t.starts[b2i(normalized)]
	start := 0 // start of the pending text
	for i := 0; i < len(s); {
		if !starts[s[i]] {
			i++
			continue
		}
		a, ok := t.matchAdded(s, i, normalized)
		if !ok {
			i++
			continue
		}
		a0, b0 := i, i+len(a.pattern)
		if a.SingleWord && (endsWithWord(s[:a0]) || startsWithWord(s[b0:])) {
			i = b0
			continue
		}
		if a.LStrip {
			for a0 > start {
				r, n := utf8.DecodeLastRuneInString(s[start:a0])
				if !unicode.IsSpace(r) {
					break
				}
				a0 -= n
			}
		}
		if a.RStrip {
			b0 += runOf(s[b0:], unicode.IsSpace)
		}
		if a0 > start {
			segs = append(segs, segment{s: s[start:a0], id: -1, first: first && start == 0})
		}
		segs = append(segs, segment{id: a.ID})
		start, i = b0, b0
	}
	if start < len(s) {
		segs = append(segs, segment{s: s[start:], id: -1, first: first && start == 0})
	}
	return segs
}

// matchAdded returns the longest added token of the class whose pattern
// starts s[i:].
func (t *HF) matchAdded(s string, i int, normalized bool) (addedToken, bool) {
	for _, k := range t.byFirst[s[i]] {
		a := t.added[k]
		if a.Normalized == normalized && strings.HasPrefix(s[i:], a.pattern) {
			return a, true
		}
	}
	return addedToken{}, false
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// isWordRune is the reference's \w: alphanumerics, marks, connector
// punctuation ('_') and the joiners.
func isWordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsNumber(r) || unicode.Is(unicode.M, r) ||
		unicode.Is(unicode.Pc, r) || r == 0x200C || r == 0x200D
}

func endsWithWord(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && isWordRune(r)
}

func startsWithWord(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && isWordRune(r)
}

// TokenBytes implements Tokenizer.
func (t *HF) TokenBytes(id int32, first bool) []byte {
	if id < 0 || int(id) >= len(t.tokens) {
		return nil
	}
	if t.isAdded[id] {
		return []byte(t.tokens[id])
	}
	return t.dec.bytes(t.tokens[id], first)
}

// IsSpecial implements Tokenizer.
func (t *HF) IsSpecial(id int32) bool {
	return id >= 0 && int(id) < len(t.special) && t.special[id]
}

// IsEOG implements Tokenizer.
func (t *HF) IsEOG(id int32) bool {
	return id >= 0 && int(id) < len(t.eog) && t.eog[id]
}

// BOS implements Tokenizer.
func (t *HF) BOS() int32 { return t.bos }

// EOS is the end-of-sequence id from tokenizer_config.json, or -1.
func (t *HF) EOS() int32 { return t.eos }

// VocabSize implements Tokenizer.
func (t *HF) VocabSize() int { return len(t.tokens) }
