#!/usr/bin/env bash
# Installs the system packages vdc and its tests need (Debian bookworm, as root or with
# sudo). Quick when everything is already there: apt runs only for what is missing.
set -euo pipefail

packages=(
  nats-server          # the bus between hosts (tests run a real one)
  postgresql           # dcmgr's production database (the API suite runs on it too)
  wrk                  # the HTTP benchmark of vdc-bench
  pkg-config
  python3
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }
