//go:build !amd64

package kernels

// asmImpl returns nil: there are no assembly kernels on this platform yet.
func asmImpl() *impl { return nil }

func readSum(p []uint64) uint64 { return readSumGeneric(p) }
