// Package tokenizer turns text into token ids and back: SentencePiece-BPE
// (from GGUF metadata or tokenizer.json), byte-level BPE (GPT-2, Llama-3,
// Qwen2), added/special tokens, streaming UTF-8-safe decoding, and chat
// templates. It must not import anything from the network stack.
package tokenizer

import (
	"unicode/utf8"
)

// Tokenizer is what the engine and the router need of a vocabulary.
type Tokenizer interface {
	// Encode tokenizes text. With addSpecial, the tokens the model's own
	// configuration adds (BOS for Llama, nothing for Qwen2) are added.
	Encode(text string, addSpecial bool) ([]int32, error)
	// TokenBytes returns the bytes token id stands for in decoded text.
	// first says whether it is the first token of the decoded text
	// (SentencePiece strips the leading space of the first piece).
	// Special tokens return their literal text.
	TokenBytes(id int32, first bool) []byte
	// IsSpecial reports whether id is a control/special token, which
	// decoding for users skips (BOS, EOS, <|im_end|>, ...).
	IsSpecial(id int32) bool
	// IsEOG reports whether id ends generation (EOS, EOT, <|im_end|>, ...).
	IsEOG(id int32) bool
	// BOS is the beginning-of-sequence id, or -1 when the model has none.
	BOS() int32
	// VocabSize is the number of token ids.
	VocabSize() int
}

// Decode turns ids into text, skipping special tokens.
func Decode(t Tokenizer, ids []int32) string {
	d := NewDecoder(t)
	var out []byte
	for _, id := range ids {
		out = append(out, d.Add(id)...)
	}
	return string(append(out, d.Flush()...))
}

// Decoder decodes a stream of ids into text and never returns half of a
// UTF-8 character: bytes of an incomplete character are held until the
// character completes (or until Flush).
type Decoder struct {
	tok     Tokenizer
	pending []byte
	started bool // a non-special token has been decoded
}

// NewDecoder returns a Decoder for t that decodes text from its start.
func NewDecoder(t Tokenizer) *Decoder { return &Decoder{tok: t} }

// NewDecoderAfter returns a Decoder for tokens that continue prev (a
// prompt): when prev holds text, the first decoded token is not the start
// of the text, so SentencePiece keeps its leading space.
func NewDecoderAfter(t Tokenizer, prev []int32) *Decoder {
	d := &Decoder{tok: t}
	for _, id := range prev {
		if !t.IsSpecial(id) {
			d.started = true
			break
		}
	}
	return d
}

// Add decodes one more token and returns the text that is now complete.
func (d *Decoder) Add(id int32) string {
	if d.tok.IsSpecial(id) {
		return ""
	}
	d.pending = append(d.pending, d.tok.TokenBytes(id, !d.started)...)
	d.started = true
	n := completePrefix(d.pending)
	if n == 0 {
		return ""
	}
	s := toValidUTF8(d.pending[:n])
	d.pending = append(d.pending[:0], d.pending[n:]...)
	return s
}

// Flush returns what is held back, with invalid bytes replaced by U+FFFD.
func (d *Decoder) Flush() string {
	if len(d.pending) == 0 {
		return ""
	}
	s := toValidUTF8(d.pending)
	d.pending = d.pending[:0]
	return s
}

// completePrefix returns the length of the longest prefix of b that does not
// end inside a UTF-8 sequence that could still complete. Invalid bytes are
// let through (the caller turns them into U+FFFD, as Flush does, so where a
// token boundary falls never changes the text); a truncated but possibly
// valid tail is held.
func completePrefix(b []byte) int {
	// Look at most 3 bytes back for the start of an incomplete sequence.
	for i := len(b) - 1; i >= 0 && i >= len(b)-3; i-- {
		c := b[i]
		if c < 0x80 {
			return len(b)
		}
		if c >= 0xC0 { // a leading byte
			need := 2
			switch {
			case c >= 0xF0:
				need = 4
			case c >= 0xE0:
				need = 3
			}
			if len(b)-i < need && !utf8.FullRune(b[i:]) {
				return i
			}
			return len(b)
		}
	}
	return len(b)
}

func toValidUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var out []rune
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		out = append(out, r) // RuneError for invalid bytes
		b = b[n:]
	}
	return string(out)
}
