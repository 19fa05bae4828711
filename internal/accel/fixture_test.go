package accel

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// fixture is a machine tree copied to a temp dir with its manifest applied.
type fixture struct {
	root  string
	uid   uint32
	gids  []uint32
	nodes map[string]NodeInfo // by live path, CanOpen filled from the user line
}

// opts returns discovery options whose Node check answers from the manifest.
func (f *fixture) opts() Options {
	return Options{Root: f.root, Node: f.node}
}

func (f *fixture) node(p string) (NodeInfo, error) {
	n, ok := f.nodes[p]
	if !ok {
		return NodeInfo{}, &fs.PathError{Op: "stat", Path: p, Err: fs.ErrNotExist}
	}
	if _, err := os.Stat(filepath.Join(f.root, p)); err != nil {
		return NodeInfo{}, err // a corruption test removed it
	}
	return n, nil
}

// canOpen decides read-write access from mode bits the way the kernel does
// for a process without capabilities other than uid 0.
func canOpen(mode fs.FileMode, uid, gid, userUID uint32, userGIDs []uint32) bool {
	const rw = 0o6
	switch {
	case userUID == 0:
		return true
	case uid == userUID:
		return (mode.Perm()>>6)&rw == rw
	case slices.Contains(userGIDs, gid):
		return (mode.Perm()>>3)&rw == rw
	default:
		return mode.Perm()&rw == rw
	}
}

// loadFixture copies testdata/<name>/root to a temp dir and applies MANIFEST.
func loadFixture(t testing.TB, name string) *fixture {
	t.Helper()
	src := filepath.Join("testdata", name)
	f := &fixture{root: t.TempDir(), nodes: map[string]NodeInfo{}}
	if err := copyTree(filepath.Join(src, "root"), f.root); err != nil {
		t.Fatalf("copy fixture %s: %v", name, err)
	}
	mf, err := os.Open(filepath.Join(src, "MANIFEST"))
	if err != nil {
		t.Fatalf("fixture %s: %v", name, err)
	}
	defer mf.Close()
	type pendingNode struct {
		path     string
		mode     fs.FileMode
		uid, gid uint32
	}
	var pending []pendingNode
	sc := bufio.NewScanner(mf)
	for ln := 1; sc.Scan(); ln++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		bad := func() { t.Fatalf("%s/MANIFEST:%d: bad line %q", src, ln, line) }
		switch fields[0] {
		case "user":
			if len(fields) < 2 {
				bad()
			}
			ids := mustUints(t, fields[1:])
			f.uid, f.gids = ids[0], ids[1:]
		case "link":
			if len(fields) != 3 {
				bad()
			}
			p := filepath.Join(f.root, filepath.FromSlash(fields[1]))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(fields[2], p); err != nil {
				t.Fatalf("%s/MANIFEST:%d: %v", src, ln, err)
			}
		case "node":
			if len(fields) != 5 {
				bad()
			}
			mode, err := strconv.ParseUint(fields[2], 8, 32)
			if err != nil {
				bad()
			}
			ids := mustUints(t, fields[3:])
			pending = append(pending, pendingNode{"/" + fields[1], fs.FileMode(mode) | fs.ModeDevice | fs.ModeCharDevice, ids[0], ids[1]})
			p := filepath.Join(f.root, filepath.FromSlash(fields[1]))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		default:
			bad()
		}
	}
	for _, n := range pending {
		f.nodes[n.path] = NodeInfo{Mode: n.mode, UID: n.uid, GID: n.gid, CanOpen: canOpen(n.mode, n.uid, n.gid, f.uid, f.gids)}
	}
	return f
}

func mustUints(t testing.TB, s []string) []uint32 {
	t.Helper()
	out := make([]uint32, len(s))
	for i, x := range s {
		v, err := strconv.ParseUint(x, 10, 32)
		if err != nil {
			t.Fatalf("bad id %q", x)
		}
		out[i] = uint32(v)
	}
	return out
}

// copyTree copies regular files and directories (fixtures hold no links),
// hard-linking files where it can.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type().IsRegular():
			if d.Name() == ".keep" {
				return nil
			}
			// Hard links make a fixture copy cheap. Tests never modify a
			// file in place (fixture.write replaces it), so the committed
			// file stays intact.
			if err := os.Link(p, target); err == nil {
				return nil
			}
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := os.Create(target)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, in); err != nil {
				out.Close()
				return err
			}
			return out.Close()
		default:
			return fmt.Errorf("%s: unexpected file type %v in fixture", p, d.Type())
		}
	})
}

// write replaces a file in a fixture copy (by live path).
func (f *fixture) write(t testing.TB, p, content string) {
	t.Helper()
	full := filepath.Join(f.root, filepath.FromSlash(p))
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(full); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) remove(t testing.TB, p string) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(f.root, filepath.FromSlash(p))); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) symlink(t testing.TB, p, target string) {
	t.Helper()
	f.remove(t, p)
	if err := os.Symlink(target, filepath.Join(f.root, filepath.FromSlash(p))); err != nil {
		t.Fatal(err)
	}
}
