package accel

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Telemetry is one cheap sample of temperatures, clocks, NPU activity and
// power. Counters (NPU busy time, energy) become rates only through Since,
// which needs an earlier sample.
type Telemetry struct {
	Time time.Time `json:"time"`
	// WindowSeconds is the time since the sample Since compared with; the
	// rates (NPUUsage.BusyFraction, PowerZone.Watts) are meaningful only
	// when it is non-zero.
	WindowSeconds float64       `json:"window_seconds,omitempty"`
	Temperatures  []Temperature `json:"temperatures"`
	MaxCelsius    float64       `json:"max_celsius"`
	CPUFreq       CPUFreq       `json:"cpu_freq"`
	// Throttled is true when a thermal zone reached a passive, hot or
	// critical trip point, a hwmon sensor reached its max or crit limit, or
	// cpufreq caps a CPU below its maximum. ThrottleReasons says which.
	Throttled       bool        `json:"throttled"`
	ThrottleReasons []string    `json:"throttle_reasons,omitempty"`
	NPUs            []NPUUsage  `json:"npus,omitempty"`
	Devfreq         []Devfreq   `json:"devfreq,omitempty"`
	Power           []PowerZone `json:"power,omitempty"`
	Warnings        []string    `json:"warnings,omitempty"`
}

// Temperature is one thermal zone or hwmon sensor.
type Temperature struct {
	// Sensor locates the reading: "thermal_zone0" or "hwmon2/temp1".
	Sensor string `json:"sensor"`
	// Name is the zone type ("x86_pkg_temp") or hwmon name and label
	// ("coretemp/Package id 0").
	Name    string  `json:"name"`
	Celsius float64 `json:"celsius"`
	// Trip is the most severe limit reached: passive, hot or critical for
	// thermal zones, max or crit for hwmon; "" when none.
	Trip        string  `json:"trip,omitempty"`
	TripCelsius float64 `json:"trip_celsius,omitempty"`
}

// CPUFreq summarises /sys/devices/system/cpu/cpu*/cpufreq.
type CPUFreq struct {
	CPUs   int     `json:"cpus"`    // CPUs with readable cpufreq
	CurMHz float64 `json:"cur_mhz"` // mean scaling_cur_freq
	MaxMHz float64 `json:"max_mhz"` // highest cpuinfo_max_freq
	// Ratio is the mean of scaling_cur_freq/cpuinfo_max_freq. A low ratio on
	// an idle machine is power saving, not throttling.
	Ratio float64 `json:"ratio"`
	// CappedCPUs counts CPUs whose scaling_max_freq is below
	// cpuinfo_max_freq: a cap set by a cooling device, power management or
	// an administrator.
	CappedCPUs int `json:"capped_cpus,omitempty"`
}

// NPUUsage is the activity of an accel device that exposes a busy counter
// (intel_vpu: npu_busy_time_us, Linux 6.11+).
type NPUUsage struct {
	Name       string `json:"name"` // accel0
	BusyTimeUS uint64 `json:"busy_time_us"`
	// BusyFraction is busy time over the window, 0..1.
	BusyFraction float64 `json:"busy_fraction"`
	FreqMHz      float64 `json:"freq_mhz,omitempty"`
	MaxFreqMHz   float64 `json:"max_freq_mhz,omitempty"`
	MemoryBytes  uint64  `json:"memory_bytes,omitempty"` // npu_memory_utilization
}

// Devfreq is a /sys/class/devfreq device (GPU, NPU or memory bus on SoCs).
type Devfreq struct {
	Name  string `json:"name"` // e.g. fb000000.gpu, fdab0000.npu
	CurHz uint64 `json:"cur_hz"`
	MaxHz uint64 `json:"max_hz"`
	// LoadPercent is from the "load" attribute some vendor kernels add
	// (Rockchip: "37@1000000000Hz"); -1 when not exposed.
	LoadPercent int `json:"load_percent"`
}

// PowerZone is a powercap zone with an energy counter (intel-rapl, which
// AMD Zen machines also register).
type PowerZone struct {
	Zone             string  `json:"zone"` // intel-rapl:0
	Name             string  `json:"name"` // package-0, core, uncore, psys, dram
	EnergyUJ         uint64  `json:"energy_uj"`
	MaxEnergyRangeUJ uint64  `json:"max_energy_range_uj,omitempty"`
	Watts            float64 `json:"watts"`
}

