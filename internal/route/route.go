// Package route decides which node serves a request: it filters the
// candidates (model held, not draining, not tried, under the queue limit,
// circuit closed), scores them with weighted scorers (prefix-cache overlap,
// queue depth, measured speed and heat) and picks one (best score, power of
// two choices, round-robin or session affinity). It keeps the per-node index
// of KV-cache block hashes that the nodes report, and a coordinator-side
// approximation for nodes that report none.
//
// It holds no connections and does no I/O: the coordinator feeds it node
// state and cache events and asks it for a decision, which takes
// microseconds even with a thousand nodes. It must not import the engine,
// the cache or the network stack.
package route

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Policy names, the values of --route-policy.
const (
	PolicyRoundRobin       = "round-robin"
	PolicyLeastOutstanding = "least-outstanding"
	PolicyP2C              = "p2c"
	PolicyPrefix           = "prefix"
	PolicyCapability       = "capability"
	PolicySession          = "session"
	// PolicyComposite (the default) weighs prefix overlap, queue depth and
	// capability together.
	PolicyComposite = "composite"
)

// Policies lists the policy names in the order people read them.
var Policies = []string{PolicyComposite, PolicyPrefix, PolicyLeastOutstanding, PolicyP2C, PolicyRoundRobin, PolicyCapability, PolicySession}

// ErrUnknownPolicy is returned for a policy name not in Policies.
var ErrUnknownPolicy = errors.New("unknown routing policy")

// Candidate is one node as the router sees it for one decision. The
// coordinator fills it from its registry; ID comes from Router.NodeID.
type Candidate struct {
	// ID is the node's id from Router.NodeID.
	ID int32
	// Outstanding counts requests the coordinator has open on the node;
	// QueueDepth is what the node last reported waiting in its queue.
	Outstanding int32
	QueueDepth  int32
	// Filters: a candidate with any of these set is not eligible.
	Draining bool
	Tried    bool // already failed this request
	Open     bool // circuit breaker open
	// Throttling and MaxTempC are the node's thermal state.
	Throttling bool
	MaxTempC   float32
	// DecodeTokS is the node's measured decode speed (0: unknown, counted
	// as average). The struct is kept small: a decision scans a thousand.
	DecodeTokS float32
}

// Request is what a decision knows of a request.
type Request struct {
	Model string
	// Hashes are the request's chained block hashes (blockhash.Chain of
	// its prompt ids), nil when the prompt was not tokenized.
	Hashes []uint64
	// Approx marks hashes that are not the node's own (chat prompts hashed
	// from their message contents): they are matched only against the
	// coordinator's record of what it routed, never the nodes' events.
	Approx bool
	// Session is the affinity key (OpenAI "user" or X-Session-Id), "" for none.
	Session string
}

// Decision is the outcome of Pick.
type Decision struct {
	// Index is the chosen candidate's position in the slice given to Pick.
	Index int
	// PrefixBlocks is how many leading blocks of the request the chosen
	// node holds (or is believed to hold).
	PrefixBlocks int
}

// Weights of the scorers in a policy.
type Weights struct {
	Prefix, Queue, Capability float64
}

// policy is one routing policy: the scorer weights and the picker.
type policy struct {
	name    string
	w       Weights
	picker  int // pickBest, pickP2C, pickRR
	session bool
}

// fullMiss is what a prompt none of whose blocks a node holds costs there,
// in queued requests (newPolicy).
const fullMiss = 16

const (
	pickBest = iota
	pickP2C
	pickRR
)

