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
// before collecting. The buffer starts on a 2 MiB boundary and is advised
// to use transparent huge pages (granted where the system's setting is
// "always" or "madvise"): a decode step streams every weight once, and
// with 4 KiB pages it takes a TLB miss and a page walk every 4 KiB, dear in
// a virtual machine. With the weights in huge pages, decode steps of the
// 1.1B q4_0 model took 15% less time at batch 1 and 18% less at batch 8
// (docs/performance.md, session 4).
func allocWeights(n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	const huge = 2 << 20
	// Map a huge page more, then unmap what lies before the first
	// boundary and after the buffer. (MmapPtr, not Mmap: x/sys's Mmap
	// records whole mappings and would refuse to unmap a part.)
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(n+huge), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes for weights: %w", n, err)
	}
	head := (huge - uintptr(p)%huge) % huge
	if head > 0 {
		_ = unix.MunmapPtr(p, head)
	}
	if tail := huge - head; tail > 0 {
		_ = unix.MunmapPtr(unsafe.Add(p, head+uintptr(n)), tail)
	}
	b := unsafe.Slice((*byte)(unsafe.Add(p, head)), n)
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE) // advice: without it the pages are small
	return b, nil
}

// freeWeights unmaps a buffer from allocWeights; nothing may use it after.
func freeWeights(b []byte) {
	if len(b) > 0 {
		_ = unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)))
	}
}
