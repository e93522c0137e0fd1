//! Wires one dcmgr together: database, bus subscriptions, background tasks and the HTTP
//! server. Used by the `dcmgr` binary, by `vdc up` and by the test harness.

use crate::config::Config;
use crate::ctx::{Ctx, EnsureObserver, SharedCtx};
use crate::{controller, db, http};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use vdc_bus::Transport;
use vdc_schema::bus::subject;

/// How long a stop waits for the HTTP requests under way (see `Dcmgr::start`).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Drops the rate-limit buckets that are full again, so the limiter's memory follows the
/// callers active in the last few seconds.
async fn evict_rate_limits(ctx: SharedCtx, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(l) = &ctx.rate_limits {
            l.evict();
        }
        ctx.signin_limits.evict();
        ctx.signin_user_limits.evict();
    }
}

pub struct Dcmgr {
    pub addr: SocketAddr,
    pub ctx: SharedCtx,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The `flock` that keeps a second dcmgr off a SQLite database, released by `stop`
    /// (or when this is dropped).
    _sqlite_lock: Option<std::fs::File>,
}

#[derive(Default)]
pub struct Options {
    /// Use this bus (the all-in-one's in-process one) instead of `config.nats_url`.
    pub bus: Option<Arc<dyn Transport>>,
    pub ensure_observer: Option<EnsureObserver>,
}

