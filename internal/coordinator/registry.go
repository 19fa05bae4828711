package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// member is one registered node as the coordinator sees it.
type member struct {
	name    string
	addr    string
	session uint64 // registration generation; a stale heartbeat stream must not remove a newer one
	conn    *grpc.ClientConn
	client  pb.NodeServiceClient
	joined  time.Time

	// outstanding counts requests this coordinator has open on the node;
	// routing reads it without the registry lock.
	outstanding atomic.Int32
	routeID     atomic.Int32 // the router's id for the node, plus 1 (0: not asked yet)
	served      atomic.Uint64
	failed      atomic.Uint64
	// retired is set when the member leaves the registry; its connection
	// closes once its last outstanding request ends, so a node dropped for
	// missed heartbeats (maybe only slow) does not lose the work it holds.
	retired atomic.Bool

	mu        sync.Mutex // guards the fields below
	info      *pb.NodeInfo
	models    map[string]*pb.ModelInfo
	load      *pb.NodeLoad
	telemetry *pb.Telemetry
	// reported is every model the node listed, in any state; models holds
	// only the servable ("loaded") ones.
	reported []*pb.ModelInfo
	lastSeen time.Time
	draining bool
}

// acquire counts one more request on m.
func (m *member) acquire() { m.outstanding.Add(1) }

// release ends a request on m, closing a retired member's connection after
// its last request.
func (m *member) release() {
	if m.outstanding.Add(-1) == 0 && m.retired.Load() {
		m.conn.Close()
	}
}

// retire marks m gone and closes its connection unless requests are open.
func (m *member) retire() {
	m.retired.Store(true)
	if m.outstanding.Load() == 0 {
		m.conn.Close()
	}
}

func (m *member) snapshot() (models map[string]*pb.ModelInfo, draining bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.models, m.draining
}

// registry is the set of live nodes.
type registry struct {
	log     *slog.Logger
	tls     *pki.Bundle
	timeout time.Duration // a node silent this long is dropped

	mu       sync.RWMutex // guards members, nextSes and departed
	members  map[string]*member
	nextSes  uint64
	departed []departure // newest last, at most maxDeparted
}

// departure is a node that left, kept a while so people and dashboards see
// it as down rather than silently gone.
type departure struct {
	Name   string    `json:"name"`
	Arch   string    `json:"arch"`
	Left   time.Time `json:"left"`
	Reason string    `json:"reason"`
}

const (
	maxDeparted     = 64
	departedTimeout = 10 * time.Minute
)

func newRegistry(log *slog.Logger, tls *pki.Bundle, timeout time.Duration) *registry {
	return &registry{log: log, tls: tls, timeout: timeout, members: map[string]*member{}}
}

// add registers (or re-registers) a node and dials it back.
func (r *registry) add(name string, info *pb.NodeInfo) (*member, error) {
	addr := info.GetGrpcAddress()
	if addr == "" {
		return nil, errors.New("registration carries no grpc_address")
	}
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(r.tls.ClientTLS(pki.Identity{Role: pki.RoleNode, Name: name}))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("dial node %s at %s: %w", name, addr, err)
	}
	now := time.Now()
	m := &member{
		name: name, addr: addr, conn: conn, client: pb.NewNodeServiceClient(conn), joined: now,
		info: info, models: modelMap(info.GetModels()), reported: info.GetModels(), lastSeen: now, telemetry: info.GetTelemetry(),
	}
	r.mu.Lock()
	r.nextSes++
	m.session = r.nextSes
	old := r.members[name]
	r.members[name] = m
	r.mu.Unlock()
	if old != nil {
		old.retire()
	}
	r.log.Info("node registered", "node", name, "addr", addr, "arch", info.GetArch(), "models", len(m.models))
	return m, nil
}

// remove drops a node if it is still the given registration.
func (r *registry) remove(name string, session uint64, why string) {
	r.mu.Lock()
	m := r.members[name]
	if m == nil || m.session != session {
		r.mu.Unlock()
		return
	}
	delete(r.members, name)
	r.departed = append(r.departed, departure{Name: name, Arch: m.info.GetArch(), Left: time.Now(), Reason: why})
	if len(r.departed) > maxDeparted {
		r.departed = r.departed[len(r.departed)-maxDeparted:]
	}
	r.mu.Unlock()
	m.retire()
	r.log.Warn("node removed", "node", name, "reason", why)
}

// evict drops a node whatever its registration and closes the
// coordinator's connection to it at once, in-flight requests included (a
// revoked node must not keep serving). It reports whether it was there.
func (r *registry) evict(name, why string) bool {
	r.mu.Lock()
	m := r.members[name]
	if m == nil {
		r.mu.Unlock()
		return false
	}
	delete(r.members, name)
	r.departed = append(r.departed, departure{Name: name, Arch: m.info.GetArch(), Left: time.Now(), Reason: why})
	if len(r.departed) > maxDeparted {
		r.departed = r.departed[len(r.departed)-maxDeparted:]
	}
	r.mu.Unlock()
	m.retired.Store(true)
	m.conn.Close()
	r.log.Warn("node removed", "node", name, "reason", why)
	return true
}

func (r *registry) get(name string) *member {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.members[name]
}

// recentlyDeparted lists nodes that left in the last departedTimeout and
// have not come back, newest first.
func (r *registry) recentlyDeparted() []departure {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := []departure{}
	seen := map[string]bool{}
	for i := len(r.departed) - 1; i >= 0; i-- {
		d := r.departed[i]
		if time.Since(d.Left) > departedTimeout || seen[d.Name] || r.members[d.Name] != nil {
			continue
		}
		seen[d.Name] = true
		out = append(out, d)
	}
	return out
}

