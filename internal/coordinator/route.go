package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/npumesh/npumesh/internal/kvcache/blockhash"
	"github.com/npumesh/npumesh/internal/openai"
	"github.com/npumesh/npumesh/internal/route"
	"github.com/npumesh/npumesh/internal/tokenizer"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// routing is the coordinator's routing state: the router (policies, prefix
// index, sessions), the tokenizers it fetched from nodes, the per-node
// circuit breakers and the global admission count.
type routing struct {
	router   *route.Router
	toks     tokCache
	breakers breakers
	// inflight counts requests admitted and not finished, against
	// Config.MaxOutstanding.
	inflight atomic.Int32
}

// initRouting builds the routing state from the config's defaults.
func (c *Coordinator) initRouting() error {
	// Blocks routed to a node count as cached there until its cache events
	// (one heartbeat after its prefill, or a few when it is busy) confirm
	// or drop them.
	r, err := route.New(route.Config{Default: c.cfg.RoutePolicy, PerModel: c.cfg.RoutePolicies, MaxOutstanding: c.cfg.MaxOutstandingPerNode,
		PendingTTL: max(5*time.Second, 5*c.cfg.HeartbeatInterval)})
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if c.cfg.BreakerFailures <= 0 {
		c.cfg.BreakerFailures = 3
	}
	if c.cfg.BreakerCooldown <= 0 {
		c.cfg.BreakerCooldown = 5 * time.Second
	}
	c.rt = &routing{router: r}
	c.rt.breakers = breakers{failures: c.cfg.BreakerFailures, cooldown: c.cfg.BreakerCooldown, m: map[string]*breaker{}}
	c.rt.toks = tokCache{m: map[string]*tokEntry{}}
	return nil
}

// nodeRegistered is called when a node (re)registers: a restarted node's
// cache is empty, and its breaker starts closed.
func (c *Coordinator) nodeRegistered(name string) {
	if c.rt == nil {
		return
	}
	c.rt.router.ForgetNode(name)
	c.rt.breakers.reset(name)
}

// cacheEvents feeds a heartbeat's KV-cache events to the prefix index.
func (c *Coordinator) cacheEvents(node string, evs []*pb.CacheEvent) {
	if c.rt == nil {
		return
	}
	for _, ev := range evs {
		kind := 0
		switch ev.GetKind() {
		case pb.CacheEvent_KIND_STORED:
			kind = route.Stored
		case pb.CacheEvent_KIND_EVICTED:
			kind = route.Evicted
		case pb.CacheEvent_KIND_CLEARED:
			kind = route.Cleared
		default:
			continue
		}
		c.rt.router.CacheEvent(node, kind, ev.GetModel(), ev.GetBlockHashes())
	}
}

// routeReq is what routing knows of one request across its attempts.
type routeReq struct {
	r route.Request
	// ids are the prompt's token ids when the coordinator tokenized a text
	// prompt; nodes serving the model with the built-in engine get them
	// instead of the text (the same ids the node would have made).
	ids []int32
}

// sessionKey is the affinity key of a request: the X-Session-Id header, or
// the OpenAI "user" field.
func sessionKey(r *http.Request, req *openai.Request) string {
	if s := r.Header.Get("X-Session-Id"); s != "" {
		return s
	}
	return req.User
}

// prepareRoute tokenizes and hashes the prompt when the model's tokenizer
// is known. Text prompts are encoded as the engine does (Encode with
// special tokens); chat prompts are hashed from their messages' contents
// joined, which is not what the node caches (it renders the chat template),
// so those hashes only meet the coordinator's own record of where it sent
// earlier turns (approximate prefix routing). Nothing here changes what the
// node computes: the ids sent are those it would have produced.
func (c *Coordinator) prepareRoute(ctx context.Context, g *pb.GenerateRequest, session string) routeReq {
	rr := routeReq{r: route.Request{Model: g.GetModel(), Session: session}}
	if c.rt == nil || !c.rt.router.UsesPrefix(g.GetModel()) {
		return rr
	}
	switch p := g.GetPrompt().(type) {
	case *pb.GenerateRequest_Tokens:
		bs := c.blockSize(g.GetModel())
		if bs > 0 {
			rr.r.Hashes = blockhash.Chain(g.GetModel(), p.Tokens.GetIds(), bs)
		}
		return rr
	}
	tok, bs := c.rt.toks.get(ctx, c, g.GetModel())
	if tok == nil || bs <= 0 {
		return rr
	}
	switch p := g.GetPrompt().(type) {
	case *pb.GenerateRequest_Text:
		ids, err := tok.Encode(p.Text, true)
		if err != nil || len(ids) == 0 {
			return rr
		}
		rr.ids = ids
		rr.r.Hashes = blockhash.Chain(g.GetModel(), ids, bs)
	case *pb.GenerateRequest_Chat:
		var sb strings.Builder
		for _, m := range p.Chat.GetMessages() {
			sb.WriteString(m.GetRole())
			sb.WriteByte(0)
			sb.WriteString(m.GetContent())
			sb.WriteByte(0)
		}
		ids, err := tok.Encode(sb.String(), false)
		if err != nil {
			return rr
		}
		rr.r.Hashes = blockhash.Chain(g.GetModel()+"\x00chat", ids, bs)
		rr.r.Approx = true
	}
	return rr
}

