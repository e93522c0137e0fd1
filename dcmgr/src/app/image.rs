//! Machine images: what an instance boots. An image is the caller's own or public.

use crate::app::{check_name_free, page, paging_of, quota, validate_name};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, image as store};
use crate::error::{ApiError, ApiResult};
use std::sync::Arc;
use vdc_schema::api::{CreateImage, Image, ImageMembers, ListQuery, Page, QuotaKey};
use vdc_schema::id::{AccountId, ImageId};
use vdc_schema::{BootMode, HypervisorKind, ImageFormat, ImageState, MemberStatus};

/// What an image's `source` asks for.
enum Source {
    /// No source: the data is uploaded.
    Upload,
    /// dcmgr fetches the data.
    Url,
    /// A file the hosts hold: operators only.
    HostFile,
    /// Any other scheme.
    Other,
}

fn source_kind(source: Option<&str>) -> Source {
    let Some(s) = source else { return Source::Upload };
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Source::Url
    } else if s.starts_with('/') || lower.starts_with("file://") || s.starts_with("builtin:") {
        Source::HostFile
    } else {
        Source::Other
    }
}

/// What `source` says uploaded images came from.
pub const UPLOAD: &str = "upload";

pub(crate) fn validate(req: &CreateImage) -> ApiResult<()> {
    validate_name("image", &req.name)?;
    if req.hypervisors.is_empty() {
        return Err(ApiError::bad("invalid_image", "hypervisors must list at least one of kvm, qemu, lxc"));
    }
    if let Some(source) = &req.source {
        if source.trim().is_empty() || source.len() > 4096 {
            return Err(ApiError::bad("invalid_source", "source must be a path or URL of at most 4096 characters"));
        }
    }
    match source_kind(req.source.as_deref()) {
        Source::HostFile => {}
        Source::Url => {
            let url = req.source.as_deref().unwrap_or_default();
            crate::app::image_import::parse_url(url).map_err(|r| ApiError::bad("invalid_source", r.message))?;
        }
        Source::Upload | Source::Other => {}
    }
    if let Source::Other = source_kind(req.source.as_deref()) {
        return Err(ApiError::bad("invalid_source", "source must be an http(s):// URL, or absent to upload the data"));
    }
    if !matches!(source_kind(req.source.as_deref()), Source::HostFile)
        && !matches!(req.format, ImageFormat::Qcow2 | ImageFormat::Raw | ImageFormat::Tar)
    {
        return Err(ApiError::bad(
            "invalid_image",
            format!("a {} image is an operator's host file; uploads and URL imports are qcow2, raw or tar", req.format),
        ));
    }
    if let Some(c) = &req.checksum {
        let ok = c.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(ApiError::bad("invalid_checksum", "checksum must be sha256: followed by 64 hex digits"));
        }
    }
    if req.format == ImageFormat::Kernel && req.initrd.is_none() {
        return Err(ApiError::bad("invalid_image", "a kernel image needs initrd (the path of its initramfs)"));
    }
    if let Some(u) = &req.default_user {
        if !valid_user(u) {
            return Err(ApiError::bad(
                "invalid_image",
                format!(
                    "default_user {u:?} is not a user name: use 1 to 32 of [a-z0-9_-], starting with a letter or _"
                ),
            ));
        }
    }
    if let Some(c) = &req.kernel_cmdline {
        if c.len() > 2048 || c.chars().any(|ch| ch.is_control()) {
            return Err(ApiError::bad("invalid_image", "kernel_cmdline must be one line of at most 2048 characters"));
        }
    }
    validate_boot(req)
}

/// The largest size in bytes the API takes (1 PiB): sizes are stored as signed 64 bits.
pub const MAX_BYTES: u64 = 1 << 50;

/// Whether `hypervisor` can boot an image of `format` at all.
pub fn boots(hypervisor: HypervisorKind, format: ImageFormat) -> bool {
    match hypervisor {
        HypervisorKind::Lxc => matches!(format, ImageFormat::Tar | ImageFormat::Dir),
        HypervisorKind::Kvm | HypervisorKind::Qemu => {
            matches!(format, ImageFormat::Qcow2 | ImageFormat::Raw | ImageFormat::Kernel)
        }
    }
}

