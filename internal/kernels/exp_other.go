//go:build !amd64

package kernels

// There is no assembly Exp or SwiGLU on this platform (and active is
// always genericImpl here); these keep Exp and SwiGLU compiling.

func expAsm(x []float32)       { expGeneric(x) }
func swigluAsm(h, u []float32) { swigluGeneric(h, u) }
