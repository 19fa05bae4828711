package linkemu

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// server runs a loopback TCP server calling handle for each connection and
// stops it (waiting for the handlers) at the end of the test.
func server(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); handle(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func echo(c net.Conn) { _, _ = io.Copy(c, c) }

func relay(t testing.TB, target string, cfg Config) *Relay {
	t.Helper()
	r, err := Listen(target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func dial(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(60 * time.Second)) // bounded in time
	return c
}

func TestRTTIsTwiceLatency(t *testing.T) {
	const lat = 20 * time.Millisecond
	r := relay(t, server(t, echo), Config{Latency: lat, Jitter: 5 * time.Millisecond})
	c := dial(t, r.Addr())
	buf := make([]byte, 1)
	for i := range 5 {
		start := time.Now()
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		rtt := time.Since(start)
		// Jitter is +-5 ms one way, so at least 2*(20-5) ms.
		if rtt < 2*(lat-5*time.Millisecond) {
			t.Errorf("round trip %v, want >= %v", rtt, 2*(lat-5*time.Millisecond))
		}
		if buf[0] != byte(i) {
			t.Fatalf("echo %d, want %d", buf[0], i)
		}
		t.Logf("round trip %v", rtt)
	}
	// Without jitter the bound is exact.
	r.SetConfig(Config{Latency: lat})
	start := time.Now()
	c.Write([]byte{9})
	io.ReadFull(c, buf)
	if rtt := time.Since(start); rtt < 2*lat {
		t.Errorf("round trip %v, want >= %v", rtt, 2*lat)
	}
	if got := r.Config(); got.Latency != lat || got.Jitter != 0 {
		t.Errorf("Config() = %+v", got)
	}
}

// TestByteExactBothWays sends several MB each way at once, with jitter, and
// checks every byte arrives in order.
func TestByteExactBothWays(t *testing.T) {
	const size = 6 << 20
	rng := rand.New(rand.NewPCG(7, 8))
	upData := make([]byte, size)
	downData := make([]byte, size+12345)
	for i := range upData {
		upData[i] = byte(rng.Uint32())
	}
	for i := range downData {
		downData[i] = byte(rng.Uint32())
	}
	gotUp := make(chan [32]byte, 1)
	target := server(t, func(c net.Conn) {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // send down while receiving up
			defer wg.Done()
			c.Write(downData)
			c.(*net.TCPConn).CloseWrite()
		}()
		h := sha256.New()
		io.Copy(h, c)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		gotUp <- sum
		wg.Wait()
	})
	r := relay(t, target, Config{Latency: time.Millisecond, Jitter: time.Millisecond})
	c := dial(t, r.Addr())
	errc := make(chan error, 1)
	go func() {
		// Odd-sized writes, to mix chunk boundaries.
		for off := 0; off < len(upData); {
			n := min(1+rng.IntN(100000), len(upData)-off)
			if _, err := c.Write(upData[off : off+n]); err != nil {
				errc <- err
				return
			}
			off += n
		}
		errc <- c.(*net.TCPConn).CloseWrite()
	}()
	down, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(down, downData) {
		t.Fatalf("down: %d bytes differ from the %d sent", len(down), len(downData))
	}
	select {
	case sum := <-gotUp:
		if sum != sha256.Sum256(upData) {
			t.Fatal("up: bytes differ")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("server did not finish")
	}
	up, dn := r.Stats()
	if up != int64(len(upData)) || dn != int64(len(downData)) {
		t.Errorf("Stats() = %d, %d; want %d, %d", up, dn, len(upData), len(downData))
	}
}

// TestSchedule checks the timing model without a clock: chunks are pipelined
// (not delayed in series), serialized at the bandwidth, and never due before
// their predecessor whatever the jitter.
func TestSchedule(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := time.Millisecond
	var s schedule
	cfg := Config{Latency: 50 * ms}
	for i := range 100 {
		now := t0.Add(time.Duration(i) * time.Microsecond)
		if due := s.next(now, chunkSize, cfg, 0); !due.Equal(now.Add(50 * ms)) {
			t.Fatalf("chunk %d read at +%v due at +%v, want +%v", i, now.Sub(t0), due.Sub(t0), now.Sub(t0)+50*ms)
		}
	}

	s = schedule{}
	cfg = Config{Latency: 10 * ms, BytesPerSec: 1e6} // 1000 bytes = 1 ms
	for i := range 10 {
		due := s.next(t0, 1000, cfg, 0) // all read at once
		if want := t0.Add(time.Duration(i+1)*ms + 10*ms); !due.Equal(want) {
			t.Fatalf("chunk %d due at +%v, want +%v", i, due.Sub(t0), want.Sub(t0))
		}
	}
	// After an idle gap the link is free again.
	if due := s.next(t0.Add(time.Second), 1000, cfg, 0); !due.Equal(t0.Add(time.Second + 11*ms)) {
		t.Fatalf("after idle: due at +%v", due.Sub(t0))
	}

	s = schedule{}
	cfg = Config{Latency: 10 * ms, Jitter: 5 * ms}
	rng := rand.New(rand.NewPCG(1, 1))
	var last time.Time
	for i := range 1000 {
		now := t0.Add(time.Duration(i) * 100 * time.Microsecond)
		due := s.next(now, 100, cfg, 2*rng.Float64()-1)
		if due.Before(last) {
			t.Fatalf("chunk %d due before its predecessor", i)
		}
		if d := due.Sub(now); d < 5*ms {
			t.Fatalf("chunk %d delayed %v < Latency-Jitter", i, d)
		}
		last = due
	}
	// Jitter larger than latency never gives a negative delay.
	s = schedule{}
	if due := s.next(t0, 1, Config{Latency: ms, Jitter: 10 * ms}, -1); due.Before(t0) {
		t.Fatal("due before read")
	}
}

// TestPipelinedThroughput shows in the log that a long latency does not cap
// throughput at chunk/latency (the bound is asserted in TestSchedule; no
// upper timing bound here).
func TestPipelinedThroughput(t *testing.T) {
	const size = 8 << 20
	sink := make(chan int64, 1)
	target := server(t, func(c net.Conn) { n, _ := io.Copy(io.Discard, c); sink <- n })
	r := relay(t, target, Config{Latency: 50 * time.Millisecond})
	c := dial(t, r.Addr())
	start := time.Now()
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	if n := <-sink; n != size {
		t.Fatalf("got %d bytes", n)
	}
	el := time.Since(start)
	if el < 50*time.Millisecond {
		t.Errorf("8 MiB in %v, less than the latency", el)
	}
	t.Logf("8 MiB through a 50 ms link in %v (%.0f MB/s); stop-and-wait with 64 KiB chunks would take %v",
		el, size/el.Seconds()/1e6, time.Duration(size/chunkSize)*50*time.Millisecond)
}

// TestBandwidthLowerBound: a capped link cannot be faster than its cap.
func TestBandwidthLowerBound(t *testing.T) {
	const size, bw = 2 << 20, 20e6 // 2 MiB at 20 MB/s: at least ~105 ms
	sink := make(chan int64, 1)
	target := server(t, func(c net.Conn) { n, _ := io.Copy(io.Discard, c); sink <- n })
	r := relay(t, target, Config{BytesPerSec: bw})
	c := dial(t, r.Addr())
	start := time.Now()
	c.Write(make([]byte, size))
	c.(*net.TCPConn).CloseWrite()
	if n := <-sink; n != size {
		t.Fatalf("got %d bytes", n)
	}
	el := time.Since(start)
	if min := time.Duration(float64(size-chunkSize) / bw * float64(time.Second)); el < min {
		t.Errorf("2 MiB in %v at a %v B/s cap, want >= %v", el, bw, min)
	}
	t.Logf("2 MiB in %v: %.1f MB/s (cap %.0f MB/s)", el, size/el.Seconds()/1e6, bw/1e6)
}

func BenchmarkBandwidth(b *testing.B) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"unlimited", Config{}},
		{"cap100MBps", Config{BytesPerSec: 100e6}},
		{"Ethernet", Ethernet},
		{"WiFi7", WiFi7},
	} {
		b.Run(tc.name, func(b *testing.B) {
			sink := make(chan int64, 1)
			target := server(b, func(c net.Conn) { n, _ := io.Copy(io.Discard, c); sink <- n })
			r := relay(b, target, tc.cfg)
			c := dial(b, r.Addr())
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			c.(*net.TCPConn).CloseWrite()
			<-sink
			el := time.Since(start)
			b.ReportMetric(float64(b.N*len(buf))/el.Seconds()/1e6, "MB/s-delivered")
			if tc.cfg.BytesPerSec > 0 {
				b.ReportMetric(tc.cfg.BytesPerSec/1e6, "MB/s-cap")
			}
		})
	}
}

