package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// EtcdRegistry makes several coordinators one control plane through etcd
// (`npumesh coordinator --registry etcd://...`). Each coordinator holds one
// etcd lease (a concurrency.Session) for as long as it runs and keeps
// alive:
//
//	PREFIX/coordinators/ID          this coordinator (JSON), under its lease
//	PREFIX/live/NODE/ID             each node whose heartbeats ID receives
//	                                (NodeInfo as JSON), under ID's lease
//	PREFIX/leader/...               the concurrency.Election of the leader
//	PREFIX/state                    the shared Store (EtcdStore)
//
// A node is live while some coordinator holds its heartbeats; when that
// coordinator dies its lease expires after TTL and its nodes' keys with
// it. Every coordinator adds the nodes the others hold to its own registry
// (dialing them as it dials its own), so any of them lists and routes to
// every live node. The elected leader alone runs the singleton tasks
// (placement, token garbage collection); every coordinator with the CA
// signs certificates (enrollment, renewal), since signing needs no
// coordination. Config.Store should then be an EtcdStore on the same
// client and prefix.
type EtcdRegistry struct {
	Client *clientv3.Client
	// Prefix of every key (DefaultEtcdPrefix when "").
	Prefix string
	// TTL of the coordinator's lease: how long a dead coordinator's nodes
	// stay listed and its leadership held (default 5s, at least 2s).
	TTL time.Duration
	// ID names this coordinator among the others (unique; default its
	// gRPC address).
	ID string
}

// haSyncInterval is how often a coordinator publishes its nodes and reads
// the others'.
const haSyncInterval = 500 * time.Millisecond

// ha is a coordinator's side of an EtcdRegistry.
type ha struct {
	cfg    EtcdRegistry
	leader atomic.Bool

	mu sync.Mutex // guards the fields below; taken before registry.mu, never after
	// remote maps a node held by another coordinator to the session of the
	// member this coordinator made for it.
	remote map[string]uint64
	// remoteVal is the etcd value each remote member was made from.
	remoteVal map[string]string
	// published is what this coordinator last wrote under live/NODE/ID.
	published map[string]string
	stateRev  int64 // mod revision of the state key last applied
}

func newHA(cfg *EtcdRegistry) *ha {
	if cfg == nil {
		return nil
	}
	r := *cfg
	if r.Prefix == "" {
		r.Prefix = DefaultEtcdPrefix
	}
	if !strings.HasSuffix(r.Prefix, "/") {
		r.Prefix += "/"
	}
	if r.TTL <= 0 {
		r.TTL = 5 * time.Second
	}
	r.TTL = max(r.TTL, 2*time.Second)
	return &ha{cfg: r, remote: map[string]uint64{}, remoteVal: map[string]string{}, published: map[string]string{}}
}

// IsLeader reports whether this coordinator runs the cluster's singleton
// tasks: always for a lone coordinator, for the elected one under an etcd
// registry. Leadership can end at any moment (a lost lease); a task that
// must not run twice should run under the context runSingletons gives it.
func (c *Coordinator) IsLeader() bool {
	if c.ha == nil {
		return true
	}
	return c.ha.leader.Load()
}

// runSingletons runs the singleton tasks until ctx ends: at once for a lone
// coordinator; under an etcd registry, while this coordinator is elected.
func (c *Coordinator) runSingletons(ctx context.Context) {
	if c.ha == nil {
		c.singletons(ctx)
		return
	}
	c.runHA(ctx)
}

// singletons are the tasks exactly one coordinator of a cluster runs; they
// return when ctx ends.
func (c *Coordinator) singletons(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.placeLoop(ctx) }()
	go func() { defer wg.Done(); c.tokenGC(ctx) }()
	wg.Wait()
}

// tokenGCInterval is how often the leader forgets expired tokens and
// revoked serials.
const tokenGCInterval = time.Minute

