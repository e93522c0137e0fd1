//! Images imported from a URL: dcmgr fetches the data itself, then checks it as an
//! upload. The fetch reaches public addresses only (no loopback, link-local, metadata or
//! private address, unless the operator allows it in `images.import_allow`): every
//! address a name resolves to is checked, the connection goes to the address checked
//! (a second DNS answer cannot swap it), and every redirect is checked again.

use crate::app::image::{ingest, Ingested, Ingesting};
use crate::app::image_check::Refusal;
use crate::ctx::SharedCtx;
use crate::datastore::image as store;
use crate::error::ApiResult;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use vdc_schema::api::Image;
use vdc_schema::ImageState;

const MAX_REDIRECTS: usize = 5;

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into() }
}

/// An import URL: http or https, with a host, no credentials.
pub fn parse_url(s: &str) -> Result<url::Url, Refusal> {
    let url = url::Url::parse(s).map_err(|e| refuse("invalid_source", format!("{s:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse("invalid_source", format!("{s:?}: only http and https URLs are imported")));
    }
    if url.host().is_none() {
        return Err(refuse("invalid_source", format!("{s:?} names no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("invalid_source", "a URL with credentials is not accepted: they would be stored"));
    }
    Ok(url)
}

/// What an address is when it is not public (so not reachable by an import unless
/// allowed), as a phrase: "a loopback address".
pub fn not_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => not_public_v4(a),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return not_public_v4(v4);
            }
            let s = a.segments();
            if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_unspecified() {
                Some("the unspecified address")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("a private (unique local) address")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if s[0] & 0xff00 == 0xff00 {
                Some("a multicast address")
            } else if s[0] == 0x64 && s[1] == 0xff9b
                || s[0] == 0x2002
                || (s[0] == 0x2001 && s[1] == 0)
                || (s[0] == 0 && s[1] == 0 && s[2] == 0)
            {
                // NAT64, 6to4, Teredo and IPv4-compatible forms carry an IPv4 address that
                // could be any.
                Some("an IPv4 address in an IPv6 form")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("a documentation address (2001:db8::/32)")
            } else if s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0 {
                Some("a discard address (100::/64)")
            } else {
                None
            }
        }
    }
}

fn not_public_v4(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    if a.is_loopback() {
        Some("a loopback address")
    } else if o[0] == 169 && o[1] == 254 {
        Some("a link-local address (the metadata address 169.254.169.254 is one)")
    } else if a.is_private() {
        Some("a private address")
    } else if o[0] == 0 {
        Some("an address of this network (0.0.0.0/8)")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared address (100.64.0.0/10)")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("an IETF protocol assignment (192.0.0.0/24)")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("a benchmarking address (198.18.0.0/15)")
    } else if matches!((o[0], o[1], o[2]), (192, 0, 2) | (198, 51, 100) | (203, 0, 113)) {
        Some("a documentation address (TEST-NET)")
    } else if (o[0], o[1], o[2]) == (192, 88, 99) {
        Some("a 6to4 relay address (192.88.99.0/24)")
    } else if o[0] >= 224 {
        Some("a multicast, reserved or broadcast address")
    } else {
        None
    }
}

/// Whether `ip` is one of this host's own addresses (a public one too: a service
/// listening on it, meant for the host, would answer an import): only a local address
/// can be bound.
fn own_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Where URL imports may go (`[images]` `import_allow` and `import_ports`).
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// Addresses allowed although they are not public; any port.
    pub allow: Vec<ipnet::IpNet>,
    /// The ports of public addresses (empty: any).
    pub ports: Vec<u16>,
}

/// The address to connect to for `url`: every address its host resolves to must be
/// public or allowed, and a public one reached on an allowed port.
async fn checked_address(url: &url::Url, reach: &Reach) -> Result<SocketAddr, Refusal> {
    let allow = &reach.allow;
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(a)) => vec![SocketAddr::new(a.into(), port)],
        Some(url::Host::Ipv6(a)) => vec![SocketAddr::new(a.into(), port)],
        Some(url::Host::Domain(d)) => tokio::net::lookup_host((d, port))
            .await
            .map_err(|e| refuse("import_failed", format!("cannot resolve {d}: {e}")))?
            .collect(),
        None => return Err(refuse("invalid_source", "the URL names no host")),
    };
    let first = *addrs.first().ok_or_else(|| refuse("import_failed", "the host name resolves to no address"))?;
    for a in &addrs {
        if let Some(why) = not_public(a.ip()).or_else(|| own_address(a.ip()).then_some("an address of dcmgr's host")) {
            if !allow.iter().any(|n| n.contains(&a.ip())) {
                return Err(refuse(
                    "forbidden_address",
                    format!(
                        "{} resolves to {}, {why}: imports reach public addresses only \
                         (an operator may allow others with images.import_allow)",
                        url.host_str().unwrap_or(""),
                        a.ip()
                    ),
                ));
            }
        }
    }
    // Checked before any connection: whether a port answers must tell nothing.
    let allowed = addrs.iter().all(|a| allow.iter().any(|n| n.contains(&a.ip())));
    if !allowed && !reach.ports.is_empty() && !reach.ports.contains(&port) {
        let ports: Vec<String> = reach.ports.iter().map(u16::to_string).collect();
        return Err(refuse(
            "forbidden_port",
            format!(
                "port {port}: imports reach port {} of public addresses (an operator may allow others with \
                 images.import_ports)",
                ports.join(" or ")
            ),
        ));
    }
    Ok(first)
}

