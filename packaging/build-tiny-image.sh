#!/usr/bin/env bash
# Builds the tiny test images the hva agent boots with libvirt: a Debian kernel + busybox
# initramfs for QEMU guests and a busybox rootfs for LXC guests. Needs only Debian's
# archive (apt). See packaging/tiny-image/README.md.
#
#   bash packaging/build-tiny-image.sh [--pvh] OUTDIR
#
# Idempotent: an output that exists, is valid and matches what this script would build
# now is kept.
set -euo pipefail

PROG=build-tiny-image
CMDLINE="console=ttyS0 panic=-1 quiet"
# Loaded in dependency order by the guest's /init (resolved with depmod at build time).
# virtio_pci/virtio_net/virtio_blk: NIC and disks; button/evdev: ACPI power button, so
# `virsh shutdown` powers the guest off instead of timing out.
WANTED_MODULES=(virtio_pci virtio_net virtio_blk button evdev)

log() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: error: $*" >&2; exit 1; }

usage() {
  cat >&2 <<EOF
usage: $0 [--pvh] OUTDIR

Writes into OUTDIR: vmlinuz, initrd.gz, rootfs/, rootfs.tar.gz, SHA256SUMS, image.json.
--pvh also writes vmlinux: the same kernel uncompressed (ELF, PVH entry, ~66 MB). Given
as the kernel to QEMU/libvirt it boots ~7 s faster under TCG (no in-guest XZ unpacking).
Needs: apt (Debian bookworm archive), dpkg-deb, cpio, gzip, sha256sum, tar;
busybox-static and cpio are installed with apt-get if missing (needs root).
EOF
  exit 2
}

PVH=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage ;;
    --pvh) PVH=1; shift ;;
    -*) echo "$PROG: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || usage
