package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// Pipeline-parallel serving (engine/stage.go has the model side). A
// Generate call with a Pipeline runs here as its first stage: the node
// loads the first layers with the engine's scheduler, dials the next
// stage's node and streams each step's hidden states to it; that node
// runs its layers and passes them on, and the last samples. Tokens come
// back the same way. Every link is the nodes' mutual-TLS gRPC, each end
// checking the other's node certificate.
//
// A broken link fails the requests in flight on that pipeline with
// Unavailable, and the trailer FailedStageKey names the node whose stage
// failed, so the coordinator re-plans without it and resumes the streams.

// FailedStageKey is the trailer that names the node of a failed stage.
const FailedStageKey = "npumesh-failed-stage"

// stageSetupTimeout bounds loading and chaining the stages behind a node.
const stageSetupTimeout = 60 * time.Second

// maxStageMessage bounds a step message: a prefill chunk of 256 positions
// of a 16384-wide model in f32 is 16 MiB.
const maxStageMessage = 64 << 20

// stageHost holds a node's pipeline stages: first stages by plan, and the
// later stages' models, which the streams of every plan share.
type stageHost struct {
	n  *Node
	mu sync.Mutex
	// firsts are the first stages by plan key; a broken one is dropped,
	// an idle one closed (sweep).
	firsts map[string]*firstStage
	// later are the models of later stages by model and layers.
	later map[string]*laterStage
	conns map[string]*grpc.ClientConn
	stop  chan struct{} // ends the sweeper
	// sent counts activation bytes this node sent downstream.
	sent atomic.Int64
}

// firstStage is a pipeline whose first stage this node runs.
type firstStage struct {
	key   string
	ready chan struct{} // closed when set up (or failed: err)
	b     *Builtin      // the first layers, with the engine's scheduler
	link  *stageLink
	err   error
	// active counts Generate calls using it; used is when the last one
	// started or ended (unix nanoseconds).
	active atomic.Int32
	used   atomic.Int64
}

// acquire marks f in use until the returned func is called.
func (f *firstStage) acquire() func() {
	f.active.Add(1)
	f.used.Store(time.Now().UnixNano())
	return func() {
		f.used.Store(time.Now().UnixNano())
		f.active.Add(-1)
	}
}

// laterStage is a later stage's model and the streams using it.
type laterStage struct {
	ready   chan struct{} // closed when loaded (or failed: err)
	m       *engine.Model
	err     error
	streams int       // guarded by stageHost.mu
	used    time.Time // guarded by stageHost.mu
}

// stageIdle is how long a stage no request or stream uses stays loaded.
const stageIdle = 2 * time.Minute

// stageLink is the stream to the next stage.
type stageLink struct {
	host   *stageHost
	next   *pb.PipelineStage
	act    engine.ActType
	stream grpc.BidiStreamingClient[pb.StageMessage, pb.StageReply]
	cancel context.CancelFunc
	buf    []byte
	// failed is the node a failure came from (the next one unless it
	// named another).
	failed atomic.Value // string
}

func newStageHost(n *Node) *stageHost {
	h := &stageHost{n: n, firsts: map[string]*firstStage{}, later: map[string]*laterStage{}, conns: map[string]*grpc.ClientConn{}, stop: make(chan struct{})}
	go h.sweeper()
	return h
}

// sweeper closes stages idle for stageIdle, every half of it, until close.
func (h *stageHost) sweeper() {
	t := time.NewTicker(stageIdle / 4)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			h.sweep(time.Now(), stageIdle)
		case <-h.stop:
			return
		}
	}
}

// sweep closes the stages unused since now-idle.
func (h *stageHost) sweep(now time.Time, idle time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, f := range h.firsts {
		select {
		case <-f.ready:
		default:
			continue // setting up
		}
		if f.err == nil && f.active.Load() == 0 && now.Sub(time.Unix(0, f.used.Load())) > idle {
			delete(h.firsts, k)
			f.link.cancel()
			go f.b.Close()
			h.n.log.Info("idle pipeline first stage closed", "plan", k)
		}
	}
	for k, l := range h.later {
		if !isClosed(l.ready) || l.err != nil {
			continue // loading (it has a stream)
		}
		if l.streams == 0 && now.Sub(l.used) > idle {
			delete(h.later, k)
			go l.m.Close()
			h.n.log.Info("idle pipeline stage closed", "stage", k)
		}
	}
}

