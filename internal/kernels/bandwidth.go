package kernels

import (
	"runtime"
	"sync"
	"time"
	"unsafe"

	"github.com/npumesh/npumesh/internal/hugemem"
)

// bandwidthBytes is the buffer MeasureBandwidth streams: far larger than
// any L3 of the machines we run on (32 MiB here, up to a few hundred MiB on
// big server parts would still be beaten by repeated passes over 512 MiB).
const bandwidthBytes = 512 << 20

// MeasureBandwidth returns the sustained memory read bandwidth in bytes per
// second: every core streams its share of a 512 MiB buffer, the way a
// MatVec reads its weights, and the best of a few passes counts. It
// allocates and touches the buffer, so it takes about a second; call it
// once (npumesh bench engine uses it for the bandwidth bound of decoding).
// The buffer is in huge pages where the system grants them, as the
// engine's weights are (package hugemem): the probe then reads memory the
// way a decode step reads its weights. (On this VM a two-thread read of
// 512 MiB ran at 28.6-30.4 GB/s in small pages and 31.6-33.7 in huge ones.)
func MeasureBandwidth() float64 {
	threads := runtime.GOMAXPROCS(0)
	mem, err := hugemem.Alloc(bandwidthBytes)
	if err != nil {
		mem = make([]byte, bandwidthBytes) // small pages, then
	} else {
		defer hugemem.Free(mem)
	}
	buf := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(mem))), len(mem)/8)
	for i := range buf {
		buf[i] = uint64(i) // touch every page so no pass pays page faults
	}
	share := len(buf) / threads &^ 15 // whole 128-byte lines per thread
	var best float64
	var sink uint64
	var mu sync.Mutex // guards sink
	for range 4 {
		var wg sync.WaitGroup
		start := time.Now()
		for t := range threads {
			part := buf[t*share : (t+1)*share]
			wg.Go(func() {
				s := readSum(part)
				mu.Lock()
				sink ^= s
				mu.Unlock()
			})
		}
		wg.Wait()
		if bw := float64(threads*share*8) / time.Since(start).Seconds(); bw > best {
			best = bw
		}
	}
	runtime.KeepAlive(sink)
	return best
}

// readSumGeneric XORs p together with eight independent streams.
func readSumGeneric(p []uint64) uint64 {
	var a, b, c, d, e, f, g, h uint64
	for i := 0; i+8 <= len(p); i += 8 {
		q := p[i : i+8 : i+8]
		a ^= q[0]
		b ^= q[1]
		c ^= q[2]
		d ^= q[3]
		e ^= q[4]
		f ^= q[5]
		g ^= q[6]
		h ^= q[7]
	}
	return a ^ b ^ c ^ d ^ e ^ f ^ g ^ h
}
