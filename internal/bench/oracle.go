package bench

import (
	"container/list"
	"errors"
)

// OracleOptions describe the cluster a run's requests are replayed on.
type OracleOptions struct {
	// Tokenize encodes a completion prompt as the nodes' engine does
	// (special tokens included).
	Tokenize func(prompt string) ([]int32, error)
	// BlockSize is the KV cache block size, the unit of prefix reuse.
	BlockSize int
	// Nodes is the number of nodes; NodeBlocks the KV cache capacity of one
	// in blocks (0: unbounded).
	Nodes, NodeBlocks int
}

// OracleResult is what routing with perfect knowledge could have reached on
// the same requests, sent in the same order.
type OracleResult struct {
	// BoundHitRate: every request reuses the longest run of leading blocks
	// it shares with any earlier request, wherever that ran and however
	// full the caches: no router does better on this sequence.
	BoundHitRate float64 `json:"bound_hit_rate"`
	// HitRate: a router that knows every node's cache exactly, with no
	// reporting delay, sends each request to the node holding its longest
	// cached prefix (among equals the one sent fewest requests), and each
	// node keeps NodeBlocks blocks, evicting the least recently used.
	HitRate float64 `json:"hit_rate"`
	// PromptTokens is the replayed requests' prompt tokens, from Tokenize.
	PromptTokens int `json:"prompt_tokens"`
	// Mismatched counts requests whose token count differs from the node's
	// usage.prompt_tokens (a tokenizer that is not the engine's).
	Mismatched int `json:"mismatched"`
}

// Oracle replays log (Result.Log: warmup included, since it filled the
// caches; failed requests skipped) and computes the hit rates of
// OracleResult over the measured requests, counted as the engine counts
// them: the leading full blocks of the prompt without its last token (whose
// logits must be computed) that a cache holds, times the block size, over
// all prompt tokens. Both are optimistic, so a router measured against them
// is judged strictly: a request's blocks count as cached for the very next
// request although on a node they become reusable only once its prefill is
// done, and only prompt blocks take room (a node also keeps the answer's).
func Oracle(o OracleOptions, log []Sent) (*OracleResult, error) {
	if o.Tokenize == nil || o.BlockSize <= 0 || o.Nodes <= 0 {
		return nil, errors.New("bench: oracle needs a tokenizer, the block size and the node count")
	}
	res := &OracleResult{}
	seen := map[uint64]struct{}{}
	nodes := make([]*blockLRU, o.Nodes)
	sent := make([]int, o.Nodes)
	for i := range nodes {
		nodes[i] = newBlockLRU(o.NodeBlocks)
	}
	boundHit, hit := 0, 0
	for _, s := range log {
		if !s.OK {
			continue
		}
		ids, err := o.Tokenize(s.Prompt)
		if err != nil {
			return nil, err
		}
		chain := chainHashes(ids, o.BlockSize)
		reusable := (len(ids) - 1) / o.BlockSize // full blocks before the last token
		// The bound: anything sent before, anywhere.
		b := 0
		for b < reusable {
			if _, ok := seen[chain[b]]; !ok {
				break
			}
			b++
		}
		for _, h := range chain {
			seen[h] = struct{}{}
		}
		// The omniscient router.
		best, bestLen := 0, -1
		for i, n := range nodes {
			l := n.prefix(chain[:reusable])
			if l > bestLen || (l == bestLen && sent[i] < sent[best]) {
				best, bestLen = i, l
			}
		}
		sent[best]++
		nodes[best].add(chain)
		if s.Warmup {
			continue
		}
		if s.PromptTokens > 0 && s.PromptTokens != len(ids) {
			res.Mismatched++
		}
		res.PromptTokens += len(ids)
		boundHit += b * o.BlockSize
		hit += bestLen * o.BlockSize
	}
	if res.PromptTokens > 0 {
		res.BoundHitRate = float64(boundHit) / float64(res.PromptTokens)
		res.HitRate = float64(hit) / float64(res.PromptTokens)
	}
	return res, nil
}

// chainHashes hashes each full block of ids chained with the blocks before
// it, so that equal hashes mean equal prefixes (the engine's scheme; the
// seed differs, which a replay does not care about).
func chainHashes(ids []int32, bs int) []uint64 {
	out := make([]uint64, 0, len(ids)/bs)
	h := uint64(14695981039346656037)
	for i := 0; i+bs <= len(ids); i += bs {
		for _, t := range ids[i : i+bs] {
			h ^= uint64(uint32(t))
			h *= 1099511628211
			h ^= h >> 29
		}
		h ^= uint64(i) * 0x9e3779b97f4a7c15
		out = append(out, h)
	}
	return out
}

// blockLRU is one node's cache in the replay: block hashes, least recently
// used first out.
type blockLRU struct {
	cap int // 0: unbounded
	l   *list.List
	m   map[uint64]*list.Element
}

func newBlockLRU(n int) *blockLRU {
	return &blockLRU{cap: n, l: list.New(), m: map[uint64]*list.Element{}}
}

// prefix counts the leading hashes held.
func (c *blockLRU) prefix(chain []uint64) int {
	n := 0
	for _, h := range chain {
		if _, ok := c.m[h]; !ok {
			break
		}
		n++
	}
	return n
}

// add marks chain most recently used, the leading blocks most recent (they
// are the ones a later request can reuse only if they stay), evicting what
// exceeds the capacity.
func (c *blockLRU) add(chain []uint64) {
	for i := len(chain) - 1; i >= 0; i-- {
		h := chain[i]
		if e, ok := c.m[h]; ok {
			c.l.MoveToFront(e)
		} else {
			c.m[h] = c.l.PushFront(h)
		}
	}
	for c.cap > 0 && c.l.Len() > c.cap {
		e := c.l.Back()
		c.l.Remove(e)
		delete(c.m, e.Value.(uint64))
	}
}
