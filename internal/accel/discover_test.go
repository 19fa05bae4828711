package accel

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestDiscoverFixtures(t *testing.T) {
	type wantAccel struct {
		name, product, driver, vendor, device string
		tops                                  float64
		accessible                            bool
		hintHas                               string // substring of Hint; "" means Hint must be empty
	}
	tests := []struct {
		machine       string
		arch, model   string
		board         string
		logical, phys int
		simd, noSIMD  []string
		memTotal      uint64
		accels        []wantAccel
		gpus          []string // name=driver
	}{
		{
			machine: "intel-mtl-laptop", arch: "x86_64", model: "Intel(R) Core(TM) Ultra 7 155H",
			logical: 22, phys: 16, simd: []string{"avx2", "fma", "avx_vnni"}, noSIMD: []string{"avx512f", "amx_tile"},
			memTotal: 32200704 * 1024,
			accels: []wantAccel{{
				name: "accel0", product: "Intel NPU (Meteor Lake)", driver: "intel_vpu", vendor: "0x8086", device: "0x7d1d",
				tops: 11, accessible: false, hintHas: `group "render"`,
			}},
			gpus: []string{"card1=i915"},
		},
		{
			machine: "amd-strix-laptop", arch: "x86_64", model: "AMD Ryzen AI 9 HX 370 w/ Radeon 890M",
			logical: 24, phys: 12, simd: []string{"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, noSIMD: []string{"amx_tile"},
			memTotal: 27981540 * 1024,
			accels: []wantAccel{{
				name: "accel0", product: "AMD XDNA 2 NPU (Strix/Krackan)", driver: "amdxdna", vendor: "0x1022", device: "0x17f0",
				tops: 50, accessible: true,
			}},
			gpus: []string{"card1=amdgpu"},
		},
		{
			machine: "riscv-bpi-f3", arch: "riscv64", model: "spacemit,x60", board: "Banana Pi BPI-F3",
			logical: 8, phys: 8, simd: []string{"rvv"}, noSIMD: []string{"neon"},
			memTotal: 3900424 * 1024,
			accels: []wantAccel{{
				name: "/", product: "SpacemiT K1 AI cores (X60)", tops: 2, accessible: true, hintHas: "CPU cores",
			}},
		},
		{
			machine: "arm64-rock5b", arch: "arm64", model: "4x Cortex-A55 + 4x Cortex-A76", board: "Radxa ROCK 5B",
			logical: 8, phys: 8, simd: []string{"neon", "fp16", "dotprod"}, noSIMD: []string{"sve", "i8mm"},
			memTotal: 16115640 * 1024,
			accels: []wantAccel{{
				name: "accel0", product: "Rockchip RK3588 NPU", driver: "rocket", tops: 6, accessible: true,
			}},
			gpus: []string{"card0=panthor", "card1=rockchip-drm"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.machine, func(t *testing.T) {
			t.Parallel()
			f := loadFixture(t, tt.machine)
			r := DiscoverWith(f.opts())
			if len(r.Warnings) > 0 {
				t.Errorf("warnings on a clean fixture: %q", r.Warnings)
			}
			if r.CPU.Arch != tt.arch {
				t.Errorf("arch: got %q, want %q", r.CPU.Arch, tt.arch)
			}
			if r.CPU.Model != tt.model {
				t.Errorf("model: got %q, want %q", r.CPU.Model, tt.model)
			}
			if r.Board != tt.board {
				t.Errorf("board: got %q, want %q", r.Board, tt.board)
			}
			if r.CPU.Logical != tt.logical || r.CPU.Physical != tt.phys {
				t.Errorf("cores: got %d logical %d physical, want %d %d", r.CPU.Logical, r.CPU.Physical, tt.logical, tt.phys)
			}
			for _, s := range tt.simd {
				if !r.CPU.Has(s) {
					t.Errorf("SIMD: %q missing from %q", s, r.CPU.SIMD)
				}
			}
			for _, s := range tt.noSIMD {
				if r.CPU.Has(s) {
					t.Errorf("SIMD: %q unexpectedly in %q", s, r.CPU.SIMD)
				}
			}
			if r.Memory.TotalBytes != tt.memTotal || r.Memory.AvailableBytes == 0 || r.Memory.AvailableBytes > r.Memory.TotalBytes {
				t.Errorf("memory: got %+v, want total %d and 0 < available <= total", r.Memory, tt.memTotal)
			}
			if len(r.Accelerators) != len(tt.accels) {
				t.Fatalf("accelerators: got %d (%+v), want %d", len(r.Accelerators), r.Accelerators, len(tt.accels))
			}
			for i, w := range tt.accels {
				a := r.Accelerators[i]
				if a.Name != w.name || a.Product != w.product || a.Driver != w.driver || a.VendorID != w.vendor || a.DeviceID != w.device {
					t.Errorf("accel %d: got name=%q product=%q driver=%q ids=%s:%s, want %q %q %q %s:%s",
						i, a.Name, a.Product, a.Driver, a.VendorID, a.DeviceID, w.name, w.product, w.driver, w.vendor, w.device)
				}
				if a.PeakTOPSInt8 != w.tops {
					t.Errorf("accel %d TOPS: got %g, want %g", i, a.PeakTOPSInt8, w.tops)
				}
				if a.Accessible != w.accessible {
					t.Errorf("accel %d accessible: got %v, want %v (hint %q)", i, a.Accessible, w.accessible, a.Hint)
				}
				if w.hintHas == "" && a.Hint != "" {
					t.Errorf("accel %d hint: got %q, want none", i, a.Hint)
				}
				if !strings.Contains(a.Hint, w.hintHas) {
					t.Errorf("accel %d hint: got %q, want it to contain %q", i, a.Hint, w.hintHas)
				}
			}
			var gpus []string
			for _, g := range r.GPUs {
				gpus = append(gpus, g.Name+"="+g.Driver)
			}
			if !slices.Equal(gpus, tt.gpus) {
				t.Errorf("GPUs: got %q, want %q", gpus, tt.gpus)
			}
		})
	}
}

func TestDiscoverDetails(t *testing.T) {
	t.Run("intel versions and node", func(t *testing.T) {
		r := DiscoverWith(loadFixture(t, "intel-mtl-laptop").opts())
		a := r.Accelerators[0]
		if a.DriverVersion != "1.0.0" || a.Bus != "pci" || a.Address != "0000:00:0b.0" || a.DevNode != "/dev/accel/accel0" || a.Revision != "0x04" {
			t.Errorf("got version=%q bus=%q addr=%q node=%q rev=%q", a.DriverVersion, a.Bus, a.Address, a.DevNode, a.Revision)
		}
		if r.Kernel != "6.14.0-36-generic" {
			t.Errorf("kernel: got %q", r.Kernel)
		}
		if !strings.Contains(a.Hint, "usermod -aG render") {
			t.Errorf("hint: got %q, want the usermod command", a.Hint)
		}
	})
	t.Run("amd firmware, no module version", func(t *testing.T) {
		a := DiscoverWith(loadFixture(t, "amd-strix-laptop").opts()).Accelerators[0]
		if a.Firmware != "1.5.5.391" || a.DriverVersion != "" || a.Generation != "XDNA 2" {
			t.Errorf("got firmware=%q version=%q generation=%q", a.Firmware, a.DriverVersion, a.Generation)
		}
	})
	t.Run("rk3588 cores collapse into the accel device", func(t *testing.T) {
		r := DiscoverWith(loadFixture(t, "arm64-rock5b").opts())
		a := r.Accelerators[0]
		if a.Bus != "platform" || a.Address != "fdab0000.npu" || !slices.Equal(a.Compatible, []string{"rockchip,rk3588-rknn-core"}) || a.VendorID != "" {
			t.Errorf("got bus=%q addr=%q compat=%q vendor=%q", a.Bus, a.Address, a.Compatible, a.VendorID)
		}
	})
	t.Run("JSON field names", func(t *testing.T) {
		b, err := json.Marshal(DiscoverWith(loadFixture(t, "intel-mtl-laptop").opts()))
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{`"peak_tops_int8":11`, `"accessible":false`, `"logical_cores":22`, `"total_bytes":`, `"vendor_id":"0x8086"`} {
			if !strings.Contains(string(b), k) {
				t.Errorf("JSON lacks %s: %s", k, b)
			}
		}
	})
}

// TestNodeAccess covers the permission decision and the hint for node modes
// and memberships the fixtures do not.
func TestNodeAccess(t *testing.T) {
	tests := []struct {
		name     string
		mode     string // octal
		gid      string
		user     []uint32 // uid, gids...
		wantOK   bool
		wantHint string
	}{
		{"in render", "0660", "992", []uint32{1000, 1000, 992}, true, ""},
		{"not in render", "0660", "992", []uint32{1000, 1000}, false, `group "render"`},
		{"root", "0600", "992", []uint32{0, 0}, true, ""},
		{"world rw", "0666", "992", []uint32{1000, 1000}, true, ""},
		{"owner only", "0600", "992", []uint32{1000, 1000, 992}, false, "udev rule"},
		{"unknown gid", "0660", "4242", []uint32{1000, 1000}, false, `group "4242"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := loadFixture(t, "intel-mtl-laptop")
			n := f.nodes["/dev/accel/accel0"]
			m := mustUints(t, []string{tt.gid})
			mode := mustOctal(t, tt.mode)
			f.uid, f.gids = tt.user[0], tt.user[1:]
			n.Mode, n.GID = mode, m[0]
			n.CanOpen = canOpen(n.Mode, n.UID, n.GID, f.uid, f.gids)
			f.nodes["/dev/accel/accel0"] = n
			a := DiscoverWith(f.opts()).Accelerators[0]
			if a.Accessible != tt.wantOK {
				t.Errorf("accessible: got %v, want %v", a.Accessible, tt.wantOK)
			}
			if tt.wantHint == "" && a.Hint != "" || !strings.Contains(a.Hint, tt.wantHint) {
				t.Errorf("hint: got %q, want %q in it", a.Hint, tt.wantHint)
			}
		})
	}
}

func mustOctal(t *testing.T, s string) (m os.FileMode) {
	t.Helper()
	var v uint32
	for _, c := range s {
		if c < '0' || c > '7' {
			t.Fatalf("bad octal %q", s)
		}
		v = v*8 + uint32(c-'0')
	}
	return os.FileMode(v) | os.ModeDevice | os.ModeCharDevice
}

// TestBrokenTrees corrupts copies of the fixtures: every case must still
// return a report, degrade the affected fields and warn where a file was
// present but bad.
func TestBrokenTrees(t *testing.T) {
	tests := []struct {
		name    string
		machine string
		corrupt func(t *testing.T, f *fixture)
		check   func(t *testing.T, r Report)
		warnHas string // substring of some warning; "" means no warning required
	}{
		{
			name: "garbage PCI vendor", machine: "intel-mtl-laptop",
			corrupt: func(t *testing.T, f *fixture) {
				f.write(t, "/sys/devices/pci0000:00/0000:00:0b.0/vendor", "\x00\xffnot-hex\n")
			},
			check: func(t *testing.T, r Report) {
				a := r.Accelerators[0]
				if a.Product != "unknown" || a.VendorID != "" || a.Driver != "intel_vpu" {
					t.Errorf("got product=%q vendor=%q driver=%q, want unknown, empty, intel_vpu", a.Product, a.VendorID, a.Driver)
				}
			},
			warnHas: "bad PCI ids",
		},
		{
			name: "unknown PCI id keeps the ids", machine: "intel-mtl-laptop",
			corrupt: func(t *testing.T, f *fixture) {
				f.write(t, "/sys/devices/pci0000:00/0000:00:0b.0/device", "0x1234\n")
			},
			check: func(t *testing.T, r Report) {
				a := r.Accelerators[0]
				if a.Product != "unknown" || a.DeviceID != "0x1234" || a.VendorID != "0x8086" || a.PeakTOPSInt8 != 0 {
					t.Errorf("got product=%q ids=%s:%s tops=%g", a.Product, a.VendorID, a.DeviceID, a.PeakTOPSInt8)
				}
			},
		},
		{
			name: "driver unbound", machine: "amd-strix-laptop",
			corrupt: func(t *testing.T, f *fixture) {
				f.remove(t, "/sys/devices/pci0000:00/0000:00:08.2/0000:c5:00.1/driver")
			},
			check: func(t *testing.T, r Report) {
				if a := r.Accelerators[0]; a.Driver != "" || a.Product != "AMD XDNA 2 NPU (Strix/Krackan)" {
					t.Errorf("got driver=%q product=%q", a.Driver, a.Product)
				}
			},
		},
		{
			name: "dangling accel link", machine: "intel-mtl-laptop",
			corrupt: func(t *testing.T, f *fixture) {
				f.symlink(t, "/sys/class/accel/accel0", "../../devices/nowhere/accel0")
			},
			check: func(t *testing.T, r Report) {
				if len(r.Accelerators) != 1 || r.Accelerators[0].Product != "unknown" {
					t.Errorf("got %+v, want one unknown accelerator", r.Accelerators)
				}
			},
		},
		{
			name: "device node missing", machine: "amd-strix-laptop",
			corrupt: func(t *testing.T, f *fixture) { f.remove(t, "/dev/accel/accel0") },
			check: func(t *testing.T, r Report) {
				if a := r.Accelerators[0]; a.Accessible || !strings.Contains(a.Hint, "does not exist") {
					t.Errorf("got accessible=%v hint=%q", a.Accessible, a.Hint)
				}
			},
		},
		{
			name: "no /etc/group", machine: "intel-mtl-laptop",
			corrupt: func(t *testing.T, f *fixture) { f.remove(t, "/etc/group") },
			check: func(t *testing.T, r Report) {
				if a := r.Accelerators[0]; !strings.Contains(a.Hint, `group "992"`) {
					t.Errorf("hint: got %q, want the numeric gid", a.Hint)
				}
			},
		},
		{
			name: "no cpuinfo", machine: "intel-mtl-laptop",
			corrupt: func(t *testing.T, f *fixture) { f.remove(t, "/proc/cpuinfo") },
			check: func(t *testing.T, r Report) {
				if r.CPU.Model != "unknown" || r.CPU.Arch != "unknown" || r.CPU.Logical != 22 {
					t.Errorf("got %+v, want unknown model/arch and 22 CPUs from sysfs", r.CPU)
				}
			},
			warnHas: "/proc/cpuinfo",
		},
		{
			name: "garbage cpuinfo", machine: "arm64-rock5b",
			corrupt: func(t *testing.T, f *fixture) {
				f.write(t, "/proc/cpuinfo", "processor : x\nCPU part : zz\n\x00\x01::::\nFeatures\n")
			},
			check: func(t *testing.T, r Report) {
				if r.CPU.Logical != 8 || r.CPU.Arch != "unknown" {
					t.Errorf("got %+v", r.CPU)
				}
			},
		},
		{
			name: "garbage meminfo", machine: "amd-strix-laptop",
			corrupt: func(t *testing.T, f *fixture) { f.write(t, "/proc/meminfo", "MemTotal: lots\n") },
			check: func(t *testing.T, r Report) {
				if r.Memory != (Memory{}) {
					t.Errorf("got %+v, want zero", r.Memory)
				}
			},
			warnHas: "MemTotal",
		},
		{
			name: "garbage device tree", machine: "arm64-rock5b",
			corrupt: func(t *testing.T, f *fixture) {
				f.write(t, "/sys/firmware/devicetree/base/compatible", "\xff\xfe\x00")
				f.remove(t, "/sys/devices/platform/fdab0000.npu/of_node")
				f.write(t, "/sys/firmware/devicetree/base/npu@fdac0000/status", "disabled\x00")
			},
			check: func(t *testing.T, r Report) {
				// Without of_node the accel device is unknown, so the DT scan
				// reports the NPU cores once, from the first enabled node.
				if len(r.Accelerators) != 2 || r.Accelerators[0].Product != "unknown" ||
					r.Accelerators[1].Name != "/npu@fdab0000" || r.Accelerators[1].Source != "devicetree" {
					t.Errorf("got %+v", r.Accelerators)
				}
			},
		},
		{
			name: "empty root", machine: "",
			check: func(t *testing.T, r Report) {
				if len(r.Accelerators) != 0 || len(r.GPUs) != 0 || r.CPU.Logical != 0 || r.CPU.Model != "unknown" {
					t.Errorf("got %+v", r)
				}
			},
			warnHas: "no processors",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var opts Options
			if tt.machine == "" {
				opts = Options{Root: t.TempDir()}
			} else {
				f := loadFixture(t, tt.machine)
				tt.corrupt(t, f)
				opts = f.opts()
			}
			r := DiscoverWith(opts)
			tt.check(t, r)
			if tt.warnHas != "" && !slices.ContainsFunc(r.Warnings, func(w string) bool { return strings.Contains(w, tt.warnHas) }) {
				t.Errorf("warnings: got %q, want one containing %q", r.Warnings, tt.warnHas)
			}
			for _, w := range r.Warnings {
				if strings.Contains(w, opts.Root) && opts.Root != "/" {
					t.Errorf("warning leaks the root directory: %q", w)
				}
			}
		})
	}
}

// TestDeviceTreeNPUs checks the device-tree table on small trees for boards
// without a fixture of their own.
func TestDeviceTreeNPUs(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  []string // products
	}{
		{"milk-v duo s", map[string]string{
			"compatible":                 "milkv,duo-s\x00sophgo,sg2000\x00",
			"soc/tpu@c100000/compatible": "cvitek,tpu\x00",
		}, []string{"Sophgo/CVITEK TPU"}},
		{"canmv k230", map[string]string{
			"compatible":              "canaan,canmv-k230\x00canaan,kendryte-k230\x00",
			"kpu@80400000/compatible": "canaan,k230-kpu\x00",
			"kpu@80400000/status":     "okay\x00",
		}, []string{"Kendryte K230 KPU"}},
		{"vendor rknpu", map[string]string{
			"compatible":              "radxa,rock-5b\x00rockchip,rk3588\x00",
			"npu@fdab0000/compatible": "rockchip,rk3588-rknpu\x00",
		}, []string{"Rockchip RK3588 NPU"}},
		{"disabled node", map[string]string{
			"compatible":              "radxa,rock-5b\x00rockchip,rk3588\x00",
			"npu@fdab0000/compatible": "rockchip,rk3588-rknn-core\x00",
			"npu@fdab0000/status":     "disabled\x00",
		}, nil},
		{"vendor k1", map[string]string{"compatible": "spacemit,k1-x-deb1\x00spacemit,k1-x\x00"}, []string{"SpacemiT K1 AI cores (X60)"}},
		{"plain x86 has none", map[string]string{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			for p, c := range tt.files {
				full := filepath.Join(root, "proc/device-tree", p)
				if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			r := Discover(root)
			var got []string
			for _, a := range r.Accelerators {
				got = append(got, a.Product)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestLiveMachine runs discovery and sampling on the machine the tests run on.
// There are no accelerators on CI; CPU and memory must be there.
func TestLiveMachine(t *testing.T) {
	r := Discover("/")
	if r.CPU.Logical <= 0 {
		t.Errorf("logical cores: got %d, want > 0", r.CPU.Logical)
	}
	if r.CPU.Model == "" || r.CPU.Model == "unknown" {
		t.Errorf("CPU model: got %q", r.CPU.Model)
	}
	if r.Memory.TotalBytes == 0 || r.Memory.AvailableBytes == 0 {
		t.Errorf("memory: got %+v", r.Memory)
	}
	t.Logf("live: %s, %d/%d cores, SIMD %v, %d accelerators, %d GPUs, warnings %q",
		r.CPU.Model, r.CPU.Physical, r.CPU.Logical, r.CPU.SIMD, len(r.Accelerators), len(r.GPUs), r.Warnings)
	s := Sample("/")
	if s.Time.IsZero() {
		t.Error("sample has no time")
	}
	if err := r.WriteText(new(strings.Builder), s); err != nil {
		t.Errorf("WriteText: %v", err)
	}
}

func TestLiveNode(t *testing.T) {
	info, err := liveNode("/dev/null")
	if err != nil {
		t.Skipf("no /dev/null: %v", err)
	}
	if !info.CanOpen || info.Mode&os.ModeDevice == 0 {
		t.Errorf("/dev/null: got %+v, want an openable device", info)
	}
	if _, err := liveNode(filepath.Join(t.TempDir(), "absent")); !os.IsNotExist(err) {
		t.Errorf("absent node: got %v, want not-exist", err)
	}
	p := filepath.Join(t.TempDir(), "ro")
	if err := os.WriteFile(p, nil, 0o400); err != nil {
		t.Fatal(err)
	}
	info, err = liveNode(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := os.Geteuid() == 0; info.CanOpen != want {
		t.Errorf("0400 file: CanOpen got %v, want %v (root may open anything)", info.CanOpen, want)
	}
}
