package accel

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Report is what a node knows about its own silicon. The zero value of a
// field means unknown; Warnings says why where a file was there but bad.
type Report struct {
	Kernel       string        `json:"kernel,omitempty"` // /proc/sys/kernel/osrelease
	Board        string        `json:"board,omitempty"`  // device-tree model, e.g. "Radxa ROCK 5B"
	CPU          CPU           `json:"cpu"`
	Memory       Memory        `json:"memory"`
	Accelerators []Accelerator `json:"accelerators"`
	GPUs         []GPU         `json:"gpus"`
	Warnings     []string      `json:"warnings,omitempty"`
}

// Accelerator is an NPU found as a /sys/class/accel device or, when no accel
// driver exposes it, by its device-tree node.
type Accelerator struct {
	// Name is the accel class name ("accel0") or the device-tree node path.
	Name string `json:"name"`
	// Source is "accel" or "devicetree".
	Source        string `json:"source"`
	Driver        string `json:"driver,omitempty"` // bound kernel driver: intel_vpu, amdxdna, rocket...
	DriverVersion string `json:"driver_version,omitempty"`
	Firmware      string `json:"firmware,omitempty"`
	Bus           string `json:"bus,omitempty"`     // pci, platform
	Address       string `json:"address,omitempty"` // PCI address or platform device name
	// VendorID, DeviceID and Revision are PCI ids as the kernel prints them
	// ("0x8086"); empty off PCI or when unreadable.
	VendorID   string   `json:"vendor_id,omitempty"`
	DeviceID   string   `json:"device_id,omitempty"`
	Revision   string   `json:"revision,omitempty"`
	Compatible []string `json:"compatible,omitempty"` // device-tree compatible strings
	// Product is from the product table, "unknown" when the ids are not in it.
	Product      string  `json:"product"`
	Generation   string  `json:"generation,omitempty"`
	PeakTOPSInt8 float64 `json:"peak_tops_int8,omitempty"`
	// DevNode is the character device the runtime opens, e.g. /dev/accel/accel0.
	DevNode string `json:"dev_node,omitempty"`
	// Accessible says whether the daemon's user can open DevNode read-write.
	Accessible bool `json:"accessible"`
	// Hint says what to do when it cannot, e.g. which group to join.
	Hint string `json:"hint,omitempty"`
}

// GPU is a DRM card from /sys/class/drm.
type GPU struct {
	Name     string `json:"name"` // card0
	Driver   string `json:"driver,omitempty"`
	Address  string `json:"address,omitempty"`
	VendorID string `json:"vendor_id,omitempty"`
	DeviceID string `json:"device_id,omitempty"`
}

// NodeInfo describes a device node and whether the daemon may use it.
type NodeInfo struct {
	Mode     fs.FileMode
	UID, GID uint32
	// CanOpen says whether the daemon's user may open the node read-write.
	CanOpen bool
}

// Options configure DiscoverWith.
type Options struct {
	// Root is the directory that stands for "/"; empty means "/".
	Root string
	// Node inspects a device node given by its live path ("/dev/accel/accel0").
	// It returns an error wrapping fs.ErrNotExist when there is none. Nil
	// means the real checks on the file under Root: stat(2) for owner and
	// mode, access(2) for read-write permission (which honours ACLs set by
	// logind's uaccess). Tests inject a fake, since fixture files cannot carry
	// the device's owner and group.
	Node func(path string) (NodeInfo, error)
}

// Discover inspects the machine whose file system is at root ("/" for this
// machine). It never fails; problems end up in Report.Warnings.
func Discover(root string) Report { return DiscoverWith(Options{Root: root}) }

// DiscoverWith is Discover with injectable device-node checks.
func DiscoverWith(opts Options) Report {
	r := newReader(opts.Root)
	node := opts.Node
	if node == nil {
		node = func(p string) (NodeInfo, error) { return liveNode(r.path(p)) }
	}
	rep := Report{
		CPU:          r.discoverCPU(),
		Memory:       r.discoverMemory(),
		Accelerators: []Accelerator{},
		GPUs:         []GPU{},
	}
	rep.Kernel, _ = r.str("/proc/sys/kernel/osrelease")
	dt := r.deviceTreeBase()
	if dt != "" {
		if m, ok := r.str(dt + "/model"); ok {
			rep.Board = strings.TrimRight(m, "\x00")
		}
	}
	rep.Accelerators = r.discoverAccel(node)
	rep.Accelerators = append(rep.Accelerators, r.discoverDTNPUs(dt, rep.Accelerators)...)
	rep.GPUs = r.discoverDRM()
	rep.Warnings = r.warns
	return rep
}

