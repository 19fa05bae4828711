package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// controlLoop registers with a coordinator and keeps the heartbeat stream
// going until ctx ends, reconnecting (to the next coordinator in the list)
// with backoff when the stream breaks. A coordinator restart therefore needs
// no manual step on the node.
//
// With several coordinators (static seeds), a broken session moves on to
// the next seed at once; only a whole round of failed seeds waits, with a
// backoff growing to 5 s, so a dead coordinator costs one connection
// attempt, not a backoff.
func (n *Node) controlLoop(ctx context.Context) {
	backoff := 200 * time.Millisecond
	seeds := len(n.cfg.Coordinators)
	failed := 0 // consecutive failed seeds in this round
	for i := 0; ctx.Err() == nil; i++ {
		addr := n.cfg.Coordinators[i%seeds]
		start := time.Now()
		err := n.session(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			backoff = 200 * time.Millisecond // it was a healthy session
			failed = 0
		}
		failed++
		wait := 50 * time.Millisecond
		if failed >= seeds {
			wait, failed = backoff, 0
			backoff = min(backoff*2, 5*time.Second)
		}
		next := n.cfg.Coordinators[(i+1)%seeds]
		n.log.Warn("coordinator session ended; reconnecting", "coordinator", addr, "err", err, "next", next, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// registerTimeout bounds one Register call, so an unreachable seed costs
// little before the next is tried.
const registerTimeout = 5 * time.Second

// session is one registration plus heartbeat stream with one coordinator.
func (n *Node) session(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(n.certs.ClientTLS(pki.Identity{Role: pki.RoleCoordinator}))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
	)
	if err != nil {
		return fmt.Errorf("dial coordinator %s: %w", addr, err)
	}
	defer conn.Close()
	client := pb.NewControlServiceClient(conn)

	advertise, err := n.advertiseAddr(ctx, addr)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, registerTimeout)
	resp, err := client.Register(rctx, &pb.RegisterRequest{Info: n.info(advertise)})
	cancel()
	if err != nil {
		return fmt.Errorf("register with %s: %w", addr, err)
	}
	interval := n.cfg.HeartbeatInterval
	if ms := resp.GetHeartbeatIntervalMs(); ms > 0 {
		interval = time.Duration(ms) * time.Millisecond
	}
	n.log.Info("registered", "coordinator", addr, "advertise", advertise, "heartbeat", interval)

	sctx, stop := context.WithCancel(ctx)
	defer stop()
	hb, err := client.Heartbeat(sctx)
	if err != nil {
		return fmt.Errorf("open heartbeat stream: %w", err)
	}
	recvErr := make(chan error, 1)
	var lastAck atomic.Int64 // unix nanoseconds of the newest ack
	lastAck.Store(time.Now().UnixNano())
	go func() {
		for {
			if _, err := hb.Recv(); err != nil {
				recvErr <- err
				return
			}
			lastAck.Store(time.Now().UnixNano())
		}
	}()
	// A coordinator that stops acking (hung, or its host gone without a
	// TCP reset) ends the session well before gRPC keepalive would.
	silentLimit := 3*interval + 2*time.Second
	t := time.NewTicker(interval)
	defer t.Stop()
	drain := n.drainStarted
	var seq uint64
	for {
		seq++
		msg := &pb.HeartbeatRequest{
			NodeName: n.cfg.Name,
			Seq:      seq,
			Load: &pb.NodeLoad{
				InFlight:    n.inFlight.Load(),
				ServedTotal: n.served.Load(),
			},
			Models:      n.modelInfos(),
			Draining:    n.draining.Load(),
			Telemetry:   telemetryProto(n.sampler.Latest()),
			CacheEvents: n.cache.take(),
		}
		if err := hb.Send(msg); err != nil {
			if errors.Is(err, io.EOF) {
				err = <-recvErr
			}
			return fmt.Errorf("heartbeat: %w", err)
		}
		select {
		case <-ctx.Done():
			// Tell the coordinator we are going, then close our side.
			msg.Draining = true
			msg.Seq = seq + 1
			_ = hb.Send(msg)
			_ = hb.CloseSend()
			return nil
		case err := <-recvErr:
			return fmt.Errorf("heartbeat stream: %w", err)
		case <-drain:
			drain = nil // report once, right away
		case <-n.availChanged:
		case <-t.C:
		}
		if silent := time.Since(time.Unix(0, lastAck.Load())); silent > silentLimit {
			return fmt.Errorf("coordinator %s acknowledged no heartbeat for %s", addr, silent.Round(time.Millisecond))
		}
	}
}

// advertiseAddr is the address the coordinator should dial for NodeService.
func (n *Node) advertiseAddr(ctx context.Context, coordinator string) (string, error) {
	if n.cfg.Advertise != "" {
		return n.cfg.Advertise, nil
	}
	la := n.listener.Addr().(*net.TCPAddr)
	if !la.IP.IsUnspecified() {
		return la.String(), nil
	}
	// Wildcard listen: use the local address this host reaches the
	// coordinator from (no packet is sent for a UDP "dial").
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", coordinator)
	if err != nil {
		return "", fmt.Errorf("find the local address toward %s (set --advertise): %w", coordinator, err)
	}
	defer c.Close()
	ip := c.LocalAddr().(*net.UDPAddr).IP
	return net.JoinHostPort(ip.String(), fmt.Sprint(la.Port)), nil
}
