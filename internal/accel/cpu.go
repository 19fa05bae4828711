package accel

import (
	"bufio"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// CPU describes the host processor as /proc/cpuinfo and sysfs topology show it.
type CPU struct {
	// Model is "model name" on x86, the core types on arm64 (from the
	// implementer/part ids) and the "uarch" line on RISC-V; "unknown" otherwise.
	Model string `json:"model"`
	// Arch is x86_64, x86, arm64, arm, riscv64, riscv32 or "unknown", as read
	// from cpuinfo (not the architecture this binary was built for).
	Arch    string `json:"arch"`
	Logical int    `json:"logical_cores"`
	// Physical counts distinct cores (SMT siblings once); 0 when not derivable.
	Physical int `json:"physical_cores,omitempty"`
	// SIMD lists the vector features inference kernels care about, with
	// normalised names: x86 flags as the kernel spells them (avx2, fma,
	// avx512f, amx_tile...), arm64 neon, fp16, dotprod, i8mm, bf16, sve, sve2,
	// sme, and rvv for the RISC-V V extension.
	SIMD []string `json:"simd,omitempty"`
	// ISA is the RISC-V "isa" line, e.g. rv64imafdcv_zicbom_...
	ISA string `json:"isa,omitempty"`
}

// Has reports whether feature (a normalised SIMD name) is present.
func (c CPU) Has(feature string) bool { return slices.Contains(c.SIMD, feature) }

// Memory is from /proc/meminfo.
type Memory struct {
	TotalBytes     uint64 `json:"total_bytes"`
	AvailableBytes uint64 `json:"available_bytes"`
}

// x86Features are the flags worth reporting, in report order.
var x86Features = []string{
	"sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx_vnni_int8",
	"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
	"amx_tile", "amx_int8", "amx_bf16",
}

// armFeatures maps /proc/cpuinfo "Features" words (arch/arm64/kernel/cpuinfo.c
// hwcap names) to report names, in report order.
var armFeatures = []struct{ hwcap, name string }{
	{"asimd", "neon"},
	{"asimdhp", "fp16"},
	{"asimddp", "dotprod"},
	{"i8mm", "i8mm"},
	{"bf16", "bf16"},
	{"sve", "sve"},
	{"sve2", "sve2"},
	{"sme", "sme"},
}

// armCores names common CPU parts by (implementer, part) from cpuinfo.
// Source: Arm Technical Reference Manuals, MIDR_EL1 PartNum field, as also
// listed in the kernel's arch/arm64/include/asm/cputype.h.
var armCores = map[[2]uint64]string{
	{0x41, 0xd03}: "Cortex-A53",
	{0x41, 0xd04}: "Cortex-A35",
	{0x41, 0xd05}: "Cortex-A55",
	{0x41, 0xd07}: "Cortex-A57",
	{0x41, 0xd08}: "Cortex-A72",
	{0x41, 0xd09}: "Cortex-A73",
	{0x41, 0xd0a}: "Cortex-A75",
	{0x41, 0xd0b}: "Cortex-A76",
	{0x41, 0xd0d}: "Cortex-A77",
	{0x41, 0xd41}: "Cortex-A78",
	{0x41, 0xd46}: "Cortex-A510",
	{0x41, 0xd47}: "Cortex-A710",
	{0x41, 0xd48}: "Cortex-X2",
	{0x41, 0xd4d}: "Cortex-A715",
	{0x41, 0xd80}: "Cortex-A520",
	{0x41, 0xd81}: "Cortex-A720",
	{0x41, 0xd0c}: "Neoverse-N1",
	{0x41, 0xd49}: "Neoverse-N2",
	{0x41, 0xd40}: "Neoverse-V1",
}

// cpuInfo is what parseCPUInfo extracts from /proc/cpuinfo.
type cpuInfo struct {
	processors int
	model      string
	uarch      string
	hardware   string
	flags      []string // x86 "flags" of the first processor
	features   []string // arm "Features" of the first processor
	isa        string
	armParts   []string // per processor, in order: decoded core names
	physCores  int      // distinct (physical id, core id) pairs, 0 if absent
}

// parseCPUInfo reads the "key : value" blocks of /proc/cpuinfo. It never
// fails: unknown lines are ignored.
func parseCPUInfo(text string) cpuInfo {
	var ci cpuInfo
	pairs := map[string]bool{}
	var physID, coreID string
	var implementer uint64
	var haveImpl bool
	flush := func() {
		if physID != "" && coreID != "" {
			pairs[physID+"/"+coreID] = true
		}
		physID, coreID = "", ""
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			if strings.TrimSpace(line) == "" {
				flush()
			}
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "processor":
			// On arm32 "Processor" (capital P) names the model; only the
			// lower-case key counts processors.
			if _, err := strconv.Atoi(v); err == nil {
				ci.processors++
			}
		case "model name":
			if ci.model == "" {
				ci.model = v
			}
		case "uarch":
			if ci.uarch == "" {
				ci.uarch = v
			}
		case "Hardware":
			ci.hardware = v
		case "flags":
			if ci.flags == nil {
				ci.flags = strings.Fields(v)
			}
		case "Features":
			if ci.features == nil {
				ci.features = strings.Fields(v)
			}
		case "isa":
			if ci.isa == "" {
				ci.isa = v
			}
		case "physical id":
			physID = v
		case "core id":
			coreID = v
		case "CPU implementer":
			implementer, haveImpl = parseHex(v)
		case "CPU part":
			part, ok := parseHex(v)
			name := "unknown"
			if ok && haveImpl {
				if n, found := armCores[[2]uint64{implementer, part}]; found {
					name = n
				} else {
					name = fmt.Sprintf("0x%02x:0x%03x", implementer, part)
				}
			}
			ci.armParts = append(ci.armParts, name)
		}
	}
	flush()
	ci.physCores = len(pairs)
	return ci
}

func parseHex(s string) (uint64, bool) {
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(s), "0x"), 16, 64)
	return v, err == nil
}

func (ci cpuInfo) arch() string {
	switch {
	case ci.flags != nil:
		if slices.Contains(ci.flags, "lm") {
			return "x86_64"
		}
		return "x86"
	case strings.HasPrefix(ci.isa, "rv64"):
		return "riscv64"
	case strings.HasPrefix(ci.isa, "rv32"):
		return "riscv32"
	case ci.features != nil:
		// arm64 kernels report "asimd"; 32-bit ones "neon".
		if slices.Contains(ci.features, "asimd") || slices.Contains(ci.features, "fp") {
			return "arm64"
		}
		return "arm"
	}
	return "unknown"
}

func (ci cpuInfo) simd() []string {
	var out []string
	switch {
	case ci.flags != nil:
		for _, f := range x86Features {
			if slices.Contains(ci.flags, f) {
				out = append(out, f)
			}
		}
	case ci.features != nil:
		for _, f := range armFeatures {
			if slices.Contains(ci.features, f.hwcap) {
				out = append(out, f.name)
			}
		}
		// 32-bit arm names NEON directly.
		if slices.Contains(ci.features, "neon") && !slices.Contains(out, "neon") {
			out = append([]string{"neon"}, out...)
		}
	case ci.isa != "":
		if riscvHasV(ci.isa) {
			out = append(out, "rvv")
		}
	}
	return out
}

// riscvHasV reports whether the single-letter part of a RISC-V ISA string
// (before the first '_' of multi-letter extensions) contains V. "g" expands to
// imafd and does not include V; the zve* subsets are not full V.
func riscvHasV(isa string) bool {
	s := strings.ToLower(isa)
	for _, p := range []string{"rv64", "rv32", "rv128"} {
		if strings.HasPrefix(s, p) {
			s = s[len(p):]
			break
		}
	}
	base, _, _ := strings.Cut(s, "_")
	// Multi-letter extensions may also follow without '_' in odd strings,
	// starting at the first z, s or x.
	if i := strings.IndexAny(base, "zsx"); i >= 0 {
		base = base[:i]
	}
	return strings.ContainsRune(base, 'v')
}

// model returns a readable processor name.
func (ci cpuInfo) modelName() string {
	switch {
	case ci.model != "":
		return ci.model
	case len(ci.armParts) > 0:
		return summariseParts(ci.armParts)
	case ci.uarch != "":
		return ci.uarch
	case ci.hardware != "":
		return ci.hardware
	}
	return "unknown"
}

// summariseParts turns [A55 A55 A55 A55 A76 A76 A76 A76] into
// "4x Cortex-A55 + 4x Cortex-A76", in first-seen order.
func summariseParts(parts []string) string {
	var order []string
	count := map[string]int{}
	for _, p := range parts {
		if count[p] == 0 {
			order = append(order, p)
		}
		count[p]++
	}
	var b strings.Builder
	for i, p := range order {
		if i > 0 {
			b.WriteString(" + ")
		}
		fmt.Fprintf(&b, "%dx %s", count[p], p)
	}
	return b.String()
}

// parseMeminfo returns MemTotal and MemAvailable in bytes; ok flags say which
// were found.
func parseMeminfo(text string) (total, avail uint64, okTotal, okAvail bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && strings.EqualFold(f[1], "kB") {
			n *= 1024
		}
		switch k {
		case "MemTotal":
			total, okTotal = n, true
		case "MemAvailable":
			avail, okAvail = n, true
		}
	}
	return
}

// discoverCPU fills CPU from /proc/cpuinfo and sysfs topology.
func (r *reader) discoverCPU() CPU {
	var ci cpuInfo
	if b, err := r.readLimited("/proc/cpuinfo", maxProcBytes); err != nil {
		r.warnf("cpu: read /proc/cpuinfo: %v", errShort(err))
	} else {
		ci = parseCPUInfo(string(b))
	}
	c := CPU{
		Model:   ci.modelName(),
		Arch:    ci.arch(),
		Logical: ci.processors,
		SIMD:    ci.simd(),
		ISA:     ci.isa,
	}
	if c.Logical == 0 {
		c.Logical = len(r.glob("/sys/devices/system/cpu/cpu[0-9]*"))
	}
	c.Physical = ci.physCores
	if c.Physical == 0 {
		c.Physical = r.siblingSets()
	}
	if c.Logical == 0 {
		r.warnf("cpu: no processors found in /proc/cpuinfo or /sys/devices/system/cpu")
	}
	return c
}

// siblingSets counts distinct SMT sibling lists: one per physical core.
func (r *reader) siblingSets() int {
	sets := map[string]bool{}
	for _, cpu := range r.glob("/sys/devices/system/cpu/cpu[0-9]*") {
		s, ok := r.str(cpu + "/topology/core_cpus_list")
		if !ok {
			s, ok = r.str(cpu + "/topology/thread_siblings_list")
		}
		if ok && s != "" {
			sets[s] = true
		}
	}
	return len(sets)
}

func (r *reader) discoverMemory() Memory {
	b, err := r.readLimited("/proc/meminfo", maxAttrBytes)
	if err != nil {
		r.warnf("memory: read /proc/meminfo: %v", errShort(err))
		return Memory{}
	}
	total, avail, okT, okA := parseMeminfo(string(b))
	if !okT {
		r.warnf("memory: no MemTotal in /proc/meminfo")
	}
	if !okA {
		r.warnf("memory: no MemAvailable in /proc/meminfo")
	}
	return Memory{TotalBytes: total, AvailableBytes: avail}
}
