//! Passwords and console sessions (issue 14). A user may have a password, kept as an
//! Argon2id PHC string (never logged, never answered). Signing in with it
//! (`POST /api/v1/sessions`) makes a session: an ordinary row of `api_tokens`, named
//! `session-…`, expiring after `[auth] session_ttl_secs`, of the user in one account.
//! Switching accounts makes a new session and revokes the old one in one transaction;
//! signing out revokes the session.
//!
//! Sign-ins are limited per user name and per source address (`[auth] signin_*`, always
//! on), answer the same 401 `bad_credentials` for an unknown user and a wrong password,
//! and verify against a dummy hash when the user does not exist or has no password, so
//! that the time taken does not tell either.

use crate::app::account::{hash_token, new_token};
use crate::app::rate_limit::Key;
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, account as accounts, user as store};
use crate::error::{ApiError, ApiResult};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::sync::OnceLock;
use vdc_schema::api::{CreateSession, Session, SetPassword, SwitchSession, WhoamiAccount};
use vdc_schema::id::{AccountId, TokenId, UserId};
use vdc_schema::state::Role;

/// Fewer characters than this: `password_too_short`.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// More bytes than this: `password_too_long` (Argon2 takes any length; this bounds the
/// work a request can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The name prefix of session tokens (reserved: `vdc token create` refuses it).
pub const SESSION_PREFIX: &str = "session-";

/// Refuses a password too short or too long, only white space, or holding control
/// characters (NUL, line breaks: what no one types at a sign-in form), with what to do.
pub fn check_password(p: &str) -> ApiResult<()> {
    let chars = p.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(ApiError::bad(
            "password_too_short",
            format!("the password has {chars} characters: use at least {MIN_PASSWORD_CHARS}"),
        ));
    }
    if p.chars().all(char::is_whitespace) {
        return Err(ApiError::bad(
            "invalid_password",
            format!("the password is only white space: use at least {MIN_PASSWORD_CHARS} characters, not all spaces"),
        ));
    }
    if p.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "invalid_password",
            "the password holds a control character (NUL, tab, line break…): use printable characters",
        ));
    }
    if p.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::bad(
            "password_too_long",
            format!("the password has {} bytes: use at most {MAX_PASSWORD_BYTES}", p.len()),
        ));
    }
    Ok(())
}

/// The Argon2id PHC string of a password (default parameters: 19 MiB, 2 passes), off the
/// async threads.
pub async fn hash_password(p: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(p.as_bytes(), &salt).map(|h| h.to_string()).map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

/// Whether `p` is the password of `phc`; a malformed PHC string matches nothing.
fn verify(p: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(p.as_bytes(), &h).is_ok())
}

/// A hash of a random password, verified against when there is no user (or no password),
/// so a sign-in takes as long whether or not the user exists.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(new_token().as_bytes(), &salt).map(|h| h.to_string()).unwrap_or_default()
    })
}

/// Computes the dummy hash now (at start), so the first sign-in of an unknown user takes
/// no longer than the others.
pub fn warm_up() {
    tokio::task::spawn_blocking(|| {
        dummy_hash();
    });
}

fn bad_credentials() -> ApiError {
    ApiError::TokenRefused { code: "bad_credentials", message: "the user name or the password is wrong".into() }
}

