// Package modelstore keeps model files content-addressed on local disk: blobs
// named by their SHA-256 (a file that two models share is stored once),
// manifests that list a model's files with their sizes, SHA-256 and fixed-size
// chunk hashes, and verified chunked writes that resume after an interruption
// and never make a file visible before its checksum matches. It moves no
// bytes over the network and loads no model: callers bring the chunks.
package modelstore

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// DefaultChunkSize is the unit of transfer and verification.
const DefaultChunkSize = 4 << 20

// Model formats.
const (
	FormatGGUF        = "gguf"
	FormatSafetensors = "safetensors"
)

// File is one file of a model.
type File struct {
	// Name is the file's name inside the model ("model.gguf",
	// "model-00001-of-00002.safetensors", "config.json").
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Chunks are the hex SHA-256 of each ChunkSize piece, the last one
	// shorter.
	Chunks []string `json:"chunks"`
}

// Manifest describes a model: its files and how they are chunked.
type Manifest struct {
	Name      string `json:"name"`
	Format    string `json:"format"`
	ChunkSize int64  `json:"chunk_size"`
	Files     []File `json:"files"`
}

// Size is the total size of the model's files.
func (m *Manifest) Size() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// uniqueSize counts each distinct blob once.
func (m *Manifest) uniqueSize() int64 {
	seen := map[string]bool{}
	var n int64
	for _, f := range m.Files {
		if !seen[f.SHA256] {
			seen[f.SHA256] = true
			n += f.Size
		}
	}
	return n
}

// NumChunks is the number of chunks of a file of size bytes.
func NumChunks(size, chunkSize int64) int {
	if size == 0 {
		return 0
	}
	return int((size + chunkSize - 1) / chunkSize)
}

// ChunkLen is the length of chunk i of f.
func (m *Manifest) ChunkLen(f File, i int) int64 {
	off := int64(i) * m.ChunkSize
	return min(m.ChunkSize, f.Size-off)
}

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
	hexRE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidName reports whether s can name a model.
func ValidName(s string) error {
	if !nameRE.MatchString(s) || strings.Contains(s, "..") {
		return fmt.Errorf("model name %q: use 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit", s)
	}
	return nil
}

// Validate checks a manifest received from elsewhere.
func (m *Manifest) Validate() error {
	if err := ValidName(m.Name); err != nil {
		return err
	}
	if m.Format != FormatGGUF && m.Format != FormatSafetensors {
		return fmt.Errorf("model %s: unknown format %q", m.Name, m.Format)
	}
	if m.ChunkSize < 64<<10 || m.ChunkSize > 64<<20 {
		return fmt.Errorf("model %s: chunk size %d out of range", m.Name, m.ChunkSize)
	}
	if len(m.Files) == 0 {
		return fmt.Errorf("model %s: no files", m.Name)
	}
	names := map[string]bool{}
	for _, f := range m.Files {
		if f.Name != filepath.Base(f.Name) || f.Name == "." || f.Name == ".." || strings.HasPrefix(f.Name, ".") || f.Name == "" {
			return fmt.Errorf("model %s: bad file name %q", m.Name, f.Name)
		}
		if names[f.Name] {
			return fmt.Errorf("model %s: file %q twice", m.Name, f.Name)
		}
		names[f.Name] = true
		if !hexRE.MatchString(f.SHA256) || f.Size < 0 {
			return fmt.Errorf("model %s: file %s: bad sha256 or size", m.Name, f.Name)
		}
		if len(f.Chunks) != NumChunks(f.Size, m.ChunkSize) {
			return fmt.Errorf("model %s: file %s: %d chunk hashes for %d bytes", m.Name, f.Name, len(f.Chunks), f.Size)
		}
		for _, c := range f.Chunks {
			if !hexRE.MatchString(c) {
				return fmt.Errorf("model %s: file %s: bad chunk hash", m.Name, f.Name)
			}
		}
	}
	return nil
}

// Entrypoint is the path a loader opens inside the model's directory: the
// GGUF file, or the directory itself for safetensors.
func (m *Manifest) Entrypoint(dir string) string {
	if m.Format == FormatGGUF {
		for _, f := range m.Files {
			if strings.HasSuffix(strings.ToLower(f.Name), ".gguf") {
				return filepath.Join(dir, f.Name)
			}
		}
	}
	return dir
}

// Build hashes a GGUF file or a Hugging Face safetensors directory (its
// regular top-level files) into a manifest. progress, when set, is called
// with the bytes hashed so far.
func Build(name, path string, chunkSize int64, progress func(done, total int64)) (*Manifest, error) {
	if chunkSize <= 0 {
		chunkSize = DefaultChunkSize
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	m := &Manifest{Name: name, ChunkSize: chunkSize}
	var paths []string
	if st.IsDir() {
		ents, err := os.ReadDir(path)
		if err != nil {
			return nil, err
		}
		hasST := false
		for _, e := range ents {
			if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			if strings.HasSuffix(e.Name(), ".safetensors") {
				hasST = true
			}
			paths = append(paths, filepath.Join(path, e.Name()))
		}
		if !hasST {
			return nil, fmt.Errorf("%s holds no .safetensors file; give a GGUF file or a Hugging Face safetensors directory", path)
		}
		if _, err := os.Stat(filepath.Join(path, "config.json")); err != nil {
			return nil, fmt.Errorf("%s has no config.json; a safetensors model directory needs it", path)
		}
		m.Format = FormatSafetensors
	} else {
		if err := checkGGUF(path); err != nil {
			return nil, err
		}
		paths = []string{path}
		m.Format = FormatGGUF
	}
	sort.Strings(paths)
	var total, done int64
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil {
			total += st.Size()
		}
	}
	for _, p := range paths {
		f, err := hashFile(p, chunkSize, func(n int64) {
			done += n
			if progress != nil {
				progress(done, total)
			}
		})
		if err != nil {
			return nil, err
		}
		m.Files = append(m.Files, f)
	}
	return m, m.Validate()
}

func checkGGUF(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != "GGUF" {
		return fmt.Errorf("%s is not a GGUF file (no GGUF magic); give a GGUF file or a Hugging Face safetensors directory", path)
	}
	return nil
}

func hashFile(path string, chunkSize int64, progress func(int64)) (File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return File{}, err
	}
	defer fh.Close()
	out := File{Name: filepath.Base(path)}
	whole := sha256.New()
	buf := make([]byte, chunkSize)
	for {
		n, err := io.ReadFull(fh, buf)
		if n > 0 {
			whole.Write(buf[:n])
			s := sha256.Sum256(buf[:n])
			out.Chunks = append(out.Chunks, hex.EncodeToString(s[:]))
			out.Size += int64(n)
			progress(int64(n))
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return File{}, fmt.Errorf("read %s: %w", path, err)
		}
	}
	out.SHA256 = hex.EncodeToString(whole.Sum(nil))
	return out, nil
}

// Digest identifies a manifest's content.
func (m *Manifest) Digest() string {
	b, _ := json.Marshal(m)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
