//! Parsers for the compact argument syntaxes of the CLI. Errors are plain messages that
//! clap (or the caller) reports as usage errors.

use std::net::IpAddr;
use vdc_schema::api::RuleSpec;
use vdc_schema::{Direction, Protocol, SecurityGroupId};

/// The source (or, for egress, destination) of a rule given without one.
pub const ANYWHERE: &str = "0.0.0.0/0";

const RULE_HELP: &str = "expected PROTO[:PORTS[:SOURCE]], e.g. tcp:22, tcp:8000-8080:10.0.0.0/8, icmp::sg-abc, any";

/// Parse an ingress rule `PROTO[:PORTS[:SOURCE]]`:
/// PROTO is tcp, udp, icmp or any; PORTS is `22` or `1000-2000` (for icmp, the ICMP type),
/// empty for all; SOURCE is a CIDR, a bare IP, or a security group ID (default anywhere).
pub fn parse_rule_spec(spec: &str) -> Result<RuleSpec, String> {
    let spec = spec.trim();
    // At most 3 parts, so that an IPv6 source keeps its colons.
    let mut parts = spec.splitn(3, ':');
    let proto = parts.next().unwrap_or_default().to_ascii_lowercase();
    let ports = parts.next().unwrap_or_default().trim();
    let source = parts.next().unwrap_or_default().trim();

    if proto.is_empty() {
        return Err(format!("rule {spec:?} has no protocol; {RULE_HELP}"));
    }
    let protocol: Protocol =
        proto.parse().map_err(|_| format!("unknown protocol {proto:?} in rule {spec:?}; use tcp, udp, icmp or any"))?;

    let (port_min, port_max) = if ports.is_empty() {
        (None, None)
    } else {
        let (lo, hi) = parse_ports(ports, protocol).map_err(|e| format!("rule {spec:?}: {e}"))?;
        (Some(lo), Some(hi))
    };

    let (cidr, group) = if source.is_empty() {
        (Some(ANYWHERE.to_string()), None)
    } else if source.starts_with("sg-") {
        let id: SecurityGroupId = source.parse().map_err(|e| format!("rule {spec:?}: {e}"))?;
        (None, Some(id))
    } else {
        let cidr = parse_cidr(source).map_err(|e| format!("rule {spec:?}: {e}"))?;
        (Some(cidr), None)
    };

    Ok(RuleSpec { direction: Direction::Ingress, protocol, port_min, port_max, cidr, group })
}

/// A rule as typed: [`parse_rule_spec`]'s, except that a SOURCE that is not an address
/// names a security group, by name or ID, resolved before the rule is sent.
#[derive(Debug, Clone)]
pub struct RuleArg {
    pub spec: RuleSpec,
    pub group: Option<crate::resolve::Ref<vdc_schema::api::SecurityGroup>>,
}

pub fn parse_rule_arg(spec: &str) -> Result<RuleArg, String> {
    let t = spec.trim();
    let mut parts = t.splitn(3, ':');
    let (proto, ports, source) =
        (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default().trim());
    // Addresses start with a digit (IPv4) or hold a colon (IPv6); names and sg- IDs do not.
    let is_group = !source.is_empty() && !source.starts_with(|c: char| c.is_ascii_digit()) && !source.contains(':');
    if !is_group {
        return Ok(RuleArg { spec: parse_rule_spec(t)?, group: None });
    }
    let mut parsed =
        parse_rule_spec(&format!("{proto}:{ports}")).map_err(|e| e.replace(&format!("{proto}:{ports}"), t))?;
    parsed.cidr = None;
    Ok(RuleArg { spec: parsed, group: Some(source.parse()?) })
}

fn parse_ports(ports: &str, protocol: Protocol) -> Result<(u16, u16), String> {
    let (lo_max, what) = match protocol {
        Protocol::Tcp | Protocol::Udp => (1u16, "port"),
        Protocol::Icmp => (0u16, "ICMP type"),
        Protocol::Any => {
            return Err(format!("protocol any takes no ports (got {ports:?}); use tcp or udp, or leave PORTS empty"))
        }
    };
    let max = if protocol == Protocol::Icmp { 255 } else { u16::MAX };
    let num = |s: &str| -> Result<u16, String> {
        let s = s.trim();
        match s.parse::<u16>() {
            Ok(n) if n >= lo_max && n <= max => Ok(n),
            _ => Err(format!("{s:?} is not a valid {what} ({lo_max}-{max})")),
        }
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(ports)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err(format!("{what} range {ports:?} is reversed; write {hi}-{lo}"));
    }
    Ok((lo, hi))
}