// blockSize is the model's KV block size as its nodes report it.
func (c *Coordinator) blockSize(model string) int {
	if mi := c.modelInfo(model); mi != nil {
		return int(mi.GetKvBlockSize())
	}
	return 0
}

// pickScratch is one decision's candidate list, pooled: with a thousand
// nodes, allocating it per request would cost more than the decision.
type pickScratch struct {
	members, holders []*member
	cands            []route.Candidate
}

var pickPool = sync.Pool{New: func() any { return new(pickScratch) }}

// appendMembers appends the live members to dst, in no particular order (the
// router does not depend on it: round-robin cycles over node ids).
func (r *registry) appendMembers(dst []*member) []*member {
	r.mu.RLock()
	for _, m := range r.members {
		dst = append(dst, m)
	}
	r.mu.RUnlock()
	return dst
}

// routeID is m's id in the router, asked once per member.
func (c *Coordinator) routeID(m *member) int32 {
	if id := m.routeID.Load(); id > 0 {
		return id - 1
	}
	id := c.rt.router.NodeID(m.name)
	m.routeID.Store(id + 1)
	return id
}

// pick chooses the node for one attempt among the live nodes that hold the
// model, through the router: filters (draining, tried, queue limit, open
// circuit), the model's policy's scorers, and its picker.
func (c *Coordinator) pick(rr *routeReq, tried map[string]bool) (*member, *openai.Error) {
	model := rr.r.Model
	ps := pickPool.Get().(*pickScratch)
	defer func() {
		clear(ps.members)
		clear(ps.holders)
		ps.members, ps.holders, ps.cands = ps.members[:0], ps.holders[:0], ps.cands[:0]
		pickPool.Put(ps)
	}()
	ps.members = c.reg.appendMembers(ps.members[:0])
	if len(ps.members) == 0 {
		return nil, openai.ErrUnavailable("no node is registered with the coordinator; start one with: npumesh node --coordinator ...")
	}
	now := time.Now()
	anyOpen := c.rt.breakers.any()
	for _, m := range ps.members {
		m.mu.Lock()
		mi, ok := m.models[model]
		draining, load, tel := m.draining, m.load, m.telemetry
		m.mu.Unlock()
		if !ok {
			continue
		}
		ps.holders = append(ps.holders, m)
		ps.cands = append(ps.cands, route.Candidate{
			ID:          c.routeID(m),
			Outstanding: m.outstanding.Load(),
			QueueDepth:  load.GetQueueDepth(),
			Draining:    draining,
			Tried:       tried[m.name],
			Open:        anyOpen && !c.rt.breakers.allow(m.name, now),
			Throttling:  tel.GetThrottling(),
			MaxTempC:    float32(tel.GetMaxTemperatureCelsius()),
			DecodeTokS:  float32(mi.GetDecodeTokS()),
		})
	}
	if len(ps.holders) == 0 {
		if states := c.reg.unservable(model); len(states) > 0 {
			return nil, openai.ErrUnavailable("model " + model + " cannot be served right now (" + strings.Join(states, ", ") + "); retry shortly")
		}
		return nil, openai.ErrModelNotFound(model)
	}
	d, err := c.rt.router.Pick(rr.r, ps.cands)
	if err != nil {
		var nc *route.ErrNoCandidate
		if errors.As(err, &nc) && nc.Full {
			return nil, openai.ErrOverloaded(time.Second)
		}
		return nil, openai.ErrUnavailable("no healthy node can serve model " + model + " right now")
	}
	m := ps.holders[d.Index]
	if anyOpen {
		c.rt.breakers.started(m.name, now)
	}
	c.rt.router.Routed(m.name, rr.r)
	return m, nil
}

// modelInfo returns what the live nodes report of a model, or nil.
func (c *Coordinator) modelInfo(model string) *pb.ModelInfo {
	for _, m := range c.reg.appendMembers(nil) {
		models, _ := m.snapshot()
		if mi, ok := models[model]; ok {
			return mi
		}
	}
	return nil
}

// backendOf is the backend that serves model on m ("builtin", "upstream").
func backendOf(m *member, model string) string {
	models, _ := m.snapshot()
	return models[model].GetBackend()
}

// httpStatusRetryable says whether a failure with this status may succeed on
// another node.
func httpStatusRetryable(status int) bool {
	return status >= 500 || status == http.StatusTooManyRequests
}

// tokCache holds the tokenizers fetched from nodes, one per model. A fetch
// that fails is not retried for a while; requests route without prefix
// scores meanwhile.
type tokCache struct {
	mu sync.Mutex // guards m
	m  map[string]*tokEntry
}

type tokEntry struct {
	ready chan struct{} // closed when the fetch ends
	tok   tokenizer.Tokenizer
	bs    int
	err   error
	at    time.Time
}

const tokRetry = 30 * time.Second