// Sample reads one telemetry snapshot from the machine at root ("/" for this
// one). It never fails; problems end up in Telemetry.Warnings.
func Sample(root string) Telemetry {
	r := newReader(root)
	t := Telemetry{Time: time.Now(), Temperatures: []Temperature{}}
	r.thermalZones(&t)
	r.hwmon(&t)
	r.cpufreq(&t)
	r.npus(&t)
	r.devfreq(&t)
	r.powercap(&t)
	for i, x := range t.Temperatures {
		if i == 0 || x.Celsius > t.MaxCelsius {
			t.MaxCelsius = x.Celsius
		}
		if x.Trip != "" {
			t.ThrottleReasons = append(t.ThrottleReasons,
				fmt.Sprintf("%s (%s) at %.1f°C reached %s trip %.1f°C", x.Sensor, x.Name, x.Celsius, x.Trip, x.TripCelsius))
		}
	}
	if t.CPUFreq.CappedCPUs > 0 {
		t.ThrottleReasons = append(t.ThrottleReasons,
			fmt.Sprintf("%d of %d CPUs capped below their maximum frequency", t.CPUFreq.CappedCPUs, t.CPUFreq.CPUs))
	}
	t.Throttled = len(t.ThrottleReasons) > 0
	t.Warnings = r.warns
	return t
}

// Since returns t with rates computed against the earlier sample prev:
// NPU busy fractions and watts. Counters that went backwards (driver reload)
// give no rate; energy counters that wrapped at max_energy_range_uj are
// unwrapped.
func (t Telemetry) Since(prev Telemetry) Telemetry {
	w := t.Time.Sub(prev.Time)
	if w <= 0 {
		return t
	}
	t.WindowSeconds = w.Seconds()
	t.NPUs = append([]NPUUsage(nil), t.NPUs...)
	for i, n := range t.NPUs {
		for _, p := range prev.NPUs {
			if p.Name != n.Name || n.BusyTimeUS < p.BusyTimeUS {
				continue
			}
			f := float64(n.BusyTimeUS-p.BusyTimeUS) / float64(w.Microseconds())
			t.NPUs[i].BusyFraction = min(max(f, 0), 1)
		}
	}
	t.Power = append([]PowerZone(nil), t.Power...)
	for i, z := range t.Power {
		for _, p := range prev.Power {
			if p.Zone != z.Zone {
				continue
			}
			var delta uint64
			switch {
			case z.EnergyUJ >= p.EnergyUJ:
				delta = z.EnergyUJ - p.EnergyUJ
			case z.MaxEnergyRangeUJ > p.EnergyUJ:
				delta = z.MaxEnergyRangeUJ - p.EnergyUJ + z.EnergyUJ
			default:
				continue
			}
			t.Power[i].Watts = float64(delta) / 1e6 / w.Seconds()
		}
	}
	return t
}

// tripSeverity ranks thermal trip types that mean the kernel is cooling by
// slowing things down; "active" trips only start fans and are not listed.
var tripSeverity = map[string]int{"passive": 1, "hot": 2, "critical": 3}

func (r *reader) thermalZones(t *Telemetry) {
	for _, z := range r.glob("/sys/class/thermal/thermal_zone*") {
		milli, ok := r.int(z + "/temp")
		if !ok {
			continue
		}
		typ, _ := r.str(z + "/type")
		x := Temperature{Sensor: filepath.Base(z), Name: typ, Celsius: float64(milli) / 1000}
		// Report the most severe trip reached; among trips of one type
		// (boards often have two passive ones) the highest.
		best, bestMilli := 0, int64(0)
		for _, tp := range r.glob(z + "/trip_point_*_type") {
			kind, _ := r.str(tp)
			sev := tripSeverity[kind]
			if sev == 0 || sev < best {
				continue
			}
			tripMilli, ok := r.int(strings.TrimSuffix(tp, "_type") + "_temp")
			// A trip at or below 0 °C is unset (x86_pkg_temp registers
			// passive trips at 0 until user space programs them).
			if !ok || tripMilli <= 0 || milli < tripMilli || (sev == best && tripMilli <= bestMilli) {
				continue
			}
			best, bestMilli = sev, tripMilli
			x.Trip, x.TripCelsius = kind, float64(tripMilli)/1000
		}
		t.Temperatures = append(t.Temperatures, x)
	}
}

func (r *reader) hwmon(t *Telemetry) {
	for _, h := range r.glob("/sys/class/hwmon/hwmon*") {
		name, _ := r.str(h + "/name")
		for _, in := range r.glob(h + "/temp*_input") {
			milli, ok := r.int(in)
			if !ok {
				continue
			}
			base := strings.TrimSuffix(in, "_input")
			x := Temperature{
				Sensor:  filepath.Base(h) + "/" + filepath.Base(base),
				Name:    name,
				Celsius: float64(milli) / 1000,
			}
			if label, ok := r.str(base + "_label"); ok && label != "" {
				x.Name = name + "/" + label
			}
			for _, lim := range []string{"crit", "max"} {
				v, ok := r.int(base + "_" + lim)
				if ok && v > 0 && milli >= v {
					x.Trip, x.TripCelsius = lim, float64(v)/1000
					break
				}
			}
			t.Temperatures = append(t.Temperatures, x)
		}
	}
}

