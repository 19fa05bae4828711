package clustertest

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/testdata"
)

// installedBinary is where the units expect the binary (docs/deploy.md).
const installedBinary = "/usr/local/bin/npumesh"

// TestSystemdUnits checks deploy/systemd/*.service with systemd's own tools:
// `systemd-analyze verify` must accept each unit without a single warning,
// and `systemd-analyze security --offline` must rate its exposure at most
// 2.5 ("OK"). verify insists that ExecStart's binary exists, so each unit is
// checked as a copy whose ExecStart points at the test's build of the binary.
// The ExecStart command line, expanded with deploy/examples/ROLE.env as
// systemd would, must parse as flags of the real binary.
//
// This checks the unit files; it does not start them (no systemd runs as
// PID 1 here), so the hardening is verified for syntax and rating only.
func TestSystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testdata.Missing(t, "systemd-analyze (apt-get install systemd)")
	}
	bin := Binary(t)
	root := testdata.Root(t)
	for _, role := range []string{"coordinator", "node"} {
		t.Run(role, func(t *testing.T) {
			unitName := "npumesh-" + role + ".service"
			unit, err := os.ReadFile(filepath.Join(root, "deploy", "systemd", unitName))
			if err != nil {
				t.Fatal(err)
			}
			keys := unitKeys(unit)
			if got, want := keys["EnvironmentFile"], "/etc/npumesh/"+role+".env"; got != want {
				t.Errorf("EnvironmentFile=%s, want %s", got, want)
			}
			words := strings.Fields(keys["ExecStart"])
			if len(words) < 2 || words[0] != installedBinary || words[1] != role {
				t.Fatalf("ExecStart=%s, want %s %s ...", keys["ExecStart"], installedBinary, role)
			}

			dir := t.TempDir()
			copyPath := filepath.Join(dir, unitName)
			if err := os.WriteFile(copyPath, bytes.ReplaceAll(unit, []byte(installedBinary), []byte(bin)), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(analyze, "verify", "--man=no", copyPath).CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) > 0 {
				t.Errorf("systemd-analyze verify %s: err %v, output:\n%s", unitName, err, out)
			}
			out, err = exec.Command(analyze, "security", "--offline=true", "--threshold=25", copyPath).CombinedOutput()
			if err != nil {
				t.Errorf("systemd-analyze security %s: %v (exposure above 2.5?):\n%s", unitName, err, out)
			} else if m := regexp.MustCompile(`Overall exposure level for .*`).Find(out); m != nil {
				t.Logf("%s", m)
			}

			env := readEnvFile(t, filepath.Join(root, "deploy", "examples", role+".env"))
			args := expandExec(t, words[1:], env)
			cmd := exec.Command(bin, append(args, "--help")...)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("ExecStart flags, expanded with the example %s.env, do not parse: %v\nargs %q\n%s", role, err, args, out)
			}
		})
	}
}

// unitKeys returns the last value of each key of a unit file, with
// backslash-continued lines joined.
func unitKeys(unit []byte) map[string]string {
	keys := map[string]string{}
	var cur string
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur == "" && (line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[")) {
			continue
		}
		if more, ok := strings.CutSuffix(line, `\`); ok {
			cur += more + " "
			continue
		}
		cur += line
		if k, v, ok := strings.Cut(cur, "="); ok {
			keys[k] = v
		}
		cur = ""
	}
	return keys
}

// readEnvFile reads KEY=VALUE lines (no quoting: the examples use none).
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.ContainsAny(v, `"'`) {
			t.Fatalf("%s: line %q is not an unquoted KEY=VALUE", path, line)
		}
		env[k] = v
	}
	return env
}

// expandExec expands ExecStart words as systemd does: "${VAR}" is exactly
// one argument, "$VAR" splits at whitespace into zero or more. Every
// variable must be set in env, and a "${VAR}" must not be empty (systemd
// would pass an empty argument).
func expandExec(t *testing.T, words []string, env map[string]string) []string {
	t.Helper()
	var args []string
	for _, w := range words {
		switch {
		case strings.HasPrefix(w, "${") && strings.HasSuffix(w, "}"):
			k := w[2 : len(w)-1]
			v, ok := env[k]
			if !ok || v == "" {
				t.Fatalf("ExecStart uses %s, which the example env file does not set", w)
			}
			args = append(args, v)
		case strings.HasPrefix(w, "$"):
			v, ok := env[w[1:]]
			if !ok {
				t.Fatalf("ExecStart uses %s, which the example env file does not set", w)
			}
			args = append(args, strings.Fields(v)...)
		case strings.Contains(w, "$"):
			t.Fatalf("ExecStart word %q mixes text and a variable; keep each variable a word of its own", w)
		default:
			args = append(args, w)
		}
	}
	return args
}
