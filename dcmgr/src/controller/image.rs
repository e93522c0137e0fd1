//! Images as agents get them: hva boots one, sta fills a volume with one.

use crate::datastore::{self as db, image as store};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::Image;

/// Any image by ID, for building agent specs.
pub async fn fetch_any(db: &db::Pool, id: &str) -> ApiResult<Image> {
    store::get(db, id).await?.ok_or_else(|| ApiError::not_found("image", id))?.into_api()
}

/// What an agent needs of image `id` (hva to boot it, sta to fill a volume with it).
/// `node` is the agent the spec goes to: stored data comes with that node's credential
/// for dcmgr's blob endpoint.
pub async fn spec(ctx: &crate::ctx::Ctx, id: &str, node: &str) -> ApiResult<vdc_schema::bus::ImageSpec> {
    spec_on(ctx, &mut *ctx.db.acquire().await?, id, node).await
}

/// [`spec`], read on `conn` (an instance's ensure reads all it needs on one connection).
pub async fn spec_on(
    ctx: &crate::ctx::Ctx,
    conn: &mut db::Conn,
    id: &str,
    node: &str,
) -> ApiResult<vdc_schema::bus::ImageSpec> {
    let (image, kernel_id) = plain_spec(ctx, conn, id, node).await?;
    // The kernel of a disk image booted by kernel_id: one level only (a kernel image
    // names no kernel), so no recursion.
    let kernel = match kernel_id {
        Some(k) => Some(Box::new(plain_spec(ctx, conn, k.as_str(), node).await?.0)),
        None => None,
    };
    Ok(vdc_schema::bus::ImageSpec { kernel, ..image })
}

async fn plain_spec(
    ctx: &crate::ctx::Ctx,
    conn: &mut db::Conn,
    id: &str,
    node: &str,
) -> ApiResult<(vdc_schema::bus::ImageSpec, Option<vdc_schema::id::ImageId>)> {
    let row = store::get(&mut *conn, id).await?.ok_or_else(|| ApiError::not_found("image", id))?;
    let blob = match (&row.blob, row.size_bytes) {
        (Some(sha), Some(size)) => Some(vdc_schema::bus::BlobRef {
            sha256: sha.clone(),
            size: size as u64,
            url: format!("{}/agent/v1/blobs/{sha}", ctx.agent_url()),
            token: crate::app::node_auth::token(&ctx.node_key, node),
        }),
        _ => None,
    };
    let image = row.into_api()?;
    let kernel_id = image.kernel_id.clone();
    let spec = vdc_schema::bus::ImageSpec {
        blob,
        id: image.id,
        format: image.format,
        source: image.source,
        checksum: image.checksum,
        initrd: image.initrd,
        kernel_cmdline: image.kernel_cmdline,
        boot_mode: image.boot_mode,
        kernel: None,
    };
    Ok((spec, kernel_id))
}
