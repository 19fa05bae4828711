package modelstore

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// Errors callers tell apart.
var (
	// ErrQuota: the store's disk quota cannot hold the model.
	ErrQuota = errors.New("model store quota exceeded")
	// ErrChunkMismatch: a chunk's SHA-256 is not the manifest's; fetch it
	// again, preferably from another source.
	ErrChunkMismatch = errors.New("chunk checksum mismatch")
	// ErrChecksum: a whole file's SHA-256 is not the manifest's.
	ErrChecksum = errors.New("file checksum mismatch")
	// ErrBusy: another writer holds the blob.
	ErrBusy = errors.New("blob is being written by another transfer")
)

// QuotaError says how much was needed and how much is left.
type QuotaError struct {
	Model       string
	Need, Free  int64
	Quota, Used int64
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("model %s needs %s more disk but the model store has %s free (quota %s, %s used); raise the quota or remove models",
		e.Model, HumanBytes(e.Need), HumanBytes(max(e.Free, 0)), HumanBytes(e.Quota), HumanBytes(e.Used))
}

func (e *QuotaError) Unwrap() error { return ErrQuota }

// Store is a content-addressed model store under one root directory:
//
//	blobs/<sha256>           complete, verified files (read-only)
//	partial/<sha256>.part    a file being written, at its full (sparse) size
//	partial/<sha256>.chunks  indexes of its verified chunks (uint32 LE each)
//	partial/<sha256>.piece   the chunk being received and how much of it is
//	                         written (two uint64 LE), so a resumed transfer
//	                         continues inside the chunk
//	manifests/<name>.json    model manifests
//	models/<name>/<file>     hard links to the blobs, what loaders open
//
// Safe for concurrent use.
type Store struct {
	root  string
	quota int64 // 0: none

	mu      sync.Mutex // guards writing
	writing map[string]bool
}

// Open creates the directories under root. quota bounds blobs plus partial
// files in bytes (0: no quota).
func Open(root string, quota int64) (*Store, error) {
	for _, d := range []string{"blobs", "partial", "manifests", "models"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, fmt.Errorf("model store: %w", err)
		}
	}
	return &Store{root: root, quota: quota, writing: map[string]bool{}}, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

// BlobPath is where a complete file with this SHA-256 lives.
func (s *Store) BlobPath(sha string) string { return filepath.Join(s.root, "blobs", sha) }

func (s *Store) partPath(sha string) string  { return filepath.Join(s.root, "partial", sha+".part") }
func (s *Store) sidePath(sha string) string  { return filepath.Join(s.root, "partial", sha+".chunks") }
func (s *Store) piecePath(sha string) string { return filepath.Join(s.root, "partial", sha+".piece") }

// Has reports whether the complete blob is stored.
func (s *Store) Has(sha string) bool {
	if !hexRE.MatchString(sha) {
		return false
	}
	_, err := os.Stat(s.BlobPath(sha))
	return err == nil
}

// Used is the bytes held by blobs and partial files.
func (s *Store) Used() int64 {
	var n int64
	for _, d := range []string{"blobs", "partial"} {
		ents, _ := os.ReadDir(filepath.Join(s.root, d))
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".chunks") || strings.HasSuffix(e.Name(), ".piece") {
				continue
			}
			if fi, err := e.Info(); err == nil {
				n += fi.Size()
			}
		}
	}
	return n
}

// CheckQuota returns a *QuotaError when the files of m that are not yet
// stored (or reserved by a partial file) do not fit.
func (s *Store) CheckQuota(m *Manifest) error {
	if s.quota <= 0 {
		return nil
	}
	seen := map[string]bool{}
	var need int64
	for _, f := range m.Files {
		if seen[f.SHA256] || s.Has(f.SHA256) {
			continue
		}
		seen[f.SHA256] = true
		if _, err := os.Stat(s.partPath(f.SHA256)); err == nil {
			continue // already reserved
		}
		need += f.Size
	}
	used := s.Used()
	if used+need > s.quota {
		return &QuotaError{Model: m.Name, Need: need, Free: s.quota - used, Quota: s.quota, Used: used}
	}
	return nil
}

// Writer writes one file chunk by chunk, in any order, verifying each
// chunk; Commit makes it visible only when the whole file's SHA-256
// matches. A Writer opened again after a crash resumes: chunks recorded as
// verified (and still verifying) are not needed again, nor the written
// part of the chunk that was being received. WritePiece and VerifyChunk
// may be called from two goroutines (receiving and hashing); the other
// methods are for one goroutine.
type Writer struct {
	mu        sync.Mutex // guards have, missing and the sidecar files
	s         *Store
	f         File
	chunkSize int64
	fh, side  *os.File
	have      []bool
	missing   int
	done      bool
	held      bool // the store's writing mark is ours
}

