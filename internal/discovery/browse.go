package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/pion/mdns/v2"
)

// DefaultFindTimeout bounds FindCoordinator when its context has no
// deadline: a node started before its coordinator waits this long.
const DefaultFindTimeout = 10 * time.Second

// ErrNotFound means no coordinator of the wanted cluster answered.
var ErrNotFound = errors.New("discovery: no coordinator of this cluster found on the LAN")

// Browser looks for npumesh services. The zero value browses on every
// multicast-capable interface and logs nothing.
type Browser struct {
	// Interfaces to browse on; empty means all (see Interfaces).
	Interfaces []string
	Logger     *slog.Logger
	// QueryInterval is the time between repeated questions; default 1 s.
	QueryInterval time.Duration
}

// Browse lists the coordinators and nodes that answer within timeout, on
// every multicast-capable interface. See Browser.Browse.
func Browse(ctx context.Context, timeout time.Duration) ([]Service, error) {
	return (&Browser{}).Browse(ctx, timeout)
}

// FindCoordinator finds, on every multicast-capable interface, a
// coordinator of the cluster whose CA has caFingerprint. See
// Browser.FindCoordinator.
func FindCoordinator(ctx context.Context, caFingerprint string) (grpcAddr, enrollAddr string, err error) {
	return (&Browser{}).FindCoordinator(ctx, caFingerprint)
}

// Browse asks for coordinators and nodes for timeout (or until ctx ends)
// and returns every one that answered, coordinators first. Answers that
// are not well-formed npumesh records are left out.
func (b *Browser) Browse(ctx context.Context, timeout time.Duration) ([]Service, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		mu    sync.Mutex // guards found
		found = map[string]Service{}
	)
	err := b.browse(ctx, []string{CoordinatorService, NodeService}, func(s Service) bool {
		mu.Lock()
		defer mu.Unlock()
		found[s.Role+"/"+s.Instance] = s
		return false
	})
	if err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	out := make([]Service, 0, len(found))
	for _, s := range found {
		out = append(out, s)
	}
	sortServices(out)
	return out, nil
}

// FindCoordinator returns the gRPC and enrollment addresses of the first
// coordinator that answers for the cluster whose CA has caFingerprint
// (hex SHA-256, as in a join token); coordinators of other clusters are
// ignored. It waits until ctx ends, or DefaultFindTimeout when ctx has no
// deadline, and then returns an error wrapping ErrNotFound.
//
// The answer is a hint: the caller must still authenticate the coordinator
// (enrollment checks the CA fingerprint in the TLS handshake).
func (b *Browser) FindCoordinator(ctx context.Context, caFingerprint string) (grpcAddr, enrollAddr string, err error) {
	fp := strings.ToLower(strings.TrimSpace(caFingerprint))
	if !isHex64(fp) {
		return "", "", fmt.Errorf("discovery: CA fingerprint %q is not 64 hex digits", caFingerprint)
	}
	timeout := DefaultFindTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		mu         sync.Mutex // guards the four below
		hit        Service
		others     = map[string]bool{} // fingerprints of other clusters seen
		noEnroll   bool
		foundMatch bool
	)
	err = b.browse(ctx, []string{CoordinatorService}, func(s Service) bool {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case s.CAFingerprint != fp:
			others[s.CAFingerprint] = true
			return false
		case s.EnrollPort == 0:
			noEnroll = true
			return false
		}
		hit, foundMatch = s, true
		return true
	})
	if err != nil {
		return "", "", err
	}
	mu.Lock()
	defer mu.Unlock()
	if foundMatch {
		return hit.GRPCAddr(), hit.EnrollAddr(), nil
	}
	if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return "", "", err // canceled by the caller
	}
	var why []string
	if noEnroll {
		why = append(why, "a coordinator of this cluster answered but offers no enrollment (it has no CA, or --enroll-listen off)")
	}
	if len(others) > 0 {
		why = append(why, fmt.Sprintf("%d coordinator(s) of other clusters answered and were ignored", len(others)))
	}
	if len(why) == 0 {
		why = append(why, "nothing answered: is the coordinator running with --mdns on this LAN, and UDP 5353 open?")
	}
	return "", "", fmt.Errorf("%w (ca-sha256 %s..., waited %s): %s; give --coordinator HOST:PORT instead",
		ErrNotFound, fp[:16], timeout.Round(time.Millisecond), strings.Join(why, "; "))
}

// browse runs DNS-SD browsing for types until ctx ends or fn returns true.
// fn is called from pion's read loop, for every well-formed answer.
func (b *Browser) browse(ctx context.Context, types []string, fn func(Service) bool) error {
	log := b.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ifs, err := Interfaces(b.Interfaces)
	if err != nil {
		return err
	}
	var opts []mdns.ServerOption
	if b.QueryInterval > 0 {
		opts = append(opts, mdns.WithQueryInterval(b.QueryInterval))
	}
	conn, _, err := openConn(ifs, log, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conn.OnServiceDiscovered(func(evt mdns.ServiceEvent) {
		s, err := fromEvent(evt)
		if err != nil {
			log.Debug("ignored an mDNS answer", "instance", evt.Instance.Instance, "service", evt.Instance.Service, "err", err)
			return
		}
		if fn(s) {
			cancel()
		}
	})
	for _, t := range types {
		if err := conn.Browse(ctx, t); err != nil {
			return fmt.Errorf("discovery: browse %s: %w", t, err)
		}
	}
	<-ctx.Done()
	// Stop the handler before Close, so fn is not called after we return.
	conn.OnServiceDiscovered(nil)
	return nil
}

// fromEvent turns a resolved DNS-SD instance into a Service.
func fromEvent(evt mdns.ServiceEvent) (Service, error) {
	in := evt.Instance
	kv := make(map[string]string, len(in.Text))
	for _, e := range in.Text {
		kv[strings.ToLower(e.Key)] = string(e.Value)
	}
	s := Service{Instance: in.Instance, Addr: evt.Addr.WithZone(""), Port: int(in.Port)}
	if err := s.parseTXT(kv); err != nil {
		return Service{}, err
	}
	want, _ := serviceType(s.Role)
	if !strings.EqualFold(want, in.Service) {
		return Service{}, fmt.Errorf("%w: role=%s under %s", errNotOurs, s.Role, in.Service)
	}
	if s.Port <= 0 {
		return Service{}, fmt.Errorf("%w: SRV port 0", errNotOurs)
	}
	return s, nil
}
