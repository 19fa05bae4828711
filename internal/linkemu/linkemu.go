// Package linkemu is a userspace TCP relay that emulates a network link for
// tests: one-way latency with jitter and a bandwidth cap, in both
// directions, on loopback. It stands in for netem, which this kernel lacks.
//
// Each accepted connection is forwarded to the target. Every chunk of bytes
// read from one side is stamped on arrival and written to the other side
// when it is due, so the link is a pipe with a delay, not a stop-and-wait:
// with latency D, bytes read at t are written at t+D however many chunks are
// in flight (up to the queue bound), and throughput is not capped at
// chunk/D. The model of one direction, per chunk of n bytes read at t:
//
//	sent    = max(t, previous sent) + n/BytesPerSec   (serialization; 0 when unlimited)
//	due     = max(sent + Latency + U(-Jitter,+Jitter), previous due)
//
// Chunks of one direction are written in the order they were read, by one
// writer, so jitter never reorders bytes; the max with the previous due time
// means a later chunk is never due before an earlier one (jitter can only
// delay a chunk behind its predecessor, as on a real FIFO link). Half-close
// is passed through (EOF on one side becomes CloseWrite on the other).
//
// At most queueBytes per direction are held in flight; beyond that the
// relay stops reading and TCP flow control pushes back on the sender, so a
// long latency with a high bandwidth (a bandwidth-delay product above
// queueBytes) is capped at queueBytes per Latency.
//
// Standard library only.
package linkemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Config is the emulated link, the same in both directions.
type Config struct {
	Latency     time.Duration // one-way delay
	Jitter      time.Duration // each chunk's delay is Latency + uniform(-Jitter, +Jitter), at least 0
	BytesPerSec float64       // bandwidth cap per direction and connection; 0 = unlimited
}

// Presets for the links of issue 8 ("WiFi-7 at 2 Gbit/s with 2 ms latency,
// and Ethernet at 1 Gbit/s with 0.2 ms"). The quoted latencies are read as
// round-trip times, as ping reports them, so the one-way Latency is half:
// a request and its answer through the relay take the quoted time. Do not
// modify them; copy and adjust (for instance Jitter) instead.
var (
	WiFi7    = Config{Latency: time.Millisecond, BytesPerSec: 2e9 / 8}
	Ethernet = Config{Latency: 100 * time.Microsecond, BytesPerSec: 1e9 / 8}
)

// RTT is the round trip a config adds: twice the one-way latency.
func (c Config) RTT() time.Duration { return 2 * c.Latency }

func (c Config) validate() error {
	switch {
	case c.Latency < 0:
		return fmt.Errorf("linkemu: negative latency %v", c.Latency)
	case c.Jitter < 0:
		return fmt.Errorf("linkemu: negative jitter %v", c.Jitter)
	case c.BytesPerSec < 0 || c.BytesPerSec != c.BytesPerSec:
		return fmt.Errorf("linkemu: bandwidth %v is not a non-negative number", c.BytesPerSec)
	}
	return nil
}

const (
	chunkSize  = 64 << 10 // largest chunk read at once
	queueBytes = 8 << 20  // bytes in flight per direction
	dialWait   = 5 * time.Second
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// Relay forwards connections from its listener to a target through the
// emulated link.
type Relay struct {
	ln     net.Listener
	target string
	dial   DialFunc
	cfg    atomic.Pointer[Config]
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	up, down atomic.Int64 // bytes delivered: client->target, target->client

	mu     sync.Mutex
	conns  map[*pair]struct{}
	closed bool
}

// Listen starts a relay on 127.0.0.1 (a free port) forwarding to target.
func Listen(target string, cfg Config) (*Relay, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("linkemu: %w", err)
	}
	return Serve(ln, target, cfg, nil)
}

