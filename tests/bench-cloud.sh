#!/usr/bin/env bash
# Cloud guest benchmark (issue 11): time from "create" to `ssh … true` succeeding, for
#   1. bare qemu-system-x86_64 (TCG) booting the Debian cloud image (an overlay on it, a
#      NoCloud seed, user networking with ssh forwarded) — the floor;
#   2. vdc: `vdc instance create … --wait` → floating IP → `vdc instance ssh web -- true`,
#      through `vdc up`'s real drivers, with the image already in the host's cache (a
#      first instance warms it, as any second instance of an image finds it);
# and the ratio, measured in the same run. Prints figures; asserts nothing.
#
#   bash tests/bench-cloud.sh [RUNS]     (root; after `cargo build --workspace --bins`)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${1:-2}
BIN=${VDC_BIN:-$ROOT/target/debug}
IMG=${VDC_CLOUD_IMAGE_DIR:-/var/cache/vdc/cloud-image}
TINY=${VDC_TINY_IMAGE_DIR:-/var/cache/vdc/tiny-image}
bash packaging/start-libvirt.sh >/dev/null
bash packaging/build-cloud-image.sh "$IMG"
P=cb$(printf %04x $((RANDOM)))
NS=$P-up
W=$(mktemp -d /var/lib/vdc-bench-cloud.XXXXXX)
chmod 755 "$W"
export HOME=$W/home VDC_CONFIG=$W/home/cli.toml
mkdir -p "$HOME"
UP_PID= QEMU_PID=
cleanup() {
  # Under pipefail `virsh … | grep -q` fails when grep stops reading early: off here.
  set +e +o pipefail
  [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null
  [ -n "$UP_PID" ] && kill "$UP_PID" 2>/dev/null && sleep 2
  pkill -f -- "up --data-dir $W/data" 2>/dev/null
  for d in $(virsh -c qemu:///system list --all --name 2>/dev/null | grep '^vdc-'); do
    virsh -c qemu:///system dumpxml "$d" 2>/dev/null | grep -q "$W/" \
      && { virsh -c qemu:///system destroy "$d"; virsh -c qemu:///system undefine "$d"; } >/dev/null 2>&1
  done
  for p in $(cat "$W"/data/ovs/*.pid 2>/dev/null); do kill "$p" 2>/dev/null; done
  pkill -f "dnsmasq.*$W/" 2>/dev/null
  for n in $(ip netns list | awk '{print $1}' | grep "^$P-"); do ip netns del "$n"; done
  rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
until_ok() { local t=$1; shift; local end=$(( $(date +%s) + t )); until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt $end ] || return 1; sleep 0.5; done; }

ssh-keygen -q -t ed25519 -N '' -f "$W/key"
echo "bare qemu-system-x86_64 (TCG, 512 MiB, 1 vCPU) → ssh true:"
bare=()
for r in $(seq 1 "$RUNS"); do
  d=$W/bare$r; mkdir -p "$d/seed"
  printf 'instance-id: i-bench%s\nlocal-hostname: bench\npublic-keys:\n  - %s\n' "$r" "$(cat "$W/key.pub")" >"$d/seed/meta-data"
  printf '#cloud-config\n{}\n' >"$d/seed/user-data"
  genisoimage -quiet -output "$d/seed.iso" -volid cidata -joliet -rock "$d/seed/user-data" "$d/seed/meta-data"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  t0=$(now)
  qemu-img create -q -f qcow2 -b "$IMG/debian-12-cloud.qcow2" -F qcow2 "$d/disk.qcow2"
  qemu-system-x86_64 -accel tcg -m 512 -smp 1 -display none -serial "file:$d/serial.log" -monitor none \
    -drive "file=$d/disk.qcow2,if=virtio" -drive "file=$d/seed.iso,if=virtio,media=cdrom" \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 &
  QEMU_PID=$!
  until_ok 600 ssh -q -i "$W/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o ConnectTimeout=2 -p "$port" debian@127.0.0.1 true
  bare+=("$(since "$t0")"); echo "  run $r: ${bare[-1]} s"
  kill "$QEMU_PID"; wait "$QEMU_PID" 2>/dev/null || true; QEMU_PID=
done

ip netns add "$NS"; ip netns exec "$NS" ip link set lo up
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ip netns exec "$NS" "$BIN/vdc" up --data-dir "$W/data" --listen "127.0.0.1:$PORT" --tiny-image "$TINY" \
  --namespace-prefix "$P" >"$W/up.log" 2>&1 &
UP_PID=$!
until_ok 120 grep -q "vdc all-in-one is running" "$W/up.log"
vdc_() { ip netns exec "$NS" "$BIN/vdc" "$@"; }
vdc_ image import debian "$IMG/debian-12-cloud.qcow2" --default-user debian >/dev/null
vdc_ keypair create k --private-key-out "$W/k.pem" >/dev/null
vdc_ network create net1 --cidr 10.0.0.0/24 >/dev/null
vdc_ secgroup create web --rule tcp:22 >/dev/null
FIP=$(vdc_ -o json floating-ip create | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
one() { # NAME → seconds from create to ssh true
  local t0; t0=$(now)
  vdc_ instance create "$1" --image debian --network net1 --secgroup web --keypair k --memory 512M --wait >/dev/null
  vdc_ floating-ip associate "$FIP" "$1" >/dev/null
  until_ok 600 vdc_ instance ssh "$1" -- true
  since "$t0"
  vdc_ floating-ip disassociate "$FIP" >/dev/null
  vdc_ instance terminate "$1" --wait >/dev/null
}
echo "vdc (warm-up instance, fetches the image into the host's cache): $(one warm) s"
echo "vdc: create → floating IP → vdc instance ssh … -- true:"
vdcs=()
for r in $(seq 1 "$RUNS"); do vdcs+=("$(one "web$r")"); echo "  run $r: ${vdcs[-1]} s"; done

b=$(printf '%s\n' "${bare[@]}" | median); v=$(printf '%s\n' "${vdcs[@]}" | median)
echo
printf 'median: bare %s s, vdc %s s, ratio %s (target ≤ 1.1)\n' "$b" "$v" "$(awk -v v="$v" -v b="$b" 'BEGIN { printf "%.2f", v / b }')"
