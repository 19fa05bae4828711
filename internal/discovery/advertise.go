package discovery

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/pion/mdns/v2"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/net/ipv4"
)

// TTLs of what we announce, the same as pion's answers to questions:
// 75 minutes for the shared PTR record (RFC 6762 §10), 120 s for the
// records that name this host and its port (SRV, TXT, A), so that a
// coordinator that vanished without a goodbye is forgotten within minutes.
const (
	hostTTL  = 120
	otherTTL = 4500
)

// AdvertiserConfig says what an Advertiser announces and where.
type AdvertiserConfig struct {
	// Service describes this process: Role, Port and CAFingerprint are
	// required; Instance defaults to InstanceName(role, host name, name,
	// the first 8 digits of the fingerprint). Addr is ignored: each
	// interface answers with its own address.
	Service Service
	// Interfaces to advertise on; empty means all (see Interfaces).
	Interfaces []string
	Logger     *slog.Logger
}

// Advertiser announces one service with DNS-SD over mDNS and answers
// questions for it until Stop. Start and Stop may be called from any
// goroutine; Stop waits until the advertiser's goroutines are gone.
type Advertiser struct {
	log      *slog.Logger
	svc      Service
	instance mdns.ServiceInstance
	ifNames  []string

	mu      sync.Mutex // guards the fields below
	started bool
	conn    *mdns.Conn
	pc      *ipv4.PacketConn
	ifs     []net.Interface
	stop    chan struct{} // closed by Stop
	done    chan struct{} // closed when the announce goroutine returned
}

// NewAdvertiser checks cfg and returns an advertiser that is not started.
func NewAdvertiser(cfg AdvertiserConfig) (*Advertiser, error) {
	s := cfg.Service
	svcType, err := serviceType(s.Role)
	if err != nil {
		return nil, err
	}
	kv, err := s.txtRecord()
	if err != nil {
		return nil, err
	}
	if s.Instance == "" {
		host, _ := os.Hostname()
		s.Instance = InstanceName(s.Role, host, s.Name, s.CAFingerprint[:8])
	}
	if len(s.Instance) > 63 {
		return nil, fmt.Errorf("discovery: instance name %q is longer than 63 bytes", s.Instance)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var txt []mdns.TXTEntry
	for _, e := range kv {
		txt = append(txt, mdns.NewTXTString(e[0], e[1]))
	}
	return &Advertiser{
		log: log.With("subsystem", "mdns", "service", svcType, "instance", s.Instance),
		svc: s,
		instance: mdns.ServiceInstance{
			Instance: s.Instance,
			Service:  svcType,
			Domain:   "local",
			// Every advertiser names its own host (the instance name), so
			// that it never contends with the machine's avahi-daemon, or
			// another npumesh process on it, for <hostname>.local.
			Host: s.Instance + ".local.",
			Port: uint16(s.Port),
			Text: txt,
		},
		ifNames: cfg.Interfaces,
	}, nil
}

// Instance is the DNS-SD instance name announced.
func (a *Advertiser) Instance() string { return a.svc.Instance }

// Start binds UDP 5353 on the chosen interfaces, answers questions for the
// service from now on and announces it twice, a second apart (RFC 6762
// §8.3). It returns an error when no interface can carry mDNS.
func (a *Advertiser) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.started {
		return errors.New("discovery: advertiser already started")
	}
	ifs, err := Interfaces(a.ifNames)
	if err != nil {
		return err
	}
	conn, pc, err := openConn(ifs, a.log,
		mdns.WithLocalNames(a.svc.Instance+".local"),
		mdns.WithService(a.instance),
		mdns.WithResponseTTL(hostTTL),
	)
	if err != nil {
		return err
	}
	a.started, a.conn, a.pc, a.ifs = true, conn, pc, ifs
	a.stop, a.done = make(chan struct{}), make(chan struct{})
	go a.run(a.stop, a.done)
	a.log.Info("advertising on the LAN", "interfaces", ifNames(ifs), "port", a.svc.Port)
	return nil
}

