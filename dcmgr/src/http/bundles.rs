//! `/api/v1/bundle`: export the caller's VDC, plan and import bundles, the imports made.

use crate::app::bundle as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use vdc_schema::api::{BundleImport, BundleImported, BundleKey, BundlePlan, ErrorBody};

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// Only the model: no data (images then resolve by name at the target, instances boot
    /// their image, volumes arrive empty).
    #[serde(default)]
    pub model_only: bool,
    /// Stop running instances for the capture of their disks (application-consistent), and
    /// start them again afterwards (a halted one, powered off already, is left stopped: its
    /// host is released). Without it a running virtual machine's disk is copied as it runs
    /// (crash-consistent); an instance starting, stopping, rebooting or halted is refused
    /// (`instance_running`).
    #[serde(default)]
    pub stop: bool,
}

/// `map=KEY=VALUE`, repeated, and `prune=true|false`; nothing else.
fn maps(q: Option<String>) -> ApiResult<app::Maps> {
    let mut pairs = Vec::new();
    let mut prune = false;
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match (k.as_ref(), v.as_ref()) {
            ("map", _) => pairs.push(v.into_owned()),
            ("prune", "true") => prune = true,
            ("prune", "false") => prune = false,
            _ => {
                return Err(ApiError::bad(
                    "invalid_query",
                    format!("query parameter {k:?}={v:?} is not understood; use map=KEY=VALUE and prune=true|false"),
                ))
            }
        }
    }
    let mut m = app::parse_maps(&pairs);
    m.prune = prune;
    Ok(m)
}

#[utoipa::path(get, path = "/api/v1/bundle/key", tag = "bundles", operation_id = "bundle_key",
    summary = "This site's bundle signing key",
    description = "Other sites list it in `[bundles] trusted_keys` to accept this site's bundles.",
    responses((status = 200, description = "The public key", body = BundleKey)))]
pub async fn key(State(ctx): State<SharedCtx>, _caller: Caller) -> Json<BundleKey> {
    Json(BundleKey { public_key: vdc_bundle::key_hex(&ctx.site_key.verifying_key()) })
}

#[utoipa::path(get, path = "/api/v1/bundle", tag = "bundles", operation_id = "bundle_export",
    summary = "Export the account's VDC as a bundle",
    description = "Streams a bundle (see docs/bundle-format.md): the model read in one transaction (networks, \
        security groups with their rules, key pairs' public keys, images, instances with their addresses and \
        MACs, volumes, floating IPs), then the data as zstd chunks, signed with this site's key: the account's \
        images, each virtual machine's root disk (captured as an image would be; a running one as it runs, \
        crash-consistent, unless `stop=true`) and each volume's data (through a snapshot). The images and snapshots made to read them are removed afterwards.",
    params(ExportQuery),
    responses(
        (status = 200, description = "The bundle", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 409, description = "`instance_running`: an instance is starting, stopping or \
            rebooting; wait, pass `stop=true`, or `model_only=true`. `export_failed`: a capture failed (everything \
            made for the export is removed)", body = ErrorBody)))]
pub async fn export(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    q: Result<axum::extract::Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = q.map_err(|r| ApiError::bad("invalid_query", r.body_text()))?;
    let (manifest, paths, temp) = app::manifest(&ctx, &caller, q.model_only, q.stop).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let key = ctx.site_key.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let w = ChannelWriter { tx: tx.clone() };
        let started = std::time::Instant::now();
        // A failure mid-stream cuts the body: the reader sees a truncated bundle.
        if let Err(e) = app::write_bundle(std::io::BufWriter::with_capacity(1 << 20, w), &manifest, &key, &paths) {
            tracing::warn!(error = %e, "bundle export failed");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        let written_in = started.elapsed();
        // The export's own images and snapshots go once their data is written (or cut),
        // before the body ends: a client that has read the bundle sees none of them.
        handle.block_on(temp.remove(&ctx, &caller));
        tracing::info!(account = %caller.account_id, ?written_in, removed_in = ?(started.elapsed() - written_in),
            "bundle export: written");
        drop(tx);
    });
    let stream = tokio_stream_from(rx);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], axum::body::Body::from_stream(stream)).into_response())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

