//go:build unix

package engine

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// releasePages tells the kernel that this process no longer needs the
// whole pages of b, a tensor in the file's read-only shared mapping that
// Options.Quantize has replaced: they leave the resident set (the page
// cache keeps them, and reading them again would fault them back in), so
// a converted model does not count its original weights twice.
func releasePages(b []byte) {
	if len(b) == 0 {
		return
	}
	ps := uintptr(os.Getpagesize())
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo, hi := (start+ps-1)&^(ps-1), (start+uintptr(len(b)))&^(ps-1)
	if hi <= lo {
		return
	}
	_ = unix.Madvise(b[lo-start:hi-start], unix.MADV_DONTNEED) // advice: failure costs only memory
}

// allocWeights returns n zeroed bytes of anonymous memory outside the Go
// heap, for weights the engine rearranges at load (pack.go): the heap
// would count them as live data and let garbage grow by as much again
// before collecting.
func allocWeights(n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes for weights: %w", n, err)
	}
	return b, nil
}

// freeWeights unmaps a buffer from allocWeights; nothing may use it after.
func freeWeights(b []byte) {
	if len(b) > 0 {
		_ = unix.Munmap(b)
	}
}
