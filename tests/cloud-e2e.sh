#!/usr/bin/env bash
# A real cloud guest, end to end, as a new user meets vdc: `vdc up` with its real drivers,
# then only the `vdc` CLI, by names. A Debian bookworm cloud image (Debian's own cloud-init
# and sshd, packaging/build-cloud-image.sh) is imported; a key pair, network, group and
# instance are created by name; a floating IP is associated; `vdc instance ssh web1 --
# hostname` prints web1; a file is written in it, it is stopped, captured as an image, started
# and answers ssh again (web3, booted from the capture at the end, has the file); from
# it a second guest answers by its DNS name and a listener on the external bridge answers;
# `vdc up` is restarted with its guests running and they stay reachable.
#
#   bash tests/cloud-e2e.sh            (root; after `cargo build --workspace --bins`)
#
# Hermetic: this `vdc up` runs in a network namespace of its own (its Open vSwitch, its
# external bridge and NAT live there; libvirt's taps are moved into it), with its own data
# directory, port and namespace prefix, so a `vdc up` of the user's may run beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${VDC_BIN:-$ROOT/target/debug}
IMG=${VDC_CLOUD_IMAGE_DIR:-/var/cache/vdc/cloud-image}
TINY=${VDC_TINY_IMAGE_DIR:-/var/cache/vdc/tiny-image}
[ -x "$BIN/vdc" ] || { echo "missing $BIN/vdc: cargo build --workspace --bins" >&2; exit 2; }
bash packaging/start-libvirt.sh
bash packaging/build-cloud-image.sh "$IMG"

P=ce$(printf %04x $((RANDOM)))          # namespace and device prefix of this run
NS=$P-up
W=$(mktemp -d /var/lib/vdc-e2e.XXXXXX)   # QEMU must be able to reach it
chmod 755 "$W"
export HOME=$W/home VDC_CONFIG=$W/home/cli.toml
mkdir -p "$HOME"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
UP_PID=

