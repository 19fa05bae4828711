//go:build unix

package engine

import (
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
