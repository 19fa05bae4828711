//go:build unix

package kernels

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// bandwidthBuffer returns n bytes (a multiple of 8) for MeasureBandwidth,
// as uint64s, and the function that frees them. They are anonymous memory
// on a 2 MiB boundary advised to use transparent huge pages, as the
// engine's weights are (engine.allocWeights): the probe then reads memory
// the way a decode step reads its weights, without a TLB miss every 4 KiB.
// (On this VM a two-thread read of 512 MiB ran at 28.6-30.4 GB/s in small
// pages and 31.6-33.7 in huge ones.) Where the mapping fails it falls back
// to the Go heap.
func bandwidthBuffer(n int) ([]uint64, func()) {
	const huge = 2 << 20
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(n+huge), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return make([]uint64, n/8), func() {}
	}
	head := (huge - uintptr(p)%huge) % huge
	buf := unsafe.Slice((*byte)(unsafe.Add(p, head)), n)
	_ = unix.Madvise(buf, unix.MADV_HUGEPAGE) // advice: without it the pages are small
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(buf))), n/8), func() {
		_ = unix.MunmapPtr(p, uintptr(n+huge))
	}
}