// tokenGC prunes the stored state now and then (every Store.Update prunes;
// this one changes nothing else), so expired tokens go away even when
// nothing else writes.
func (c *Coordinator) tokenGC(ctx context.Context) {
	t := time.NewTicker(tokenGCInterval)
	defer t.Stop()
	for {
		st, err := c.store.Load(ctx)
		if err == nil {
			before := len(st.Tokens) + len(st.RevokedSerials)
			st.prune(time.Now())
			if len(st.Tokens)+len(st.RevokedSerials) != before {
				if err := c.update(ctx, func(*State) error { return nil }); err != nil && ctx.Err() == nil {
					c.log.Warn("token garbage collection", "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runHA keeps this coordinator in the etcd registry until ctx ends,
// starting a new lease whenever the old one is lost.
func (c *Coordinator) runHA(ctx context.Context) {
	h := c.ha
	log := c.log.With("registry_id", h.cfg.ID)
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(h.cfg.Client, concurrency.WithTTL(int(h.cfg.TTL.Round(time.Second)/time.Second)), concurrency.WithContext(ctx))
		if err != nil {
			log.Warn("etcd registry: cannot open a lease; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		c.haSession(ctx, sess)
		if ctx.Err() != nil {
			// Going away: give up leadership and drop our keys at once
			// rather than after TTL.
			cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, _ = h.cfg.Client.Revoke(cctx, sess.Lease())
			cancel()
			return
		}
		log.Warn("etcd registry: lease lost; joining again")
		h.mu.Lock()
		clear(h.published)
		h.mu.Unlock()
	}
}

// haSession is one lease: publish, sync, campaign, and lead when elected,
// until the lease ends or ctx does.
func (c *Coordinator) haSession(ctx context.Context, sess *concurrency.Session) {
	h := c.ha
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-sctx.Done():
		}
	}()
	self, _ := json.Marshal(map[string]any{"id": h.cfg.ID, "grpc": c.grpcLn.Addr().String(), "api": c.apiLn.Addr().String(), "started": time.Now().UTC()})
	pctx, pcancel := context.WithTimeout(sctx, etcdOpTimeout)
	_, err := h.cfg.Client.Put(pctx, h.cfg.Prefix+"coordinators/"+h.cfg.ID, string(self), clientv3.WithLease(sess.Lease()))
	pcancel()
	if err != nil {
		c.log.Warn("etcd registry: cannot announce this coordinator", "err", err)
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		el := concurrency.NewElection(sess, h.cfg.Prefix+"leader")
		if err := el.Campaign(sctx, h.cfg.ID); err != nil {
			return // the session or ctx ended
		}
		h.leader.Store(true)
		c.log.Info("elected leader: running the singleton tasks", "registry_id", h.cfg.ID)
		c.singletons(sctx)
		h.leader.Store(false)
		if ctx.Err() == nil {
			c.log.Warn("no longer the leader: singleton tasks stopped", "registry_id", h.cfg.ID)
		}
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = el.Resign(rctx)
		rcancel()
	}()

	t := time.NewTicker(haSyncInterval)
	defer t.Stop()
	for {
		c.haSync(sctx, sess.Lease())
		select {
		case <-sctx.Done():
			cancel()
			wg.Wait()
			return
		case <-t.C:
		}
	}
}

// liveValue is what a coordinator writes under live/NODE/ID.
type liveValue struct {
	Coordinator string          `json:"coordinator"`
	Info        json.RawMessage `json:"info"` // pb.NodeInfo in protojson
}

// haSync publishes the nodes this coordinator holds, mirrors those the
// others hold into its registry, and applies revocations made elsewhere.
func (c *Coordinator) haSync(ctx context.Context, lease clientv3.LeaseID) {
	h := c.ha
	ctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	defer cancel()
	livePfx := h.cfg.Prefix + "live/"

	// Publish ours: new or changed ones, and delete the ones gone.
	h.mu.Lock()
	local := map[string]string{}
	for _, m := range c.reg.list() {
		if ses, ok := h.remote[m.name]; ok && ses == m.session {
			continue
		}
		m.mu.Lock()
		info := proto.Clone(m.info).(*pb.NodeInfo)
		models := make([]*pb.ModelInfo, 0, len(m.models))
		for _, mi := range m.models {
			models = append(models, mi)
		}
		m.mu.Unlock()
		info.Models = models
		info.Telemetry = nil
		b, err := protojson.Marshal(info)
		if err != nil {
			continue
		}
		v, _ := json.Marshal(liveValue{Coordinator: h.cfg.ID, Info: b})
		local[m.name] = string(v)
	}
	var ops []clientv3.Op
	for name, v := range local {
		if h.published[name] != v {
			ops = append(ops, clientv3.OpPut(livePfx+name+"/"+h.cfg.ID, v, clientv3.WithLease(lease)))
		}
	}
	for name := range h.published {
		if _, ok := local[name]; !ok {
			ops = append(ops, clientv3.OpDelete(livePfx+name+"/"+h.cfg.ID))
		}
	}
	h.mu.Unlock()
	for len(ops) > 0 {
		n := min(len(ops), 64) // under etcd's default --max-txn-ops
		if _, err := h.cfg.Client.Txn(ctx).Then(ops[:n]...).Commit(); err != nil {
			if ctx.Err() == nil {
				c.log.Warn("etcd registry: cannot publish this coordinator's nodes", "err", err)
			}
			return
		}
		ops = ops[n:]
	}
	h.mu.Lock()
	h.published = local
	h.mu.Unlock()

	// Mirror the others'.
	resp, err := h.cfg.Client.Get(ctx, livePfx, clientv3.WithPrefix())
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("etcd registry: cannot read the live nodes", "err", err)
		}
		return
	}
	others := map[string]string{} // node -> value, one coordinator's (the newest write)
	for _, kv := range resp.Kvs {
		name, owner, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), livePfx), "/")
		if !ok || owner == h.cfg.ID {
			continue
		}
		others[name] = string(kv.Value)
	}
	c.mirrorRemote(others)

	// Revocations made through another coordinator.
	c.refreshRevocations(ctx)
}

