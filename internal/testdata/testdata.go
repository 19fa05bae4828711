// Package testdata locates the project's shared test data (../shared/testdata
// beside the repository) for tests. It must not be imported by shipped code.
package testdata

import (
	"os"
	"path/filepath"
	"testing"
)

// Root returns the absolute path of the repository root (the directory
// holding go.mod), found by walking up from the working directory.
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Dir returns the absolute path of shared/testdata/<sub...>. When it is
// missing the test fails under CI=true and is skipped elsewhere, saying
// where the data is expected.
func Dir(t testing.TB, sub ...string) string {
	t.Helper()
	p := filepath.Join(append([]string{Root(t), "..", "shared", "testdata"}, sub...)...)
	if _, err := os.Stat(p); err != nil {
		Missing(t, "test data %s (the shared/ folder beside the repository): %v", p, err)
	}
	return p
}

// Missing reports a missing component: a failure under CI=true, a skip
// elsewhere. The message should say what to install.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("missing under CI=true: "+format, args...)
	}
	t.Skipf("skipped, missing: "+format, args...)
}
