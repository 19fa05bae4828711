// Package shard plans pipeline-parallel sharding: which nodes serve a model
// as a chain of stages, in which order, and which contiguous range of layers
// each stage holds. It is a pure function of what it is given (the model's
// sizes, each node's free memory and measured speed, and the measured links
// between nodes): no I/O, no clock, no randomness, standard library only.
//
// # Cost model
//
// A decode token travels coordinator -> stage 1 -> ... -> stage k ->
// coordinator. Its estimated time (Plan.TokenSeconds) is
//
//	compute  sum over stages of (layers of the stage) x (node's LayerSeconds)
//	links    per stage boundary a -> b: RTT(a,b) + Hidden*ActBytes / BytesPerSec(a,b)
//	coord    RTT(coordinator, first)/2 + RTT(last, coordinator)/2 (token ids, no payload term)
//
// A boundary is charged a full round trip, as the acceptance bound
// states it ("compute plus one link round trip per stage boundary plus
// serialization"); this is conservative (a hop is one way) and penalises
// extra stages, which is what we want. The coordinator legs add up to one
// round trip to the coordinator, the same as an unsharded request; they
// only decide which nodes go first and last. Embedding lookup and output
// head compute are not modelled (LayerSeconds is per transformer layer).
//
// # Objective
//
// Plans are compared lexicographically:
//
//  1. number of stages: fewest (Options.Stages == 0), or exactly Options.Stages;
//  2. lowest TokenSeconds (decode latency at batch 1);
//  3. lowest BottleneckSeconds: the largest per-stage compute time or
//     per-boundary serialization time. With micro-batching (several requests
//     in flight) the pipeline's throughput is bounded by 1/BottleneckSeconds,
//     so among plans of equal latency the more balanced one wins.
//
// Latency comes first because batch-1 decode is what a sharded model is
// worst at (every token crosses every boundary) and it is what the issue's
// acceptance measures per token; throughput is won back by micro-batching
// only up to the bottleneck, which the tie-break keeps low. In practice the
// two agree when nodes are equally fast (the sum does not depend on the
// split, so the tie-break balances it) and latency wins when they differ
// (the fastest node takes as many layers as its memory allows).
//
// The lexicographic (sum, max) order is compatible with dynamic programming:
// of two partial plans ending at the same node and layer, the one with the
// lower sum (or equal sum and lower max) stays at least as good under any
// common extension, so keeping only the best per state is exact.
//
// # Search
//
// When one stage is allowed and some node holds the whole model, the plan
// is the best single node (exact, any number of nodes).
//
// Otherwise, with at most ExactNodes usable nodes, the search is exhaustive
// (Plan.Exhaustive): a dynamic program over (set of nodes used, last node,
// layers covered so far) tries every node order and every split point. That
// is the same as enumerating the orders and running the split-point DP for
// each, without repeating shared prefixes. Its cost is about
// 2^(n-2) * (n-1) * sum over nodes of the layer ranges each can hold
// (DP steps), which a node's memory keeps well below the worst case
// 2^(n-2) * n^2 * L^2/2; the search is exhaustive only while that estimate
// is at most ExactWork (8 nodes and 128 layers fit: 0.1 to 0.5 s). Masks
// are expanded by size, so the automatic mode stops at the fewest stages
// that fit, and states whose remaining layers cannot fit the unused nodes'
// memory are pruned.
//
// With more usable nodes, or a larger estimate, the search is a heuristic
// (Plan.Exhaustive is false), and the better of two candidates is returned:
//
//   - the exhaustive search over a pool of up to ExactNodes nodes (fewer if
//     the estimate demands), taken alternately from the nodes with the most
//     free memory (what makes a model fit in few stages) and the fastest
//     nodes (what makes it fast);
//   - a chain of the nodes with the most free memory, in that order, using
//     the fewest that fit (or exactly Options.Stages of them), with the
//     split points chosen optimally for that chain.
//
// Both always give a valid plan; neither is guaranteed optimal, and a fit
// that needs an unusual combination of many small nodes can be missed (the
// error then says the search was not exhaustive).
//
// Exact ties (equal latency and bottleneck within rounding) go to the plan
// whose stages use the earliest nodes in input order, then the earliest
// split points, so the result is deterministic.
package shard

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
	"time"
)