func newPolicy(name string) (policy, error) {
	// Scores are in units of one queued request. A node's score falls by
	// Queue for every request it has, and by Prefix times the share of the
	// prompt it does not hold cached: a miss costs this request the prefill
	// the cache would have saved, and costs later requests the cache room a
	// second copy of the prefix takes. So a request goes to a node that holds
	// its whole prompt while that node has fewer than Prefix more requests
	// than the idlest one; a linear queue term keeps a hot prefix from
	// herding every request onto one node.
	//
	// Prefix is 16 (fullMiss). A full miss costs this request several
	// queued requests' work: in the shared-prefix benchmark a 130-token
	// prefix against a 10-token question and 8 output tokens, about 8; and
	// the copy it makes evicts about as much that later requests must
	// prefill again. With 4, the queues' random swings under heavy load
	// (Poisson arrivals at 1.6x round-robin's capacity, 10-16 requests per
	// node) sent requests to nodes without their prefix, which made the
	// nodes slower, the queues longer and the misses more frequent: the hit
	// rate fell to 0.66 of the oracle's. With 8 it fell to 0.81; with 16 it
	// stayed at the oracle's (docs/performance.md).
	//
	// A capability-aware policy (composite, capability, session) counts the
	// same work in time: the queue, this request and its prefix miss, all
	// divided by the node's speed, so that a fast node is not bought with a
	// cache miss and a slow one holding the prefix is not passed over for
	// small differences in measured speed (which on shared machines are
	// mostly noise).
	switch name {
	case PolicyComposite, "":
		return policy{name: PolicyComposite, w: Weights{Prefix: fullMiss, Queue: 1, Capability: 0.5}}, nil
	case PolicyPrefix:
		// Prefix and queue only.
		return policy{name: name, w: Weights{Prefix: fullMiss, Queue: 1}}, nil
	case PolicyLeastOutstanding:
		return policy{name: name, w: Weights{Queue: 1}}, nil
	case PolicyP2C:
		return policy{name: name, w: Weights{Queue: 1}, picker: pickP2C}, nil
	case PolicyRoundRobin:
		return policy{name: name, picker: pickRR}, nil
	case PolicyCapability:
		return policy{name: name, w: Weights{Queue: 1, Capability: 2}}, nil
	case PolicySession:
		return policy{name: name, w: Weights{Prefix: fullMiss, Queue: 1, Capability: 0.5}, session: true}, nil
	}
	return policy{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownPolicy, name, strings.Join(Policies, ", "))
}

// Config sets the policies: Default for every model unless PerModel names
// one for it.
type Config struct {
	Default  string
	PerModel map[string]string
	// MaxOutstanding is the per-node queue limit the filter applies (0: none).
	MaxOutstanding int
	// ApproxBlocksPerNode bounds the coordinator-side record of blocks routed
	// to one node for one model (default 4096).
	ApproxBlocksPerNode int
	// Sessions bounds the affinity table (default 65536 keys).
	Sessions int
	// PendingTTL is how long blocks routed to a node that reports cache
	// events count as held on it before its own Stored event confirms them
	// (default 5s; negative: not at all). Events come with heartbeats, after
	// the prefill: without this, the requests routed in between see no
	// copy of their prefix anywhere and spread it over several nodes.
	PendingTTL time.Duration
	// Now is the clock (default time.Now), for tests.
	Now func() time.Time
}

// ParsePolicies reads "POLICY" or "POLICY,model=POLICY,..." (the
// --route-policy flag) into a Config's Default and PerModel.
func ParsePolicies(s string) (def string, perModel map[string]string, err error) {
	def = PolicyComposite
	for i, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		model, name, ok := strings.Cut(part, "=")
		if !ok {
			if i != 0 {
				return "", nil, fmt.Errorf("route policy %q: only the first entry may omit model=", part)
			}
			name = model
		}
		if _, err := newPolicy(name); err != nil {
			return "", nil, err
		}
		if !ok {
			def = name
			continue
		}
		if perModel == nil {
			perModel = map[string]string{}
		}
		perModel[model] = name
	}
	return def, perModel, nil
}

// Router makes routing decisions. Its methods are safe for concurrent use.
type Router struct {
	def      policy
	perModel map[string]policy
	maxOut   int

	idMu  sync.Mutex // guards ids and free
	ids   map[string]int
	free  []int
	maxID atomic.Int64 // highest id given out
	// rrLast is the node id round-robin picked last (-1: none): it cycles
	// over ids, so the candidates may come in any order.
	rrLast atomic.Int64
	// speedMean is the mean decode speed (float64 bits) seen by the last
	// capability-weighted decision.
	speedMean atomic.Uint64
	index     *index
	sess      *sessions
	now       func() time.Time
}

