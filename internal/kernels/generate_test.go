package kernels

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedUpToDate regenerates the assembly and its stubs and fails
// if they differ from the committed files (first line, which records the
// command, aside): edit asmgen, then run `go generate`.
func TestGeneratedUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the generator")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	dir := t.TempDir()
	s, stubs := filepath.Join(dir, "kernels_amd64.s"), filepath.Join(dir, "stubs_amd64.go")
	cmd := exec.Command(gobin, "run", "./asmgen", "-out", s, "-stubs", stubs, "-pkg", "kernels")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run ./asmgen: %v\n%s", err, out)
	}
	for _, f := range []string{"kernels_amd64.s", "stubs_amd64.go"} {
		got, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		skipLine := func(b []byte) []byte { _, rest, _ := bytes.Cut(b, []byte("\n")); return rest }
		if !bytes.Equal(skipLine(got), skipLine(want)) {
			t.Errorf("%s differs from what asmgen generates: run go generate ./internal/kernels", f)
		}
	}
}
