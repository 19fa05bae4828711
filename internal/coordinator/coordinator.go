// Package coordinator is the cluster's front door and control plane: the
// registry of live nodes (fed by Register and Heartbeat over mutual-TLS
// gRPC), the OpenAI-compatible HTTP API, the cluster view, and routing of
// each request to a node with bounded retry. It runs no model itself.
package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/npumesh/npumesh/internal/openai"
	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// Config wires one coordinator. Only internal/cli builds it.
type Config struct {
	// Listen is the gRPC address nodes register at.
	Listen string
	// API is the HTTP address of the OpenAI API, cluster view and dashboard.
	API string
	TLS *pki.Bundle
	// APIKeys, when non-empty, are required as "Authorization: Bearer".
	APIKeys map[string]bool
	// APICert is the public API's certificate; nil means plain HTTP, which
	// is allowed only on loopback unless InsecureHTTP is set.
	APICert      *tls.Certificate
	InsecureHTTP bool
	Logger       *slog.Logger
	// HeartbeatInterval is what nodes are told to use (default 1s); a node
	// silent for NodeTimeout (default 3 intervals) is dropped.
	HeartbeatInterval time.Duration
	NodeTimeout       time.Duration
	// MaxAttempts bounds the nodes one request is tried on (default 3).
	MaxAttempts int
	// MaxOutstandingPerNode bounds what the coordinator sends one node at
	// once; beyond it on every node the API answers 429 (default 64).
	MaxOutstandingPerNode int
	// Limits for decoding API requests.
	Limits openai.Limits
	// Dashboard, when set, is served at / (internal/web provides it).
	Dashboard http.Handler

	// CA, when set, is the cluster CA (TLS must chain to it); with it the
	// coordinator enrolls nodes with join tokens and renews their
	// certificates. Without it, those RPCs are refused.
	CA *pki.CA
	// Store keeps tokens, revocations and node records; nil keeps them in
	// memory only.
	Store Store
	// EnrollListen is the address of the enrollment listener (TLS with
	// server authentication only, serving EnrollmentService alone); ""
	// disables enrollment. It needs CA.
	EnrollListen string
	// NodeCertTTL is the lifetime of issued node certificates (default
	// DefaultNodeCertTTL).
	NodeCertTTL time.Duration
	// EnrollFailures failed enrollments from one address within a minute
	// block it for the rest of that minute (default 10).
	EnrollFailures int

	// RoutePolicy is the routing policy of every model not in
	// RoutePolicies (package route: composite, prefix, least-outstanding,
	// p2c, round-robin, capability, session); "" is composite.
	RoutePolicy   string
	RoutePolicies map[string]string
	// MaxOutstanding bounds the requests the coordinator runs at once
	// across all nodes; beyond it the API answers 429 (0: no global limit).
	MaxOutstanding int
	// RequestTimeout bounds one request from arrival to its end, retries
	// and migrations included; past it the API answers 504 (0: none).
	RequestTimeout time.Duration
	// BreakerFailures consecutive failed attempts on a node open its
	// circuit for BreakerCooldown, after which one probe request decides
	// (defaults 3 and 5s).
	BreakerFailures int
	BreakerCooldown time.Duration
	// HedgeAfter, when set, sends a non-streamed request of at most
	// HedgeMaxTokens (default 64) tokens to a second node if the first has
	// not answered within it; the first answer wins, the other is cancelled.
	HedgeAfter     time.Duration
	HedgeMaxTokens int

	// ModelDir holds the model catalog (content-addressed store and
	// catalog.json; issue #7); "" disables `npumesh model add`.
	ModelDir string
	// ModelQuota bounds the bytes of the catalog's files (0: none).
	ModelQuota int64

	// Etcd, when set, joins this coordinator to the others of the cluster
	// through etcd (leader.go): shared live-node view, leader election for
	// the singleton tasks. Store should then be an EtcdStore.
	Etcd *EtcdRegistry
	// Shards asks for models to be served as pipelines of stages
	// (pipeline.go); models not listed are sharded only when no node
	// holds them.
	Shards map[string]ShardSpec
}