/// A CIDR in canonical text; a bare address becomes a host route (`/32` or `/128`).
/// `--expires`: a duration from now (`30d`, `12h`, `90m`, `45s`) or an RFC 3339 time.
pub fn parse_expiry(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    parse_expiry_at(s, chrono::Utc::now())
}

fn parse_expiry_at(s: &str, now: chrono::DateTime<chrono::Utc>) -> Result<chrono::DateTime<chrono::Utc>, String> {
    Ok(match parse_when(s)? {
        When::Span(d) => now + d,
        When::At(t) => t,
    })
}

/// `--since`: a duration before now (`1h`, `7d`) or an RFC 3339 time.
pub fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let now = chrono::Utc::now();
    Ok(match parse_when(s)? {
        When::Span(d) => now - d,
        When::At(t) => t,
    })
}

enum When {
    Span(chrono::Duration),
    At(chrono::DateTime<chrono::Utc>),
}

fn parse_when(s: &str) -> Result<When, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(When::At(t.with_timezone(&chrono::Utc)));
    }
    let bad = || format!("{s:?} is not a duration (30d, 12h, 90m, 45s) or an RFC 3339 time (2027-01-31T12:00:00Z)");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    if n == 0 || n > 3650 * 86_400 / secs {
        return Err(format!("{s:?}: give a duration between 1s and 3650d"));
    }
    Ok(When::Span(chrono::Duration::seconds(n * secs)))
}

pub fn parse_cidr(s: &str) -> Result<String, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is neither a CIDR (e.g. 10.0.0.0/8) nor a security group ID (sg-…)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?} has an invalid prefix length (0-{max})")),
        },
    };
    Ok(format!("{ip}/{prefix}"))
}

/// A size in MiB: a bare number is MiB; suffixes M, G and T (optionally followed by `B` or
/// `iB`, any case) are binary units, so `10G` is 10240.
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let help = "expected a size in MiB or with a unit, e.g. 512, 512M, 10G, 1T";
    if digits.is_empty() {
        return Err(format!("{s:?} is not a size; {help}"));
    }
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is too large"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => return Err(format!("{s:?} has an unknown unit; {help}")),
    };
    let mib = n.checked_mul(factor).ok_or_else(|| format!("{s:?} is too large"))?;
    if mib == 0 {
        return Err(format!("{s:?}: the size must be at least 1 MiB"));
    }
    Ok(mib)
}

/// [`parse_size_mib`] in bytes, for the API's byte sizes (root disk, image minimums).
pub fn parse_size_bytes(s: &str) -> Result<u64, String> {
    parse_size_mib(s)?.checked_mul(1 << 20).ok_or_else(|| format!("{s:?} is too large"))
}

/// [`parse_size_mib`] for fields that are `u32` (instance memory).
pub fn parse_memory_mib(s: &str) -> Result<u32, String> {
    let mib = parse_size_mib(s)?;
    u32::try_from(mib).map_err(|_| format!("{s:?} is too large for instance memory"))
}

/// `sha256:` followed by 64 hex digits, as the API stores image checksums.
pub fn parse_checksum(s: &str) -> Result<String, String> {
    let t = s.trim();
    match t.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
        }
        _ => Err(format!("{s:?} is not a checksum; expected sha256: followed by 64 hex digits")),
    }
}

