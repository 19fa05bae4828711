package accel

import (
	"os"
	"syscall"
)

// access(2) mode bits; syscall does not export them on every architecture.
const (
	accessW = 0x2
	accessR = 0x4
)

// liveNode inspects a real device node. access(2) checks the real uid and
// honours ACLs, which is what opening the device will do for an ordinary
// (not setuid) daemon.
func liveNode(path string) (NodeInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return NodeInfo{}, err
	}
	info := NodeInfo{Mode: fi.Mode()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.UID, info.GID = st.Uid, st.Gid
	}
	info.CanOpen = syscall.Access(path, accessR|accessW) == nil
	return info, nil
}
