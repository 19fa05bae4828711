package tokenizer

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// The reference pre-tokenizers split with Oniguruma regexes that use
// look-ahead (`\s+(?!\S)`), which Go's regexp lacks. These scanners give
// exactly the pieces those regexes give, alternative by alternative, with
// leftmost-first alternation and greedy quantifiers. \s is Unicode
// White_Space (unicode.IsSpace), \p{L} and \p{N} are Unicode categories.

// splitScheme names a known split regex.
type splitScheme int

const (
	schemeGPT2   splitScheme = iota + 1 // GPT-2, also ByteLevel's use_regex
	schemeLlama3                        // Llama-3: \p{N}{1,3}
	schemeQwen2                         // Qwen2: single \p{N}
)

// Regex strings as they appear in tokenizer.json files.
const (
	regexGPT2   = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
	regexLlama3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	regexQwen2  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

var knownRegexes = map[string]splitScheme{
	regexGPT2:   schemeGPT2,
	regexLlama3: schemeLlama3,
	regexQwen2:  schemeQwen2,
}

// scanSplit appends the pieces of s under scheme to dst. The pieces cover
// s completely and in order.
func scanSplit(scheme splitScheme, s string, dst []string) []string {
	for i := 0; i < len(s); {
		var n int
		switch scheme {
		case schemeGPT2:
			n = matchGPT2(s[i:])
		case schemeLlama3:
			n = matchLlama3(s[i:], 3)
		default:
			n = matchLlama3(s[i:], 1)
		}
		dst = append(dst, s[i:i+n])
		i += n
	}
	return dst
}

func isL(r rune) bool {
	if r < utf8.RuneSelf {
		return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z'
	}
	return unicode.IsLetter(r)
}

func isN(r rune) bool {
	if r < utf8.RuneSelf {
		return '0' <= r && r <= '9'
	}
	return unicode.IsNumber(r)
}

func isS(r rune) bool {
	if r < utf8.RuneSelf {
		return r == ' ' || '\t' <= r && r <= '\r'
	}
	return unicode.IsSpace(r)
}

// isO reports [^\s\p{L}\p{N}]; invalid UTF-8 decodes to U+FFFD, a symbol.
func isO(r rune) bool { return !isS(r) && !isL(r) && !isN(r) }

// runOf returns the byte length of the longest prefix of s whose runes
// satisfy f.
func runOf(s string, f func(rune) bool) int {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if !f(r) {
			break
		}
		i += n
	}
	return i
}

// contraction matches 's 't 're 've 'm 'll 'd at the start of s (which
// begins with '), case-insensitively when fold is set: ASCII case plus
// U+017F (long s), which Unicode case folding maps to s.
func contraction(s string, fold bool) int {
	lower := func(c byte) byte {
		if fold && 'A' <= c && c <= 'Z' {
			return c + 'a' - 'A'
		}
		return c
	}
	if len(s) < 2 {
		return 0
	}
	if fold && strings.HasPrefix(s[1:], "ſ") {
		return 1 + len("ſ")
	}
	switch lower(s[1]) {
	case 's', 't', 'm', 'd':
		return 2
	case 'r', 'v':
		if len(s) >= 3 && lower(s[2]) == 'e' {
			return 3
		}
	case 'l':
		if len(s) >= 3 && lower(s[2]) == 'l' {
			return 3
		}
	}
	return 0
}

// spaceTail handles the whitespace alternatives `\s+(?!\S)|\s+` for a run
// of whitespace that starts s and contains no line break that an earlier
// alternative would have taken.
func spaceTail(s string, run int) int {
	if run == len(s) {
		return run // followed by the end: (?!\S) holds
	}
	// Followed by a non-space: back off one rune if that leaves a match.
	_, last := utf8.DecodeLastRuneInString(s[:run])
	if run-last > 0 {
		return run - last
	}
	return run // \s+
}

// matchGPT2 returns the length of the first piece of s under
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
func matchGPT2(s string) int {
	r0, n0 := utf8.DecodeRuneInString(s)
	if r0 == '\'' {
		if n := contraction(s, false); n > 0 {
			return n
		}
	}
	if r0 == ' ' && len(s) > n0 {
		r1, _ := utf8.DecodeRuneInString(s[n0:])
		switch {
		case isL(r1):
			return n0 + runOf(s[n0:], isL)
		case isN(r1):
			return n0 + runOf(s[n0:], isN)
		case isO(r1):
			return n0 + runOf(s[n0:], isO)
		}
	}
	switch {
	case isL(r0):
		return runOf(s, isL)
	case isN(r0):
		return runOf(s, isN)
	case isO(r0):
		return runOf(s, isO)
	}
	return spaceTail(s, runOf(s, isS))
}

// matchLlama3 returns the length of the first piece of s under the Llama-3
// pattern (maxDigits 3) or the Qwen2 one (maxDigits 1):
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
func matchLlama3(s string, maxDigits int) int {
	r0, n0 := utf8.DecodeRuneInString(s)
	if r0 == '\'' {
		if n := contraction(s, true); n > 0 {
			return n
		}
	}
	if isL(r0) {
		return runOf(s, isL)
	}
	if r0 != '\r' && r0 != '\n' && !isN(r0) && len(s) > n0 {
		if r1, _ := utf8.DecodeRuneInString(s[n0:]); isL(r1) {
			return n0 + runOf(s[n0:], isL)
		}
	}
	if isN(r0) {
		i := 0
		for k := 0; k < maxDigits && i < len(s); k++ {
			r, n := utf8.DecodeRuneInString(s[i:])
			if !isN(r) {
				break
			}
			i += n
		}
		return i
	}
	crlf := func(r rune) bool { return r == '\r' || r == '\n' }
	if r0 == ' ' && len(s) > n0 {
		if r1, _ := utf8.DecodeRuneInString(s[n0:]); isO(r1) {
			i := n0 + runOf(s[n0:], isO)
			return i + runOf(s[i:], crlf)
		}
	}
	if isO(r0) {
		i := runOf(s, isO)
		return i + runOf(s[i:], crlf)
	}
	// r0 is whitespace. \s*[\r\n]+ ends just after the last line break of
	// the run (the run's end is a non-space, so no break follows it).
	run := runOf(s, isS)
	for i := run - 1; i >= 0; i-- {
		if s[i] == '\r' || s[i] == '\n' {
			return i + 1
		}
	}
	return spaceTail(s, run)
}