/// Sends the GET, following redirects by hand so that each target is checked.
/// `timeout` bounds the whole transfer, `stall` each wait for the answer or for data.
pub async fn open(url: &str, reach: &Reach, timeout: Duration, stall: Duration) -> Result<reqwest::Response, Refusal> {
    let mut url = parse_url(url)?;
    for _ in 0..=MAX_REDIRECTS {
        let addr = checked_address(&url, reach).await?;
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would choose the address itself.
            .no_proxy()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(stall)
            .timeout(timeout);
        if let Some(url::Host::Domain(d)) = url.host() {
            client = client.resolve(d, addr);
        }
        let client = client.build().map_err(|e| refuse("import_failed", format!("HTTP client: {e}")))?;
        let resp = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| refuse("import_failed", format!("cannot fetch {url}: {}", short(&e))))?;
        if resp.status().is_redirection() {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| refuse("import_failed", format!("{url} redirects without a Location")))?;
            url = parse_url(url.join(to).map_err(|e| refuse("import_failed", format!("bad redirect: {e}")))?.as_str())?;
            continue;
        }
        if !resp.status().is_success() {
            return Err(refuse("import_failed", format!("{url} answered {}", resp.status())));
        }
        return Ok(resp);
    }
    Err(refuse("import_failed", format!("more than {MAX_REDIRECTS} redirects")))
}

/// reqwest's error without the chain of causes (which can carry local details).
fn short(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out: the server sent nothing for too long, or the transfer took longer than allowed"
    } else if e.is_connect() {
        "could not connect: refused, unreachable, or (https) the TLS handshake failed"
    } else if e.is_body() || e.is_decode() {
        "the connection closed before the end"
    } else {
        "the request failed"
    }
}

/// Imports `image` in the background; the image ends `available` or `failed`.
pub fn spawn(ctx: SharedCtx, image: Image) {
    tokio::spawn(async move {
        let id = image.id.clone();
        // A stopping dcmgr drops the import (and its claim); the image stays pending, for
        // the next start or the leader to resume.
        let done = tokio::select! {
            r = import(&ctx, &image) => r,
            _ = ctx.stopping.cancelled() => return,
        };
        match done {
            Ok(()) => {}
            Err(crate::error::ApiError::NotFound { .. }) => tracing::info!(image = %id, "URL import: image deleted"),
            // dcmgr's own trouble (its disk, its store, its database): the tenant learns
            // the import failed and what to do, not the details.
            Err(e) => {
                tracing::warn!(image = %id, "URL import: {e}");
                let why = "import_failed: dcmgr could not keep the data (its log says why); create the image again";
                match store::set_failed(&ctx.db, &id, why).await {
                    Ok(()) => ctx.events.wake(),
                    Err(e) => tracing::warn!(image = %id, "URL import left pending: {e}"),
                }
            }
        }
    });
}

