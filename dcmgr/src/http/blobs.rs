//! `/agent/v1/`: image data for agents, with their node credential (`app::node_auth`):
//! `blobs/{sha256}` to read (resumable with `Range: bytes=N-`), and a capture's upload
//! (`images/{id}/file`) or failure (`images/{id}/capture-failure`) from the agent that
//! holds the source: the instance's host, or the snapshot's storage node.

use crate::ctx::SharedCtx;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

pub async fn get(State(ctx): State<SharedCtx>, Path(sha): Path<String>, headers: HeaderMap) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let node = match crate::app::node_auth::verify(&ctx, auth) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    // Only `bytes=N-` (what a resuming agent sends); any other range gets the whole blob.
    let offset = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<u64>().ok());
    let (len, stream) = match ctx.blobs.open(&sha, offset.unwrap_or(0)).await {
        Ok(Some(x)) => x,
        Ok(None) => return ApiError::not_found("blob", &sha).into_response(),
        Err(e) => return ApiError::internal(format!("blob {sha}: {e}")).into_response(),
    };
    let start = offset.unwrap_or(0);
    if start > len || (offset.is_some() && start == len && len > 0) {
        return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{len}"))])
            .into_response();
    }
    tracing::debug!(%node, blob = %sha, from = start, "serving a blob");
    let body = Body::from_stream(stream);
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len - start)
        .header(header::ACCEPT_RANGES, "bytes");
    resp = match offset {
        Some(o) => resp
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {o}-{}/{len}", len.saturating_sub(1))),
        None => resp.status(StatusCode::OK),
    };
    resp.body(body).unwrap_or_else(|e| ApiError::internal(e).into_response())
}

fn node(ctx: &SharedCtx, headers: &HeaderMap) -> Result<String, ApiError> {
    crate::app::node_auth::verify(ctx, headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()))
}

/// `PUT /agent/v1/images/{id}/file`: a captured disk, checked like any upload.
pub async fn capture_upload(
    State(ctx): State<SharedCtx>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Response {
    let res = match (node(&ctx, &headers), crate::http::path_id("image", &id)) {
        (Ok(node), Ok(id)) => crate::app::capture::receive(&ctx, &node, &id, req.into_body().into_data_stream()).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match res {
        Ok(image) => axum::Json(image).into_response(),
        Err(e) => {
            // The body may be unread: the connection cannot carry another request.
            let mut r = e.into_response();
            r.headers_mut().insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            r
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureFailure {
    reason: String,
}

/// `POST /agent/v1/images/{id}/capture-failure`: the host could not produce the disk.
/// The body is read as bytes and parsed after the node's token is checked: a caller
/// without one learns nothing of what the route takes (it was answered 415 first).
pub async fn capture_failure(
    State(ctx): State<SharedCtx>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parsed = |b: &[u8]| {
        serde_json::from_slice::<CaptureFailure>(b)
            .map_err(|e| crate::error::ApiError::bad("invalid_body", format!("the capture failure: {e}")))
    };
    let res = match (node(&ctx, &headers), crate::http::path_id("image", &id)) {
        (Ok(node), Ok(id)) => match parsed(&body) {
            Ok(body) => crate::app::capture::failed(&ctx, &node, &id, &body.reason).await,
            Err(e) => Err(e),
        },
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match res {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}
