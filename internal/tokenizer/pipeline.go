package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// This file holds the normalizers, pre-tokenizers, post-processors and
// decoders of tokenizer.json, each compiled from its JSON once at load.

// component is the union of the fields of every supported component type.
type component struct {
	Type string `json:"type"`

	Normalizers   []json.RawMessage `json:"normalizers"`
	Pretokenizers []json.RawMessage `json:"pretokenizers"`
	Decoders      []json.RawMessage `json:"decoders"`
	Processors    []json.RawMessage `json:"processors"`

	Prepend  string   `json:"prepend"`
	Pattern  *pattern `json:"pattern"`
	Content  string   `json:"content"`
	Behavior string   `json:"behavior"`
	Invert   bool     `json:"invert"`

	AddPrefixSpace *bool  `json:"add_prefix_space"`
	UseRegex       *bool  `json:"use_regex"`
	Replacement    string `json:"replacement"`
	PrependScheme  string `json:"prepend_scheme"`
	Split          *bool  `json:"split"`

	Start int `json:"start"`
	Stop  int `json:"stop"`

	Single        []json.RawMessage        `json:"single"`
	SpecialTokens map[string]templateToken `json:"special_tokens"`
	Cls           []json.RawMessage        `json:"cls"`
	Sep           []json.RawMessage        `json:"sep"`

	IndividualDigits bool `json:"individual_digits"`
}

type pattern struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

type templateToken struct {
	ID  string  `json:"id"`
	IDs []int32 `json:"ids"`
}

func parseComponent(raw json.RawMessage) (*component, error) {
	if isNull(raw) {
		return nil, nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func isNull(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null"
}

// ---- normalizers ----

type normalizer func(string) string

func compileNormalizer(raw json.RawMessage) (normalizer, error) {
	c, err := parseComponent(raw)
	if err != nil || c == nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var fs []normalizer
		for _, r := range c.Normalizers {
			f, err := compileNormalizer(r)
			if err != nil {
				return nil, err
			}
			if f != nil {
				fs = append(fs, f)
			}
		}
		return func(s string) string {
			for _, f := range fs {
				s = f(s)
			}
			return s
		}, nil
	case "NFC":
		return norm.NFC.String, nil
	case "NFD":
		return norm.NFD.String, nil
	case "NFKC":
		return norm.NFKC.String, nil
	case "NFKD":
		return norm.NFKD.String, nil
	case "Lowercase":
		return strings.ToLower, nil
	case "Prepend":
		p := c.Prepend
		return func(s string) string {
			if s == "" {
				return s
			}
			return p + s
		}, nil
	case "Replace":
		rep, err := compileReplace(c)
		if err != nil {
			return nil, fmt.Errorf("normalizer Replace: %w", err)
		}
		return rep, nil
	}
	return nil, fmt.Errorf("normalizer %q: %w", c.Type, ErrUnsupported)
}

func compileReplace(c *component) (func(string) string, error) {
	if c.Pattern == nil {
		return nil, errors.New("no pattern")
	}
	content := c.Content
	if c.Pattern.String != nil {
		old := *c.Pattern.String
		if old == "" {
			return func(s string) string { return s }, nil
		}
		return func(s string) string { return strings.ReplaceAll(s, old, content) }, nil
	}
	if c.Pattern.Regex != nil {
		re, err := regexp.Compile(*c.Pattern.Regex)
		if err != nil {
			return nil, fmt.Errorf("regex %q: %w", *c.Pattern.Regex, ErrUnsupported)
		}
		return func(s string) string { return re.ReplaceAllLiteralString(s, content) }, nil
	}
	return nil, errors.New("pattern has neither String nor Regex")
}

// ---- pre-tokenizers ----

// piece is a part of the text on its way through the pre-tokenizers.
// first says it starts at the beginning of the input (Metaspace's
// prepend_scheme "first").
type piece struct {
	s     string
	first bool
}

type preTokenizer func(in []piece) []piece

func compilePreTokenizer(raw json.RawMessage) (preTokenizer, error) {
	c, err := parseComponent(raw)
	if err != nil || c == nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var fs []preTokenizer
		for _, r := range c.Pretokenizers {
			f, err := compilePreTokenizer(r)
			if err != nil {
				return nil, err
			}
			if f != nil {
				fs = append(fs, f)
			}
		}
		return func(in []piece) []piece {
			for _, f := range fs {
				in = f(in)
			}
			return in
		}, nil
	case "ByteLevel":
		addPrefix := c.AddPrefixSpace != nil && *c.AddPrefixSpace
		useRegex := c.UseRegex == nil || *c.UseRegex
		return func(in []piece) []piece {
			out := make([]piece, 0, len(in))
			var parts []string
			for _, p := range in {
				s := p.s
				if addPrefix && !strings.HasPrefix(s, " ") {
					s = " " + s
				}
				parts = parts[:0]
				if useRegex {
					parts = scanSplit(schemeGPT2, s, parts)
				} else {
					parts = append(parts, s)
				}
				for i, part := range parts {
					out = append(out, piece{s: byteLevelEncode(part), first: p.first && i == 0})
				}
			}
			return out
		}, nil
	case "Split":
		return compileSplit(c)
	case "Metaspace":
		return compileMetaspace(c)
	case "Digits":
		individual := c.IndividualDigits
		return func(in []piece) []piece {
			var out []piece
			for _, p := range in {
				out = appendSplit(out, p, func(s string) [][2]int {
					return digitSpans(s, individual)
				}, "Isolated", false)
			}
			return out
		}, nil
	}
	return nil, fmt.Errorf("pre_tokenizer %q: %w", c.Type, ErrUnsupported)
}

