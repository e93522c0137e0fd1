//! vdc's tests on the real host (in `tests/`): libvirt guests, Open vSwitch, tgtd and
//! the storage backends, and vdc's own binaries as processes over NATS. They need root
//! and the packages of `packaging/install-deps.sh`; `bash tests/run.sh` provides both and
//! runs them. Each test makes its own namespaces, switches, daemons, pools and targets
//! under a unique prefix and removes them afterwards, so they may run beside `vdc up`.
