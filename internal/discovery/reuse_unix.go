//go:build unix

package discovery

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePort lets several mDNS responders on one host (this process,
// avahi-daemon, a browser) all bind UDP 5353; each receives every
// multicast message.
func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
