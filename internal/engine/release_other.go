//go:build !unix

package engine

// releasePages does nothing where the file is read into memory rather
// than mapped.
func releasePages([]byte) {}

// allocWeights returns n zeroed bytes for weights the engine rearranges at
// load (pack.go).
func allocWeights(n int) ([]byte, error) { return make([]byte, n), nil }

// freeWeights leaves a buffer from allocWeights to the collector.
func freeWeights([]byte) {}
