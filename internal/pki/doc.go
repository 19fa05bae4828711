// Package pki is the cluster's trust layer: the cluster CA, the certificates
// it issues to nodes, coordinators and clients, the on-disk bundles that hold
// them, and the TLS 1.3 configurations and gRPC interceptors that enforce
// mutual authentication and role checks on every connection between machines.
//
// A peer's identity is the URI SAN npumesh://<role>/<name> in a certificate
// that chains to the cluster CA; DNS names and IP addresses in certificates
// are informational and never used to authenticate a peer.
//
// This package must not open network connections, log, or read anything but
// the files it is pointed at; it depends only on the standard library and gRPC.
package pki
