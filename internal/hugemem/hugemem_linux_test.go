package hugemem

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"
)

// TestAllocHugePages: a buffer starts on a 2 MiB boundary, and the kernel
// takes it as eligible for transparent huge pages (smaps' THPeligible)
// wherever its setting is not "never"; Free unmaps it.
func TestAllocHugePages(t *testing.T) {
	const n = 9<<20 + 4096 // not a whole number of huge pages
	b, err := Alloc(n)
	if err != nil {
		t.Fatal(err)
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	if len(b) != n || start%Huge != 0 {
		t.Fatalf("buffer of %d bytes at %#x, want %d bytes on a 2 MiB boundary", len(b), start, n)
	}
	for i := 0; i < n; i += 4096 {
		b[i] = 1 // writable, and faulted in
	}
	head := fmt.Sprintf("%x-%x ", start, start+n)
	eligible, found := smapsField(t, head, "THPeligible:")
	if !found {
		t.Fatalf("no mapping %q in /proc/self/smaps", head)
	}
	setting, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil {
		t.Logf("no THP setting to compare (%v): THPeligible %s", err, eligible)
	} else if !bytes.Contains(setting, []byte("[never]")) && eligible != "1" {
		t.Errorf("THP setting %q, buffer THPeligible %q; want 1", strings.TrimSpace(string(setting)), eligible)
	}
	Free(b)
	if _, found := smapsField(t, head, "THPeligible:"); found {
		t.Error("Free left the buffer mapped")
	}
}

// smapsField returns the value of field in the /proc/self/smaps entry whose
// first line starts with head, and whether that entry exists.
func smapsField(t *testing.T, head, field string) (string, bool) {
	t.Helper()
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, line := range strings.Split(string(smaps), "\n") {
		// A mapping's first line starts with its range, "lo-hi"; its
		// fields' lines with a name ending in a colon.
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			in = strings.HasPrefix(line, head)
		}
		if in && strings.HasPrefix(line, field) {
			return strings.TrimSpace(strings.TrimPrefix(line, field)), true
		}
	}
	return "", in
}