/// The boot properties of a new image: every one given must be honoured by how the image
/// boots, since a property that is stored and then ignored leaves a guest with nothing to
/// boot while the API says `running`.
fn validate_boot(req: &CreateImage) -> ApiResult<()> {
    let f = req.format;
    let disk = matches!(f, ImageFormat::Qcow2 | ImageFormat::Raw);
    if f != ImageFormat::Kernel && (req.initrd.is_some() || req.kernel_cmdline.is_some()) {
        return Err(ApiError::bad(
            "kernel_options_need_kernel_image",
            format!(
                "initrd and kernel_cmdline belong to a kernel image, and a {f} image would ignore them; \
                 register the kernel as a `kernel` image and name it in this image's kernel_id"
            ),
        ));
    }
    if let Some(h) = req.hypervisors.iter().find(|h| !boots(**h, f)) {
        let wants = if *h == HypervisorKind::Lxc { "tar or dir" } else { "qcow2, raw or kernel" };
        return Err(ApiError::bad(
            "unsupported_format",
            format!("hypervisor {h} cannot boot a {f} image (it boots {wants} images); drop {h} from hypervisors"),
        ));
    }
    if req.kernel_id.is_some() && !disk {
        return Err(ApiError::bad(
            "invalid_kernel_id",
            format!("kernel_id names the kernel that boots a qcow2 or raw disk image, not a {f} image"),
        ));
    }
    if req.boot_mode == BootMode::Uefi && (!disk || req.kernel_id.is_some()) {
        let why = if disk { "it is started by its kernel_id" } else { "it has no disk with a bootloader" };
        return Err(ApiError::bad(
            "invalid_boot_mode",
            format!("boot_mode uefi starts the bootloader of a qcow2 or raw disk; this image cannot use it: {why}"),
        ));
    }
    // A container's root filesystem has a size too.
    if req.min_disk.is_some() && !disk && !matches!(f, ImageFormat::Tar | ImageFormat::Dir) {
        return Err(ApiError::bad(
            "invalid_min_disk",
            format!("min_disk is for qcow2, raw and tar (or dir) images, not {f}"),
        ));
    }
    let size_ok = |v: Option<u64>| v.is_none_or(|b| (1..=MAX_BYTES).contains(&b));
    if !size_ok(req.min_disk) {
        return Err(ApiError::bad("invalid_min_disk", "min_disk is a size in bytes, from 1 to 2^50"));
    }
    if !size_ok(req.min_memory) {
        return Err(ApiError::bad("invalid_image", "min_memory is a size in bytes, from 1 to 2^50"));
    }
    if let Some(os) = &req.os {
        if os.trim().is_empty() || os.len() > 64 || os.chars().any(char::is_control) {
            return Err(ApiError::bad("invalid_os", "os must be one line of 1 to 64 characters, e.g. debian-12"));
        }
    }
    Ok(())
}

/// A portable POSIX login name, so that `ssh USER@…` cannot be read as an option.
fn valid_user(u: &str) -> bool {
    let b = u.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

pub async fn insert(ctx: &SharedCtx, caller: &Caller, req: CreateImage) -> ApiResult<Image> {
    let kind = source_kind(req.source.as_deref());
    // A host file is booted by hva and copied into volumes by sta, as root: a tenant
    // naming one could read any host file. Tenants upload or import their data instead.
    if matches!(kind, Source::HostFile) && !caller.admin {
        return Err(ApiError::Forbidden(
            "only an operator (admin) can register a file of the hosts as an image; \
             upload the data (no source, then PUT /api/v1/images/{id}/file) or give an http(s):// URL"
                .into(),
        ));
    }
    validate(&req)?;
    if req.public && !caller.admin {
        return Err(ApiError::Forbidden("only an admin can publish a public image".into()));
    }
    if let (Source::HostFile, Some(source)) = (&kind, &req.source) {
        check_host_file(ctx, source)?;
        check_initrd(ctx, &req)?;
    }
    let stored = !matches!(kind, Source::HostFile);
    let kernel = match &req.kernel_id {
        Some(k) => Some(fetch_visible(ctx, caller, k).await.map_err(|e| match e {
            ApiError::NotFound { .. } => {
                ApiError::bad("invalid_kernel_id", format!("kernel_id {k}: no such image visible to you"))
            }
            e => e,
        })?),
        None => None,
    };
    if let Some(k) = &kernel {
        if k.format != ImageFormat::Kernel || k.arch != req.arch {
            return Err(ApiError::bad(
                "invalid_kernel_id",
                format!(
                    "kernel_id {} is a {} {} image; it must be a {} kernel image",
                    k.id, k.arch, k.format, req.arch
                ),
            ));
        }
    }
    let now = db::parse_time(&db::now());
    let image = Image {
        id: ImageId::generate(),
        name: req.name,
        format: req.format,
        arch: req.arch,
        hypervisors: req.hypervisors,
        source: req.source.unwrap_or_else(|| UPLOAD.to_owned()),
        checksum: req.checksum.map(|c| c.to_ascii_lowercase()),
        initrd: req.initrd,
        kernel_cmdline: req.kernel_cmdline,
        boot_mode: req.boot_mode,
        kernel_id: req.kernel_id,
        min_disk: req.min_disk,
        min_memory: req.min_memory,
        os: req.os,
        public: req.public,
        created_at: now,
        default_user: req.default_user,
        state: if stored { ImageState::Pending } else { ImageState::Available },
        failure_reason: None,
        size_bytes: None,
        virtual_size: None,
        owner: Some(caller.account_id.clone()),
        member_status: None,
    };
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // The kernel must still be there at commit: its delete locks it too and then sees
        // this image.
        if let Some(k) = &image.kernel_id {
            if !db::lock(&mut tx, db::Lock::Image, k.as_str()).await? {
                return Err(ApiError::bad("invalid_kernel_id", format!("kernel_id {k}: no such image")));
            }
        }
        quota::enforce(&mut tx, ctx, &caller.account_id, &[(QuotaKey::Images, 1)]).await?;
        check_name_free(&mut tx, db::Named::Image, &caller.account_id, &image.name).await?;
        store::insert(tx.conn().await?, &caller.account_id, &image).await?;
        tx.commit().await?;
        ctx.events.wake();
        Ok(())
    })
    .await?;
    if matches!(kind, Source::Url) {
        crate::app::image_import::spawn(ctx.clone(), image.clone());
    }
    Ok(image)
}