ROWS=()
T0=$(date +%s.%N)
row() { local now; now=$(date +%s.%N); ROWS+=("$(awk -v a="$now" -v b="$T0" -v n="$1" 'BEGIN { printf "%-72s %8.1f", n, a - b }')"); T0=$now; echo "== $1"; }
cleanup() {
  local rc=$?
  # Under pipefail `virsh … | grep -q` fails when grep stops reading early: off here.
  set +e +o pipefail
  printf '\n%-72s %8s\n' "step" "seconds"; for r in "${ROWS[@]}"; do echo "$r"; done
  if [ $rc -ne 0 ]; then
    echo "--- vdc up log (tail)"; tail -n 60 "$W/up.log"
    for i in web1 web2 ct1; do echo "--- console of $i (tail)"; vdc_ instance console-log "$i" 2>/dev/null | tail -n 40; done
    for f in "$W"/data/nwagent/services/dhcp-*.hosts "$W"/data/nwagent/services/dhcp-*.log; do
      echo "--- $f (tail)"; tail -n 40 "$f"
    done
    echo "--- switch ports"; in_ns ovs-vsctl --db "unix:$W/data/ovs/db.sock" show 2>&1 | tail -n 40
  fi
  [ -n "$UP_PID" ] && kill "$UP_PID" 2>/dev/null && sleep 2
  pkill -f -- "up --data-dir $W/data" 2>/dev/null
  for uri in qemu:///system lxc:///system; do
    for d in $(virsh -c "$uri" list --all --name 2>/dev/null | grep '^vdc-'); do
      if virsh -c "$uri" dumpxml "$d" 2>/dev/null | grep -q "$W/"; then
        virsh -c "$uri" destroy "$d" >/dev/null 2>&1; virsh -c "$uri" undefine --nvram "$d" >/dev/null 2>&1 \
          || virsh -c "$uri" undefine "$d" >/dev/null 2>&1
      fi
    done
  done
  for p in $(cat "$W"/data/ovs/*.pid 2>/dev/null); do kill "$p" 2>/dev/null; done
  pkill -f "dnsmasq.*$W/" 2>/dev/null
  for n in $(ip netns list | awk '{print $1}' | grep "^$P-"); do ip netns del "$n"; done
  rm -rf "$W"
  exit $rc
}
trap cleanup EXIT
vdc_() { ip netns exec "$NS" "$BIN/vdc" "$@"; }
in_ns() { ip netns exec "$NS" "$@"; }
until_ok() { local t=$1; shift; local end=$(( $(date +%s) + t )); until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt $end ] || return 1; sleep 1; done; }
fail() { echo "FAIL: $*" >&2; exit 1; }

ip netns add "$NS"
in_ns ip link set lo up
# Not through in_ns: `$!` must be vdc itself (ip netns exec execs it), not a subshell
# whose death would leave vdc up, its guests and its switch running after the test.
ip netns exec "$NS" "$BIN/vdc" up --data-dir "$W/data" --listen "127.0.0.1:$PORT" --tiny-image "$TINY" \
  --namespace-prefix "$P" >"$W/up.log" 2>&1 &
UP_PID=$!
until_ok 120 grep -q "vdc all-in-one is running" "$W/up.log" || fail "vdc up did not start"
grep -q "hva:        libvirt" "$W/up.log" || fail "vdc up runs no real hypervisor: $(cat "$W/up.log")"
grep -q "nwagent:    Open vSwitch" "$W/up.log" || fail "vdc up runs no real network: $(cat "$W/up.log")"
row "vdc up (real drivers, in namespace $NS)"

vdc_ image import debian "$IMG/debian-12-cloud.qcow2" --default-user debian --os debian-12 --min-disk 2G
vdc_ keypair create mykey --private-key-out "$W/mykey.pem" >/dev/null
vdc_ network create net1 --cidr 10.0.0.0/24 >/dev/null
vdc_ secgroup create web --rule tcp:22 --rule icmp >/dev/null
row "image imported; key pair, network, group created by name"

vdc_ instance create web1 --image debian --network net1 --secgroup web --keypair mykey --memory 512M --wait >/dev/null
FIP=$(vdc_ -o json floating-ip create | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["id"])')
vdc_ floating-ip associate "$FIP" web1 >/dev/null
row "web1 created, floating IP $FIP associated"

ssh_() { vdc_ instance ssh web1 -- "$@"; }
# sshd answers before cloud-init is done, and cloud-init restarts it (a first boot's ssh
# module): wait until cloud-init has finished this boot, as a user's script must.
booted() { "$@" 'cloud-init status --wait >/dev/null 2>&1; true'; }
until_ok 300 booted ssh_ || fail "web1 never answered ssh"
[ "$(ssh_ hostname)" = web1 ] || fail "hostname is not web1"
row "vdc instance ssh web1 -- hostname → web1"

set +e; ssh_ 'exit 7'; rc=$?; set -e
[ $rc -eq 7 ] || fail "ssh exit code $rc, not the remote command's 7"

# A file written in the guest, then the stopped disk captured as an image (checked at the end).
MARK="golden-$$-$RANDOM"
ssh_ "echo $MARK | sudo tee /var/lib/vdc-golden >/dev/null && sync" || fail "cannot write in web1"
vdc_ instance stop web1 --wait >/dev/null
vdc_ instance capture web1 --image-name web-golden --wait >/dev/null || fail "capture of web1 failed"
[ "$(vdc_ -o json image show web-golden | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = available ] \
  || fail "the captured image is not available"
row "file written in web1, web1 stopped and captured as web-golden"
vdc_ instance start web1 --wait >/dev/null
until_ok 300 booted ssh_ || fail "web1 did not answer ssh after stop/start"
[ "$(ssh_ hostname)" = web1 ] || fail "hostname after stop/start"
row "stop, start, ssh again"

vdc_ instance create web2 --image tiny --network net1 --secgroup web --wait >/dev/null
until_ok 120 sh -c "ip netns exec $NS $BIN/vdc instance console-log web2 | grep -q 'vdc-guest: ready'" \
  || fail "web2 not ready"
until_ok 60 ssh_ ping -c 1 -W 2 web2 || fail "web1 cannot reach web2 by its DNS name"
row "web1 reaches web2 by name"

# A container on equal terms: on the same network by name, and through a floating IP.
vdc_ instance create ct1 --image tiny-lxc --network net1 --secgroup web --wait >/dev/null
until_ok 120 sh -c "ip netns exec $NS $BIN/vdc instance console-log ct1 | grep -q 'vdc-guest: ready'" \
  || fail "container ct1 not ready"
until_ok 60 ssh_ ping -c 1 -W 2 ct1 || fail "web1 cannot reach the container ct1 by its DNS name"
FIP2=$(vdc_ -o json floating-ip create | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
FIP2_IP=$(vdc_ -o json floating-ip show "$FIP2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ip"])')
vdc_ floating-ip associate "$FIP2" ct1 >/dev/null
until_ok 30 in_ns ping -c 1 -W 1 "$FIP2_IP" || fail "the host cannot reach ct1 through its floating IP $FIP2_IP"
row "container ct1: reached by name from web1, and from the host through $FIP2_IP"

EXT=$(in_ns ip -j -4 addr show dev vdc-ex | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["addr_info"][0]["local"])')
in_ns timeout 120 nc -n -l "$EXT" 8099 >"$W/listener.out" &
LISTENER=$!
sleep 0.5
ssh_ "echo hello-from-web1 | nc -n -N -w 5 $EXT 8099" || fail "web1 cannot reach the listener on the external bridge"
wait "$LISTENER" || true
grep -q hello-from-web1 "$W/listener.out" || fail "the listener got nothing"
row "web1 reaches a listener on the external bridge ($EXT) through SNAT"

# `vdc up` stopped (Ctrl-C) and started again with its guests running, as a user restarts
# it: the guests keep running and stay reachable; a guest rebooted afterwards takes its lease
# and metadata from the restarted services again.
kill -INT "$UP_PID"; wait "$UP_PID" || true
ip netns exec "$NS" "$BIN/vdc" up --data-dir "$W/data" --listen "127.0.0.1:$PORT" --tiny-image "$TINY" \
  --namespace-prefix "$P" >"$W/up.log" 2>&1 &
UP_PID=$!
until_ok 120 grep -q "vdc all-in-one is running" "$W/up.log" || fail "vdc up did not start again"
# (Here the service namespaces went with the first `vdc up`'s mount namespace and are
# made again, so the floating IP may take a few seconds to answer again.)
until_ok 60 ssh_ true || fail "web1 does not answer ssh after vdc up restarted"
[ "$(ssh_ hostname)" = web1 ] || fail "web1's hostname after vdc up restarted"
until_ok 60 ssh_ ping -c 1 -W 2 web2 || fail "web1 cannot reach web2 by name after vdc up restarted"
until_ok 30 in_ns ping -c 1 -W 1 "$FIP2_IP" || fail "ct1's floating IP does not answer after vdc up restarted"
READY=$(vdc_ instance console-log ct1 | grep -c 'vdc-guest: ready')
vdc_ instance reboot ct1 --wait >/dev/null
until_ok 120 sh -c "[ \$(ip netns exec $NS $BIN/vdc instance console-log ct1 | grep -c 'vdc-guest: ready') -gt $READY ]" \
  || fail "ct1 rebooted after vdc up restarted is not ready again (lease, metadata)"
row "vdc up restarted with guests running: ssh, names, floating IP; a rebooted guest ready again"

vdc_ instance terminate web1 --wait >/dev/null
vdc_ instance terminate web2 --wait >/dev/null
vdc_ instance terminate ct1 --wait >/dev/null
row "terminated"

vdc_ instance create web3 --image web-golden --network net1 --secgroup web --keypair mykey --memory 512M --wait >/dev/null
FIP3=$(vdc_ -o json floating-ip create | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["id"])')
vdc_ floating-ip associate "$FIP3" web3 >/dev/null
ssh3() { vdc_ instance ssh web3 -- "$@"; }
until_ok 300 booted ssh3 || fail "web3 (from the capture) never answered ssh"
[ "$(ssh3 cat /var/lib/vdc-golden)" = "$MARK" ] || fail "web3 lacks the file written in web1 before the capture"
row "web3 booted from web-golden has web1's file"
vdc_ instance terminate web3 --wait >/dev/null
vdc_ image delete web-golden >/dev/null
echo "cloud-e2e: passed"
