package cli

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// stopWithParent asks the kernel to send this process SIGTERM when its
// parent exits, so `npumesh up` started by a wrapper (go run, a script)
// never outlives it with a cluster nobody can stop.
func stopWithParent() error {
	ppid := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0, 0, 0); err != nil {
		return err
	}
	if os.Getppid() != ppid { // the parent died before prctl took effect
		return syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}
	return nil
}