// list returns the live nodes sorted by name.
func (r *registry) list() []*member {
	r.mu.RLock()
	out := make([]*member, 0, len(r.members))
	for _, m := range r.members {
		out = append(out, m)
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// reap drops nodes whose heartbeats stopped, until ctx ends.
func (r *registry) reap(ctx context.Context) {
	t := time.NewTicker(r.timeout / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		for _, m := range r.list() {
			m.mu.Lock()
			silent := now.Sub(m.lastSeen)
			m.mu.Unlock()
			if silent > r.timeout {
				r.remove(m.name, m.session, fmt.Sprintf("no heartbeat for %s", silent.Round(time.Millisecond)))
			}
		}
	}
}

func (r *registry) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, m := range r.members {
		m.retire()
		delete(r.members, name)
	}
}

// unservable tells a model that nodes hold but cannot serve now (an
// upstream runtime restarting, a pull in progress) from one nobody has: the
// first is a 503 to retry, the second a 404.
func (r *registry) unservable(model string) (states []string) {
	for _, m := range r.list() {
		m.mu.Lock()
		for _, mi := range m.reported {
			if mi.GetId() == model && mi.GetState() != "" && mi.GetState() != "loaded" {
				states = append(states, m.name+": "+mi.GetState())
			}
		}
		m.mu.Unlock()
	}
	return states
}

func modelMap(ms []*pb.ModelInfo) map[string]*pb.ModelInfo {
	out := make(map[string]*pb.ModelInfo, len(ms))
	for _, m := range ms {
		if m.GetState() == "" || m.GetState() == "loaded" {
			out[m.GetId()] = m
		}
	}
	return out
}

// controlService implements pb.ControlServiceServer; only nodes may call it
// (enforced by the role interceptors).
type controlService struct {
	pb.UnimplementedControlServiceServer
	reg      *registry
	interval time.Duration
	c        *Coordinator
}

func (s *controlService) Register(ctx context.Context, req *pb.RegisterRequest) (*pb.RegisterResponse, error) {
	id, err := pki.PeerIdentity(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	info := req.GetInfo()
	if info == nil {
		return nil, status.Error(codes.InvalidArgument, "register: no node info")
	}
	if info.GetName() != "" && info.GetName() != id.Name {
		return nil, status.Errorf(codes.PermissionDenied, "register: node calls itself %q but its certificate says %q", info.GetName(), id.Name)
	}
	info.Name = id.Name
	if err := s.c.nodeSeen(ctx, id.Name, info.GetGrpcAddress()); errors.Is(err, errRevoked) {
		return nil, status.Errorf(codes.PermissionDenied, "register: %v", err)
	} else if err != nil {
		s.c.log.Warn("cannot record the node in the coordinator state", "node", id.Name, "err", err)
	}
	if _, err := s.reg.add(id.Name, info); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	s.c.nodeRegistered(id.Name)
	if s.c.revoked.Load().names[id.Name] { // revoked while registering
		s.reg.evict(id.Name, "revoked")
		return nil, status.Errorf(codes.PermissionDenied, "register: node %s is revoked", id.Name)
	}
	return &pb.RegisterResponse{NodeName: id.Name, HeartbeatIntervalMs: s.interval.Milliseconds()}, nil
}

func (s *controlService) Heartbeat(stream grpc.BidiStreamingServer[pb.HeartbeatRequest, pb.HeartbeatResponse]) error {
	id, err := pki.PeerIdentity(stream.Context())
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	m := s.reg.get(id.Name)
	if m == nil {
		return status.Errorf(codes.FailedPrecondition, "node %s is not registered; call Register first", id.Name)
	}
	for {
		hb, err := stream.Recv()
		if err != nil {
			why := "heartbeat stream closed"
			if !errors.Is(err, io.EOF) {
				why = fmt.Sprintf("heartbeat stream broke: %v", err)
			}
			s.reg.remove(id.Name, m.session, why)
			return nil
		}
		if hb.GetNodeName() != "" && hb.GetNodeName() != id.Name {
			return status.Errorf(codes.PermissionDenied, "heartbeat names %q but the certificate says %q", hb.GetNodeName(), id.Name)
		}
		if s.reg.get(id.Name) != m {
			// Reaped (or replaced) while this stream lived: make the node
			// register again rather than heartbeat into the void.
			return status.Errorf(codes.FailedPrecondition, "node %s was dropped from the registry; register again", id.Name)
		}
		m.mu.Lock()
		m.lastSeen = time.Now()
		m.load = hb.GetLoad()
		m.draining = hb.GetDraining()
		if hb.Telemetry != nil {
			m.telemetry = hb.GetTelemetry()
		}
		// Every heartbeat carries the node's whole model list, so an empty
		// one means it serves nothing now (its last catalog model removed).
		m.models = modelMap(hb.GetModels())
		m.reported = hb.GetModels()
		m.mu.Unlock()
		s.c.cacheEvents(id.Name, hb.GetCacheEvents())
		s.c.observeModels(id.Name, hb.GetModels())
		if err := stream.Send(&pb.HeartbeatResponse{AckSeq: hb.GetSeq()}); err != nil {
			s.reg.remove(id.Name, m.session, fmt.Sprintf("heartbeat send: %v", err))
			return nil
		}
	}
}
