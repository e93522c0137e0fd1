//! Images as agents get them: hva boots one, sta fills a volume with one.

use crate::datastore::{self as db, image as store};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::Image;

/// Any image by ID, for building agent specs.
pub async fn fetch_any(db: &db::Pool, id: &str) -> ApiResult<Image> {
    store::get(db, id).await?.ok_or_else(|| ApiError::not_found("image", id))?.into_api()
}

/// What an agent needs of image `id` (hva to boot it, sta to fill a volume with it).
pub async fn spec(db: &db::Pool, id: &str) -> ApiResult<vdc_schema::bus::ImageSpec> {
    let image = fetch_any(db, id).await?;
    // The kernel of a disk image booted by kernel_id: one level only (a kernel image
    // names no kernel), so no recursion.
    let kernel = match &image.kernel_id {
        Some(k) => Some(Box::new(plain_spec(fetch_any(db, k.as_str()).await?))),
        None => None,
    };
    Ok(vdc_schema::bus::ImageSpec { kernel, ..plain_spec(image) })
}

fn plain_spec(image: Image) -> vdc_schema::bus::ImageSpec {
    vdc_schema::bus::ImageSpec {
        id: image.id,
        format: image.format,
        source: image.source,
        checksum: image.checksum,
        initrd: image.initrd,
        kernel_cmdline: image.kernel_cmdline,
        boot_mode: image.boot_mode,
        kernel: None,
    }
}
