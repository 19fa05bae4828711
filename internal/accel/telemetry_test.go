package accel

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSampleFixtures(t *testing.T) {
	tests := []struct {
		machine    string
		temps      int
		maxC       float64
		sensor     string // a sensor that must be present with this name and value
		sensorName string
		sensorC    float64
		throttled  bool
		reasons    []string // substrings, one per reason, in order
		cpus       int
		maxMHz     float64
		capped     int
		npus       []string
		powerZones []string
		devfreq    []string
	}{
		{
			machine: "intel-mtl-laptop", temps: 11, maxC: 72,
			sensor: "hwmon3/temp1", sensorName: "coretemp/Package id 0", sensorC: 72,
			cpus: 22, maxMHz: 4800,
			npus:       []string{"accel0"},
			powerZones: []string{"package-0", "core", "uncore", "psys"},
		},
		{
			machine: "amd-strix-laptop", temps: 6, maxC: 68.875,
			sensor: "hwmon2/temp1", sensorName: "k10temp/Tctl", sensorC: 68.875,
			cpus: 24, maxMHz: 5157,
			powerZones: []string{"package-0", "core"},
		},
		{
			machine: "riscv-bpi-f3", temps: 5, maxC: 58.4,
			sensor: "thermal_zone3", sensorName: "cluster0-thermal", sensorC: 58.4,
			cpus: 8, maxMHz: 1600,
		},
		{
			machine: "arm64-rock5b", temps: 7, maxC: 86.9,
			sensor: "thermal_zone1", sensorName: "bigcore0-thermal", sensorC: 86.9,
			throttled: true,
			reasons: []string{
				"bigcore0-thermal) at 86.9°C reached passive trip 85.0°C",
				"bigcore2-thermal) at 86.1°C reached passive trip 85.0°C",
				"littlecore-thermal) at 79.3°C reached passive trip 75.0°C",
				"4 of 8 CPUs capped",
			},
			cpus: 8, maxMHz: 2352, capped: 4,
			devfreq: []string{"fb000000.gpu"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.machine, func(t *testing.T) {
			t.Parallel()
			s := Sample(loadFixture(t, tt.machine).root)
			if len(s.Warnings) > 0 {
				t.Errorf("warnings on a clean fixture: %q", s.Warnings)
			}
			if len(s.Temperatures) != tt.temps || s.MaxCelsius != tt.maxC {
				t.Errorf("temperatures: got %d, max %g; want %d, max %g", len(s.Temperatures), s.MaxCelsius, tt.temps, tt.maxC)
			}
			i := slices.IndexFunc(s.Temperatures, func(x Temperature) bool { return x.Sensor == tt.sensor })
			if i < 0 || s.Temperatures[i].Name != tt.sensorName || s.Temperatures[i].Celsius != tt.sensorC {
				t.Errorf("sensor %s: got %+v, want %q at %g", tt.sensor, s.Temperatures, tt.sensorName, tt.sensorC)
			}
			if s.Throttled != tt.throttled || len(s.ThrottleReasons) != len(tt.reasons) {
				t.Fatalf("throttled: got %v %q, want %v with %d reasons", s.Throttled, s.ThrottleReasons, tt.throttled, len(tt.reasons))
			}
			for i, want := range tt.reasons {
				if !strings.Contains(s.ThrottleReasons[i], want) {
					t.Errorf("reason %d: got %q, want %q in it", i, s.ThrottleReasons[i], want)
				}
			}
			if f := s.CPUFreq; f.CPUs != tt.cpus || f.MaxMHz != tt.maxMHz || f.CappedCPUs != tt.capped || f.Ratio <= 0 || f.Ratio > 1 {
				t.Errorf("cpufreq: got %+v, want %d CPUs, max %g MHz, %d capped, 0 < ratio <= 1", f, tt.cpus, tt.maxMHz, tt.capped)
			}
			var npus, zones, dfs []string
			for _, n := range s.NPUs {
				npus = append(npus, n.Name)
			}
			for _, z := range s.Power {
				zones = append(zones, z.Name)
			}
			for _, d := range s.Devfreq {
				dfs = append(dfs, d.Name)
			}
			if !slices.Equal(npus, tt.npus) || !slices.Equal(zones, tt.powerZones) || !slices.Equal(dfs, tt.devfreq) {
				t.Errorf("got NPUs %q power %q devfreq %q, want %q %q %q", npus, zones, dfs, tt.npus, tt.powerZones, tt.devfreq)
			}
			// One sample has no rates.
			for _, z := range s.Power {
				if z.Watts != 0 {
					t.Errorf("%s: watts %g from a single sample", z.Zone, z.Watts)
				}
			}
		})
	}
}

// TestRates takes two samples with advancing counters, two seconds apart.
func TestRates(t *testing.T) {
	const rapl0 = "/sys/class/powercap/intel-rapl:0/energy_uj"
	const busy = "/sys/class/accel/accel0/device/npu_busy_time_us"
	tests := []struct {
		name      string
		before    map[string]string
		after     map[string]string
		wantWatts float64 // package-0
		wantBusy  float64 // accel0
	}{
		{
			name:      "steady",
			before:    map[string]string{rapl0: "48123456789", busy: "5123456"},
			after:     map[string]string{rapl0: "48151456789", busy: "6623456"},
			wantWatts: 14, wantBusy: 0.75,
		},
		{
			name:      "energy counter wraps",
			before:    map[string]string{rapl0: "262133328850", busy: "0"},
			after:     map[string]string{rapl0: "10000000", busy: "2000000"},
			wantWatts: 10, wantBusy: 1,
		},
		{
			name:      "counters reset (driver reload) give no rate",
			before:    map[string]string{rapl0: "48123456789", busy: "5123456"},
			after:     map[string]string{rapl0: "48123456789", busy: "10"},
			wantWatts: 0, wantBusy: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := loadFixture(t, "intel-mtl-laptop")
			for p, v := range tt.before {
				f.write(t, resolve(t, f, p), v+"\n")
			}
			t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			s1 := Sample(f.root)
			s1.Time = t0
			for p, v := range tt.after {
				f.write(t, resolve(t, f, p), v+"\n")
			}
			s2 := Sample(f.root)
			s2.Time = t0.Add(2 * time.Second)
			got := s2.Since(s1)
			if got.WindowSeconds != 2 {
				t.Errorf("window: got %g, want 2", got.WindowSeconds)
			}
			if w := got.Power[0].Watts; math.Abs(w-tt.wantWatts) > 1e-9 {
				t.Errorf("package-0: got %g W, want %g", w, tt.wantWatts)
			}
			if b := got.NPUs[0].BusyFraction; math.Abs(b-tt.wantBusy) > 1e-9 {
				t.Errorf("accel0 busy: got %g, want %g", b, tt.wantBusy)
			}
			// Since must not write through to s2's slices.
			if s2.Power[0].Watts != 0 || s2.NPUs[0].BusyFraction != 0 {
				t.Error("Since modified its receiver's slices")
			}
		})
	}
	t.Run("no window", func(t *testing.T) {
		s := Sample(loadFixture(t, "intel-mtl-laptop").root)
		if got := s.Since(s); got.WindowSeconds != 0 {
			t.Errorf("window: got %g, want 0 for equal times", got.WindowSeconds)
		}
	})
}

