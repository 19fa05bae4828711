//go:build !amd64

package kernels

// asmImpl returns nil: there are no assembly kernels on this platform yet.
func asmImpl() *impl { return nil }
