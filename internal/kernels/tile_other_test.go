//go:build !amd64

package kernels

type tileVariant struct {
	name string
	im   *impl
}

// tileVariants: there are no tile kernels on this platform.
func tileVariants(*impl) []tileVariant { return nil }
