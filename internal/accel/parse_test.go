package accel

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseCPUInfo(t *testing.T) {
	tests := []struct {
		name, text        string
		arch, model       string
		logical, physical int
		simd              []string
	}{
		{
			name: "x86 amx",
			text: "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nphysical id\t: 0\ncore id\t: 0\n" +
				"flags\t\t: fpu lm avx2 fma avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n\n" +
				"processor\t: 1\nphysical id\t: 1\ncore id\t: 0\n",
			arch: "x86_64", model: "Intel(R) Xeon(R) Platinum 8480+", logical: 2, physical: 2,
			simd: []string{"avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"},
		},
		{
			name: "arm64 sve",
			text: "processor\t: 0\nFeatures\t: fp asimd asimddp sve sve2 i8mm bf16\nCPU implementer\t: 0x41\nCPU part\t: 0xd49\n",
			arch: "arm64", model: "1x Neoverse-N2", logical: 1,
			simd: []string{"neon", "dotprod", "i8mm", "bf16", "sve", "sve2"},
		},
		{
			name: "arm64 unknown part",
			text: "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x61\nCPU part\t: 0x039\n",
			arch: "arm64", model: "1x 0x61:0x039", logical: 1, simd: []string{"neon"},
		},
		{
			name: "arm32",
			text: "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3\n",
			arch: "arm", model: "ARMv7 Processor rev 4 (v7l)", logical: 1, simd: []string{"neon"},
		},
		{
			name: "riscv without V",
			text: "processor\t: 0\nhart\t\t: 0\nisa\t\t: rv64imafdc_zicntr_zicsr_zifencei_zihpm_zba_zbb\nuarch\t\t: sifive,u74-mc\n",
			arch: "riscv64", model: "sifive,u74-mc", logical: 1,
		},
		{
			name: "riscv gcv", text: "processor : 0\nisa : rv64gcv\n",
			arch: "riscv64", model: "unknown", logical: 1, simd: []string{"rvv"},
		},
		{name: "empty", text: "", arch: "unknown", model: "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ci := parseCPUInfo(tt.text)
			if ci.arch() != tt.arch || ci.modelName() != tt.model || ci.processors != tt.logical || ci.physCores != tt.physical {
				t.Errorf("got arch=%q model=%q logical=%d physical=%d, want %q %q %d %d",
					ci.arch(), ci.modelName(), ci.processors, ci.physCores, tt.arch, tt.model, tt.logical, tt.physical)
			}
			if got := ci.simd(); !slices.Equal(got, tt.simd) {
				t.Errorf("simd: got %q, want %q", got, tt.simd)
			}
		})
	}
}

func TestRISCVHasV(t *testing.T) {
	for isa, want := range map[string]bool{
		"rv64imafdcv_zicbom":      true,
		"rv64gcv":                 true,
		"rv64imafdc_zve64d":       false,
		"rv64imafdcsu":            false,
		"RV64IMAFDCV":             true,
		"rv64imafdc_xtheadvector": false,
		"":                        false,
	} {
		if got := riscvHasV(isa); got != want {
			t.Errorf("riscvHasV(%q): got %v, want %v", isa, got, want)
		}
	}
}

func TestNaturalSort(t *testing.T) {
	got := []string{"cpu10", "cpu2", "cpu1", "thermal_zone11", "thermal_zone9", "cpu007", "cpu"}
	sortNatural(got)
	want := []string{"cpu", "cpu1", "cpu2", "cpu007", "cpu10", "thermal_zone9", "thermal_zone11"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func FuzzParseCPUInfo(f *testing.F) {
	for _, m := range []string{"intel-mtl-laptop", "amd-strix-laptop", "riscv-bpi-f3", "arm64-rock5b"} {
		b, err := os.ReadFile(filepath.Join("testdata", m, "root/proc/cpuinfo"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add("processor : 0\nCPU part : 0xd0b\nCPU implementer : 0x41\n")
	f.Fuzz(func(t *testing.T, s string) {
		ci := parseCPUInfo(s)
		if ci.processors < 0 || ci.physCores < 0 || ci.modelName() == "" || ci.arch() == "" {
			t.Errorf("bad parse: %+v", ci)
		}
		_ = ci.simd()
		_ = riscvHasV(ci.isa)
	})
}

func FuzzParseMeminfo(f *testing.F) {
	f.Add("MemTotal: 1024 kB\nMemAvailable: 512 kB\n")
	f.Add("MemTotal:\nMemAvailable: x kB\n::\n")
	f.Fuzz(func(t *testing.T, s string) {
		total, avail, okT, okA := parseMeminfo(s)
		if !okT && total != 0 || !okA && avail != 0 {
			t.Errorf("values without ok: %d %d", total, avail)
		}
	})
}

// TestImports keeps the package off the network stack and gRPC, and on the
// standard library.
func TestImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			first, _, _ := strings.Cut(p, "/")
			if p == "net" || strings.HasPrefix(p, "net/") || strings.Contains(first, ".") {
				t.Errorf("%s imports %s: accel must use only the standard library and no network packages", name, p)
			}
		}
	}
}

// TestPackageDoc keeps exactly one package comment, in doc.go.
func TestPackageDoc(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	fset := token.NewFileSet()
	var with []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, name, nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if af.Doc != nil {
			with = append(with, name)
		}
	}
	if !slices.Equal(with, []string{"doc.go"}) {
		t.Errorf("package comments in %q, want only doc.go", with)
	}
}

func TestRootWithGlobCharacters(t *testing.T) {
	f := loadFixture(t, "amd-strix-laptop")
	odd := filepath.Join(t.TempDir(), "node[1]*?")
	if err := os.Rename(f.root, odd); err != nil {
		t.Fatal(err)
	}
	f.root = odd
	r := DiscoverWith(f.opts())
	if len(r.Accelerators) != 1 || r.CPU.Logical != 24 || len(Sample(odd).Temperatures) != 6 {
		t.Errorf("got %d accelerators, %d CPUs", len(r.Accelerators), r.CPU.Logical)
	}
}
