//go:build !unix

package safetensors

import (
	"fmt"
	"os"
)

// Open reads the file at path and parses it. Where mmap is not available
// the file is read into memory.
func Open(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	return Parse(path, data)
}
