package modelstore

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testChunk = 64 << 10

func writeModel(t *testing.T, dir string, files map[string][]byte) string {
	t.Helper()
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// copyModel writes every missing chunk of m from src into s.
func copyModel(t *testing.T, s *Store, m *Manifest, src map[string][]byte) {
	t.Helper()
	for _, f := range m.Files {
		w, err := s.NewWriter(f, m.ChunkSize)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range w.Missing() {
			off := int64(i) * m.ChunkSize
			if err := w.WriteChunk(i, src[f.Name][off:off+m.ChunkLen(f, i)]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDedupAndMaterialize(t *testing.T) {
	weights := randBytes(3*testChunk + 123)
	files := map[string][]byte{
		"a.safetensors": weights,
		"b.safetensors": weights, // same content under another name
		"config.json":   []byte(`{"architectures":["LlamaForCausalLM"]}`),
	}
	dir := writeModel(t, t.TempDir(), files)
	m, err := Build("m1", dir, testChunk, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Format != FormatSafetensors || len(m.Files) != 3 {
		t.Fatalf("got format %s with %d files, want safetensors with 3", m.Format, len(m.Files))
	}
	s, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	copyModel(t, s, m, files)
	if err := s.PutManifest(m); err != nil {
		t.Fatal(err)
	}
	blobs, _ := os.ReadDir(filepath.Join(s.Root(), "blobs"))
	if len(blobs) != 2 {
		t.Fatalf("got %d blobs, want 2 (the shared file stored once)", len(blobs))
	}
	p, err := s.Materialize(m)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(p, "b.safetensors"))
	if !bytes.Equal(got, weights) {
		t.Fatal("materialized file differs")
	}
	if err := s.Remove("m1"); err != nil {
		t.Fatal(err)
	}
	blobs, _ = os.ReadDir(filepath.Join(s.Root(), "blobs"))
	if len(blobs) != 0 {
		t.Fatalf("got %d blobs after remove, want 0", len(blobs))
	}
}

func ggufBytes(n int) []byte {
	b := randBytes(n)
	copy(b, "GGUF")
	return b
}

func TestBadChunkRejectedAndResume(t *testing.T) {
	data := ggufBytes(5*testChunk + 7)
	path := filepath.Join(t.TempDir(), "m.gguf")
	os.WriteFile(path, data, 0o600)
	m, err := Build("m", path, testChunk, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := m.Files[0]
	s, _ := Open(t.TempDir(), 0)
	w, err := s.NewWriter(f, m.ChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(data[:testChunk])
	bad[100] ^= 1
	if err := w.WriteChunk(0, bad); !errors.Is(err, ErrChunkMismatch) {
		t.Fatalf("corrupted chunk: got %v, want ErrChunkMismatch", err)
	}
	for _, i := range []int{0, 2, 4} {
		off := int64(i) * testChunk
		if err := w.WriteChunk(i, data[off:off+m.ChunkLen(f, i)]); err != nil {
			t.Fatal(err)
		}
	}
	w.Close() // interrupted transfer
	if s.Has(f.SHA256) {
		t.Fatal("incomplete file is visible")
	}
	w, err = s.NewWriter(f, m.ChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if got := w.Missing(); len(got) != 3 || got[0] != 1 || got[1] != 3 || got[2] != 5 {
		t.Fatalf("resume: missing %v, want [1 3 5]", got)
	}
	for _, i := range w.Missing() {
		off := int64(i) * testChunk
		if err := w.WriteChunk(i, data[off:off+m.ChunkLen(f, i)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(s.BlobPath(f.SHA256))
	if !bytes.Equal(got, data) {
		t.Fatal("committed blob differs")
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), "partial")); len(ents) != 0 {
		t.Fatalf("partial files left: %d", len(ents))
	}
}

func TestWholeFileChecksumMismatchNeverVisible(t *testing.T) {
	data := ggufBytes(2 * testChunk)
	path := filepath.Join(t.TempDir(), "m.gguf")
	os.WriteFile(path, data, 0o600)
	m, _ := Build("m", path, testChunk, nil)
	f := m.Files[0]
	f.SHA256 = "00" + f.SHA256[2:] // chunks verify, the whole file does not
	s, _ := Open(t.TempDir(), 0)
	w, _ := s.NewWriter(f, m.ChunkSize)
	for _, i := range w.Missing() {
		w.WriteChunk(i, data[int64(i)*testChunk:int64(i+1)*testChunk])
	}
	if err := w.Commit(); !errors.Is(err, ErrChecksum) {
		t.Fatalf("got %v, want ErrChecksum", err)
	}
	if s.Has(f.SHA256) {
		t.Fatal("file with a bad checksum is visible")
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), "partial")); len(ents) != 0 {
		t.Fatalf("partial files left: %d", len(ents))
	}
}

func TestQuota(t *testing.T) {
	data := ggufBytes(4 * testChunk)
	path := filepath.Join(t.TempDir(), "m.gguf")
	os.WriteFile(path, data, 0o600)
	m, _ := Build("m", path, testChunk, nil)
	s, _ := Open(t.TempDir(), 3*testChunk)
	err := s.CheckQuota(m)
	var qe *QuotaError
	if !errors.As(err, &qe) || !errors.Is(err, ErrQuota) {
		t.Fatalf("got %v, want a QuotaError", err)
	}
	if _, err := s.NewWriter(m.Files[0], m.ChunkSize); !errors.Is(err, ErrQuota) {
		t.Fatalf("NewWriter: got %v, want ErrQuota", err)
	}
	for _, d := range []string{"blobs", "partial"} {
		if ents, _ := os.ReadDir(filepath.Join(s.Root(), d)); len(ents) != 0 {
			t.Fatalf("%s not empty after a quota error", d)
		}
	}
	t.Log(err)
}

func TestBuildRejects(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x.bin"), []byte("not gguf"), 0o600)
	if _, err := Build("x", filepath.Join(dir, "x.bin"), testChunk, nil); err == nil {
		t.Fatal("non-GGUF file accepted")
	}
	if _, err := Build("x", dir, testChunk, nil); err == nil {
		t.Fatal("directory without safetensors accepted")
	}
	if err := ValidName("../etc"); err == nil {
		t.Fatal("bad name accepted")
	}
}

// FuzzManifest: manifests come from the network; Validate must reject
// anything unsafe without panicking, and what it accepts stays in bounds.
func FuzzManifest(f *testing.F) {
	f.Add([]byte(`{"name":"m","format":"gguf","chunk_size":65536,"files":[{"name":"m.gguf","size":1,"sha256":"` + strings.Repeat("a", 64) + `","chunks":["` + strings.Repeat("b", 64) + `"]}]}`))
	f.Add([]byte(`{"name":"../x","format":"gguf","chunk_size":1,"files":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Manifest
		if json.Unmarshal(b, &m) != nil || m.Validate() != nil {
			return
		}
		for _, fl := range m.Files {
			if fl.Name != filepath.Base(fl.Name) || strings.Contains(fl.Name, "/") {
				t.Fatalf("accepted file name %q", fl.Name)
			}
			for i := range fl.Chunks {
				if n := m.ChunkLen(fl, i); n <= 0 || n > m.ChunkSize {
					t.Fatalf("chunk %d of %d bytes", i, n)
				}
			}
		}
		if err := ValidName(m.Name); err != nil {
			t.Fatal(err)
		}
	})
}

// TestPieceResume: a transfer interrupted inside a chunk continues from
// the written part after a restart, and a bad piece is caught when the
// chunk is verified.
func TestPieceResume(t *testing.T) {
	data := ggufBytes(3 * testChunk)
	path := filepath.Join(t.TempDir(), "m.gguf")
	os.WriteFile(path, data, 0o600)
	m, _ := Build("m", path, testChunk, nil)
	f := m.Files[0]
	s, _ := Open(t.TempDir(), 0)
	w, _ := s.NewWriter(f, m.ChunkSize)
	chunk := func(i int) []byte { return data[i*testChunk : (i+1)*testChunk] }
	if err := w.WritePiece(0, 0, chunk(0)); err != nil {
		t.Fatal(err)
	}
	if err := w.VerifyChunk(0, chunk(0)); err != nil {
		t.Fatal(err)
	}
	half := testChunk / 2
	w.WritePiece(1, 0, chunk(1)[:half])
	w.Close() // interrupted inside chunk 1

	w, _ = s.NewWriter(f, m.ChunkSize)
	i, got, ok := w.PendingPiece()
	if !ok || i != 1 || !bytes.Equal(got, chunk(1)[:half]) {
		t.Fatalf("PendingPiece = %d, %d bytes, %v; want chunk 1 with %d bytes", i, len(got), ok, half)
	}
	bad := bytes.Clone(chunk(1)[half:])
	bad[0] ^= 1
	w.WritePiece(1, int64(half), bad)
	if err := w.VerifyChunk(1, append(got, bad...)); !errors.Is(err, ErrChunkMismatch) {
		t.Fatalf("bad piece: got %v, want ErrChunkMismatch", err)
	}
	w.WritePiece(1, int64(half), chunk(1)[half:])
	if err := w.VerifyChunk(1, chunk(1)); err != nil {
		t.Fatal(err)
	}
	w.WritePiece(2, 0, chunk(2))
	w.VerifyChunk(2, chunk(2))
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(s.BlobPath(f.SHA256)); !bytes.Equal(got, data) {
		t.Fatal("committed blob differs")
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), "partial")); len(ents) != 0 {
		t.Fatalf("partial files left: %d", len(ents))
	}
}
