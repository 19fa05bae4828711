package accel

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*/nodeinfo.golden")

// TestWriteTextGolden renders each fixture with two samples two seconds
// apart, the NPU 1.5 s busy and the package drawing 14 W in between.
func TestWriteTextGolden(t *testing.T) {
	for _, machine := range []string{"intel-mtl-laptop", "amd-strix-laptop", "riscv-bpi-f3", "arm64-rock5b"} {
		t.Run(machine, func(t *testing.T) {
			t.Parallel()
			f := loadFixture(t, machine)
			r := DiscoverWith(f.opts())
			t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			s1 := Sample(f.root)
			s1.Time = t0
			advance(t, f, "/sys/class/powercap/intel-rapl:0/energy_uj", 28_000_000)
			advance(t, f, "/sys/class/powercap/intel-rapl:0:0/energy_uj", 18_000_000)
			advance(t, f, "/sys/devices/pci0000:00/0000:00:0b.0/npu_busy_time_us", 1_500_000)
			s2 := Sample(f.root)
			s2.Time = t0.Add(2 * time.Second)

			var b strings.Builder
			if err := r.WriteText(&b, s2.Since(s1)); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", machine, "nodeinfo.golden")
			if *update {
				if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if b.String() != string(want) {
				t.Errorf("WriteText output differs from %s (run with -update and review the diff):\n got:\n%s\nwant:\n%s", golden, b.String(), want)
			}
		})
	}
}

// advance adds n to a counter file if the fixture has it.
func advance(t *testing.T, f *fixture, p string, n uint64) {
	t.Helper()
	r := newReader(f.root)
	if !r.exists(p) {
		return
	}
	v, ok := r.uint(p)
	if !ok {
		t.Fatalf("%s: %q", p, r.warns)
	}
	f.write(t, p, strconvU(v+n)+"\n")
}

func strconvU(v uint64) string {
	var buf [20]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(buf[i:])
		}
	}
}

func TestWriteTextWithoutTelemetry(t *testing.T) {
	var b strings.Builder
	r := DiscoverWith(loadFixture(t, "amd-strix-laptop").opts())
	if err := r.WriteText(&b, Telemetry{}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "Telemetry") || !strings.Contains(b.String(), "AMD XDNA 2 NPU") {
		t.Errorf("got:\n%s", b.String())
	}
}

type failWriter struct{}

var errWrite = errors.New("disk full")

func (failWriter) Write([]byte) (int, error) { return 0, errWrite }

func TestWriteTextError(t *testing.T) {
	if err := (Report{}).WriteText(failWriter{}, Telemetry{}); !errors.Is(err, errWrite) {
		t.Errorf("got %v, want %v", err, errWrite)
	}
}
