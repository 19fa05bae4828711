package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/modelstore"
	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// Model pulls (issue #7): the node asks the coordinator which catalog
// models it should hold (GetAssignments), pulls their files chunk by chunk
// from the coordinator or from peers that hold them (FetchChunks), choosing
// the source by measured throughput, verifies every chunk into its own
// content-addressed store (resuming after an interruption), loads the model
// with the built-in engine and reports it "loaded" in its heartbeat; while
// pulling it reports "pulling" with progress, and "failed" with a reason.

// PullConfig enables model pulls. Only internal/cli and tests build it.
type PullConfig struct {
	// Dir is the node's model store.
	Dir string
	// Quota bounds the store in bytes (0: none).
	Quota int64
	// Threads per pulled model (0: all cores).
	Threads int
	// Interval between assignment checks (default 1s).
	Interval time.Duration
	// BatchChunks is how many chunks one FetchChunks call asks for (default
	// 8); the source is re-chosen between batches.
	BatchChunks int
	// ServeHook, tests only, may alter a chunk this node serves to a peer
	// (fault injection).
	ServeHook func(sha string, index int, data []byte) []byte
}

// pullState is what the node reports for a catalog model.
type pullState struct {
	state    string // "pulling", "loaded", "failed"
	reason   string
	done     int64
	total    int64
	digest   string
	manifest *modelstore.Manifest
	backend  Backend
	retryAt  time.Time // a failed pull is retried after this (zero: never)
	cancel   context.CancelFunc
	bySource map[string]int64 // verified bytes by source, this pull
	verify   time.Duration    // spent re-reading whole files to check them
}

// puller runs the node's model pulls.
type puller struct {
	n     *Node
	cfg   PullConfig
	store *modelstore.Store

	mu     sync.Mutex // guards models, rates and conns
	models map[string]*pullState
	rates  map[string]float64 // source key -> smoothed bytes/s
	conns  map[string]*grpc.ClientConn

	wg sync.WaitGroup // running pulls

	recvBytes   *prometheus.CounterVec // source
	corrupt     *prometheus.CounterVec // source
	servedBytes prometheus.Counter
	rate        *prometheus.GaugeVec // model
}

func (n *Node) initPull() error {
	if n.cfg.Pull == nil {
		return nil
	}
	cfg := *n.cfg.Pull
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.BatchChunks <= 0 {
		cfg.BatchChunks = 8
	}
	st, err := modelstore.Open(cfg.Dir, cfg.Quota)
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	p := &puller{n: n, cfg: cfg, store: st, models: map[string]*pullState{}, rates: map[string]float64{}, conns: map[string]*grpc.ClientConn{}}
	p.recvBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "npumesh_node_model_pull_bytes_total", Help: "Verified model chunk bytes this node pulled, by source (coordinator or peer node)."}, []string{"source"})
	p.corrupt = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "npumesh_node_model_pull_corrupt_chunks_total", Help: "Chunks that failed verification and were fetched again, by source."}, []string{"source"})
	p.servedBytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "npumesh_node_model_served_bytes_total", Help: "Model chunk bytes this node served to peers."})
	p.rate = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "npumesh_node_model_pull_rate_bytes_per_second", Help: "Average transfer rate of the model's last completed pull."}, []string{"model"})
	n.metrics.reg.MustRegister(p.recvBytes, p.corrupt, p.servedBytes, p.rate)
	n.pull = p
	return nil
}

// backend finds a model's backend, configured or pulled.
func (n *Node) backend(id string) (Backend, bool) {
	if b, ok := n.backends[id]; ok {
		return b, true
	}
	if n.pull == nil {
		return nil, false
	}
	n.pull.mu.Lock()
	defer n.pull.mu.Unlock()
	if s := n.pull.models[id]; s != nil && s.backend != nil {
		return s.backend, true
	}
	return nil, false
}