// planKey identifies a pipeline plan.
func planKey(model string, p *pb.Pipeline) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%s", model, p.GetActivations())
	for _, s := range p.GetStages() {
		fmt.Fprintf(&b, "|%s@%s[%d,%d)", s.GetNode(), s.GetAddress(), s.GetLayerLo(), s.GetLayerHi())
	}
	return b.String()
}

// builtinFor returns the built-in backend of model, whose file the stages
// load.
func (h *stageHost) builtinFor(model string) (*Builtin, error) {
	b, ok := h.n.backend(model)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "model %q is not on node %s", model, h.n.cfg.Name)
	}
	bi, ok := b.(*Builtin)
	if !ok || bi.path == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "model %q on node %s is not served by the built-in engine: it cannot run as pipeline stages", model, h.n.cfg.Name)
	}
	return bi, nil
}

// checkPlan validates a pipeline for a model of layers layers whose first
// stage is this node.
func checkPlan(p *pb.Pipeline, layers int) error {
	st := p.GetStages()
	if len(st) < 2 {
		return fmt.Errorf("pipeline has %d stages, want at least 2", len(st))
	}
	want := int32(0)
	for i, s := range st {
		if s.GetLayerLo() != want || s.GetLayerHi() <= s.GetLayerLo() {
			return fmt.Errorf("pipeline stage %d has layers [%d,%d), want a non-empty range from %d", i, s.GetLayerLo(), s.GetLayerHi(), want)
		}
		if i > 0 && s.GetAddress() == "" {
			return fmt.Errorf("pipeline stage %d (node %q) has no address", i, s.GetNode())
		}
		want = s.GetLayerHi()
	}
	if int(want) != layers {
		return fmt.Errorf("pipeline covers layers [0,%d) of a model with %d", want, layers)
	}
	_, err := engine.ParseActType(p.GetActivations())
	return err
}

// first returns the first stage of plan p for model, in use until release
// is called, setting the pipeline up on first use; concurrent callers of
// one plan wait for one setup. h.mu is not held while the chain is set up: a node may be
// setting up one plan's first stage while it serves a later stage of
// another.
func (h *stageHost) first(ctx context.Context, model string, p *pb.Pipeline) (*firstStage, func(), error) {
	key := planKey(model, p)
	h.mu.Lock()
	f := h.firsts[key]
	created := f == nil
	if created {
		f = &firstStage{key: key, ready: make(chan struct{})}
		h.firsts[key] = f
	}
	// Counted before h.mu is released, so the sweeper never closes a
	// stage a request is about to use.
	release := f.acquire()
	h.mu.Unlock()
	if created {
		f.b, f.link, f.err = h.setUp(ctx, model, p)
		if f.err != nil {
			h.mu.Lock()
			delete(h.firsts, key)
			h.mu.Unlock()
		} else {
			go f.link.receive(f.b.m, func() { h.drop(f) })
		}
		close(f.ready)
	} else {
		select {
		case <-f.ready:
		case <-ctx.Done():
			release()
			return nil, nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if f.err != nil {
		release()
		return nil, nil, f.err
	}
	return f, release, nil
}

// setUp chains the stages of p after this node and loads its first layers.
func (h *stageHost) setUp(ctx context.Context, model string, p *pb.Pipeline) (*Builtin, *stageLink, error) {
	base, err := h.builtinFor(model)
	if err != nil {
		return nil, nil, err
	}
	if err := checkPlan(p, base.m.Info().Layers); err != nil {
		return nil, nil, status.Error(codes.InvalidArgument, err.Error())
	}
	act, _ := engine.ParseActType(p.GetActivations())
	st := p.GetStages()
	link, err := h.dial(ctx, model, act, st[1], st[2:])
	if err != nil {
		return nil, nil, err
	}
	opts := base.opts
	opts.Layers = engine.LayerRange{Lo: 0, Hi: int(st[0].GetLayerHi())}
	opts.Downstream, opts.MicroBatches = link, int(p.GetMicroBatches())
	opts.OnCacheEvent = nil // a pipeline reuses no prefixes
	b, err := LoadBuiltin(base.path, opts)
	if err != nil {
		link.cancel()
		return nil, nil, status.Errorf(codes.Internal, "load layers %v of %q: %v", opts.Layers, model, err)
	}
	h.n.log.Info("pipeline first stage ready", "model", model, "layers", opts.Layers, "stages", len(st), "activations", act)
	return b, link, nil
}

// drop forgets a broken first stage; its model closes once its requests
// have returned.
func (h *stageHost) drop(f *firstStage) {
	h.mu.Lock()
	if h.firsts[f.key] == f {
		delete(h.firsts, f.key)
	}
	h.mu.Unlock()
	go f.b.Close()
}

// conn returns a connection to a peer node, checking its certificate.
func (h *stageHost) conn(node, addr string) (*grpc.ClientConn, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := node + "@" + addr
	if c := h.conns[key]; c != nil {
		return c, nil
	}
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(h.n.certs.ClientTLS(pki.Identity{Role: pki.RoleNode, Name: node}))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(maxStageMessage)),
	)
	if err != nil {
		return nil, err
	}
	h.conns[key] = c
	return c, nil
}

