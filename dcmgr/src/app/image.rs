//! Machine images: what an instance boots. An image is the caller's own or public.

use crate::app::{name_some, page, paging, validate_name};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, image as store};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{CreateImage, Image, ListQuery, Page};
use vdc_schema::id::ImageId;
use vdc_schema::{BootMode, HypervisorKind, ImageFormat};

fn validate(req: &CreateImage) -> ApiResult<()> {
    validate_name("image", &req.name)?;
    if req.hypervisors.is_empty() {
        return Err(ApiError::bad("invalid_image", "hypervisors must list at least one of kvm, qemu, lxc"));
    }
    if req.source.trim().is_empty() || req.source.len() > 4096 {
        return Err(ApiError::bad("invalid_image", "source must be a path or URL of at most 4096 characters"));
    }
    if ["http://", "https://", "ftp://"].iter().any(|p| req.source.to_ascii_lowercase().starts_with(p)) {
        // hva and sta read local files only; a URL here was fetched by nobody, or by the
        // wrong party (server-side request forgery).
        return Err(ApiError::bad(
            "invalid_source",
            "images cannot be imported from a URL yet: an operator registers a file the hosts hold",
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
    if req.min_disk.is_some() && !disk {
        return Err(ApiError::bad("invalid_min_disk", format!("min_disk is for qcow2 and raw disk images, not {f}")));
    }
    let size_ok = |v: Option<u64>| v.is_none_or(|b| (1..=MAX_BYTES).contains(&b));
    if !size_ok(req.min_disk) || !size_ok(req.min_memory) {
        return Err(ApiError::bad("invalid_image", "min_disk and min_memory are sizes in bytes, from 1 to 2^50"));
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
    // An image's source names a file on the hosts, which hva boots and sta copies into
    // volumes as root: a tenant naming one could read any host file. Until images can be
    // uploaded, only an operator registers them; tenants boot the public ones.
    if !caller.admin {
        return Err(ApiError::Forbidden(
            "only an operator (admin) can register an image, since its source is a file on the hosts; \
             use a public image"
                .into(),
        ));
    }
    validate(&req)?;
    if req.public && !caller.admin {
        return Err(ApiError::Forbidden("only an admin can publish a public image".into()));
    }
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
        source: req.source,
        checksum: req.checksum,
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
    };
    db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        // The kernel must still be there at commit: its delete locks it too and then sees
        // this image.
        if let Some(k) = &image.kernel_id {
            if !db::lock(&mut tx, db::Lock::Image, k.as_str()).await? {
                return Err(ApiError::bad("invalid_kernel_id", format!("kernel_id {k}: no such image")));
            }
        }
        store::insert(&mut *tx, &caller.account_id, &image).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    Ok(image)
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<Image>> {
    let (limit, cursor) = paging(q)?;
    let rows = store::list_visible(&ctx.db, &caller.account_id, &cursor, q.name.as_deref(), limit).await?;
    let items = rows.into_iter().map(store::Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |i| i.id.to_string()))
}

/// An image the caller may use (its own or public), or 404.
pub async fn fetch_visible(ctx: &SharedCtx, caller: &Caller, id: &ImageId) -> ApiResult<Image> {
    store::get_visible(&ctx.db, &caller.account_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("image", id))?
        .into_api()
}

/// Deletes one of the caller's images that no instance uses.
pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: &ImageId) -> ApiResult<()> {
    db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        // Instance creates lock the image too, so none can start using it before commit.
        db::lock(&mut tx, db::Lock::Image, id.as_str()).await?;
        let owner = store::owner(&mut tx, id).await?;
        if owner.is_none_or(|a| a != caller.account_id.as_str()) {
            // A public image of another account is visible, but not the caller's to delete.
            return Err(ApiError::not_found("image", id));
        }
        let users = store::users(&mut tx, id).await?;
        if !users.is_empty() {
            return Err(ApiError::conflict(
                "image_in_use",
                format!("image {id} is used by {}", name_some("instance", users.iter().map(String::as_str))),
            ));
        }
        let disks = store::kernel_users(&mut tx, id).await?;
        if !disks.is_empty() {
            return Err(ApiError::conflict(
                "image_in_use",
                format!("image {id} is the kernel_id of {}", name_some("image", disks.iter().map(String::as_str))),
            ));
        }
        store::delete(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    })
    .await
}

/// Whether a public image of this name exists (for `vdc up`'s default image).
pub async fn exists_public(ctx: &SharedCtx, name: &str) -> ApiResult<bool> {
    Ok(store::exists_public(&ctx.db, name).await?)
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
