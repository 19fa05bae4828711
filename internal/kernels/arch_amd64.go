package kernels

// asmImpl returns the AVX2+FMA kernel set, or nil if the CPU lacks it.
func asmImpl() *impl { return nil }
