// Package kvcache is the paged key/value cache of the engine: fixed-size
// blocks of positions drawn from a pool under a memory budget, shared
// between sequences by reference counting, and kept after a sequence ends
// so that a later prompt with the same prefix reuses them instead of
// computing them again. A full block is keyed by the chained hash of its
// tokens (package blockhash, which the router uses too); unreferenced
// blocks are evicted least recently used first.
//
// The cache stores numbers and does no arithmetic: the engine decides what
// a position holds (per layer, one key and one value vector of KVDim
// numbers, float32 or, with Config.Half, IEEE half floats). It must not
// import the engine or anything of the network.
package kvcache

import (
	"container/list"
	"errors"
	"fmt"
	"sync"

	"github.com/npumesh/npumesh/internal/kvcache/blockhash"
)

// DefaultBlockSize is the number of positions of a block when
// Config.BlockSize is 0.
const DefaultBlockSize = 16

// ErrNoSpace is returned when a block is needed and every block of the
// budget is referenced by a sequence.
var ErrNoSpace = errors.New("kvcache: every block of the budget is in use")

// Config describes a cache.
type Config struct {
	// ModelID seeds the block hashes (blockhash.Seed).
	ModelID string
	// BlockSize is the number of positions per block; 0 means
	// DefaultBlockSize.
	BlockSize int
	// Layers and KVDim give the shape of a position: per layer, a key
	// and a value of KVDim numbers each.
	Layers, KVDim int
	// Half stores the numbers as IEEE half floats (2 bytes; Block.KHalf
	// and VHalf) instead of float32 (4 bytes; Block.K and V): twice the
	// positions in the same budget, and half the bytes for attention to
	// read.
	Half bool
	// BudgetBytes caps the memory of all blocks; it is rounded down to
	// whole blocks, and at least one block is always allowed. Blocks are
	// allocated when first needed, so an idle cache holds little.
	BudgetBytes int64
	// OnEvent, when set, is called with the hashes of blocks that became
	// reusable (EventStored) or were dropped (EventEvicted), after the
	// cache's lock is released, on the goroutine that caused the change.
	// It must not block and must not call back into the cache.
	OnEvent func(Event)
}

// EventKind says what happened to the blocks of an Event.
type EventKind int

const (
	// EventStored: the blocks became available for prefix reuse.
	EventStored EventKind = iota + 1
	// EventEvicted: the blocks were dropped and are no longer cached.
	EventEvicted
)