// Limits on the input, so a plan is always made in bounded time and memory.
const (
	MaxLayers  = 512  // transformer layers in one model
	MaxNodes   = 1024 // candidate nodes
	ExactNodes = 8    // usable nodes up to which the search may be exhaustive
	ExactWork  = 3e7  // estimated DP steps up to which it is (about 0.1 s)
	maxBytes   = int64(1) << 52
)

// NominalLayerSeconds is the compute time per layer assumed for every node
// when no node has a measured speed (Plan.SpeedsKnown is false): the plan
// then balances layers across equal nodes, and TokenSeconds is nominal.
const NominalLayerSeconds = 1e-3

// DefaultActBytes is the activation element size when Options.ActBytes is 0
// (f16).
const DefaultActBytes = 2

// Node is a candidate machine.
type Node struct {
	ID           string
	FreeMem      int64   // bytes available for weights + KV
	LayerSeconds float64 // measured seconds of compute per layer per decode token (0 = unknown: treated as the slowest known)
}

// Link is a measured network path. BytesPerSec <= 0 means unknown and is
// charged no serialization time.
type Link struct {
	RTT         time.Duration
	BytesPerSec float64
}

// Model describes what a stage must hold.
type Model struct {
	Layers          int
	LayerBytes      []int64 // weight bytes of each layer (len == Layers)
	EmbedBytes      int64   // token embedding, held by the first stage
	HeadBytes       int64   // output norm + head, held by the last stage
	KVBytesPerLayer int64   // KV cache budget one layer needs on a stage
	Hidden          int     // hidden size: activation elements per token per boundary
}

// Options steer the plan.
type Options struct {
	Stages   int                    // exact number of stages; 0 = automatic (one if a node holds the model, else the fewest that fit)
	ActBytes int                    // bytes per activation element on the wire (2 f16, 1 q8 plus scale overhead, 4 f32); 0 = DefaultActBytes
	Link     func(a, b string) Link // measured link from a to b ("" = the coordinator); nil = free links
}

// Stage is one step of the pipeline: layers [Lo,Hi) on Node. The first
// stage also holds the embeddings, the last the output head.
type Stage struct {
	Node           string
	Lo, Hi         int
	MemBytes       int64   // weights + KV (+ embeddings, + head) this stage needs
	FreeMem        int64   // the node's free memory, for reference
	ComputeSeconds float64 // (Hi-Lo) x the node's LayerSeconds
}

// Plan is the chosen pipeline with its estimates.
type Plan struct {
	Stages []Stage

	TokenSeconds      float64 // estimated decode time per token: ComputeSeconds + LinkSeconds + CoordSeconds
	ComputeSeconds    float64 // sum of the stages' compute
	LinkSeconds       float64 // sum over boundaries of RTT + serialization
	CoordSeconds      float64 // half the RTT coordinator->first plus half the RTT last->coordinator
	BottleneckSeconds float64 // max stage compute or boundary serialization: micro-batched throughput <= 1/BottleneckSeconds tokens/s

	BytesPerToken int64 // activation bytes crossing all boundaries per decode token: Hidden x ActBytes x (stages-1)
	MemBytes      int64 // the whole model: weights + KV for every layer + embeddings + head

	SpeedsKnown bool     // false when no node had a measured LayerSeconds (NominalLayerSeconds was used)
	Exhaustive  bool     // the search was exhaustive: the plan is optimal under the objective
	Excluded    []string // nodes left out because they cannot hold even one layer, in input order
}

// ErrInvalid is wrapped by errors about malformed input; ErrNoFit by errors
// saying that the model does not fit the nodes as asked.
var (
	ErrInvalid = errors.New("shard: invalid input")
	ErrNoFit   = errors.New("shard: model does not fit")
)

type planError struct {
	kind error
	msg  string
}

func (e *planError) Error() string        { return "shard: " + e.msg }
func (e *planError) Is(target error) bool { return target == e.kind }

func invalid(format string, a ...any) error {
	return &planError{ErrInvalid, fmt.Sprintf(format, a...)}
}

func noFit(format string, a ...any) error {
	return &planError{ErrNoFit, fmt.Sprintf(format, a...)}
}

// cand is a usable node with its effective speed and links, indexed
// densely.
type cand struct {
	id    string
	free  int64
	speed float64
}