macro_rules! bundle_errors {
    () => {
        "The bundle is refused, nothing created: `bundle_bad_magic`, `bundle_truncated`, \
    `bundle_bad_frame`, `bundle_invalid_manifest`, `bundle_unsupported_version`, `bundle_bad_signature`, \
    `bundle_untrusted_key`, `bundle_chunk_mismatch`, `bundle_chunk_unlisted`, `bundle_chunk_duplicate`, \
    `bundle_chunk_missing`, `bundle_chunk_too_large`, `bundle_chunk_not_held`, `bundle_too_many`, `bundle_invalid_name`, \
    `bundle_dangling_reference`, `bundle_duplicate_id`, `bundle_io`; or `invalid_query`"
    };
}
const BUNDLE_PLAN_ERRORS: &str = concat!(
    bundle_errors!(),
    "; or a disk the import would store whose header is refused as an upload's would be (the import \
    checks all of its data): `format_mismatch`, `backing_file`, `external_data_file`, `unsupported_format`, \
    `invalid_image_data`, `virtual_size_too_large`, `empty_image`"
);
const BUNDLE_IMPORT_ERRORS: &str = concat!(
    bundle_errors!(),
    "; or image data the import would store, checked as an upload's (against the format the manifest \
    gives it): `format_mismatch`, `backing_file`, `external_data_file`, `unsupported_format`, \
    `invalid_image_data`, `virtual_size_too_large`, `empty_image`, `unsafe_tar`"
);

#[utoipa::path(post, path = "/api/v1/bundle/plan", tag = "bundles", operation_id = "bundle_plan",
    summary = "Verify a bundle and show what importing it would do",
    description = "The body is the bundle, streamed. Everything is verified before the answer: signature and \
        trust, every chunk's hash, the schema and its limits, references. The answer lists what would be \
        created and the conflicts (CIDR overlaps, names taken, missing hypervisors or images, …), each with \
        the `map=KEY=VALUE` that resolves it when there is one. When an earlier import of the same VDC \
        (same site and source VDC, another bundle) is in the account, the plan is an update against what \
        that import made: `update_of`, `creates`, `updates`, `deletes` (applied only with `prune`), \
        `unchanged`; conflicts then include `replace_needed` (a change an object cannot take in place), \
        `in_use` (a delete of something that stays in use) and `bundle_downgrade` (a bundle exported \
        before the one imported). Nothing is created.",
    params(("map" = Option<Vec<String>>, Query, description = "KEY=VALUE, repeated: `network.NAME.cidr=CIDR`, \
        `KIND.NAME.name=NEW`, `hypervisor.kvm=qemu`, `image.NAME=img-…`, `zone.ZONE=ZONE|any`, `label.KEY=VALUE|any`, \
        `volumes=skip`, `floating_ips=skip`, `downgrade=allow` (a bundle exported before the one imported last is \
        applied anyway)"),
        ("prune" = Option<bool>, Query, description = "An update removes what the earlier import made and the \
        bundle no longer has: instances terminated, floating IPs released, networks, security groups, key pairs, \
        volumes and images deleted; what only instances being terminated use waits for them (`waits: …`), \
        and the next import with prune deletes it")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The bundle"),
    responses(
        (status = 200, description = "The plan", body = BundlePlan),
        (status = 400, description = BUNDLE_PLAN_ERRORS, body = ErrorBody)))]
pub async fn plan(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    RawQuery(q): RawQuery,
    req: Request,
) -> ApiResult<Json<BundlePlan>> {
    let maps = maps(q)?;
    let r = app::receive_body(&ctx, &caller, req.into_body(), false).await?;
    Ok(Json(app::plan(&ctx, &caller, &r, &maps).await?))
}

#[utoipa::path(post, path = "/api/v1/bundle/import", tag = "bundles", operation_id = "bundle_import",
    summary = "Import a bundle into the account",
    description = "Verifies the whole bundle as plan does, then creates everything in one transaction (new IDs; \
        the map from the bundle's is recorded) and brings the instances up. The same bundle again changes \
        nothing (200, `created: false`); an import cut short is completed by the same request. A newer \
        bundle of a VDC imported before applies the plan's update in one transaction (201): the import \
        keeps its ID and takes the new hash and map.",
    params(("map" = Option<Vec<String>>, Query, description = "As for plan"),
        ("prune" = Option<bool>, Query, description = "As for plan")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The bundle"),
    responses(
        (status = 201, description = "Imported", body = BundleImported),
        (status = 200, description = "Imported before: nothing changed", body = BundleImported),
        (status = 400, description = BUNDLE_IMPORT_ERRORS, body = ErrorBody),
        (status = 409, description = "`bundle_unresolved`: the plan has conflicts (see plan), or \
            `no_host`-style capacity answers for its instances, or `bundle_chunk_left_out`: a push left out \
            data that the import needs now (something changed here since it asked): push again, or \
            `instance_terminating`: an instance the import replaces (terminated first) was not gone within 2 \
            minutes: import again once it is", body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use)", body = ErrorBody)))]
pub async fn import(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    RawQuery(q): RawQuery,
    req: Request,
) -> ApiResult<(StatusCode, Json<BundleImported>)> {
    let maps = maps(q)?;
    let t = std::time::Instant::now();
    let r = app::receive_body(&ctx, &caller, req.into_body(), true).await?;
    tracing::info!(account = %caller.account_id, received_in = ?t.elapsed(), chunks = r.chunks, "bundle import: verified and staged");
    let done = app::import(&ctx, &caller, &r, &maps).await?;
    Ok((if done.created { StatusCode::CREATED } else { StatusCode::OK }, Json(done)))
}

#[utoipa::path(post, path = "/api/v1/bundle/chunks/missing", tag = "bundles", operation_id = "bundle_chunks_missing",
    summary = "Which of these chunks this site lacks for the account",
    description = "A push (`vdc bundle push`) asks this before it sends a bundle: the answer lists the chunks \
        (SHA-256) the caller's account does not hold here. The pusher sends those and references the others \
        (frame `R`, docs/bundle-format.md); plan and import read a referenced chunk from the account's store \
        and check its hash again. Held means imported earlier by this account (its blob still stored): a hash \
        of another account's data is always answered missing, and a reference to it refuses the bundle \
        (`bundle_chunk_not_held`).",
    request_body = vdc_schema::api::BundleChunkQuery,
    responses(
        (status = 200, description = "The chunks missing, in the order asked", body = vdc_schema::api::BundleChunksMissing),
        (status = 400, description = "`too_many_chunks` (more than 16384), `invalid_request` (not a hex SHA-256), `invalid_body`", body = ErrorBody)))]
