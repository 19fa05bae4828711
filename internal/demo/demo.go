// Package demo ships the built-in demo model (stories260K, MIT; see
// NOTICE.md) inside the binary and writes it out for the engine to mmap.
package demo

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

//go:embed stories260K.gguf
var model []byte

// ID is the model id the demo model is served under.
const ID = "stories260K"

// SHA256 is the hex digest of the embedded file.
const SHA256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"

// Install writes the demo model into dir (unless an intact copy is there)
// and returns its path.
func Install(dir string) (string, error) {
	path := filepath.Join(dir, ID+".gguf")
	if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, model) {
		return path, nil
	}
	if sum := sha256.Sum256(model); hex.EncodeToString(sum[:]) != SHA256 {
		return "", fmt.Errorf("demo: embedded model is corrupt (sha256 %x)", sum)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".demo-*")
	if err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(model); err != nil {
		tmp.Close()
		return "", fmt.Errorf("demo: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	return path, nil
}
