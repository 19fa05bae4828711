package node

import (
	"sync"

	"github.com/npumesh/npumesh/internal/kvcache"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// cacheEventSource is implemented by backends with a prefix KV cache; the
// node forwards their events on the heartbeat so the router knows which
// prefixes each node holds.
type cacheEventSource interface {
	SetCacheEvents(f func(kvcache.Event))
}

// maxPendingHashes bounds the events buffered between two heartbeats. Past
// it the buffer is replaced by one "cleared" event per model: the router
// forgets the node's blocks for that model rather than hold a wrong index.
const maxPendingHashes = 1 << 16

// cacheEvents buffers cache events until the next heartbeat.
type cacheEvents struct {
	mu       sync.Mutex // guards pending, hashes, overflow
	pending  []*pb.CacheEvent
	hashes   int
	overflow map[string]bool // models whose events were dropped
}

func (c *cacheEvents) add(model string, ev kvcache.Event) {
	kind := pb.CacheEvent_KIND_STORED
	if ev.Kind == kvcache.EventEvicted {
		kind = pb.CacheEvent_KIND_EVICTED
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.overflow[model] {
		return
	}
	if c.hashes+len(ev.Hashes) > maxPendingHashes {
		if c.overflow == nil {
			c.overflow = map[string]bool{}
		}
		c.overflow[model] = true
		kept := c.pending[:0]
		c.hashes = 0
		for _, e := range c.pending {
			if e.GetModel() != model {
				kept = append(kept, e)
				c.hashes += len(e.GetBlockHashes())
			}
		}
		c.pending = kept
		return
	}
	c.hashes += len(ev.Hashes)
	c.pending = append(c.pending, &pb.CacheEvent{Kind: kind, Model: model, BlockHashes: append([]uint64(nil), ev.Hashes...)})
}

// take returns the buffered events and empties the buffer.
func (c *cacheEvents) take() []*pb.CacheEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.pending
	for model := range c.overflow {
		out = append(out, &pb.CacheEvent{Kind: pb.CacheEvent_KIND_CLEARED, Model: model})
	}
	c.pending, c.hashes, c.overflow = nil, 0, nil
	return out
}