// NewWriter opens (or resumes) the partial file for f. When the blob is
// already stored, the Writer needs nothing and Commit is a no-op.
func (s *Store) NewWriter(f File, chunkSize int64) (*Writer, error) {
	if !hexRE.MatchString(f.SHA256) || len(f.Chunks) != NumChunks(f.Size, chunkSize) {
		return nil, fmt.Errorf("model store: bad file entry %q", f.Name)
	}
	s.mu.Lock()
	if s.writing[f.SHA256] {
		s.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", f.Name, ErrBusy)
	}
	s.writing[f.SHA256] = true
	s.mu.Unlock()
	w := &Writer{s: s, f: f, chunkSize: chunkSize, have: make([]bool, len(f.Chunks)), held: true}
	if s.Has(f.SHA256) {
		w.done = true
		return w, nil
	}
	if err := w.open(); err != nil {
		w.release()
		return nil, err
	}
	return w, nil
}

func (w *Writer) release() {
	w.held = false
	w.s.mu.Lock()
	delete(w.s.writing, w.f.SHA256)
	w.s.mu.Unlock()
}

func (w *Writer) open() error {
	s, f := w.s, w.f
	part := s.partPath(f.SHA256)
	_, statErr := os.Stat(part)
	if statErr != nil {
		if err := s.CheckQuota(&Manifest{Name: f.Name, Files: []File{f}}); err != nil {
			return err
		}
		os.Remove(s.sidePath(f.SHA256))
		os.Remove(s.piecePath(f.SHA256))
	}
	fh, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("model store: %w", err)
	}
	if err := fh.Truncate(f.Size); err != nil {
		fh.Close()
		os.Remove(part)
		return fmt.Errorf("model store: reserve %s: %w", HumanBytes(f.Size), err)
	}
	w.fh = fh
	// Resume: trust the sidecar only as far as the data still verifies.
	var verified []int
	if b, err := os.ReadFile(s.sidePath(f.SHA256)); err == nil {
		buf := make([]byte, w.chunkSize)
		for i := 0; i+4 <= len(b); i += 4 {
			idx := int(binary.LittleEndian.Uint32(b[i:]))
			if idx >= len(w.have) || w.have[idx] {
				continue
			}
			n := w.chunkLen(idx)
			if _, err := fh.ReadAt(buf[:n], int64(idx)*w.chunkSize); err != nil {
				continue
			}
			if sum := sha256.Sum256(buf[:n]); hex.EncodeToString(sum[:]) == f.Chunks[idx] {
				w.have[idx] = true
				verified = append(verified, idx)
			}
		}
	}
	// Rewrite the sidecar with what verified, then append to it.
	side, err := os.OpenFile(s.sidePath(f.SHA256), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		fh.Close()
		return fmt.Errorf("model store: %w", err)
	}
	for _, idx := range verified {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(idx))
		side.Write(b[:])
	}
	w.side = side
	for _, h := range w.have {
		if !h {
			w.missing++
		}
	}
	return nil
}

func (w *Writer) chunkLen(i int) int64 {
	return min(w.chunkSize, w.f.Size-int64(i)*w.chunkSize)
}

