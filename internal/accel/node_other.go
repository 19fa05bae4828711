//go:build !linux

package accel

import "os"

// liveNode inspects a device node where access(2) is not wired up: it tries
// to open the node read-write, which is what the runtime will do.
func liveNode(path string) (NodeInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return NodeInfo{}, err
	}
	info := NodeInfo{Mode: fi.Mode()}
	if f, err := os.OpenFile(path, os.O_RDWR, 0); err == nil {
		f.Close()
		info.CanOpen = true
	}
	return info, nil
}
