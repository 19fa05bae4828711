package pki

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// healthPrefix is the standard health service, open to every authenticated
// role unless the policy says otherwise.
const healthPrefix = "/grpc.health.v1.Health/"

// PeerIdentity returns the identity of the peer of a gRPC server call, taken
// from its verified TLS client certificate. It fails for calls not over
// TLS, and for clients whose certificate the server did not verify (as on
// connections not configured by ServerTLS). It is meant for servers: on the
// client side ClientTLS has already checked the server's identity.
func PeerIdentity(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, fmt.Errorf("%w: no gRPC peer in context", ErrNoIdentity)
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Identity{}, fmt.Errorf("%w: peer %v is not connected over TLS", ErrNoIdentity, p.Addr)
	}
	chains := ti.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return Identity{}, fmt.Errorf("%w: peer %v has no verified certificate", ErrNoIdentity, p.Addr)
	}
	return IdentityFromCert(chains[0][0])
}

// RoleInterceptors returns gRPC server interceptors that allow a call only
// when the peer's role is listed for the method. Policy keys are full method
// names ("/npumesh.v1.ControlService/Register") or service prefixes ending
// in "/" ("/npumesh.v1.ControlService/"); a method key wins over its
// service key. Calls to methods the policy does not cover are refused with
// codes.PermissionDenied, except the grpc.health.v1 service, which every
// authenticated role may call. Peers without a verified identity get
// codes.Unauthenticated.
//
// A malformed key or unknown role panics: the policy is a constant of the
// program, and a typo must not silently lock out or open a service.
func RoleInterceptors(policy map[string][]Role) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	p := make(map[string][]Role, len(policy))
	for k, roles := range policy {
		if err := checkPolicyKey(k); err != nil {
			panic("pki.RoleInterceptors: " + err.Error())
		}
		for _, r := range roles {
			if _, err := ParseRole(string(r)); err != nil {
				panic(fmt.Sprintf("pki.RoleInterceptors: key %q: %v", k, err))
			}
		}
		p[k] = slices.Clone(roles)
	}
	authorize := func(ctx context.Context, method string) error {
		id, err := PeerIdentity(ctx)
		if err != nil {
			return status.Error(codes.Unauthenticated, err.Error())
		}
		roles, ok := p[method]
		if !ok {
			roles, ok = p[method[:strings.LastIndex(method, "/")+1]]
		}
		switch {
		case ok && slices.Contains(roles, id.Role):
			return nil
		case ok:
			return status.Errorf(codes.PermissionDenied, "%s may not call %s (allowed roles: %v)", id, method, roles)
		case strings.HasPrefix(method, healthPrefix):
			return nil
		default:
			return status.Errorf(codes.PermissionDenied, "%s is not open to any role", method)
		}
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := authorize(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := authorize(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	return unary, stream
}

func checkPolicyKey(k string) error {
	svc, method, ok := strings.Cut(strings.TrimPrefix(k, "/"), "/")
	if !strings.HasPrefix(k, "/") || !ok || svc == "" || strings.Contains(method, "/") {
		return fmt.Errorf("policy key %q: want \"/pkg.Service/Method\" or \"/pkg.Service/\"", k)
	}
	return nil
}
