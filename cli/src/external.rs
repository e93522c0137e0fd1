//! The all-in-one's external network: a Linux bridge on the host holding the first
//! address of a private range, which floating IPs and the routers' SNAT addresses come
//! from, with nftables masquerading that range out of the host's other interfaces (its
//! default route), as a home router would.
//!
//! ```text
//!   guest ─ vdc-int (OVS) ─ router netns ─ext0── vdc-ex (192.168.213.1/24) ── host
//!                           DNAT/SNAT of              │ masquerade (table ip vdc_up)
//!                           floating IPs              └──► the host's default route
//! ```
//!
//! The range is chosen once per data directory and saved in it (`external.json`), so a
//! restarted `vdc up` finds the same bridge, range and floating IPs. It must not overlap
//! any route of the host but the bridge's own: a range that does is refused at start,
//! and the automatic choice takes the first of [`CANDIDATES`] that overlaps none.
//! Stopping removes the masquerade table (and restores IP forwarding if it was off); the
//! bridge stays, because guests and their routers outlive `vdc up`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use vdc_bus::cmd::{CmdError, Runner};
use vdc_schema::net::{Ipv4Addr, Ipv4Net};

/// The ranges tried, in order, when none is asked for: private /24s that home and office
/// networks rarely use.
pub const CANDIDATES: &[&str] = &[
    "192.168.213.0/24",
    "192.168.217.0/24",
    "172.29.213.0/24",
    "10.213.213.0/24",
    "10.217.217.0/24",
    "100.100.213.0/24",
];

/// The bridge `vdc up` makes.
pub const BRIDGE: &str = "vdc-ex";
/// The nftables table `vdc up` owns (family ip).
pub const NFT_TABLE: &str = "vdc_up";

#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("the external range {cidr} overlaps the host's route {route}: {hint}")]
    Collides { cidr: Ipv4Net, route: Route, hint: String },
    #[error("none of the external ranges {} is free on this host (each overlaps a route): give one with --external-cidr, or start with --no-external", CANDIDATES.join(", "))]
    NoFreeRange,
    #[error("invalid external range {0:?}: {1}")]
    Invalid(String, String),
    #[error(
        "this data directory's external network is {saved} (floating IPs come from it), not {asked}: \
         start without --external-cidr, or use a fresh --data-dir"
    )]
    Changed { saved: Ipv4Net, asked: Ipv4Net },
    #[error("reading the host's routes: {0}")]
    Routes(String),
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Cmd(#[from] CmdError),
}

