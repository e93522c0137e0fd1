//! Application decisions, per resource: validation of what a request asks, and the
//! decision (already done, apply, refuse) made on the state read inside the request's
//! transaction. Nothing here knows HTTP; SQL lives in [`crate::datastore`].

pub mod account;
pub mod audit;
pub mod authz;
pub mod blob_refs;
pub mod bundle;
pub mod bundle_data;
pub mod bundle_stage;
pub mod capture;
pub mod event;
pub mod floating_ip;
pub mod image;
pub mod image_check;
pub mod image_import;
pub mod instance;
pub mod interface;
pub mod job;
pub mod keypair;
pub mod lifecycle;
pub mod network;
pub mod node;
pub mod node_auth;
pub mod quota;
pub mod rate_limit;
pub mod retention;
pub mod room;
pub mod scheduler;
pub mod secgroup;
pub mod server_group;
pub mod session;
pub mod site_secret;
pub mod site_settings;
pub mod snapshot;
pub mod token;
pub mod user;
pub mod views;
pub mod volume;

use crate::datastore as db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{ListQuery, Page};

/// What a state-changing request did, for the handler to answer: `Applied` (202, the job
/// follows the change) or `Already` (200, nothing to change, the job already finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Already,
    Applied,
}

pub const DEFAULT_LIMIT: u32 = 100;

/// How long a terminated instance or a deleted volume or snapshot stays in its list without a state
/// filter (as a cloud's console shows what just ended); later it is listed only when
/// that state is asked for, and found by ID. Without it, lists grew with every instance
/// ever made.
pub const GONE_LISTED_FOR: chrono::Duration = chrono::Duration::hours(1);

/// The time before which gone resources leave unfiltered lists (see [`GONE_LISTED_FOR`]).
pub fn gone_listed_since() -> String {
    crate::datastore::time(&(chrono::Utc::now() - GONE_LISTED_FOR))
}
pub const MAX_LIMIT: u32 = 1000;

/// Validated paging: (limit, cursor). The cursor is the last ID of the previous page.
pub fn paging(q: &ListQuery) -> ApiResult<(i64, String)> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad("invalid_limit", format!("limit must be between 1 and {MAX_LIMIT}, got {limit}")));
    }
    if q.all_accounts.is_some() || q.address.is_some() {
        return Err(ApiError::bad("invalid_query", "all_accounts and address filter instance lists only"));
    }
    if q.member_status.is_some() {
        return Err(ApiError::bad("invalid_query", "member_status filters the list of images only"));
    }
    // Lists that filter by state take `state` off first ([`state_filter`]): on the others
    // it was ignored, so `images?state=failed` listed available images too.
    if q.state.is_some() {
        return Err(ApiError::bad(
            "invalid_query",
            "state filters the lists of instances, volumes, snapshots, jobs and hosts only",
        ));
    }
    let cursor = q.cursor.clone().unwrap_or_default();
    if cursor.len() > 64 || !cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ApiError::bad("invalid_cursor", "cursor must be the next_cursor of a previous page"));
    }
    Ok((limit as i64, cursor))
}

/// As [`paging`], with a cursor that is an ID of the listed kind `T` (the last one of
/// the previous page): another string was taken as a place in the order, and a cursor
/// of another list answered an empty page as if the list had ended.
pub fn paging_of<T: std::str::FromStr>(q: &ListQuery) -> ApiResult<(i64, String)> {
    let (limit, cursor) = paging(q)?;
    if !cursor.is_empty() && cursor.parse::<T>().is_err() {
        return Err(ApiError::bad(
            "invalid_cursor",
            "cursor must be the next_cursor of a previous page of the same list",
        ));
    }
    Ok((limit, cursor))
}

/// Builds a page: `rows` were fetched with `LIMIT limit`, so a full page may have more.
pub fn page<T>(items: Vec<T>, limit: i64, id_of: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() as i64 == limit { items.last().map(&id_of) } else { None };
    Page { items, next_cursor }
}

/// Names: 1–64 printable characters, no leading or trailing space, no white space but
/// the plain space, and no invisible formatting characters: a name is how people (and
/// the CLI) tell resources apart, so two names must not look alike while differing. And
/// nothing path-like ('/', '\\', ".."): the rule is the bundle's ([`vdc_bundle::check_name`]),
/// so every VDC can be exported (a network named "web/front" made the account's export
/// fail, and there is no rename).
pub fn validate_name(kind: &str, name: &str) -> ApiResult<()> {
    vdc_bundle::check_name(kind, name).map_err(|e| ApiError::bad("invalid_name", e.to_string()))
}

/// Refuses a name the account already uses for a resource of this kind (see
/// [`db::named`]); called inside the creating transaction.
pub async fn check_name_free(
    tx: &mut db::Tx<'_>,
    what: db::Named,
    account: &vdc_schema::id::AccountId,
    name: &str,
) -> ApiResult<()> {
    let a_kind = match what {
        db::Named::Network => "a network",
        db::Named::SecurityGroup => "a security group",
        db::Named::Volume => "a volume",
        db::Named::Image => "an image",
    };
    match db::named(tx, what, account.as_str(), name).await? {
        Some(id) if what == db::Named::Image && db::image::is_deleted(tx, &id).await? => Err(ApiError::conflict(
            "name_taken",
            format!(
                "the name {name:?} is still held by deleted image {id}, which instances, volumes being made \
                 or disk images (as their kernel) use; it is freed once none does, or choose another name"
            ),
        )),
        Some(id) => Err(ApiError::conflict(
            "name_taken",
            format!("{a_kind} named {name:?} already exists ({id}); choose another name or delete that one"),
        )),
        None => Ok(()),
    }
}

/// Optional state filter, checked against the resource's state names.
pub fn state_filter<S: std::str::FromStr<Err = vdc_schema::ParseEnumError>>(q: &ListQuery) -> ApiResult<String> {
    match &q.state {
        None => Ok(String::new()),
        Some(s) => {
            s.parse::<S>().map_err(|e| ApiError::bad("invalid_state_filter", e.to_string()))?;
            Ok(s.clone())
        }
    }
}

/// "instances i-1, i-2 and 3 more": names what uses a resource in a 409's message.
pub fn name_some<'a>(kind: &str, ids: impl Iterator<Item = &'a str>) -> String {
    let ids: Vec<&str> = ids.collect();
    let plural = if ids.len() == 1 { "" } else { "s" };
    let shown: Vec<&str> = ids.iter().take(5).copied().collect();
    let more = ids.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{kind}{plural} {} and {more} more", shown.join(", "))
    } else {
        format!("{kind}{plural} {}", shown.join(", "))
    }
}
