package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/openai"
	"github.com/npumesh/npumesh/internal/shard"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// Pipeline sharding: a model can be served by a chain of nodes, each
// running a range of its layers (engine/stage.go, node/stage.go). The
// coordinator decides when and how: on request (ShardSpec with Stages >=
// 2, from `npumesh model shard` or the config), or automatically when no
// node that has the model can hold it in memory. Package shard chooses the
// nodes and the split from each node's free memory, its measured decode
// speed and the measured round trip to it. A request goes to the first
// stage's node with the plan; when a stage fails, the node names it (the
// trailer below), and the request is re-planned without that node and
// resumed from the tokens already delivered, as for any migration.

// failedStageTrailer is node.FailedStageKey: the trailer in which a first
// stage names the node whose stage failed.
const failedStageTrailer = "npumesh-failed-stage"

// ShardSpec asks for a model to be served as a pipeline.
type ShardSpec struct {
	// Stages is the number of stages: 0 chooses automatically (one stage
	// unless no node holds the model), 1 turns sharding off, 2 or more
	// asks for exactly that many.
	Stages int
	// Activations is how hidden states cross links: "f16" (default),
	// "f32" or "q8".
	Activations string
}

// ActivationBytes returns the wire bytes per hidden-state value of an
// activation encoding ("" is f16), as engine.ActType defines them (q8 is
// 34 bytes per 32 values, counted as 1 for planning).
func ActivationBytes(act string) (int, error) {
	switch act {
	case "", "f16":
		return 2, nil
	case "f32":
		return 4, nil
	case "q8", "q8_0":
		return 1, nil
	}
	return 0, fmt.Errorf("activation type %q: want f16, f32 or q8", act)
}

// pipelines holds the shard specs and the measured round trips.
type pipelines struct {
	mu    sync.Mutex
	specs map[string]ShardSpec
	rtt   map[string]rttSample  // by node
	plans map[string]cachedPlan // by model
	// failed holds nodes whose stage failed, until when they are left out
	// of every plan (a dead node stays registered until its heartbeats
	// time out).
	failed map[string]time.Time
}

// stageFailedCooldown is how long a node whose stage failed is left out of
// plans.
const stageFailedCooldown = 15 * time.Second

// stageFailed leaves node out of plans for stageFailedCooldown.
func (c *Coordinator) stageFailed(node string) {
	c.pipes.mu.Lock()
	defer c.pipes.mu.Unlock()
	if c.pipes.failed == nil {
		c.pipes.failed = map[string]time.Time{}
	}
	c.pipes.failed[node] = time.Now().Add(stageFailedCooldown)
}

type rttSample struct {
	rtt         time.Duration
	bytesPerSec float64 // 0: unknown
	at          time.Time
}

// rttMaxAge is how long a measured link is used before it is measured
// again.
const rttMaxAge = 30 * time.Second

// SetShard sets (or with Stages 0 and no activations, resets to automatic)
// how model is sharded.
func (c *Coordinator) SetShard(model string, spec ShardSpec) error {
	if model == "" {
		return errors.New("shard: no model name")
	}
	if spec.Stages < 0 {
		return fmt.Errorf("shard %q: %d stages; want 0 (automatic), 1 (off) or more", model, spec.Stages)
	}
	if _, err := ActivationBytes(spec.Activations); err != nil {
		return fmt.Errorf("shard %q: %w", model, err)
	}
	p := &c.pipes
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.specs == nil {
		p.specs = map[string]ShardSpec{}
	}
	if spec == (ShardSpec{}) {
		delete(p.specs, model)
	} else {
		p.specs[model] = spec
	}
	c.log.Info("shard spec set", "model", model, "stages", spec.Stages, "activations", spec.Activations)
	return nil
}

func (c *Coordinator) shardSpec(model string) ShardSpec {
	c.pipes.mu.Lock()
	defer c.pipes.mu.Unlock()
	return c.pipes.specs[model]
}

// pipelinePlan is a plan for one attempt.
type pipelinePlan struct {
	first *member
	pb    *pb.Pipeline
	plan  shard.Plan
}

