// Package node is the node daemon: it serves NodeService over mutual-TLS gRPC
// through its backends (the built-in engine, or a local OpenAI-compatible
// server through internal/upstream), registers with a coordinator and keeps a
// heartbeat going, and drains in-flight requests before it exits. It decides
// nothing about routing.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/accel"
	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/kvcache"
	"github.com/npumesh/npumesh/internal/pki"
	"github.com/npumesh/npumesh/internal/version"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// Config wires one node daemon. Only internal/cli builds it.
type Config struct {
	// Name defaults to the name in the node's certificate.
	Name string
	// Listen is the gRPC listen address ("127.0.0.1:0" picks a port).
	Listen string
	// Advertise is the address the coordinator dials; by default the bound
	// listen address, or, for a wildcard listen address, the local address
	// this host uses to reach the coordinator.
	Advertise string
	// Coordinators are tried in order until one accepts the registration.
	Coordinators []string
	TLS          *pki.Bundle
	// TLSDir, when set, is where TLS was loaded from: certificate renewals
	// are written back there, so a restart uses the newest certificate.
	TLSDir   string
	Backends []Backend
	Logger   *slog.Logger
	// HeartbeatInterval is how often the node reports; 0 means 1s.
	HeartbeatInterval time.Duration
	// DrainTimeout bounds how long SIGTERM waits for in-flight requests.
	DrainTimeout time.Duration
	// MaxInFlight bounds concurrent Generate calls; beyond it the node
	// answers ResourceExhausted. 0 means 64.
	MaxInFlight int
	// SysRoot is where hardware discovery reads /proc and /sys from; "" is "/".
	SysRoot string
	// MetricsListen is the HTTP address of /metrics ("" disables it).
	MetricsListen string
	// TelemetryInterval is how often temperatures and power are sampled;
	// 0 means accel.DefaultInterval.
	TelemetryInterval time.Duration
	// Pull, when set, lets the node pull catalog models (pull.go).
	Pull *PullConfig
}

// Node is a running node daemon.
type Node struct {
	cfg      Config
	log      *slog.Logger
	backends map[string]Backend

	inFlight atomic.Int32
	served   atomic.Uint64
	draining atomic.Bool
	// drainStarted is closed when draining begins, so the heartbeat loop
	// tells the coordinator at once instead of at its next tick.
	drainStarted chan struct{}
	// availChanged receives a value when a backend's availability changes,
	// so the heartbeat loop reports it at once.
	availChanged chan struct{}
	// wg counts in-flight Generate calls, for draining.
	wg sync.WaitGroup

	listener net.Listener
	certs    *pki.Reloadable // the node's certificate, replaced by renewals
	health   *health.Server
	hw       accel.Report // discovered once at start
	sampler  *accel.Sampler
	metrics  *nodeMetrics
	cache    cacheEvents // KV-cache events waiting for the next heartbeat
	speed    speeds      // measured decode speed per model
	pull     *puller     // catalog model pulls; nil without Config.Pull
	stages   *stageHost  // pipeline stages (stage.go)
}

