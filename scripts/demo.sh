#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install what is needed, build every binary,
# then run a real busybox container with runr and show its lifecycle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release
RUNR="$PWD/target/release/runr"

work=$(mktemp -d /tmp/runr-demo.XXXXXX)
root="$work/state"
id="demo-$$"
cleanup() {
  "$RUNR" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# a bundle: busybox with its applets, and runr's default config.json
mkdir -p "$work/bundle/rootfs/bin"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$work/bundle/rootfs/bin/$applet"
done
mkdir -p "$work/bundle/rootfs"/{proc,sys,dev,tmp,etc}
echo "root:x:0:0:root:/root:/bin/sh" > "$work/bundle/rootfs/etc/passwd"
(cd "$work/bundle" && "$RUNR" spec)
jq --arg cg "/runr-demo-$$" '.process.terminal = false
  | .process.args = ["sh", "-c", "echo hello from $(hostname), pid $$ in its own namespace; ls /; exit 7"]
  | .linux.cgroupsPath = $cg' "$work/bundle/config.json" > "$work/config.json"
mv "$work/config.json" "$work/bundle/config.json"

echo "== runr run (foreground: output, then the exit code passes through)"
set +e
"$RUNR" --root "$root" run --bundle "$work/bundle" "$id"
code=$?
set -e
echo "exit code: $code"
[ "$code" = 7 ] || { echo "expected exit code 7" >&2; exit 1; }

echo "== runr create / start / exec / kill / delete"
jq '.process.args = ["sleep", "300"]' "$work/bundle/config.json" > "$work/config.json"
mv "$work/config.json" "$work/bundle/config.json"
"$RUNR" --root "$root" create --bundle "$work/bundle" "$id"
"$RUNR" --root "$root" state "$id" | jq -c '{id, status, pid}'
"$RUNR" --root "$root" start "$id"
"$RUNR" --root "$root" list
"$RUNR" --root "$root" exec "$id" sh -c 'echo "exec sees: $(ps | wc -l) lines of ps, hostname $(hostname)"'
"$RUNR" --root "$root" kill "$id" KILL
for _ in $(seq 50); do
  [ "$("$RUNR" --root "$root" state "$id" | jq -r .status)" = stopped ] && break
  sleep 0.1
done
"$RUNR" --root "$root" state "$id" | jq -c '{id, status}'
"$RUNR" --root "$root" delete "$id"
echo "== done: the container ran, exited, and left nothing behind"
