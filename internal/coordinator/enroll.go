package coordinator

import (
	"context"
	"errors"
	"net"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

const (
	// DefaultNodeCertTTL is the lifetime of the node certificates the
	// coordinator issues; nodes renew them after two thirds.
	DefaultNodeCertTTL = 7 * 24 * time.Hour
	// DefaultTokenTTL is how long a join token lives unless told.
	DefaultTokenTTL = 24 * time.Hour
	maxTokenUses    = 10000
)

// errNoCA answers signing requests on a coordinator without the CA key.
var errNoCA = status.Error(codes.FailedPrecondition, "this coordinator holds no CA key, so it cannot issue certificates; run it with --data-dir (which keeps the cluster CA) instead of --tls-dir alone")

// enrollService serves EnrollmentService on the enrollment listener.
type enrollService struct {
	pb.UnimplementedEnrollmentServiceServer
	c       *Coordinator
	limiter *failLimiter
}

// invalidToken is one answer for an unknown id and a wrong secret, so
// that guessing learns nothing about which ids exist.
var invalidToken = status.Error(codes.Unauthenticated, "join token not accepted: unknown token id or wrong secret; check the token, or create one with `npumesh token create`")

func (s *enrollService) Enroll(ctx context.Context, req *pb.EnrollRequest) (*pb.EnrollResponse, error) {
	host := peerHost(ctx)
	if wait := s.limiter.blocked(host); wait > 0 {
		return nil, status.Errorf(codes.ResourceExhausted, "too many failed enrollments from %s; retry in %s", host, wait.Round(time.Second))
	}
	resp, err := s.enroll(ctx, req)
	if err != nil {
		s.limiter.fail(host)
		s.c.log.Warn("enrollment refused", "from", host, "token", req.GetTokenId(), "name", req.GetName(), "err", status.Convert(err).Message())
		return nil, err
	}
	return resp, nil
}

func (s *enrollService) enroll(ctx context.Context, req *pb.EnrollRequest) (*pb.EnrollResponse, error) {
	c := s.c
	if err := pki.ValidateTokenID(req.GetTokenId()); err != nil {
		return nil, invalidToken
	}
	name := req.GetName()
	if err := pki.ValidateName(name); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var certPEM []byte
	err := c.update(ctx, func(st *State) error {
		now := time.Now()
		tok := st.Tokens[req.GetTokenId()]
		if tok == nil {
			pki.SecretMatches(pki.HashSecret(""), req.GetTokenSecret()) // same work as a known id
			return invalidToken
		}
		if !pki.SecretMatches(tok.SecretHash, req.GetTokenSecret()) {
			return invalidToken
		}
		if !now.Before(tok.Expires) {
			return status.Errorf(codes.Unauthenticated, "join token %s expired at %s; create a new one with `npumesh token create`", tok.ID, tok.Expires.UTC().Format(time.RFC3339))
		}
		if tok.UsesLeft <= 0 {
			return status.Errorf(codes.Unauthenticated, "join token %s is used up (it allowed %d enrollment(s)); create a new one with `npumesh token create`", tok.ID, tok.Uses)
		}
		if st.Revoked[name] != nil {
			return status.Errorf(codes.PermissionDenied, "node name %s is revoked; an admin must run `npumesh node unrevoke %s` before it can enroll again", name, name)
		}
		if m := c.reg.get(name); m != nil {
			return status.Errorf(codes.AlreadyExists, "a node named %s is connected now; give this one another --name (or revoke the other)", name)
		}
		signed, cert, err := c.cfg.CA.SignCSR(req.GetCsrPem(), pki.IssueRequest{Name: name, Role: pki.RoleNode, Validity: c.cfg.NodeCertTTL})
		if err != nil {
			if errors.Is(err, pki.ErrBadCSR) {
				return status.Error(codes.InvalidArgument, err.Error())
			}
			return status.Error(codes.Internal, err.Error())
		}
		tok.UsesLeft--
		recordCert(nodeRecord(st, name, now), cert)
		certPEM = signed
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.log.Info("node enrolled", "node", name, "token", req.GetTokenId(), "from", peerHost(ctx))
	return &pb.EnrollResponse{CertPem: certPEM, CaPem: c.cfg.CA.CertPEM()}, nil
}

// Renew implements ControlService.Renew: a new certificate for the calling
// node's own name, for the key in the CSR.
func (s *controlService) Renew(ctx context.Context, req *pb.RenewRequest) (*pb.RenewResponse, error) {
	c := s.c
	id, err := pki.PeerIdentity(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	if c.cfg.CA == nil {
		return nil, errNoCA
	}
	var certPEM []byte
	err = c.update(ctx, func(st *State) error {
		if st.Revoked[id.Name] != nil {
			return status.Errorf(codes.PermissionDenied, "node %s is revoked", id.Name)
		}
		signed, cert, err := c.cfg.CA.SignCSR(req.GetCsrPem(), pki.IssueRequest{Name: id.Name, Role: pki.RoleNode, Validity: c.cfg.NodeCertTTL})
		if err != nil {
			if errors.Is(err, pki.ErrBadCSR) {
				return status.Error(codes.InvalidArgument, err.Error())
			}
			return status.Error(codes.Internal, err.Error())
		}
		recordCert(nodeRecord(st, id.Name, time.Now()), cert)
		certPEM = signed
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.log.Info("node certificate renewed", "node", id.Name)
	return &pb.RenewResponse{CertPem: certPEM, CaPem: c.cfg.CA.CertPEM()}, nil
}

func peerHost(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown"
	}
	if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
		return host
	}
	return p.Addr.String()
}

// failLimiter blocks a source address for a while after too many failed
// enrollments. Secrets carry 160 bits, so it is not what stops guessing;
// it keeps a misconfigured or hostile peer from filling the log and
// burning CPU on signatures.
type failLimiter struct {
	max    int           // failures allowed per window
	window time.Duration // how long failures are counted (and a block lasts)

	mu    sync.Mutex // guards hosts
	hosts map[string]*failWindow
}

type failWindow struct {
	n     int
	start time.Time
}

func newFailLimiter(max int, window time.Duration) *failLimiter {
	return &failLimiter{max: max, window: window, hosts: map[string]*failWindow{}}
}

// blocked returns how long host must still wait, or 0.
func (l *failLimiter) blocked(host string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.hosts[host]
	if w == nil {
		return 0
	}
	left := l.window - time.Since(w.start)
	if left <= 0 {
		delete(l.hosts, host)
		return 0
	}
	if w.n >= l.max {
		return left
	}
	return 0
}

func (l *failLimiter) fail(host string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.hosts) > 10000 { // bound memory under a flood of sources
		clear(l.hosts)
	}
	w := l.hosts[host]
	if w == nil || time.Since(w.start) > l.window {
		w = &failWindow{start: time.Now()}
		l.hosts[host] = w
	}
	w.n++
}

// adminService implements AdminService; only client certificates may call
// it (enforced by the role interceptors).
type adminService struct {
	pb.UnimplementedAdminServiceServer
	c *Coordinator
}

func (a *adminService) CreateToken(ctx context.Context, req *pb.CreateTokenRequest) (*pb.CreateTokenResponse, error) {
	c := a.c
	if c.cfg.CA == nil {
		return nil, errNoCA
	}
	if c.cfg.EnrollListen == "" {
		return nil, status.Error(codes.FailedPrecondition, "enrollment is disabled on this coordinator (--enroll-listen is empty), so a join token would be of no use")
	}
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if ttl < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "negative token lifetime %s", ttl)
	}
	uses := int(req.GetUses())
	if uses == 0 {
		uses = 1
	}
	if uses < 0 || uses > maxTokenUses {
		return nil, status.Errorf(codes.InvalidArgument, "--uses %d: want 1 to %d", uses, maxTokenUses)
	}
	if len(req.GetDescription()) > 200 {
		return nil, status.Error(codes.InvalidArgument, "description longer than 200 bytes")
	}
	tok, err := pki.NewJoinToken(c.cfg.CA.Fingerprint())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	now := time.Now()
	rec := &TokenRecord{
		ID: tok.ID, SecretHash: pki.HashSecret(tok.Secret), Created: now, Expires: now.Add(ttl),
		Uses: uses, UsesLeft: uses, Description: req.GetDescription(),
	}
	err = c.update(ctx, func(st *State) error {
		if st.Tokens[tok.ID] != nil {
			return status.Error(codes.Aborted, "token id collision; try again")
		}
		st.Tokens[tok.ID] = rec
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.log.Info("join token created", "token", tok.ID, "expires", rec.Expires.UTC().Format(time.RFC3339), "uses", uses, "by", callerName(ctx))
	return &pb.CreateTokenResponse{Token: tok.String(), Info: tokenInfo(rec)}, nil
}

func tokenInfo(t *TokenRecord) *pb.TokenInfo {
	return &pb.TokenInfo{
		Id: t.ID, CreatedUnix: t.Created.Unix(), ExpiresUnix: t.Expires.Unix(),
		Uses: int32(t.Uses), UsesLeft: int32(t.UsesLeft), Description: t.Description,
	}
}

func (a *adminService) ListTokens(ctx context.Context, _ *pb.ListTokensRequest) (*pb.ListTokensResponse, error) {
	st, err := a.c.store.Load(ctx)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	out := &pb.ListTokensResponse{}
	for _, t := range st.Tokens {
		out.Tokens = append(out.Tokens, tokenInfo(t))
	}
	sort.Slice(out.Tokens, func(i, j int) bool {
		a, b := out.Tokens[i], out.Tokens[j]
		return a.CreatedUnix < b.CreatedUnix || a.CreatedUnix == b.CreatedUnix && a.Id < b.Id
	})
	return out, nil
}

func (a *adminService) DeleteToken(ctx context.Context, req *pb.DeleteTokenRequest) (*pb.DeleteTokenResponse, error) {
	id := req.GetId()
	err := a.c.update(ctx, func(st *State) error {
		if st.Tokens[id] == nil {
			return status.Errorf(codes.NotFound, "no join token %q (see `npumesh token ls`)", id)
		}
		delete(st.Tokens, id)
		return nil
	})
	if err != nil {
		return nil, err
	}
	a.c.log.Info("join token deleted", "token", id, "by", callerName(ctx))
	return &pb.DeleteTokenResponse{}, nil
}

func (a *adminService) RevokeNode(ctx context.Context, req *pb.RevokeNodeRequest) (*pb.RevokeNodeResponse, error) {
	if err := pki.ValidateName(req.GetName()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	serials, disconnected, err := a.c.revoke(ctx, req.GetName(), req.GetReason())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	sort.Strings(serials)
	return &pb.RevokeNodeResponse{Disconnected: disconnected, Serials: serials}, nil
}

func (a *adminService) UnrevokeNode(ctx context.Context, req *pb.UnrevokeNodeRequest) (*pb.UnrevokeNodeResponse, error) {
	name := req.GetName()
	err := a.c.update(ctx, func(st *State) error {
		if st.Revoked[name] == nil {
			return status.Errorf(codes.NotFound, "node %q is not revoked", name)
		}
		delete(st.Revoked, name)
		return nil
	})
	if err != nil {
		return nil, err
	}
	a.c.log.Info("node unrevoked; its old certificates stay refused", "node", name, "by", callerName(ctx))
	return &pb.UnrevokeNodeResponse{}, nil
}

func (a *adminService) ListNodes(ctx context.Context, _ *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	st, err := a.c.store.Load(ctx)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	names := map[string]bool{}
	for n := range st.Nodes {
		names[n] = true
	}
	for n := range st.Revoked {
		names[n] = true
	}
	for _, m := range a.c.reg.list() {
		names[m.name] = true
	}
	out := &pb.ListNodesResponse{}
	for name := range names {
		r := &pb.NodeRecord{Name: name, Revoked: st.Revoked[name] != nil, Connected: a.c.reg.get(name) != nil}
		if rec := st.Nodes[name]; rec != nil {
			r.FirstSeenUnix, r.LastAddress, r.CertSerial = unixOrZero(rec.FirstSeen), rec.LastAddress, rec.CertSerial
			r.LastSeenUnix, r.CertExpiresUnix = unixOrZero(rec.LastSeen), unixOrZero(rec.CertExpires)
		}
		out.Nodes = append(out.Nodes, r)
	}
	sort.Slice(out.Nodes, func(i, j int) bool { return out.Nodes[i].Name < out.Nodes[j].Name })
	return out, nil
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func callerName(ctx context.Context) string {
	id, err := pki.PeerIdentity(ctx)
	if err != nil {
		return "unknown"
	}
	return id.String()
}