// Stop sends a goodbye (the records with TTL 0, so that caches on the LAN
// forget them at once), stops answering and waits for the advertiser's
// goroutines. It is safe to call more than once, and before Start.
func (a *Advertiser) Stop() {
	a.mu.Lock()
	if !a.started {
		a.mu.Unlock()
		return
	}
	stop, done := a.stop, a.done
	a.stop = nil
	a.mu.Unlock()
	if stop != nil {
		close(stop)
	}
	<-done
}

// run owns the announcements: two at start, a goodbye at stop, then it
// closes the connection (which waits for pion's read loops).
func (a *Advertiser) run(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	a.announce(false)
	t := time.NewTimer(time.Second)
	select {
	case <-t.C:
		a.announce(false)
	case <-stop:
		t.Stop()
	}
	<-stop
	a.announce(true)
	if err := a.conn.Close(); err != nil {
		a.log.Debug("close mDNS conn", "err", err)
	}
	a.log.Info("stopped advertising")
}

// announce multicasts the service's records on every interface, with the
// interface's own address; goodbye sends them with TTL 0.
func (a *Advertiser) announce(goodbye bool) {
	dst := &net.UDPAddr{IP: mdnsGroup, Port: mdnsPort}
	for _, ifi := range a.ifs {
		ip := ipv4Of(ifi)
		if ip == nil {
			continue
		}
		msg, err := a.records(ip, goodbye)
		if err != nil {
			a.log.Warn("build announcement", "err", err)
			return
		}
		// IP_PKTINFO picks the interface per message, so these writes do
		// not change the socket's multicast interface under pion.
		if _, err := a.pc.WriteTo(msg, &ipv4.ControlMessage{IfIndex: ifi.Index}, dst); err != nil {
			a.log.Debug("send announcement", "interface", ifi.Name, "err", err)
		}
	}
}

// records packs an unsolicited response: PTR, SRV, TXT and the host's A
// record (the last three unique, so with the cache-flush bit).
func (a *Advertiser) records(ip net.IP, goodbye bool) ([]byte, error) {
	ttl := func(t uint32) uint32 {
		if goodbye {
			return 0
		}
		return t
	}
	const cacheFlush = dnsmessage.Class(1 << 15)
	svcName, err := dnsmessage.NewName(a.instance.Service + ".local.")
	if err != nil {
		return nil, err
	}
	instName, err := dnsmessage.NewName(escapeLabel(a.instance.Instance) + "." + a.instance.Service + ".local.")
	if err != nil {
		return nil, err
	}
	host, err := dnsmessage.NewName(a.instance.Host)
	if err != nil {
		return nil, err
	}
	var txt []string
	for _, e := range a.instance.Text {
		txt = append(txt, e.Key+"="+string(e.Value))
	}
	var a4 [4]byte
	copy(a4[:], ip.To4())
	m := dnsmessage.Message{
		Header: dnsmessage.Header{Response: true, Authoritative: true},
		Answers: []dnsmessage.Resource{
			{Header: dnsmessage.ResourceHeader{Name: svcName, Type: dnsmessage.TypePTR, Class: dnsmessage.ClassINET, TTL: ttl(otherTTL)},
				Body: &dnsmessage.PTRResource{PTR: instName}},
			{Header: dnsmessage.ResourceHeader{Name: instName, Type: dnsmessage.TypeSRV, Class: dnsmessage.ClassINET | cacheFlush, TTL: ttl(hostTTL)},
				Body: &dnsmessage.SRVResource{Target: host, Port: a.instance.Port}},
			{Header: dnsmessage.ResourceHeader{Name: instName, Type: dnsmessage.TypeTXT, Class: dnsmessage.ClassINET | cacheFlush, TTL: ttl(hostTTL)},
				Body: &dnsmessage.TXTResource{TXT: txt}},
			{Header: dnsmessage.ResourceHeader{Name: host, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET | cacheFlush, TTL: ttl(hostTTL)},
				Body: &dnsmessage.AResource{A: a4}},
		},
	}
	return m.Pack()
}

// escapeLabel escapes dots and backslashes of an instance name for
// dnsmessage (RFC 6763 §4.3). InstanceName never makes them.
func escapeLabel(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '.' || s[i] == '\\' {
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return string(b)
}