// problem holds the validated input in the form the searches use.
type problem struct {
	layers   int
	prefix   []int64 // prefix[i] = sum of LayerBytes[0:i]
	kv       int64
	embed    int64
	head     int64
	total    int64
	actBytes int64 // Hidden x ActBytes

	nodes []cand
	// per pair (i -> j) of indices into nodes
	linkSum  [][]float64 // RTT + serialization
	linkSer  [][]float64 // serialization only
	coordIn  []float64   // RTT(coordinator, i)/2
	coordOut []float64   // RTT(i, coordinator)/2
	hi       [][]int32   // see fillHi
}

// mem is what a stage holding layers [lo,hi) needs.
func (p *problem) mem(lo, hi int) int64 {
	m := p.prefix[hi] - p.prefix[lo] + int64(hi-lo)*p.kv
	if lo == 0 {
		m += p.embed
	}
	if hi == p.layers {
		m += p.head
	}
	return m
}

// Make plans the pipeline for m on nodes. See the package documentation for
// the cost model, the objective and the search.
func Make(m Model, nodes []Node, opt Options) (Plan, error) {
	p, excluded, speedsKnown, err := prepare(m, nodes, opt)
	if err != nil {
		return Plan{}, err
	}
	n := len(p.nodes)
	if opt.Stages > 0 {
		if opt.Stages > len(nodes) {
			return Plan{}, noFit("%d stages requested but only %d nodes", opt.Stages, len(nodes))
		}
		if opt.Stages > m.Layers {
			return Plan{}, noFit("%d stages requested but the model has only %d layers", opt.Stages, m.Layers)
		}
		if opt.Stages > n {
			return Plan{}, noFit("%d stages requested but only %d of the %d nodes can hold a layer (%s)",
				opt.Stages, n, len(nodes), excludedText(nodes, excluded, p))
		}
	}
	if n == 0 {
		return Plan{}, noFit("no node can hold even one layer (%s)", excludedText(nodes, excluded, p))
	}
	var sumFree int64
	for _, c := range p.nodes {
		sumFree += min(c.free, math.MaxInt64-sumFree) // saturating
	}
	if sumFree < p.total {
		where := fmt.Sprintf("the %d nodes hold at most %s together", n, fmtBytes(sumFree))
		if n == 1 {
			where = fmt.Sprintf("the only node holds %s", fmtBytes(sumFree))
		}
		if len(excluded) > 0 {
			where += fmt.Sprintf("; left out: %s", excludedText(nodes, excluded, p))
		}
		return Plan{}, noFit("model needs %s but %s", fmtBytes(p.total), where)
	}

	var best *result
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	exhaustive := n <= ExactNodes && p.work(all) <= ExactWork
	if one := p.single(); opt.Stages <= 1 && one != nil {
		// One stage fits: the best single node, whatever the node count.
		best, exhaustive = one, true
	} else if exhaustive {
		best = p.exact(all, opt.Stages)
	} else {
		best = p.exact(p.pool(), opt.Stages)
		if r := p.chain(opt.Stages); r != nil && (best == nil || r.better(best)) {
			best = r
		}
	}
	if best == nil {
		if opt.Stages > 0 {
			return Plan{}, noFit("model (%s) does not fit on any %d of the %d usable nodes (they hold %s together; %s)",
				fmtBytes(p.total), opt.Stages, n, fmtBytes(sumFree), p.largestText())
		}
		msg := fmt.Sprintf("model needs %s and the %d usable nodes hold %s together, but no split of its %d layers fits them (%s)",
			fmtBytes(p.total), n, fmtBytes(sumFree), m.Layers, p.largestText())
		if !exhaustive {
			msg += "; the search over this many nodes and layers is not exhaustive"
		}
		return Plan{}, noFit("%s", msg)
	}
	plan := p.plan(best)
	plan.SpeedsKnown = speedsKnown
	plan.Exhaustive = exhaustive
	for _, i := range excluded {
		plan.Excluded = append(plan.Excluded, nodes[i].ID)
	}
	return plan, nil
}