// Coordinator is a running coordinator.
type Coordinator struct {
	cfg Config
	log *slog.Logger
	reg *registry

	grpcLn, apiLn net.Listener
	enrollLn      net.Listener // nil when enrollment is off
	created       int64

	certs   *pki.Reloadable
	store   Store
	stateMu sync.Mutex // serializes update, so revocation snapshots are stored in order
	revoked atomic.Pointer[revset]
	conns   *connTracker
	metrics *metrics
	recent  recentStats
	rt      *routing
	cat     *catalog // the model catalog and placement (catalog.go)
	ha      *ha      // the etcd registry (leader.go); nil for a lone coordinator
	pipes   pipelines
}

// New validates cfg. Nothing listens until Listen.
func New(cfg Config) (*Coordinator, error) {
	if cfg.TLS == nil {
		return nil, errors.New("coordinator: TLS bundle is required (--tls-dir)")
	}
	if id := cfg.TLS.Identity(); id.Role != pki.RoleCoordinator {
		return nil, fmt.Errorf("coordinator: certificate is for role %q, want %q (issue one with: npumesh cert issue --role coordinator)", id.Role, pki.RoleCoordinator)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = time.Second
	}
	if cfg.NodeTimeout <= 0 {
		cfg.NodeTimeout = 3 * cfg.HeartbeatInterval
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.MaxOutstandingPerNode <= 0 {
		cfg.MaxOutstandingPerNode = 64
	}
	if cfg.NodeCertTTL <= 0 {
		cfg.NodeCertTTL = DefaultNodeCertTTL
	}
	if cfg.EnrollFailures <= 0 {
		cfg.EnrollFailures = 10
	}
	if cfg.Store == nil {
		cfg.Store = NewMemoryStore()
	}
	if cfg.CA != nil && !cfg.CA.Cert().Equal(cfg.TLS.CACert()) {
		return nil, fmt.Errorf("coordinator: the certificate in the TLS bundle is not from the cluster CA in the data dir (CA %s, bundle trusts %s)", cfg.CA.Fingerprint(), cfg.TLS.CAFingerprint())
	}
	if cfg.CA == nil {
		cfg.EnrollListen = ""
	}
	if err := checkAPIAddr(cfg.API, cfg.APICert != nil, cfg.InsecureHTTP); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "coordinator")
	c := &Coordinator{
		cfg:     cfg,
		log:     log,
		reg:     newRegistry(log, cfg.TLS, cfg.NodeTimeout),
		created: time.Now().Unix(),
		certs:   pki.NewReloadable(cfg.TLS),
		store:   cfg.Store,
		ha:      newHA(cfg.Etcd),
	}
	if c.ha != nil && c.ha.cfg.ID == "" {
		c.ha.cfg.ID = cfg.Listen
	}
	c.conns = &connTracker{c: c, conns: map[string]map[*trackedConn]bool{}}
	st, err := cfg.Store.Load(context.Background())
	if err != nil {
		return nil, fmt.Errorf("coordinator: load state: %w", err)
	}
	c.revoked.Store(newRevset(st))
	c.metrics = newMetrics(c)
	if err := c.initRouting(); err != nil {
		return nil, err
	}
	if err := c.initCatalog(); err != nil {
		return nil, err
	}
	for model, spec := range cfg.Shards {
		if err := c.SetShard(model, spec); err != nil {
			return nil, fmt.Errorf("coordinator: %w", err)
		}
	}
	c.recent.started = time.Now()
	return c, nil
}