/// Render a rule back in the CLI's syntax, with its direction, e.g. `ingress tcp:22:0.0.0.0/0`.
pub fn format_rule(spec: &RuleSpec) -> String {
    let ports = match (spec.port_min, spec.port_max) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}-{b}"),
        (Some(a), None) | (None, Some(a)) => a.to_string(),
        (None, None) => String::new(),
    };
    let peer = match (&spec.cidr, &spec.group) {
        (_, Some(g)) => g.to_string(),
        (Some(c), None) => c.clone(),
        (None, None) => String::new(),
    };
    format!("{} {}:{}:{}", spec.direction, spec.protocol, ports, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> RuleSpec {
        parse_rule_spec(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn rule_specs_parse() {
        let r = rule("tcp:22");
        assert_eq!(r.direction, Direction::Ingress);
        assert_eq!(r.protocol, Protocol::Tcp);
        assert_eq!((r.port_min, r.port_max), (Some(22), Some(22)));
        assert_eq!(r.cidr.as_deref(), Some("0.0.0.0/0"));
        assert_eq!(r.group, None);

        let r = rule("udp:1000-2000:10.0.0.0/8");
        assert_eq!(r.protocol, Protocol::Udp);
        assert_eq!((r.port_min, r.port_max), (Some(1000), Some(2000)));
        assert_eq!(r.cidr.as_deref(), Some("10.0.0.0/8"));

        let r = rule("icmp::sg-abc");
        assert_eq!(r.protocol, Protocol::Icmp);
        assert_eq!((r.port_min, r.port_max), (None, None));
        assert_eq!(r.cidr, None);
        assert_eq!(r.group.unwrap().as_str(), "sg-abc");

        let r = rule("any");
        assert_eq!(r.protocol, Protocol::Any);
        assert_eq!((r.port_min, r.port_max), (None, None));
        assert_eq!(r.cidr.as_deref(), Some("0.0.0.0/0"));

        assert_eq!(rule("TCP:443:192.168.1.5").cidr.as_deref(), Some("192.168.1.5/32"));
        assert_eq!(rule("tcp:22:fd00::/64").cidr.as_deref(), Some("fd00::/64"));
        assert_eq!(rule("icmp:8").port_min, Some(8));
        assert_eq!(rule("tcp::").port_min, None);
    }

    #[test]
    fn bad_rule_specs_explain_themselves() {
        for (spec, needle) in [
            ("", "no protocol"),
            ("sctp:22", "unknown protocol"),
            ("tcp:0", "not a valid port"),
            ("tcp:70000", "not a valid port"),
            ("tcp:ssh", "not a valid port"),
            ("tcp:2000-1000", "reversed"),
            ("tcp:22-", "not a valid port"),
            ("icmp:300", "ICMP type"),
            ("any:22", "takes no ports"),
            ("tcp:22:10.0.0.0/33", "prefix length"),
            ("tcp:22:example.com", "neither a CIDR"),
            ("tcp:22:sg-UPPER", "security group"),
        ] {
            let err = parse_rule_spec(spec).expect_err(spec);
            assert!(err.contains(needle), "{spec:?}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn rule_sources_that_are_not_addresses_name_groups() {
        let a = parse_rule_arg("tcp:22:web").unwrap();
        assert_eq!(a.group.unwrap().as_str(), "web");
        assert_eq!((a.spec.port_min, a.spec.cidr, a.spec.group), (Some(22), None, None));
        assert_eq!(parse_rule_arg("icmp::sg-abc").unwrap().group.unwrap().as_str(), "sg-abc");
        for addr in ["tcp:22", "tcp:22:10.0.0.0/8", "udp:53:fd00::/64", "any"] {
            let a = parse_rule_arg(addr).unwrap();
            assert!(a.group.is_none() && a.spec.cidr.is_some(), "{addr}");
        }
        let err = parse_rule_arg("tcp:99999:web").unwrap_err();
        assert!(err.contains("tcp:99999:web") && err.contains("not a valid port"), "{err}");
        assert!(parse_rule_arg("tcp:22:10.0.0.0/33").is_err());
    }

    #[test]
    fn rules_format_back() {
        assert_eq!(format_rule(&rule("tcp:22")), "ingress tcp:22:0.0.0.0/0");
        assert_eq!(format_rule(&rule("icmp::sg-abc")), "ingress icmp::sg-abc");
        assert_eq!(format_rule(&rule("udp:5-9:10.1.0.0/16")), "ingress udp:5-9:10.1.0.0/16");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size_mib("512"), Ok(512));
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("10G"), Ok(10240));
        assert_eq!(parse_size_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_size_mib("10g"), Ok(10240));
        assert_eq!(parse_size_mib("2GiB"), Ok(2048));
        assert_eq!(parse_size_mib("1T"), Ok(1024 * 1024));
        assert_eq!(parse_size_mib(" 3 GB "), Ok(3072));
        for bad in ["", "G", "0", "0G", "1.5G", "10X", "-1", "99999999999999999999"] {
            assert!(parse_size_mib(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_memory_mib("1G"), Ok(1024));
        assert!(parse_memory_mib("8192T").is_err());
    }

    #[test]
    fn checksums_are_checked() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_checksum(&format!("sha256:{hex}")), Ok(format!("sha256:{}", hex.to_ascii_lowercase())));
        assert!(parse_checksum("md5:abc").is_err());
        assert!(parse_checksum("sha256:abc").is_err());
    }

    #[test]
    fn expiries() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z").unwrap().with_timezone(&chrono::Utc);
        let at = |s: &str| parse_expiry_at(s, now).map(|t| t.to_rfc3339());
        assert_eq!(at("30d").unwrap(), "2026-12-30T12:00:00+00:00");
        assert_eq!(at("12h").unwrap(), "2026-12-01T00:00:00+00:00");
        assert_eq!(at("90m").unwrap(), "2026-11-30T13:30:00+00:00");
        assert_eq!(at("2027-01-31T12:00:00Z").unwrap(), "2027-01-31T12:00:00+00:00");
        for bad in ["", "30", "d", "30x", "-1d", "0s", "99999d", "1.5h"] {
            assert!(at(bad).is_err(), "{bad:?}");
        }
    }
}
