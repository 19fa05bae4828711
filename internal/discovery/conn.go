package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/pion/logging"
	"github.com/pion/mdns/v2"
	"golang.org/x/net/ipv4"
)

// mdnsPort and mdnsGroup are where every mDNS message goes (RFC 6762 §3).
const mdnsPort = 5353

var mdnsGroup = net.IPv4(224, 0, 0, 251)

// ErrNoInterface means no interface can carry mDNS.
var ErrNoInterface = errors.New("discovery: no up, multicast-capable interface with an IPv4 address (give --mdns-iface NAME)")

// Interfaces returns the interfaces to use for mDNS: the named ones (which
// may include loopback, for tests), or when names is empty every interface
// that is up, multicast-capable, not loopback and has an IPv4 address.
func Interfaces(names []string) ([]net.Interface, error) {
	if len(names) > 0 {
		var out []net.Interface
		for _, n := range names {
			ifi, err := net.InterfaceByName(n)
			if err != nil {
				return nil, fmt.Errorf("discovery: interface %q: %w", n, err)
			}
			if ifi.Flags&net.FlagUp == 0 {
				return nil, fmt.Errorf("discovery: interface %q is down", n)
			}
			if ifi.Flags&(net.FlagMulticast|net.FlagLoopback) == 0 {
				return nil, fmt.Errorf("discovery: interface %q cannot multicast", n)
			}
			if ipv4Of(*ifi) == nil {
				return nil, fmt.Errorf("discovery: interface %q has no IPv4 address", n)
			}
			out = append(out, *ifi)
		}
		return out, nil
	}
	all, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("discovery: list interfaces: %w", err)
	}
	var out []net.Interface
	for _, ifi := range all {
		if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagMulticast == 0 || ifi.Flags&net.FlagLoopback != 0 {
			continue
		}
		if ipv4Of(ifi) == nil {
			continue
		}
		out = append(out, ifi)
	}
	if len(out) == 0 {
		return nil, ErrNoInterface
	}
	return out, nil
}

// InterfacesWithIP returns the interfaces that hold ip; a coordinator bound
// to one address advertises only where that address is reachable.
func InterfacesWithIP(ip net.IP) ([]string, error) {
	all, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, ifi := range all {
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				names = append(names, ifi.Name)
				break
			}
		}
	}
	return names, nil
}

// ParseInterfaces splits a --mdns-iface value ("eth0,wlan0").
func ParseInterfaces(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func ipv4Of(ifi net.Interface) net.IP {
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip4 := n.IP.To4(); ip4 != nil {
				return ip4
			}
		}
	}
	return nil
}

// openConn opens a pion mDNS conn on 0.0.0.0:5353 (shared with any other
// responder on the host, avahi-daemon included) over ifs.
func openConn(ifs []net.Interface, log *slog.Logger, opts ...mdns.ServerOption) (*mdns.Conn, *ipv4.PacketConn, error) {
	lc := net.ListenConfig{Control: reusePort}
	pc, err := lc.ListenPacket(context.Background(), "udp4", fmt.Sprintf("0.0.0.0:%d", mdnsPort))
	if err != nil {
		return nil, nil, fmt.Errorf("discovery: listen on UDP %d: %w", mdnsPort, err)
	}
	p4 := ipv4.NewPacketConn(pc)
	loopback := false
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagLoopback != 0 {
			loopback = true
		}
	}
	opts = append([]mdns.ServerOption{
		mdns.WithInterfaces(ifs...),
		mdns.WithIncludeLoopback(loopback),
		mdns.WithLoggerFactory(slogFactory{log}),
	}, opts...)
	conn, err := mdns.NewServer(p4, nil, opts...)
	if err != nil {
		pc.Close()
		return nil, nil, fmt.Errorf("discovery: start mDNS on %s: %w", ifNames(ifs), err)
	}
	return conn, p4, nil
}

func ifNames(ifs []net.Interface) string {
	var n []string
	for _, i := range ifs {
		n = append(n, i.Name)
	}
	return strings.Join(n, ",")
}

// slogFactory routes pion's logging to slog. pion warns about every packet
// it cannot send (an interface going down warns each second), so its
// warnings go to debug and only its errors to warn.
type slogFactory struct{ log *slog.Logger }

func (f slogFactory) NewLogger(scope string) logging.LeveledLogger {
	l := f.log
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return slogLeveled{l.With("subsystem", "mdns")}
}

type slogLeveled struct{ l *slog.Logger }

func (s slogLeveled) Trace(msg string)                  {}
func (s slogLeveled) Tracef(format string, args ...any) {}
func (s slogLeveled) Debug(msg string)                  { s.l.Debug(msg) }
func (s slogLeveled) Debugf(format string, args ...any) {
	if s.l.Enabled(context.Background(), slog.LevelDebug) {
		s.l.Debug(fmt.Sprintf(format, args...))
	}
}
func (s slogLeveled) Info(msg string)                  { s.l.Debug(msg) }
func (s slogLeveled) Infof(format string, args ...any) { s.Debugf(format, args...) }
func (s slogLeveled) Warn(msg string)                  { s.l.Debug(msg) }
func (s slogLeveled) Warnf(format string, args ...any) { s.Debugf(format, args...) }
func (s slogLeveled) Error(msg string)                 { s.l.Warn(msg) }
func (s slogLeveled) Errorf(format string, args ...any) {
	s.l.Warn(fmt.Sprintf(format, args...))
}
