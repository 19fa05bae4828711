package kernels

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkCoreHandoff times a cache line's round trip (ns/op) between
// two threads pinned to the first two CPUs the process may use: each waits
// for the other's store, then stores. It is what every meeting of the pool's
// threads and every activation one thread writes and the other reads pay,
// and on a virtual machine it tells where the two vCPUs sit. On this
// project's 2-vCPU VM it was 50-75 ns while a two-thread read reached
// 27-31 GB/s (one L3, one link to memory) and 330-380 ns while it reached
// 39-48 GB/s (two dies, two links); the hypervisor moves the vCPUs
// between the two every few seconds (docs/performance.md, session 5).
func BenchmarkCoreHandoff(b *testing.B) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		b.Skipf("no CPU affinity: %v", err)
	}
	var cpus []int
	for c := 0; c < 1024 && len(cpus) < 2; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) < 2 {
		b.Skip("one CPU: nothing to hand off to")
	}
	var flag atomic.Int64
	n := int64(b.N)
	var wg sync.WaitGroup
	b.ResetTimer()
	for side, cpu := range cpus {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			// The thread goes back with the CPUs it had, so that no later
			// code (nor a thread it starts) stays pinned.
			defer unix.SchedSetaffinity(0, &set)
			var one unix.CPUSet
			one.Set(cpu)
			if err := unix.SchedSetaffinity(0, &one); err != nil {
				b.Errorf("pin to CPU %d: %v", cpu, err)
				flag.Store(-1) // and the other side stops
				return
			}
			for i := range n {
				for want := 2*i + int64(side); ; {
					v := flag.Load()
					if v == want {
						break
					}
					if v < 0 {
						return
					}
				}
				flag.Store(2*i + int64(side) + 1)
			}
		})
	}
	wg.Wait()
}