func TestCutAll(t *testing.T) {
	r := relay(t, server(t, echo), Config{Latency: time.Millisecond})
	c := dial(t, r.Addr())
	c.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	r.CutAll()
	_, err := c.Read(buf)
	if err == nil {
		t.Fatal("read after CutAll succeeded")
	}
	// New connections still work.
	c2 := dial(t, r.Addr())
	c2.Write([]byte("y"))
	if _, err := io.ReadFull(c2, buf); err != nil || buf[0] != 'y' {
		t.Fatalf("after CutAll: %q %v", buf, err)
	}
}

func TestHalfClose(t *testing.T) {
	// The server answers only after the client's EOF: CloseWrite must pass.
	target := server(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		c.Write(bytes.ToUpper(b))
	})
	r := relay(t, target, Config{Latency: time.Millisecond})
	c := dial(t, r.Addr())
	c.Write([]byte("hello"))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "HELLO" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestTargetDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	r := relay(t, addr, Config{})
	c, err := net.DialTimeout("tcp", r.Addr(), 5*time.Second)
	if err != nil {
		return // reset before the handshake completed: also a failure to reach the target
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("read through a relay to a closed port succeeded")
	}
}

func TestListenRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{{Latency: -1}, {Jitter: -1}, {BytesPerSec: -5}} {
		if r, err := Listen("127.0.0.1:1", cfg); err == nil {
			r.Close()
			t.Errorf("Listen(%+v) succeeded", cfg)
		}
	}
}

