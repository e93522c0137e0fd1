#!/usr/bin/env bash
# Runs every vdc test: installs what the tests need, starts libvirt and a private
# PostgreSQL on a free loopback port (removed afterwards), builds the tiny guest image
# (kept in /var/cache/vdc/tiny-image), runs the tests of the whole workspace — also the
# host tests of tests/host (root, real libvirt/OVS/tgtd), which a plain `cargo test`
# leaves out — then the two-host scenario (tests/two-hosts.sh) and the API fuzzing
# (tests/schemathesis.sh), then a real cloud guest end to end (tests/cloud-e2e.sh). Tests that need NATS start their own nats-server. Every test
# makes its own namespaces, switches and daemons, so this may run while `vdc up` does.
# Extra arguments go to `cargo test` (and skip the two-host scenario and the fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/install-deps.sh
bash packaging/start-libvirt.sh
# The tiny image is a machine-wide artifact (like apt's cache): built once per machine,
# checked and kept by later runs and clones.
export VDC_TINY_IMAGE_DIR="${VDC_TINY_IMAGE_DIR:-/var/cache/vdc/tiny-image}"
bash packaging/build-tiny-image.sh "$VDC_TINY_IMAGE_DIR" >/dev/null

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
PGDIR=$(mktemp -d /tmp/vdc-test-pg.XXXXXX)
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg() {
  # initdb refuses to run as root.
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" -eq 0 ] && chown postgres "$PGDIR"
cleanup() {
  as_pg "$PG_BIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PGDIR"
}
trap cleanup EXIT
as_pg "$PG_BIN/initdb" -D "$PGDIR/data" -A trust -U postgres >/dev/null
# fsync off: a test database need not survive a power cut, and tests run much faster.
as_pg "$PG_BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
  -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1 -c max_connections=500 -c fsync=off -c synchronous_commit=off" \
  start >/dev/null
export VDC_TEST_PG_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
echo "PostgreSQL for tests on 127.0.0.1:$PGPORT"

# The multi-process tests run the real binaries (dcmgr, hva, …): `cargo test` alone
# builds bin targets only as test harnesses.
cargo build --workspace --bins
# Tests keep to their own directories: on a machine without a cloud (CI), none may leave
# the all-in-one's default data directory behind (a test dcmgr on PostgreSQL without an
# [images] dir once opened /var/lib/vdc/images, the store of a running `vdc up`).
had_default_data=$([ -e /var/lib/vdc ] && echo yes || echo no)
cargo test --workspace "$@"
if [ "$had_default_data" = no ] && [ -e /var/lib/vdc ]; then
  echo "a test wrote into /var/lib/vdc, the all-in-one's data directory:" >&2
  find /var/lib/vdc -maxdepth 3 >&2
  exit 1
fi
# A VDC on two hosts, end to end through the CLI, with faults (prints a step table);
# then schemathesis against a live dcmgr and its OpenAPI document.
if [ $# -eq 0 ]; then
  bash tests/two-hosts.sh
  bash tests/schemathesis.sh
  # A Debian cloud guest through `vdc up` and the CLI, by names, ssh, stop/start, DNS, NAT.
  bash tests/cloud-e2e.sh
fi