// Missing lists the chunk indexes still needed, in order.
func (w *Writer) Missing() []int {
	if w.done {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int
	for i, h := range w.have {
		if !h {
			out = append(out, i)
		}
	}
	return out
}

// HaveBytes is the size of the chunks already verified.
func (w *Writer) HaveBytes() int64 {
	if w.done {
		return w.f.Size
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var n int64
	for i, h := range w.have {
		if h {
			n += w.chunkLen(i)
		}
	}
	return n
}

// WriteChunk verifies chunk i against the manifest and writes it. A chunk
// that does not verify is not written; the error wraps ErrChunkMismatch.
func (w *Writer) WriteChunk(i int, data []byte) error {
	if w.done {
		return nil
	}
	if i < 0 || i >= len(w.have) {
		return fmt.Errorf("%s: chunk %d out of range", w.f.Name, i)
	}
	if int64(len(data)) != w.chunkLen(i) {
		return fmt.Errorf("%s: chunk %d is %d bytes, want %d: %w", w.f.Name, i, len(data), w.chunkLen(i), ErrChunkMismatch)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != w.f.Chunks[i] {
		return fmt.Errorf("%s: chunk %d: %w", w.f.Name, i, ErrChunkMismatch)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.have[i] {
		return nil
	}
	if _, err := w.fh.WriteAt(data, int64(i)*w.chunkSize); err != nil {
		return fmt.Errorf("model store: write %s: %w", w.f.Name, err)
	}
	return w.markLocked(i)
}

// markLocked records chunk i as verified; w.mu is held.
func (w *Writer) markLocked(i int) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(i))
	if _, err := w.side.Write(b[:]); err != nil {
		return fmt.Errorf("model store: %w", err)
	}
	w.have[i] = true
	w.missing--
	return nil
}

// WritePiece writes part of chunk i, at offset off within it, before the
// chunk is complete, and records how far the chunk got, so that a transfer
// interrupted inside the chunk can continue from there (PendingPiece).
// Nothing is verified yet: VerifyChunk does that once the chunk is whole.
func (w *Writer) WritePiece(i int, off int64, data []byte) error {
	if w.done {
		return nil
	}
	if i < 0 || i >= len(w.have) || off < 0 || off+int64(len(data)) > w.chunkLen(i) {
		return fmt.Errorf("%s: piece of chunk %d at %d out of range: %w", w.f.Name, i, off, ErrChunkMismatch)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.have[i] {
		return nil // never overwrite verified data
	}
	if _, err := w.fh.WriteAt(data, int64(i)*w.chunkSize+off); err != nil {
		return fmt.Errorf("model store: write %s: %w", w.f.Name, err)
	}
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	binary.LittleEndian.PutUint64(b[8:], uint64(off+int64(len(data))))
	if err := os.WriteFile(w.s.piecePath(w.f.SHA256), b[:], 0o600); err != nil {
		return fmt.Errorf("model store: %w", err)
	}
	return nil
}

// VerifyChunk checks chunk i, whose bytes (data) were written with
// WritePiece, and records it as verified. On a mismatch the chunk stays
// missing (its bytes are overwritten by the next attempt) and the error
// wraps ErrChunkMismatch.
func (w *Writer) VerifyChunk(i int, data []byte) error {
	if w.done {
		return nil
	}
	if i < 0 || i >= len(w.have) || int64(len(data)) != w.chunkLen(i) {
		return fmt.Errorf("%s: chunk %d: %w", w.f.Name, i, ErrChunkMismatch)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != w.f.Chunks[i] {
		return fmt.Errorf("%s: chunk %d: %w", w.f.Name, i, ErrChunkMismatch)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.have[i] {
		return nil
	}
	return w.markLocked(i)
}

// PendingPiece returns the chunk that an interrupted transfer was
// receiving and the bytes of it already written (not yet verified).
func (w *Writer) PendingPiece() (int, []byte, bool) {
	if w.done {
		return 0, nil, false
	}
	b, err := os.ReadFile(w.s.piecePath(w.f.SHA256))
	if err != nil || len(b) != 16 {
		return 0, nil, false
	}
	i, n := int(binary.LittleEndian.Uint64(b)), int64(binary.LittleEndian.Uint64(b[8:]))
	w.mu.Lock()
	defer w.mu.Unlock()
	if i < 0 || i >= len(w.have) || w.have[i] || n <= 0 || n >= w.chunkLen(i) {
		return 0, nil, false
	}
	data := make([]byte, n)
	if _, err := w.fh.ReadAt(data, int64(i)*w.chunkSize); err != nil {
		return 0, nil, false
	}
	return i, data, true
}

// Commit checks the whole file and moves it into blobs (fsync, rename,
// fsync of the directory). On a checksum mismatch the partial file is
// deleted and the error wraps ErrChecksum.
func (w *Writer) Commit() error {
	if w.done {
		w.close()
		return nil
	}
	if w.missing > 0 {
		return fmt.Errorf("%s: %d chunks missing", w.f.Name, w.missing)
	}
	if err := w.fh.Sync(); err != nil {
		return fmt.Errorf("model store: sync %s: %w", w.f.Name, err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(w.fh, 0, w.f.Size)); err != nil {
		return fmt.Errorf("model store: read back %s: %w", w.f.Name, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != w.f.SHA256 {
		w.Abort()
		return fmt.Errorf("%s: sha256 %s, want %s: %w", w.f.Name, got, w.f.SHA256, ErrChecksum)
	}
	w.fh.Chmod(0o400)
	part := w.s.partPath(w.f.SHA256)
	if err := os.Rename(part, w.s.BlobPath(w.f.SHA256)); err != nil {
		return fmt.Errorf("model store: %w", err)
	}
	syncDir(filepath.Join(w.s.root, "blobs"))
	w.close()
	os.Remove(w.s.sidePath(w.f.SHA256))
	os.Remove(w.s.piecePath(w.f.SHA256))
	w.done = true
	return nil
}

// Close keeps the partial file for a later resume.
func (w *Writer) Close() { w.close() }

func (w *Writer) close() {
	if w.fh != nil {
		w.fh.Close()
		w.fh = nil
	}
	if w.side != nil {
		w.side.Close()
		w.side = nil
	}
	if w.held {
		w.release()
	}
}

// Abort deletes the partial file and its sidecar.
func (w *Writer) Abort() {
	w.close()
	if !w.done {
		os.Remove(w.s.partPath(w.f.SHA256))
		os.Remove(w.s.sidePath(w.f.SHA256))
		os.Remove(w.s.piecePath(w.f.SHA256))
	}
}

// DiscardPartial deletes the partial files of m's missing blobs (after a
// quota failure, say), unless a writer holds them.
func (s *Store) DiscardPartial(m *Manifest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range m.Files {
		if s.writing[f.SHA256] {
			continue
		}
		os.Remove(s.partPath(f.SHA256))
		os.Remove(s.sidePath(f.SHA256))
		os.Remove(s.piecePath(f.SHA256))
	}
}

// Progress is the bytes of m already stored, blobs and verified chunks.
func (s *Store) Progress(m *Manifest) int64 {
	var n int64
	for _, f := range m.Files {
		if s.Has(f.SHA256) {
			n += f.Size
			continue
		}
		b, _ := os.ReadFile(s.sidePath(f.SHA256))
		n += int64(len(b)/4) * m.ChunkSize
	}
	return min(n, m.Size())
}

// ReadChunk reads chunk i of the stored blob sha into buf (ChunkSize long).
func (s *Store) ReadChunk(sha string, size, chunkSize int64, i int, buf []byte) ([]byte, error) {
	if !hexRE.MatchString(sha) {
		return nil, fmt.Errorf("bad sha256 %q", sha)
	}
	off := int64(i) * chunkSize
	if i < 0 || off >= size {
		return nil, fmt.Errorf("chunk %d out of range", i)
	}
	n := min(chunkSize, size-off)
	fh, err := os.Open(s.BlobPath(sha))
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := fh.ReadAt(buf, off); err != nil {
		return nil, err
	}
	return buf, nil
}

// PutManifest stores m (atomically).
func (s *Store) PutManifest(m *Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(s.root, "manifests", m.Name+".json"), b, 0o600)
}

// Manifest returns the stored manifest of name.
func (s *Store) Manifest(name string) (*Manifest, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(s.root, "manifests", name+".json"))
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", name, err)
	}
	return &m, m.Validate()
}

// Manifests lists the stored manifests by name.
func (s *Store) Manifests() ([]*Manifest, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "manifests"))
	if err != nil {
		return nil, err
	}
	var out []*Manifest
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		if m, err := s.Manifest(name); err == nil {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Complete reports whether every file of m is stored.
func (s *Store) Complete(m *Manifest) bool {
	for _, f := range m.Files {
		if !s.Has(f.SHA256) {
			return false
		}
	}
	return true
}

// Materialize lays out m's files under models/<name>/ as hard links to the
// blobs and returns the path a loader opens (Entrypoint).
func (s *Store) Materialize(m *Manifest) (string, error) {
	if !s.Complete(m) {
		return "", fmt.Errorf("model %s is not complete in the store", m.Name)
	}
	dir := filepath.Join(s.root, "models", m.Name)
	tmp := filepath.Join(s.root, "models", "."+m.Name+".tmp") // no model name starts with "."
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", err
	}
	for _, f := range m.Files {
		if err := os.Link(s.BlobPath(f.SHA256), filepath.Join(tmp, f.Name)); err != nil {
			os.RemoveAll(tmp)
			return "", fmt.Errorf("model store: %w", err)
		}
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	syncDir(filepath.Join(s.root, "models"))
	return m.Entrypoint(dir), nil
}

// Remove deletes the model's manifest and layout, and the blobs and
// partial files no other manifest uses.
func (s *Store) Remove(name string) error {
	m, err := s.Manifest(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	os.RemoveAll(filepath.Join(s.root, "models", name))
	if err := os.Remove(filepath.Join(s.root, "manifests", name+".json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if m == nil {
		return nil
	}
	inUse := map[string]bool{}
	others, _ := s.Manifests()
	for _, o := range others {
		for _, f := range o.Files {
			inUse[f.SHA256] = true
		}
	}
	for _, f := range m.Files {
		if !inUse[f.SHA256] {
			os.Remove(s.BlobPath(f.SHA256))
		}
	}
	s.DiscardPartial(&Manifest{Files: filterFiles(m.Files, func(f File) bool { return !inUse[f.SHA256] })})
	return nil
}

func filterFiles(fs []File, keep func(File) bool) []File {
	var out []File
	for _, f := range fs {
		if keep(f) {
			out = append(out, f)
		}
	}
	return out
}

// WriteFileAtomic writes a temporary file, fsyncs it, renames it over path
// and fsyncs the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// HumanBytes formats n as "1.5 GiB".
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for x := n / unit; x >= unit; x /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
