package accel

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Small sysfs attributes are a page at most; /proc/cpuinfo on a large machine is
// a few hundred KiB. The limits only protect against a garbage tree.
const (
	maxAttrBytes = 64 << 10
	maxProcBytes = 8 << 20
)

// reader reads files below root by their live path ("/sys/class/..."), and
// collects non-fatal problems. It is used by one goroutine at a time.
type reader struct {
	root  string
	warns []string
}

func newReader(root string) *reader {
	if root == "" {
		root = "/"
	}
	return &reader{root: root}
}

// path maps a live absolute path to the file under root.
func (r *reader) path(p string) string { return filepath.Join(r.root, p) }

func (r *reader) warnf(format string, args ...any) {
	r.warns = append(r.warns, fmt.Sprintf(format, args...))
}

// readLimited reads at most limit bytes of the file at live path p.
// A missing file returns an error wrapping fs.ErrNotExist and no warning;
// every other error is the caller's to report.
func (r *reader) readLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(r.path(p))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

// str returns the trimmed content of a small attribute. ok is false when the
// file is absent (silently) or unreadable (with a warning).
func (r *reader) str(p string) (string, bool) {
	b, err := r.readLimited(p, maxAttrBytes)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			r.warnf("read %s: %v", p, errShort(err))
		}
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}

// int reads a decimal integer attribute; garbage is reported and yields ok=false.
func (r *reader) int(p string) (int64, bool) {
	s, ok := r.str(p)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		r.warnf("parse %s: not an integer: %q", p, clip(s))
		return 0, false
	}
	return v, true
}

// uint reads an unsigned decimal attribute (energy and busy counters).
func (r *reader) uint(p string) (uint64, bool) {
	s, ok := r.str(p)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		r.warnf("parse %s: not an unsigned integer: %q", p, clip(s))
		return 0, false
	}
	return v, true
}

// linkBase returns the last element of a symlink's target ("intel_vpu" for
// device/driver -> ../../bus/pci/drivers/intel_vpu), or "" when there is none.
func (r *reader) linkBase(p string) string {
	t, err := os.Readlink(r.path(p))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			r.warnf("readlink %s: %v", p, errShort(err))
		}
		return ""
	}
	return filepath.Base(t)
}

// glob lists live paths matching a pattern under root, sorted naturally
// (cpu2 before cpu10).
func (r *reader) glob(pattern string) []string {
	m, err := filepath.Glob(filepath.Join(globEscape(r.root), pattern))
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(m))
	for _, p := range m {
		rel, err := filepath.Rel(r.root, p)
		if err != nil {
			continue
		}
		out = append(out, "/"+filepath.ToSlash(rel))
	}
	sortNatural(out)
	return out
}

// globEscape quotes the glob metacharacters of a literal path, so that a root
// like /srv/node[1] still works.
func globEscape(p string) string {
	var b strings.Builder
	for _, c := range p {
		if strings.ContainsRune(`*?[\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func (r *reader) exists(p string) bool {
	_, err := os.Stat(r.path(p))
	return err == nil
}

// sortNatural orders strings so that runs of digits compare as numbers.
func sortNatural(s []string) {
	sort.SliceStable(s, func(i, j int) bool { return naturalLess(s[i], s[j]) })
}

func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitPrefix(a), digitPrefix(b)
		if da != "" && db != "" {
			na, nb := trimZeros(da), trimZeros(db)
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

func trimZeros(s string) string {
	t := strings.TrimLeft(s, "0")
	if t == "" {
		return "0"
	}
	return t
}

// errShort drops the root-dependent path from *PathError so that warnings
// read the same on a fixture and on the live machine.
func errShort(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// clip keeps garbage short in warnings.
func clip(s string) string {
	const n = 40
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
