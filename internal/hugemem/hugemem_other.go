//go:build !unix

package hugemem

// Huge is the huge-page size the buffers would be aligned to on unix.
const Huge = 2 << 20

// Alloc returns n zeroed bytes from the Go heap.
func Alloc(n int) ([]byte, error) { return make([]byte, n), nil }

// Free leaves a buffer from Alloc to the collector.
func Free([]byte) {}