mkdir -p -- "$1" || die "cannot create output directory $1"
OUT=$(cd -- "$1" && pwd)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/$PROG.XXXXXX")
cleanup() {
  rm -rf -- "$WORK"
  # Half-written outputs (see install_file / the rootfs stage).
  rm -rf -- "$OUT"/.*."$$".tmp 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- helpers

# Another apt/dpkg may be running (CI installs packages in the background): wait for it
# rather than failing on the lock.
apt_wait() {
  command -v fuser >/dev/null 2>&1 || return 0
  local said=""
  while fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock \
        /var/lib/apt/lists/lock /var/cache/apt/archives/lock >/dev/null 2>&1; do
    [ -n "$said" ] || { log "waiting for another apt/dpkg to finish"; said=1; }
    sleep 5
  done
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "$1 (run as root, or install it first: apt-get install $2)"
}

apt_install() {
  need_root "package(s) missing: $*" "$*"
  apt_wait
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "$@" >/dev/null \
    || die "apt-get install $* failed"
}

# apt-get download into the current directory. As root, apt's sandbox user cannot write
# to our private work dir, so download as root. Retried: the mirror's DNS flickers.
apt_download() {
  local i out
  apt_wait
  for i in 1 2 3; do
    out=$(apt-get download -q -o APT::Sandbox::User=root "$1" 2>&1) && return 0
    log "apt-get download $1 failed (attempt $i/3)"
    [ "$i" = 3 ] || sleep 5
  done
  echo "$out" | grep -E '^(E|Err):|failure|Failed' >&2 || echo "$out" >&2
  die "apt-get download $1 failed (is the Debian archive reachable?)"
}

apt_candidate() {
  local c
  c=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
  [ -n "$c" ] && [ "$c" != "(none)" ]
}

newest_kernel_pkg() {
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null \
    | awk '{print $1}' | sort -V | while read -r p; do
        apt_candidate "$p" && echo "$p"
      done | tail -n 1
}

# Copy into OUT under a temporary name, then rename: a crash never leaves a truncated
# output that the next run would take for valid.
install_file() { # SRC NAME
  local tmp="$OUT/.$2.$$.tmp"
  cp -- "$1" "$tmp"
  chmod 0644 "$tmp"
  mv -f -- "$tmp" "$OUT/$2"
}

# A bzImage has "HdrS" at 0x202.
valid_kernel() {
  [ -s "$1" ] && [ "$(dd if="$1" bs=1 skip=514 count=4 2>/dev/null)" = "HdrS" ]
}

# The release string (e.g. 6.1.0-56-amd64) is at 0x200 + the 16-bit pointer at 0x20E.
kernel_release() {
  local off
  off=$(od -An -tu2 -j 526 -N 2 "$1" | tr -d ' ')
  dd if="$1" bs=1 skip=$((off + 512)) count=128 2>/dev/null \
    | tr '\0' '\n' | head -n 1 | awk '{print $1}'
}

sha() { sha256sum "$1" | awk '{print $1}'; }

# ------------------------------------------------------------------ guest scripts
# Generated first: the idempotency checks compare them with what is already in OUTDIR.
TPL="$WORK/tpl"
mkdir -p "$TPL"

# udhcpc hook, shared by the VM and the container. busybox udhcpc exports ip, mask
# (prefix length), router, dns, broadcast.
cat >"$TPL/udhcpc.script" <<'EOF'
#!/bin/sh
# udhcpc event hook: apply the lease with ip(8) and record it for vdc_net_up.
# Never flushes: only the address an earlier lease gave is removed, so a mistaken run
# cannot wipe addresses that someone else configured.
state="/run/vdc-$interface"
case "$1" in
  deconfig)
    ip link set "$interface" up
    ;;
  bound|renew)
    new="$ip/${mask:-24}"
    old=$(cat "$state" 2>/dev/null)
    if [ -n "$old" ] && [ "$old" != "$new" ]; then
      ip addr del "$old" dev "$interface" 2>/dev/null
    fi
    ip addr add "$new" ${broadcast:+broadcast $broadcast} dev "$interface" 2>/dev/null
    for r in $router; do
      ip route add default via "$r" dev "$interface" 2>/dev/null && break
    done
    if [ -n "$dns" ]; then
      for d in $dns; do echo "nameserver $d"; done >/etc/resolv.conf
    fi
    mkdir -p /run
    echo "$new" >"$state"
    ;;
esac
exit 0
EOF