// New builds a Router.
func New(cfg Config) (*Router, error) {
	def, err := newPolicy(cfg.Default)
	if err != nil {
		return nil, err
	}
	r := &Router{def: def, perModel: map[string]policy{}, maxOut: cfg.MaxOutstanding, ids: map[string]int{}}
	r.rrLast.Store(-1)
	for model, name := range cfg.PerModel {
		p, err := newPolicy(name)
		if err != nil {
			return nil, fmt.Errorf("model %s: %w", model, err)
		}
		r.perModel[model] = p
	}
	if cfg.ApproxBlocksPerNode <= 0 {
		cfg.ApproxBlocksPerNode = 4096
	}
	if cfg.Sessions <= 0 {
		cfg.Sessions = 1 << 16
	}
	if cfg.PendingTTL == 0 {
		cfg.PendingTTL = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r.now = cfg.Now
	r.index = newIndex(cfg.ApproxBlocksPerNode, int64(cfg.PendingTTL))
	r.sess = newSessions(cfg.Sessions)
	return r, nil
}

// UsesPrefix says whether model's policy scores prefix overlap, so that
// the caller knows whether hashing the prompt is worth it.
func (r *Router) UsesPrefix(model string) bool { return r.policyFor(model).w.Prefix > 0 }

// Policy names the policy used for model.
func (r *Router) Policy(model string) string { return r.policyFor(model).name }

func (r *Router) policyFor(model string) policy {
	if p, ok := r.perModel[model]; ok {
		return p
	}
	return r.def
}

// NodeID returns the small integer the router knows node name by,
// assigning one on first use. IDs of forgotten nodes are reused.
func (r *Router) NodeID(name string) int32 {
	r.idMu.Lock()
	defer r.idMu.Unlock()
	if id, ok := r.ids[name]; ok {
		return int32(id)
	}
	var id int
	if n := len(r.free); n > 0 {
		id, r.free = r.free[n-1], r.free[:n-1]
	} else {
		id = len(r.ids)
	}
	r.ids[name] = id
	if int64(id) > r.maxID.Load() {
		r.maxID.Store(int64(id))
	}
	return int32(id)
}

// ForgetNode drops everything known of a node's cache (it restarted or
// left): its index entries, approximate or reported, for every model.
func (r *Router) ForgetNode(name string) {
	r.idMu.Lock()
	id, ok := r.ids[name]
	r.idMu.Unlock()
	if ok {
		r.index.forgetNode(id)
	}
}

// CacheEvent kinds, mirroring the wire CacheEvent.
const (
	Stored = iota + 1
	Evicted
	Cleared
)

// CacheEvent applies one of a node's KV-cache events to the index:
// stored blocks are added, evicted ones removed, and cleared drops the
// node's set for the model. From the first event on, the node's reported
// set replaces the approximate record for that model.
func (r *Router) CacheEvent(node string, kind int, model string, hashes []uint64) {
	r.index.event(int(r.NodeID(node)), kind, model, hashes, r.now().UnixNano())
}

// Routed records that a request with these hashes went to node: the
// approximate index for nodes that report no events (and for chat
// prompts, whose hashes are not the node's); for nodes that report, the
// blocks are pending until their events confirm them (Config.PendingTTL).
func (r *Router) Routed(node string, req Request) {
	if len(req.Hashes) > 0 {
		r.index.routed(int(r.NodeID(node)), req.Model, req.Hashes, req.Approx, r.now().UnixNano())
	}
	if req.Session != "" && r.policyFor(req.Model).session {
		r.sess.set(req.Model+"\x00"+req.Session, r.NodeID(node))
	}
}

// ErrNoCandidate is returned by Pick when no candidate passes the
// filters; Full tells whether some were only over the queue limit.
type ErrNoCandidate struct{ Full bool }

func (e *ErrNoCandidate) Error() string {
	if e.Full {
		return "every eligible node is at its queue limit"
	}
	return "no eligible node"
}

// Pick chooses among cands for req. It does not modify cands.
func (r *Router) Pick(req Request, cands []Candidate) (Decision, error) {
	p := r.policyFor(req.Model)
	ok := func(c *Candidate) bool {
		return !(c.Draining || c.Tried || c.Open || (r.maxOut > 0 && int(c.Outstanding) >= r.maxOut))
	}
	if p.session && req.Session != "" {
		if id, found := r.sess.get(req.Model + "\x00" + req.Session); found {
			for i := range cands {
				if cands[i].ID == id && ok(&cands[i]) {
					return Decision{Index: i, PrefixBlocks: r.index.matchOne(req, int(cands[i].ID))}, nil
				}
			}
		}
	}
	if p.picker == pickBest {
		return r.best(p, req, cands)
	}
	full := false
	eligible := 0
	for i := range cands {
		c := &cands[i]
		if c.Draining || c.Tried || c.Open {
			continue
		}
		if r.maxOut > 0 && int(c.Outstanding) >= r.maxOut {
			full = true
			continue
		}
		eligible++
	}
	if eligible == 0 {
		return Decision{}, &ErrNoCandidate{Full: full}
	}

	switch p.picker {
	case pickRR:
		// The eligible node with the next id after the last one picked
		// (wrapping around); a concurrent pick that got there first makes
		// this one look again.
		for tries := 0; ; tries++ {
			last := r.rrLast.Load()
			next, lowest := -1, -1
			for i := range cands {
				if !ok(&cands[i]) {
					continue
				}
				id := cands[i].ID
				if int64(id) > last && (next < 0 || id < cands[next].ID) {
					next = i
				}
				if lowest < 0 || id < cands[lowest].ID {
					lowest = i
				}
			}
			if next < 0 {
				next = lowest
			}
			if r.rrLast.CompareAndSwap(last, int64(cands[next].ID)) || tries >= 8 {
				return Decision{Index: next, PrefixBlocks: r.index.matchOne(req, int(cands[next].ID))}, nil
			}
		}
	case pickP2C:
		a, b := r.randomEligible(cands, eligible, ok), -1
		for tries := 0; tries < 8; tries++ {
			if b = r.randomEligible(cands, eligible, ok); b != a {
				break
			}
		}
		if b >= 0 && load(&cands[b]) < load(&cands[a]) {
			a = b
		}
		return Decision{Index: a, PrefixBlocks: r.index.matchOne(req, int(cands[a].ID))}, nil
	}

	panic("route: unknown picker")
}

// best scores every eligible candidate with the policy's weighted scorers
// and returns the best, random among equals. It makes one pass over the
// candidates: a decision among a thousand nodes must stay within
// microseconds.
func (r *Router) best(p policy, req Request, cands []Candidate) (Decision, error) {
	var pm prefixMatch
	havePM := false
	if p.w.Prefix > 0 && len(req.Hashes) > 0 {
		if pm, havePM = r.index.prepare(req, int(r.maxID.Load())); havePM {
			defer pm.release()
		}
	}
	// Speeds are compared with the mean of the previous decision's
	// candidates, so that this one needs no extra pass.
	mean := math.Float64frombits(r.speedMean.Load())
	if mean == 0 && p.w.Capability > 0 {
		mean = meanSpeed(cands) // the first decision
	}
	sum, known := 0.0, 0
	invMean := 0.0
	if mean > 0 {
		invMean = 1 / mean
	}
	nBlocks := len(req.Hashes)
	invBlocks := 1 / float64(max(nBlocks, 1))
	wp, wq, wc := p.w.Prefix*invBlocks, p.w.Queue, p.w.Capability
	maxOut := int32(math.MaxInt32)
	if r.maxOut > 0 {
		maxOut = int32(r.maxOut)
	}
	best, bestScore, ties := -1, math.Inf(-1), 0
	bestBlocks := 0
	full := false
	for i := range cands {
		c := &cands[i]
		if c.Draining || c.Tried || c.Open {
			continue
		}
		if c.Outstanding >= maxOut {
			full = true
			continue
		}
		blocks := 0
		if havePM {
			blocks = pm.blocks(int(c.ID))
		}
		// miss is the prefix term: the share of the prompt not cached
		// there, weighted (0 when nothing is known of any cache).
		miss := 0.0
		if havePM {
			miss = wp * float64(nBlocks-blocks)
		}
		var s float64
		if wc > 0 {
			// Work in time: the queue, this request and its miss, over
			// the node's speed (a throttling node counts at an eighth
			// of it, so it gets work only when the cool ones are many
			// requests busier, even for a prompt it holds: it should
			// cool down); plus a small bonus for capability.
			sf, cp := speedCap(c, invMean)
			s = -(wq*float64(load(c)+1)+miss)/sf + wc*cp
			if c.DecodeTokS > 0 {
				sum += float64(c.DecodeTokS)
				known++
			}
		} else {
			s = -wq*float64(load(c)) - miss
		}
		switch {
		case s > bestScore:
			best, bestScore, ties, bestBlocks = i, s, 1, blocks
		case s == bestScore:
			// Reservoir sampling keeps each of the tied candidates equally likely.
			ties++
			if rand.IntN(ties) == 0 {
				best, bestBlocks = i, blocks
			}
		}
	}
	if known > 0 {
		r.speedMean.Store(math.Float64bits(sum / float64(known)))
	}
	if best < 0 {
		return Decision{}, &ErrNoCandidate{Full: full}
	}
	if !havePM {
		bestBlocks = r.index.matchOne(req, int(cands[best].ID))
	}
	return Decision{Index: best, PrefixBlocks: bestBlocks}, nil
}

// load is the work a node has: what the coordinator sent it, or what it
// reports queued if more (other coordinators, or a slow heartbeat).
func load(c *Candidate) int { return int(max(c.Outstanding, c.QueueDepth)) }

// speedCap returns a node's speed factor and its capability score, from
// its decode speed relative to the mean (unknown counts as average) and its
// heat, in one go (a decision computes them for every candidate, so plain
// comparisons rather than the float min/max builtins, whose NaN handling
// costs several instructions each).
//
// The speed factor is the relative speed clamped to [0.25, 2], times the
// thermal slowdown: an eighth when the node reports throttling (and what it
// measured before it got hot earns it no bonus), a half above 85 °C. The
// eighth outweighs a full prefix miss (fullMiss) for a throttling holder
// with a request or more queued.
//
// The capability score is in [0, 1]: a cool node of average speed scores
// 0.5, one twice as fast (or more) 1; a throttling node scores a quarter of
// that, a hot one half.
func speedCap(c *Candidate, invMean float64) (sf, cp float64) {
	rel := 1.0
	if c.DecodeTokS > 0 && invMean > 0 {
		rel = float64(c.DecodeTokS) * invMean
	}
	if rel > 2 {
		rel = 2
	}
	sf, cp = rel, rel*0.5
	if sf < 0.25 {
		sf = 0.25
	}
	switch {
	case c.Throttling:
		if sf > 1 {
			sf = 1
		}
		sf *= 0.125
		cp *= 0.25
	case c.MaxTempC > 85:
		sf *= 0.5
		cp *= 0.5
	}
	return sf, cp
}

// meanSpeed returns the mean of the known decode speeds, 0 when none is known.
func meanSpeed(cands []Candidate) float64 {
	sum, n := 0.0, 0
	for i := range cands {
		if v := cands[i].DecodeTokS; v > 0 {
			sum += float64(v)
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

func (r *Router) randomEligible(cands []Candidate, eligible int, ok func(*Candidate) bool) int {
	if eligible == len(cands) {
		return rand.IntN(len(cands))
	}
	for tries := 0; tries < 16; tries++ {
		if i := rand.IntN(len(cands)); ok(&cands[i]) {
			return i
		}
	}
	k := rand.IntN(eligible)
	for i := range cands {
		if ok(&cands[i]) {
			if k == 0 {
				return i
			}
			k--
		}
	}
	return -1
}