// resolve maps a live path through the fixture's symlinks to the file to
// rewrite, so that writes land in the device directory, not on a link.
func resolve(t *testing.T, f *fixture, p string) string {
	t.Helper()
	if strings.HasPrefix(p, "/sys/class/accel/accel0/device/") {
		return "/sys/devices/pci0000:00/0000:00:0b.0/" + strings.TrimPrefix(p, "/sys/class/accel/accel0/device/")
	}
	return p
}

func TestBrokenTelemetry(t *testing.T) {
	tests := []struct {
		name    string
		machine string
		corrupt func(t *testing.T, f *fixture)
		check   func(t *testing.T, s Telemetry)
		warnHas string
	}{
		{
			name: "garbage temperature", machine: "arm64-rock5b",
			corrupt: func(t *testing.T, f *fixture) { f.write(t, "/sys/class/thermal/thermal_zone1/temp", "hot\n") },
			check: func(t *testing.T, s Telemetry) {
				if len(s.Temperatures) != 6 || s.MaxCelsius != 86.1 {
					t.Errorf("got %d temps, max %g; want 6, 86.1", len(s.Temperatures), s.MaxCelsius)
				}
			},
			warnHas: "thermal_zone1/temp",
		},
		{
			name: "garbage trip point", machine: "arm64-rock5b",
			corrupt: func(t *testing.T, f *fixture) {
				f.write(t, "/sys/class/thermal/thermal_zone1/trip_point_1_temp", "\n")
				f.write(t, "/sys/class/thermal/thermal_zone1/trip_point_0_type", "bogus\n")
			},
			check: func(t *testing.T, s Telemetry) {
				if x := s.Temperatures[1]; x.Trip != "" {
					t.Errorf("zone1 trip: got %q %g, want none", x.Trip, x.TripCelsius)
				}
			},
			warnHas: "trip_point_1_temp",
		},
		{
			name: "critical beats passive", machine: "arm64-rock5b",
			corrupt: func(t *testing.T, f *fixture) { f.write(t, "/sys/class/thermal/thermal_zone6/temp", "116000\n") },
			check: func(t *testing.T, s Telemetry) {
				if x := s.Temperatures[6]; x.Trip != "critical" || x.TripCelsius != 115 {
					t.Errorf("npu zone: got %q %g, want critical 115", x.Trip, x.TripCelsius)
				}
			},
		},
		{
			name: "hwmon crit reached", machine: "amd-strix-laptop",
			corrupt: func(t *testing.T, f *fixture) { f.write(t, "/sys/class/hwmon/hwmon1/temp1_input", "85000\n") },
			check: func(t *testing.T, s Telemetry) {
				if !s.Throttled || !strings.Contains(s.ThrottleReasons[0], "nvme/Composite") || !strings.Contains(s.ThrottleReasons[0], "crit") {
					t.Errorf("got throttled=%v %q", s.Throttled, s.ThrottleReasons)
				}
			},
		},
		{
			name: "garbage energy and cpufreq", machine: "intel-mtl-laptop",
			corrupt: func(t *testing.T, f *fixture) {
				f.write(t, "/sys/class/powercap/intel-rapl:0/energy_uj", "-1\n")
				f.remove(t, "/sys/class/powercap/intel-rapl:0:0/max_energy_range_uj")
				f.write(t, "/sys/devices/system/cpu/cpu3/cpufreq/scaling_cur_freq", "<unknown>\n")
			},
			check: func(t *testing.T, s Telemetry) {
				if len(s.Power) != 3 || s.Power[0].Name != "core" || s.Power[0].MaxEnergyRangeUJ != 0 {
					t.Errorf("power: got %+v", s.Power)
				}
				if s.CPUFreq.CPUs != 21 {
					t.Errorf("cpufreq CPUs: got %d, want 21", s.CPUFreq.CPUs)
				}
			},
			warnHas: "energy_uj",
		},
		{
			name: "garbage NPU counter", machine: "intel-mtl-laptop",
			corrupt: func(t *testing.T, f *fixture) {
				f.write(t, "/sys/devices/pci0000:00/0000:00:0b.0/npu_busy_time_us", "lots\n")
			},
			check: func(t *testing.T, s Telemetry) {
				if len(s.NPUs) != 0 {
					t.Errorf("NPUs: got %+v, want none", s.NPUs)
				}
			},
			warnHas: "npu_busy_time_us",
		},
		{
			name: "vendor devfreq load", machine: "arm64-rock5b",
			corrupt: func(t *testing.T, f *fixture) {
				f.write(t, "/sys/class/devfreq/fdab0000.npu/cur_freq", "1000000000\n")
				f.write(t, "/sys/class/devfreq/fdab0000.npu/max_freq", "1000000000\n")
				f.write(t, "/sys/class/devfreq/fdab0000.npu/load", "37@1000000000Hz\n")
				f.write(t, "/sys/class/devfreq/dmc/cur_freq", "2112000000\n")
				f.write(t, "/sys/class/devfreq/dmc/load", "garbage\n")
			},
			check: func(t *testing.T, s Telemetry) {
				got := fmt.Sprint(s.Devfreq)
				want := "[{dmc 2112000000 0 -1} {fb000000.gpu 300000000 1000000000 -1} {fdab0000.npu 1000000000 1000000000 37}]"
				if got != want {
					t.Errorf("devfreq: got %s, want %s", got, want)
				}
			},
			warnHas: "dmc/load",
		},
		{
			name: "empty root", machine: "",
			check: func(t *testing.T, s Telemetry) {
				if len(s.Temperatures) != 0 || s.Throttled || s.CPUFreq.CPUs != 0 || len(s.Power) != 0 {
					t.Errorf("got %+v", s)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			if tt.machine != "" {
				f := loadFixture(t, tt.machine)
				tt.corrupt(t, f)
				root = f.root
			}
			s := Sample(root)
			tt.check(t, s)
			if tt.warnHas != "" && !slices.ContainsFunc(s.Warnings, func(w string) bool { return strings.Contains(w, tt.warnHas) }) {
				t.Errorf("warnings: got %q, want one containing %q", s.Warnings, tt.warnHas)
			}
		})
	}
}

func TestSampler(t *testing.T) {
	f := loadFixture(t, "intel-mtl-laptop")
	// A 100 ms interval keeps the sample that saw the counter jump visible
	// long enough for the polling below on a loaded machine (at 5 ms the next
	// sample, with no new busy time, could replace it before the poll ran).
	s := NewSampler(f.root, 100*time.Millisecond)
	if !s.Latest().Time.IsZero() {
		t.Fatal("Latest before Start should be the zero Telemetry")
	}
	s.Start(context.Background())
	s.Start(context.Background()) // second Start does nothing
	if s.Latest().Time.IsZero() {
		t.Fatal("Start did not take a first sample")
	}
	// Advance the NPU counter by far more than any window can hold, then
	// wait (polling, with a deadline) for a sample that saw it.
	f.write(t, "/sys/devices/pci0000:00/0000:00:0b.0/npu_busy_time_us", "999999999999\n")
	deadline := time.Now().Add(10 * time.Second)
	for {
		l := s.Latest()
		if l.WindowSeconds > 0 && len(l.NPUs) == 1 && l.NPUs[0].BusyFraction == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sample with a full busy fraction before the deadline; latest %+v", l)
		}
		time.Sleep(time.Millisecond)
	}
	s.Stop()
	s.Stop() // idempotent
	select {
	case <-s.done:
	default:
		t.Fatal("goroutine still running after Stop")
	}
}

func TestSamplerContextAndStopWithoutStart(t *testing.T) {
	NewSampler(t.TempDir(), 0).Stop() // must not block

	ctx, cancel := context.WithCancel(context.Background())
	s := NewSampler(t.TempDir(), time.Hour)
	s.Start(ctx)
	cancel()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("sampler ignored context cancellation")
	}
	s.Stop()
}