cat >"$TPL/vdc-net.sh" <<'EOF'
# Sourced by /init (VM) and /init.sh (container): DHCP on eth0, then the metadata probe.
# Only an eth0 nobody configured is touched. A libvirt LXC domain without <interface>
# shares the HOST's network namespace: there eth0 is the host's NIC (it has a device
# behind it, unlike a veth), and DHCP on it would take the host off the network.
vdc_net_up() {
  ip link set lo up 2>/dev/null
  if ! ip link show dev eth0 >/dev/null 2>&1; then
    echo "vdc-guest: eth0 absent"
    return 0
  fi
  if [ "${VDC_NET_CONTAINER:-}" = 1 ]; then
    if [ ! -d /sys/class/net/eth0 ]; then
      echo "vdc-guest: eth0 left alone (no /sys to check whose it is)"
      return 0
    fi
    if [ -e /sys/class/net/eth0/device ]; then
      echo "vdc-guest: eth0 left alone (a physical NIC: host network namespace?)"
      return 0
    fi
  fi
  addr=$(ip -4 addr show dev eth0 2>/dev/null | awk '$1 == "inet" {print $2; exit}')
  if [ -z "$addr" ]; then
    ip link set eth0 up
    rm -f /run/vdc-eth0
    udhcpc -i eth0 -n -q -t 20 -T 2 -s /etc/udhcpc.script || true
    addr=$(cat /run/vdc-eth0 2>/dev/null)
    if [ -z "$addr" ]; then
      echo "vdc-guest: eth0 no-dhcp"
      return 0
    fi
  fi
  # Also printed for an address libvirt set (<ip>) before we started.
  echo "vdc-guest: eth0 $addr"
  # Not `wget -T 2`: Debian's busybox < 1.36.1-5 lacks FEATURE_WGET_TIMEOUT and
  # segfaults on -T.
  # (The braces keep ash's "Terminated" job notice off the console.)
  md=$( { timeout 3 wget -q -O - http://169.254.169.254/latest/meta-data/instance-id \
          | head -n 1; } 2>/dev/null)
  if [ -n "$md" ]; then
    echo "vdc-guest: metadata instance-id=$md"
    key=$( { timeout 3 wget -q -O - http://169.254.169.254/latest/meta-data/public-keys/0/openssh-key \
             | head -n 1; } 2>/dev/null)
    if [ -n "$key" ]; then
      echo "$key" | awk '{ print "vdc-guest: metadata ssh-key " $1 " ..." substr($2, length($2) - 11) }'
    fi
    # User data that is a script runs once, in the background, its output prefixed on
    # the console (as cloud-init runs a #! user-data).
    ud=$( { timeout 3 wget -q -O - http://169.254.169.254/latest/user-data; } 2>/dev/null)
    case "$ud" in
      '#!'*)
        printf '%s\n' "$ud" >/run/vdc-user-data
        chmod +x /run/vdc-user-data
        echo "vdc-guest: running user-data"
        ( /run/vdc-user-data 2>&1 | sed 's/^/vdc-user-data: /' ) &
        ;;
    esac
  else
    echo "vdc-guest: metadata unavailable"
  fi
}
EOF

cat >"$TPL/init" <<'EOF'
#!/bin/sh
# PID 1 of the vdc tiny VM image (busybox initramfs).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /run /tmp

# The contract line comes first: tests wait for it, and everything below is slower.
ID=unknown
HOST=unknown
set -f
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vdc.instance_id=?*) ID=${arg#vdc.instance_id=} ;;
    vdc.hostname=?*) HOST=${arg#vdc.hostname=} ;;
  esac
done
set +f
echo "vdc-guest: instance-id=$ID hostname=$HOST up"
[ "$HOST" != unknown ] && hostname "$HOST" 2>/dev/null

# The Debian kernel has virtio as modules; /etc/modules.load is in dependency order.
if [ -f /etc/modules.load ]; then
  while read -r m; do
    insmod "/lib/modules/$m" 2>/dev/null
  done </etc/modules.load
fi
# Driver probing can lag insmod a little: wait briefly, but only if a virtio NIC exists
# (PCI 1af4:1000 legacy, 1af4:1041 modern).
for d in /sys/bus/pci/devices/*; do
  [ "$(cat "$d/vendor" 2>/dev/null)" = 0x1af4 ] || continue
  case "$(cat "$d/device" 2>/dev/null)" in
    0x1000|0x1041)
      n=0
      while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 20 ]; do sleep 0.1; n=$((n + 1)); done
      break ;;
  esac
done

. /etc/vdc-net.sh
vdc_net_up

# ACPI power button (virsh shutdown) -> /etc/acpi/PWRF/00000080 -> poweroff.
if ls /dev/input/event* >/dev/null 2>&1; then
  acpid -c /etc/acpi -l /dev/null 2>/dev/null
fi

# Volumes: each virtio disk with a vdc serial (the volume ID) is announced once per
# attachment. A blank disk gets a test pattern naming this instance; a disk that holds
# one says whose it is. Only a disk whose first sector is all zeros is ever written.
vdc_disks() {
  seen=$(cat /run/vdc-disks 2>/dev/null)
  now=""
  for b in /sys/block/vd*; do
    [ -e "$b/serial" ] || continue
    d=${b##*/}
    serial=$(cat "$b/serial" 2>/dev/null)
    case "$serial" in vol-*) ;; *) continue ;; esac
    now="$now $d:$serial"
    case " $seen " in *" $d:$serial "*) continue ;; esac
    first=$(dd if="/dev/$d" bs=512 count=1 2>/dev/null | tr -d '\000' | head -n 1)
    if [ -z "$first" ]; then
      pattern="vdc-pattern written-by=$ID"
      echo "$pattern" | dd of="/dev/$d" conv=notrunc,fsync 2>/dev/null || {
        echo "$pattern" | dd of="/dev/$d" conv=notrunc 2>/dev/null; sync; }
      echo "vdc-guest: disk $serial wrote $pattern"
    else
      echo "vdc-guest: disk $serial holds $first"
    fi
  done
  echo "$now" >/run/vdc-disks
}