func (k EventKind) String() string {
	switch k {
	case EventStored:
		return "stored"
	case EventEvicted:
		return "evicted"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event reports blocks stored in or evicted from the cache, by hash, for
// the node to forward to the router.
type Event struct {
	Kind   EventKind
	Hashes []uint64
}

// Block is BlockSize positions of keys and values for every layer.
type Block struct {
	// Layer l: keys at [2l*n, 2l*n+n), values after; n = stride. One of
	// data (float32) and half (Config.Half) is set.
	data   []float32
	half   []uint16
	stride int // BlockSize*KVDim

	// Guarded by Cache.mu.
	refs   int
	hash   uint64
	hashed bool          // published in Cache.byHash under hash
	lru    *list.Element // set while unreferenced and hashed
}

// K returns the keys of layer l: BlockSize rows of KVDim floats.
// It panics in a cache of half floats.
func (b *Block) K(l int) []float32 { return b.data[2*l*b.stride : (2*l+1)*b.stride] }

// V returns the values of layer l: BlockSize rows of KVDim floats.
// It panics in a cache of half floats.
func (b *Block) V(l int) []float32 { return b.data[(2*l+1)*b.stride : (2*l+2)*b.stride] }

// KHalf returns the keys of layer l in a cache of half floats
// (Config.Half): BlockSize rows of KVDim IEEE half floats. It panics in a
// float32 cache.
func (b *Block) KHalf(l int) []uint16 { return b.half[2*l*b.stride : (2*l+1)*b.stride] }

// VHalf returns the values of layer l in a cache of half floats.
func (b *Block) VHalf(l int) []uint16 { return b.half[(2*l+1)*b.stride : (2*l+2)*b.stride] }

// Stats counts blocks.
type Stats struct {
	Capacity int // blocks the budget allows
	InUse    int // referenced by at least one sequence
	Cached   int // unreferenced but kept for prefix reuse (evictable)
	Free     int // neither: allocatable without evicting
	// Hits and Misses count blocks looked up for prefix reuse.
	Hits, Misses int64
	Evictions    int64
}

// Cache is a pool of blocks. Its methods are safe for concurrent use; a
// Seq is not, and belongs to one goroutine.
type Cache struct {
	cfg        Config
	seed       uint64
	blockBytes int64
	capacity   int

	// mu guards everything below and the bookkeeping fields of Blocks.
	mu        sync.Mutex
	allocated int      // blocks made so far, <= capacity
	free      []*Block // made, unreferenced, unhashed
	byHash    map[uint64]*Block
	lru       *list.List // unreferenced hashed blocks, least recently used at the front
	inUse     int
	hits      int64
	misses    int64
	evictions int64
}

// New makes an empty cache.
func New(cfg Config) (*Cache, error) {
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	if cfg.BlockSize < 0 || cfg.Layers <= 0 || cfg.KVDim <= 0 || cfg.BudgetBytes < 0 {
		return nil, fmt.Errorf("kvcache: invalid config: block size %d, %d layers, KV dim %d, budget %d bytes",
			cfg.BlockSize, cfg.Layers, cfg.KVDim, cfg.BudgetBytes)
	}
	c := &Cache{cfg: cfg, seed: blockhash.Seed(cfg.ModelID), byHash: map[uint64]*Block{}, lru: list.New()}
	c.blockBytes = ElemBytes(cfg.Half) * 2 * int64(cfg.Layers) * int64(cfg.BlockSize) * int64(cfg.KVDim)
	c.capacity = int(max(1, cfg.BudgetBytes/c.blockBytes))
	return c, nil
}

// ElemBytes is the size of one stored number: 2 with half floats, else 4.
func ElemBytes(half bool) int64 {
	if half {
		return 2
	}
	return 4
}

// BlockSize is the number of positions per block.
func (c *Cache) BlockSize() int { return c.cfg.BlockSize }

// BlockBytes is the memory of one block.
func (c *Cache) BlockBytes() int64 { return c.blockBytes }

// Stats returns the current counts.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{
		Capacity: c.capacity, InUse: c.inUse, Cached: c.lru.Len(),
		Free: c.capacity - c.inUse - c.lru.Len(),
		Hits: c.hits, Misses: c.misses, Evictions: c.evictions,
	}
}

// Available is the number of blocks a sequence could obtain now, evicting
// cached blocks if need be.
func (c *Cache) Available() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.capacity - c.inUse
}

func (c *Cache) emit(kind EventKind, hashes []uint64) {
	if len(hashes) > 0 && c.cfg.OnEvent != nil {
		c.cfg.OnEvent(Event{Kind: kind, Hashes: hashes})
	}
}

// alloc returns a referenced, unhashed block, evicting the least recently
// used cached block when the budget is reached. c.mu is held; evicted
// hashes are appended to *evicted.
func (c *Cache) alloc(evicted *[]uint64) (*Block, error) {
	var b *Block
	switch {
	case len(c.free) > 0:
		b = c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
	case c.allocated < c.capacity:
		stride := c.cfg.BlockSize * c.cfg.KVDim
		b = &Block{stride: stride}
		if c.cfg.Half {
			b.half = make([]uint16, 2*c.cfg.Layers*stride)
		} else {
			b.data = make([]float32, 2*c.cfg.Layers*stride)
		}
		c.allocated++
	case c.lru.Len() > 0:
		b = c.lru.Remove(c.lru.Front()).(*Block)
		b.lru = nil
		delete(c.byHash, b.hash)
		b.hashed = false
		c.evictions++
		*evicted = append(*evicted, b.hash)
	default:
		return nil, ErrNoSpace
	}
	b.refs = 1
	c.inUse++
	return b, nil
}

// unref drops one reference; c.mu is held.
func (c *Cache) unref(b *Block) {
	b.refs--
	if b.refs > 0 {
		return
	}
	c.inUse--
	if b.hashed {
		b.lru = c.lru.PushBack(b)
	} else {
		c.free = append(c.free, b)
	}
}

// Seq is one sequence's positions: the blocks that hold them, in order.
// Blocks before the sequence's last full block may be shared with other
// sequences and must not be written; positions past Len are the
// sequence's own.
type Seq struct {
	c      *Cache
	blocks []*Block
	n      int    // positions written
	full   int    // leading blocks that are full and hashed (or reused)
	last   uint64 // hash of block full-1, or the seed
	// pending holds the tokens of the partial block being filled, whose
	// hash is taken when it fills.
	pending []int32
}

// NewSeq starts an empty sequence.
func (c *Cache) NewSeq() *Seq { return &Seq{c: c, last: c.seed} }