impl Dcmgr {
    pub async fn start(config: Config, opts: Options) -> anyhow::Result<Dcmgr> {
        config.check_ratios().map_err(|why| anyhow::anyhow!("invalid configuration: {why}"))?;
        if let Some(e) = &config.external {
            e.pool().map_err(|why| anyhow::anyhow!("invalid configuration: {why}"))?;
        }
        // The port first: a dcmgr started twice by mistake (or a busy port) stops before it
        // opens (and migrates) the database, joins the bus and starts its controllers.
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let sqlite_lock = db::lock_sqlite(&config.database_url)?;
        let (pool, kind) = db::connect(&config.database_url)
            .await
            .with_context(|| format!("opening database {}", redact(&config.database_url)))?;
        let bus: Arc<dyn Transport> = match (opts.bus, &config.nats_url) {
            (Some(b), _) => b,
            (None, Some(url)) => vdc_bus::Nats::connect(url, "dcmgr").await?,
            (None, None) => {
                if kind == db::DbKind::Postgres {
                    tracing::warn!(
                        "no nats_url: this dcmgr's bus is in its own process, so only agents it runs itself reach \
                         it; on a site's PostgreSQL (agents on other hosts, other dcmgrs) set nats_url"
                    );
                }
                vdc_bus::InProc::new()
            }
        };
        let images_dir = config.images_dir();
        let secret = |name: &'static str| crate::app::site_secret::load(&pool, &images_dir, name);
        let site_key = vdc_bundle::SigningKey::from_bytes(&secret("site-key").await.context("the bundle site key")?);
        let node_key = secret("node-key").await.context("the node key")?;
        let mut trusted_keys = vec![site_key.verifying_key()];
        for k in &config.bundles.trusted_keys {
            trusted_keys.push(
                vdc_bundle::parse_key(k)
                    .map_err(|e| anyhow::anyhow!("invalid configuration: [bundles] trusted_keys: {e}"))?,
            );
        }
        let rate_limits = config
            .auth
            .rate_limit()
            .map_err(|why| anyhow::anyhow!("invalid configuration: {why}"))?
            .map(|(rate, burst)| crate::app::rate_limit::RateLimits::new(rate, burst));
        let (signin_rate, signin_burst) =
            config.auth.signin_limit().map_err(|why| anyhow::anyhow!("invalid configuration: {why}"))?;
        let signin_limits = crate::app::rate_limit::RateLimits::per_minute(signin_rate, signin_burst);
        let (user_rate, user_burst) =
            config.auth.signin_user_limit().map_err(|why| anyhow::anyhow!("invalid configuration: {why}"))?;
        let signin_user_limits = crate::app::rate_limit::RateLimits::per_minute(user_rate, user_burst);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let audit = crate::app::audit::Writer::start(pool.clone());
        let sent = crate::controller::sent::Marks::start(pool.clone());
        // PostgreSQL may be shared by several dcmgrs (README: several controllers).
        let shared = kind == db::DbKind::Postgres;
        let token_ttl = shared.then(|| std::time::Duration::from_millis(config.auth.token_cache_ttl_ms));
        let ctx: SharedCtx = Arc::new(Ctx {
            db: pool,
            bus: bus.clone(),
            config: config.clone(),
            tokens: std::sync::RwLock::new(crate::ctx::TokenCache::with_ttl(token_ttl)),
            room: crate::app::room::Room::new(config.placement),
            work: tx,
            queued: Default::default(),
            agents: Default::default(),
            ensure_observer: opts.ensure_observer,
            blobs: open_blob_store(&config).await?,
            ingesting: Default::default(),
            exports: Default::default(),
            chunk_lists: Default::default(),
            blob_refs: Default::default(),
            node_key,
            site_key,
            trusted_keys,
            http_addr: Default::default(),
            events: crate::app::event::Hub::new(cancel.clone()),
            stopping: cancel.clone(),
            views: Default::default(),
            rate_limits,
            audit,
            sent,
            locks: shared.then(|| db::locks::SharedLocks::new(config.database_url.clone())),
            leader: std::sync::atomic::AtomicBool::new(!shared),
            signin_limits,
            signin_user_limits,
            streams: vdc_bus::conn_limits::ConnLimits::new(config.http.event_streams_per_account, usize::MAX),
            creates: Default::default(),
            limited: Default::default(),
        });
        if let Some(t) = &config.admin_token {
            crate::app::account::bootstrap_admin(&ctx, t).await?;
        }
        controller::membership::seed_from_db(&ctx).await?;
        // A changed ratio applies to the hosts known from before, not only to new ones.
        controller::membership::apply_allocation_ratios(&ctx).await?;
        config.import_allow().map_err(|why| anyhow::anyhow!("invalid configuration: {why}"))?;
        // What a stopped dcmgr left in staging goes first: the imports resumed next stage
        // into new files, which must not be taken for stale (a fast source had its file
        // removed under it: "inspection_failed: cannot read the data").
        if shared {
            let differ = crate::app::site_settings::record(&ctx.db, &config).await?;
            if !differ.is_empty() {
                tracing::warn!(
                    "this dcmgr's configuration differs from the one the site's dcmgr started last with: {}; give \
                     every dcmgr of the site the same, or what a tenant gets depends on which one answers",
                    differ.join("; ")
                );
            }
        }
        // With several dcmgrs the directory may be shared: another host's are kept.
        let unchanged_for = if shared { crate::blobs::STALE_STAGING } else { std::time::Duration::ZERO };
        crate::blobs::remove_stale_staging(&config.images_dir().join("staging"), unchanged_for);
        // URL imports cut short by a stop start again.
        crate::app::image_import::resume(&ctx).await?;
        crate::app::image::read_missing_disk_sizes(&ctx).await?;
        crate::app::image::book_unbooked_disks(&ctx).await?;

        let mut tasks = Vec::new();
        // Registrations and reports go to one dcmgr of the queue group; heartbeats to every
        // one (each keeps liveness in memory).
        let group = controller::membership::QUEUE_GROUP;
        let reg = bus.subscribe_queue(subject::REGISTER, group).await?;
        let hb = bus.subscribe(subject::HEARTBEAT).await?;
        let rep = bus.subscribe_queue(subject::REPORT, group).await?;
        if shared {
            let peers = bus.subscribe(controller::membership::PEER_REGISTERED).await?;
            tasks.push(tokio::spawn(controller::membership::serve_peer_registered(ctx.clone(), peers, cancel.clone())));
            tasks.push(tokio::spawn(controller::leader::run(ctx.clone(), cancel.clone())));
        }
        tasks.push(tokio::spawn(controller::membership::serve_register(ctx.clone(), reg, cancel.clone())));
        tasks.push(tokio::spawn(controller::membership::serve_heartbeat(ctx.clone(), hb, cancel.clone())));
        tasks.push(tokio::spawn(controller::reports::serve(ctx.clone(), rep, cancel.clone())));
        tasks.push(tokio::spawn(controller::membership::watch_liveness(ctx.clone(), cancel.clone())));
        tasks.push(tokio::spawn(controller::reconciler::run(ctx.clone(), cancel.clone())));
        tasks.push(tokio::spawn(crate::app::event::pump(ctx.clone(), cancel.clone())));
        tasks.push(tokio::spawn(crate::app::retention::pruner(ctx.clone(), cancel.clone())));
        tasks.extend(controller::dispatch::spawn(ctx.clone(), rx, cancel.clone()));
        tasks.push(tokio::spawn(evict_rate_limits(ctx.clone(), cancel.clone())));
        crate::app::session::warm_up();

        let addr = listener.local_addr()?;
        let _ = ctx.http_addr.set(addr);
        let app = http::router(ctx.clone());
        let stop = cancel.clone();
        let http_cfg = config.http.clone();
        tasks.push(tokio::spawn(async move {
            // The peer's address (given to handlers as ConnectInfo) keys the rate limit of
            // calls without a valid token, and is the audit log's source address.
            let cut = stop.clone();
            let serve = http::serve::serve(listener, app, &http_cfg, stop);
            // A stop lets requests under way end, for a while: a client that sends an
            // upload slowly (or stalls) held a Ctrl-C of `vdc up` as long as it liked.
            let grace = async move {
                cut.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            tokio::select! {
                () = serve => {},
                _ = grace => tracing::warn!(
                    "requests still under way {} s after the stop were cut (an upload cut so stays pending)",
                    SHUTDOWN_GRACE.as_secs()
                ),
            }
        }));
        tracing::info!(%addr, db = ?kind, "dcmgr serving");
        Ok(Dcmgr { addr, ctx, cancel, tasks, _sqlite_lock: sqlite_lock })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        // The answers of the last requests have gone out: their entries must not be lost.
        self.ctx.audit.flush().await;
        self.ctx.sent.flush().await;
        self.ctx.db.close().await;
    }

    /// Waits until stopped from outside (Ctrl-C).
    pub async fn wait(&self) {
        self.cancel.cancelled().await
    }
}

/// The image store of `images.store`, checked usable: a dcmgr that could not store or
/// serve image data refuses to start.
async fn open_blob_store(config: &Config) -> anyhow::Result<Arc<dyn crate::blobs::BlobStore>> {
    use crate::config::StoreKind;
    Ok(match (config.images.store, &config.images.s3) {
        (StoreKind::Fs, _) => Arc::new(
            crate::blobs::FsBlobStore::new(&config.images_dir())
                .with_context(|| format!("opening the image store in {}", config.images_dir().display()))?,
        ),
        (StoreKind::S3, Some(s3)) => Arc::new(
            crate::blobs::s3::S3BlobStore::connect(s3)
                .await
                .with_context(|| format!("opening the image store in bucket {:?} of {}", s3.bucket, s3.endpoint))?,
        ),
        (StoreKind::S3, None) => anyhow::bail!(
            "invalid configuration: images.store = \"s3\" needs an [images.s3] table (endpoint, bucket, access_key, \
             secret_key_file)"
        ),
    })
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}