func (r *reader) cpufreq(t *Telemetry) {
	var sumCur, sumRatio float64
	for _, c := range r.glob("/sys/devices/system/cpu/cpu[0-9]*") {
		d := c + "/cpufreq"
		if !r.exists(d) {
			continue
		}
		cur, ok1 := r.int(d + "/scaling_cur_freq")
		maxKHz, ok2 := r.int(d + "/cpuinfo_max_freq")
		if !ok1 || !ok2 || maxKHz <= 0 {
			continue
		}
		f := &t.CPUFreq
		f.CPUs++
		sumCur += float64(cur) / 1000
		sumRatio += float64(cur) / float64(maxKHz)
		f.MaxMHz = max(f.MaxMHz, float64(maxKHz)/1000)
		if sm, ok := r.int(d + "/scaling_max_freq"); ok && sm > 0 && sm < maxKHz {
			f.CappedCPUs++
		}
	}
	if n := t.CPUFreq.CPUs; n > 0 {
		t.CPUFreq.CurMHz = sumCur / float64(n)
		t.CPUFreq.Ratio = sumRatio / float64(n)
	}
}

func (r *reader) npus(t *Telemetry) {
	for _, a := range r.glob("/sys/class/accel/accel*") {
		dev := a + "/device"
		busy, ok := r.uint(dev + "/npu_busy_time_us")
		if !ok {
			continue
		}
		n := NPUUsage{Name: filepath.Base(a), BusyTimeUS: busy}
		// Linux 7.2 moved the frequencies to freq/; 6.15 names remain as
		// aliases until 2027 (Documentation/ABI/obsolete/sysfs-driver-ivpu).
		if v, ok := r.firstInt(dev+"/freq/current_freq", dev+"/npu_current_frequency_mhz"); ok {
			n.FreqMHz = float64(v)
		}
		if v, ok := r.firstInt(dev+"/freq/hw_max_freq", dev+"/npu_max_frequency_mhz"); ok {
			n.MaxFreqMHz = float64(v)
		}
		if v, ok := r.uint(dev + "/npu_memory_utilization"); ok {
			n.MemoryBytes = v
		}
		t.NPUs = append(t.NPUs, n)
	}
}

func (r *reader) firstInt(paths ...string) (int64, bool) {
	for _, p := range paths {
		if r.exists(p) {
			return r.int(p)
		}
	}
	return 0, false
}

func (r *reader) devfreq(t *Telemetry) {
	for _, d := range r.glob("/sys/class/devfreq/*") {
		cur, ok := r.uint(d + "/cur_freq")
		if !ok {
			continue
		}
		df := Devfreq{Name: filepath.Base(d), CurHz: cur, LoadPercent: -1}
		df.MaxHz, _ = r.uint(d + "/max_freq")
		if s, ok := r.str(d + "/load"); ok {
			head, _, _ := strings.Cut(s, "@")
			if v, err := strconv.Atoi(strings.TrimSpace(head)); err == nil && v >= 0 && v <= 100 {
				df.LoadPercent = v
			} else {
				r.warnf("parse %s/load: %q", d, clip(s))
			}
		}
		t.Devfreq = append(t.Devfreq, df)
	}
}

func (r *reader) powercap(t *Telemetry) {
	denied := false
	for _, z := range r.glob("/sys/class/powercap/intel-rapl:*") {
		b, err := r.readLimited(z+"/energy_uj", maxAttrBytes)
		if err != nil {
			switch {
			case errors.Is(err, fs.ErrNotExist):
			case errors.Is(err, fs.ErrPermission):
				denied = true
			default:
				r.warnf("read %s/energy_uj: %v", z, errShort(err))
			}
			continue
		}
		e, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			r.warnf("parse %s/energy_uj: not an unsigned integer: %q", z, clip(strings.TrimSpace(string(b))))
			continue
		}
		pz := PowerZone{Zone: filepath.Base(z), EnergyUJ: e}
		pz.Name, _ = r.str(z + "/name")
		pz.MaxEnergyRangeUJ, _ = r.uint(z + "/max_energy_range_uj")
		t.Power = append(t.Power, pz)
	}
	if denied {
		r.warnf("power: intel-rapl energy_uj is not readable by this user (root-only since Linux 5.10); power is not reported")
	}
}