async fn import(ctx: &SharedCtx, image: &Image) -> ApiResult<()> {
    let _guard = match Ingesting::claim(ctx, &image.id).await {
        Ok(g) => g,
        // Being fetched here or by another dcmgr: that one ends it.
        Err(crate::error::ApiError::Conflict { .. }) => return Ok(()),
        Err(e) => {
            tracing::warn!(image = %image.id, "URL import left pending for the next try: {e}");
            return Ok(());
        }
    };
    // Resumed by a pass that listed it just before another dcmgr ended it.
    if store::get(&ctx.db, image.id.as_str()).await?.is_none_or(|r| r.state != ImageState::Pending.as_str()) {
        return Ok(());
    }
    let mut tx = crate::datastore::begin(&ctx.db).await?;
    let owner = store::owner(&mut tx, &image.id).await?;
    tx.rollback().await?;
    let Some(owner) =
        owner.map(|o| o.parse::<vdc_schema::id::AccountId>()).transpose().map_err(crate::error::ApiError::internal)?
    else {
        return Ok(());
    };
    let allow = ctx.config.import_allow().map_err(crate::error::ApiError::internal)?;
    let reach = Reach { allow, ports: ctx.config.images.import_ports.clone() };
    let timeout = Duration::from_secs(ctx.config.images.import_timeout_s);
    let stall = Duration::from_secs(ctx.config.images.import_stall_timeout_s);
    // Deleted while the server has not answered yet: the import ends now, as it does
    // once data flows ([`ingest`] watches the same claim).
    let deleted = ctx.ingesting.lock().unwrap().get(&image.id).cloned().unwrap_or_default();
    let opened = tokio::select! {
        r = open(&image.source, &reach, timeout, stall) => r,
        _ = deleted.cancelled() => return Err(crate::error::ApiError::not_found("image", &image.id)),
    };
    let outcome = match opened {
        Err(r) => Ingested::Refused(r),
        Ok(resp) => {
            let announced = resp.content_length();
            let body = Box::pin(futures::stream::unfold(resp, |mut r| async move {
                match r.chunk().await {
                    Ok(Some(c)) => Some((Ok(c), r)),
                    Ok(None) => None,
                    Err(e) => Some((Err(short(&e)), r)),
                }
            }));
            ingest(ctx, image, body, Some((&owner, announced)), None).await?
        }
    };
    match outcome {
        Ingested::Stored(_) => tracing::info!(image = %image.id, "imported"),
        Ingested::Refused(r) => {
            store::set_failed(&ctx.db, &image.id, &format!("{}: {}", r.code, r.message)).await?;
        }
        Ingested::Interrupted(why) => {
            store::set_failed(&ctx.db, &image.id, &format!("import_failed: the transfer broke off ({why})")).await?;
        }
    }
    ctx.events.wake();
    Ok(())
}

/// Starts again the imports a stopped dcmgr left pending: at start, and on every
/// reconcile pass of the leader when several dcmgrs share the database (those another
/// one is fetching are skipped by their claim).
pub async fn resume(ctx: &SharedCtx) -> ApiResult<()> {
    for row in store::pending_imports(&ctx.db).await? {
        spawn(ctx.clone(), row.into_api()?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for a in [
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(not_public(a.parse().unwrap()).is_some(), "{a}");
        }
        for a in ["192.0.2.2", "198.51.100.7", "203.0.113.9", "192.88.99.1", "2001:db8::1", "2001:0:4136::1", "100::1"]
        {
            assert!(not_public(a.parse().unwrap()).is_some(), "{a}");
        }
        for a in ["1.1.1.1", "151.101.2.132", "2a04:4e42::644"] {
            assert_eq!(not_public(a.parse().unwrap()), None, "{a}");
        }
    }

    #[test]
    fn the_hosts_own_addresses_are_its_own() {
        assert!(own_address("127.0.0.1".parse().unwrap()));
        // A documentation address no host here has.
        assert!(!own_address("198.51.100.77".parse().unwrap()));
    }

    /// A URL import could reach any port of a public address, and whether the import
    /// failed at once or after the stall timeout told a tenant which ports answered.
    #[tokio::test]
    async fn public_addresses_are_reached_on_the_allowed_ports_only() {
        let reach = Reach { allow: vec!["127.0.0.1/32".parse().unwrap()], ports: vec![80, 443] };
        let check = |u: &str| {
            let (u, reach) = (parse_url(u).unwrap(), reach.clone());
            async move { checked_address(&u, &reach).await.map_err(|r| r.code) }
        };
        for refused in ["http://1.1.1.1:22/x", "https://1.1.1.1:8443/x", "http://1.1.1.1:6379/", "http://1.1.1.1:0/"] {
            assert_eq!(check(refused).await, Err("forbidden_port"), "{refused}");
        }
        for fine in ["http://1.1.1.1/x.qcow2", "https://1.1.1.1/x", "http://1.1.1.1:443/x", "https://1.1.1.1:80/x"] {
            assert!(check(fine).await.is_ok(), "{fine}");
        }
        // An allowed (operator's) address: any port.
        assert!(check("http://127.0.0.1:9999/x").await.is_ok());
        assert_eq!(check("http://127.0.0.2:80/x").await, Err("forbidden_address"), "not allowed at all");
        // Every port when the operator empties the list.
        let any = Reach { allow: vec![], ports: vec![] };
        assert!(checked_address(&parse_url("http://1.1.1.1:22/x").unwrap(), &any).await.is_ok());
    }

    #[test]
    fn import_urls_are_http_or_https_without_credentials() {
        assert!(parse_url("https://cloud.debian.org/x.qcow2").is_ok());
        for bad in ["ftp://x/y", "file:///etc/shadow", "http://user:pw@example.com/", "not a url", "gopher://x"] {
            assert_eq!(parse_url(bad).unwrap_err().code, "invalid_source", "{bad}");
        }
    }
}