func (p *problem) largestText() string {
	var big int64
	for i := 0; i < p.layers; i++ {
		big = max(big, p.prefix[i+1]-p.prefix[i])
	}
	return fmt.Sprintf("largest layer %s + %s KV, embeddings %s, head %s",
		fmtBytes(big), fmtBytes(p.kv), fmtBytes(p.embed), fmtBytes(p.head))
}

func excludedText(nodes []Node, excluded []int, p *problem) string {
	if len(excluded) == 0 {
		return "none left out"
	}
	need := p.minLayerMem()
	var parts []string
	for k, i := range excluded {
		if k == 4 {
			parts = append(parts, fmt.Sprintf("and %d more", len(excluded)-k))
			break
		}
		parts = append(parts, fmt.Sprintf("%s has %s free", nodes[i].ID, fmtBytes(nodes[i].FreeMem)))
	}
	return strings.Join(parts, ", ") + fmt.Sprintf("; the smallest stage of one layer needs %s", fmtBytes(need))
}

// minLayerMem is the memory of the cheapest single-layer stage.
func (p *problem) minLayerMem() int64 {
	need := int64(math.MaxInt64)
	for l := 0; l < p.layers; l++ {
		need = min(need, p.mem(l, l+1))
	}
	return need
}

// prepare validates the input and builds the problem. Nodes that cannot hold
// one layer are returned (as indexes into nodes) in excluded.
func prepare(m Model, nodes []Node, opt Options) (*problem, []int, bool, error) {
	switch {
	case m.Layers <= 0:
		return nil, nil, false, invalid("model has %d layers", m.Layers)
	case m.Layers > MaxLayers:
		return nil, nil, false, invalid("model has %d layers, more than the %d supported", m.Layers, MaxLayers)
	case len(m.LayerBytes) != m.Layers:
		return nil, nil, false, invalid("model has %d layers but %d layer sizes", m.Layers, len(m.LayerBytes))
	case m.Hidden <= 0:
		return nil, nil, false, invalid("model hidden size %d is not positive", m.Hidden)
	case m.Hidden > 1<<24:
		return nil, nil, false, invalid("model hidden size %d is too large", m.Hidden)
	case opt.Stages < 0:
		return nil, nil, false, invalid("%d stages requested", opt.Stages)
	case opt.ActBytes < 0 || opt.ActBytes > 16:
		return nil, nil, false, invalid("activation element size %d bytes is out of range", opt.ActBytes)
	case len(nodes) == 0:
		return nil, nil, false, noFit("no nodes")
	case len(nodes) > MaxNodes:
		return nil, nil, false, invalid("%d nodes, more than the %d supported", len(nodes), MaxNodes)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"embedding", m.EmbedBytes}, {"head", m.HeadBytes}, {"KV per layer", m.KVBytesPerLayer}} {
		if f.v < 0 || f.v > maxBytes {
			return nil, nil, false, invalid("model %s size %d is out of range", f.name, f.v)
		}
	}
	p := &problem{layers: m.Layers, kv: m.KVBytesPerLayer, embed: m.EmbedBytes, head: m.HeadBytes}
	p.prefix = make([]int64, m.Layers+1)
	for i, b := range m.LayerBytes {
		if b < 0 || b > maxBytes {
			return nil, nil, false, invalid("layer %d size %d is out of range", i, b)
		}
		p.prefix[i+1] = p.prefix[i] + b // at most 512 * 2^52 < 2^61: no overflow
	}
	p.total = p.mem(0, m.Layers) // < 2^61 + 512*2^52 + 2*2^52 < 2^63
	ab := opt.ActBytes
	if ab == 0 {
		ab = DefaultActBytes
	}
	p.actBytes = int64(m.Hidden) * int64(ab)

	seen := make(map[string]bool, len(nodes))
	slowest, speedsKnown := 0.0, false
	for _, nd := range nodes {
		switch {
		case nd.ID == "":
			return nil, nil, false, invalid("a node has an empty ID")
		case seen[nd.ID]:
			return nil, nil, false, invalid("node %q is listed twice", nd.ID)
		case nd.FreeMem < 0:
			return nil, nil, false, invalid("node %q has negative free memory %d", nd.ID, nd.FreeMem)
		case math.IsNaN(nd.LayerSeconds) || math.IsInf(nd.LayerSeconds, 0) || nd.LayerSeconds < 0 || nd.LayerSeconds > 1e6:
			return nil, nil, false, invalid("node %q has layer time %v, not a finite non-negative number of seconds", nd.ID, nd.LayerSeconds)
		}
		seen[nd.ID] = true
		if nd.LayerSeconds > 0 {
			speedsKnown = true
			slowest = max(slowest, nd.LayerSeconds)
		}
	}
	if !speedsKnown {
		slowest = NominalLayerSeconds
	}
	need := p.minLayerMem()
	var excluded []int
	for i, nd := range nodes {
		if nd.FreeMem < need {
			excluded = append(excluded, i)
			continue
		}
		s := nd.LayerSeconds
		if s == 0 {
			s = slowest
		}
		p.nodes = append(p.nodes, cand{id: nd.ID, free: nd.FreeMem, speed: s})
	}

	p.fillHi()
	n := len(p.nodes)
	p.linkSum = make([][]float64, n)
	p.linkSer = make([][]float64, n)
	p.coordIn = make([]float64, n)
	p.coordOut = make([]float64, n)
	link := func(a, b string) (rtt, ser float64, err error) {
		if opt.Link == nil {
			return 0, 0, nil
		}
		l := opt.Link(a, b)
		if l.RTT < 0 {
			return 0, 0, invalid("link %s -> %s has negative RTT %v", name(a), name(b), l.RTT)
		}
		if math.IsNaN(l.BytesPerSec) {
			return 0, 0, invalid("link %s -> %s has bandwidth NaN", name(a), name(b))
		}
		rtt = l.RTT.Seconds()
		if l.BytesPerSec > 0 && !math.IsInf(l.BytesPerSec, 1) {
			ser = float64(p.actBytes) / l.BytesPerSec
		}
		return rtt, ser, nil
	}
	for i := range n {
		p.linkSum[i] = make([]float64, n)
		p.linkSer[i] = make([]float64, n)
		rtt, _, err := link("", p.nodes[i].id)
		if err != nil {
			return nil, nil, false, err
		}
		p.coordIn[i] = rtt / 2
		if rtt, _, err = link(p.nodes[i].id, ""); err != nil {
			return nil, nil, false, err
		}
		p.coordOut[i] = rtt / 2
		for j := range n {
			if i == j {
				continue
			}
			rtt, ser, err := link(p.nodes[i].id, p.nodes[j].id)
			if err != nil {
				return nil, nil, false, err
			}
			p.linkSum[i][j] = rtt + ser
			p.linkSer[i][j] = ser
		}
	}
	return p, excluded, speedsKnown, nil
}

