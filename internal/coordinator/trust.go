package coordinator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/npumesh/npumesh/internal/pki"
)

// revset is an immutable snapshot of the revocations, read at every
// handshake.
type revset struct {
	names   map[string]bool
	serials map[string]bool
}

func newRevset(s *State) *revset {
	rs := &revset{names: map[string]bool{}, serials: map[string]bool{}}
	for name := range s.Revoked {
		rs.names[name] = true
	}
	for serial := range s.RevokedSerials {
		rs.serials[serial] = true
	}
	return rs
}

// errRevoked is wrapped by refusals of revoked peers.
var errRevoked = errors.New("revoked")

// checkRevoked refuses a verified peer certificate that is revoked, by its
// serial or (for nodes) by its name.
func (c *Coordinator) checkRevoked(leaf *x509.Certificate) error {
	rs := c.revoked.Load()
	if rs.serials[pki.SerialHex(leaf)] {
		return fmt.Errorf("certificate %s is %w", pki.SerialHex(leaf), errRevoked)
	}
	id, err := pki.IdentityFromCert(leaf)
	if err != nil {
		return err
	}
	if id.Role == pki.RoleNode && rs.names[id.Name] {
		return fmt.Errorf("node %s is %w", id.Name, errRevoked)
	}
	return nil
}

// update runs f through the store and refreshes the revocation snapshot.
func (c *Coordinator) update(ctx context.Context, f func(*State) error) error {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	var rs *revset
	err := c.store.Update(ctx, func(s *State) error {
		if err := f(s); err != nil {
			return err
		}
		rs = newRevset(s)
		return nil
	})
	if err == nil {
		c.revoked.Store(rs)
	}
	return err
}

// serverTLS is the mTLS configuration of the coordinator's gRPC port: the
// pki checks plus the revocation list, at every handshake.
func (c *Coordinator) serverTLS() *tls.Config {
	cfg := c.certs.ServerTLS(pki.RoleNode, pki.RoleClient, pki.RoleCoordinator)
	inner := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := inner(cs); err != nil {
			return err
		}
		if err := c.checkRevoked(cs.VerifiedChains[0][0]); err != nil {
			return fmt.Errorf("refusing client: %w", err)
		}
		return nil
	}
	return cfg
}

// recordCert remembers cert as the newest certificate of node rec.
func recordCert(rec *NodeRecord, cert *x509.Certificate) {
	serial := pki.SerialHex(cert)
	if rec.Certs == nil {
		rec.Certs = map[string]time.Time{}
	}
	rec.Certs[serial] = cert.NotAfter
	if rec.CertSerial == "" || !cert.NotAfter.Before(rec.CertExpires) {
		rec.CertSerial, rec.CertExpires = serial, cert.NotAfter
	}
}

func nodeRecord(s *State, name string, now time.Time) *NodeRecord {
	rec := s.Nodes[name]
	if rec == nil {
		rec = &NodeRecord{Name: name, FirstSeen: now}
		s.Nodes[name] = rec
	}
	return rec
}

// nodeSeen records a registration: address and the certificate presented.
func (c *Coordinator) nodeSeen(ctx context.Context, name, addr string) error {
	leaf := peerLeaf(ctx)
	return c.update(ctx, func(s *State) error {
		if s.Revoked[name] != nil {
			return fmt.Errorf("node %s is %w", name, errRevoked)
		}
		now := time.Now()
		rec := nodeRecord(s, name, now)
		rec.LastSeen, rec.LastAddress = now, addr
		if leaf != nil {
			recordCert(rec, leaf)
		}
		return nil
	})
}

// revoke refuses the node's name and every certificate it holds from now
// on, and cuts its connections: the ones it opened to this coordinator
// (heartbeat stream included) and the one the coordinator holds to it.
func (c *Coordinator) revoke(ctx context.Context, name, reason string) (serials []string, disconnected bool, err error) {
	err = c.update(ctx, func(s *State) error {
		serials = nil
		now := time.Now()
		s.Revoked[name] = &Revocation{Name: name, At: now, Reason: reason}
		if rec := s.Nodes[name]; rec != nil {
			for serial, exp := range rec.Certs {
				s.RevokedSerials[serial] = exp
				serials = append(serials, serial)
			}
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	if c.conns.closeNode(name) > 0 {
		disconnected = true
	}
	if c.reg.evict(name, "revoked") {
		disconnected = true
	}
	c.log.Warn("node revoked", "node", name, "reason", reason, "serials", len(serials), "disconnected", disconnected)
	return serials, disconnected, nil
}

func peerLeaf(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return ti.State.VerifiedChains[0][0]
}

// connTracker knows the connections nodes hold open to the coordinator, so
// a revocation can close them at once.
type connTracker struct {
	c *Coordinator

	mu    sync.Mutex // guards conns
	conns map[string]map[*trackedConn]bool
}

type trackedConn struct {
	net.Conn
	t    *connTracker
	name string
	once sync.Once
}

func (tc *trackedConn) Close() error {
	tc.once.Do(func() {
		tc.t.mu.Lock()
		delete(tc.t.conns[tc.name], tc)
		if len(tc.t.conns[tc.name]) == 0 {
			delete(tc.t.conns, tc.name)
		}
		tc.t.mu.Unlock()
	})
	return tc.Conn.Close()
}

// track registers a node's connection once its handshake has succeeded.
// The revocation check is repeated after registering, so a revocation
// racing with the handshake either sees the connection or is seen by it.
func (t *connTracker) track(conn net.Conn, leaf *x509.Certificate) (net.Conn, error) {
	id, err := pki.IdentityFromCert(leaf)
	if err != nil || id.Role != pki.RoleNode {
		return conn, nil
	}
	tc := &trackedConn{Conn: conn, t: t, name: id.Name}
	t.mu.Lock()
	if t.conns[id.Name] == nil {
		t.conns[id.Name] = map[*trackedConn]bool{}
	}
	t.conns[id.Name][tc] = true
	t.mu.Unlock()
	if err := t.c.checkRevoked(leaf); err != nil {
		tc.Close()
		return nil, err
	}
	return tc, nil
}

// closeNode closes every connection of the named node and returns how many.
func (t *connTracker) closeNode(name string) int {
	t.mu.Lock()
	var all []*trackedConn
	for tc := range t.conns[name] {
		all = append(all, tc)
	}
	t.mu.Unlock()
	for _, tc := range all {
		tc.Close()
	}
	return len(all)
}

// trackingCreds wraps the server's TLS credentials to feed the tracker.
type trackingCreds struct {
	credentials.TransportCredentials
	t *connTracker
}

func (tc trackingCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, ai, err := tc.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	if ti, ok := ai.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.VerifiedChains[0]) > 0 {
		if conn, err = tc.t.track(conn, ti.State.VerifiedChains[0][0]); err != nil {
			return nil, nil, err
		}
	}
	return conn, ai, nil
}

func (tc trackingCreds) Clone() credentials.TransportCredentials {
	return trackingCreds{TransportCredentials: tc.TransportCredentials.Clone(), t: tc.t}
}
