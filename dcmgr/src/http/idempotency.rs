//! `Idempotency-Key` on POST requests (other methods, idempotent already, ignore it): a script that retries a create after a timeout
//! (the answer lost, the create done) sends the same key, and gets the first answer again
//! instead of a second instance it pays quota for (red team, 2026-12-07). As Stripe's
//! and EC2's `ClientToken`: the key is the caller's credential's (the token it sends, in
//! the account it acts in: another credential of the same user got the first answer
//! again, a new token's secret among them, red team 2026-12-07), names one
//! request (the same method, path and body; another request with it is refused,
//! `idempotency_key_reused`), and is kept 24 hours. Only a success is kept: a refused or
//! failed request lets its key go, and the retry runs again. An answer that holds a
//! secret (a token's, a generated private key) is shown once and not kept: its replay
//! is `409 idempotency_secret_not_kept`, naming what was made. A retry while the first is
//! under way is answered `409 idempotency_key_in_use`. Requests without the header are
//! untouched.

use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, idempotency as store};
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub const HEADER: &str = "Idempotency-Key";
/// Set on an answer given again.
pub const REPLAYED: &str = "Idempotent-Replayed";
/// The longest key taken.
pub const MAX_KEY: usize = 255;
/// The largest body or answer kept (a JSON body's own limit is 2 MiB; answers are small).
const MAX_BODY: usize = 2 << 20;
const KEEP_HOURS: i64 = 24;
/// A claim still running after this long was left by a dcmgr that stopped mid-request.
const ABANDONED_MINUTES: i64 = 5;

fn refused(message: &str) -> Response {
    ApiError::bad("invalid_idempotency_key", message.to_owned()).into_response()
}

/// The JSON fields of answers that hold a secret shown once.
const SECRETS: [&str; 2] = ["secret", "private_key"];

/// For an answer that holds a secret, the refusal its replays get instead (the secret is
/// neither stored nor shown again); None for any other answer.
async fn secret_not_kept(answer: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(answer).ok()?;
    let obj = v.as_object()?;
    SECRETS.iter().any(|k| obj.get(*k).is_some_and(|s| !s.is_null())).then_some(())?;
    // What was made: the ID of the object the answer describes.
    let made = obj.values().find_map(|o| o.get("id")?.as_str()).unwrap_or("the object");
    let refusal = ApiError::conflict(
        "idempotency_secret_not_kept",
        format!(
            "the request with this Idempotency-Key was done ({made} made), and its answer held a secret, which is \
             shown once and not kept: use {made} (revoke a token whose secret is lost) or send a new key"
        ),
    )
    .into_response();
    let body = axum::body::to_bytes(refusal.into_body(), MAX_BODY).await.ok()?;
    String::from_utf8(body.to_vec()).ok()
}

pub async fn layer(State(ctx): State<SharedCtx>, req: Request, next: Next) -> Response {
    let Some(key) = req.headers().get(HEADER) else { return next.run(req).await };
    if req.headers().get_all(HEADER).iter().nth(1).is_some() {
        return refused("send one Idempotency-Key: this request has several");
    }
    let Some(key) = key
        .to_str()
        .ok()
        .filter(|k| (1..=MAX_KEY).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
    else {
        return refused("an Idempotency-Key is 1 to 255 visible ASCII characters");
    };
    // Other methods are idempotent already (or not routed at all: 405): the key changes
    // nothing for them.
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    // A JSON body, or none.
    if super::json_content_type(req.headers()) == Some(false) {
        return refused("an Idempotency-Key is taken with a JSON body only (a bundle's import is idempotent already)");
    }
    // Without a credential the request is refused anyway (401), or is a sign-in.
    if !req.headers().contains_key(header::AUTHORIZATION) {
        return next.run(req).await;
    }
    // The caller first (its token checked, its rate and role): a replay is answered only
    // to whom the request would be, and the key is the credential's in the account it acts in.
    // The handler takes this caller from the request (not checked, nor counted, twice).
    // One refused (or a sign-in's, which takes no token) goes on as it came: the handler
    // answers it as it would without a key.
    let (mut parts, body) = req.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &ctx).await {
        Ok(c) => c,
        Err(_) => return next.run(Request::from_parts(parts, body)).await,
    };
    parts.extensions.insert(caller.clone());
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return ApiError::bad("invalid_body", "the request body is over 2 MiB, the most a JSON body may be")
            .into_response();
    };
    let hash = |parts: &[&[u8]]| {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        hex::encode(h.finalize())
    };
    let credential = caller.token_id.as_ref().map(|t| t.to_string()).unwrap_or_default();
    let id = hash(&[
        caller.account_id.as_str().as_bytes(),
        caller.user_id.as_str().as_bytes(),
        credential.as_bytes(),
        key.as_bytes(),
    ]);
    let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    let fingerprint = hash(&[parts.method.as_str().as_bytes(), target.as_bytes(), &bytes]);
    let now = chrono::Utc::now();
    let expired = db::time(&(now - chrono::Duration::hours(KEEP_HOURS)));
    let abandoned = db::time(&(now - chrono::Duration::minutes(ABANDONED_MINUTES)));
    match store::claim(&ctx.db, &id, &fingerprint, &db::time(&now), &expired, &abandoned).await {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(store::Claim::Other) => {
            return ApiError::Unprocessable {
                code: "idempotency_key_reused",
                message: "this Idempotency-Key was used for another request (method, path or body) in the last 24 \
                          hours; send a new key"
                    .into(),
            }
            .into_response()
        }
        Ok(store::Claim::Running) => {
            return ApiError::conflict(
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is under way; retry when it has ended",
            )
            .into_response()
        }
        Ok(store::Claim::Done { status, body }) => {
            return Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
                .header(header::CONTENT_TYPE, "application/json")
                .header(REPLAYED, "true")
                .body(Body::from(body))
                .unwrap_or_else(|e| ApiError::internal(e).into_response());
        }
        Ok(store::Claim::New) => {}
    }
    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = resp.status();
    if status.is_success() {
        let (parts, body) = resp.into_parts();
        if let Ok(answer) = axum::body::to_bytes(body, MAX_BODY).await {
            if let Ok(text) = std::str::from_utf8(&answer) {
                let (kept_status, kept) = match secret_not_kept(text).await {
                    Some(refusal) => (StatusCode::CONFLICT.as_u16(), refusal),
                    None => (status.as_u16(), text.to_owned()),
                };
                match store::finish(&ctx.db, &id, kept_status, &kept).await {
                    Ok(()) => return Response::from_parts(parts, Body::from(answer)),
                    Err(e) => tracing::warn!("keeping an idempotent answer: {e}"),
                }
            }
            let _ = store::forget(&ctx.db, &id).await;
            return Response::from_parts(parts, Body::from(answer));
        }
        let _ = store::forget(&ctx.db, &id).await;
        return ApiError::internal("the answer could not be read").into_response();
    }
    if let Err(e) = store::forget(&ctx.db, &id).await {
        tracing::warn!("letting an idempotency key go: {e}");
    }
    resp
}