/// One route of the host, as much of it as the collision check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub dev: Option<String>,
    /// `unicast`, `local`, `broadcast`, `blackhole`, …
    pub kind: String,
    pub table: String,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if self.table != "main" {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

/// The routes of `ip -j -4 route show table all`.
pub fn parse_routes(json: &str) -> Result<Vec<Route>, ExternalError> {
    let v: Vec<serde_json::Value> = serde_json::from_str(json).map_err(|e| ExternalError::Routes(e.to_string()))?;
    let mut out = vec![];
    for r in v {
        let dst = r["dst"].as_str().ok_or_else(|| ExternalError::Routes(format!("a route without dst: {r}")))?;
        let dst: Ipv4Net = match dst {
            "default" => Ipv4Net::default(),
            d if d.contains('/') => d.parse().map_err(|_| ExternalError::Routes(format!("dst {d:?}")))?,
            d => Ipv4Net::from(d.parse::<Ipv4Addr>().map_err(|_| ExternalError::Routes(format!("dst {d:?}")))?),
        };
        out.push(Route {
            dst,
            dev: r["dev"].as_str().map(str::to_owned),
            kind: r["type"].as_str().unwrap_or("unicast").to_owned(),
            table: r["table"].as_str().unwrap_or("main").to_owned(),
        });
    }
    Ok(out)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first route that `cidr` would collide with. The default route (every range is
/// inside it), multicast routes and the routes of `own_bridge` (ours, from a previous
/// start) do not count.
pub fn collision<'r>(cidr: &Ipv4Net, routes: &'r [Route], own_bridge: &str) -> Option<&'r Route> {
    routes.iter().find(|r| {
        r.dst.prefix_len() != 0
            && r.kind != "multicast"
            && r.dev.as_deref() != Some(own_bridge)
            && overlaps(cidr, &r.dst)
    })
}

/// A range asked for, checked: a network address (no host bits) between /16 and /29.
pub fn parse_cidr(s: &str) -> Result<Ipv4Net, ExternalError> {
    let n: Ipv4Net = s.parse().map_err(|e| ExternalError::Invalid(s.into(), format!("{e} (e.g. 192.168.213.0/24)")))?;
    if !(16..=29).contains(&n.prefix_len()) {
        return Err(ExternalError::Invalid(s.into(), "the prefix must be between /16 and /29".into()));
    }
    if n != n.trunc() {
        return Err(ExternalError::Invalid(s.into(), format!("it has host bits set: use {}", n.trunc())));
    }
    Ok(n)
}

/// Which range to use: the saved one (a restart), else the one asked for, else the first
/// free candidate; refused when it overlaps a route of the host.
pub fn choose(
    asked: Option<Ipv4Net>,
    saved: Option<Ipv4Net>,
    routes: &[Route],
    own_bridge: &str,
) -> Result<Ipv4Net, ExternalError> {
    let (cidr, hint) = match (asked, saved) {
        (Some(a), Some(s)) if a != s => return Err(ExternalError::Changed { saved: s, asked: a }),
        (_, Some(s)) => {
            (s, "this cloud's floating IPs are in it; remove that route, or start with a fresh --data-dir".to_owned())
        }
        (Some(a), None) => (a, "choose another with --external-cidr".to_owned()),
        (None, None) => {
            return CANDIDATES
                .iter()
                .map(|c| c.parse::<Ipv4Net>().expect("a valid candidate"))
                .find(|c| collision(c, routes, own_bridge).is_none())
                .ok_or(ExternalError::NoFreeRange)
        }
    };
    match collision(&cidr, routes, own_bridge) {
        Some(r) => Err(ExternalError::Collides { cidr, route: r.clone(), hint }),
        None => Ok(cidr),
    }
}

/// What the bridge holds: the first address; the pool is the rest.
pub fn gateway(cidr: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

/// The addresses floating IPs and routers take: after the gateway, before broadcast.
pub fn pool(cidr: &Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
    (Ipv4Addr::from(u32::from(cidr.network()) + 2), Ipv4Addr::from(u32::from(cidr.broadcast()) - 1))
}

/// The masquerade ruleset, replacing any previous version of the table in one transaction.
pub fn nat_rules(table: &str, cidr: &Ipv4Net, bridge: &str) -> String {
    format!(
        "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {cidr} oifname != \"{bridge}\" masquerade\n  }}\n}}\n"
    )
}

#[derive(Serialize, Deserialize)]
struct Saved {
    cidr: Ipv4Net,
}

fn dcmgr_config(cidr: &Ipv4Net) -> vdc_dcmgr::config::ExternalConfig {
    let (start, end) = pool(cidr);
    vdc_dcmgr::config::ExternalConfig {
        cidr: cidr.to_string(),
        gateway: gateway(cidr).to_string(),
        pool_start: start.to_string(),
        pool_end: end.to_string(),
        router_reserve: None,
    }
}

fn load(opts: &ExternalOptions) -> Result<Option<Ipv4Net>, ExternalError> {
    let bad = |e: &dyn fmt::Display| ExternalError::State(format!("{}: {e}", opts.state_file.display()));
    match std::fs::read_to_string(&opts.state_file) {
        Ok(t) => Ok(Some(serde_json::from_str::<Saved>(&t).map_err(|e| bad(&e))?.cidr)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(bad(&e)),
    }
}

fn save(opts: &ExternalOptions, saved: Option<Ipv4Net>, cidr: Ipv4Net) -> Result<(), ExternalError> {
    if saved == Some(cidr) {
        return Ok(());
    }
    let text = serde_json::to_string(&Saved { cidr }).expect("serializable");
    std::fs::write(&opts.state_file, format!("{text}\n"))
        .map_err(|e| ExternalError::State(format!("{}: {e}", opts.state_file.display())))
}

/// Where and under which names the external network lives.
#[derive(Debug, Clone)]
pub struct ExternalOptions {
    /// The namespace of the host (None: this process's, as `vdc up`; tests give their own).
    pub netns: Option<String>,
    pub bridge: String,
    pub nft_table: String,
    /// `--external-cidr`; none: the saved range, else the first free candidate.
    pub cidr: Option<Ipv4Net>,
    /// Where the chosen range is kept (`DATA_DIR/external.json`).
    pub state_file: PathBuf,
}

/// The external network, set up on the host.
pub struct ExternalNet {
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    netns: Option<String>,
    table: String,
    /// IP forwarding was off and we turned it on: turn it off again on stop.
    restore_forwarding: bool,
    tools: Runner,
}

/// A command in the host's namespace.
async fn host(tools: &Runner, netns: Option<&str>, prog: &str, args: &[&str]) -> Result<String, CmdError> {
    host_with_input(tools, netns, prog, args, None).await
}

async fn host_with_input(
    tools: &Runner,
    netns: Option<&str>,
    prog: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, CmdError> {
    match netns {
        None => tools.run_with_input(prog, args, input).await,
        Some(n) => {
            let mut all = vec!["netns", "exec", n, prog];
            all.extend_from_slice(args);
            tools.run_with_input("ip", &all, input).await
        }
    }
}

impl ExternalNet {
    /// Chooses the range (see [`choose`]), saves it, and makes the bridge with its address,
    /// IP forwarding and the masquerade table exist; idempotent, so a restart reuses all.
    #[tracing::instrument(skip_all, fields(bridge = %opts.bridge))]
    pub async fn start(opts: &ExternalOptions, tools: Runner) -> Result<ExternalNet, ExternalError> {
        let ns = opts.netns.as_deref();
        let saved = load(opts)?;
        let routes = parse_routes(&host(&tools, ns, "ip", &["-j", "-4", "route", "show", "table", "all"]).await?)?;
        let cidr = choose(opts.cidr, saved, &routes, &opts.bridge)?;
        save(opts, saved, cidr)?;
        let gw = gateway(&cidr);
        let br = opts.bridge.as_str();
        if host(&tools, ns, "ip", &["link", "show", br]).await.is_err() {
            host(&tools, ns, "ip", &["link", "add", br, "type", "bridge"]).await?;
        }
        host(&tools, ns, "ip", &["link", "set", br, "up"]).await?;
        let addr = format!("{gw}/{}", cidr.prefix_len());
        let have = host(&tools, ns, "ip", &["-4", "-o", "addr", "show", "dev", br]).await?;
        if !have.split_whitespace().any(|w| w == addr) {
            host(&tools, ns, "ip", &["addr", "add", &addr, "dev", br]).await?;
        }
        let forwarding = host(&tools, ns, "sysctl", &["-n", "net.ipv4.ip_forward"]).await?;
        let restore_forwarding = forwarding.trim() == "0";
        if restore_forwarding {
            host(&tools, ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]).await?;
        }
        // The whole table in one nft transaction: never half-applied.
        let rules = nat_rules(&opts.nft_table, &cidr, br);
        host_with_input(&tools, ns, "nft", &["-f", "-"], Some(&rules)).await?;
        tracing::info!(%cidr, gateway = %gw, "external network ready");
        Ok(ExternalNet {
            cidr,
            gateway: gw,
            bridge: br.to_owned(),
            netns: opts.netns.clone(),
            table: opts.nft_table.clone(),
            restore_forwarding,
            tools,
        })
    }

    /// dcmgr's `[external]`: the bridge's address is the gateway, the rest the pool.
    pub fn dcmgr_config(&self) -> vdc_dcmgr::config::ExternalConfig {
        dcmgr_config(&self.cidr)
    }

    /// The range of a simulated network: chosen, checked and saved as [`Self::start`]
    /// does (so a later start with the real network keeps it), but nothing is made.
    pub async fn simulated(
        opts: &ExternalOptions,
        tools: Runner,
    ) -> Result<vdc_dcmgr::config::ExternalConfig, ExternalError> {
        let saved = load(opts)?;
        let routes = host(&tools, opts.netns.as_deref(), "ip", &["-j", "-4", "route", "show", "table", "all"]).await?;
        let cidr = choose(opts.cidr, saved, &parse_routes(&routes)?, &opts.bridge)?;
        save(opts, saved, cidr)?;
        Ok(dcmgr_config(&cidr))
    }

    /// Removes what only a running `vdc up` should keep: the masquerade table, and IP
    /// forwarding if it was off. The bridge stays for the guests' routers.
    pub async fn stop(self) {
        let ns = self.netns.as_deref();
        if let Err(e) = host(&self.tools, ns, "nft", &["delete", "table", "ip", &self.table]).await {
            tracing::warn!("removing the nftables table {}: {e}", self.table);
        }
        if self.restore_forwarding {
            let _ = host(&self.tools, ns, "sysctl", &["-qw", "net.ipv4.ip_forward=0"]).await;
        }
    }

    /// [`Self::stop`], and the bridge too (tests; the guests' routers lose it).
    pub async fn remove(self) {
        let (tools, ns, br) = (self.tools.clone(), self.netns.clone(), self.bridge.clone());
        self.stop().await;
        let _ = host(&tools, ns.as_deref(), "ip", &["link", "del", &br]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_bus::cmd::FakeRunner;

    const HOST: &str = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
        {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},
        {"dst":"192.168.213.0/24","dev":"wlan0","flags":[]},
        {"type":"multicast","dst":"224.0.0.0/4","dev":"eth0","flags":[]},
        {"type":"local","dst":"127.0.0.1","dev":"lo","table":"local","flags":[]},
        {"type":"blackhole","dst":"172.29.0.0/16","flags":[]},
        {"dst":"192.168.217.0/24","dev":"vdc-ex","flags":[]}]"#;

    fn routes() -> Vec<Route> {
        parse_routes(HOST).unwrap()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn routes_parse_with_default_host_and_table() {
        let r = routes();
        assert_eq!(r.len(), 7);
        assert_eq!(r[0].dst, net("0.0.0.0/0"));
        assert_eq!(r[4].dst, net("127.0.0.1/32"));
        assert_eq!((r[4].kind.as_str(), r[4].table.as_str()), ("local", "local"));
        assert_eq!(r[5].dev, None);
        assert!(parse_routes(r#"[{"dev":"eth0"}]"#).is_err());
        assert!(parse_routes("not json").is_err());
    }

    #[test]
    fn a_range_collides_with_an_overlapping_route_in_either_direction() {
        let r = routes();
        // Same network; inside a bigger one; containing a smaller one.
        assert_eq!(collision(&net("192.168.213.0/24"), &r, "vdc-ex").unwrap().dev.as_deref(), Some("wlan0"));
        assert!(collision(&net("172.29.213.0/24"), &r, "vdc-ex").is_some(), "inside the blackhole /16");
        assert!(collision(&net("192.0.0.0/16"), &r, "vdc-ex").is_some(), "contains eth0's /24");
        assert!(collision(&net("127.0.0.0/29"), &r, "vdc-ex").is_some(), "a local address");
        // The default route, multicast and our own bridge do not count.
        assert!(collision(&net("10.1.0.0/24"), &r, "vdc-ex").is_none());
        assert!(collision(&net("224.0.0.0/24"), &r, "vdc-ex").is_none());
        assert!(collision(&net("192.168.217.0/24"), &r, "vdc-ex").is_none(), "ours from the last start");
        assert!(collision(&net("192.168.217.0/24"), &r, "other-br").is_some());
        // Adjacent but disjoint ranges do not collide.
        assert!(collision(&net("192.168.212.0/24"), &r, "vdc-ex").is_none());
        assert!(collision(&net("192.168.214.0/23"), &r, "vdc-ex").is_none());
    }

    #[test]
    fn the_automatic_range_is_the_first_free_candidate() {
        // 192.168.213 is wlan0's; 192.168.217 is our bridge's (free for us).
        assert_eq!(choose(None, None, &routes(), "vdc-ex").unwrap(), net("192.168.217.0/24"));
        // For another bridge 192.168.217 is taken, and 172.29.213 is in the blackhole.
        assert_eq!(choose(None, None, &routes(), "br-x").unwrap(), net("10.213.213.0/24"));
        assert_eq!(choose(None, None, &[], "vdc-ex").unwrap(), net(CANDIDATES[0]));
        let all: Vec<Route> = CANDIDATES
            .iter()
            .map(|c| Route { dst: net(c), dev: Some("eth1".into()), kind: "unicast".into(), table: "main".into() })
            .collect();
        assert!(matches!(choose(None, None, &all, "vdc-ex"), Err(ExternalError::NoFreeRange)));
    }

    #[test]
    fn a_colliding_or_changed_range_is_refused() {
        let e = choose(Some(net("192.168.213.0/24")), None, &routes(), "vdc-ex").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("192.168.213.0/24 dev wlan0") && msg.contains("--external-cidr"), "{msg}");
        assert_eq!(choose(Some(net("10.9.0.0/24")), None, &routes(), "vdc-ex").unwrap(), net("10.9.0.0/24"));
        // A restart keeps the saved range, asked for again or not.
        let saved = Some(net("10.9.0.0/24"));
        assert_eq!(choose(None, saved, &routes(), "vdc-ex").unwrap(), net("10.9.0.0/24"));
        assert_eq!(choose(saved, saved, &routes(), "vdc-ex").unwrap(), net("10.9.0.0/24"));
        let e = choose(Some(net("10.8.0.0/24")), saved, &routes(), "vdc-ex").unwrap_err();
        assert!(matches!(e, ExternalError::Changed { .. }), "{e}");
        // A saved range the host now routes elsewhere is refused, not silently replaced.
        let e = choose(None, Some(net("192.168.213.0/24")), &routes(), "vdc-ex").unwrap_err();
        assert!(e.to_string().contains("fresh --data-dir"), "{e}");
    }

    #[test]
    fn ranges_asked_for_are_checked() {
        assert_eq!(parse_cidr("192.168.50.0/24").unwrap(), net("192.168.50.0/24"));
        for bad in ["192.168.50.1/24", "10.0.0.0/8", "10.0.0.0/30", "nope", "10.0.0.0"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert!(parse_cidr("192.168.50.1/24").unwrap_err().to_string().contains("use 192.168.50.0/24"));
    }

    #[test]
    fn gateway_and_pool_split_the_range() {
        let n = net("192.168.213.0/24");
        assert_eq!(gateway(&n).to_string(), "192.168.213.1");
        assert_eq!(pool(&n), ("192.168.213.2".parse().unwrap(), "192.168.213.254".parse().unwrap()));
        let rules = nat_rules("vdc_up", &n, "vdc-ex");
        assert!(rules.contains("ip saddr 192.168.213.0/24 oifname != \"vdc-ex\" masquerade"), "{rules}");
        assert!(rules.starts_with("table ip vdc_up\ndelete table ip vdc_up\n"), "replaces the previous table");
    }

    #[tokio::test]
    async fn start_saves_the_range_and_a_restart_reuses_it() {
        let dir = tempfile_dir();
        let fake = FakeRunner::new();
        fake.ok(&["ip", "-j", "-4", "route"], HOST);
        fake.fail(&["ip", "link", "show", "vdc-ex"], "does not exist");
        fake.ok(&["sysctl", "-n"], "0\n");
        let opts = ExternalOptions {
            netns: None,
            bridge: "vdc-ex".into(),
            nft_table: "vdc_up".into(),
            cidr: None,
            state_file: dir.join("external.json"),
        };
        let ext = ExternalNet::start(&opts, fake.clone()).await.unwrap();
        assert_eq!(ext.cidr, net("192.168.217.0/24"));
        let lines = fake.lines();
        for want in [
            "ip link add vdc-ex type bridge",
            "ip addr add 192.168.217.1/24 dev vdc-ex",
            "sysctl -qw net.ipv4.ip_forward=1",
            "nft -f -",
        ] {
            assert!(lines.iter().any(|l| l == want), "{want} in {lines:?}");
        }
        let c = ext.dcmgr_config();
        assert_eq!(
            (c.gateway.as_str(), c.pool_start.as_str(), c.pool_end.as_str()),
            ("192.168.217.1", "192.168.217.2", "192.168.217.254")
        );
        fake.clear();
        ext.stop().await;
        assert_eq!(fake.lines(), ["nft delete table ip vdc_up", "sysctl -qw net.ipv4.ip_forward=0"]);

        // Restart: the bridge exists with its address, forwarding is on; the saved range
        // wins over the candidates even though the host now routes it only via our bridge.
        fake.clear();
        fake.ok(&["ip", "link", "show", "vdc-ex"], "5: vdc-ex: <UP>");
        fake.ok(&["ip", "-4", "-o", "addr"], "5: vdc-ex    inet 192.168.217.1/24 scope global vdc-ex");
        fake.ok(&["sysctl", "-n"], "1\n");
        let ext = ExternalNet::start(&opts, fake.clone()).await.unwrap();
        assert_eq!(ext.cidr, net("192.168.217.0/24"));
        let lines = fake.lines();
        assert!(!lines.iter().any(|l| l.starts_with("ip link add") || l.starts_with("ip addr add")), "{lines:?}");
        fake.clear();
        ext.stop().await;
        assert_eq!(fake.lines(), ["nft delete table ip vdc_up"], "forwarding was on before: left on");

        // A different range asked for on the same data directory is refused, changing nothing.
        fake.clear();
        let e = ExternalNet::start(&ExternalOptions { cidr: Some(net("10.9.0.0/24")), ..opts.clone() }, fake.clone())
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ExternalError::Changed { .. }), "{e}");
        assert!(fake.lines().iter().all(|l| l.starts_with("ip -j")), "{:?}", fake.lines());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_simulated_range_is_checked_and_saved_but_nothing_is_made() {
        let dir = tempfile_dir();
        let fake = FakeRunner::new();
        fake.ok(&["ip", "-j", "-4", "route"], HOST);
        let opts = ExternalOptions {
            netns: None,
            bridge: "vdc-ex".into(),
            nft_table: "vdc_up".into(),
            cidr: Some(net("192.168.213.0/24")),
            state_file: dir.join("external.json"),
        };
        let e = ExternalNet::simulated(&opts, fake.clone()).await.unwrap_err();
        assert!(matches!(e, ExternalError::Collides { .. }), "{e}");
        assert!(!opts.state_file.exists());
        let c = ExternalNet::simulated(&ExternalOptions { cidr: None, ..opts.clone() }, fake.clone()).await.unwrap();
        assert_eq!(c.cidr, "192.168.217.0/24");
        assert_eq!(std::fs::read_to_string(&opts.state_file).unwrap().trim(), r#"{"cidr":"192.168.217.0/24"}"#);
        assert!(fake.lines().iter().all(|l| l.starts_with("ip -j -4 route")), "{:?}", fake.lines());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("vdc-external-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