// dial opens the stream to stage next (with the stages after it) and
// waits until the whole chain behind it is ready.
func (h *stageHost) dial(ctx context.Context, model string, act engine.ActType, next *pb.PipelineStage, rest []*pb.PipelineStage) (*stageLink, error) {
	c, err := h.conn(next.GetNode(), next.GetAddress())
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "stage node %s: %v", next.GetNode(), err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	stream, err := pb.NewNodeServiceClient(c).Stage(sctx)
	fail := func(err error) (*stageLink, error) {
		cancel()
		st := status.Convert(err)
		return nil, status.Errorf(codes.Unavailable, "set up the stage on node %s: %s", next.GetNode(), st.Message())
	}
	if err != nil {
		return fail(err)
	}
	if err := stream.Send(&pb.StageMessage{Setup: &pb.StageSetup{
		Model: model, LayerLo: next.GetLayerLo(), LayerHi: next.GetLayerHi(), Activations: act.String(), Next: rest,
	}}); err != nil {
		return fail(err)
	}
	ready := make(chan error, 1)
	go func() {
		r, err := stream.Recv()
		if err == nil && !r.GetReady() {
			err = errors.New("stage answered before it was ready")
		}
		ready <- err
	}()
	timer := time.NewTimer(stageSetupTimeout)
	defer timer.Stop()
	select {
	case err := <-ready:
		if err != nil {
			return fail(err)
		}
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-timer.C:
		return fail(fmt.Errorf("not ready after %v", stageSetupTimeout))
	}
	l := &stageLink{host: h, next: next, act: act, stream: stream, cancel: cancel}
	l.failed.Store(next.GetNode())
	return l, nil
}

// Send implements engine.Downstream.
func (l *stageLink) Send(step *engine.StageStep) error {
	l.buf = engine.EncodeActivations(l.buf[:0], step.Hidden, l.act)
	l.host.sent.Add(int64(len(l.buf)))
	return l.stream.Send(toStageMessage(step, l.buf))
}

// receive passes the replies of the next stage to m until the stream
// ends, then fails m's pipeline and calls broken.
func (l *stageLink) receive(m *engine.Model, broken func()) {
	for {
		r, err := l.stream.Recv()
		if err == nil && r.GetFailedNode() != "" {
			// A stage behind failed: end the chain now (its streams
			// are cancelled from here down).
			l.failed.Store(r.GetFailedNode())
			err = fmt.Errorf("stage node %s failed", r.GetFailedNode())
		}
		if err == nil {
			if res := r.GetResults(); len(res) > 0 {
				out := make([]engine.StageResult, len(res))
				for i, x := range res {
					out[i] = engine.StageResult{Seq: x.GetSeq(), Token: x.GetToken()}
				}
				m.StageResults(out)
			}
			continue
		}
		node := l.failed.Load().(string)
		m.StageFailed(&stageError{node: node, err: err})
		l.cancel()
		broken()
		return
	}
}

// stageError is a pipeline failure and the node it came from.
type stageError struct {
	node string
	err  error
}

func (e *stageError) Error() string {
	return fmt.Sprintf("stage on node %s: %s", e.node, status.Convert(e.err).Message())
}

func (e *stageError) Unwrap() error { return e.err }

// failedStage reports the node named by a pipeline failure, if err is one.
func failedStage(err error) (string, bool) {
	var se *stageError
	if errors.Is(err, engine.ErrStageFailed) && errors.As(err, &se) {
		return se.node, true
	}
	return "", false
}

func toStageMessage(step *engine.StageStep, hidden []byte) *pb.StageMessage {
	msg := &pb.StageMessage{Hidden: hidden, Close: step.Close}
	for _, r := range step.Rows {
		row := &pb.StageRow{Seq: r.Seq, From: int32(r.From), Tokens: r.Tokens, Sample: r.Sample}
		if o := r.Open; o != nil {
			row.Open = &pb.StageSampling{Temperature: o.Temperature, TopP: o.TopP, TopK: int32(o.TopK), Seed: o.Seed}
		}
		msg.Rows = append(msg.Rows, row)
	}
	return msg
}