/// Sets a user's password (`None` removes it): the user itself, with a token not capped
/// below its role, or an admin for anyone. A non-admin naming another user is refused.
pub async fn set_password(ctx: &SharedCtx, caller: &Caller, id: &UserId, req: SetPassword) -> ApiResult<()> {
    if !caller.admin {
        if *id != caller.user_id {
            return Err(ApiError::Forbidden("only an admin sets another user's password".into()));
        }
        if caller.token_role.is_some() {
            return Err(ApiError::Forbidden(
                "a token capped to a role cannot change its user's password: use an uncapped token or a session".into(),
            ));
        }
    }
    // Users changing their own password give the one they have: whoever got hold of one
    // of their sessions or tokens must not lock them out (the others are revoked below).
    if let Some(p) = &req.password {
        check_password(p.as_str())?;
    }
    let was = if *id == caller.user_id { current_password(ctx, id, req.current_password).await? } else { None };
    let phc = match req.password {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    // A new password ends the user's other sessions (someone who knew the old one may
    // hold one); the session the user changed it with stays. API tokens are not sessions:
    // they are revoked one by one.
    let keep = (caller.user_id == *id).then_some(caller.token_id.as_ref()).flatten();
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        match &was {
            // Of concurrent changes that gave the same current password, one wins.
            Some(was) => {
                if !store::replace_password(tx.conn().await?, id.as_str(), was, phc.as_deref()).await? {
                    return Err(ApiError::conflict(
                        "password_changed",
                        "the password was changed meanwhile: give the new current password",
                    ));
                }
            }
            None => {
                if !store::set_password(tx.conn().await?, id.as_str(), phc.as_deref()).await? {
                    return Err(ApiError::not_found("user", id));
                }
            }
        }
        store::revoke_sessions(&mut tx, id.as_str(), keep.map(|t| t.as_str()), &db::now()).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    let mut cache = ctx.tokens.write().unwrap();
    cache.retain(|_, c| !(c.user_id == *id && c.expires_at.is_some() && c.token_id.as_ref() != keep));
    Ok(())
}

/// The PHC string of user `id`'s password once `given` is checked against it (None: the
/// user has none, so there is nothing to check). Checks are limited per user as sign-ins
/// are, in a bucket of their own (so that changing a password does not use up sign-ins).
async fn current_password(ctx: &SharedCtx, id: &UserId, given: Option<String>) -> ApiResult<Option<String>> {
    let Some((name, Some(phc))) = store::password_of(&ctx.db, id.as_str()).await? else {
        return Ok(None);
    };
    let Some(given) = given else {
        return Err(ApiError::bad(
            "current_password_required",
            "give your current password (current_password) to change or remove it",
        ));
    };
    ctx.signin_limits.check(&Key::PasswordOf(name))?;
    let stored = phc.clone();
    let matches = tokio::task::spawn_blocking(move || given.len() <= MAX_PASSWORD_BYTES && verify(&given, &stored))
        .await
        .map_err(ApiError::internal)?;
    if !matches {
        return Err(ApiError::Denied { code: "wrong_password", message: "the current password is wrong".into() });
    }
    Ok(Some(phc))
}

/// Who a sign-in turned out to be, for its audit entry (set as soon as it is known).
pub trait Witness: Send + Sync {
    fn saw(&self, user: Option<&UserId>, token: Option<&TokenId>, account: Option<&AccountId>);
}

/// `POST /api/v1/sessions`: checks the limits, then the password, then makes a session.
pub async fn sign_in(
    ctx: &SharedCtx,
    req: CreateSession,
    addr: Option<std::net::IpAddr>,
    who: &dyn Witness,
) -> ApiResult<Session> {
    if let Some(a) = addr {
        ctx.signin_limits.check(&Key::Addr(a))?;
    }
    // Names longer than any user's are cut: a bucket per guessed name stays small.
    let name: String = req.user.chars().take(64).collect();
    // A name's guesses count per address: from one address they locked the user out
    // from every other (5 a minute were enough). Over all addresses a looser limit holds.
    let from = match addr {
        Some(a) => Key::UserFrom(name.clone(), a),
        None => Key::User(name.clone()),
    };
    ctx.signin_limits.check(&from)?;
    ctx.signin_user_limits.check(&Key::User(name))?;
    let found = if req.user.len() <= 64 { store::credentials(&ctx.db, &req.user).await? } else { None };
    // The account a known user signs in to is named before the password is checked, so a
    // failed attempt shows in that account's audit log; which one (or why none) is told
    // only to the right password.
    let mut account = None;
    if let Some((u, _)) = &found {
        let user_id: UserId = u.id.parse().map_err(ApiError::internal)?;
        let picked = pick_account(ctx, &user_id, req.account.as_deref()).await;
        who.saw(Some(&user_id), None, picked.as_ref().ok());
        account = Some(picked);
    }
    let phc = found.as_ref().and_then(|(_, p)| p.clone());
    let has_password = phc.is_some();
    let password = req.password.clone();
    let matches = tokio::task::spawn_blocking(move || {
        let phc = phc.unwrap_or_else(|| dummy_hash().to_owned());
        password.len() <= MAX_PASSWORD_BYTES && verify(&password, &phc)
    })
    .await
    .map_err(ApiError::internal)?;
    let user = match found {
        Some((u, _)) if matches && has_password => u,
        _ => return Err(bad_credentials()),
    };
    let user_id: UserId = user.id.parse().map_err(ApiError::internal)?;
    let account = account.ok_or_else(bad_credentials)??;
    let session = issue(ctx, &user_id, &account, None).await?;
    who.saw(Some(&user_id), Some(&session.id), Some(&session.account.id));
    Ok(session)
}

/// The account named (by ID or name) among the user's, or the first the user was made a
/// member of. Not the first by name: any owner may add a user to their account, and the
/// user's next sign-in then worked there without noticing.
async fn pick_account(ctx: &SharedCtx, user: &UserId, wanted: Option<&str>) -> ApiResult<AccountId> {
    let mine = store::accounts_of(&ctx.db, user.as_str()).await?;
    let first = match wanted {
        Some(_) => None,
        None => store::first_account_of(&ctx.db, user.as_str()).await?,
    };
    let found = match wanted {
        Some(w) => mine.iter().find(|(id, name, _)| id == w || name == w),
        None => mine.iter().find(|(id, _, _)| Some(id) == first.as_ref()),
    };
    match (found, wanted) {
        (Some((id, _, _)), _) => id.parse().map_err(ApiError::internal),
        (None, Some(w)) => Err(ApiError::not_found("account", w.chars().take(64).collect::<String>())),
        (None, None) => Err(ApiError::Unprocessable {
            code: "no_account",
            message: "this user is a member of no account: ask an account's owner to add you".into(),
        }),
    }
}

/// Makes a session of `user` in `account`, and revokes `replaces` (the session switched
/// from, whose end, `until`, the new one keeps: switching again and again made one
/// stolen session live for ever) in the same transaction: of concurrent switches of one
/// session exactly one wins.
async fn issue(
    ctx: &SharedCtx,
    user: &UserId,
    account: &AccountId,
    replaces: Option<(&TokenId, Option<chrono::DateTime<chrono::Utc>>)>,
) -> ApiResult<Session> {
    let secret = new_token();
    let hash = hash_token(&secret);
    let ttl = chrono::Duration::seconds(i64::try_from(ctx.config.auth.session_ttl_secs).unwrap_or(i64::MAX / 1000));
    let keep = i64::from(ctx.config.auth.max_sessions_per_user);
    let id = TokenId::generate();
    let name = format!("{SESSION_PREFIX}{}", id.as_str().trim_start_matches("tok-"));
    let (role, expires_s) = db::retry(|| async {
        let now = chrono::Utc::now();
        let now_s = db::time(&now);
        let until = replaces.and_then(|r| r.1).map_or(now + ttl, |u| u.min(now + ttl));
        let expires_s = db::time(&until);
        let mut tx = db::begin(&ctx.db).await?;
        accounts::lock(&mut tx, account).await?;
        if let Some((old, _)) = replaces {
            if !store::revoke_in(&mut tx, old.as_str(), &now_s).await? {
                return Err(ApiError::TokenRefused {
                    code: "token_revoked",
                    message: "this session was signed out or switched already".into(),
                });
            }
        }
        let member = store::member(tx.conn().await?, account.as_str(), user.as_str())
            .await?
            .ok_or_else(|| ApiError::not_found("account", account))?;
        let role: Role = member.role.parse().map_err(ApiError::internal)?;
        // The newest sessions stay; this one is one of them.
        store::trim_sessions(&mut tx, account.as_str(), user.as_str(), keep - 1, &now_s).await?;
        let row = store::NewToken {
            id: id.as_str(),
            hash: &hash,
            name: &name,
            account: account.as_str(),
            user: user.as_str(),
            role: None,
            expires_at: Some(&expires_s),
            now: &now_s,
        };
        store::insert_token(tx.conn().await?, &row).await?;
        tx.commit().await?;
        Ok((role, expires_s))
    })
    .await?;
    // Trimmed sessions and the replaced one leave the cache (they are re-read as revoked).
    {
        let mut cache = ctx.tokens.write().unwrap();
        cache.retain(|_, c| !(c.user_id == *user && c.expires_at.is_some()));
    }
    let accounts = accounts_of(ctx, user).await?;
    let u = store::get_user(&ctx.db, user.as_str()).await?.ok_or_else(|| ApiError::not_found("user", user))?;
    let user = u.into_api().map_err(ApiError::Internal)?;
    let acct = accounts::get(&ctx.db, account).await?.ok_or_else(|| ApiError::not_found("account", account))?;
    Ok(Session {
        id,
        token: secret,
        expires_at: db::parse_time(&expires_s),
        admin: user.admin,
        user,
        account: acct.into_api(),
        role,
        accounts,
    })
}

/// The user's accounts and roles, by name.
pub async fn accounts_of(ctx: &SharedCtx, user: &UserId) -> ApiResult<Vec<WhoamiAccount>> {
    let mut out = Vec::new();
    for (id, name, role) in store::accounts_of(&ctx.db, user.as_str()).await? {
        out.push(WhoamiAccount {
            account_id: id.parse().map_err(ApiError::internal)?,
            account_name: name,
            role: role.parse().map_err(ApiError::internal)?,
        });
    }
    Ok(out)
}

/// The caller's token if it is a session; otherwise 409 `not_a_session` (an API token is
/// revoked with `DELETE /api/v1/tokens/{id}`, not by signing out).
async fn current_session(ctx: &SharedCtx, caller: &Caller, doing: &str) -> ApiResult<(TokenId, String)> {
    let not = || {
        ApiError::conflict(
            "not_a_session",
            format!("this call's token is an API token, not a console session: {doing}"),
        )
    };
    let id = caller.token_id.clone().ok_or_else(not)?;
    let (row, hash, _) = store::token(&ctx.db, id.as_str()).await?.ok_or_else(not)?;
    if !row.name.starts_with(SESSION_PREFIX) || row.expires_at.is_none() {
        return Err(not());
    }
    Ok((id, hash))
}

/// `DELETE /api/v1/sessions/current`: signs out (revokes the session of this call).
pub async fn sign_out(ctx: &SharedCtx, caller: &Caller) -> ApiResult<()> {
    let (id, hash) = current_session(ctx, caller, "revoke it with `vdc token revoke` rather than signing out").await?;
    let revoked = store::revoke(&ctx.db, id.as_str(), &db::now()).await?;
    ctx.tokens.write().unwrap().remove(&hash);
    if !revoked {
        return Err(ApiError::TokenRefused {
            code: "token_revoked",
            message: "this session was signed out already".into(),
        });
    }
    Ok(())
}

/// `POST /api/v1/sessions/switch`: a new session in another account of the user; the
/// session of this call is revoked with it.
pub async fn switch(ctx: &SharedCtx, caller: &Caller, req: SwitchSession, who: &dyn Witness) -> ApiResult<Session> {
    let (old, hash) = current_session(
        ctx,
        caller,
        "an API token acts in its own account: use `--account` or make a token in the other account",
    )
    .await?;
    let account = pick_account(ctx, &caller.user_id, Some(&req.account)).await?;
    let session = issue(ctx, &caller.user_id, &account, Some((&old, caller.expires_at))).await;
    ctx.tokens.write().unwrap().remove(&hash);
    let session = session?;
    who.saw(Some(&caller.user_id), Some(&session.id), Some(&session.account.id));
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h =
            Argon2::default().hash_password(b"correct horse", &SaltString::generate(&mut OsRng)).unwrap().to_string();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify("correct horse", &h));
        assert!(!verify("correct hors", &h));
        assert!(!verify("correct horse", "not a phc string"));
        assert!(!verify("anything at all", dummy_hash()));
    }

    #[test]
    fn password_length_is_checked() {
        assert!(check_password("short").is_err_and(|e| e.code() == "password_too_short"));
        assert!(check_password("long enough").is_ok());
        assert!(check_password("日本語のパスワードです").is_ok());
        assert!(check_password(&"x".repeat(1025)).is_err_and(|e| e.code() == "password_too_long"));
    }
}