// pulledModelInfos reports the catalog models: loaded ones like configured
// models, the others with their pull state.
func (n *Node) pulledModelInfos() []*pb.ModelInfo {
	if n.pull == nil {
		return nil
	}
	p := n.pull
	p.mu.Lock()
	defer p.mu.Unlock()
	names := make([]string, 0, len(p.models))
	for name := range p.models {
		if _, static := n.backends[name]; !static {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var out []*pb.ModelInfo
	for _, name := range names {
		s := p.models[name]
		mi := &pb.ModelInfo{Id: name, State: s.state, Reason: s.reason, SizeBytes: uint64(s.total)}
		if s.total > 0 {
			mi.Progress = float64(s.done) / float64(s.total)
		}
		if s.backend != nil {
			i := s.backend.Info()
			mi.Arch, mi.Backend, mi.ContextLength, mi.Parameters = i.Arch, i.Backend, int32(i.ContextLength), i.Parameters
			mi.Quantization, mi.KvBlockSize, mi.SizeBytes = i.Quantization, int32(i.BlockSize), i.SizeBytes
			n.setShape(mi, i)
		}
		out = append(out, mi)
	}
	return out
}

// startPull runs the pull loop until the returned stop is called.
func (n *Node) startPull() (stop func()) {
	if n.pull == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.pull.loop(ctx) }()
	return func() { cancel(); <-done }
}

func (p *puller) loop(ctx context.Context) {
	defer p.shutdown()
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for i := 0; ; i++ {
		addr := p.n.cfg.Coordinators[i%len(p.n.cfg.Coordinators)]
		if err := p.sync(ctx, addr); err != nil && ctx.Err() == nil {
			p.n.log.Debug("model assignments", "coordinator", addr, "err", err)
		} else {
			i-- // stay with a coordinator that answers
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *puller) shutdown() {
	p.mu.Lock()
	for _, s := range p.models {
		if s.cancel != nil {
			s.cancel()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.models {
		if s.backend != nil {
			s.backend.Close()
			s.backend = nil
		}
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = map[string]*grpc.ClientConn{}
}

// conn returns a cached client connection to a source: the coordinator at
// addr (node "") or a peer node.
func (p *puller) conn(node, addr string) (*grpc.ClientConn, error) {
	key := node + "@" + addr
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.conns[key]; c != nil {
		return c, nil
	}
	want := pki.Identity{Role: pki.RoleCoordinator}
	if node != "" {
		want = pki.Identity{Role: pki.RoleNode, Name: node}
	}
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(p.n.certs.ClientTLS(want))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
		// Fixed flow-control windows bound what a broken transfer loses
		// (bytes sent but never received) to about one window; 1 MiB is
		// far above a LAN's bandwidth-delay product.
		grpc.WithInitialWindowSize(pullWindow),
		grpc.WithInitialConnWindowSize(pullWindow),
	)
	if err != nil {
		return nil, err
	}
	p.conns[key] = c
	return c, nil
}

// sync fetches the assignment and starts, retries or drops pulls.
func (p *puller) sync(ctx context.Context, coord string) error {
	cc, err := p.conn("", coord)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := pb.NewControlServiceClient(cc).GetAssignments(rctx, &pb.GetAssignmentsRequest{})
	cancel()
	if err != nil {
		return err
	}
	want := map[string]*pb.ModelAssignment{}
	for _, a := range resp.GetModels() {
		want[a.GetManifest().GetName()] = a
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Files of models this node no longer holds (unassigned while it was
	// down, say) are deleted.
	if stored, err := p.store.Manifests(); err == nil {
		for _, m := range stored {
			if want[m.Name] == nil && p.models[m.Name] == nil {
				p.n.log.Info("deleting the files of a model no longer assigned", "model", m.Name)
				if err := p.store.Remove(m.Name); err != nil {
					p.n.log.Warn("remove model files", "model", m.Name, "err", err)
				}
			}
		}
	}
	for name, s := range p.models {
		a := want[name]
		if a != nil && manifestFromProto(a.GetManifest()).Digest() == s.digest {
			continue
		}
		// No longer assigned (or replaced by another model of that name).
		delete(p.models, name)
		if s.cancel != nil {
			s.cancel()
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if s.backend != nil {
				s.backend.Close() // waits for running generations
			}
			if a == nil {
				if err := p.store.Remove(name); err != nil {
					p.n.log.Warn("remove model files", "model", name, "err", err)
				}
			}
			p.n.log.Info("model unassigned; unloaded", "model", name)
		}()
	}
	for name, a := range want {
		s := p.models[name]
		if s != nil && (s.state != "failed" || s.retryAt.IsZero() || time.Now().Before(s.retryAt)) {
			continue
		}
		if _, static := p.n.backends[name]; static {
			continue // served from --model already
		}
		m := manifestFromProto(a.GetManifest())
		if err := m.Validate(); err != nil {
			p.models[name] = &pullState{state: "failed", reason: err.Error(), digest: m.Digest()}
			continue
		}
		pctx, cancel := context.WithCancel(ctx)
		s = &pullState{state: "pulling", total: m.Size(), digest: m.Digest(), manifest: m, cancel: cancel}
		p.models[name] = s
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.run(pctx, s, a.GetSources(), coord)
		}()
	}
	return nil
}

// run pulls and loads one model, recording the outcome in s.
func (p *puller) run(ctx context.Context, s *pullState, sources []*pb.ChunkSource, coord string) {
	m := s.manifest
	log := p.n.log.With("model", m.Name)
	b, err := p.pullAndLoad(ctx, s, sources, coord)
	p.mu.Lock()
	defer p.mu.Unlock()
	if ctx.Err() != nil {
		if b != nil {
			b.Close()
		}
		return
	}
	if err != nil {
		s.state, s.reason = "failed", err.Error()
		switch {
		case errors.Is(err, errNoEngine): // retrying cannot help
		case errors.Is(err, modelstore.ErrQuota):
			s.retryAt = time.Now().Add(30 * time.Second) // other models may have gone
		default:
			s.retryAt = time.Now().Add(5 * time.Second)
		}
		log.Warn("model pull failed", "err", err)
		return
	}
	s.state, s.reason, s.backend, s.done = "loaded", "", b, s.total
	log.Info("model loaded", "size", s.total)
}

// errNoEngine marks a model the built-in engine cannot load (its format,
// or what the engine says of its files); retrying cannot help.
var errNoEngine = errors.New("the built-in engine cannot load this model")

// pullWindow is the HTTP/2 flow-control window of pull connections.
const pullWindow = 1 << 20

func (p *puller) pullAndLoad(ctx context.Context, s *pullState, sources []*pb.ChunkSource, coord string) (Backend, error) {
	m := s.manifest
	if !p.store.Complete(m) {
		if err := p.store.CheckQuota(m); err != nil {
			p.store.DiscardPartial(m)
			return nil, err
		}
	}
	if err := p.store.PutManifest(m); err != nil {
		return nil, err
	}
	p.setDone(s, p.store.Progress(m))
	start, before := time.Now(), p.store.Progress(m)
	seen := map[string]bool{}
	for _, f := range m.Files {
		if seen[f.SHA256] {
			continue
		}
		seen[f.SHA256] = true
		if err := p.pullFile(ctx, s, f, sources, coord); err != nil {
			if errors.Is(err, modelstore.ErrQuota) {
				p.store.DiscardPartial(m)
			}
			return nil, fmt.Errorf("pull %s: %w", f.Name, err)
		}
	}
	if got := m.Size() - before; got > 0 {
		// The transfer rate leaves out the local whole-file check.
		dur := time.Since(start) - s.verify
		rate := float64(got) / dur.Seconds()
		p.rate.WithLabelValues(m.Name).Set(rate)
		p.mu.Lock()
		by := fmt.Sprint(s.bySource)
		p.mu.Unlock()
		p.n.log.Info("model transfer done", "model", m.Name, "bytes", got, "dur", dur.Round(time.Millisecond),
			"rate_mbit_s", math.Round(rate*8/1e5)/10, "by_source", by)
	}
	switch m.Format {
	case modelstore.FormatGGUF, modelstore.FormatSafetensors:
	default:
		return nil, fmt.Errorf("%w: it loads GGUF and safetensors; %s models need an upstream backend", errNoEngine, m.Format)
	}
	// The GGUF file, or the directory of a safetensors model (config.json,
	// tokenizer.json, *.safetensors), which engine.Load reads as such.
	path, err := p.store.Materialize(m)
	if err != nil {
		return nil, err
	}
	b, err := LoadBuiltin(path, engine.Options{ID: m.Name, Threads: p.cfg.Threads})
	if err != nil {
		// The files are complete and verified: loading them again gives
		// the same answer, so the replica stays failed with the engine's
		// reason (a new version of the model is a new pull).
		return nil, fmt.Errorf("%w: %w", errNoEngine, err)
	}
	return b, nil
}

func (p *puller) setDone(s *pullState, done int64) {
	p.mu.Lock()
	s.done = done
	p.mu.Unlock()
}

// source is one place chunks come from.
type source struct {
	node, addr string
}

func (s source) key() string {
	if s.node == "" {
		return "coordinator"
	}
	return s.node
}

// pickSource returns the source with the best measured rate; sources not
// yet measured come first (in the coordinator's order: peers, then the
// coordinator), so each is measured once.
func (p *puller) pickSource(srcs []source, banned map[string]time.Time) (source, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	best, bestRate, ok := source{}, -1.0, false
	for _, s := range srcs {
		if until, b := banned[s.key()]; b && time.Now().Before(until) {
			continue
		}
		r, measured := p.rates[s.key()]
		if !measured {
			r = math.Inf(1)
		}
		if r > bestRate {
			best, bestRate, ok = s, r, true
		}
	}
	return best, ok
}

func (p *puller) measure(src source, bytes int64, d time.Duration) {
	if bytes <= 0 || d <= 0 {
		return
	}
	r := float64(bytes) / d.Seconds()
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.rates[src.key()]; ok {
		r = 0.5*old + 0.5*r
	}
	p.rates[src.key()] = r
}

// pullFile fetches the missing chunks of one file, batch by batch, each
// batch from the best source; a corrupted chunk or a broken stream bans the
// source for a while and the chunk is fetched again elsewhere.
func (p *puller) pullFile(ctx context.Context, s *pullState, f modelstore.File, sources []*pb.ChunkSource, coord string) error {
	m := s.manifest
	w, err := p.store.NewWriter(f, m.ChunkSize)
	if err != nil {
		return err
	}
	defer w.Close()
	var srcs []source
	for _, cs := range sources {
		if cs.GetNode() == "" {
			srcs = append(srcs, source{addr: coord})
		} else {
			srcs = append(srcs, source{node: cs.GetNode(), addr: cs.GetAddress()})
		}
	}
	banned := map[string]time.Time{}
	failures := 0
	var pending *partialChunk
	if i, data, ok := w.PendingPiece(); ok {
		pending = &partialChunk{index: i, data: data, src: "disk"}
	}
	for {
		missing := w.Missing()
		if len(missing) == 0 {
			break
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		src, ok := p.pickSource(srcs, banned)
		if !ok {
			// Every source failed lately: wait for the earliest ban to end.
			failures++
			if failures > 20 {
				return errors.New("no source could serve the file")
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			clear(banned)
			continue
		}
		if pending != nil {
			// The interrupted chunk goes first, continued where it broke.
			if k := slices.Index(missing, pending.index); k > 0 {
				missing = append(append([]int{pending.index}, missing[:k]...), missing[k+1:]...)
			} else if k < 0 {
				pending = nil
			}
		}
		batch := missing[:min(len(missing), p.cfg.BatchChunks)]
		got, dur, err := p.fetch(ctx, s, w, f, src, batch, &pending)
		p.measure(src, got, dur)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, errMixedMismatch) {
				p.n.log.Warn("a chunk continued from an earlier transfer did not verify; fetching it whole", "model", m.Name, "err", err)
				continue
			}
			if errors.Is(err, modelstore.ErrChunkMismatch) {
				p.corrupt.WithLabelValues(src.key()).Inc()
				p.n.log.Warn("corrupted chunk from a source; fetching it elsewhere", "model", m.Name, "source", src.key(), "err", err)
				banned[src.key()] = time.Now().Add(time.Minute)
			} else {
				p.n.log.Info("chunk source failed; trying another", "model", m.Name, "source", src.key(), "err", err)
				banned[src.key()] = time.Now().Add(2 * time.Second)
			}
			continue
		}
		failures = 0
	}
	t0 := time.Now()
	defer func() { s.verify += time.Since(t0) }()
	return w.Commit()
}

// partialChunk is the received start of a chunk whose transfer broke; the
// next request continues it (FetchChunksRequest.first_offset).
type partialChunk struct {
	index int
	data  []byte
	// src is where the bytes came from; a chunk continued from another
	// source that fails verification blames neither.
	src string
}

// errMixedMismatch: a chunk assembled from two sources did not verify.
var errMixedMismatch = errors.New("a chunk continued from another source did not verify")

type verifyItem struct {
	index int
	data  []byte
	mixed bool
}

// fetch asks src for the batch. Pieces are written to the partial file as
// they arrive (so an interruption loses at most the flow-control window)
// while another goroutine verifies complete chunks, so hashing never
// stalls the stream. pending, when it holds the batch's first chunk,
// is continued from its end and updated when the stream breaks mid-chunk.
func (p *puller) fetch(ctx context.Context, s *pullState, w *modelstore.Writer, f modelstore.File, src source, batch []int, pending **partialChunk) (int64, time.Duration, error) {
	m := s.manifest
	cc, err := p.conn(src.node, src.addr)
	if err != nil {
		return 0, 0, err
	}
	req := &pb.FetchChunksRequest{Model: m.Name, Sha256: f.SHA256}
	for _, i := range batch {
		req.Indexes = append(req.Indexes, uint32(i))
	}
	var cur *partialChunk
	if pc := *pending; pc != nil && pc.index == batch[0] {
		req.FirstOffset = int64(len(pc.data))
		cur = pc
	}
	*pending = nil
	var verr error
	defer func() {
		// Keep a chunk cut off mid-way for the next attempt, unless what
		// arrived failed verification.
		if verr == nil && cur != nil && len(cur.data) > 0 {
			*pending = cur
		}
	}()
	// A stalled source (a cut link) must not hang the pull: the deadline
	// allows 1 MB/s at worst.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second+time.Duration(int64(len(batch))*m.ChunkSize/(1<<20))*time.Second)
	defer cancel()
	start := time.Now()
	var stream grpc.ServerStreamingClient[pb.ChunkData]
	if src.node == "" {
		stream, err = pb.NewControlServiceClient(cc).FetchChunks(cctx, req)
	} else {
		stream, err = pb.NewNodeServiceClient(cc).FetchChunks(cctx, req)
	}
	if err != nil {
		return 0, 0, err
	}

	verify := make(chan verifyItem, 2)
	free := make(chan []byte, 4)
	vdone := make(chan struct{})
	go func() {
		defer close(vdone)
		for it := range verify {
			if verr != nil {
				continue
			}
			if err := w.VerifyChunk(it.index, it.data); err != nil {
				verr = err
				if it.mixed && errors.Is(err, modelstore.ErrChunkMismatch) {
					verr = fmt.Errorf("%w: %v", errMixedMismatch, err)
				}
				cancel()
				continue
			}
			n := int64(len(it.data))
			p.recvBytes.WithLabelValues(src.key()).Add(float64(n))
			p.mu.Lock()
			s.done += n
			if s.bySource == nil {
				s.bySource = map[string]int64{}
			}
			s.bySource[src.key()] += n
			p.mu.Unlock()
			select {
			case free <- it.data[:0]:
			default:
			}
		}
	}()
	newBuf := func() []byte {
		select {
		case b := <-free:
			return b
		default:
			return make([]byte, 0, m.ChunkSize)
		}
	}
	var received int64
	next := 0 // position in batch of the chunk expected next
	if cur != nil {
		next = 1
	}
	var rerr error
	for {
		ch, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			rerr = err
			break
		}
		idx, off := int(ch.GetIndex()), ch.GetOffset()
		if ch.GetSha256() != f.SHA256 || idx >= len(f.Chunks) {
			rerr = fmt.Errorf("source sent a chunk of another file")
			break
		}
		if cur == nil {
			if next >= len(batch) || idx != batch[next] || off != 0 {
				rerr = fmt.Errorf("source sent chunk %d at %d out of order", idx, off)
				break
			}
			next++
			cur = &partialChunk{index: idx, data: newBuf(), src: src.key()}
		} else if idx != cur.index || off != int64(len(cur.data)) {
			rerr = fmt.Errorf("source sent chunk %d at %d out of order", idx, off)
			break
		}
		if err := w.WritePiece(idx, off, ch.GetData()); err != nil {
			rerr = err
			break
		}
		cur.data = append(cur.data, ch.GetData()...)
		received += int64(len(ch.GetData()))
		if int64(len(cur.data)) == m.ChunkLen(f, idx) {
			verify <- verifyItem{index: idx, data: cur.data, mixed: cur.src != src.key()}
			cur = nil
		}
	}
	close(verify)
	<-vdone
	dur := time.Since(start)
	if verr != nil {
		return received, dur, verr
	}
	if rerr != nil {
		return received, dur, rerr // cur, if any, is kept by the deferred func
	}
	if cur != nil || next < len(batch) {
		return received, dur, fmt.Errorf("source ended the stream early")
	}
	return received, dur, nil
}

// FetchChunks implements pb.NodeServiceServer: chunks of a model this node
// holds complete, for peers.
func (s *nodeService) FetchChunks(req *pb.FetchChunksRequest, stream grpc.ServerStreamingServer[pb.ChunkData]) error {
	p := s.n.pull
	if p == nil {
		return status.Error(codes.NotFound, "this node keeps no model store")
	}
	p.mu.Lock()
	st := p.models[req.GetModel()]
	var m *modelstore.Manifest
	if st != nil && st.state == "loaded" {
		m = st.manifest
	}
	p.mu.Unlock()
	if m == nil {
		return status.Errorf(codes.NotFound, "node %s does not hold model %q complete", s.n.cfg.Name, req.GetModel())
	}
	var f *modelstore.File
	for i := range m.Files {
		if m.Files[i].SHA256 == req.GetSha256() {
			f = &m.Files[i]
		}
	}
	if f == nil || !p.store.Has(f.SHA256) {
		return status.Errorf(codes.NotFound, "model %s has no file %s here", req.GetModel(), req.GetSha256())
	}
	const piece = 1 << 20
	buf := make([]byte, m.ChunkSize)
	for k, i := range req.GetIndexes() {
		data, err := p.store.ReadChunk(f.SHA256, f.Size, m.ChunkSize, int(i), buf)
		if err != nil {
			return status.Errorf(codes.NotFound, "chunk %d: %v", i, err)
		}
		if p.cfg.ServeHook != nil {
			data = p.cfg.ServeHook(f.SHA256, int(i), data)
		}
		first := 0
		if k == 0 {
			fo := req.GetFirstOffset()
			if fo < 0 || fo >= int64(len(data)) {
				return status.Errorf(codes.InvalidArgument, "first_offset %d outside chunk %d", fo, i)
			}
			first = int(fo)
		}
		for off := first; off < len(data); off += piece {
			end := min(off+piece, len(data))
			if err := stream.Send(&pb.ChunkData{Sha256: f.SHA256, Index: i, Offset: int64(off), Data: data[off:end]}); err != nil {
				return err
			}
			p.servedBytes.Add(float64(end - off))
		}
	}
	return nil
}

func manifestFromProto(pm *pb.ModelManifest) *modelstore.Manifest {
	m := &modelstore.Manifest{Name: pm.GetName(), Format: pm.GetFormat(), ChunkSize: pm.GetChunkSize()}
	for _, f := range pm.GetFiles() {
		m.Files = append(m.Files, modelstore.File{Name: f.GetName(), Size: f.GetSize(), SHA256: f.GetSha256(), Chunks: f.GetChunks()})
	}
	return m
}