/// An operator's host file must lie in a directory dcmgr's configuration names
/// (`images.file_dirs`); `builtin:` names are resolved by hva from its own list.
fn check_host_file(ctx: &SharedCtx, source: &str) -> ApiResult<()> {
    if let Some(name) = source.strip_prefix("builtin:") {
        return match name {
            "tiny-kernel" | "tiny-initrd" | "tiny-rootfs" => Ok(()),
            _ => Err(ApiError::bad("invalid_source", "builtin: names tiny-kernel, tiny-initrd or tiny-rootfs")),
        };
    }
    let path = std::path::Path::new(source.strip_prefix("file://").unwrap_or(source));
    let climbs =
        path.components().any(|c| !matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)));
    let dirs = &ctx.config.images.file_dirs;
    if climbs || !path.is_absolute() || !dirs.iter().any(|d| path.starts_with(d)) {
        return Err(ApiError::bad(
            "invalid_source",
            format!(
                "{} is not in a directory of images.file_dirs in dcmgr's configuration ({})",
                path.display(),
                if dirs.is_empty() {
                    "none is named".to_owned()
                } else {
                    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                }
            ),
        ));
    }
    Ok(())
}

/// Checks the host-file parts of an image (its initrd, too).
fn check_initrd(ctx: &SharedCtx, req: &CreateImage) -> ApiResult<()> {
    match &req.initrd {
        Some(i) => check_host_file(ctx, i),
        None => Ok(()),
    }
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<Image>> {
    let listed = match q.member_status.as_deref() {
        None | Some("accepted") => store::Listed::Usual,
        Some("all") => store::Listed::All,
        Some(s) => match s.parse::<MemberStatus>() {
            Ok(status) => store::Listed::Shares(status),
            Err(_) => {
                return Err(ApiError::bad(
                    "invalid_query",
                    format!(
                        "member_status must be accepted (the default: your images, public ones and the shares \
                         you accepted), pending, rejected or all; got {s:?}"
                    ),
                ))
            }
        },
    };
    let q = ListQuery { member_status: None, ..q.clone() };
    let (limit, cursor) = paging_of::<vdc_schema::id::ImageId>(&q)?;
    let rows = store::list_visible(&ctx.db, &caller.account_id, listed, &cursor, q.name.as_deref(), limit).await?;
    let items = rows.into_iter().map(|r| Ok(as_seen_by(caller, r.into_api()?))).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |i| i.id.to_string()))
}

/// Image `i` as `caller` is shown it: where another account's image came from is that
/// account's (an import URL may carry a signature, a snapshot's or instance's ID is
/// theirs) or the operator's (host paths): other accounts see the kind of source only
/// (red team, 2026-12-07).
pub fn as_seen_by(caller: &Caller, mut i: Image) -> Image {
    if caller.admin || i.owner.as_ref() == Some(&caller.account_id) {
        return i;
    }
    i.source = origin_shown(&i.source);
    i.initrd = i.initrd.map(|p| origin_shown(&p));
    i
}

/// `upload`, `builtin:NAME` and `bundle` as they are; a URL's scheme and host; the kind
/// of anything else (`snapshot`, `capture`, `host file`).
fn origin_shown(source: &str) -> String {
    use crate::app::capture::{SNAPSHOT_PREFIX, SOURCE_PREFIX};
    if source == UPLOAD || source.starts_with("builtin:") {
        return source.to_owned();
    }
    if let Some(u) = url::Url::parse(source).ok().filter(|u| matches!(u.scheme(), "http" | "https")) {
        return format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or(""));
    }
    // The prefixes name the kind, without their ':'.
    let kind = [SNAPSHOT_PREFIX, SOURCE_PREFIX, "bundle:"].into_iter().find(|p| source.starts_with(p));
    kind.map_or_else(|| "host file".to_owned(), |p| p.trim_end_matches(':').to_owned())
}

/// An image the caller may use (its own, public or shared with it), or 404.
pub async fn fetch_visible(ctx: &SharedCtx, caller: &Caller, id: &ImageId) -> ApiResult<Image> {
    store::get_visible(&ctx.db, &caller.account_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("image", id))?
        .into_api()
}

/// What a caller who does not own image `id` is told when it asks to change it: 404 if
/// it cannot see it either, else that it is another account's (it lists and boots it).
async fn not_owned(ctx: &SharedCtx, caller: &Caller, id: &ImageId) -> ApiError {
    match fetch_visible(ctx, caller, id).await {
        Ok(_) => ApiError::Denied {
            code: "not_image_owner",
            message: format!(
                "image {id} is another account's, public or shared with yours: only its owner can change, share \
                 or delete it. To stop listing an image shared with you: vdc image decline {id}"
            ),
        },
        Err(e) => e,
    }
}

