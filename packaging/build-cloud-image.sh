#!/usr/bin/env bash
# Builds a Debian bookworm cloud image the way a user would bring one to vdc: Debian's own
# kernel, systemd, cloud-init and openssh-server from Debian's archive (debootstrap), a
# bootloader, and a partitioned qcow2 — a guest that boots from its disk, not the tiny
# image's direct kernel boot.
#
#   bash packaging/build-cloud-image.sh OUTDIR
#
# Writes OUTDIR/debian-12-cloud.qcow2, SHA256SUMS and image.json. Idempotent: an image
# built by this same script is kept (≈ 0 s); otherwise it takes ≈ 4 minutes.
#
# No mount and no loop device: the root filesystem is written by `mkfs.ext4 -d` from the
# debootstrap tree, the boot partition is FAT with SYSLINUX installed through mtools, and
# the partitions are laid into one raw disk with sfdisk and dd. So it runs in containers
# without loop devices too.
#
# Disk layout (MBR, BIOS boot):
#   p1  64 MiB  FAT16, bootable: SYSLINUX, vmlinuz, initrd.img, syslinux.cfg
#   p2  rest    ext4, label "root": the system (cloud-init's growpart grows it)
# The kernel on p1 is not updated by apt inside the guest: this is a test and laptop image.
set -euo pipefail

PROG=build-cloud-image
NAME=debian-12-cloud
DISK_MIB=2048
BOOT_MIB=64
# What makes the guest a cloud guest; resolved with their dependencies by debootstrap.
PACKAGES=(
  linux-image-cloud-amd64 initramfs-tools systemd-sysv udev dbus
  openssh-server cloud-init cloud-guest-utils ifupdown isc-dhcp-client
  netbase iproute2 iputils-ping netcat-openbsd sudo procps ca-certificates
)

log() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: error: $*" >&2; exit 1; }

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap needs it)"
mkdir -p -- "$1"
OUT=$(cd -- "$1" && pwd)

# The stamp is this script itself: a changed recipe rebuilds, an unchanged one keeps.
STAMP=$(sha256sum "$0" | awk '{print $1}')
if [ -s "$OUT/$NAME.qcow2" ] && [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$STAMP" ] \
   && (cd "$OUT" && sha256sum --quiet -c SHA256SUMS) 2>/dev/null; then
  log "$OUT/$NAME.qcow2 is up to date"
  exit 0
fi

debian_mirror() {
  local m=""
  [ -f /etc/apt/sources.list.d/debian.sources ] \
    && m=$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  [ -n "$m" ] || [ ! -f /etc/apt/sources.list ] \
    || m=$(awk '$1 == "deb" && !/security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:/) { print $i; exit } }' /etc/apt/sources.list)
  [ -n "$m" ] || die "no Debian mirror in the machine's apt sources"
  echo "${m%/}"
}

need=()
for t in debootstrap:debootstrap syslinux:syslinux mcopy:mtools mkfs.vfat:dosfstools \
         sfdisk:fdisk mkfs.ext4:e2fsprogs qemu-img:qemu-utils; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || need+=(syslinux-common)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/$PROG.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT
ROOT="$WORK/rootfs"

MIRROR=$(debian_mirror)
log "debootstrap bookworm from $MIRROR, then apt-get install in it (≈ 4 min)"
# minbase first, the rest with apt inside: debootstrap's own resolver fails to configure
# cloud-init's Python dependencies (seen: python3-cryptography).
for i in 1 2; do
  debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 && break
  [ "$i" = 2 ] && { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  log "debootstrap failed, retrying once"; rm -rf -- "$ROOT"
done
mounts=()
unmount_all() { local m; for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done; mounts=(); }
trap 'unmount_all; rm -rf -- "$WORK"' EXIT
for fs in proc sys dev; do
  case $fs in proc) mount -t proc proc "$ROOT/proc" ;; sys) mount -t sysfs sys "$ROOT/sys" ;; dev) mount --bind /dev "$ROOT/dev" ;; esac
  mounts=("$ROOT/$fs" "${mounts[@]}")
done
# No daemon starts inside the build chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"; chmod +x "$ROOT/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
for i in 1 2; do
  chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive sh -c \
    "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${PACKAGES[*]}" \
    >"$WORK/apt.log" 2>&1 && break
  [ "$i" = 2 ] && { tail -n 30 "$WORK/apt.log" >&2; die "apt-get install in the image failed"; }
  log "apt-get install in the image failed, retrying once"
