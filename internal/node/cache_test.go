package node

import (
	"testing"

	"github.com/npumesh/npumesh/internal/kvcache"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

func TestCacheEventsBufferAndOverflow(t *testing.T) {
	var c cacheEvents
	c.add("a", kvcache.Event{Kind: kvcache.EventStored, Hashes: []uint64{1, 2}})
	c.add("a", kvcache.Event{Kind: kvcache.EventEvicted, Hashes: []uint64{1}})
	got := c.take()
	if len(got) != 2 || got[0].GetKind() != pb.CacheEvent_KIND_STORED || got[1].GetKind() != pb.CacheEvent_KIND_EVICTED || len(got[0].GetBlockHashes()) != 2 {
		t.Fatalf("take = %v", got)
	}
	if again := c.take(); len(again) != 0 {
		t.Fatalf("second take = %v, want empty", again)
	}
	// Overflow for one model becomes a single "cleared" event for it; the
	// other model's events are kept.
	c.add("b", kvcache.Event{Kind: kvcache.EventStored, Hashes: []uint64{7}})
	big := make([]uint64, maxPendingHashes)
	c.add("a", kvcache.Event{Kind: kvcache.EventStored, Hashes: big})
	c.add("a", kvcache.Event{Kind: kvcache.EventStored, Hashes: []uint64{9}})
	got = c.take()
	if len(got) != 2 || got[0].GetModel() != "b" || got[1].GetKind() != pb.CacheEvent_KIND_CLEARED || got[1].GetModel() != "a" {
		t.Fatalf("after overflow take = %v", got)
	}
}
