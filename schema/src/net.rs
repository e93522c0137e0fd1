//! Addresses in the contract: [`MacAddr`] here, and the standard types for the rest.
//!
//! - IPv4 addresses are [`std::net::Ipv4Addr`] and networks (CIDRs) [`ipnet::Ipv4Net`],
//!   both re-exported here. In JSON they are the usual strings (`"10.0.0.1"`,
//!   `"10.0.0.0/24"`); an `Ipv4Net` keeps its host bits (`"10.0.0.5/24"` stays so).
//! - [`MacAddr`] is ours: the `macaddr` and `mac_address` crates display upper case
//!   (`52:54:00:AB:CD:EF`), which would change the wire format, and the type is a few
//!   lines.
//!
//! Response bodies and bus messages carry these types, so a malformed address fails at
//! decode. Request bodies keep strings: dcmgr parses them itself, with messages that say
//! what to send instead, which a serde error could not.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

pub use ipnet::Ipv4Net;
pub use std::net::Ipv4Addr;

/// An Ethernet MAC address: six octets, written `52:54:00:ab:cd:ef` (lower case; upper
/// case is accepted on input). Serialized as that string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }

    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }
}

/// Why a string is not a [`MacAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address such as 52:54:00:ab:cd:ef")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Exactly six colon-separated pairs of hex digits, either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseMacError(s.to_owned());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for o in &mut octets {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MacAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address such as 52:54:00:ab:cd:ef")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MacAddr, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_in_either_case_and_display_lower_case() {
        let m: MacAddr = "52:54:00:AB:cd:eF".parse().unwrap();
        assert_eq!(m.octets(), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(format!("{m:?}"), "MacAddr(52:54:00:ab:cd:ef)");
        assert_eq!("00:00:00:00:00:00".parse::<MacAddr>().unwrap(), MacAddr::new([0; 6]));
        assert_eq!("ff:ff:ff:ff:ff:ff".parse::<MacAddr>().unwrap(), MacAddr::from([0xff; 6]));
    }

    #[test]
    fn malformed_macs_are_refused() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "52:54:00:ab:cd:ef:",
            ":52:54:00:ab:cd:ef",
            "52-54-00-ab-cd-ef",
            "525400abcdef",
            "52:54:00:ab:cd:e",
            "52:54:00:ab:cd:eff",
            "52:54:00:ab:cd:eg",
            "52:54:00:ab:cd:+f",
            " 52:54:00:ab:cd:ef",
            "52:54:00:ab:cd:ef ",
            "52:54::ab:cd:ef",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(e.to_string().contains("is not a MAC address"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn macs_serialize_as_their_string() {
        let m: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), r#""52:54:00:12:34:56""#);
        assert_eq!(serde_json::from_str::<MacAddr>(r#""52:54:00:12:34:56""#).unwrap(), m);
        assert_eq!(serde_json::from_str::<MacAddr>(r#""52:54:00:AB:CD:EF""#).unwrap().to_string(), "52:54:00:ab:cd:ef");
        let e = serde_json::from_str::<MacAddr>(r#""52:54:00:12:34""#).unwrap_err();
        assert!(e.to_string().contains("is not a MAC address"), "{e}");
        assert!(serde_json::from_str::<MacAddr>("[82,84,0,18,52,86]").is_err());
    }

    /// The standard types keep the strings the contract always carried.
    #[test]
    fn ipv4_addresses_and_networks_serialize_as_their_strings() {
        let a: Ipv4Addr = serde_json::from_str(r#""10.0.0.1""#).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), r#""10.0.0.1""#);
        let n: Ipv4Net = serde_json::from_str(r#""10.0.0.0/24""#).unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), r#""10.0.0.0/24""#);
        let host_bits: Ipv4Net = serde_json::from_str(r#""203.0.113.5/24""#).unwrap();
        assert_eq!(host_bits.to_string(), "203.0.113.5/24");
        for bad in [r#""10.0.0""#, r#""10.0.0.256""#, r#""fd00::1""#, "167772161"] {
            assert!(serde_json::from_str::<Ipv4Addr>(bad).is_err(), "{bad}");
        }
        for bad in [r#""10.0.0.0""#, r#""10.0.0.0/33""#, r#""fd00::/64""#] {
            assert!(serde_json::from_str::<Ipv4Net>(bad).is_err(), "{bad}");
        }
    }
}