// checkAPIAddr refuses plain HTTP on a non-loopback address unless the
// operator said so explicitly.
func checkAPIAddr(addr string, hasTLS, insecure bool) error {
	if hasTLS {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("coordinator: bad --api address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	if insecure {
		return nil
	}
	return fmt.Errorf("coordinator: the API address %s is not loopback; give --tls-cert and --tls-key, or --insecure-http to serve plain HTTP anyway", addr)
}

// Listen binds both listeners so callers learn the addresses before Run.
func (c *Coordinator) Listen() (grpcAddr, apiAddr net.Addr, err error) {
	c.grpcLn, err = net.Listen("tcp", c.cfg.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("coordinator: listen on %s: %w", c.cfg.Listen, err)
	}
	c.apiLn, err = net.Listen("tcp", c.cfg.API)
	if err != nil {
		c.grpcLn.Close()
		return nil, nil, fmt.Errorf("coordinator: listen for the API on %s: %w", c.cfg.API, err)
	}
	if c.cfg.EnrollListen != "" {
		c.enrollLn, err = net.Listen("tcp", c.cfg.EnrollListen)
		if err != nil {
			c.grpcLn.Close()
			c.apiLn.Close()
			return nil, nil, fmt.Errorf("coordinator: listen for enrollment on %s: %w", c.cfg.EnrollListen, err)
		}
	}
	if c.cfg.APICert == nil && checkAPIAddr(c.cfg.API, false, false) != nil {
		c.log.Warn("serving the OpenAI API over plain HTTP on a non-loopback address (--insecure-http): API keys and prompts cross the network in the clear", "addr", c.apiLn.Addr().String())
	}
	return c.grpcLn.Addr(), c.apiLn.Addr(), nil
}

// EnrollAddr is the bound enrollment address after Listen, or nil when
// enrollment is off.
func (c *Coordinator) EnrollAddr() net.Addr {
	if c.enrollLn == nil {
		return nil
	}
	return c.enrollLn.Addr()
}

// Run serves until ctx ends, then shuts both servers down.
func (c *Coordinator) Run(ctx context.Context) error {
	if c.grpcLn == nil {
		if _, _, err := c.Listen(); err != nil {
			return err
		}
	}
	unary, stream := pki.RoleInterceptors(map[string][]pki.Role{
		"/npumesh.v1.ControlService/": {pki.RoleNode},
		"/npumesh.v1.AdminService/":   {pki.RoleClient},
	})
	gs := grpc.NewServer(
		grpc.Creds(trackingCreds{TransportCredentials: credentials.NewTLS(c.serverTLS()), t: c.conns}),
		grpc.ChainUnaryInterceptor(unary),
		grpc.ChainStreamInterceptor(stream),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	pb.RegisterControlServiceServer(gs, &controlService{reg: c.reg, interval: c.cfg.HeartbeatInterval, c: c})
	pb.RegisterAdminServiceServer(gs, &adminService{c: c})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)

	hsrv := &http.Server{
		Handler:           c.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelWarn),
	}
	if c.cfg.APICert != nil {
		hsrv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*c.cfg.APICert}}
	}

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := gs.Serve(c.grpcLn); err != nil {
			errc <- fmt.Errorf("coordinator grpc: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		var err error
		if hsrv.TLSConfig != nil {
			err = hsrv.ServeTLS(c.apiLn, "", "")
		} else {
			err = hsrv.Serve(c.apiLn)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("coordinator api: %w", err)
		}
	}()
	rctx, stopReap := context.WithCancel(ctx)
	go func() { defer wg.Done(); c.reg.reap(rctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); c.runSingletons(rctx) }() // placement etc.: on the leader only (leader.go)
	var es *grpc.Server
	if c.enrollLn != nil {
		es = grpc.NewServer(
			grpc.Creds(credentials.NewTLS(c.certs.EnrollServerTLS())),
			grpc.MaxRecvMsgSize(64<<10),
			grpc.MaxConcurrentStreams(8),
			grpc.ConnectionTimeout(10*time.Second),
		)
		pb.RegisterEnrollmentServiceServer(es, &enrollService{c: c, limiter: newFailLimiter(c.cfg.EnrollFailures, time.Minute)})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := es.Serve(c.enrollLn); err != nil {
				errc <- fmt.Errorf("coordinator enrollment: %w", err)
			}
		}()
		c.log.Info("enrollment open", "addr", c.enrollLn.Addr().String(), "ca_sha256", c.cfg.CA.Fingerprint(), "node_cert_ttl", c.cfg.NodeCertTTL)
	}
	c.log.Info("serving", "grpc", c.grpcLn.Addr().String(), "api", c.apiLn.Addr().String())

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	stopReap()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = hsrv.Shutdown(sctx)
	hs.Shutdown()
	if es != nil {
		es.Stop()
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		gs.Stop()
	}
	wg.Wait()
	c.reg.closeAll()
	return err
}