/// Deletes one of the caller's images. One that instances, volumes being filled or disk
/// images (as their kernel) use is hidden at once and its row and blob kept for them
/// until [`collect_deleted`] finds it unused; a blob goes when no other image has the
/// same data.
pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: &ImageId) -> ApiResult<()> {
    // The blob's lock is taken before the decision, so its blob is read first; a pending
    // image's data arriving in between (a blob now) is seen, and the lock taken again.
    let mut locked = store::get(&ctx.db, id.as_str()).await?.and_then(|r| r.blob);
    loop {
        let _refs = crate::app::blob_refs::hold(ctx, locked.as_deref()).await?;
        // Told after the transaction: looking up what the caller sees inside it took a
        // second connection while holding the first, and concurrent deletes emptied the
        // pool and waited on each other for its 30 s timeout.
        let decided = match delete_holding(ctx, caller, id, locked.as_deref()).await {
            Err(ApiError::NotFound { .. }) => return Err(not_owned(ctx, caller, id).await),
            decided => decided?,
        };
        match decided {
            Ok(unused) => {
                cancel_ingest(ctx, id);
                // Still holding its lock: no upload of the same data stores it meanwhile.
                if let Some(b) = unused {
                    if let Err(e) = ctx.blobs.delete(&b).await {
                        tracing::warn!(blob = %b, "cannot remove an unused image blob: {e}");
                    }
                }
                return Ok(());
            }
            Err(blob) => locked = Some(blob),
        }
    }
}

/// The delete's decision, holding the lock of blob `locked`: its unused blob to remove,
/// or (nothing done) the blob the image has now if that is another.
async fn delete_holding(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &ImageId,
    locked: Option<&str>,
) -> ApiResult<Result<Option<String>, String>> {
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // Instance creates lock the image too, so none can start using it before commit.
        let found = db::lock(&mut tx, db::Lock::Image, id.as_str()).await?;
        let owner = store::owner(&mut tx, id).await?;
        if !found || owner.is_none_or(|a| a != caller.account_id.as_str()) {
            // A public or shared image of another account is visible, but not the
            // caller's to delete ([`delete`] says so, once this transaction has ended).
            return Err(ApiError::not_found("image", id));
        }
        let row = store::get_tx(&mut tx, id).await?;
        use crate::app::capture::Origin;
        match row.as_ref().filter(|r| r.state == ImageState::Pending.as_str()).and_then(|r| Origin::of(&r.source)) {
            // Its instance is `capturing` until the capture ends; terminating it ends it.
            Some(Origin::Instance(_)) => {
                return Err(ApiError::conflict(
                    "image_capturing",
                    format!("image {id} is being captured; wait for its job, or terminate the instance"),
                ))
            }
            // Nothing else waits for it: deleting it cancels it (its job fails, the data
            // sta sends later finds no pending image), and so frees its snapshot.
            Some(Origin::Snapshot(_)) => {
                let why = format!("image {id} was deleted before its data arrived");
                crate::datastore::job::fail_all(&mut tx, id.as_str(), &why).await?;
            }
            None => {}
        }
        // Used still: hidden now, collected once nothing uses it (`collect_deleted`).
        if store::used(&mut tx, id).await? {
            store::mark_deleted(&mut tx, id).await?;
            tx.commit().await?;
            ctx.events.images_changed();
            return Ok(Ok(None));
        }
        let blob = store::get_tx(&mut tx, id).await?.and_then(|r| r.blob);
        if let Some(b) = blob.as_ref().filter(|b| Some(b.as_str()) != locked) {
            return Ok(Err(b.clone()));
        }
        store::delete(&mut tx, id).await?;
        let unused = match blob {
            Some(b) if store::blob_users(&mut tx, &b).await? == 0 => Some(b),
            _ => None,
        };
        tx.commit().await?;
        ctx.events.images_changed();
        Ok(Ok(unused))
    })
    .await
}

/// Removes the deleted images nothing uses any more (see [`delete`]), and their blobs
/// when no other image has the same data; how many it removed. The leader runs it.
pub async fn collect_deleted(ctx: &SharedCtx) -> ApiResult<usize> {
    let mut removed = 0;
    for (id, blob) in store::unused_deleted(&ctx.db).await? {
        let _refs = crate::app::blob_refs::hold(ctx, blob.as_deref()).await?;
        let gone = db::retry(|| async {
            let mut tx = db::begin(&ctx.db).await?;
            if !store::remove_unused_deleted(&mut tx, &id).await? {
                return Ok(None);
            }
            let unused = match &blob {
                Some(b) if store::blob_users(&mut tx, b).await? == 0 => Some(b.clone()),
                _ => None,
            };
            tx.commit().await?;
            Ok(Some(unused))
        })
        .await?;
        let Some(unused) = gone else { continue };
        removed += 1;
        if let Some(b) = unused {
            if let Err(e) = ctx.blobs.delete(&b).await {
                tracing::warn!(image = %id, blob = %b, "cannot remove a deleted image's blob: {e}");
            }
        }
    }
    Ok(removed)
}

