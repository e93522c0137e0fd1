#!/usr/bin/env bash
# One-time set-up of a machine for the all-in-one cloud: system packages, libvirt
# running, the tiny guest image in vdc's data directory, and `vdc` installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/install-deps.sh
bash packaging/start-libvirt.sh >/dev/null
# Same default as `vdc up`: QEMU runs as its own user and cannot enter root's home.
if [ "$(id -u)" -eq 0 ]; then data=/var/lib/vdc; else data="${XDG_DATA_HOME:-$HOME/.local/share}/vdc"; fi
mkdir -p "$data" && chmod 755 "$data"
bash packaging/build-tiny-image.sh "$data/tiny-image" >/dev/null
cargo install --locked --quiet --path cli
echo "set up; run: vdc up"
