#!/usr/bin/env bash
# One-time set-up of a machine for the all-in-one cloud: system packages, libvirt
# running, the tiny guest image in vdc's data directory, and `vdc` installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/install-deps.sh
bash packaging/start-libvirt.sh >/dev/null
# Where `vdc up` looks for the tiny image: machine-wide as root, else in its data dir.
if [ "$(id -u)" -eq 0 ]; then
  tiny=/var/cache/vdc/tiny-image
else
  tiny="${XDG_DATA_HOME:-$HOME/.local/share}/vdc/tiny-image"
fi
mkdir -p "$tiny"
bash packaging/build-tiny-image.sh "$tiny" >/dev/null
cargo install --locked --quiet --path cli
echo "set up; run: vdc up"