/// An image the caller may boot or copy into a volume: visible and `available`.
pub async fn fetch_usable(ctx: &SharedCtx, caller: &Caller, id: &ImageId) -> ApiResult<Image> {
    let (gen, account) = (ctx.events.image_generation(), caller.account_id.as_str());
    if let Some(i) = ctx.views.image(gen, account, id.as_str()) {
        return Ok(Image::clone(&i));
    }
    let image = fetch_visible(ctx, caller, id).await?;
    if image.state != ImageState::Available {
        return Err(ApiError::conflict(
            "image_not_available",
            format!(
                "image {id} is {}{}",
                image.state,
                match (&image.state, &image.failure_reason) {
                    (ImageState::Failed, Some(r)) => format!(": {r}"),
                    (ImageState::Pending, _) => ": its data has not been uploaded or imported yet".into(),
                    _ => String::new(),
                }
            ),
        ));
    }
    ctx.views.put_image(gen, account, id.as_str(), Arc::new(image.clone()));
    Ok(image)
}

/// Receives the data of one of the caller's pending images (an upload). A refused upload
/// fails the image; an interrupted one leaves it pending, to be uploaded again.
pub async fn upload<S, E>(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &ImageId,
    announced: Option<u64>,
    body: S,
) -> ApiResult<Image>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    // Only the owner gives an image its data (a public image of another account is not
    // the caller's to change).
    let Some(image) = store::get_owned(&ctx.db, &caller.account_id, id).await? else {
        return Err(not_owned(ctx, caller, id).await);
    };
    let image = image.into_api()?;
    if image.source != UPLOAD {
        return Err(ApiError::conflict(
            "invalid_state",
            format!("image {id} gets its data from {}, not from an upload", image.source),
        ));
    }
    if image.state != ImageState::Pending {
        let again = if image.state == ImageState::Failed {
            format!(" (it failed: {}); delete it and create it again", image.failure_reason.as_deref().unwrap_or("?"))
        } else {
            String::new()
        };
        return Err(ApiError::conflict(
            "invalid_state",
            format!("image {id} is {}: only a pending image takes data{again}", image.state),
        ));
    }
    let _guard = Ingesting::claim(ctx, id).await?;
    let owner = Some((&caller.account_id, announced));
    match ingest(ctx, &image, body, owner, None).await? {
        Ingested::Stored(image) => Ok(*image),
        Ingested::Refused(r) => {
            store::set_failed(&ctx.db, id, &format!("{}: {}", r.code, r.message)).await?;
            ctx.events.wake();
            Err(r.into_error())
        }
        Ingested::Interrupted(why) => Err(ApiError::bad(
            "upload_incomplete",
            format!("the upload stopped before its end ({why}); the image is still pending: upload it again"),
        )),
    }
}

/// The advisory locks' class of ingests (`vdcI` in ASCII), beside the blobs' `vdcB`.
pub const INGEST_CLASS: i32 = 0x7664_6349;

/// One ingest per image at a time, in every dcmgr on one database; released when dropped.
/// With several dcmgrs on one PostgreSQL the claim is also an advisory lock
/// (`datastore::locks`): a URL import resumed by one is not fetched again by another,
/// of two uploads to one image through two dcmgrs the second is told it is busy, and a
/// dcmgr that dies mid-ingest frees the image for the leader to resume
/// ([`crate::app::image_import::resume`]).
pub(crate) struct Ingesting<'a> {
    ctx: &'a SharedCtx,
    id: ImageId,
    _shared: Option<db::locks::Held>,
    /// Stops the watch for a delete through another dcmgr when the ingest ends.
    _watch: Option<tokio_util::sync::DropGuard>,
}

impl<'a> Ingesting<'a> {
    pub(crate) async fn claim(ctx: &'a SharedCtx, id: &ImageId) -> ApiResult<Self> {
        let busy = || ApiError::conflict("invalid_state", format!("image {id} is receiving its data already"));
        let cancel = tokio_util::sync::CancellationToken::new();
        match ctx.ingesting.lock().unwrap().entry(id.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => return Err(busy()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(cancel.clone());
            }
        }
        // From here on, dropping the claim gives the local entry back.
        let mut claim = Ingesting { ctx, id: id.clone(), _shared: None, _watch: None };
        if let Some(locks) = &ctx.locks {
            match locks.try_lock(INGEST_CLASS, db::advisory_key(id.as_str())).await? {
                Some(held) => claim._shared = Some(held),
                None => return Err(busy()),
            }
            claim._watch = Some(watch_deleted(ctx.clone(), id.clone(), cancel));
        }
        Ok(claim)
    }
}

/// An image deleted through another dcmgr stops its ingest here too: the delete cancels
/// only its own process's, so this one looks every second.
fn watch_deleted(
    ctx: SharedCtx,
    id: ImageId,
    cancel: tokio_util::sync::CancellationToken,
) -> tokio_util::sync::DropGuard {
    let done = tokio_util::sync::CancellationToken::new();
    let guard = done.clone().drop_guard();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            if let Ok(None) = store::get(&ctx.db, id.as_str()).await {
                cancel.cancel();
                return;
            }
        }
    });
    guard
}