// fromStageMessage decodes a step; hidden is reused.
func fromStageMessage(msg *pb.StageMessage, act engine.ActType, dim int, hidden []float32) (*engine.StageStep, error) {
	step := &engine.StageStep{Close: msg.GetClose()}
	for _, r := range msg.GetRows() {
		row := engine.StageRow{Seq: r.GetSeq(), From: int(r.GetFrom()), Tokens: r.GetTokens(), Sample: r.GetSample()}
		if r.GetFrom() < 0 {
			return nil, fmt.Errorf("stage row of sequence %d starts at position %d", r.GetSeq(), r.GetFrom())
		}
		if o := r.GetOpen(); o != nil {
			row.Open = &engine.SamplingParams{Temperature: o.GetTemperature(), TopP: o.GetTopP(), TopK: int(o.GetTopK()), Seed: o.GetSeed()}
		}
		step.Rows = append(step.Rows, row)
	}
	var err error
	step.Hidden, err = engine.DecodeActivations(hidden, msg.GetHidden(), step.Positions()*dim, act)
	return step, err
}

// laterModel returns the shared model of layers [lo,hi) of model, counted
// as used by one more stream until release is called. The model loads
// outside h.mu (a big one takes seconds, and the heartbeat reads the
// stages); concurrent callers wait for one load.
func (h *stageHost) laterModel(model string, lo, hi int) (m *engine.Model, release func(), err error) {
	key := fmt.Sprintf("%s[%d,%d)", model, lo, hi)
	h.mu.Lock()
	l := h.later[key]
	created := l == nil
	if created {
		l = &laterStage{ready: make(chan struct{})}
		h.later[key] = l
	}
	l.streams++
	l.used = time.Now()
	h.mu.Unlock()
	release = func() {
		h.mu.Lock()
		l.streams--
		l.used = time.Now()
		h.mu.Unlock()
	}
	if created {
		l.m, l.err = h.loadLater(model, lo, hi)
		if l.err != nil {
			h.mu.Lock()
			delete(h.later, key)
			h.mu.Unlock()
		}
		close(l.ready)
	}
	<-l.ready
	if l.err != nil {
		release()
		return nil, nil, l.err
	}
	return l.m, release, nil
}

// loadLater loads layers [lo,hi) of model.
func (h *stageHost) loadLater(model string, lo, hi int) (*engine.Model, error) {
	base, err := h.builtinFor(model)
	if err != nil {
		return nil, err
	}
	opts := base.opts
	opts.Layers = engine.LayerRange{Lo: lo, Hi: hi}
	opts.OnCacheEvent = nil
	m, err := engine.Load(base.path, opts)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "load layers [%d,%d) of %q: %v", lo, hi, model, err)
	}
	h.n.log.Info("pipeline stage loaded", "model", model, "layers", opts.Layers)
	return m, nil
}

// close releases every stage model.
func (h *stageHost) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	for k, f := range h.firsts {
		select {
		case <-f.ready:
			if f.err == nil {
				f.link.cancel()
				f.b.Close()
			}
		default: // still setting up: its caller is gone with the server
		}
		delete(h.firsts, k)
	}
	for k, l := range h.later {
		if isClosed(l.ready) && l.err == nil {
			l.m.Close()
		}
		delete(h.later, k)
	}
	for k, c := range h.conns {
		c.Close()
		delete(h.conns, k)
	}
}