func compileSplit(c *component) (preTokenizer, error) {
	if c.Pattern == nil {
		return nil, errors.New("pre_tokenizer Split: no pattern")
	}
	switch c.Behavior {
	case "Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous":
	default:
		return nil, fmt.Errorf("pre_tokenizer Split behavior %q: %w", c.Behavior, ErrUnsupported)
	}
	var find func(string) [][2]int
	switch {
	case c.Pattern.String != nil:
		lit := *c.Pattern.String
		find = func(s string) [][2]int {
			var spans [][2]int
			if lit == "" {
				return nil
			}
			for i := 0; ; {
				j := strings.Index(s[i:], lit)
				if j < 0 {
					return spans
				}
				spans = append(spans, [2]int{i + j, i + j + len(lit)})
				i += j + len(lit)
			}
		}
	case c.Pattern.Regex != nil:
		scheme, ok := knownRegexes[*c.Pattern.Regex]
		if !ok {
			return nil, fmt.Errorf("pre_tokenizer Split regex %q: only the GPT-2, Llama-3 and Qwen2 patterns are implemented: %w", *c.Pattern.Regex, ErrUnsupported)
		}
		if c.Behavior == "Isolated" && !c.Invert {
			// The common case (Llama-3, Qwen2): the pieces are the matches.
			return func(in []piece) []piece {
				out := make([]piece, 0, len(in)*4)
				var parts []string
				for _, p := range in {
					parts = scanSplit(scheme, p.s, parts[:0])
					for i, part := range parts {
						out = append(out, piece{s: part, first: p.first && i == 0})
					}
				}
				return out
			}, nil
		}
		find = func(s string) [][2]int {
			parts := scanSplit(scheme, s, nil)
			spans := make([][2]int, len(parts))
			at := 0
			for i, p := range parts {
				spans[i] = [2]int{at, at + len(p)}
				at += len(p)
			}
			return spans
		}
	default:
		return nil, errors.New("pre_tokenizer Split: pattern has neither String nor Regex")
	}
	behavior, invert := c.Behavior, c.Invert
	return func(in []piece) []piece {
		var out []piece
		for _, p := range in {
			out = appendSplit(out, p, find, behavior, invert)
		}
		return out
	}, nil
}

// appendSplit splits p at the matches find reports, treating matches and
// the gaps between them as behavior says (the reference's
// SplitDelimiterBehavior), and appends the non-empty pieces to out.
func appendSplit(out []piece, p piece, find func(string) [][2]int, behavior string, invert bool) []piece {
	s := p.s
	type span struct {
		a, b  int
		match bool
	}
	var spans []span
	at := 0
	for _, m := range find(s) {
		if m[0] > at {
			spans = append(spans, span{at, m[0], invert})
		}
		if m[1] > m[0] {
			spans = append(spans, span{m[0], m[1], !invert})
		}
		at = m[1]
	}
	if at < len(s) {
		spans = append(spans, span{at, len(s), invert})
	}
	var parts [][2]int
	switch behavior {
	case "Isolated":
		for _, sp := range spans {
			parts = append(parts, [2]int{sp.a, sp.b})
		}
	case "Removed":
		for _, sp := range spans {
			if !sp.match {
				parts = append(parts, [2]int{sp.a, sp.b})
			}
		}
	case "MergedWithPrevious":
		for i, sp := range spans {
			if sp.match && len(parts) > 0 && !spans[i-1].match {
				parts[len(parts)-1][1] = sp.b
			} else {
				parts = append(parts, [2]int{sp.a, sp.b})
			}
		}
	case "MergedWithNext":
		pendingStart := -1
		for _, sp := range spans {
			if sp.match {
				if pendingStart < 0 {
					pendingStart = sp.a
				} else {
					parts = append(parts, [2]int{pendingStart, sp.a})
					pendingStart = sp.a
				}
				continue
			}
			a := sp.a
			if pendingStart >= 0 {
				a = pendingStart
				pendingStart = -1
			}
			parts = append(parts, [2]int{a, sp.b})
		}
		if pendingStart >= 0 {
			parts = append(parts, [2]int{pendingStart, len(s)})
		}
	case "Contiguous":
		for i, sp := range spans {
			if i > 0 && sp.match && spans[i-1].match && len(parts) > 0 {
				parts[len(parts)-1][1] = sp.b
			} else {
				parts = append(parts, [2]int{sp.a, sp.b})
			}
		}
	}
	for _, pt := range parts {
		if pt[1] > pt[0] {
			out = append(out, piece{s: s[pt[0]:pt[1]], first: p.first && pt[0] == 0})
		}
	}
	return out
}