/// Stops the data transfer of a deleted image in this process (a URL import would
/// otherwise download to its end for nothing).
fn cancel_ingest(ctx: &SharedCtx, id: &ImageId) {
    if let Some(t) = ctx.ingesting.lock().unwrap().get(id) {
        t.cancel();
    }
}

impl Drop for Ingesting<'_> {
    fn drop(&mut self) {
        self.ctx.ingesting.lock().unwrap().remove(&self.id);
    }
}

pub(crate) enum Ingested {
    Stored(Box<Image>),
    /// The data is not acceptable: the image fails.
    Refused(crate::app::image_check::Refusal),
    /// The data stopped arriving.
    Interrupted(String),
}

/// Streams `body` into a staging file while hashing it, checks digest and content, then
/// stores the blob and makes the image available, in that order: nothing is `available`
/// before its checks pass, and nothing stays behind when they do not. The data of a
/// capture (of an instance or a snapshot) ends that capture in the same transaction.
/// A tenant's upload or import (`owner`: its account, and the length it announced) is
/// refused as soon as its data passes the image limit or what is left of the account's
/// `image_gib`, and at once when the length announced does.
pub(crate) async fn ingest<S, E>(
    ctx: &SharedCtx,
    image: &Image,
    mut body: S,
    owner: Option<(&AccountId, Option<u64>)>,
    capture: Option<&crate::app::capture::Origin>,
) -> ApiResult<Ingested>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use crate::app::image_check::Refusal;
    use crate::blobs::{StageError, Staging};
    use futures::StreamExt;
    let limits = &ctx.config.images;
    let too_large = |limit: u64| Refusal {
        code: "image_too_large",
        message: format!("the image data is larger than {limit} bytes, the limit of this cloud"),
    };
    let quota = match owner {
        Some((account, _)) => quota::image_bytes_left(ctx, account).await?,
        None => None,
    };
    let over_quota = || Refusal { code: "quota_exceeded", message: quota.clone().unwrap_or_default().1 };
    let left = quota.as_ref().map(|q| q.0);
    match owner.and_then(|o| o.1) {
        Some(n) if n > limits.max_bytes => return Ok(Ingested::Refused(too_large(limits.max_bytes))),
        Some(n) if left.is_some_and(|l| n > l) => return Ok(Ingested::Refused(over_quota())),
        _ => {}
    }
    let cap = left.map_or(limits.max_bytes, |l| l.min(limits.max_bytes));
    let staging_dir = ctx.config.images_dir().join("staging");
    // A capture's chunks are hashed as its data arrives: a bundle export is what
    // captures most, and lists each blob's chunks (`ctx.chunk_lists`).
    let mut staging = match capture {
        Some(_) => Staging::create_chunked(&staging_dir, cap, vdc_bundle::CHUNK_SIZE).await,
        None => Staging::create(&staging_dir, cap).await,
    }
    .map_err(ApiError::internal)?;
    // Claimed by the caller ([`Ingesting`]): cancelled when the image is deleted.
    let cancel = ctx.ingesting.lock().unwrap().get(&image.id).cloned().unwrap_or_default();
    let stall = std::time::Duration::from_secs(limits.import_stall_timeout_s);
    loop {
        let chunk = tokio::select! {
            c = body.next() => match c {
                Some(c) => c,
                None => break,
            },
            _ = cancel.cancelled() => return Err(ApiError::not_found("image", &image.id)),
            // A sender that stops sending holds a connection and a staging file: it is
            // cut (an upload's image stays pending, to be sent again).
            _ = tokio::time::sleep(stall) => {
                return Ok(Ingested::Interrupted(format!("no data for {} s", stall.as_secs())))
            }
        };
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Ok(Ingested::Interrupted(e.to_string())),
        };
        match staging.write(chunk).await {
            Ok(()) => {}
            Err(StageError::TooLarge { limit }) if limit < limits.max_bytes => {
                return Ok(Ingested::Refused(over_quota()))
            }
            Err(StageError::TooLarge { limit }) => return Ok(Ingested::Refused(too_large(limit))),
            Err(e) => return Err(ApiError::internal(e)),
        }
    }
    let (sha, size, chunks) = staging.finish_with_chunks().await.map_err(ApiError::internal)?;
    if let Some(want) = &image.checksum {
        if want.trim_start_matches("sha256:") != sha {
            return Ok(Ingested::Refused(Refusal {
                code: "checksum_mismatch",
                message: format!("the data's checksum is sha256:{sha}, not {want} as the image says"),
            }));
        }
    }
    // A root file system unpacks on a host to no more than an image's data may be
    // (else a small tarball of zeros would fill the host's disk).
    let max_virtual = match image.format {
        ImageFormat::Tar => limits.max_virtual_bytes.min(limits.max_bytes),
        _ => limits.max_virtual_bytes,
    };
    let (path, format) = (staging.path().to_owned(), image.format);
    let inspected = tokio::task::spawn_blocking(move || crate::app::image_check::inspect(&path, format, max_virtual))
        .await
        .map_err(ApiError::internal)?;
    let inspected = match inspected {
        Ok(i) => i,
        Err(r) => return Ok(Ingested::Refused(r)),
    };
    let _refs = crate::app::blob_refs::hold(ctx, [sha.as_str()]).await?;
    ctx.blobs.put(&sha, staging.path()).await.map_err(ApiError::internal)?;
    if let Some(chunks) = chunks {
        ctx.chunk_lists.remember(&sha, chunks);
    }
    let id = &image.id;
    let done = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // The source first, as every decision on it does (terminate fails the capture).
        if let Some(origin) = capture {
            origin.lock(&mut tx).await?;
        }
        if !db::lock(&mut tx, db::Lock::Image, id.as_str()).await? {
            return Ok(None);
        }
        let row = store::get_tx(&mut tx, id).await?;
        if row.as_ref().is_none_or(|r| r.state != ImageState::Pending.as_str()) {
            return Ok(None);
        }
        // Its size is known only now: the owner's image_gib is checked here, the
        // image's own row not yet counted (no size while pending).
        let owner = store::owner(&mut tx, id).await?.ok_or_else(|| ApiError::not_found("image", id))?;
        let owner: AccountId = owner.parse().map_err(ApiError::internal)?;
        let name = row.as_ref().map(|r| r.name.as_str()).unwrap_or_default();
        quota::enforce_unless_exported(&mut tx, ctx, &owner, ("image", name), &[(QuotaKey::ImageGib, size)]).await?;
        store::set_available(&mut tx, id, &sha, size, inspected.format, inspected.virtual_size).await?;
        if let Some(origin) = capture {
            origin.end_in_tx(&mut tx, id.as_str(), None).await?;
        }
        let row = store::get_tx(&mut tx, id).await?.ok_or_else(|| ApiError::not_found("image", id))?;
        tx.commit().await?;
        ctx.events.wake();
        Ok(Some(row))
    })
    .await;
    // Over a quota: refused like bad data (the image fails), after the blob is dropped.
    let (done, over_quota) = match done {
        Err(ApiError::Unprocessable { code: "quota_exceeded", message }) => (None, Some(message)),
        Err(e) => return Err(e),
        Ok(row) => (row, None),
    };
    match done {
        Some(row) => Ok(Ingested::Stored(Box::new(row.into_api()?))),
        None => {
            // Deleted (or failed) meanwhile, or over quota: the blob may now be nobody's.
            let mut tx = db::begin(&ctx.db).await?;
            let users = store::blob_users(&mut tx, &sha).await?;
            tx.rollback().await?;
            if users == 0 {
                let _ = ctx.blobs.delete(&sha).await;
            }
            match over_quota {
                Some(message) => Ok(Ingested::Refused(Refusal { code: "quota_exceeded", message })),
                None => Err(ApiError::not_found("image", id)),
            }
        }
    }
}

