package accel

import (
	"fmt"
	"io"
	"strings"
)

// WriteText writes the report and a telemetry sample for people, as
// `npumesh node info` shows them. A zero Telemetry (t.Time unset) leaves out
// the telemetry section. It returns the first write error.
func (r Report) WriteText(w io.Writer, t Telemetry) error {
	p := &textWriter{w: w}
	if r.Board != "" {
		p.line("Board", r.Board)
	}
	if r.Kernel != "" {
		p.line("Kernel", r.Kernel)
	}
	cores := fmt.Sprintf("%d threads", r.CPU.Logical)
	if r.CPU.Physical > 0 {
		cores = fmt.Sprintf("%d cores, %d threads", r.CPU.Physical, r.CPU.Logical)
	}
	p.line("CPU", fmt.Sprintf("%s (%s), %s", r.CPU.Model, r.CPU.Arch, cores))
	p.line("SIMD", orNone(strings.Join(r.CPU.SIMD, " ")))
	if r.CPU.ISA != "" {
		p.line("ISA", r.CPU.ISA)
	}
	p.line("Memory", fmt.Sprintf("%s total, %s available", gib(r.Memory.TotalBytes), gib(r.Memory.AvailableBytes)))

	p.section("Accelerators")
	if len(r.Accelerators) == 0 {
		p.printf("  none found\n")
	}
	for _, a := range r.Accelerators {
		head := a.Product
		if a.Generation != "" {
			head += ", " + a.Generation
		}
		if a.PeakTOPSInt8 > 0 {
			head += fmt.Sprintf(", %g TOPS INT8", a.PeakTOPSInt8)
		}
		if a.VendorID != "" {
			head += fmt.Sprintf(" [%s:%s]", a.VendorID, a.DeviceID)
		}
		p.item(a.Name, head)
		var d []string
		if a.Driver != "" {
			drv := "driver " + a.Driver
			if a.DriverVersion != "" {
				drv += " " + a.DriverVersion
			}
			d = append(d, drv)
		} else if a.Source == "accel" {
			d = append(d, "no driver bound")
		}
		if a.Firmware != "" {
			d = append(d, "firmware "+a.Firmware)
		}
		if a.Address != "" {
			d = append(d, strings.TrimSpace(a.Bus+" "+a.Address))
		}
		if len(a.Compatible) > 0 && a.VendorID == "" {
			d = append(d, "compatible "+strings.Join(a.Compatible, " "))
		}
		if len(d) > 0 {
			p.item("", strings.Join(d, ", "))
		}
		switch {
		case a.DevNode != "" && a.Accessible:
			p.item("", a.DevNode+": accessible")
		case a.DevNode != "":
			p.item("", a.DevNode+": NOT accessible")
		}
		if a.Hint != "" && !a.Accessible {
			p.item("", "hint: "+a.Hint)
		}
	}

	p.section("GPUs")
	if len(r.GPUs) == 0 {
		p.printf("  none found\n")
	}
	for _, g := range r.GPUs {
		s := orNone(g.Driver)
		if g.VendorID != "" {
			s += fmt.Sprintf(" [%s:%s]", g.VendorID, g.DeviceID)
		}
		if g.Address != "" {
			s += " at " + g.Address
		}
		p.item(g.Name, s)
	}

	if !t.Time.IsZero() {
		p.section("Telemetry")
		if len(t.Temperatures) == 0 {
			p.item("temps", "none readable")
		} else {
			p.item("hottest", fmt.Sprintf("%.1f°C", t.MaxCelsius))
		}
		for _, x := range t.Temperatures {
			s := fmt.Sprintf("%-28s %6.1f°C", x.Name, x.Celsius)
			if x.Trip != "" {
				s += fmt.Sprintf("  (%s trip %.1f°C reached)", x.Trip, x.TripCelsius)
			}
			p.item(x.Sensor, s)
		}
		if f := t.CPUFreq; f.CPUs > 0 {
			p.item("cpu freq", fmt.Sprintf("%.0f MHz mean over %d CPUs, %.0f%% of max %.0f MHz", f.CurMHz, f.CPUs, 100*f.Ratio, f.MaxMHz))
		}
		if t.Throttled {
			p.item("throttled", "yes")
			for _, why := range t.ThrottleReasons {
				p.item("", why)
			}
		} else {
			p.item("throttled", "no")
		}
		for _, n := range t.NPUs {
			s := "busy n/a (one sample)"
			if t.WindowSeconds > 0 {
				s = fmt.Sprintf("%.0f%% busy over %.1fs", 100*n.BusyFraction, t.WindowSeconds)
			}
			if n.MaxFreqMHz > 0 {
				s += fmt.Sprintf(", %.0f/%.0f MHz", n.FreqMHz, n.MaxFreqMHz)
			}
			if n.MemoryBytes > 0 {
				s += ", " + mib(n.MemoryBytes) + " in use"
			}
			p.item(n.Name, s)
		}
		for _, d := range t.Devfreq {
			s := fmt.Sprintf("%d/%d MHz", d.CurHz/1_000_000, d.MaxHz/1_000_000)
			if d.LoadPercent >= 0 {
				s += fmt.Sprintf(", %d%% load", d.LoadPercent)
			}
			p.item(d.Name, s)
		}
		for _, z := range t.Power {
			s := "n/a (one sample)"
			if t.WindowSeconds > 0 {
				s = fmt.Sprintf("%.1f W", z.Watts)
			}
			p.item(z.Zone, fmt.Sprintf("%-10s %s", z.Name, s))
		}
	}

	warns := append(append([]string(nil), r.Warnings...), t.Warnings...)
	if len(warns) > 0 {
		p.section("Warnings")
		for _, w := range warns {
			p.printf("  - %s\n", w)
		}
	}
	return p.err
}

// textWriter keeps the first write error so WriteText reads straight.
type textWriter struct {
	w   io.Writer
	err error
}

func (p *textWriter) printf(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}

func (p *textWriter) line(k, v string)    { p.printf("%-10s %s\n", k, v) }
func (p *textWriter) section(name string) { p.printf("\n%s\n", name) }
func (p *textWriter) item(k, v string)    { p.printf("  %-14s %s\n", k, v) }

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func gib(b uint64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }
func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