// Stage implements NodeService: it runs a later stage for the node of the
// stage before.
func (s *nodeService) Stage(stream grpc.BidiStreamingServer[pb.StageMessage, pb.StageReply]) error {
	h := s.n.stages
	msg, err := stream.Recv()
	if err != nil {
		return err
	}
	setup := msg.GetSetup()
	if setup == nil {
		return status.Error(codes.InvalidArgument, "the first stage message must be a setup")
	}
	act, err := engine.ParseActType(setup.GetActivations())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	lo, hi := int(setup.GetLayerLo()), int(setup.GetLayerHi())
	if lo <= 0 {
		return status.Errorf(codes.InvalidArgument, "stage layers [%d,%d): a later stage starts after layer 0", lo, hi)
	}
	m, release, err := h.laterModel(setup.GetModel(), lo, hi)
	if err != nil {
		return err
	}
	defer release()
	info := m.Info()
	rest := setup.GetNext()
	if (len(rest) == 0) != (hi == info.Layers) {
		return status.Errorf(codes.InvalidArgument, "stage layers [%d,%d) of %d with %d stages after it", lo, hi, info.Layers, len(rest))
	}
	if len(rest) > 0 && int(rest[0].GetLayerLo()) != hi {
		return status.Errorf(codes.InvalidArgument, "next stage starts at layer %d, this one ends at %d", rest[0].GetLayerLo(), hi)
	}
	runner, err := m.NewStageRunner()
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	defer runner.Close()

	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	var next *stageLink
	relayDone := make(chan struct{})
	if len(rest) > 0 {
		next, err = h.dial(ctx, setup.GetModel(), act, rest[0], rest[1:])
		if err != nil {
			_ = stream.Send(&pb.StageReply{FailedNode: rest[0].GetNode()})
			return err
		}
		defer next.cancel()
	}
	if err := stream.Send(&pb.StageReply{Ready: true}); err != nil {
		return err
	}
	if next != nil {
		// Replies from behind travel up unchanged; a failure there is
		// reported with the node it came from, then ends this stage.
		go func() {
			defer close(relayDone)
			for {
				r, err := next.stream.Recv()
				if err != nil {
					_ = stream.Send(&pb.StageReply{FailedNode: next.failed.Load().(string)})
					cancel()
					return
				}
				if err := stream.Send(r); err != nil {
					cancel()
					return
				}
				if r.GetFailedNode() != "" {
					return
				}
			}
		}()
		defer func() { next.cancel(); <-relayDone }()
	}
	// Steps are received on a goroutine of their own so that the loop also
	// ends when the node stops (h.stop): a handler blocked in Recv would
	// hold the server's graceful stop. A failure behind this stage is
	// reported up by the relay above; the first stage then cancels the
	// chain, which ends the stream.
	recv := make(chan *pb.StageMessage, 1)
	recvErr := make(chan error, 1)
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case recv <- msg:
			case <-ctx.Done():
				return
			}
		}
	}()
	var hidden []float32
	for {
		var msg *pb.StageMessage
		select {
		case msg = <-recv:
		case err := <-recvErr:
			if status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) || errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			return status.Errorf(codes.Unavailable, "stage on node %s ended: the stage behind it failed", s.n.cfg.Name)
		case <-h.stop:
			return status.Errorf(codes.Unavailable, "node %s is stopping", s.n.cfg.Name)
		}
		step, err := fromStageMessage(msg, act, info.Dim, hidden)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		hidden = step.Hidden
		out, results, err := runner.Step(step)
		if err != nil {
			return status.Errorf(codes.Internal, "node %s layers [%d,%d): %v", s.n.cfg.Name, lo, hi, err)
		}
		if next != nil {
			if err := next.Send(&engine.StageStep{Rows: step.Rows, Hidden: out, Close: step.Close}); err != nil {
				return status.Errorf(codes.Unavailable, "send to stage node %s: %v", next.next.GetNode(), err)
			}
			continue
		}
		if len(results) > 0 {
			reply := &pb.StageReply{}
			for _, r := range results {
				reply.Results = append(reply.Results, &pb.StageResult{Seq: r.Seq, Token: r.Token})
			}
			if err := stream.Send(reply); err != nil {
				return err
			}
		}
	}
}

// pipelineTrailer tells the coordinator which stage node failed.
func pipelineTrailer(stream grpc.ServerStream, err error) {
	if node, ok := failedStage(err); ok {
		stream.SetTrailer(metadata.Pairs(FailedStageKey, node))
	}
}

// Probe implements NodeService: the coordinator times it to measure the
// link's bandwidth (pipeline planning).
func (s *nodeService) Probe(ctx context.Context, req *pb.ProbeRequest) (*pb.ProbeResponse, error) {
	return &pb.ProbeResponse{Received: int64(len(req.GetPayload()))}, nil
}

// layerSeconds is the mean measured layer time of the stages of model
// loaded here (0 when none has measured).
func (h *stageHost) layerSeconds(model string) float64 {
	if h == nil {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var sum float64
	var n int
	add := func(m *engine.Model) {
		if s := m.LayerSeconds(); s > 0 && m.Info().ID == model {
			sum += s
			n++
		}
	}
	for _, f := range h.firsts {
		select {
		case <-f.ready:
			if f.err == nil {
				add(f.b.m)
			}
		default:
		}
	}
	for _, l := range h.later {
		if isClosed(l.ready) && l.err == nil {
			add(l.m)
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// isClosed reports whether ch is closed.
func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
