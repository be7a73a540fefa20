#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install what is needed, build every binary, start
# a registry on loopback holding a busybox image, start rcd, and run containers from that image
# with rnerd (docker's command line: a published port reached from the host, logs, exec), then
# with rctr (the raw API), then runr on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if [ -z "${DEMO_BIN:-}" ]; then
  cargo build --release
fi
# .cargo/config.toml builds for the host's tuple: the binaries are in target/<tuple>/<profile>.
# DEMO_BIN=target/<tuple>/debug reuses binaries already built (development)
BIN="$(realpath "${DEMO_BIN:-target/$(rustc --print host-tuple)/release}")"
RUNR="$BIN/runr"
RCTR="$BIN/rctr"
RNERD="$BIN/rnerd"

work=$(mktemp -d /tmp/rcd-demo.XXXXXX)
sock="$work/rcd.sock"
rctr() { "$RCTR" --address "$sock" "$@"; }
rnerd() { "$RNERD" --address "$sock" "$@"; }
cleanup() {
  set +e
  if [ -n "${rcd_pid:-}" ]; then
    for c in $(rnerd ps -aq 2>/dev/null); do rnerd rm -f "$c" >/dev/null 2>&1; done
    for c in $(rctr containers ls -q 2>/dev/null); do
      rctr tasks kill -s KILL "$c" >/dev/null 2>&1
      rctr tasks rm -f "$c" >/dev/null 2>&1
      rctr containers rm "$c" >/dev/null 2>&1
    done
    rctr images rm docker.io/library/busybox:latest >/dev/null 2>&1
    kill "$rcd_pid" 2>/dev/null && wait "$rcd_pid" 2>/dev/null
  fi
  [ -n "${reg_pid:-}" ] && kill "$reg_pid" 2>/dev/null
  "$RUNR" --root "$work/runr" delete --force "demo-$$" >/dev/null 2>&1
  grep -o " $work[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  # the network's bridge outlives its containers (as docker's does)
  for l in $(ip -o link show | awk -F': ' '{print $2}' | grep '^rdemo-'); do ip link del "$l"; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== a busybox image (umoci), pushed to a docker-registry on 127.0.0.1 (skopeo)"
port=$((20000 + RANDOM % 20000))
mkdir -p "$work/reg"
cat > "$work/reg/config.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/reg/data
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/reg/config.yml" > "$work/reg/log" 2>&1 &
reg_pid=$!
umoci init --layout "$work/oci" && umoci new --image "$work/oci:busybox"
umoci unpack --image "$work/oci:busybox" "$work/img" >/dev/null
mkdir -p "$work/img/rootfs/bin" "$work/img/rootfs/etc"
cp /bin/busybox "$work/img/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$work/img/rootfs/bin/$a"; done
echo "root:x:0:0:root:/root:/bin/sh" > "$work/img/rootfs/etc/passwd"
umoci repack --image "$work/oci:busybox" "$work/img"
umoci config --image "$work/oci:busybox" --config.cmd sh --config.env PATH=/bin:/usr/bin
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:busybox" \
  "docker://127.0.0.1:$port/library/busybox:latest"

echo "== rcd, with docker.io mirrored to that registry"
cat > "$work/rcd.toml" <<TOML
root = "$work/root"
state = "$work/state"
address = "$sock"
log_level = "warn"

[networks]
pool = "10.86.0.0/16"
bridge_prefix = "rdemo-"

[registries."docker.io"]
[[registries."docker.io".mirrors]]
url = "http://127.0.0.1:$port"
TOML
"$BIN/rcd" --config "$work/rcd.toml" > "$work/rcd.log" 2>&1 &
rcd_pid=$!
for _ in $(seq 100); do rctr version >/dev/null 2>&1 && break; sleep 0.1; done
rctr version

echo "== rnerd pull busybox (docker.io/library/busybox:latest, served by the mirror)"
rnerd pull busybox
rnerd images

echo "== rnerd run --rm: output, then the container's exit code"
set +e
rnerd run --rm busybox sh -c 'echo hello from $(hostname), pid $$, in a container run by rcd; exit 7'
code=$?
set -e
echo "exit code: $code"
[ "$code" = 7 ] || { echo "expected exit code 7" >&2; exit 1; }

hp=$((20000 + RANDOM % 20000))
echo "== rnerd run -d -p $hp:80 --name web: busybox httpd on the bridge network, reached from the host"
rnerd run -d -p "$hp:80" --name web busybox \
  sh -c 'mkdir -p /www && echo "hello from web over $(hostname -i)" > /www/index.html && echo serving && exec httpd -f -p 80 -h /www'
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$hp/index.html" >/dev/null && break; sleep 0.1; done
echo "curl http://127.0.0.1:$hp/: $(curl -fsS "http://127.0.0.1:$hp/index.html")"
rnerd ps
rnerd port web
rnerd exec web sh -c 'echo "exec in web sees: $(ps -o comm | tail -n +2 | tr "\n" " ")"'
rnerd logs web
rnerd rm -f web

echo "== rctr (the raw API): images ls, then containers and tasks one by one"
rctr images ls

echo "== rctr run --rm: output, then the container's exit code"
set +e
rctr run --rm busybox demo1 sh -c 'echo hello from $(hostname), pid $$, in a container run by rcd; exit 7'
code=$?
set -e
echo "exit code: $code"
[ "$code" = 7 ] || { echo "expected exit code 7" >&2; exit 1; }

echo "== rctr run -d / tasks ls / exec / kill / rm"
rctr run -d busybox web sleep 300
rctr tasks ls
rctr tasks exec --exec-id e1 web sh -c 'echo "exec sees pid 1: $(cat /proc/1/cmdline | tr "\0" " ")"'
rctr tasks kill -s KILL web
for _ in $(seq 50); do rctr tasks ls | grep -q "web.*STOPPED" && break; sleep 0.1; done
rctr tasks ls
rctr tasks rm web
rctr containers rm web

echo "== runr on its own: a bundle from the image's rootfs, runc's command line"
mkdir -p "$work/bundle"
cp -a "$work/img/rootfs" "$work/bundle/rootfs"
mkdir -p "$work/bundle/rootfs"/{proc,sys,dev,tmp}
(cd "$work/bundle" && "$RUNR" spec)
jq --arg cg "/runr-demo-$$" '.process.terminal = false
  | .process.args = ["sh", "-c", "echo hello from runr; exit 3"]
  | .linux.cgroupsPath = $cg' "$work/bundle/config.json" > "$work/config.json"
mv "$work/config.json" "$work/bundle/config.json"
set +e
"$RUNR" --root "$work/runr" run --bundle "$work/bundle" "demo-$$"
code=$?
set -e
echo "runr exit code: $code"
[ "$code" = 3 ] || { echo "expected exit code 3" >&2; exit 1; }
echo "== done: the image was pulled, containers ran and exited, nothing is left behind"