func name(id string) string {
	if id == "" {
		return "coordinator"
	}
	return fmt.Sprintf("%q", id)
}

// value is the objective of a (partial) plan.
type value struct {
	sum, max float64
}

// cmp orders values: lower sum, then lower max; figures within rounding
// are equal.
func (a value) cmp(b value) int {
	if c := cmpNear(a.sum, b.sum); c != 0 {
		return c
	}
	return cmpNear(a.max, b.max)
}

// cmpNear compares two non-negative figures, equal within rounding.
func cmpNear(a, b float64) int {
	tol := 1e-9*max(a, b) + 1e-15
	switch d := a - b; {
	case d < -tol:
		return -1
	case d > tol:
		return 1
	}
	return 0
}

func (a value) less(b value) bool { return a.cmp(b) < 0 }

// dpState is one cell of the dynamic programs.
type dpState struct {
	v    value
	prev int32 // index of the previous stage's cell, -1 for a first stage
	ok   bool
}

// tieLess breaks exact ties between two paths of the same length, given
// as (node, bound) pairs from the first stage: the earlier nodes in input
// order first, then the earlier split points. Both orders are preserved by
// appending the same stage to both paths, so the DP stays exact.
func tieLess(a, b [][2]int) bool {
	for k := 0; k < 2; k++ {
		for i := range min(len(a), len(b)) {
			if a[i][k] != b[i][k] {
				return a[i][k] < b[i][k]
			}
		}
	}
	return false
}

// relax stores v reached from prev in cell i if it is better; path
// reconstructs a cell's (node, bound) pairs for exact ties.
func relax(st []dpState, i int, v value, prev int, path func(int) [][2]int) {
	s := &st[i]
	if s.ok {
		c := v.cmp(s.v)
		if c > 0 || c == 0 && (prev < 0 || s.prev < 0 || !tieLess(path(prev), path(int(s.prev)))) {
			return
		}
	}
	*s = dpState{v: v, prev: int32(prev), ok: true}
}

