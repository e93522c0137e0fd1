//! Every host test in one binary (`cargo test -p vdc-host-tests --test host [FILTER]`;
//! a file's tests are `FILE::name`): one link instead of one per file keeps the build's
//! disk and time down, since each test binary links all of vdc.

mod bootmodes;
mod bundles;
mod external;
mod faults;
mod images;
mod libvirt;
mod lifecycle;
mod multiprocess;
mod netpolicy;
mod network;
mod nwagent_ovs;
mod sta_backends;
mod storage;
