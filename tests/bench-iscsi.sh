#!/usr/bin/env bash
# iSCSI benchmark: sequential write and read of a volume file, directly and through a
# private tgtd (as sta exports volumes) with QEMU's iSCSI initiator (as hva's guests use
# it), and the ratio. Uses `qemu-img bench` (1 MiB requests, queue depth 8, no host
# cache). The LUN is set up as sta does (O_DIRECT backing store, tuned burst sizes);
# BSOFLAGS= TUNE=0 BSTYPE=… compare other settings. Prints figures; asserts nothing.
# Root; needs tgt, qemu-utils, qemu-block-extra.
#
#   bash tests/bench-iscsi.sh [SIZE_MIB] [DIR]
set -euo pipefail
SIZE=${1:-512}
DIR=$(mktemp -d "${2:-/var/tmp}/vdc-bench-iscsi.XXXXXX")
CTL=$((20000 + RANDOM % 10000))
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
IQN=iqn.2026-11.io.vdc:vol-bench
INI=iqn.2026-11.io.vdc:hn-bench
TGTD_PID=
cleanup() {
  if [ -n "$TGTD_PID" ]; then
    tgtadm -C "$CTL" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
    tgtadm -C "$CTL" --op delete --mode system >/dev/null 2>&1 || true
    sleep 0.3; kill "$TGTD_PID" 2>/dev/null || true
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT
LUN="$DIR/lun.img"
dd if=/dev/zero of="$LUN" bs=1M count="$SIZE" status=none   # allocated, like a used volume
mkdir -p /var/run/tgtd
tgtd -f -C "$CTL" --iscsi "portal=127.0.0.1:$PORT" >"$DIR/tgtd.log" 2>&1 &
TGTD_PID=$!
for _ in $(seq 50); do tgtadm -C "$CTL" --op show --mode sys >/dev/null 2>&1 && break; sleep 0.1; done
T="tgtadm -C $CTL --lld iscsi"
$T --op new --mode target --tid 1 -T "$IQN"
BSOFLAGS=${BSOFLAGS-direct}
$T --op new --mode logicalunit --tid 1 --lun 1 -b "$LUN" ${BSTYPE:+--bstype $BSTYPE} ${BSOFLAGS:+--bsoflags $BSOFLAGS}
$T --op bind --mode target --tid 1 --initiator-name "$INI"
if [ "${TUNE:-1}" = 1 ]; then   # what sta sets on every target (sta/src/tgt.rs)
  for kv in MaxRecvDataSegmentLength=262144 MaxXmitDataSegmentLength=262144 FirstBurstLength=1048576 \
            MaxBurstLength=1048576 InitialR2T=No ImmediateData=Yes; do
    $T --op update --mode target --tid 1 --name "${kv%%=*}" --value "${kv#*=}"
  done
fi

COUNT=$SIZE   # 1 MiB requests over the whole volume
mbps() { # seconds → MB/s
  python3 -c "import sys; print(f'{$SIZE * 1048576 / float(sys.argv[1]) / 1e6:.0f}')" "$1"
}
RUNS=${RUNS:-3}
run() { # label, args... → the median of RUNS runs, in MB/s
  local label=$1; shift
  local out secs all=()
  for _ in $(seq "$RUNS"); do
    out=$(qemu-img bench -s 1M -c "$COUNT" -d 8 "$@" 2>&1) || { echo "$label: failed: $out" >&2; exit 1; }
    secs=$(sed -n 's/.*Run completed in \([0-9.]*\) seconds.*/\1/p' <<<"$out")
    all+=("$(mbps "$secs")")
  done
  printf '%s\n' "${all[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"
}
ISCSI="driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:$PORT,file.target=$IQN,file.lun=1,file.initiator-name=$INI"
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
fw=$(run "file write" -w -t none -f raw "$LUN")
fr=$(run "file read" -t none -f raw "$LUN")
iw=$(run "iscsi write" -w -t none --image-opts "$ISCSI")
ir=$(run "iscsi read" -t none --image-opts "$ISCSI")
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
printf '%-28s %10s %10s\n' "sequential, 1 MiB, QD 8" "write MB/s" "read MB/s"
printf '%-28s %10s %10s\n' "backing file (O_DIRECT)" "$fw" "$fr"
printf '%-28s %10s %10s\n' "iSCSI via tgtd (loopback)" "$iw" "$ir"
printf '%-28s %10s %10s\n' "iSCSI / file" "$(ratio "$iw" "$fw")" "$(ratio "$ir" "$fr")"