// New validates cfg and returns a node that is not yet serving.
func New(cfg Config) (*Node, error) {
	if cfg.TLS == nil {
		return nil, errors.New("node: TLS bundle is required")
	}
	id := cfg.TLS.Identity()
	if id.Role != pki.RoleNode {
		return nil, fmt.Errorf("node: certificate is for role %q, want %q (issue one with: npumesh cert issue --role node)", id.Role, pki.RoleNode)
	}
	if cfg.Name == "" {
		cfg.Name = id.Name
	}
	if cfg.Name != id.Name {
		return nil, fmt.Errorf("node: --name %q does not match the certificate's name %q", cfg.Name, id.Name)
	}
	if len(cfg.Coordinators) == 0 {
		return nil, errors.New("node: at least one coordinator address is required (--coordinator HOST:PORT)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 64
	}
	if cfg.TelemetryInterval <= 0 {
		cfg.TelemetryInterval = accel.DefaultInterval
	}
	n := &Node{
		cfg: cfg, log: cfg.Logger.With("node", cfg.Name), backends: map[string]Backend{},
		hw: accel.Discover(cfg.SysRoot), sampler: accel.NewSampler(cfg.SysRoot, cfg.TelemetryInterval),
		drainStarted: make(chan struct{}),
		certs:        pki.NewReloadable(cfg.TLS),
	}
	n.metrics = newNodeMetrics(n)
	n.stages = newStageHost(n)
	if err := n.initPull(); err != nil {
		return nil, err
	}
	for id, b := range n.backends {
		if src, ok := b.(cacheEventSource); ok {
			src.SetCacheEvents(func(ev kvcache.Event) { n.cache.add(id, ev) })
		}
	}
	for _, b := range cfg.Backends {
		id := b.Info().ID
		if _, dup := n.backends[id]; dup {
			return nil, fmt.Errorf("node: two models with the id %q; give one another name", id)
		}
		n.backends[id] = b
		if a, ok := b.(Availability); ok {
			a.OnAvailabilityChange(func() {
				select {
				case n.availChanged <- struct{}{}:
				default: // a heartbeat is already due
				}
			})
		}
	}
	return n, nil
}

// Listen binds the gRPC listener, so the caller learns the address before Run.
func (n *Node) Listen() (net.Addr, error) {
	l, err := net.Listen("tcp", n.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("node: listen on %s: %w", n.cfg.Listen, err)
	}
	n.listener = l
	return l.Addr(), nil
}

// Run serves until ctx is cancelled, then drains in-flight requests (up to
// DrainTimeout) and stops. It returns nil after a clean drain.
func (n *Node) Run(ctx context.Context) error {
	if n.listener == nil {
		if _, err := n.Listen(); err != nil {
			return err
		}
	}
	unary, stream := pki.RoleInterceptors(map[string][]pki.Role{
		"/npumesh.v1.NodeService/Generate":     {pki.RoleCoordinator},
		"/npumesh.v1.NodeService/Info":         {pki.RoleCoordinator, pki.RoleClient},
		"/npumesh.v1.NodeService/ListModels":   {pki.RoleCoordinator, pki.RoleClient},
		"/npumesh.v1.NodeService/GetTokenizer": {pki.RoleCoordinator, pki.RoleClient},
		"/npumesh.v1.NodeService/FetchChunks":  {pki.RoleNode, pki.RoleCoordinator},
		"/npumesh.v1.NodeService/Stage":        {pki.RoleNode},
		"/npumesh.v1.NodeService/Probe":        {pki.RoleCoordinator},
	})
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(n.certs.ServerTLS(pki.RoleCoordinator, pki.RoleClient, pki.RoleNode))),
		grpc.ChainUnaryInterceptor(unary),
		grpc.ChainStreamInterceptor(stream),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(maxStageMessage),
	)
	pb.RegisterNodeServiceServer(srv, &nodeService{n: n})
	n.health = health.NewServer()
	healthpb.RegisterHealthServer(srv, n.health)

	n.sampler.Start(ctx)
	defer n.sampler.Stop()
	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(n.listener) }()
	if n.cfg.MetricsListen != "" {
		msrv, ml, err := n.listenMetrics()
		if err != nil {
			srv.Stop()
			return err
		}
		n.log.Info("metrics", "addr", "http://"+ml.Addr().String()+"/metrics")
		metricsDone := make(chan struct{})
		go func() {
			defer close(metricsDone)
			if err := runMetrics(msrv, ml); err != nil {
				serveErr <- fmt.Errorf("node: metrics server: %w", err)
			}
		}()
		defer func() { msrv.Close(); <-metricsDone }()
	}
	n.log.Info("serving", "addr", n.listener.Addr().String(), "models", n.modelIDs())

	ctrlCtx, stopCtrl := context.WithCancel(context.Background())
	ctrlDone := make(chan struct{})
	go func() {
		defer close(ctrlDone)
		n.controlLoop(ctrlCtx)
	}()
	renewCtx, stopRenew := context.WithCancel(context.Background())
	renewDone := make(chan struct{})
	go func() {
		defer close(renewDone)
		n.renewLoop(renewCtx)
	}()
	defer func() { stopRenew(); <-renewDone }()
	defer n.startPull()()

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("node: grpc server: %w", err)
	}

	// Drain: refuse new work, tell the coordinator, wait for in-flight.
	n.draining.Store(true)
	close(n.drainStarted)
	n.health.Shutdown()
	drained := make(chan struct{})
	go func() { n.wg.Wait(); close(drained) }()
	select {
	case <-drained:
		n.log.Info("drained")
	case <-time.After(n.cfg.DrainTimeout):
		n.log.Warn("drain timeout; stopping with requests in flight", "in_flight", n.inFlight.Load())
	}
	stopCtrl()
	<-ctrlDone
	// Pipeline stages end their streams now (a pipeline through this node
	// is re-planned by its coordinator), so the server stops gracefully.
	n.stages.close()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		srv.Stop()
	}
	for _, b := range n.backends {
		if cerr := b.Close(); cerr != nil {
			n.log.Warn("close backend", "err", cerr)
		}
	}
	return err
}