// result is a complete plan in index form.
type result struct {
	v      value
	nodes  []int // indices into problem.nodes, in stage order
	bounds []int // len(nodes)+1 split points, 0 ... layers
}

func (r *result) better(o *result) bool {
	if len(r.nodes) != len(o.nodes) {
		return len(r.nodes) < len(o.nodes)
	}
	return r.v.less(o.v)
}

// fillHi computes p.hi: for node c and first layer lo, the largest hi such
// that c can hold [lo,hi) (lo when it cannot hold even layer lo). Memory
// only grows with hi, so the ranges a node can hold from lo are exactly
// [lo,lo+1) ... [lo,hi[c][lo]).
func (p *problem) fillHi() {
	L := p.layers
	p.hi = make([][]int32, len(p.nodes))
	for c, nd := range p.nodes {
		h := make([]int32, L)
		hi := 0
		for lo := range L {
			hi = max(hi, lo)
			for hi < L && p.mem(lo, hi+1) <= nd.free {
				hi++
			}
			// mem(lo, L) includes the head: checked by the loop above.
			h[lo] = int32(hi)
		}
		p.hi[c] = h
	}
}

// work estimates the relaxations of the exact search over set.
func (p *problem) work(set []int) float64 {
	k := len(set)
	if k < 2 {
		return float64(p.layers)
	}
	var r float64
	for _, c := range set {
		for lo, h := range p.hi[c] {
			r += float64(int(h) - lo)
		}
	}
	return math.Ldexp(float64(k-1)*r, k-2)
}

// exact is the exhaustive search over the nodes in set (indices into
// p.nodes, at most ExactNodes): a DP over (subset used, last node, layers
// covered). stages > 0 asks for exactly that many stages; 0 for the fewest
// that fit. It returns nil when nothing fits.
func (p *problem) exact(set []int, stages int) *result {
	k := len(set)
	L := p.layers
	idx := func(mask, last, j int) int { return (mask*k+last)*(L+1) + j }
	st := make([]dpState, (1<<k)*k*(L+1))
	path := func(i int) [][2]int {
		var out [][2]int
		for ; i >= 0; i = int(st[i].prev) {
			out = append(out, [2]int{set[(i/(L+1))%k], i % (L + 1)})
		}
		slices.Reverse(out)
		return out
	}
	finalAt := make([]bool, k+1) // a complete plan with this many stages exists
	for a := range k {
		c := set[a]
		sp := p.nodes[c].speed
		for hi := 1; hi <= int(p.hi[c][0]); hi++ {
			compute := float64(hi) * sp
			v := value{sum: p.coordIn[c] + compute, max: compute}
			if hi == L {
				v.sum += p.coordOut[c]
				finalAt[1] = true
			}
			relax(st, idx(1<<a, a, hi), v, -1, path)
		}
	}
	// Free memory of the nodes outside each mask, for pruning.
	rest := make([]int64, 1<<k)
	for mask := range rest {
		for b := range k {
			if mask&(1<<b) == 0 {
				rest[mask] += p.nodes[set[b]].free
			}
		}
	}
	masks := make([]int, 0, 1<<k)
	for mask := 1; mask < 1<<k; mask++ {
		masks = append(masks, mask)
	}
	slices.SortStableFunc(masks, func(a, b int) int { return bits.OnesCount(uint(a)) - bits.OnesCount(uint(b)) })
	for _, mask := range masks {
		used := bits.OnesCount(uint(mask))
		if stages > 0 && used >= stages || stages == 0 && finalAt[used] {
			break // masks come by size: no more stages to add, or fewer suffice
		}
		for a := range k {
			if mask&(1<<a) == 0 {
				continue
			}
			ca := set[a]
			for j := 1; j < L; j++ {
				from := idx(mask, a, j)
				s := st[from]
				if !s.ok {
					continue
				}
				if rest[mask] < p.mem(j, L) || stages > 0 && stages-used > L-j {
					continue // the remaining layers cannot fit
				}
				for b := range k {
					if mask&(1<<b) != 0 {
						continue
					}
					cb := set[b]
					sum := s.v.sum + p.linkSum[ca][cb]
					mx := max(s.v.max, p.linkSer[ca][cb])
					sp := p.nodes[cb].speed
					base := idx(mask|1<<b, b, 0)
					for hi := j + 1; hi <= int(p.hi[cb][j]); hi++ {
						compute := float64(hi-j) * sp
						v := value{sum: sum + compute, max: max(mx, compute)}
						if hi == L {
							v.sum += p.coordOut[cb]
							finalAt[used+1] = true
						}
						relax(st, base+hi, v, from, path)
					}
				}
			}
		}
	}
	// Pick the final state: fewest stages (or exactly stages), then value.
	bestI, bestUsed := -1, 0
	for mask := 1; mask < 1<<k; mask++ {
		used := bits.OnesCount(uint(mask))
		if stages > 0 && used != stages {
			continue
		}
		for a := range k {
			i := idx(mask, a, L)
			if !st[i].ok {
				continue
			}
			better := bestI < 0 || used < bestUsed
			if !better && used == bestUsed {
				c := st[i].v.cmp(st[bestI].v)
				better = c < 0 || c == 0 && tieLess(path(i), path(bestI))
			}
			if better {
				bestI, bestUsed = i, used
			}
		}
	}
	if bestI < 0 {
		return nil
	}
	r := &result{v: st[bestI].v}
	for i := bestI; i >= 0; i = int(st[i].prev) {
		j := i % (L + 1)
		last := (i / (L + 1)) % k
		r.nodes = append(r.nodes, set[last])
		r.bounds = append(r.bounds, j)
	}
	r.bounds = append(r.bounds, 0)
	slices.Reverse(r.nodes)
	slices.Reverse(r.bounds)
	return r
}