echo "vdc-guest: ready"
# Stay up until libvirt stops the domain. poweroff(8) signals PID 1 with USR2.
trap 'poweroff -f' TERM USR2
trap 'reboot -f' INT
while :; do
  vdc_disks
  if [ -c /dev/null ]; then sleep 1 & wait $!; else sleep 1; fi
done
EOF

cat >"$TPL/acpi-power" <<'EOF'
#!/bin/sh
echo "vdc-guest: acpi power button, powering off" >/dev/console
sync
poweroff -f
EOF

cat >"$TPL/init.sh" <<'EOF'
#!/bin/sh
# PID 1 of the vdc tiny LXC rootfs. libvirt passes VDC_INSTANCE_ID / VDC_HOSTNAME
# through <os><initenv>.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
echo "vdc-guest: instance-id=${VDC_INSTANCE_ID:-unknown} hostname=${VDC_HOSTNAME:-unknown} up"
. /etc/vdc-net.sh
# Only a container's PID 1 owns its UTS/net namespaces: run under a plain chroot on a
# host, this must not rename the host or flush the host's eth0 (VDC_GUEST_NET=1 forces).
if [ "$$" = 1 ] || [ "${VDC_GUEST_NET:-}" = 1 ]; then
  [ -n "${VDC_HOSTNAME:-}" ] && hostname "$VDC_HOSTNAME" 2>/dev/null
  VDC_NET_CONTAINER=1 vdc_net_up
else
  echo "vdc-guest: eth0 skipped (not PID 1)"
fi
echo "vdc-guest: ready"
[ "$$" = 1 ] || exec sleep infinity
# As PID 1 an exec'd sleep would ignore SIGTERM (virsh shutdown): keep a shell with a
# trap. A background job needs /dev/null (ash opens it for the job's stdin).
trap 'exit 0' TERM INT PWR
while :; do
  if [ -c /dev/null ]; then sleep 3600 & wait $!; else sleep 3600; fi
done
EOF

# -------------------------------------------------------------------- prerequisites

command -v dpkg-deb >/dev/null || die "dpkg-deb not found (this needs a Debian system)"
command -v apt-get >/dev/null || die "apt-get not found (this needs a Debian system)"
for t in gzip tar sha256sum od dd; do
  command -v "$t" >/dev/null || die "$t not found"
done
command -v cpio >/dev/null || apt_install cpio

# A static busybox: the dynamic one (package busybox) would need libc in the image.
# (ldd exits 1 on a static binary, hence no pipe under pipefail.)
is_static() {
  local o
  o=$(LC_ALL=C ldd "$1" 2>&1 || true)
  grep -qE 'not a dynamic executable|statically linked' <<<"$o"
}
BB=/bin/busybox
if [ ! -x "$BB" ]; then
  apt_install busybox-static
fi
if ! is_static "$BB"; then
  log "$BB is dynamically linked: taking busybox-static from the archive instead"
  mkdir -p "$WORK/bbdeb"
  (cd "$WORK/bbdeb" && apt_download busybox-static)
  dpkg-deb -x "$WORK"/bbdeb/busybox-static_*.deb "$WORK/bbdeb/x"
  BB="$WORK/bbdeb/x/bin/busybox"
  [ -x "$BB" ] && is_static "$BB" || die "no static busybox in busybox-static"
