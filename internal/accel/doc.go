// Package accel finds out what silicon a node has (NPUs, GPUs, CPU features,
// memory) and how hot and busy it runs, by reading Linux sysfs, procfs and the
// device tree under an injectable root directory ("/" on a live machine, a
// fixture tree in tests).
//
// It only reads files and never fails: a missing, unreadable or garbled file
// degrades the affected field to "unknown" or zero and adds a line to
// Warnings, so the node daemon keeps running on odd kernels and boards.
//
// The package uses the standard library only and must not import the network
// stack or gRPC: the node daemon serialises what it returns.
package accel
