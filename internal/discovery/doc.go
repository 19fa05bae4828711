// Package discovery finds npumesh coordinators and nodes on the local network
// with DNS-SD over multicast DNS (RFC 6762, RFC 6763), so that a machine given
// only a join token can find the coordinator of its cluster.
//
// Coordinators advertise the service type _npumesh._tcp, node daemons
// _npumesh-node._tcp; TXT records carry the cluster (the SHA-256 of its CA
// certificate), the version and the ports (see Service for the layout).
//
// What mDNS says is a hint and never trusted: anyone on the LAN can answer.
// FindCoordinator only narrows the search to the cluster a join token names;
// the enrollment code then checks the CA fingerprint in the TLS handshake
// before it sends any secret. This package must not make security decisions,
// open TCP connections, or import the trust, coordinator or node packages.
//
// Only IPv4 multicast (224.0.0.251:5353) is used; IPv6-only LANs are not
// covered yet.
package discovery
