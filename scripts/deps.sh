#!/usr/bin/env bash
# Installs every system package the build, the tests and the benchmarks use. Idempotent and quick
# when everything is already there.
set -euo pipefail

PACKAGES=(
  # build: libcontainer's seccomp support, CRI protos
  libseccomp-dev pkg-config protobuf-compiler gcc libc6-dev
  # test fixtures and peers
  busybox-static docker-registry containernetworking-plugins skopeo umoci
  runc crun containerd
  # the streaming tests' independent SPDY peer: moby/spdystream (kubelet's SPDY stack) and
  # gorilla/websocket (client-go's), built offline in GOPATH mode with Debian's Go
  golang-go golang-github-docker-spdystream-dev golang-github-gorilla-websocket-dev
  # tools the tests and scripts call
  iptables iproute2 jq procps util-linux hyperfine curl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian starts services on install; the tests start their own instances on private sockets.
for svc in containerd docker-registry; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

# rcd's default pod network (bridge rcd0, 10.99.0.0/16, portmap, firewall), the same file
# rcd::cni::default::install_default writes: only into a config dir that holds no network yet,
# never over an admin's own. The tests use their own config dirs and bridges, not this one.
cni_conf_dir=/etc/cni/net.d
if ! compgen -G "$cni_conf_dir/*.conflist" >/dev/null && ! compgen -G "$cni_conf_dir/*.conf" >/dev/null \
  && ! compgen -G "$cni_conf_dir/*.json" >/dev/null; then
  install -D -m 0644 "$(dirname "$0")/../daemon/cni/10-rcd.conflist" "$cni_conf_dir/10-rcd.conflist"
fi

command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