done
rm -f "$ROOT/usr/sbin/policy-rc.d"
unmount_all

ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
# debootstrap copied this machine's resolver and name: a guest gets its own from DHCP.
rm -f "$ROOT/etc/resolv.conf" "$ROOT/etc/hostname"  # (and the copy made for apt)
: >"$ROOT/etc/machine-id"
echo "UUID=$ROOT_UUID / ext4 defaults,errors=remount-ro 0 1" >"$ROOT/etc/fstab"
cat >"$ROOT/etc/network/interfaces" <<'EOF'
# cloud-init writes the NICs into interfaces.d (DHCP on the first one by default).
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
EOF
cat >"$ROOT/etc/cloud/cloud.cfg.d/90-vdc.cfg" <<'EOF'
# vdc gives a NoCloud seed disk and an EC2/OpenStack metadata service.
datasource_list: [NoCloud, Ec2, OpenStack, None]
datasource:
  Ec2:
    strict_id: false
# RSA host keys take most of a TCG boot; ed25519 is instant.
ssh_genkeytypes: [ed25519]
ssh_pwauth: false
# minbase has no locales package: generating en_US.UTF-8 fails cloud-config.service.
locale: false
EOF
# Debian's cloud.cfg names the default user "debian" (vdc's image property default_user).
grep -q 'name: debian' "$ROOT/etc/cloud/cloud.cfg" || die "cloud.cfg has no default user 'debian'"
rm -f "$ROOT"/etc/ssh/ssh_host_*key*
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log "$ROOT"/tmp/*

KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | sort -V | tail -n 1)")
[ -f "$ROOT/boot/vmlinuz-$KVER" ] && [ -f "$ROOT/boot/initrd.img-$KVER" ] \
  || die "no kernel/initrd for $KVER in the rootfs"

# Boot partition: FAT + SYSLINUX, through mtools (no mount).
BOOT="$WORK/boot.img"
mkfs.vfat -C -n BOOT "$BOOT" $((BOOT_MIB * 1024)) >/dev/null
syslinux --install "$BOOT"
cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT debian
TIMEOUT 0
PROMPT 0
LABEL debian
  KERNEL vmlinuz
  APPEND initrd=initrd.img root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200 net.ifnames=0
EOF
mcopy -i "$BOOT" "$ROOT/boot/vmlinuz-$KVER" ::/vmlinuz
mcopy -i "$BOOT" "$ROOT/boot/initrd.img-$KVER" ::/initrd.img
mcopy -i "$BOOT" "$WORK/syslinux.cfg" ::/syslinux.cfg

# Root partition: ext4 filled from the tree.
ROOT_MIB=$((DISK_MIB - BOOT_MIB - 1))
mkfs.ext4 -q -F -L root -U "$ROOT_UUID" -d "$ROOT" "$WORK/root.img" "${ROOT_MIB}M"

RAW="$WORK/disk.raw"
truncate -s "${DISK_MIB}M" "$RAW"
sfdisk -q "$RAW" <<EOF
label: dos
start=2048, size=$((BOOT_MIB * 2048)), type=6, bootable
start=$((2048 + BOOT_MIB * 2048)), type=83
EOF
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$RAW" bs=440 count=1 conv=notrunc status=none
dd if="$BOOT" of="$RAW" bs=1M seek=1 conv=notrunc status=none
dd if="$WORK/root.img" of="$RAW" bs=1M seek=$((1 + BOOT_MIB)) conv=notrunc,sparse status=none

qemu-img convert -O qcow2 "$RAW" "$WORK/$NAME.qcow2"
mv -f "$WORK/$NAME.qcow2" "$OUT/$NAME.qcow2"
cat >"$OUT/image.json" <<EOF
{"name": "debian", "file": "$NAME.qcow2", "format": "qcow2", "default_user": "debian",
 "os": "debian-12", "kernel": "$KVER"}
EOF
(cd "$OUT" && sha256sum "$NAME.qcow2" image.json >SHA256SUMS)
echo "$STAMP" >"$OUT/.stamp"
log "wrote $OUT/$NAME.qcow2 ($(du -h "$OUT/$NAME.qcow2" | awk '{print $1}'), kernel $KVER)"