// mirrorRemote makes the registry hold exactly the nodes in others that
// this coordinator does not hold itself, as remote members kept fresh by
// the sync rather than by heartbeats.
func (c *Coordinator) mirrorRemote(others map[string]string) {
	h := c.ha
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	revoked := c.revoked.Load().names
	for name, v := range others {
		if revoked[name] {
			continue // its own coordinator has yet to notice
		}
		m := c.reg.get(name)
		if m != nil && h.remote[name] != m.session {
			delete(h.remote, name) // ours: its heartbeats come here
			delete(h.remoteVal, name)
			continue
		}
		if m != nil && h.remoteVal[name] == v {
			m.mu.Lock()
			m.lastSeen = now
			m.mu.Unlock()
			continue
		}
		var lv liveValue
		info := &pb.NodeInfo{}
		if json.Unmarshal([]byte(v), &lv) != nil || protojson.Unmarshal(lv.Info, info) != nil {
			continue
		}
		if m != nil && m.addr == info.GetGrpcAddress() {
			m.mu.Lock()
			m.info, m.models, m.lastSeen = info, modelMap(info.GetModels()), now
			m.mu.Unlock()
			h.remoteVal[name] = v
			continue
		}
		nm, err := c.reg.addRemote(name, info, h.remote[name])
		if err != nil {
			c.log.Warn("etcd registry: cannot add a node another coordinator holds", "node", name, "err", err)
			continue
		}
		if nm != nil {
			h.remote[name], h.remoteVal[name] = nm.session, v
		}
	}
	for name, ses := range h.remote {
		if _, ok := others[name]; !ok || revoked[name] {
			c.reg.remove(name, ses, "gone from the etcd registry (its coordinator lost it or died)")
			delete(h.remote, name)
			delete(h.remoteVal, name)
		}
	}
}

// addRemote is add for a node another coordinator holds: it never replaces
// a member other than the remote one of session prev (0: none), which a
// registration here may have replaced meanwhile. It returns nil when it
// stood back.
func (r *registry) addRemote(name string, info *pb.NodeInfo, prev uint64) (*member, error) {
	addr := info.GetGrpcAddress()
	if addr == "" {
		return nil, fmt.Errorf("node %s: no grpc_address", name)
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
		info: info, models: modelMap(info.GetModels()), lastSeen: now,
	}
	r.mu.Lock()
	old := r.members[name]
	if old != nil && old.session != prev {
		r.mu.Unlock()
		conn.Close()
		return nil, nil
	}
	r.nextSes++
	m.session = r.nextSes
	r.members[name] = m
	r.mu.Unlock()
	if old != nil {
		old.retire()
	}
	r.log.Info("node registered through another coordinator", "node", name, "addr", addr, "models", len(m.models))
	return m, nil
}

// refreshRevocations applies the stored revocations when another
// coordinator changed the state: new revoked names lose their connections
// here too.
func (c *Coordinator) refreshRevocations(ctx context.Context) {
	es, ok := c.store.(*EtcdStore)
	if !ok {
		return
	}
	h := c.ha
	// The revision alone first: the state is read only when it changed.
	resp, err := es.cli.Get(ctx, es.key, clientv3.WithKeysOnly())
	if err != nil || len(resp.Kvs) == 0 {
		return
	}
	h.mu.Lock()
	same := resp.Kvs[0].ModRevision == h.stateRev
	h.mu.Unlock()
	if same {
		return
	}
	st, rev, err := es.get(ctx)
	if err != nil {
		return
	}
	h.mu.Lock()
	h.stateRev = rev
	h.mu.Unlock()
	c.stateMu.Lock()
	old := c.revoked.Load()
	rs := newRevset(st)
	c.revoked.Store(rs)
	c.stateMu.Unlock()
	for name := range rs.names {
		if !old.names[name] {
			c.conns.closeNode(name)
			c.reg.evict(name, "revoked (through another coordinator)")
		}
	}
}