func (n *Node) modelIDs() []string {
	ids := make([]string, 0, len(n.backends))
	for id := range n.backends {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (n *Node) modelInfos() []*pb.ModelInfo {
	out := make([]*pb.ModelInfo, 0, len(n.backends))
	for _, id := range n.modelIDs() {
		b := n.backends[id]
		i := b.Info()
		state := "loaded"
		if a, ok := b.(Availability); ok && !a.Available() {
			state = "unavailable"
		}
		mi := &pb.ModelInfo{
			Id:            i.ID,
			Arch:          i.Arch,
			Backend:       i.Backend,
			SizeBytes:     i.SizeBytes,
			ContextLength: int32(i.ContextLength),
			Parameters:    i.Parameters,
			State:         state,
			Quantization:  i.Quantization,
			KvBlockSize:   int32(i.BlockSize),
			DecodeTokS:    n.speed.get(i.ID, time.Now()),
		}
		n.setShape(mi, i)
		out = append(out, mi)
	}
	return append(out, n.pulledModelInfos()...)
}

func (n *Node) info(advertise string) *pb.NodeInfo {
	info := &pb.NodeInfo{
		Name:                 n.cfg.Name,
		Version:              version.String(),
		Os:                   runtime.GOOS,
		Arch:                 runtime.GOARCH,
		CpuModel:             n.hw.CPU.Model,
		CpuCores:             int32(runtime.NumCPU()),
		MemoryTotalBytes:     n.hw.Memory.TotalBytes,
		MemoryAvailableBytes: n.hw.Memory.AvailableBytes,
		Models:               n.modelInfos(),
		GrpcAddress:          advertise,
		Telemetry:            telemetryProto(n.sampler.Latest()),
	}
	for _, a := range n.hw.Accelerators {
		pa := &pb.Accelerator{
			Kind:            "npu",
			Product:         a.Product,
			Driver:          a.Driver,
			DevicePath:      a.DevNode,
			Accessible:      a.Accessible,
			Hint:            a.Hint,
			PeakTopsInt8:    a.PeakTOPSInt8,
			FirmwareVersion: a.Firmware,
			DriverVersion:   a.DriverVersion,
		}
		if a.VendorID != "" {
			pa.PciId = strings.TrimPrefix(a.VendorID, "0x") + ":" + strings.TrimPrefix(a.DeviceID, "0x")
		}
		info.Accelerators = append(info.Accelerators, pa)
	}
	return info
}

// nodeService implements pb.NodeServiceServer.
type nodeService struct {
	pb.UnimplementedNodeServiceServer
	n *Node
}

func (s *nodeService) Info(ctx context.Context, _ *pb.InfoRequest) (*pb.NodeInfo, error) {
	return s.n.info(s.n.listener.Addr().String()), nil
}

func (s *nodeService) ListModels(ctx context.Context, _ *pb.ListModelsRequest) (*pb.ListModelsResponse, error) {
	return &pb.ListModelsResponse{Models: s.n.modelInfos()}, nil
}

func (s *nodeService) Generate(req *pb.GenerateRequest, stream grpc.ServerStreamingServer[pb.GenerateResponse]) error {
	n := s.n
	if n.draining.Load() {
		return status.Error(codes.Unavailable, "node is draining")
	}
	b, ok := n.backend(req.GetModel())
	if !ok {
		return status.Errorf(codes.NotFound, "model %q is not served by node %s", req.GetModel(), n.cfg.Name)
	}
	if p := req.GetPipeline(); p != nil {
		f, release, err := n.stages.first(stream.Context(), req.GetModel(), p)
		if err != nil {
			return err
		}
		defer release()
		b = f.b
	}
	if a, ok := b.(Availability); ok && !a.Available() {
		return status.Errorf(codes.Unavailable, "model %q is unavailable on node %s (its upstream server is down)", req.GetModel(), n.cfg.Name)
	}
	if err := checkResume(b, req); err != nil {
		return err
	}
	if int(n.inFlight.Add(1)) > n.cfg.MaxInFlight {
		n.inFlight.Add(-1)
		return status.Errorf(codes.ResourceExhausted, "node %s has %d requests in flight", n.cfg.Name, n.cfg.MaxInFlight)
	}
	n.wg.Add(1)
	defer func() {
		n.inFlight.Add(-1)
		n.wg.Done()
	}()

	breq, err := toBackendRequest(req)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	log := n.log.With("request_id", req.GetRequestId(), "model", req.GetModel())
	start := time.Now()
	// A pipeline's pace is the chain's, not this node's: the speed a
	// plan uses is measured on whole-model requests only.
	measure := req.GetPipeline() == nil
	if measure {
		n.speed.start(req.GetModel(), time.Now())
	}
	var generated int
	res, err := b.Generate(stream.Context(), breq, func(d engine.Delta) error {
		generated += len(d.IDs)
		return stream.Send(&pb.GenerateResponse{Msg: &pb.GenerateResponse_Delta{Delta: &pb.TokenDelta{Ids: d.IDs, Text: d.Text}}})
	})
	if measure {
		n.speed.end(req.GetModel(), generated, time.Now())
	}
	if err != nil {
		log.Debug("generate failed", "err", err)
		pipelineTrailer(stream, err)
		st := toStatus(err)
		n.metrics.requests.WithLabelValues(req.GetModel(), strings.ToLower(status.Code(st).String())).Inc()
		return st
	}
	n.served.Add(1)
	n.metrics.requests.WithLabelValues(req.GetModel(), "ok").Inc()
	n.metrics.promptToks.WithLabelValues(req.GetModel()).Add(float64(res.PromptTokens))
	n.metrics.outToks.WithLabelValues(req.GetModel()).Add(float64(res.CompletionTokens))
	log.Debug("generated", "prompt_tokens", res.PromptTokens, "completion_tokens", res.CompletionTokens, "dur", time.Since(start))
	return stream.Send(&pb.GenerateResponse{Msg: &pb.GenerateResponse_Final{Final: &pb.Final{
		Usage: &pb.Usage{
			PromptTokens:       int32(res.PromptTokens),
			CompletionTokens:   int32(res.CompletionTokens),
			CachedPromptTokens: int32(min(res.CachedTokens, res.PromptTokens)),
		},
		FinishReason: res.FinishReason,
	}}})
}

func toBackendRequest(req *pb.GenerateRequest) (Request, error) {
	var r Request
	sp := req.GetSampling()
	r.MaxTokens = int(req.GetMaxTokens())
	r.Temperature = sp.GetTemperature()
	r.TopP = sp.GetTopP()
	r.TopK = int(sp.GetTopK())
	if sp != nil && sp.Seed != nil {
		seed := sp.GetSeed()
		r.Seed = &seed
	}
	r.Stop = req.GetStop()
	r.Resume = req.GetResumeIds()
	switch p := req.GetPrompt().(type) {
	case *pb.GenerateRequest_Text:
		r.Prompt = p.Text
	case *pb.GenerateRequest_Tokens:
		r.PromptIDs = p.Tokens.GetIds()
		if r.PromptIDs == nil {
			r.PromptIDs = []int32{}
		}
	case *pb.GenerateRequest_Chat:
		if len(p.Chat.GetMessages()) == 0 {
			return r, errors.New("chat prompt has no messages")
		}
		for _, m := range p.Chat.GetMessages() {
			r.Messages = append(r.Messages, ChatMessage{Role: m.GetRole(), Content: m.GetContent()})
		}
	case nil:
		// An empty prompt: generation starts from BOS alone.
	}
	return r, nil
}

// toStatus maps backend errors to gRPC codes the coordinator understands.
func toStatus(err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, engine.ErrInvalidRequest):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrUnavailable), errors.Is(err, engine.ErrStageFailed):
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
