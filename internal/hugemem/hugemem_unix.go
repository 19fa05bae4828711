//go:build unix

package hugemem

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Huge is the huge-page size the buffers are aligned to.
const Huge = 2 << 20

// Alloc returns n zeroed bytes starting on a Huge boundary, advised to use
// huge pages, or nil for n = 0. Free releases them; the Go heap never
// sees them, so the collector neither counts nor scans them.
func Alloc(n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	// Map a huge page more, then unmap what lies before the first
	// boundary and after the buffer. (MmapPtr, not Mmap: x/sys's Mmap
	// records whole mappings and would refuse to unmap a part.)
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(n+Huge), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes: %w", n, err)
	}
	head := (Huge - uintptr(p)%Huge) % Huge
	if head > 0 {
		_ = unix.MunmapPtr(p, head)
	}
	if tail := Huge - head; tail > 0 {
		_ = unix.MunmapPtr(unsafe.Add(p, head+uintptr(n)), tail)
	}
	b := unsafe.Slice((*byte)(unsafe.Add(p, head)), n)
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE) // advice: without it the pages are small
	return b, nil
}

// Free unmaps a buffer from Alloc; nothing may use it after.
func Free(b []byte) {
	if len(b) > 0 {
		_ = unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)))
	}
}