// single returns the best one-stage plan, nil if no node holds the model.
func (p *problem) single() *result {
	var best *result
	for c := range p.nodes {
		if int(p.hi[c][0]) < p.layers {
			continue
		}
		if r := p.chainSplit([]int{c}); best == nil || r.v.less(best.v) {
			best = r // ties: the first in input order
		}
	}
	return best
}

// byMemory returns the usable nodes' indices, most free memory first (then
// faster, then input order).
func (p *problem) byMemory() []int {
	order := make([]int, len(p.nodes))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		na, nb := p.nodes[a], p.nodes[b]
		switch {
		case na.free != nb.free:
			if na.free > nb.free {
				return -1
			}
			return 1
		case na.speed != nb.speed:
			if na.speed < nb.speed {
				return -1
			}
			return 1
		}
		return 0
	})
	return order
}

// pool picks up to ExactNodes nodes for the exact search (fewer when the
// search over them would exceed ExactWork): alternately the next with the
// most free memory and the next fastest. It is returned in input order.
func (p *problem) pool() []int {
	mem := p.byMemory()
	fast := slices.Clone(mem)
	slices.SortStableFunc(fast, func(a, b int) int {
		sa, sb := p.nodes[a].speed, p.nodes[b].speed
		switch {
		case sa < sb:
			return -1
		case sa > sb:
			return 1
		}
		return 0
	})
	taken := make([]bool, len(p.nodes))
	var out []int
	im, ifast := 0, 0
	for len(out) < ExactNodes {
		list, pos := mem, &im
		if len(out)%2 == 1 {
			list, pos = fast, &ifast
		}
		for *pos < len(list) && taken[list[*pos]] {
			*pos++
		}
		if *pos == len(list) {
			break
		}
		taken[list[*pos]] = true
		out = append(out, list[*pos])
	}
	for len(out) > 1 && p.work(out) > ExactWork {
		out = out[:len(out)-1] // the last picked go first
	}
	slices.Sort(out)
	return out
}

// chain tries the nodes with the most free memory as one chain in that
// order: exactly stages of them, or the fewest that fit. nil if none fits.
func (p *problem) chain(stages int) *result {
	order := p.byMemory()
	if stages > 0 {
		if stages > len(order) {
			return nil
		}
		return p.chainSplit(order[:stages])
	}
	var sum int64
	for m := 1; m <= len(order); m++ {
		sum += p.nodes[order[m-1]].free
		if sum < p.total {
			continue
		}
		if r := p.chainSplit(order[:m]); r != nil {
			return r
		}
	}
	return nil
}

