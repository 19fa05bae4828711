package clustertest

import (
	"bufio"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReleaseBinaries checks what `make release` ships: a static, stripped
// ELF binary per architecture, built without cgo and with -trimpath, whose
// SHA256SUMS line is right and whose --version (run under qemu for the
// foreign architectures) prints the stamped version and commit.
func TestReleaseBinaries(t *testing.T) {
	for _, arch := range ReleaseArches {
		Emulator(t, arch)
	}
	rel := MakeRelease(t)
	t.Logf("make release took %s", rel.Took.Round(time.Second))

	sums := map[string]string{}
	f, err := os.Open(filepath.Join(rel.Dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sha256sum's format, which `sha256sum -c` reads: HEX, two spaces, name.
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not 'HEX  NAME'", sc.Text())
		}
		sums[name] = sum
	}
	f.Close()
	if len(sums) != len(ReleaseArches) {
		t.Errorf("SHA256SUMS has %d entries, want %d: %v", len(sums), len(ReleaseArches), sums)
	}

	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "riscv64": elf.EM_RISCV}
	for _, arch := range ReleaseArches {
		t.Run(arch, func(t *testing.T) {
			path := rel.Binary(arch)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			if got, want := sums[filepath.Base(path)], hex.EncodeToString(sum[:]); got != want {
				t.Errorf("SHA256SUMS says %q, file hashes to %s", got, want)
			}

			ef, err := elf.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer ef.Close()
			if ef.Machine != machines[arch] || ef.Class != elf.ELFCLASS64 {
				t.Errorf("ELF machine %v class %v, want %v 64-bit", ef.Machine, ef.Class, machines[arch])
			}
			for _, p := range ef.Progs {
				if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
					t.Errorf("has a %v program header: not a static binary", p.Type)
				}
			}
			if ef.Section(".symtab") != nil {
				t.Error("has a .symtab: not stripped (-s)")
			}
			for _, s := range ef.Sections {
				if strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_") {
					t.Errorf("has DWARF section %s: built without -w", s.Name)
				}
			}

			bi, err := buildinfo.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			settings := map[string]string{}
			for _, s := range bi.Settings {
				settings[s.Key] = s.Value
			}
			for k, want := range map[string]string{"CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": arch, "-trimpath": "true"} {
				if settings[k] != want {
					t.Errorf("build setting %s = %q, want %q", k, settings[k], want)
				}
			}
			// With -trimpath, -ldflags is not recorded; --version below
			// shows the -X stamp instead.

			out, err := ArchCommand(t, arch, path, "--version").CombinedOutput()
			if err != nil {
				t.Fatalf("--version: %v\n%s", err, out)
			}
			if got, want := string(out), "npumesh version "+rel.Version+" ("+rel.Commit+")\n"; got != want {
				t.Errorf("--version printed %q, want %q", got, want)
			}
		})
	}
}
