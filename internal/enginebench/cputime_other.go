//go:build !unix

package enginebench

import "time"

// cpuTime is unknown here: the CPU-time rates stay 0.
func cpuTime() time.Duration { return 0 }
