//! Images as agents get them: hva boots one, sta fills a volume with one.

use crate::datastore::{self as db, image as store};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::Image;

/// Any image by ID, for building agent specs.
pub async fn fetch_any(db: &db::Pool, id: &str) -> ApiResult<Image> {
    store::get(db, id).await?.ok_or_else(|| ApiError::not_found("image", id))?.into_api()
}

/// What an agent needs of image `id` (hva to boot it, sta to fill a volume with it).
pub async fn spec(ctx: &crate::ctx::Ctx, id: &str) -> ApiResult<vdc_schema::bus::ImageSpec> {
    let row = store::get(&ctx.db, id).await?.ok_or_else(|| ApiError::not_found("image", id))?;
    // Stored data: hosts read the blob where the store keeps it. That is a file only
    // hosts sharing dcmgr's file system reach (the all-in-one); others need the HTTP
    // fetch of issue 12, which is not built yet.
    let blob_path = row.blob.as_deref().and_then(|b| ctx.blobs.local_path(b));
    let image = row.into_api()?;
    Ok(vdc_schema::bus::ImageSpec {
        id: image.id,
        format: image.format,
        source: blob_path.map(|p| p.display().to_string()).unwrap_or(image.source),
        checksum: image.checksum,
        initrd: image.initrd,
        kernel_cmdline: image.kernel_cmdline,
    })
}
