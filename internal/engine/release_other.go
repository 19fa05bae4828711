//go:build !unix

package engine

// releasePages does nothing where the file is read into memory rather
// than mapped.
func releasePages([]byte) {}