/// Books the disk of the instances made before dcmgr knew their image's size (each
/// locked, so that a terminate gives back what was booked): their hosts keep it. Run at
/// start, after [`read_missing_disk_sizes`].
pub async fn book_unbooked_disks(ctx: &SharedCtx) -> ApiResult<()> {
    use crate::datastore::instance as instances;
    for (id, size) in instances::without_disk_booked(&ctx.db).await? {
        let mut tx = db::begin(&ctx.db).await?;
        let Some(row) = instances::lock_get(&mut tx, &id).await? else { continue };
        let Ok(hv) = row.hypervisor.parse() else { continue };
        let mib = crate::app::scheduler::disk_mib(hv, Some(size as u64));
        if row.disk_mib != 0 || row.root_disk_size.is_some() || row.state == "terminated" || mib == 0 {
            continue;
        }
        instances::set_disk_mib(&mut tx, &id, mib).await?;
        if let Some(host) = row.host_node_id.as_deref().or(row.last_host_id.as_deref()) {
            crate::datastore::host::book_disk(&mut tx, host, i64::from(mib)).await?;
        }
        tx.commit().await?;
    }
    ctx.room.invalidate();
    Ok(())
}

/// Images stored by a dcmgr before disk sizes were recorded get theirs at start, from
/// their blob's header (checked in full when it was stored), so that volumes from them
/// default to it. An image whose header cannot be read keeps none (sta then checks).
pub async fn read_missing_disk_sizes(ctx: &SharedCtx) -> ApiResult<()> {
    use futures::StreamExt;
    for (id, blob) in store::without_disk_size(&ctx.db).await? {
        let read = async {
            let Some((len, mut stream)) = ctx.blobs.open(&blob, 0).await? else {
                return Err(std::io::Error::other("its blob is not in the store"));
            };
            let mut head = Vec::new();
            while head.len() < 4096 {
                match stream.next().await {
                    Some(b) => head.extend_from_slice(&b?),
                    None => break,
                }
            }
            crate::app::image_check::inspect_head(&head, len, u64::MAX)
                .map_err(std::io::Error::other)?
                .virtual_size
                .ok_or_else(|| std::io::Error::other("not a disk"))
        };
        match read.await {
            Ok(size) => {
                store::set_disk_size(&ctx.db, &id, size).await?;
                ctx.events.images_changed();
            }
            Err(e) => tracing::warn!(image = %id, error = %e, "cannot read the disk size of a stored image"),
        }
    }
    Ok(())
}

