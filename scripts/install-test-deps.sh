#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: real components,
# never mocks. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
have openssl || need_apt+=(openssl)
have protoc || need_apt+=(protobuf-compiler)
have node || need_apt+=(nodejs)
have npm || need_apt+=(npm)
have gcc || need_apt+=(gcc libc6-dev) # go test -race uses cgo
have git || need_apt+=(git)
have make || need_apt+=(make)
# Foreign-architecture binaries run under qemu user-mode emulation (TestQemuCluster).
[ -x /usr/bin/qemu-aarch64-static ] && [ -x /usr/bin/qemu-riscv64-static ] || need_apt+=(qemu-user-static)
have systemd-analyze || need_apt+=(systemd) # TestSystemdUnits
have chromium || need_apt+=(chromium) # TestDashboard*: headless browser
have prometheus || need_apt+=(prometheus) # TestPrometheusScrapesCoordinator: a real server
have ip || need_apt+=(iproute2) # network-namespace tests (hosts on a bridge), tc for shaped links
have avahi-daemon || need_apt+=(avahi-daemon) # TestMDNSAvahiInterop (run privately inside a namespace)
have avahi-browse || need_apt+=(avahi-utils)
have dbus-daemon || need_apt+=(dbus-daemon) # a private bus for that avahi-daemon
have mount || need_apt+=(util-linux)
have etcd || need_apt+=(etcd-server) # HA tests: coordinators sharing state through a real etcd

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${need_apt[*]}; run as root or: sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
  echo "install-test-deps: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Pinned protoc plugins, for the generated-code drift check.
make -s proto-tools

# The official OpenAI Node.js client, pinned by package-lock.json.
if [ ! -d test/openai-client/node_modules/openai ]; then
  echo "install-test-deps: npm ci (openai client)"
  (cd test/openai-client && npm ci --no-audit --no-fund --loglevel=error)
fi