// chainSplit finds the best split of the layers over exactly the nodes of
// chain, in that order, every node non-empty.
func (p *problem) chainSplit(chain []int) *result {
	k, L := len(chain), p.layers
	// st[t*(L+1)+j]: stages 0..t placed, covering [0,j)
	st := make([]dpState, k*(L+1))
	path := func(i int) [][2]int {
		var out [][2]int
		for ; i >= 0; i = int(st[i].prev) {
			out = append(out, [2]int{0, i % (L + 1)})
		}
		slices.Reverse(out)
		return out
	}
	c0 := chain[0]
	for hi := 1; hi <= int(p.hi[c0][0]); hi++ {
		compute := float64(hi) * p.nodes[c0].speed
		v := value{sum: p.coordIn[c0] + compute, max: compute}
		if hi == L {
			v.sum += p.coordOut[c0]
		}
		relax(st, hi, v, -1, path)
	}
	for t := 1; t < k; t++ {
		ca, cb := chain[t-1], chain[t]
		for j := t; j < L; j++ {
			from := (t-1)*(L+1) + j
			s := st[from]
			if !s.ok {
				continue
			}
			sum := s.v.sum + p.linkSum[ca][cb]
			mx := max(s.v.max, p.linkSer[ca][cb])
			for hi := j + 1; hi <= int(p.hi[cb][j]); hi++ {
				compute := float64(hi-j) * p.nodes[cb].speed
				v := value{sum: sum + compute, max: max(mx, compute)}
				if hi == L {
					v.sum += p.coordOut[cb]
				}
				relax(st, t*(L+1)+hi, v, from, path)
			}
		}
	}
	last := (k-1)*(L+1) + L
	if !st[last].ok {
		return nil
	}
	r := &result{v: st[last].v}
	for i := last; i >= 0; i = int(st[i].prev) {
		r.bounds = append(r.bounds, i%(L+1))
	}
	r.bounds = append(r.bounds, 0)
	slices.Reverse(r.bounds)
	r.nodes = slices.Clone(chain)
	return r
}

// plan turns a result into a Plan with its figures recomputed from the
// stages (so they are exact sums, not DP accumulations).
func (p *problem) plan(r *result) Plan {
	var pl Plan
	for s, c := range r.nodes {
		lo, hi := r.bounds[s], r.bounds[s+1]
		nd := p.nodes[c]
		st := Stage{Node: nd.id, Lo: lo, Hi: hi, MemBytes: p.mem(lo, hi), FreeMem: nd.free,
			ComputeSeconds: float64(hi-lo) * nd.speed}
		pl.Stages = append(pl.Stages, st)
		pl.ComputeSeconds += st.ComputeSeconds
		pl.BottleneckSeconds = max(pl.BottleneckSeconds, st.ComputeSeconds)
		if s > 0 {
			prev := r.nodes[s-1]
			pl.LinkSeconds += p.linkSum[prev][c]
			pl.BottleneckSeconds = max(pl.BottleneckSeconds, p.linkSer[prev][c])
		}
	}
	pl.CoordSeconds = p.coordIn[r.nodes[0]] + p.coordOut[r.nodes[len(r.nodes)-1]]
	pl.TokenSeconds = pl.ComputeSeconds + pl.LinkSeconds + pl.CoordSeconds
	pl.BytesPerToken = p.actBytes * int64(len(r.nodes)-1)
	pl.MemBytes = p.total
	return pl
}

// String renders the plan on one line, e.g.
// "a[0,12) b[12,32): 41.2 ms/token, bottleneck 30.1 ms".
func (pl Plan) String() string {
	var b strings.Builder
	for i, s := range pl.Stages {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s[%d,%d)", s.Node, s.Lo, s.Hi)
	}
	fmt.Fprintf(&b, ": %.3g ms/token, bottleneck %.3g ms", pl.TokenSeconds*1e3, pl.BottleneckSeconds*1e3)
	return b.String()
}

// fmtBytes renders a size for error messages: "3.1 GiB", "512.0 MiB", "100 B".
func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		f /= unit
		if f < unit || u == "PiB" {
			return fmt.Sprintf("%.1f %s", f, u)
		}
	}
	return ""
}