func digitSpans(s string, individual bool) [][2]int {
	var spans [][2]int
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if !isN(r) {
			i += n
			continue
		}
		if individual {
			spans = append(spans, [2]int{i, i + n})
			i += n
			continue
		}
		j := i + runOf(s[i:], isN)
		spans = append(spans, [2]int{i, j})
		i = j
	}
	return spans
}

func compileMetaspace(c *component) (preTokenizer, error) {
	rep := c.Replacement
	if rep == "" {
		rep = "▁"
	}
	scheme := c.PrependScheme
	if scheme == "" { // older files: add_prefix_space
		scheme = "always"
		if c.AddPrefixSpace != nil && !*c.AddPrefixSpace {
			scheme = "never"
		}
	}
	switch scheme {
	case "always", "first", "never":
	default:
		return nil, fmt.Errorf("pre_tokenizer Metaspace prepend_scheme %q: %w", scheme, ErrUnsupported)
	}
	split := c.Split == nil || *c.Split
	return func(in []piece) []piece {
		var out []piece
		for _, p := range in {
			s := strings.ReplaceAll(p.s, " ", rep)
			if (scheme == "always" || (scheme == "first" && p.first)) && !strings.HasPrefix(s, rep) {
				s = rep + s
			}
			if !split {
				out = append(out, piece{s: s, first: p.first})
				continue
			}
			out = appendSplit(out, piece{s: s, first: p.first}, func(s string) [][2]int {
				var spans [][2]int
				for i := 0; ; {
					j := strings.Index(s[i:], rep)
					if j < 0 {
						return spans
					}
					spans = append(spans, [2]int{i + j, i + j + len(rep)})
					i += j + len(rep)
				}
			}, "MergedWithNext", false)
		}
		return out
	}, nil
}

// ---- byte level ----

// byteToRune and runeToByte are GPT-2's bytes_to_unicode table: printable
// bytes stand for themselves, the others for U+0100 upwards.
var (
	byteToRune [256]rune
	runeToByte = map[rune]byte{}
)

func init() {
	n := rune(0)
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			byteToRune[b] = rune(b)
		} else {
			byteToRune[b] = 256 + n
			n++
		}
		runeToByte[byteToRune[b]] = byte(b)
	}
}

func byteLevelEncode(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		n += utf8.RuneLen(byteToRune[s[i]])
	}
	if n == len(s) {
		return s // all bytes stand for themselves
	}
	b := make([]byte, 0, n)
	for i := 0; i < len(s); i++ {
		b = utf8.AppendRune(b, byteToRune[s[i]])
	}
	return string(b)
}

// ---- post-processors ----

// postProcessor is what a single sequence gets around it with
// add_special_tokens.
type postProcessor struct {
	prefix, suffix []int32
}

