#!/usr/bin/env bash
# Boot benchmark: time from "start" to the tiny guest's first console line, for
#   1. bare qemu-system-x86_64 (TCG),
#   2. bare libvirt define + start of the same guest,
#   3. vdc: API create → the line in GET /api/v1/instances/{id}/console,
# and the ratios. Needs libvirtd (packaging/start-libvirt.sh), the tiny image and a built
# `vdc` (cargo build --release -p vdc-cli). Prints figures; asserts nothing.
#
#   bash tests/bench-boot.sh [TINY_IMAGE_DIR] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
TINY=${1:-/var/cache/vdc/tiny-image}
RUNS=${2:-3}
TINY=$(cd "$TINY" && pwd)
VDC=target/release/vdc
[ -x "$VDC" ] || VDC=target/debug/vdc
WORK=$(mktemp -d /var/lib/vdc-bench-boot.XXXXXX)
chmod 755 "$WORK"
VDC_PID=
cleanup() {
  [ -n "$VDC_PID" ] && kill "$VDC_PID" 2>/dev/null || true
  for d in $(virsh -c qemu:///system list --all --name | grep '^vdc-bench' || true); do
    virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
    virsh -c qemu:///system undefine "$d" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
wait_line() { # FILE ID → waits for the contract line
  for _ in $(seq 1 1200); do
    grep -q "vdc-guest: instance-id=$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "no console line in $1" >&2; return 1
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
CMD="console=ttyS0 panic=-1 quiet"

echo "bare qemu-system-x86_64 (TCG):"
for i in $(seq 1 "$RUNS"); do
  log="$WORK/qemu-$i.log"
  t0=$(now)
  qemu-system-x86_64 -accel tcg -m 256 -display none -monitor none -no-reboot \
    -kernel "$TINY/vmlinuz" -initrd "$TINY/initrd.gz" -append "$CMD vdc.instance_id=i-bare$i" \
    -serial "file:$log" & qpid=$!
  wait_line "$log" "i-bare$i"; t1=$(now); kill $qpid; wait $qpid 2>/dev/null || true
  echo "$t1 - $t0" | bc | tee -a "$WORK/qemu.times"
done

echo "bare libvirt define + start:"
cp "$TINY/vmlinuz" "$TINY/initrd.gz" "$WORK/"
for i in $(seq 1 "$RUNS"); do
  log="$WORK/lv-$i.log"
  cat > "$WORK/d$i.xml" <<XML
<domain type='qemu'><name>vdc-bench-$i</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>$WORK/vmlinuz</kernel><initrd>$WORK/initrd.gz</initrd>
<cmdline>$CMD vdc.instance_id=i-lv$i</cmdline></os><features><acpi/><apic/></features>
<devices><serial type='file'><source path='$log'/><target port='0'/></serial><memballoon model='none'/></devices></domain>
XML
  t0=$(now)
  virsh -c qemu:///system define "$WORK/d$i.xml" >/dev/null && virsh -c qemu:///system start "vdc-bench-$i" >/dev/null
  wait_line "$log" "i-lv$i"; t1=$(now)
  virsh -c qemu:///system destroy "vdc-bench-$i" >/dev/null; virsh -c qemu:///system undefine "vdc-bench-$i" >/dev/null
  echo "$t1 - $t0" | bc | tee -a "$WORK/libvirt.times"
done

echo "vdc: API create → console line via the API:"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
VDC_CONFIG="$WORK/cli.toml" "$VDC" up --data-dir "$WORK/vdc" --listen "127.0.0.1:$PORT" --tiny-image "$TINY" \
  >"$WORK/up.log" 2>&1 & VDC_PID=$!
for _ in $(seq 1 100); do grep -q "is running" "$WORK/up.log" && break; sleep 0.2; done
TOKEN=$(cat "$WORK/vdc/admin-token")
python3 - "$PORT" "$TOKEN" "$RUNS" >>"$WORK/vdc.times" <<'PY'
import json, sys, time, urllib.request
port, token, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = f"http://127.0.0.1:{port}/api/v1"
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")
img = [i for i in call("GET", "/images")["items"] if i["name"] == "tiny"][0]["id"]
for n in range(runs):
    t0 = time.time()
    inst = call("POST", "/instances", {"image_id": img, "hypervisor": "qemu", "memory_mib": 256})["resource"]["id"]
    while True:
        try:
            out = call("GET", f"/instances/{inst}/console")["output"]
        except Exception:
            out = ""
        if f"vdc-guest: instance-id={inst}" in out:
            break
        time.sleep(0.05)
    print(f"{time.time() - t0:.3f}", flush=True)
    sys.stderr.write(f"{time.time() - t0:.3f}\n")
    call("POST", f"/instances/{inst}/terminate")
    time.sleep(2)
PY
cat "$WORK/vdc.times"
q=$(median < "$WORK/qemu.times"); l=$(median < "$WORK/libvirt.times"); v=$(median < "$WORK/vdc.times")
printf '\nmedian to first console line: bare qemu %.2f s, bare libvirt %.2f s, vdc API %.2f s\n' "$q" "$l" "$v"
printf 'ratio vdc / bare libvirt = %.3f, vdc / bare qemu = %.3f\n' "$(echo "$v / $l" | bc -l)" "$(echo "$v / $q" | bc -l)"
