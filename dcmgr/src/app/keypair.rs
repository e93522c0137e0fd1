//! ssh key pairs: import an OpenSSH public key, or have an ed25519 pair generated and
//! get the private key back once. Keys are parsed with the `ssh-key` crate (RustCrypto),
//! which knows every OpenSSH key format, rather than by hand.

use crate::app::{page, paging_of, quota, validate_name};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, keypair as store};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{CreateKeyPair, KeyPair, KeyPairCreated, ListQuery, Page, QuotaKey};
use vdc_schema::id::KeyPairId;

/// A public key in its normalized OpenSSH form, with its SHA-256 fingerprint.
pub(crate) fn parse_public_key(text: &str) -> ApiResult<(String, String)> {
    let key = ssh_key::PublicKey::from_openssh(text.trim()).map_err(|e| {
        ApiError::bad(
            "invalid_public_key",
            format!("public_key is not an OpenSSH public key ({e}); give one line like 'ssh-ed25519 AAAA… comment'"),
        )
    })?;
    let normalized = key.to_openssh().map_err(ApiError::internal)?;
    Ok((normalized, key.fingerprint(ssh_key::HashAlg::Sha256).to_string()))
}

pub async fn create(ctx: &SharedCtx, caller: &Caller, req: CreateKeyPair) -> ApiResult<KeyPairCreated> {
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
    let now = db::parse_time(&db::now());
    let keypair = KeyPair { id: KeyPairId::generate(), name: req.name, public_key, fingerprint, created_at: now };
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        quota::enforce(&mut tx, ctx, &caller.account_id, &[(QuotaKey::Keypairs, 1)]).await?;
        // Under the account's lock a taken name is not a race to retry but the answer.
        match store::insert(&mut tx, &caller.account_id, &keypair).await {
            Err(e) if db::is_unique_violation(&e) => {
                Err(ApiError::conflict("name_taken", format!("a key pair named {:?} already exists", keypair.name)))
            }
            other => other.map_err(ApiError::from),
        }?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    ctx.events.wake();
    Ok(KeyPairCreated { keypair, private_key })
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<KeyPair>> {
    let (limit, cursor) = paging_of::<vdc_schema::id::KeyPairId>(q)?;
    let rows = store::list(&ctx.db, &caller.account_id, &cursor, q.name.as_deref(), limit).await?;
    let items = rows.into_iter().map(store::Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |k| k.id.to_string()))
}

/// A key pair of the caller's, or 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &KeyPairId) -> ApiResult<KeyPair> {
    store::get_own(&ctx.db, &caller.account_id, id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("key pair", id))?
        .into_api()
}

/// Deletes a key pair. Instances made with it keep running; they are given the key no
/// more (like OpenStack, the key pair is an input of create, not a live link).
pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: &KeyPairId) -> ApiResult<()> {
    if store::delete_own(&ctx.db, &caller.account_id, id).await? {
        ctx.events.wake();
        Ok(())
    } else {
        Err(ApiError::not_found("key pair", id))
    }
}