// Len is the number of positions written.
func (s *Seq) Len() int { return s.n }

// Block returns the sequence's i-th block, which holds positions
// [i*BlockSize, (i+1)*BlockSize).
func (s *Seq) Block(i int) *Block { return s.blocks[i] }

// Reuse attaches the longest run of cached blocks that begins tokens, up
// to maxTokens tokens, and returns the number of positions it covers (a
// multiple of BlockSize). It may only be called on an empty sequence.
// Callers pass maxTokens < len(prompt) when they need the output of the
// prompt's last position, which reuse would skip.
func (s *Seq) Reuse(tokens []int32, maxTokens int) int {
	if s.n != 0 {
		panic("kvcache: Reuse on a sequence that is not empty")
	}
	bs := s.c.cfg.BlockSize
	nb := min(len(tokens), maxTokens) / bs
	hashes := make([]uint64, 0, nb)
	h := s.last
	for i := range nb {
		h = blockhash.Next(h, tokens[i*bs:(i+1)*bs])
		hashes = append(hashes, h)
	}
	c := s.c
	c.mu.Lock()
	for _, h := range hashes {
		b, ok := c.byHash[h]
		if !ok {
			break
		}
		if b.refs == 0 {
			c.lru.Remove(b.lru)
			b.lru = nil
			c.inUse++
		}
		b.refs++
		s.blocks = append(s.blocks, b)
	}
	k := len(s.blocks)
	c.hits += int64(k)
	c.misses += int64(len(hashes) - k)
	c.mu.Unlock()
	if k > 0 {
		s.last = hashes[k-1]
	}
	s.full = k
	s.n = k * bs
	return s.n
}

// Reserve makes sure positions [Len, Len+n) have blocks, allocating (and
// evicting cached blocks) as needed. On ErrNoSpace nothing changed.
func (s *Seq) Reserve(n int) error {
	bs := s.c.cfg.BlockSize
	need := (s.n+n+bs-1)/bs - len(s.blocks)
	if need <= 0 {
		return nil
	}
	c := s.c
	var evicted []uint64
	c.mu.Lock()
	if c.capacity-c.inUse < need {
		c.mu.Unlock()
		return ErrNoSpace
	}
	for range need {
		b, err := c.alloc(&evicted)
		if err != nil {
			panic("kvcache: accounting error: " + err.Error())
		}
		s.blocks = append(s.blocks, b)
	}
	c.mu.Unlock()
	c.emit(EventEvicted, evicted)
	return nil
}

// Commit records that positions [Len, Len+len(tokens)) now hold tokens
// (their keys and values are written, for every layer). Blocks this
// fills become reusable by later sequences with the same prefix.
func (s *Seq) Commit(tokens []int32) {
	bs := s.c.cfg.BlockSize
	if s.n+len(tokens) > len(s.blocks)*bs {
		panic(fmt.Sprintf("kvcache: Commit of %d positions after %d, but only %d blocks reserved", len(tokens), s.n, len(s.blocks)))
	}
	var stored, hashes []uint64
	var full []*Block
	for len(tokens) > 0 {
		k := min(len(tokens), bs-len(s.pending))
		s.pending = append(s.pending, tokens[:k]...)
		tokens = tokens[k:]
		s.n += k
		if len(s.pending) == bs {
			s.last = blockhash.Next(s.last, s.pending)
			s.pending = s.pending[:0]
			b := s.blocks[s.full]
			s.full++
			full = append(full, b)
			hashes = append(hashes, s.last)
		}
	}
	if len(full) == 0 {
		return
	}
	c := s.c
	c.mu.Lock()
	for i, b := range full {
		b.hash = hashes[i]
		// Another sequence may have published the same prefix first; this
		// copy then stays private and returns to the free list.
		if _, dup := c.byHash[b.hash]; dup {
			continue
		}
		c.byHash[b.hash] = b
		b.hashed = true
		stored = append(stored, b.hash)
	}
	c.mu.Unlock()
	c.emit(EventStored, stored)
}

// Release drops the sequence's references; its full blocks stay cached
// until evicted. The sequence is empty afterwards and may be reused.
// Blocks are released last first, so a prefix outlives its continuations
// in the LRU order.
func (s *Seq) Release() {
	c := s.c
	c.mu.Lock()
	for i := len(s.blocks) - 1; i >= 0; i-- {
		c.unref(s.blocks[i])
	}
	c.mu.Unlock()
	clear(s.blocks)
	s.blocks = s.blocks[:0]
	s.n, s.full, s.last, s.pending = 0, 0, c.seed, s.pending[:0]
}
