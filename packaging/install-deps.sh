#!/usr/bin/env bash
# Installs the system packages vdc and its tests need (Debian bookworm, as root or with
# sudo). Quick when everything is already there: apt runs only for what is missing.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

packages=(
  nats-server          # the bus between hosts (tests run a real one)
  postgresql           # dcmgr's production database (the API suite runs on it too)
  wrk                  # the HTTP benchmark of vdc-bench
  pkg-config python3 python3-pip
  # hva: libvirt with its qemu and lxc drivers; the tiny test image is built from
  # busybox-static and a Debian kernel; genisoimage makes cloud-init seeds.
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-daemon-driver-lxc libvirt-clients
  libvirt-dev dnsmasq-base busybox-static cpio genisoimage xz-utils
  # nwagent: dhcp_release frees a removed interface's lease in its network's dnsmasq.
  dnsmasq-utils
  # UEFI guests: OVMF firmware (hva offers the `uefi` boot mode only where it is installed);
  # the UEFI test disk is a GRUB standalone EFI binary on a FAT ESP in a GPT (mtools,
  # dosfstools, sfdisk from fdisk).
  ovmf grub-efi-amd64-bin mtools dosfstools fdisk
  # sta: the userspace iSCSI target, a userspace initiator for checks, and the backends
  # (zfs-fuse: no ZFS kernel module on these machines; btrfs on a loop device).
  tgt libiscsi-bin btrfs-progs zfs-fuse
  # nwagent: Open vSwitch (userspace datapath), nftables, and the tools its tests use.
  openvswitch-switch nftables iproute2 ethtool iputils-ping iputils-arping netcat-openbsd iperf3
  # tests/two-hosts.sh: a loopback relay into site A's namespace, so one `vdc bundle push`
  # reaches both sites' APIs.
  socat
  # vdc instance ssh: the ssh client, and a throwaway sshd (no service) for its test.
  openssh-client dropbear-bin
  # The metrics test: a real Prometheus scrapes a stack and answers the dashboard's queries.
  prometheus
  # The console's browser test: headless Chromium driven through chromedriver (WebDriver).
  chromium chromium-driver
  # The bundle host test's floor: `tar | zstd -1` of the same bytes.
  zstd tar
)
# QEMU 10 comes from bookworm-backports: bookworm's 7.2 conflicts with the qemu-utils 10
# these machines ship.
backports=(qemu-system-x86 qemu-block-extra)

# The Debian mirror apt already uses: the first non-security URI of the deb822 sources,
# else of the one-line sources.list.
debian_mirror() {
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    # `deb [options] URI suite …`: the URI is the first field with a scheme.
    m=$(awk '$1 == "deb" && !/security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:/) { print $i; exit } }' \
      /etc/apt/sources.list)
  fi
  [ -n "$m" ] || { echo "no Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list" >&2; exit 1; }
  echo "${m%/}"
}

# The S3 server the S3 image store's tests run (tests/tests/s3.rs): s3s-fs has no Debian
# package. 0.14.1 is the newest that builds with stable Rust 1.95 (0.17 wants 1.96).
# Built while apt installs (it needs none of apt's packages): on a fresh machine the two
# took turns, minutes each. Built again in the foreground if that fails.
s3s_fs="s3s-fs@0.14.1"
S3S_PID=""
if ! s3s-fs --version >/dev/null 2>&1 && ! "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" --version >/dev/null 2>&1; then
  command -v cargo >/dev/null || { echo "cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }
  S3S_LOG=$(mktemp /tmp/vdc-install-s3s-fs.XXXXXX)
  echo "installing (cargo, beside apt): s3s-fs (log: $S3S_LOG)"
  cargo install --locked --features binary "$s3s_fs" >"$S3S_LOG" 2>&1 &
  S3S_PID=$!
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
missing_bp=()
for p in "${backports[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_bp+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_bp[@]} -gt 0 ]; then
  # bookworm-backports from the machine's own Debian mirror (never a hard-coded one).
  line="deb $(debian_mirror) bookworm-backports main"
  list=/etc/apt/sources.list.d/backports.list
  [ "$(cat "$list" 2>/dev/null)" = "$line" ] || echo "$line" | $SUDO tee "$list" >/dev/null
  echo "installing: ${missing_bp[*]} ${missing[*]}"
  $SUDO apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  if [ ${#missing_bp[@]} -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports "${missing_bp[@]}" >/dev/null
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
# Python tools of the API contract tests: openapi-spec-validator checks dcmgr/openapi.json
# (tests/tests/contract.rs), schemathesis 4 fuzzes a live dcmgr against it
# (tests/schemathesis.sh). Installed for the python3 the tests run, only when missing.
py_missing=()
python3 -c 'import openapi_spec_validator' 2>/dev/null || py_missing+=(openapi-spec-validator)
python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("schemathesis").split(".")[0] != "4")' \
  2>/dev/null || py_missing+=("schemathesis>=4,<5")
if [ ${#py_missing[@]} -gt 0 ]; then
  echo "installing (pip): ${py_missing[*]}"
  # Debian's own python3 is "externally managed" (PEP 668); these are test tools for root.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check "${py_missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }
if [ -n "$S3S_PID" ]; then
  if wait "$S3S_PID"; then
    rm -f "$S3S_LOG"
  else
    echo "s3s-fs did not build beside apt (last lines of $S3S_LOG below); building it again" >&2
    tail -n 5 "$S3S_LOG" >&2
    cargo install --locked --features binary "$s3s_fs"
  fi
fi