// discoverAccel lists /sys/class/accel/accel*.
func (r *reader) discoverAccel(node func(string) (NodeInfo, error)) []Accelerator {
	var out []Accelerator
	for _, p := range r.glob("/sys/class/accel/accel*") {
		name := filepath.Base(p)
		dev := p + "/device"
		a := Accelerator{Name: name, Source: "accel", Product: "unknown"}
		a.Driver = r.linkBase(dev + "/driver")
		a.Bus = r.linkBase(dev + "/subsystem")
		a.Address = r.linkBase(dev)
		if a.Driver != "" {
			if mod := r.linkBase(dev + "/driver/module"); mod != "" {
				a.DriverVersion, _ = r.str("/sys/module/" + mod + "/version")
			}
		}
		// amdxdna (out-of-tree amd/xdna-driver) exposes fw_version on the
		// PCI device; other drivers may follow the same name.
		a.Firmware, _ = r.str(dev + "/fw_version")

		if vendor, device, ok := r.pciIDs(dev); ok {
			a.VendorID = fmt.Sprintf("%#04x", vendor)
			a.DeviceID = fmt.Sprintf("%#04x", device)
			if rev, ok := r.str(dev + "/revision"); ok {
				a.Revision = rev
			}
			if pr, ok := pciProducts[pciID{vendor, device}]; ok {
				a.Product, a.Generation, a.PeakTOPSInt8 = pr.name, pr.generation, pr.topsInt8
			}
		}
		if c := r.compatible(dev + "/of_node/compatible"); len(c) > 0 {
			a.Compatible = c
			if a.Product == "unknown" {
				if pr, ok := lookupDT(c, false); ok {
					a.Product, a.Generation, a.PeakTOPSInt8 = pr.name, pr.generation, pr.topsInt8
				}
			}
		}
		a.DevNode = "/dev/" + r.ueventDevName(p, "accel/"+name)
		r.checkNode(&a, node)
		out = append(out, a)
	}
	return out
}

// pciIDs reads device/vendor and device/device. ok is false off PCI (no
// files) or with garbage (warned).
func (r *reader) pciIDs(dev string) (vendor, device uint16, ok bool) {
	vs, vok := r.str(dev + "/vendor")
	ds, dok := r.str(dev + "/device")
	if !vok || !dok {
		return 0, 0, false
	}
	v, err1 := strconv.ParseUint(strings.TrimPrefix(vs, "0x"), 16, 16)
	d, err2 := strconv.ParseUint(strings.TrimPrefix(ds, "0x"), 16, 16)
	if err1 != nil || err2 != nil {
		r.warnf("%s: bad PCI ids vendor=%q device=%q", dev, clip(vs), clip(ds))
		return 0, 0, false
	}
	return uint16(v), uint16(d), true
}

// ueventDevName returns DEVNAME from the class device's uevent, or def.
func (r *reader) ueventDevName(classDev, def string) string {
	s, ok := r.str(classDev + "/uevent")
	if !ok {
		return def
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(line, "DEVNAME="); ok && v != "" && !strings.Contains(v, "..") {
			return v
		}
	}
	return def
}

// checkNode fills Accessible and Hint for a's DevNode.
func (r *reader) checkNode(a *Accelerator, node func(string) (NodeInfo, error)) {
	info, err := node(a.DevNode)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		a.Hint = fmt.Sprintf("%s does not exist: check that udev created it (inside a container, pass the device through)", a.DevNode)
		return
	case err != nil:
		r.warnf("%s: %v", a.DevNode, errShort(err))
		a.Hint = fmt.Sprintf("cannot inspect %s: %v", a.DevNode, errShort(err))
		return
	}
	a.Accessible = info.CanOpen
	if info.CanOpen {
		return
	}
	group := r.groupName(info.GID)
	if info.Mode.Perm()&0o060 == 0o060 {
		a.Hint = fmt.Sprintf("cannot open %s read-write: add the daemon's user to group %q (sudo usermod -aG %s USER), then log in again or restart the daemon",
			a.DevNode, group, group)
		return
	}
	a.Hint = fmt.Sprintf("cannot open %s read-write (mode %v, group %q): add a udev rule that gives group %q read-write access, then add the daemon's user to it",
		a.DevNode, info.Mode.Perm(), group, "render")
}

