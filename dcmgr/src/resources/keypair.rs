//! ssh key pairs: import an OpenSSH public key, or have an ed25519 pair generated and
//! get the private key back once. Keys are parsed with the `ssh-key` crate (RustCrypto),
//! which knows every OpenSSH key format, rather than by hand.

use crate::api::{Body, ListParams};
use crate::ctx::{Caller, SharedCtx};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{page, paging, path_id, validate_name};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateKeyPair, ErrorBody, KeyPair, KeyPairCreated, Page};
use vdc_schema::id::KeyPairId;

#[derive(sqlx::FromRow)]
pub(crate) struct Row {
    id: String,
    name: String,
    public_key: String,
    fingerprint: String,
    created_at: String,
}

impl Row {
    fn into_api(self) -> ApiResult<KeyPair> {
        Ok(KeyPair {
            id: self.id.parse().map_err(ApiError::internal)?,
            name: self.name,
            public_key: self.public_key,
            fingerprint: self.fingerprint,
            created_at: db::parse_time(&self.created_at),
        })
    }
}

const COLS: &str = "id, name, public_key, fingerprint, created_at";

fn parse_public_key(text: &str) -> ApiResult<(String, String)> {
    let key = ssh_key::PublicKey::from_openssh(text.trim()).map_err(|e| {
        ApiError::bad(
            "invalid_public_key",
            format!("public_key is not an OpenSSH public key ({e}); give one line like 'ssh-ed25519 AAAA… comment'"),
        )
    })?;
    let normalized = key.to_openssh().map_err(ApiError::internal)?;
    Ok((normalized, key.fingerprint(ssh_key::HashAlg::Sha256).to_string()))
}

#[utoipa::path(post, path = "/api/v1/keypairs", tag = "keypairs", operation_id = "keypair_create",
    summary = "Import an ssh public key, or generate an ed25519 key pair", request_body = CreateKeyPair,
    responses(
        (status = 201, description = "The key pair (and, if generated, its private key, shown only here)",
            body = KeyPairCreated),
        (status = 400, description = "`invalid_name`, `invalid_public_key`, or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 409, description = "`name_taken`: the account has a key pair of this name", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateKeyPair>,
) -> ApiResult<(StatusCode, Json<KeyPairCreated>)> {
    validate_name("key pair", &req.name)?;
    let (public_key, fingerprint, private_key) = match &req.public_key {
        Some(text) => {
            let (pk, fp) = parse_public_key(text)?;
            (pk, fp, None)
        }
        None => {
            let mut key = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
                .map_err(ApiError::internal)?;
            key.set_comment(&req.name);
            let private = key.to_openssh(ssh_key::LineEnding::LF).map_err(ApiError::internal)?.to_string();
            let public = key.public_key().to_openssh().map_err(ApiError::internal)?;
            let fp = key.public_key().fingerprint(ssh_key::HashAlg::Sha256).to_string();
            (public, fp, Some(private))
        }
    };
    let id = KeyPairId::generate();
    let now = db::now();
    let r = sqlx::query(
        "INSERT INTO keypairs (id, account_id, name, public_key, fingerprint, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.as_str())
    .bind(caller.account_id.as_str())
    .bind(&req.name)
    .bind(&public_key)
    .bind(&fingerprint)
    .bind(&now)
    .execute(&ctx.db)
    .await;
    match r {
        Err(e) if db::is_unique_violation(&e) => {
            return Err(ApiError::conflict("name_taken", format!("a key pair named {:?} already exists", req.name)))
        }
        other => other?,
    };
    let keypair = KeyPair { id, name: req.name, public_key, fingerprint, created_at: db::parse_time(&now) };
    Ok((StatusCode::CREATED, Json(KeyPairCreated { keypair, private_key })))
}

#[utoipa::path(get, path = "/api/v1/keypairs", tag = "keypairs", operation_id = "keypair_list",
    summary = "List the account's key pairs",
    params(
        vdc_schema::api::ListQuery,
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of key pairs", body = Page<KeyPair>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<KeyPair>>> {
    let (limit, cursor) = paging(&q)?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLS} FROM keypairs WHERE account_id = $1 AND id > $2 AND ($3 = '' OR name = $3) ORDER BY id LIMIT $4"
    ))
    .bind(caller.account_id.as_str())
    .bind(cursor)
    .bind(q.name.clone().unwrap_or_default())
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    let items = rows.into_iter().map(Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page(items, limit, |k| k.id.to_string())))
}

/// A key pair of the caller's, or 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &KeyPairId) -> ApiResult<KeyPair> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLS} FROM keypairs WHERE id = $1 AND account_id = $2"))
        .bind(id.as_str())
        .bind(caller.account_id.as_str())
        .fetch_optional(&ctx.db)
        .await?;
    row.ok_or_else(|| ApiError::not_found("key pair", id))?.into_api()
}

#[utoipa::path(get, path = "/api/v1/keypairs/{id}", tag = "keypairs", operation_id = "keypair_show",
    summary = "Show a key pair",
    params(
        ("id" = vdc_schema::id::KeyPairId, Path,
            description = "A key pair ID (`ssh-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The key pair", body = KeyPair),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<KeyPair>> {
    Ok(Json(fetch(&ctx, &caller, &path_id("key pair", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/keypairs/{id}", tag = "keypairs", operation_id = "keypair_delete",
    summary = "Delete a key pair",
    params(
        ("id" = vdc_schema::id::KeyPairId, Path,
            description = "A key pair ID (`ssh-…`); an unknown, malformed or foreign one answers 404")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id: KeyPairId = path_id("key pair", &id)?;
    let r = sqlx::query("DELETE FROM keypairs WHERE id = $1 AND account_id = $2")
        .bind(id.as_str())
        .bind(caller.account_id.as_str())
        .execute(&ctx.db)
        .await?;
    if r.rows_affected() == 0 {
        return Err(ApiError::not_found("key pair", id));
    }
    Ok(StatusCode::NO_CONTENT)
}
