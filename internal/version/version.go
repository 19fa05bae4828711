// Package version holds the build's version and commit, stamped in by the
// linker (-X) for releases. It must stay free of dependencies.
package version

import "runtime/debug"

// Set with -ldflags "-X github.com/npumesh/npumesh/internal/version.Version=v0.1.0 ...".
var (
	Version = "dev"
	Commit  = ""
)

// String is "dev (abc1234)" or "v0.1.0 (abc1234)".
func String() string {
	c := Commit
	if c == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 7 {
					c = s.Value[:7]
				}
			}
		}
	}
	if c == "" {
		return Version
	}
	return Version + " (" + c + ")"
}
