//! `/api/v1/events`: the account's changes as Server-Sent Events.

use crate::app::event::{self as app, Item};
use crate::ctx::{Caller, SharedCtx};
use crate::error::{ApiError, ApiResult};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use std::convert::Infallible;

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this event ID (as the `Last-Event-ID` header does; the header wins).
    /// `0`: every event still kept. Without either: only events from now on.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// `false`: send the events already recorded, then end the response. Default `true`:
    /// keep the response open and send each event as it happens.
    pub follow: Option<bool>,
}

/// One message of the stream as an SSE client reads it (`id:`, `event:`, `data:` lines);
/// documented so a client (and the API fuzzer) checks the messages, not their payload.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EventMessage {
    /// The event's `seq` (absent on `lost`).
    id: Option<String>,
    /// The event's `kind`, or `lost`.
    event: String,
    /// The `Event` (schema `Event`) as JSON; on `lost`, `{"resumed_after": N, "oldest_kept": M}`.
    data: String,
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events", operation_id = "event_stream",
    summary = "Follow the account's changes (Server-Sent Events)",
    description = "A `text/event-stream` of the caller's account's events (an admin's: every account's): \
        each resource created, changing state or deleted, and each job started or ended, in the order they \
        were committed. Each SSE message has `id` = the event's `seq`, `event` = its `kind`, and `data` = the \
        `Event` as JSON. Reconnect with `Last-Event-ID` (or `?after=`) to get exactly the events missed; \
        events older than the configured retention are pruned, and a client resuming before the oldest \
        kept one first gets a message `event: lost` with `data` `{\"resumed_after\": N, \"oldest_kept\": M}`. \
        A comment line is sent every 15 s to keep idle connections open.",
    params(EventsQuery),
    responses(
        (status = 200, description = "The event stream; each message's `data` is an `Event` as JSON",
            content_type = "text/event-stream", body = EventMessage),
        (status = 400, description = "`invalid_query`, `invalid_last_event_id` (malformed, or ahead of the newest event here)", body = vdc_schema::api::ErrorBody),
        (status = 429, description = "`too_many_streams`: the account has as many event streams open as `[http] \
            event_streams_per_account` allows; or `rate_limited`", body = vdc_schema::api::ErrorBody)))]
pub async fn stream(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    headers: HeaderMap,
    q: EventsParams,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let q = q.0;
    let header = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
            ApiError::bad(
                "invalid_last_event_id",
                "Last-Event-ID must be an event ID (a whole number) from this stream",
            )
        })?),
    };
    let after = match q.after {
        None => None,
        Some(a) => Some(
            u64::try_from(a)
                .map_err(|_| ApiError::bad("invalid_query", "after must be an event ID (a whole number, 0 or more)"))?,
        ),
    };
    // An admin's stream counts as its own account's.
    let permit = ctx.streams.admit(caller.account_id.to_string()).ok_or_else(|| {
        ApiError::too_many(
            "too_many_streams",
            format!(
                "the account has {} event streams open, the most allowed; close one (or poll)",
                ctx.config.http.event_streams_per_account
            ),
        )
    })?;
    let rx = app::subscribe(&ctx, &caller, header.or(after), q.follow.unwrap_or(true)).await?;
    // Asked again before each event: the stream ends when its token no longer lets the
    // caller in (signed out, revoked, expired, removed from the account).
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(super::bearer)
        .map(str::to_owned);
    let state = (rx, ctx, caller, token, permit);
    let events = futures::stream::unfold(state, |(mut rx, ctx, caller, token, permit)| async move {
        let item = rx.recv().await?;
        let admitted = match &token {
            Some(t) => crate::app::account::still_admits(&ctx, t, &caller).await,
            None => false,
        };
        if !admitted {
            tracing::info!(user = %caller.user_id, "event stream ended: its token no longer admits the caller");
            return None;
        }
        let sse = match item {
            Item::Event(e) => SseEvent::default()
                .id(e.seq.to_string())
                .event(e.kind.clone())
                .json_data(&e)
                .unwrap_or_else(|_| SseEvent::default().comment("unencodable event")),
            Item::Lost { resumed_after, oldest_kept } => SseEvent::default()
                .event("lost")
                .data(serde_json::json!({ "resumed_after": resumed_after, "oldest_kept": oldest_kept }).to_string()),
        };
        Some((Ok(sse), (rx, ctx, caller, token, permit)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The query of [`stream`]; a malformed one answers 400 `invalid_query`.
pub struct EventsParams(EventsQuery);

impl<S: Send + Sync> FromRequestParts<S> for EventsParams {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let q = Query::<EventsQuery>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::bad("invalid_query", r.body_text()))?;
        Ok(EventsParams(q.0))
    }
}