// stageHolders returns the members that can run stages of model: they
// serve it with the built-in engine, are not draining, excluded, recently
// failed as a stage or behind an open breaker. Sorted by name, for stable plans.
func (c *Coordinator) stageHolders(model string, exclude map[string]bool) ([]*member, *pb.ModelInfo) {
	var out []*member
	var shape *pb.ModelInfo
	now := time.Now()
	c.pipes.mu.Lock()
	failed := map[string]bool{}
	for n, until := range c.pipes.failed {
		if now.Before(until) {
			failed[n] = true
		} else {
			delete(c.pipes.failed, n)
		}
	}
	c.pipes.mu.Unlock()
	for _, m := range c.reg.list() {
		m.mu.Lock()
		mi, ok := m.models[model]
		draining := m.draining
		m.mu.Unlock()
		if !ok || draining || exclude[m.name] || failed[m.name] || mi.GetBackend() != "builtin" || mi.GetLayers() == 0 || !c.rt.breakers.allow(m.name, now) {
			continue
		}
		out = append(out, m)
		if shape == nil {
			shape = mi
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, shape
}

// wholeBytes is what a node needs to serve model mi whole: every layer's
// weights and one context of KV, the embedding and the head.
func wholeBytes(mi *pb.ModelInfo) int64 {
	perLayer := int64(mi.GetLayerBytes()) + int64(mi.GetKvBytesPerLayerToken())*int64(mi.GetContextLength())
	return int64(mi.GetLayers())*perLayer + int64(mi.GetEmbedBytes()) + int64(mi.GetHeadBytes())
}

// someNodeHolds reports whether a node that serves model can hold it whole
// (or does not say how much memory it has), stopping at the first: what
// decides, for an automatic shard spec, that a request is routed as usual.
func (c *Coordinator) someNodeHolds(model string) bool {
	for _, m := range c.reg.list() {
		m.mu.Lock()
		mi, ok := m.models[model]
		free := int64(m.info.GetMemoryAvailableBytes())
		draining := m.draining
		m.mu.Unlock()
		if ok && !draining && (mi.GetLayers() == 0 || free == 0 || free >= wholeBytes(mi)) {
			return true
		}
	}
	return false
}

// shardModel is the planner's view of a model.
func shardModel(mi *pb.ModelInfo) shard.Model {
	layers := int(mi.GetLayers())
	lb := make([]int64, layers)
	for i := range lb {
		lb[i] = int64(mi.GetLayerBytes())
	}
	return shard.Model{
		Layers: layers, LayerBytes: lb, EmbedBytes: int64(mi.GetEmbedBytes()), HeadBytes: int64(mi.GetHeadBytes()),
		KVBytesPerLayer: int64(mi.GetKvBytesPerLayerToken()) * int64(mi.GetContextLength()),
		Hidden:          int(mi.GetHiddenSize()),
	}
}

// planPipeline returns the pipeline for an attempt at model, or nil when
// the model is served whole. exclude holds nodes that failed as stages.
func (c *Coordinator) planPipeline(ctx context.Context, model string, exclude map[string]bool) (*pipelinePlan, *openai.Error) {
	spec := c.shardSpec(model)
	if spec.Stages == 1 || spec.Stages == 0 && c.someNodeHolds(model) {
		return nil, nil // the common case, checked without building a plan
	}
	holders, shape := c.stageHolders(model, exclude)
	if shape == nil {
		if spec.Stages >= 2 {
			return nil, openai.ErrUnavailable(fmt.Sprintf("model %q is sharded in %d stages but no node serving it with the built-in engine is available", model, spec.Stages))
		}
		return nil, nil
	}
	// A plan stays while the same nodes (same registrations) serve the
	// model and the spec is the same, for planMaxAge: nodes keep one
	// first stage per plan, so a plan that followed every wobble of the
	// measured speeds would load new stages again and again.
	var sig strings.Builder
	fmt.Fprintf(&sig, "%d/%s", spec.Stages, spec.Activations)
	for _, m := range holders {
		fmt.Fprintf(&sig, "|%s#%d", m.name, m.session)
	}
	c.pipes.mu.Lock()
	cached, ok := c.pipes.plans[model]
	c.pipes.mu.Unlock()
	if ok && cached.sig == sig.String() && time.Since(cached.at) < planMaxAge {
		return cached.pp, nil
	}
	pp, err := c.makePlan(ctx, model, spec, holders, shape)
	if err == nil {
		c.pipes.mu.Lock()
		if c.pipes.plans == nil {
			c.pipes.plans = map[string]cachedPlan{}
		}
		c.pipes.plans[model] = cachedPlan{sig: sig.String(), at: time.Now(), pp: pp}
		c.pipes.mu.Unlock()
	}
	return pp, err
}

// planMaxAge is how long a pipeline plan is kept while its nodes stay.
const planMaxAge = 5 * time.Minute

// cachedPlan is a model's current plan (pp nil: served whole).
type cachedPlan struct {
	sig string
	at  time.Time
	pp  *pipelinePlan
}

// makePlan plans model's pipeline over holders.
func (c *Coordinator) makePlan(ctx context.Context, model string, spec ShardSpec, holders []*member, shape *pb.ModelInfo) (*pipelinePlan, *openai.Error) {
	sm := shardModel(shape)
	var nodes []shard.Node
	whole := wholeBytes(shape)
	fitsOne := false
	for _, m := range holders {
		m.mu.Lock()
		free := int64(m.info.GetMemoryAvailableBytes())
		tokS := m.models[model].GetDecodeTokS()
		layerS := m.models[model].GetLayerSeconds()
		m.mu.Unlock()
		if free == 0 || free >= whole {
			fitsOne = true // unknown memory counts as enough
		}
		n := shard.Node{ID: m.name, FreeMem: free}
		if free == 0 {
			n.FreeMem = whole
		}
		switch {
		case layerS > 0: // measured per layer by the node's engine
			n.LayerSeconds = layerS
		case tokS > 0:
			n.LayerSeconds = 1 / (tokS * float64(sm.Layers))
		}
		nodes = append(nodes, n)
	}
	stages := spec.Stages
	if stages > len(holders) {
		// Fewer nodes than asked for (some failed or left): use those left.
		stages = len(holders)
	}
	if stages == 0 && fitsOne || stages == 1 && fitsOne {
		return nil, nil // a node holds the model: route it whole
	}
	if stages == 1 {
		stages = 0 // one node left that cannot hold it: the planner says why
	}
	act := spec.Activations
	if act == "" {
		act = "f16"
	}
	actBytes, _ := ActivationBytes(act)
	links := c.measureLinks(ctx, holders)
	link := func(a, b string) shard.Link {
		// The coordinator measures its own link to each node; a link
		// between two nodes is estimated from the two: the slower round
		// trip and the lower bandwidth.
		la, lb := links[a], links[b]
		l := shard.Link{RTT: max(la.RTT, lb.RTT), BytesPerSec: la.BytesPerSec}
		switch {
		case a == "":
			l.BytesPerSec = lb.BytesPerSec
		case b != "" && lb.BytesPerSec > 0 && (l.BytesPerSec == 0 || lb.BytesPerSec < l.BytesPerSec):
			l.BytesPerSec = lb.BytesPerSec
		}
		return l
	}
	plan, err := shard.Make(sm, nodes, shard.Options{Stages: stages, ActBytes: actBytes, Link: link})
	if err != nil {
		return nil, openai.ErrUnavailable(fmt.Sprintf("model %q: cannot plan pipeline stages: %v", model, err))
	}
	if len(plan.Stages) == 1 {
		return nil, nil
	}
	byName := map[string]*member{}
	for _, m := range holders {
		byName[m.name] = m
	}
	pp := &pipelinePlan{first: byName[plan.Stages[0].Node], plan: plan, pb: &pb.Pipeline{Activations: act}}
	for _, s := range plan.Stages {
		pp.pb.Stages = append(pp.pb.Stages, &pb.PipelineStage{Node: s.Node, Address: byName[s.Node].addr, LayerLo: int32(s.Lo), LayerHi: int32(s.Hi)})
	}
	// One micro-batch per stage, so every stage has work while the others
	// compute. (Stages whose nodes share cores gain nothing from it: they
	// read the weights once per micro-batch instead of once per step.)
	pp.pb.MicroBatches = int32(len(plan.Stages))
	return pp, nil
}

// probeBytes is the payload that measures a link's bandwidth.
const probeBytes = 1 << 20

// measureLinks returns the link to each member: the round trip of an Info
// call and the bandwidth of a 1 MiB Probe (less that round trip),
// measuring those not measured in the last rttMaxAge. A member that does
// not answer gets a 1 s round trip and no bandwidth, so plans put it last.
func (c *Coordinator) measureLinks(ctx context.Context, ms []*member) map[string]shard.Link {
	out := map[string]shard.Link{"": {}}
	now := time.Now()
	var stale []*member
	c.pipes.mu.Lock()
	if c.pipes.rtt == nil {
		c.pipes.rtt = map[string]rttSample{}
	}
	for _, m := range ms {
		if s, ok := c.pipes.rtt[m.name]; ok && now.Sub(s.at) < rttMaxAge {
			out[m.name] = shard.Link{RTT: s.rtt, BytesPerSec: s.bytesPerSec}
		} else {
			stale = append(stale, m)
		}
	}
	c.pipes.mu.Unlock()
	payload := make([]byte, probeBytes)
	for _, m := range stale {
		l := shard.Link{RTT: time.Second}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		start := time.Now()
		if _, err := m.client.Info(pctx, &pb.InfoRequest{}); err == nil {
			l.RTT = time.Since(start)
			start = time.Now()
			if _, err := m.client.Probe(pctx, &pb.ProbeRequest{Payload: payload}); err == nil {
				if d := time.Since(start) - l.RTT; d > 0 {
					l.BytesPerSec = probeBytes / d.Seconds()
				}
			}
		}
		cancel()
		out[m.name] = l
		c.pipes.mu.Lock()
		c.pipes.rtt[m.name] = rttSample{rtt: l.RTT, bytesPerSec: l.BytesPerSec, at: time.Now()}
		c.pipes.mu.Unlock()
	}
	return out
}

// stageFailure is a first stage's report that a stage node failed.
type stageFailure struct {
	node string
	err  error
}

func (e *stageFailure) Error() string { return e.err.Error() }
func (e *stageFailure) Unwrap() error { return e.err }

// GRPCStatus keeps the node's status visible through the wrapper.
func (e *stageFailure) GRPCStatus() *status.Status { return status.Convert(e.err) }

// withFailedStage wraps err with the failed stage node from trailer md.
func withFailedStage(err error, md metadata.MD) error {
	if v := md.Get(failedStageTrailer); len(v) > 0 && v[0] != "" {
		return &stageFailure{node: v[0], err: err}
	}
	return err
}

// failedStageNode returns the stage node an attempt's error names.
func failedStageNode(err error) (string, bool) {
	var sf *stageFailure
	if errors.As(err, &sf) {
		return sf.node, true
	}
	return "", false
}

// ShardPlan returns the plan a request for model would use now (nil when
// it is served whole), for `npumesh model shard` and the cluster view.
func (c *Coordinator) ShardPlan(ctx context.Context, model string) (*shard.Plan, *pb.Pipeline, error) {
	pp, apiErr := c.planPipeline(ctx, model, nil)
	if apiErr != nil {
		return nil, nil, apiErr
	}
	if pp == nil {
		return nil, nil, nil
	}
	return &pp.plan, pp.pb, nil
}

// ShardModel implements AdminService.
func (s *adminService) ShardModel(ctx context.Context, req *pb.ShardModelRequest) (*pb.ShardModelResponse, error) {
	spec := ShardSpec{Stages: int(req.GetStages()), Activations: req.GetActivations()}
	if err := s.c.SetShard(req.GetModel(), spec); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp := &pb.ShardModelResponse{}
	plan, pipe, err := s.c.ShardPlan(ctx, req.GetModel())
	switch {
	case err != nil:
		resp.Note = err.Error()
	case plan == nil:
		resp.Note = "served whole: a node holds the model (or no node serves it yet)"
	default:
		resp.Pipeline, resp.TokenSeconds, resp.BytesPerToken = pipe, plan.TokenSeconds, plan.BytesPerToken
		if n := len(plan.Stages); spec.Stages > n {
			resp.Note = fmt.Sprintf("%d stages asked for, but only %d nodes serve the model: %d stages until more join", spec.Stages, n, n)
		}
	}
	return resp, nil
}

// pipelineView is one sharded model's current plan in GET /api/v1/nodes.
type pipelineView struct {
	Model        string              `json:"model"`
	Activations  string              `json:"activations"`
	MicroBatches int32               `json:"micro_batches"`
	Stages       []pipelineStageView `json:"stages"`
	// TokenMillis is the planner's estimate of decode time per token.
	TokenMillis float64 `json:"estimated_ms_per_token"`
	Planned     string  `json:"planned"`
}

type pipelineStageView struct {
	Node   string `json:"node"`
	Layers [2]int `json:"layers"` // [lo, hi)
}

// pipelineViews lists the cached plans of sharded models, by model.
func (c *Coordinator) pipelineViews() []pipelineView {
	c.pipes.mu.Lock()
	defer c.pipes.mu.Unlock()
	out := []pipelineView{}
	for model, cp := range c.pipes.plans {
		if cp.pp == nil {
			continue
		}
		v := pipelineView{Model: model, Activations: cp.pp.pb.GetActivations(), MicroBatches: cp.pp.pb.GetMicroBatches(),
			TokenMillis: cp.pp.plan.TokenSeconds * 1000, Planned: cp.at.UTC().Format(time.RFC3339)}
		for _, s := range cp.pp.pb.GetStages() {
			v.Stages = append(v.Stages, pipelineStageView{Node: s.GetNode(), Layers: [2]int{int(s.GetLayerLo()), int(s.GetLayerHi())}})
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Model < out[j].Model })
	return out
}
