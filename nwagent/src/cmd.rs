//! Running host commands (`ovs-ofctl`, `ip`, `nft`, `dnsmasq`, `kill`) through the
//! agents' shared runner (`vdc_bus::cmd`): a real one, and a recording fake for tests.
//! (OVSDB is a protocol, not a command: `ovs::ovsdb` talks to its socket directly.)

pub use vdc_bus::cmd::{system, Call, CmdError, CommandRunner, FakeRunner, Runner, SystemRunner};
