//go:build !amd64

package kernels

// There is no assembly Exp, SwiGLU or Softmax on this platform (and
// active is always genericImpl here); these keep them compiling.

func expAsm(x []float32)       { expGeneric(x) }
func swigluAsm(h, u []float32) { swigluGeneric(h, u) }

func maxF32AVX2(x *float32, n int) float32               { panic("kernels: no assembly here") }
func sumF32AVX2(x *float32, n int) float32               { panic("kernels: no assembly here") }
func shiftScaleAVX2(x *float32, n int, sub, mul float32) { panic("kernels: no assembly here") }
func sumSqF32AVX2(x *float32, n int) float32             { panic("kernels: no assembly here") }
func normScaleAVX2(out *float32, x *float32, w *float32, n int, inv float32) {
	panic("kernels: no assembly here")
}