fi
applets=$("$BB" --list)
for a in sh mount ip udhcpc wget insmod sleep timeout acpid poweroff; do
  grep -qx "$a" <<<"$applets" || die "busybox ($BB) lacks the applet '$a'"
done

# Lays out busybox and its applet links (what `busybox --install -s` does, without
# having to run it inside a chroot).
populate_busybox() { # ROOT
  local root=$1 p
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,var/log}
  chmod 1777 "$root/tmp"
  cp -- "$BB" "$root/bin/busybox"
  chmod 0755 "$root/bin/busybox"
  "$BB" --list-full | while read -r p; do
    [ -e "$root/$p" ] || [ -L "$root/$p" ] || ln -s /bin/busybox "$root/$p"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  install -m 0755 "$TPL/udhcpc.script" "$root/etc/udhcpc.script"
  install -m 0644 "$TPL/vdc-net.sh" "$root/etc/vdc-net.sh"
}

# ------------------------------------------------------------- kernel + initramfs

# The initrd carries modules of one kernel release: valid only with that vmlinuz and with
# the scripts this version of the builder writes.
valid_initrd() { # FILE RELEASE
  local f=$1 rel=$2 d="$WORK/check-initrd"
  [ -s "$f" ] && gzip -t "$f" 2>/dev/null || return 1
  rm -rf "$d" && mkdir -p "$d"
  (cd "$d" && gzip -dc "$f" | cpio -id --quiet init etc/udhcpc.script etc/vdc-net.sh \
     etc/vdc-kernel-release etc/acpi/PWRF/00000080 bin/busybox 2>/dev/null) || return 1
  [ -x "$d/init" ] && [ -x "$d/bin/busybox" ] || return 1
  cmp -s "$d/init" "$TPL/init" && cmp -s "$d/etc/udhcpc.script" "$TPL/udhcpc.script" \
    && cmp -s "$d/etc/vdc-net.sh" "$TPL/vdc-net.sh" \
    && cmp -s "$d/etc/acpi/PWRF/00000080" "$TPL/acpi-power" || return 1
  [ "$(cat "$d/etc/vdc-kernel-release" 2>/dev/null)" = "$rel" ]
}

# Copies WANTED_MODULES and their dependencies (dependencies first) into ROOT and writes
# ROOT/etc/modules.load. Built-in or absent modules are skipped.
add_modules() { # KROOT REL ROOT
  local kroot=$1 rel=$2 root=$3
  local mdir="$kroot/lib/modules/$rel"
  [ -d "$mdir" ] || { log "no modules in the kernel package: the guest gets no virtio"; return 0; }
  # The package has no modules.dep (depmod runs at install time): make one.
  if [ ! -s "$mdir/modules.dep" ]; then
    if command -v depmod >/dev/null; then depmod -b "$kroot" "$rel"
    else "$BB" depmod -b "$kroot" "$rel"; fi
  fi
  [ -s "$mdir/modules.dep" ] || die "depmod produced no modules.dep for $rel"

  declare -A path=() deps=() seen=()
  local line k v name
  while IFS= read -r line; do
    k=${line%%:*}; v=${line#*:}
    name=${k##*/}; name=${name%%.ko*}; name=${name//-/_}
    path[$name]=$k; deps[$name]=$v
  done <"$mdir/modules.dep"

  local order=()
  visit() {
    local m=$1 d dn
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    for d in ${deps[$m]:-}; do
      dn=${d##*/}; dn=${dn%%.ko*}; dn=${dn//-/_}
      visit "$dn"
    done
    order+=("$m")
  }
  local m
  for m in "${WANTED_MODULES[@]}"; do
    if [ -z "${path[$m]:-}" ]; then
      grep -qE "/$m\.ko" "$mdir/modules.builtin" 2>/dev/null \
        || log "module $m not in $rel (skipped)"
      continue
    fi
    visit "$m"
  done

  mkdir -p "$root/lib/modules"
  : >"$root/etc/modules.load"
  local src dst
  for m in "${order[@]}"; do
    src="$mdir/${path[$m]}"
    dst="$root/lib/modules/$m.ko"
    case "$src" in
      *.ko) cp -- "$src" "$dst" ;;
      *.ko.xz) command -v xz >/dev/null || die "xz needed for $src (apt-get install xz-utils)"
               xz -dc "$src" >"$dst" ;;
      *.ko.zst) command -v zstd >/dev/null || die "zstd needed for $src (apt-get install zstd)"
                zstd -qdc "$src" >"$dst" ;;
      *.ko.gz) gzip -dc "$src" >"$dst" ;;
      *) die "unknown module format: $src" ;;
    esac
    echo "$m.ko" >>"$root/etc/modules.load"
  done
  log "modules: ${order[*]:-none}"
}

