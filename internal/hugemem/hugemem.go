// Package hugemem allocates memory outside the Go heap for data that is
// streamed end to end many times: the engine's packed weights and the
// bandwidth probe that bounds reading them. On unix the memory is an
// anonymous mapping on a 2 MiB boundary, advised to use transparent huge
// pages (granted where the system's setting is "always" or "madvise"):
// streaming it then takes a TLB miss every 2 MiB instead of every 4 KiB, a
// page walk that is dear in a virtual machine. Elsewhere it is a Go slice.
//
// It imports the standard library and x/sys/unix only.
package hugemem
