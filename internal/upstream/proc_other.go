//go:build !linux

package upstream

import (
	"os"
	"os/exec"
	"syscall"
)

const (
	sigTerm = syscall.SIGTERM
	sigKill = syscall.SIGKILL
)

// setProcAttr does nothing off Linux: npumesh ships for Linux only, and other
// systems lack Pdeathsig.
func setProcAttr(*exec.Cmd) {}

// signalGroup signals the server process alone off Linux.
func signalGroup(cmd *exec.Cmd, sig os.Signal) error { return cmd.Process.Signal(sig) }
