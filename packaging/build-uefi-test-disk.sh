#!/usr/bin/env bash
# Builds a small UEFI-bootable disk from the tiny image, for the tests of the `uefi` boot
# mode: a GPT disk whose EFI system partition holds a standalone GRUB as the removable
# media loader (EFI/BOOT/BOOTX64.EFI) and the tiny kernel and initrd beside it. No loop
# devices or mounts: the FAT is written with mtools.
#
#   bash packaging/build-uefi-test-disk.sh TINY_IMAGE_DIR OUT.qcow2
#
# Needs grub-efi-amd64-bin (grub-mkstandalone), dosfstools, mtools, fdisk (sfdisk),
# qemu-utils; packaging/install-deps.sh installs them. GRUB 2.06's EFI heap is small: the
# kernel and initrd sit on the ESP, not in GRUB's memdisk ("out of memory" otherwise).
# The guest needs at least 512 MiB under OVMF.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 TINY_IMAGE_DIR OUT.qcow2" >&2; exit 2; }
TINY=$1 OUT=$2
for f in vmlinuz initrd.gz; do
  [ -f "$TINY/$f" ] || { echo "$0: $TINY/$f is missing (run packaging/build-tiny-image.sh)" >&2; exit 1; }
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/uefi-disk.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT

cat >"$WORK/grub.cfg" <<'CFG'
set timeout=0
search --no-floppy --file /vmlinuz --set=root
linux /vmlinuz console=ttyS0 panic=-1 quiet vdc.boot=uefi
initrd /initrd.gz
boot
CFG
grub-mkstandalone -O x86_64-efi -o "$WORK/BOOTX64.EFI" --modules="part_gpt fat search linux normal" \
  --locales= --themes= --fonts= "boot/grub/grub.cfg=$WORK/grub.cfg"

# The ESP: 30 MiB of FAT at 1 MiB into a 32 MiB GPT disk.
truncate -s 30M "$WORK/esp.img"
mkfs.vfat -n VDCESP "$WORK/esp.img" >/dev/null
mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$WORK/esp.img" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$WORK/esp.img" "$TINY/vmlinuz" ::/vmlinuz
mcopy -i "$WORK/esp.img" "$TINY/initrd.gz" ::/initrd.gz
truncate -s 32M "$WORK/disk.raw"
printf 'label: gpt\nstart=2048, size=61440, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n' | sfdisk -q "$WORK/disk.raw"
dd if="$WORK/esp.img" of="$WORK/disk.raw" bs=1M seek=1 conv=notrunc status=none
qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/out.qcow2"
mv -f -- "$WORK/out.qcow2" "$OUT"