func TestPresets(t *testing.T) {
	if WiFi7.RTT() != 2*time.Millisecond || WiFi7.BytesPerSec != 250e6 {
		t.Errorf("WiFi7 %+v", WiFi7)
	}
	if Ethernet.RTT() != 200*time.Microsecond || Ethernet.BytesPerSec != 125e6 {
		t.Errorf("Ethernet %+v", Ethernet)
	}
}

// TestCloseStopsEverything closes a relay with connections in every state
// (idle, mid-transfer with chunks queued behind a long latency, half-closed)
// and checks that no goroutine is left.
func TestCloseStopsEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	target := server(t, echo)
	r, err := Listen(target, Config{Latency: time.Hour, BytesPerSec: 1e9})
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for i := range 4 {
		c, err := net.Dial("tcp", r.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		switch i {
		case 1:
			c.Write(make([]byte, 1<<20)) // queued for an hour
		case 2:
			c.Write([]byte("x"))
			c.(*net.TCPConn).CloseWrite()
		}
	}
	time.Sleep(50 * time.Millisecond) // let the relay accept and dial
	done := make(chan error, 1)
	go func() { done <- r.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Error("a client connection stayed open after Close")
		}
		c.Close()
	}
	if _, err := net.DialTimeout("tcp", r.Addr(), time.Second); err == nil {
		t.Error("relay still accepts after Close")
	}
	// The echo server's handlers end once the relay's side is closed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		// +1: the test server's accept loop.
		n := runtime.NumGoroutine()
		if n <= base+1 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines left (base %d):\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