// groupName maps a gid to its name through /etc/group under root; unknown
// gids are returned as numbers.
func (r *reader) groupName(gid uint32) string {
	b, err := r.readLimited("/etc/group", maxProcBytes)
	if err == nil {
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			f := strings.Split(sc.Text(), ":")
			if len(f) >= 3 && f[2] == strconv.FormatUint(uint64(gid), 10) {
				return f[0]
			}
		}
	}
	return strconv.FormatUint(uint64(gid), 10)
}

var drmCard = regexp.MustCompile(`^card[0-9]+$`)

// discoverDRM lists DRM cards (connectors like card0-eDP-1 are skipped).
func (r *reader) discoverDRM() []GPU {
	out := []GPU{}
	for _, p := range r.glob("/sys/class/drm/card*") {
		name := filepath.Base(p)
		if !drmCard.MatchString(name) {
			continue
		}
		dev := p + "/device"
		g := GPU{Name: name, Driver: r.linkBase(dev + "/driver"), Address: r.linkBase(dev)}
		if v, d, ok := r.pciIDs(dev); ok {
			g.VendorID, g.DeviceID = fmt.Sprintf("%#04x", v), fmt.Sprintf("%#04x", d)
		}
		out = append(out, g)
	}
	return out
}

// deviceTreeBase returns the live path of the flattened device tree, or "".
func (r *reader) deviceTreeBase() string {
	for _, p := range []string{"/sys/firmware/devicetree/base", "/proc/device-tree"} {
		if r.exists(p + "/compatible") {
			return p
		}
	}
	return ""
}

// compatible reads a NUL-separated device-tree string list.
func (r *reader) compatible(p string) []string {
	s, ok := r.str(p)
	if !ok {
		return nil
	}
	var out []string
	for _, c := range strings.Split(s, "\x00") {
		if c = strings.TrimSpace(c); c != "" {
			out = append(out, c)
		}
	}
	return out
}

// maxDTDepth bounds the device-tree walk; NPU nodes sit at depth 1-3.
const maxDTDepth = 4

// discoverDTNPUs finds NPUs by device-tree compatible strings, skipping
// products an accel device already reported and disabled nodes. Several
// nodes of one product (the three RK3588 NPU cores) give one entry.
func (r *reader) discoverDTNPUs(base string, have []Accelerator) []Accelerator {
	if base == "" {
		return nil
	}
	seen := map[string]bool{}
	for _, a := range have {
		seen[a.Product] = true
	}
	var out []Accelerator
	add := func(name string, compat []string, pr dtProduct) {
		if seen[pr.name] {
			return
		}
		seen[pr.name] = true
		a := Accelerator{
			Name: name, Source: "devicetree", Compatible: compat,
			Product: pr.name, Generation: pr.generation, PeakTOPSInt8: pr.topsInt8,
		}
		if pr.root {
			a.Accessible = true
			a.Hint = "runs on the CPU cores through vendor instructions; no device node needed"
		} else {
			a.Hint = "described in the device tree but no accel driver exposes it; vendor runtimes use their own device nodes"
		}
		out = append(out, a)
	}
	if c := r.compatible(base + "/compatible"); len(c) > 0 {
		if pr, ok := lookupDT(c, true); ok {
			add("/", c, pr)
		}
	}
	absBase, err := filepath.EvalSymlinks(r.path(base))
	if err != nil {
		return out
	}
	err = filepath.WalkDir(absBase, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p != absBase {
				return nil // unreadable subtree: skip it, keep walking
			}
			return err
		}
		if !d.IsDir() || p == absBase {
			return nil
		}
		rel, _ := filepath.Rel(absBase, p)
		if strings.Count(rel, string(filepath.Separator)) >= maxDTDepth {
			return fs.SkipDir
		}
		compat := readCompat(filepath.Join(p, "compatible"))
		if len(compat) == 0 {
			return nil
		}
		pr, ok := lookupDT(compat, false)
		if !ok {
			return nil
		}
		if st, err := os.ReadFile(filepath.Join(p, "status")); err == nil {
			s := strings.TrimRight(strings.TrimSpace(string(st)), "\x00")
			if s != "okay" && s != "ok" {
				return nil
			}
		}
		add("/"+filepath.ToSlash(rel), compat, pr)
		return nil
	})
	if err != nil {
		r.warnf("devicetree: walk %s: %v", base, errShort(err))
	}
	return out
}

func readCompat(p string) []string {
	f, err := os.Open(p)
	if err != nil {
		return nil
	}
	defer f.Close()
	buf := make([]byte, 4096)
	n, _ := f.Read(buf)
	var out []string
	for _, c := range strings.Split(string(buf[:n]), "\x00") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}
