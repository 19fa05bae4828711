package kernels

// Exp and SwiGLU use these whenever the active kernel set is the assembly
// one (asmImpl, which requires AVX2).

// expAsm runs expAVX2 over the whole multiples of 8; the 8s it leaves
// (a lane for math.Exp) and the last len(x)%8 go to expGeneric.
func expAsm(x []float32) {
	m := len(x) &^ 7
	for i := 0; i < m; i += 8 {
		i += expAVX2(&x[i], m-i)
		if i < m {
			expGeneric(x[i : i+8])
		}
	}
	expGeneric(x[m:])
}

// swigluAsm is expAsm's scheme for SwiGLU; len(u) == len(h).
func swigluAsm(h, u []float32) {
	u = u[:len(h)]
	m := len(h) &^ 7
	for i := 0; i < m; i += 8 {
		i += swigluAVX2(&h[i], &u[i], m-i)
		if i < m {
			swigluGeneric(h[i:i+8], u[i:i+8])
		}
	}
	swigluGeneric(h[m:], u[m:])
}
