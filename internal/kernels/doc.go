// Package kernels holds the numeric inner loops of the npumesh LLM engine:
// the ggml block formats (dequantize and quantize), quantized dot products,
// matrix-vector and batched matrix products, and the worker Pool that
// spreads them over cores.
//
// The products follow llama.cpp's CPU scheme: the activation vector is
// quantized once per call (to q8_0 for the 32-element block formats, to
// q8_K for the k-quants) and every weight block is then multiplied with
// integer arithmetic, scaled once per block. MatMul reads each weight row
// once for a whole batch and, for the quantized formats with assembly,
// multiplies it with four vectors per pass; its results equal MatVec's bit
// for bit, so batching never changes what a request generates.
//
// On amd64 with AVX2, FMA and F16C every MatVec type has an assembly row
// kernel, and all but q5_0 and q5_1 (whose bit unpacking leaves too few
// registers) a four-vector form too; the q8 activation quantizer is
// assembly as well. They are generated with avo by asmgen: edit asmgen
// (main.go: the row kernels; tile.go: the tile and packed kernels; exp.go:
// Exp and SwiGLU) and run `go generate ./internal/kernels`; a test fails
// when the committed kernels_amd64.s or stubs_amd64.go drift from it.
// Every other platform, and amd64 with NPUMESH_KERNELS=generic in the
// environment (read once at start) or after SetGeneric(true), uses the
// portable Go kernels. Both compute the same integer block sums; only the
// order of float32 additions differs.
//
// For q4_0 and q8_0 a loader may also re-arrange the weights once into a
// packed layout of eight interleaved rows (CanPack, PackInto), which
// MatMulPacked multiplies with plain vector loads and the same results
// as MatMul.
//
// Errors and panics: functions whose inputs come from a model file
// (Dequantize, Quantize, CanMatVec) report an unsupported type as an error
// or false. Inconsistent lengths (a weight slice that is not rows×row size,
// a dst that is too short, cols not a multiple of the block size) are
// programmer errors and panic with a message that names the function and
// the sizes; so does MatVec on a type CanMatVec rejects.
//
// This package is pure computation: it must not import the network stack,
// the engine or anything that does I/O beyond reading its environment once.
package kernels

//go:generate go run ./asmgen -out kernels_amd64.s -stubs stubs_amd64.go -pkg kernels
