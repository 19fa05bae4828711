//go:build !unix

package discovery

import "syscall"

// reusePort is a no-op off Unix: npumesh ships for Linux only.
func reusePort(_, _ string, _ syscall.RawConn) error { return nil }
