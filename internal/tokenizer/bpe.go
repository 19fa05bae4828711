package tokenizer

import (
	"fmt"
	"sync"
	"unicode/utf8"
)

// bpe is the BPE model of a Hugging Face tokenizer.json: it turns one
// pre-tokenized word into ids by applying merges in rank order.
type bpe struct {
	vocab  map[string]int32
	merges map[uint64]merge // key: left id << 32 | right id

	byteFallback bool
	byteIDs      [256]int32 // ids of <0xNN>, -1 where missing
	unk          int32      // -1 when the model has no unknown token
	fuseUnk      bool
	ignoreMerges bool // a word that is itself in the vocabulary is emitted whole

	mu    sync.RWMutex
	cache map[string][]int32 // guarded by mu; words already encoded
}

type merge struct {
	rank int32
	id   int32 // id of the merged token
}

const (
	// bpeCacheMax bounds the word cache; past it words are still encoded,
	// just not remembered (like the reference implementation).
	bpeCacheMax = 1 << 16
	// bpeCacheWordMax keeps long words (whole SentencePiece sentences)
	// out of the cache.
	bpeCacheWordMax = 64
)

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// encode appends the ids of word to dst.
func (m *bpe) encode(word string, dst []int32) []int32 {
	if word == "" {
		return dst
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[word]; ok {
			return append(dst, id)
		}
	}
	cacheable := len(word) <= bpeCacheWordMax
	if cacheable {
		m.mu.RLock()
		ids, ok := m.cache[word]
		m.mu.RUnlock()
		if ok {
			return append(dst, ids...)
		}
	}
	ids := m.merge(m.symbols(word))
	if cacheable {
		m.mu.Lock()
		if len(m.cache) < bpeCacheMax {
			m.cache[word] = ids
		}
		m.mu.Unlock()
	}
	return append(dst, ids...)
}

// symbols splits word into the ids of its characters, falling back to byte
// tokens or the unknown token for characters outside the vocabulary.
// Characters with no id at all are dropped, as the reference does when the
// model has neither byte fallback nor an unknown token.
func (m *bpe) symbols(word string) []int32 {
	syms := make([]int32, 0, len(word))
	lastUnk := false
	for i := 0; i < len(word); {
		_, n := utf8.DecodeRuneInString(word[i:])
		ch := word[i : i+n]
		i += n
		if id, ok := m.vocab[ch]; ok {
			syms = append(syms, id)
			lastUnk = false
			continue
		}
		if m.byteFallback {
			ok := true
			for j := 0; j < len(ch); j++ {
				if m.byteIDs[ch[j]] < 0 {
					ok = false
				}
			}
			if ok {
				for j := 0; j < len(ch); j++ {
					syms = append(syms, m.byteIDs[ch[j]])
				}
				lastUnk = false
				continue
			}
		}
		if m.unk < 0 {
			continue
		}
		if m.fuseUnk && lastUnk {
			continue
		}
		syms = append(syms, m.unk)
		lastUnk = true
	}
	return syms
}

// merge applies merges lowest rank first (leftmost first among equal
// ranks) over a linked list of symbols, with a heap of candidate pairs
// that is checked lazily when popped.
func (m *bpe) merge(ids []int32) []int32 {
	if len(ids) < 2 {
		return ids
	}
	n := len(ids)
	next := make([]int32, n)
	prev := make([]int32, n)
	for i := range ids {
		next[i] = int32(i + 1)
		prev[i] = int32(i - 1)
	}
	next[n-1] = -1
	h := make(pairHeap, 0, n)
	for i := 0; i < n-1; i++ {
		if mg, ok := m.merges[pairKey(ids[i], ids[i+1])]; ok {
			h = append(h, pairItem{rank: mg.rank, pos: int32(i), left: ids[i], right: ids[i+1]})
		}
	}
	h.init()
	alive := n
	for len(h) > 0 {
		it := h.pop()
		nx := next[it.pos]
		if ids[it.pos] != it.left || nx < 0 || ids[nx] != it.right {
			continue // stale: one side was merged since
		}
		mg := m.merges[pairKey(it.left, it.right)]
		ids[it.pos] = mg.id
		ids[nx] = -1 // removed
		next[it.pos] = next[nx]
		if next[nx] >= 0 {
			prev[next[nx]] = it.pos
		}
		alive--
		if p := prev[it.pos]; p >= 0 {
			if mg, ok := m.merges[pairKey(ids[p], ids[it.pos])]; ok {
				h.push(pairItem{rank: mg.rank, pos: p, left: ids[p], right: ids[it.pos]})
			}
		}
		if nn := next[it.pos]; nn >= 0 {
			if mg, ok := m.merges[pairKey(ids[it.pos], ids[nn])]; ok {
				h.push(pairItem{rank: mg.rank, pos: it.pos, left: ids[it.pos], right: ids[nn]})
			}
		}
	}
	out := make([]int32, 0, alive)
	for i := int32(0); i >= 0; i = next[i] {
		out = append(out, ids[i])
	}
	return out
}

type pairItem struct {
	rank        int32
	pos         int32
	left, right int32
}

// pairHeap is a binary min-heap of candidate merges ordered by rank, then
// position (container/heap's interface boxing showed in profiles).
type pairHeap []pairItem

func (h pairHeap) less(i, j int) bool {
	if h[i].rank != h[j].rank {
		return h[i].rank < h[j].rank
	}
	return h[i].pos < h[j].pos
}

func (h pairHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *pairHeap) push(it pairItem) {
	*h = append(*h, it)
	s := *h
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if !s.less(i, p) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *pairHeap) pop() pairItem {
	s := *h
	it := s[0]
	last := len(s) - 1
	s[0] = s[last]
	*h = s[:last]
	h.down(0)
	return it
}

func (h pairHeap) down(i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		c := l
		if r := l + 1; r < len(h) && h.less(r, l) {
			c = r
		}
		if !h.less(c, i) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// newBPE builds the model from a parsed vocabulary and merge list.
func newBPE(vocab map[string]int32, merges [][2]string, unk string, byteFallback, fuseUnk, ignoreMerges bool) (*bpe, error) {
	m := &bpe{
		vocab:        vocab,
		merges:       make(map[uint64]merge, len(merges)),
		byteFallback: byteFallback,
		unk:          -1,
		fuseUnk:      fuseUnk,
		ignoreMerges: ignoreMerges,
		cache:        make(map[string][]int32),
	}
	for i := range m.byteIDs {
		m.byteIDs[i] = -1
		if id, ok := vocab[fmt.Sprintf("<0x%02X>", i)]; ok {
			m.byteIDs[i] = id
		}
	}
	if unk != "" {
		id, ok := vocab[unk]
		if !ok {
			return nil, fmt.Errorf("unk_token %q is not in the vocabulary", unk)
		}
		m.unk = id
	}
	var buf []byte
	for rank, p := range merges {
		a, okA := vocab[p[0]]
		b, okB := vocab[p[1]]
		if !okA || !okB {
			return nil, fmt.Errorf("merge %d (%q %q): token not in the vocabulary", rank, p[0], p[1])
		}
		buf = append(append(buf[:0], p[0]...), p[1]...)
		id, ok := vocab[string(buf)] // no allocation for the lookup
		if !ok {
			return nil, fmt.Errorf("merge %d (%q %q): merged token not in the vocabulary", rank, p[0], p[1])
		}
		// A repeated pair takes its last rank, as in the reference,
		// which collects the list into a map.
		m.merges[pairKey(a, b)] = merge{rank: int32(rank), id: id}
	}
	return m, nil
}