pub async fn missing(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    crate::http::Body(q): crate::http::Body<vdc_schema::api::BundleChunkQuery>,
) -> ApiResult<Json<vdc_schema::api::BundleChunksMissing>> {
    Ok(Json(app::missing(&ctx, &caller, q).await?))
}

#[utoipa::path(post, path = "/api/v1/bundle/chunks/wanted", tag = "bundles", operation_id = "bundle_chunks_wanted",
    summary = "Which chunks of this bundle an import here would use",
    description = "A push (`vdc bundle push`) sends this the bundle's head (the magic, the manifest and its \
        signature frames; anything after them is not read) with the maps it will import with. The head is \
        verified as plan verifies it (signature, trust, schema). The answer lists the chunks of the data an import \
        into the caller's account would store now (new images, the disks of instances created or replaced, the \
        data of volumes created): `send`, those to carry, and `held`, those the account holds here (sent as \
        `R` frames). The pusher leaves every other chunk out (frame `N`, docs/bundle-format.md): the disks of \
        instances and the data of volumes this site keeps as they are do not travel. When something changes \
        here between this answer and the import so that it needs a chunk left out, plan shows and import \
        refuses `bundle_chunk_left_out` with nothing created: push again.",
    params(("map" = Option<Vec<String>>, Query, description = "As for plan"),
        ("prune" = Option<bool>, Query, description = "As for plan")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The bundle's head"),
    responses(
        (status = 200, description = "The chunks to carry and to reference", body = vdc_schema::api::BundleChunksWanted),
        (status = 400, description = "`invalid_query`, or the head refused: `bundle_bad_magic`, `bundle_truncated`, \
            `bundle_bad_frame`, `bundle_invalid_manifest`, `bundle_unsupported_version`, `bundle_bad_signature`, \
            `bundle_untrusted_key`, `bundle_too_many`, `bundle_invalid_name`, `bundle_dangling_reference`, \
            `bundle_duplicate_id`, `bundle_io`", body = ErrorBody)))]
pub async fn wanted(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    RawQuery(q): RawQuery,
    req: Request,
) -> ApiResult<Json<vdc_schema::api::BundleChunksWanted>> {
    let maps = maps(q)?;
    Ok(Json(app::wanted(&ctx, &caller, req.into_body(), &maps).await?))
}

#[utoipa::path(get, path = "/api/v1/bundle/imports", tag = "bundles", operation_id = "bundle_import_list",
    summary = "The bundles imported into the account",
    responses((status = 200, description = "The imports, oldest first", body = Vec<BundleImport>)))]
pub async fn list(State(ctx): State<SharedCtx>, caller: Caller) -> ApiResult<Json<Vec<BundleImport>>> {
    Ok(Json(app::list(&ctx, &caller).await?))
}

#[utoipa::path(get, path = "/api/v1/bundle/imports/{id}", tag = "bundles", operation_id = "bundle_import_show",
    summary = "One import: the bundle's IDs and the IDs created for them",
    params(("id" = vdc_schema::id::BundleImportId, Path, description = "An import ID (`imp-…`)")),
    responses(
        (status = 200, description = "The import", body = BundleImport),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<BundleImport>> {
    Ok(Json(app::show(&ctx, &caller, &id).await?))
}