/// Whether a public image of this name exists (for `vdc up`'s default image).
pub async fn exists_public(ctx: &SharedCtx, name: &str) -> ApiResult<bool> {
    Ok(store::exists_public(&ctx.db, name).await?)
}

/// The accounts one of the caller's images is shared with.
pub async fn members(ctx: &SharedCtx, caller: &Caller, id: &ImageId) -> ApiResult<ImageMembers> {
    let mut tx = db::begin(&ctx.db).await?;
    let owner = store::owner(&mut tx, id).await?;
    if owner.as_deref() != Some(caller.account_id.as_str()) {
        tx.rollback().await?;
        return Err(not_owned(ctx, caller, id).await);
    }
    let members = store::members(&mut tx, id).await?;
    tx.rollback().await?;
    into_members(id, members)
}

fn into_members(id: &ImageId, members: Vec<(String, String)>) -> ApiResult<ImageMembers> {
    let mut out = ImageMembers { image_id: id.clone(), members: vec![], member_status: Default::default() };
    for (account, status) in members {
        out.members.push(account.parse().map_err(ApiError::internal)?);
        out.member_status.insert(account, status.parse().map_err(ApiError::internal)?);
    }
    Ok(out)
}

/// The most accounts one image is shared with.
const MAX_MEMBERS: usize = 1000;

/// What [`set_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// The owner offered the image to an account that had no share of it.
    Offered,
    /// The share, or the answer, was already as asked.
    Unchanged,
    /// The owner withdrew a share.
    Withdrawn,
    /// The member accepted or declined it.
    Answered,
}

/// The owner offers (`add`) one of its images to `account` or withdraws the offer; or a
/// member (`account` its own) accepts (`add`) or declines an image offered to it. Any
/// well-formed account ID is accepted, existing or not, so sharing tells nothing about
/// which accounts exist; and a share is listed to its member only once accepted, so
/// that no account puts images into another's lists unasked.
pub async fn set_member(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &ImageId,
    account: &AccountId,
    add: bool,
) -> ApiResult<(ImageMembers, Shared)> {
    let done = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        db::lock(&mut tx, db::Lock::Image, id.as_str()).await?;
        let owner = store::owner(&mut tx, id).await?;
        let members = store::members(&mut tx, id).await?;
        let mine = owner.as_deref() == Some(caller.account_id.as_str());
        let membership = members.iter().find(|(m, _)| m == account.as_str()).map(|(_, s)| s.clone());
        if !mine && account == &caller.account_id {
            // The member answers. It learns nothing of the other members.
            let Some(was) = membership else {
                return Err(ApiError::not_found("image", id));
            };
            let status = if add { MemberStatus::Accepted } else { MemberStatus::Rejected };
            let changed = was != status.as_str();
            if changed {
                store::set_member_status(&mut tx, id, account.as_str(), status).await?;
            }
            tx.commit().await?;
            if changed {
                ctx.events.images_changed();
            }
            let answer = vec![(account.to_string(), status.as_str().to_owned())];
            return Ok((into_members(id, answer)?, if changed { Shared::Answered } else { Shared::Unchanged }));
        }
        if !mine {
            // Said by the caller after this transaction (see [`delete`]).
            return Err(ApiError::not_found("image", id));
        }
        if account == &caller.account_id {
            return Err(ApiError::bad("invalid_member", "an image is its owner's already: name another account"));
        }
        let done = match (add, membership.is_some()) {
            (true, false) => {
                if members.len() >= MAX_MEMBERS {
                    return Err(ApiError::bad(
                        "too_many_members",
                        format!("an image is shared with at most {MAX_MEMBERS} accounts"),
                    ));
                }
                store::add_member(&mut tx, id, account.as_str()).await?;
                Shared::Offered
            }
            (false, true) => {
                store::remove_member(&mut tx, id, account.as_str()).await?;
                Shared::Withdrawn
            }
            (false, false) => return Err(ApiError::not_found("image member", account)),
            // Offered already, or declined: a declined share is not offered anew.
            (true, true) => Shared::Unchanged,
        };
        let members = store::members(&mut tx, id).await?;
        tx.commit().await?;
        if done != Shared::Unchanged {
            ctx.events.images_changed();
        }
        Ok((into_members(id, members)?, done))
    })
    .await;
    match done {
        Err(ApiError::NotFound { kind: "image", .. }) => Err(not_owned(ctx, caller, id).await),
        done => done,
    }
}

#[cfg(test)]
mod tests {
    use super::valid_user;

    #[test]
    fn default_users_are_login_names() {
        for ok in ["root", "debian", "_svc", "cloud-user", "u1"] {
            assert!(valid_user(ok), "{ok}");
        }
        for bad in ["", "-oProxyCommand=x", "Root", "1user", "a b", "user@host", &"a".repeat(33)] {
            assert!(!valid_user(bad), "{bad:?}");
        }
    }
}
