package route

import (
	"container/list"
	"math/bits"
	"sync"
)

// index maps KV block hashes to the nodes holding them, per model. Two
// kinds of holding are kept apart: reported (from the nodes' cache events:
// what they really hold) and approximate (what this coordinator routed to
// them, in a bounded LRU per node, for nodes that report no events and for
// chat prompts hashed from their message contents).
type index struct {
	approxCap int
	// pendingTTL is how long a block routed to a node that reports events
	// counts as held before the node's own Stored event confirms it.
	pendingTTL int64

	mu     sync.RWMutex // guards models (the map; each modelIndex has its own lock)
	models map[string]*modelIndex
}

type modelIndex struct {
	mu       sync.RWMutex      // guards everything below
	precise  map[uint64]bitset // block hash -> nodes holding it
	approx   map[uint64]bitset
	reported bitset                      // nodes that sent events for this model
	sets     map[int]map[uint64]struct{} // reported blocks per node, for CLEARED and forgetting
	lrus     map[int]*lru                // approximate blocks per node
	// Pending blocks: routed to a node that reports events, and not (yet)
	// in its reported set. They are in precise too, so that a decision
	// pays nothing for them, until they expire unconfirmed.
	pending map[int]map[uint64]int64 // node -> block -> expiry (latest)
	pfifo   []pendingEntry           // in expiry order
	phead   int
}

type pendingEntry struct {
	id  int
	h   uint64
	exp int64
}

type bitset []uint64

func (b bitset) has(id int) bool {
	w := id >> 6
	return w < len(b) && b[w]&(1<<(id&63)) != 0
}

func (b *bitset) set(id int) {
	w := id >> 6
	for len(*b) <= w {
		*b = append(*b, 0)
	}
	(*b)[w] |= 1 << (id & 63)
}

func (b bitset) clear(id int) {
	if w := id >> 6; w < len(b) {
		b[w] &^= 1 << (id & 63)
	}
}

func (b bitset) empty() bool {
	for _, w := range b {
		if w != 0 {
			return false
		}
	}
	return true
}

func newIndex(approxCap int, pendingTTL int64) *index {
	return &index{approxCap: approxCap, pendingTTL: pendingTTL, models: map[string]*modelIndex{}}
}

