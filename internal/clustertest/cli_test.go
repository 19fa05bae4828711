package clustertest

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/testdata"
)

// TestCLIErrors checks that bad usage prints one line saying what to do and
// exits non-zero.
func TestCLIErrors(t *testing.T) {
	bin := Binary(t)
	dir := t.TempDir()
	// A valid coordinator bundle, to reach the API-address check.
	if out, err := exec.Command(bin, "ca", "init", "--dir", filepath.Join(dir, "ca")).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "cert", "issue", "--ca", filepath.Join(dir, "ca"), "--name", "c", "--role", "coordinator", "--out", filepath.Join(dir, "c")).CombinedOutput(); err != nil {
		t.Fatalf("cert issue: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "cert", "issue", "--ca", filepath.Join(dir, "ca"), "--name", "n", "--role", "node", "--out", filepath.Join(dir, "n")).CombinedOutput(); err != nil {
		t.Fatalf("cert issue: %v\n%s", err, out)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, "unknown command"},
		{[]string{"node"}, "required"},
		{[]string{"up", "--nodes", "0"}, "--nodes"},
		{[]string{"up", "--nodes", "x"}, "--help"},
		{[]string{"coordinator", "--tls-dir", filepath.Join(dir, "missing")}, "npumesh cert issue"},
		{[]string{"coordinator", "--tls-dir", filepath.Join(dir, "c"), "--api", "0.0.0.0:0"}, "--tls-cert"},
		{[]string{"cert", "issue", "--ca", filepath.Join(dir, "ca"), "--name", "Bad Name!", "--role", "node", "--out", filepath.Join(dir, "x")}, "name"},
		{[]string{"cert", "issue", "--ca", filepath.Join(dir, "ca"), "--name", "n", "--role", "admin", "--out", filepath.Join(dir, "x")}, "role"},
		{[]string{"ca", "init", "--dir", filepath.Join(dir, "ca")}, "exists"},
		{[]string{"generate", "--api", "http://127.0.0.1:1", "hi"}, "cannot reach"},
		{[]string{"model", "synth", "-o", filepath.Join(dir, "m.gguf"), "--type", "q9"}, "unknown weight type"},
		{[]string{"bench", "engine", "--model", filepath.Join(dir, "m.gguf"), "--rounds", "0"}, "--rounds"},
		{[]string{"node", "--coordinator", "127.0.0.1:1", "--tls-dir", filepath.Join(dir, "c"), "--model", "/nonexistent.gguf"}, "nonexistent"},
		{[]string{"node", "--coordinator", "127.0.0.1:1", "--tls-dir", filepath.Join(dir, "n"), "--metrics-listen", "", "--model", filepath.Join(testdata.Root(t), "internal", "demo", "stories260K.gguf"), "--quantize", "q9_9"}, "q9_9"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if err == nil {
				t.Fatalf("exit 0, want non-zero; stdout %q", stdout.String())
			}
			msg := strings.TrimRight(stderr.String(), "\n")
			if strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "npumesh: ") {
				t.Fatalf("stderr is not one npumesh: line:\n%s", msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("stderr %q does not mention %q", msg, tc.want)
			}
		})
	}
}