# Modules of a previous initrd for the same kernel, when they cover WANTED_MODULES: lets
# a change of the guest scripts rebuild the initrd without the 70 MB kernel package.
old_initrd_modules() { # FILE REL DIR
  local f=$1 rel=$2 d=$3 m
  [ -s "$f" ] && gzip -t "$f" 2>/dev/null || return 1
  rm -rf "$d" && mkdir -p "$d"
  (cd "$d" && gzip -dc "$f" | cpio -id --quiet etc/vdc-kernel-release etc/modules.load \
     'lib/modules/*.ko' 2>/dev/null) || return 1
  [ "$(cat "$d/etc/vdc-kernel-release" 2>/dev/null)" = "$rel" ] || return 1
  [ -s "$d/etc/modules.load" ] || return 1
  for m in "${WANTED_MODULES[@]}"; do
    grep -qx "$m.ko" "$d/etc/modules.load" || return 1
  done
  while read -r m; do [ -s "$d/lib/modules/$m" ] || return 1; done <"$d/etc/modules.load"
}

build_initrd() { # REL KROOT|"" OLDMODS|""
  local rel=$1 kroot=$2 oldmods=$3 root="$WORK/initrd"
  rm -rf "$root"
  populate_busybox "$root"
  install -m 0755 "$TPL/init" "$root/init"
  mkdir -p "$root/etc/acpi/PWRF"
  install -m 0755 "$TPL/acpi-power" "$root/etc/acpi/PWRF/00000080"
  echo "$rel" >"$root/etc/vdc-kernel-release"
  # The kernel's built-in initramfs has /dev/console too; ours must not depend on it.
  [ -e "$root/dev/console" ] || mknod -m 0600 "$root/dev/console" c 5 1 2>/dev/null || true
  if [ -n "$kroot" ]; then
    add_modules "$kroot" "$rel" "$root"
  else
    mkdir -p "$root/lib/modules"
    cp -- "$oldmods"/lib/modules/*.ko "$root/lib/modules/"
    cp -- "$oldmods/etc/modules.load" "$root/etc/modules.load"
    log "modules: reused from the previous initrd.gz"
  fi
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1) \
    >"$WORK/initrd.gz"
  install_file "$WORK/initrd.gz" initrd.gz
  log "initrd.gz: $(du -h "$OUT/initrd.gz" | cut -f1) ($rel)"
}

krel=""
valid_kernel "$OUT/vmlinuz" && krel=$(kernel_release "$OUT/vmlinuz")
if [ -n "$krel" ] && valid_initrd "$OUT/initrd.gz" "$krel"; then
  log "vmlinuz ($krel) and initrd.gz are up to date"
elif [ -n "$krel" ] && old_initrd_modules "$OUT/initrd.gz" "$krel" "$WORK/oldmods"; then
  log "vmlinuz ($krel) is up to date; rebuilding initrd.gz"
  build_initrd "$krel" "" "$WORK/oldmods"
else
  # Keep an existing valid kernel when its package is still in the archive, else take
  # the newest 6.1 kernel apt offers.
  pkg=""
  if [ -n "$krel" ] && apt_candidate "linux-image-$krel"; then
    pkg="linux-image-$krel"
  else
    pkg=$(newest_kernel_pkg)
    if [ -z "$pkg" ]; then
      log "no linux-image-6.1.0-*-amd64 in the apt cache: running apt-get update"
      need_root "apt-get update needs root" "linux-image-6.1.0-<abi>-amd64"
      apt_wait
      apt-get update -qq -o DPkg::Lock::Timeout=600 || die "apt-get update failed"
      pkg=$(newest_kernel_pkg)
    fi
    [ -n "$pkg" ] || die "apt offers no linux-image-6.1.0-*-amd64 package"
  fi
  log "kernel package: $pkg"
  # A copy apt already fetched (apt-get install/-d) saves 70 MB of download.
  deb=$(ls /var/cache/apt/archives/"${pkg}"_*_amd64.deb 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$deb" ] || ! dpkg-deb --info "$deb" >/dev/null 2>&1; then
    mkdir -p "$WORK/kdeb"
    (cd "$WORK/kdeb" && apt_download "$pkg")
    deb=$(ls "$WORK"/kdeb/*.deb 2>/dev/null | head -n 1)
    # Keep it where apt keeps what it fetched, so the next build needs no download.
    if [ -n "$deb" ] && [ -w /var/cache/apt/archives ]; then
      cp -f "$deb" /var/cache/apt/archives/ && deb=/var/cache/apt/archives/$(basename "$deb")
    fi
  fi
  [ -n "$deb" ] || die "apt-get download $pkg produced no .deb"
  dpkg-deb -x "$deb" "$WORK/kernel" || die "dpkg-deb -x $deb failed"
  kimg=$(ls "$WORK"/kernel/boot/vmlinuz-* 2>/dev/null | head -n 1)
  [ -n "$kimg" ] && valid_kernel "$kimg" || die "no bzImage boot/vmlinuz-* in $deb"
  rel=$(kernel_release "$kimg")
  [ -n "$rel" ] || die "cannot read the kernel release of $kimg"
  if [ "$rel" != "$krel" ]; then
    install_file "$kimg" vmlinuz
    log "vmlinuz: $rel"
  fi
  build_initrd "$rel" "$WORK/kernel" ""
  rm -rf "$WORK/kernel" "$WORK/kdeb"
fi

# --pvh: the ELF inside the bzImage. Its payload is at (setup_sects+1)*512 +
# payload_offset (0x248), payload_length (0x24c) bytes long (Linux boot protocol 2.08+).
extract_vmlinux() { # BZIMAGE OUT
  local f=$1 out=$2 setup off len start magic
  setup=$(od -An -tu1 -j 497 -N 1 "$f" | tr -d ' ')
  [ "$setup" = 0 ] && setup=4
  off=$(od -An -tu4 -j 584 -N 4 "$f" | tr -d ' ')
  len=$(od -An -tu4 -j 588 -N 4 "$f" | tr -d ' ')
  start=$(( (setup + 1) * 512 + off ))
  dd if="$f" of="$WORK/payload" bs=1M iflag=skip_bytes,count_bytes skip="$start" count="$len" \
    status=none
  magic=$(od -An -tx1 -N 6 "$WORK/payload" | tr -d ' \n')
  case "$magic" in
    fd377a585a00)
      command -v xz >/dev/null || die "--pvh needs xz (apt-get install xz-utils)"
      xz -dc --single-stream <"$WORK/payload" >"$out" ;;
    1f8b*) gzip -dc <"$WORK/payload" >"$out" 2>/dev/null || true ;;
    *) die "--pvh: unsupported kernel compression (payload magic $magic)" ;;
  esac
  rm -f "$WORK/payload"
  [ "$(od -An -tx1 -N 4 "$out" | tr -d ' \n')" = 7f454c46 ] \
    || die "--pvh: no ELF kernel inside $f"
}

if [ "$PVH" = 1 ]; then
  krel=$(kernel_release "$OUT/vmlinuz")
  if [ -s "$OUT/vmlinux" ] && [ "$OUT/vmlinux" -nt "$OUT/vmlinuz" ] \
     && [ "$(od -An -tx1 -N 4 "$OUT/vmlinux" | tr -d ' \n')" = 7f454c46 ] \
     && grep -aqF "Linux version $krel " "$OUT/vmlinux"; then
    log "vmlinux ($krel) is up to date"
  else
    extract_vmlinux "$OUT/vmlinuz" "$WORK/vmlinux"
    install_file "$WORK/vmlinux" vmlinux
    log "vmlinux: $(du -h "$OUT/vmlinux" | cut -f1) ($krel, PVH)"
  fi
fi

# ------------------------------------------------------------------------ LXC rootfs

valid_rootfs() { # DIR
  local r=$1
  [ -x "$r/bin/busybox" ] && [ -L "$r/bin/sh" ] && [ -s "$r/etc/passwd" ] \
    && cmp -s "$r/init.sh" "$TPL/init.sh" && [ -x "$r/init.sh" ] \
    && cmp -s "$r/etc/udhcpc.script" "$TPL/udhcpc.script" \
    && cmp -s "$r/etc/vdc-net.sh" "$TPL/vdc-net.sh"
}

rootfs_new=0
if valid_rootfs "$OUT/rootfs"; then
  log "rootfs/ is up to date"
else
  # Built beside the old one and swapped in, so a failed run leaves no half rootfs.
  new="$OUT/.rootfs.$$.tmp"
  rm -rf -- "$new"
  populate_busybox "$new"
  install -m 0755 "$TPL/init.sh" "$new/init.sh"
  rm -rf -- "$OUT/rootfs"
  mv -- "$new" "$OUT/rootfs"
  rootfs_new=1
  log "rootfs/: built"
fi

if [ "$rootfs_new" = 0 ] && [ -s "$OUT/rootfs.tar.gz" ] && gzip -t "$OUT/rootfs.tar.gz" 2>/dev/null \
   && tar -tzf "$OUT/rootfs.tar.gz" ./init.sh >/dev/null 2>&1; then
  log "rootfs.tar.gz is up to date"
else
  tar -C "$OUT/rootfs" --numeric-owner --owner=0 --group=0 -czf "$WORK/rootfs.tar.gz" .
  install_file "$WORK/rootfs.tar.gz" rootfs.tar.gz
  log "rootfs.tar.gz: $(du -h "$OUT/rootfs.tar.gz" | cut -f1)"
fi

# ------------------------------------------------------------------- checksums, json
# Cheap, so always rewritten: they then always describe the files beside them.
k_sha=$(sha "$OUT/vmlinuz")
i_sha=$(sha "$OUT/initrd.gz")
r_sha=$(sha "$OUT/rootfs.tar.gz")
printf '%s  %s\n' "$k_sha" vmlinuz "$i_sha" initrd.gz "$r_sha" rootfs.tar.gz >"$WORK/SHA256SUMS"
if [ "$PVH" = 1 ]; then
  printf '%s  %s\n' "$(sha "$OUT/vmlinux")" vmlinux >>"$WORK/SHA256SUMS"
fi
install_file "$WORK/SHA256SUMS" SHA256SUMS
cat >"$WORK/image.json" <<EOF
{"kernel": "vmlinuz", "initrd": "initrd.gz", "kernel_sha256": "$k_sha", "initrd_sha256": "$i_sha", "rootfs_tar": "rootfs.tar.gz", "rootfs_sha256": "$r_sha", "cmdline": "$CMDLINE"}
EOF
install_file "$WORK/image.json" image.json

log "done: $OUT"
