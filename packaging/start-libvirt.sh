#!/usr/bin/env bash
# Starts virtlogd and libvirtd by hand where there is no systemd (as on CI), and waits
# until both the qemu and lxc drivers answer. Prints "started" if it started libvirtd.
#
# libvirtd runs in a private mount namespace without the cgroup v1 "unified" mount: on
# hybrid cgroup hosts its LXC driver otherwise fails with "Unable to create directory
# /sys/fs/cgroup/unified". QEMU domains work the same in that daemon.
set -euo pipefail
# Without udevd nobody applies Debian's rule for /dev/kvm (root:kvm 0660), and libvirt
# then finds KVM "usable when probed (as root) but not now (as libvirt-qemu)" and
# re-probes QEMU's capabilities on every define: 40 s each. Apply the rule by hand,
# also when libvirtd already runs (a package install since may have changed it: seen
# as a 50 s define in every disk guest's start on a reused machine).
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
if virsh -c qemu:///system version >/dev/null 2>&1; then
  exit 0
fi
pgrep -x virtlogd >/dev/null || virtlogd -d
nohup unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec libvirtd' \
  >/var/log/vdc-libvirtd.log 2>&1 &
for _ in $(seq 1 60); do
  # The first call waits for libvirt's capability probe (several seconds).
  if virsh -c qemu:///system version >/dev/null 2>&1 && virsh -c lxc:///system version >/dev/null 2>&1; then
    echo started
    exit 0
  fi
  sleep 1
done
echo "libvirtd did not start; see /var/log/vdc-libvirtd.log" >&2
exit 1