// DialFunc opens the relay's connection to its target.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Serve runs a relay on ln (which it closes on Close) forwarding to target
// through dial (nil: a plain net.Dialer). A test uses it to relay inside a
// network namespace: a listener and a dial made there.
func Serve(ln net.Listener, target string, cfg Config, dial DialFunc) (*Relay, error) {
	if err := cfg.validate(); err != nil {
		ln.Close()
		return nil, err
	}
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	r := &Relay{ln: ln, target: target, dial: dial, conns: map[*pair]struct{}{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.cfg.Store(&cfg)
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// Addr is the relay's address (host:port) to dial instead of the target.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Stats returns the bytes delivered so far: up from clients to the target,
// down from the target to clients.
func (r *Relay) Stats() (bytesUp, bytesDown int64) { return r.up.Load(), r.down.Load() }

// SetConfig changes the link for every chunk read from now on, on existing
// and new connections. Negative values are taken as 0.
func (r *Relay) SetConfig(cfg Config) {
	cfg.Latency = max(cfg.Latency, 0)
	cfg.Jitter = max(cfg.Jitter, 0)
	if !(cfg.BytesPerSec > 0) {
		cfg.BytesPerSec = 0
	}
	r.cfg.Store(&cfg)
}

// Config returns the current link.
func (r *Relay) Config() Config { return *r.cfg.Load() }

// CutAll drops every open connection at once, both sides reset (no FIN, data
// in flight lost), as a link that fails. New connections are still
// accepted.
func (r *Relay) CutAll() {
	r.mu.Lock()
	ps := make([]*pair, 0, len(r.conns))
	for p := range r.conns {
		ps = append(ps, p)
	}
	r.mu.Unlock()
	for _, p := range ps {
		p.kill()
	}
}

// Close stops accepting, drops every connection and waits for all the
// relay's goroutines to end.
func (r *Relay) Close() error {
	r.mu.Lock()
	already := r.closed
	r.closed = true
	r.mu.Unlock()
	var err error
	if !already {
		r.cancel()
		err = r.ln.Close()
	}
	r.CutAll()
	r.wg.Wait()
	return err
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond): // e.g. too many open files
			}
			continue
		}
		r.wg.Add(1)
		go r.serve(c)
	}
}

// pair is one relayed connection.
type pair struct {
	client, server net.Conn
	done           chan struct{}
	once           sync.Once
}

// kill resets both sides and stops both directions.
func (p *pair) kill() {
	p.once.Do(func() {
		close(p.done)
		for _, c := range []net.Conn{p.client, p.server} {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // RST, not FIN: a cut link
			}
			_ = c.Close()
		}
	})
}

func (r *Relay) serve(client net.Conn) {
	defer r.wg.Done()
	ctx, cancel := context.WithTimeout(r.ctx, dialWait)
	server, err := r.dial(ctx, "tcp", r.target)
	cancel()
	if err != nil {
		if tc, ok := client.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = client.Close()
		return
	}
	p := &pair{client: client, server: server, done: make(chan struct{})}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		p.kill()
		return
	}
	r.conns[p] = struct{}{}
	r.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.pipe(p, client, server, &r.up) }()
	go func() { defer wg.Done(); r.pipe(p, server, client, &r.down) }()
	wg.Wait()
	r.mu.Lock()
	delete(r.conns, p)
	r.mu.Unlock()
	p.once.Do(func() { // both directions ended cleanly: close normally
		close(p.done)
		_ = client.Close()
		_ = server.Close()
	})
}

// chunk is a piece of one direction's byte stream with its due time.
type chunk struct {
	buf *[]byte
	n   int
	due time.Time
}

// schedule is one direction's timing state (see the package doc).
type schedule struct {
	sent, due time.Time
}

// next stamps a chunk of n bytes read at now under cfg; jitter is a sample
// in [-1, 1].
func (s *schedule) next(now time.Time, n int, cfg Config, jitter float64) time.Time {
	sent := now
	if s.sent.After(sent) {
		sent = s.sent
	}
	if cfg.BytesPerSec > 0 {
		sent = sent.Add(time.Duration(float64(n) / cfg.BytesPerSec * float64(time.Second)))
	}
	s.sent = sent
	delay := cfg.Latency + time.Duration(jitter*float64(cfg.Jitter))
	due := sent.Add(max(delay, 0))
	if due.Before(s.due) {
		due = s.due
	}
	s.due = due
	return due
}

// pipe relays src to dst through the link model until EOF, an error or a
// kill. On EOF it half-closes dst after the last chunk is delivered.
func (r *Relay) pipe(p *pair, src, dst net.Conn, count *atomic.Int64) {
	q := make(chan chunk, queueBytes/chunkSize)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		for c := range q {
			if d := time.Until(c.due); d > 0 {
				timer.Reset(d)
				select {
				case <-timer.C:
				case <-p.done:
					bufPool.Put(c.buf)
					return
				}
			}
			_, err := dst.Write((*c.buf)[:c.n])
			bufPool.Put(c.buf)
			if err != nil {
				p.kill()
				return
			}
			count.Add(int64(c.n))
		}
		// The reader saw EOF and everything before it is delivered.
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()

	var s schedule
	for {
		buf := bufPool.Get().(*[]byte)
		n, err := src.Read(*buf)
		if n > 0 {
			cfg := *r.cfg.Load()
			j := 0.0
			if cfg.Jitter > 0 {
				j = 2*rand.Float64() - 1
			}
			c := chunk{buf: buf, n: n, due: s.next(time.Now(), n, cfg, j)}
			select {
			case q <- c:
			case <-p.done:
				bufPool.Put(buf)
				close(q)
				<-writerDone
				return
			}
		} else {
			bufPool.Put(buf)
		}
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				p.kill() // a reset or another failure: drop the whole connection
			}
			close(q)
			<-writerDone
			return
		}
	}
}