func (x *index) model(name string, create bool) *modelIndex {
	x.mu.RLock()
	mi := x.models[name]
	x.mu.RUnlock()
	if mi != nil || !create {
		return mi
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if mi = x.models[name]; mi == nil {
		mi = &modelIndex{
			precise: map[uint64]bitset{}, approx: map[uint64]bitset{},
			sets: map[int]map[uint64]struct{}{}, lrus: map[int]*lru{},
			pending: map[int]map[uint64]int64{},
		}
		x.models[name] = mi
	}
	return mi
}

// The maps hold bitsets by value (a slice header), so that a lookup costs
// the map's cache miss and the bits', not a third for a pointer.

func add(m map[uint64]bitset, h uint64, id int) {
	b := m[h]
	b.set(id)
	m[h] = b
}

func del(m map[uint64]bitset, h uint64, id int) {
	if b, ok := m[h]; ok {
		b.clear(id)
		if b.empty() {
			delete(m, h)
		}
	}
}

func (x *index) event(id, kind int, model string, hashes []uint64, now int64) {
	mi := x.model(model, true)
	mi.mu.Lock()
	defer mi.mu.Unlock()
	mi.expire(now)
	if !mi.reported.has(id) {
		// The node reports its cache from now on: its approximate record
		// for plain prompts is superseded (chat hashes are kept apart).
		mi.reported.set(id)
	}
	set := mi.sets[id]
	if set == nil {
		set = map[uint64]struct{}{}
		mi.sets[id] = set
	}
	switch kind {
	case Stored:
		for _, h := range hashes {
			if _, ok := set[h]; !ok {
				set[h] = struct{}{}
				add(mi.precise, h, id)
			}
		}
	case Evicted:
		// The node's word beats the coordinator's belief: a pending block
		// it reports evicted is gone too.
		pend := mi.pending[id]
		for _, h := range hashes {
			_, ok := set[h]
			_, pok := pend[h]
			if ok || pok {
				delete(set, h)
				delete(pend, h)
				del(mi.precise, h, id)
			}
		}
	case Cleared:
		for h := range set {
			del(mi.precise, h, id)
		}
		mi.sets[id] = map[uint64]struct{}{}
		mi.dropPending(id)
	}
}

// dropPending forgets the blocks pending on node id.
func (mi *modelIndex) dropPending(id int) {
	for h := range mi.pending[id] {
		if _, ok := mi.sets[id][h]; !ok {
			del(mi.precise, h, id)
		}
	}
	delete(mi.pending, id) // the entries left in pfifo find nothing
}

// expire drops pending blocks older than their expiry that the node's
// events have not confirmed.
func (mi *modelIndex) expire(now int64) {
	for mi.phead < len(mi.pfifo) && mi.pfifo[mi.phead].exp <= now {
		e := mi.pfifo[mi.phead]
		mi.phead++
		pend := mi.pending[e.id]
		if exp, ok := pend[e.h]; !ok || exp != e.exp {
			continue // renewed since, or gone
		}
		delete(pend, e.h)
		if _, held := mi.sets[e.id][e.h]; !held {
			del(mi.precise, e.h, e.id)
		}
	}
	if mi.phead > 1024 && mi.phead*2 > len(mi.pfifo) {
		mi.pfifo = append(mi.pfifo[:0], mi.pfifo[mi.phead:]...)
		mi.phead = 0
	}
}

func (x *index) routed(id int, model string, hashes []uint64, approx bool, now int64) {
	mi := x.model(model, true)
	mi.mu.Lock()
	defer mi.mu.Unlock()
	mi.expire(now)
	if !approx && mi.reported.has(id) {
		// The node's own events say what it holds, but they arrive with
		// the next heartbeat after its prefill: until then (or until
		// pendingTTL passes) count the blocks as held, so that the
		// requests that follow this one meanwhile find them here rather
		// than start a second copy elsewhere.
		if x.pendingTTL <= 0 {
			return
		}
		pend := mi.pending[id]
		if pend == nil {
			pend = map[uint64]int64{}
			mi.pending[id] = pend
		}
		set := mi.sets[id]
		exp := now + x.pendingTTL
		for _, h := range hashes {
			if _, held := set[h]; held {
				continue
			}
			if _, ok := pend[h]; !ok {
				add(mi.precise, h, id)
			}
			pend[h] = exp
			mi.pfifo = append(mi.pfifo, pendingEntry{id: id, h: h, exp: exp})
		}
		return
	}
	l := mi.lrus[id]
	if l == nil {
		l = newLRU(x.approxCap)
		mi.lrus[id] = l
	}
	for _, h := range hashes {
		if l.touch(h) {
			add(mi.approx, h, id)
		}
		for l.over() {
			del(mi.approx, l.evict(), id)
		}
	}
}

func (x *index) forgetNode(id int) {
	x.mu.RLock()
	all := make([]*modelIndex, 0, len(x.models))
	for _, mi := range x.models {
		all = append(all, mi)
	}
	x.mu.RUnlock()
	for _, mi := range all {
		mi.mu.Lock()
		for h := range mi.sets[id] {
			del(mi.precise, h, id)
		}
		mi.dropPending(id)
		delete(mi.sets, id)
		if l := mi.lrus[id]; l != nil {
			for e := l.l.Front(); e != nil; e = e.Next() {
				del(mi.approx, e.Value.(uint64), id)
			}
			delete(mi.lrus, id)
		}
		mi.reported.clear(id)
		mi.mu.Unlock()
	}
}

// scratch holds one decision's per-node prefix lengths.
type scratch struct {
	precise, approx []int32
	cur, reported   bitset
	ents            []bitset
}

var scratchPool = sync.Pool{New: func() any { return &scratch{} }}

// prefixLens fills out[id] with the number of leading hashes whose holder
// sets contain id, for every id up to len(out). It walks the hashes once,
// intersecting bitsets: a node drops out at the first block it lacks.
func prefixLens(m map[uint64]bitset, hashes []uint64, out []int32, buf *bitset, ents *[]bitset) {
	clear(out)
	// Look every block up first: the lookups are independent, so the
	// processor overlaps their cache misses.
	es := (*ents)[:0]
	for _, h := range hashes {
		e, ok := m[h]
		if !ok {
			break
		}
		es = append(es, e)
	}
	*ents = es
	if len(es) == 0 {
		return
	}
	*buf = append((*buf)[:0], es[0]...)
	cur := *buf
	depth := int32(1)
	for _, e := range es[1:] {
		alive := false
		for w := range cur {
			nw := uint64(0)
			if w < len(e) {
				nw = cur[w] & e[w]
			}
			for dropped := cur[w] &^ nw; dropped != 0; dropped &= dropped - 1 {
				if id := w<<6 + bits.TrailingZeros64(dropped); id < len(out) {
					out[id] = depth
				}
			}
			cur[w] = nw
			alive = alive || nw != 0
		}
		if !alive {
			return
		}
		depth++
	}
	for w := range cur {
		for b := cur[w]; b != 0; b &= b - 1 {
			if id := w<<6 + bits.TrailingZeros64(b); id < len(out) {
				out[id] = depth
			}
		}
	}
}

// prefixMatch is one decision's view of the index: per node id, the
// number of leading request blocks held, reported and approximate.
type prefixMatch struct {
	s        *scratch
	reported bitset
	approx   bool
}

// prepare matches req's hashes against the model's index for node ids up to
// maxID; ok is false when the model has no index yet.
func (x *index) prepare(req Request, maxID int) (pm prefixMatch, ok bool) {
	mi := x.model(req.Model, false)
	if mi == nil || len(req.Hashes) == 0 {
		return prefixMatch{}, false
	}
	s := scratchPool.Get().(*scratch)
	if cap(s.precise) <= maxID {
		s.precise = make([]int32, maxID+1)
		s.approx = make([]int32, maxID+1)
	}
	s.precise, s.approx = s.precise[:maxID+1], s.approx[:maxID+1]
	mi.mu.RLock()
	if !req.Approx && len(mi.precise) > 0 {
		prefixLens(mi.precise, req.Hashes, s.precise, &s.cur, &s.ents)
	} else {
		clear(s.precise)
	}
	if len(mi.approx) > 0 {
		prefixLens(mi.approx, req.Hashes, s.approx, &s.cur, &s.ents)
	} else {
		clear(s.approx)
	}
	s.reported = append(s.reported[:0], mi.reported...)
	mi.mu.RUnlock()
	return prefixMatch{s: s, reported: s.reported, approx: req.Approx}, true
}

// blocks is the prefix length for node id: its reported blocks when it
// reports events, the approximate record otherwise.
func (m *prefixMatch) blocks(id int) int {
	if id >= len(m.s.precise) {
		return 0
	}
	if !m.approx && m.reported.has(id) {
		return int(m.s.precise[id])
	}
	return int(m.s.approx[id])
}

func (m *prefixMatch) release() { scratchPool.Put(m.s) }

// matchOne is match for a single node.
func (x *index) matchOne(req Request, id int) int {
	mi := x.model(req.Model, false)
	if mi == nil || len(req.Hashes) == 0 {
		return 0
	}
	mi.mu.RLock()
	defer mi.mu.RUnlock()
	m := mi.approx
	if !req.Approx && mi.reported.has(id) {
		m = mi.precise
	}
	n := 0
	for _, h := range req.Hashes {
		if !m[h].has(id) {
			break
		}
		n++
	}
	return n
}

// lru is a bounded recency list of hashes.
type lru struct {
	cap int
	l   *list.List
	m   map[uint64]*list.Element
}

func newLRU(n int) *lru { return &lru{cap: n, l: list.New(), m: map[uint64]*list.Element{}} }

// touch marks h most recent and reports whether it is new.
func (l *lru) touch(h uint64) bool {
	if e, ok := l.m[h]; ok {
		l.l.MoveToFront(e)
		return false
	}
	l.m[h] = l.l.PushFront(h)
	return true
}

func (l *lru) over() bool { return l.l.Len() > l.cap }

func (l *lru) evict() uint64 {
	e := l.l.Back()
	l.l.Remove(e)
	h := e.Value.(uint64)
	delete(l.m, h)
	return h
}

// sessions maps affinity keys to node ids, bounded: when full, the
// least recently used key goes.
type sessions struct {
	mu sync.Mutex // guards l and m
	n  int
	l  *list.List
	m  map[string]*list.Element
}

type sessionEntry struct {
	key  string
	node int32
}

func newSessions(n int) *sessions {
	return &sessions{n: n, l: list.New(), m: map[string]*list.Element{}}
}

func (s *sessions) get(key string) (int32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	if !ok {
		return 0, false
	}
	s.l.MoveToFront(e)
	return e.Value.(*sessionEntry).node, true
}

func (s *sessions) set(key string, node int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[key]; ok {
		e.Value.(*sessionEntry).node = node
		s.l.MoveToFront(e)
		return
	}
	s.m[key] = s.l.PushFront(&sessionEntry{key: key, node: node})
	if s.l.Len() > s.n {
		e := s.l.Back()
		s.l.Remove(e)
		delete(s.m, e.Value.(*sessionEntry).key)
	}
}