func compilePostProcessor(raw json.RawMessage) (postProcessor, error) {
	var pp postProcessor
	c, err := parseComponent(raw)
	if err != nil || c == nil {
		return pp, err
	}
	switch c.Type {
	case "ByteLevel":
		return pp, nil
	case "Sequence":
		for _, r := range c.Processors {
			sub, err := compilePostProcessor(r)
			if err != nil {
				return pp, err
			}
			pp.prefix = append(pp.prefix, sub.prefix...)
			pp.suffix = append(sub.suffix, pp.suffix...)
		}
		return pp, nil
	case "TemplateProcessing":
		seen := false
		for _, r := range c.Single {
			var item struct {
				SpecialToken *struct {
					ID string `json:"id"`
				} `json:"SpecialToken"`
				Sequence *struct {
					ID string `json:"id"`
				} `json:"Sequence"`
			}
			if err := json.Unmarshal(r, &item); err != nil {
				return pp, fmt.Errorf("post_processor TemplateProcessing: %w", err)
			}
			switch {
			case item.Sequence != nil:
				seen = true
			case item.SpecialToken != nil:
				tok, ok := c.SpecialTokens[item.SpecialToken.ID]
				if !ok {
					return pp, fmt.Errorf("post_processor TemplateProcessing: special token %q not declared", item.SpecialToken.ID)
				}
				if seen {
					pp.suffix = append(pp.suffix, tok.IDs...)
				} else {
					pp.prefix = append(pp.prefix, tok.IDs...)
				}
			}
		}
		return pp, nil
	case "RobertaProcessing", "BertProcessing":
		id := func(pair []json.RawMessage) ([]int32, error) {
			var n int32
			if len(pair) != 2 || json.Unmarshal(pair[1], &n) != nil {
				return nil, fmt.Errorf("post_processor %s: bad cls/sep", c.Type)
			}
			return []int32{n}, nil
		}
		if pp.prefix, err = id(c.Cls); err != nil {
			return pp, err
		}
		if pp.suffix, err = id(c.Sep); err != nil {
			return pp, err
		}
		return pp, nil
	}
	return pp, fmt.Errorf("post_processor %q: %w", c.Type, ErrUnsupported)
}

// ---- decoders ----

// decoder says how a token's string becomes bytes of text.
type decoder struct {
	byteLevel    bool        // map GPT-2's byte runes back to bytes
	replace      [][2]string // Replace decoders, in order
	byteFallback bool        // <0xNN> is the byte NN
	stripFirst   int         // leading spaces removed from the first token
	stripAll     bool        // ... and from every token (Strip without Fuse before it)
	fused        bool        // a Fuse decoder was seen

	metaspace          string // Metaspace decoder: its replacement becomes a space
	metaspaceDropFirst bool   // ... except in the first token, where it is dropped
}

func compileDecoder(raw json.RawMessage) (decoder, error) {
	var d decoder
	err := d.add(raw)
	return d, err
}

func (d *decoder) add(raw json.RawMessage) error {
	c, err := parseComponent(raw)
	if err != nil || c == nil {
		return err
	}
	switch c.Type {
	case "Sequence":
		for _, r := range c.Decoders {
			if err := d.add(r); err != nil {
				return err
			}
		}
	case "ByteLevel":
		d.byteLevel = true
	case "Replace":
		if c.Pattern == nil || c.Pattern.String == nil {
			return fmt.Errorf("decoder Replace without a string pattern: %w", ErrUnsupported)
		}
		d.replace = append(d.replace, [2]string{*c.Pattern.String, c.Content})
	case "ByteFallback":
		d.byteFallback = true
	case "Fuse":
		d.fused = true
	case "Strip":
		if c.Content != " " || c.Stop != 0 {
			return fmt.Errorf("decoder Strip of %q (%d, %d): %w", c.Content, c.Start, c.Stop, ErrUnsupported)
		}
		// After Fuse the tokens are one string, so only the start of the
		// text is stripped; without it, every token is.
		d.stripFirst = c.Start
		d.stripAll = !d.fused
	case "Metaspace":
		rep := c.Replacement
		if rep == "" {
			rep = "▁"
		}
		// The reference drops every replacement character of the first
		// token (not only a leading one) unless prepend_scheme is never.
		d.metaspace = rep
		d.metaspaceDropFirst = c.PrependScheme != "never" && (c.AddPrefixSpace == nil || *c.AddPrefixSpace)
	default:
		return fmt.Errorf("decoder %q: %w", c.Type, ErrUnsupported)
	}
	return nil
}

// bytes returns the decoded bytes of token string tok.
func (d *decoder) bytes(tok string, first bool) []byte {
	if d.byteFallback && len(tok) == 6 && strings.HasPrefix(tok, "<0x") && tok[5] == '>' {
		if b, err := strconv.ParseUint(tok[3:5], 16, 8); err == nil {
			return []byte{byte(b)}
		}
	}
	if d.metaspace != "" {
		with := " "
		if first && d.metaspaceDropFirst {
			with = ""
		}
		tok = strings.ReplaceAll(tok, d.metaspace, with)
	}
	for _, r := range d.replace {
		tok = strings.ReplaceAll(tok, r[0], r[1])
	}
	var out []byte
	if d.byteLevel {
		out = make([]byte, 0, len(tok))
		for _, r := range tok {
			if b, ok := runeToByte[r]; ok {
				out = append(out, b)
			} else {
				out = utf8.AppendRune(out, r)
			}
		}
	} else {
		out = []byte(tok)
	}
	if first || d.stripAll {
		for k := 0; k < d.stripFirst && len(out) > 0 && out[0] == ' '; k++ {
			out = out[1:]
		}
	}
	return out
}