func (t *tokCache) get(ctx context.Context, c *Coordinator, model string) (tokenizer.Tokenizer, int) {
	t.mu.Lock()
	e := t.m[model]
	if e != nil {
		select {
		case <-e.ready:
			if e.err != nil && time.Since(e.at) > tokRetry {
				e = nil // try again
			}
		default:
		}
	}
	if e == nil {
		e = &tokEntry{ready: make(chan struct{})}
		t.m[model] = e
		go func() {
			fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			e.tok, e.bs, e.err = c.fetchTokenizer(fctx, model)
			e.at = time.Now()
			if e.err != nil {
				c.log.Warn("no tokenizer for prefix routing; routing without prefix scores", "model", model, "err", e.err)
			}
			close(e.ready)
		}()
	}
	t.mu.Unlock()
	select {
	case <-e.ready:
	case <-ctx.Done():
		return nil, 0
	}
	if e.err != nil {
		return nil, 0
	}
	return e.tok, e.bs
}

// fetchTokenizer asks the nodes holding model for its vocabulary, one after
// another until one answers.
func (c *Coordinator) fetchTokenizer(ctx context.Context, model string) (tokenizer.Tokenizer, int, error) {
	var lastErr error = fmt.Errorf("no node serves model %s with an exportable tokenizer", model)
	for _, m := range c.reg.list() {
		models, _ := m.snapshot()
		if mi, ok := models[model]; !ok || mi.GetBackend() != "builtin" {
			continue
		}
		resp, err := m.client.GetTokenizer(ctx, &pb.GetTokenizerRequest{Model: model}, grpc.MaxCallRecvMsgSize(256<<20))
		if err != nil {
			lastErr = fmt.Errorf("node %s: %w", m.name, err)
			continue
		}
		switch resp.GetKind() {
		case "spm":
			var cfg tokenizer.SPMConfig
			if err := json.Unmarshal(resp.GetData(), &cfg); err != nil {
				return nil, 0, fmt.Errorf("node %s: decode tokenizer: %w", m.name, err)
			}
			tok, err := tokenizer.NewSPM(cfg)
			if err != nil {
				return nil, 0, fmt.Errorf("node %s: tokenizer: %w", m.name, err)
			}
			return tok, int(resp.GetKvBlockSize()), nil
		default:
			lastErr = fmt.Errorf("node %s: tokenizer kind %q is not supported", m.name, resp.GetKind())
		}
	}
	return nil, 0, lastErr
}

// breakers are per-node circuit breakers: after `failures` consecutive
// failed attempts a node gets no new work for `cooldown`; then one probe
// request goes through (half-open), and its outcome closes the circuit or
// opens it again.
type breakers struct {
	failures int
	cooldown time.Duration
	mu       sync.Mutex // guards m
	m        map[string]*breaker
	// n is len(m), for a lock-free answer in the common case of no
	// breaker holding a failure at all.
	n atomic.Int32
}

// any says whether some node has a failure on record (a breaker that may
// be open); when not, every node is allowed without asking.
func (b *breakers) any() bool { return b.n.Load() > 0 }

type breaker struct {
	fails     int
	openUntil time.Time // zero when closed
	probing   bool      // a half-open probe is in flight
}

// allow says whether the node may get a new request now.
// isOpen reports whether name's circuit is open (refusing new work or
// waiting for its probe), for the metrics.
func (b *breakers) isOpen(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	br := b.m[name]
	return br != nil && !br.openUntil.IsZero()
}

func (b *breakers) allow(name string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	br := b.m[name]
	if br == nil || br.openUntil.IsZero() {
		return true
	}
	return now.After(br.openUntil) && !br.probing
}

// started records that a request went to name; past the cool-down of an
// open circuit it is the probe.
func (b *breakers) started(name string, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if br := b.m[name]; br != nil && !br.openUntil.IsZero() && now.After(br.openUntil) {
		br.probing = true
	}
}

func (b *breakers) success(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.m, name)
	b.n.Store(int32(len(b.m)))
}

// failure records a failed attempt and reports whether the circuit opened.
func (b *breakers) failure(name string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	br := b.m[name]
	if br == nil {
		br = &breaker{}
		b.m[name] = br
		b.n.Store(int32(len(b.m)))
	}
	br.fails++
	if br.probing || br.fails >= b.failures {
		br.probing = false
		br.openUntil = now.Add(b.cooldown)
		return true
	}
	return false
}

// release ends a request that neither proves nor disproves the node (the
// client left, the node refused for overload): a half-open probe may be
// sent again.
func (b *breakers) release(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if br := b.m[name]; br != nil {
		br.probing = false
	}
}

func (b *breakers) reset(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.m, name)
	b.n.Store(int32(len(b.m)))
}

// state names a node's circuit for the cluster view: "closed", "open" or
// "half-open".
func (b *breakers) state(name string, now time.Time) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	br := b.m[name]
	switch {
	case br == nil || br.openUntil.IsZero():
		return "closed"
	case now.After(br.openUntil):
		return "half-open"
	}
	return "open"
}
