//! Per-account quotas. Limits come from the account's own settings (an admin's) or
//! dcmgr's `[quotas]` defaults; usage is counted from the resources. A create asks
//! [`enforce`] inside its own transaction: it locks the account's row (so concurrent
//! creates of one account decide one after the other, each counting what the previous
//! committed), counts, and the pure [`decide`] answers. At the edge, N allowed of 50
//! concurrent creates means exactly N succeed. Instance creates of an account that no
//! quota limits lock the row shared instead ([`enforce_side_by_side`]).

use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, account as accounts, quota as store};
use crate::error::{ApiError, ApiResult};
use std::collections::BTreeMap;
use vdc_schema::api::{AccountQuotas, QuotaKey, QuotaUsage, SetQuotas};
use vdc_schema::id::AccountId;

/// Base units per quota unit: volume and root disk sizes are counted in MiB, image sizes
/// in bytes.
fn scale(key: QuotaKey) -> u64 {
    match key {
        QuotaKey::VolumeGib | QuotaKey::RootDiskGib => 1024,
        QuotaKey::ImageGib => 1 << 30,
        _ => 1,
    }
}

/// `amount` base units in the quota's units, for messages: whole, or to two decimals
/// where a part is in use (1.96 of an image_gib of 2 is not "2").
fn in_units(key: QuotaKey, amount: u64) -> String {
    let scale = scale(key);
    if amount.is_multiple_of(scale) {
        (amount / scale).to_string()
    } else {
        format!("{:.2}", amount as f64 / scale as f64)
    }
}

/// The unit a request's amount is given in, for messages.
fn unit(key: QuotaKey) -> &'static str {
    match key {
        QuotaKey::VolumeGib | QuotaKey::RootDiskGib => " MiB",
        QuotaKey::ImageGib => " bytes",
        QuotaKey::MemoryMib => " MiB",
        _ => "",
    }
}

/// An account's limit per key: `Some(n)`, or None for unlimited.
pub type Limits = BTreeMap<QuotaKey, Option<u64>>;

/// The limits in force: the account's own over the configured defaults.
pub fn limits(defaults: &BTreeMap<QuotaKey, u64>, own: &[(String, i64)]) -> Limits {
    let mut l: Limits = QuotaKey::ALL.into_iter().map(|k| (k, defaults.get(&k).copied())).collect();
    for (k, v) in own {
        // A key this version does not know (a newer dcmgr's) limits nothing here.
        if let Ok(k) = k.parse::<QuotaKey>() {
            l.insert(k, Some((*v).max(0) as u64));
        }
    }
    l
}

/// Would adding `asks` (key, amount in base units) to `used` exceed a limit? The first
/// that would is refused, naming the quota, its limit and what is in use. An ask of 0
/// never is: an account above a lowered limit keeps what it has.
pub fn decide(limits: &Limits, used: &[(QuotaKey, u64)], asks: &[(QuotaKey, u64)]) -> ApiResult<()> {
    for &(key, add) in asks {
        let Some(Some(limit)) = limits.get(&key) else { continue };
        let now = used.iter().find(|(k, _)| *k == key).map_or(0, |u| u.1);
        if add > 0 && now.saturating_add(add) > limit.saturating_mul(scale(key)) {
            return Err(ApiError::Unprocessable {
                code: "quota_exceeded",
                message: format!(
                    "quota {key} is {limit} and {} of it is in use; this needs {add}{} more: delete something or \
                     ask an admin to raise the quota",
                    in_units(key, now),
                    unit(key),
                ),
            });
        }
    }
    Ok(())
}

/// Whether no limit applies to any of `asks`.
fn unlimited(limits: &Limits, asks: &[(QuotaKey, u64)]) -> bool {
    asks.iter().all(|(k, _)| limits.get(k).is_none_or(Option::is_none))
}

/// The limits in force for an account locked in `tx` (its own read once per transaction).
async fn limits_locked(tx: &mut db::Tx<'_>, ctx: &SharedCtx, account: &AccountId) -> ApiResult<Limits> {
    Ok(limits(&ctx.config.quotas, &store::set_for_locked(tx, account).await?))
}

/// Checks `asks` against the account's quotas inside the creating transaction. Locks the
/// account's row first (a no-op when the transaction holds it already), then counts.
pub async fn enforce(
    tx: &mut db::Tx<'_>,
    ctx: &SharedCtx,
    account: &AccountId,
    asks: &[(QuotaKey, u64)],
) -> ApiResult<()> {
    enforce_except(tx, ctx, account, None, asks).await
}

/// [`enforce`] for the `kind` (`image`, `snapshot`) named `name`: a bundle export's
/// temporary one asks for nothing, as [`store::usage`] does not count it.
pub async fn enforce_unless_exported(
    tx: &mut db::Tx<'_>,
    ctx: &SharedCtx,
    account: &AccountId,
    named: (&str, &str),
    asks: &[(QuotaKey, u64)],
) -> ApiResult<()> {
    enforce_except(tx, ctx, account, Some(named), asks).await
}

/// Whether `exported` is an export's temporary is looked up only where a limit applies.
async fn enforce_except(
    tx: &mut db::Tx<'_>,
    ctx: &SharedCtx,
    account: &AccountId,
    exported: Option<(&str, &str)>,
    asks: &[(QuotaKey, u64)],
) -> ApiResult<()> {
    if !accounts::lock(tx, account).await? {
        return Err(gone(account));
    }
    let limits = limits_locked(tx, ctx, account).await?;
    if unlimited(&limits, asks) {
        return Ok(());
    }
    if let Some((kind, name)) = exported {
        if db::bundle::is_export_temporary(tx.conn().await?, account.as_str(), kind, name).await? {
            return Ok(());
        }
    }
    let used = store::usage(tx.conn().await?, account).await?;
    decide(&limits, &used, asks)
}

/// An account deleted while a create in it was decided: nothing is made (an instance
/// made so ran on in no account, and no one could terminate it).
fn gone(account: &AccountId) -> ApiError {
    ApiError::not_found("account", account)
}

/// [`enforce`] for creates an account makes many of at once (instances). On PostgreSQL,
/// while no limit applies to `asks`, the account's row is locked shared: the creates run
/// side by side instead of one after the other, and a quota set waits for them (and they
/// for it). Once a limit applies, the create is decided again under the whole lock, as
/// [`enforce`] decides, and so are the account's next ones in this dcmgr.
pub async fn enforce_side_by_side(
    tx: &mut db::Tx<'_>,
    ctx: &SharedCtx,
    account: &AccountId,
    asks: &[(QuotaKey, u64)],
) -> ApiResult<()> {
    let by_default = asks.iter().any(|(k, _)| ctx.config.quotas.contains_key(k));
    if tx.sqlite() || by_default || ctx.limited.holds(account) {
        return enforce(tx, ctx, account, asks).await;
    }
    if !accounts::lock_shared(tx, account).await? {
        return Err(gone(account));
    }
    if unlimited(&limits_locked(tx, ctx, account).await?, asks) {
        return Ok(());
    }
    // Counting needs the whole lock, and taking it while holding the row shared could
    // deadlock with another create doing the same: this transaction is made again.
    ctx.limited.add(account);
    Err(ApiError::Busy("the account has quota limits: decided again under its lock".into()))
}

/// Accounts seen with limits by [`enforce_side_by_side`]: their creates take the whole
/// lock first. A hint only: the decision is always made under a lock. A set of quotas
/// here forgets the account; one made through another dcmgr is seen once the hint is
/// older than [`LIMITED_FOR`], when the account's next create looks again.
#[derive(Default)]
pub struct Limited(std::sync::Mutex<std::collections::HashMap<AccountId, std::time::Instant>>);

/// How long an account seen with limits takes the whole lock without looking again.
const LIMITED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl Limited {
    fn holds(&self, account: &AccountId) -> bool {
        let mut seen = self.0.lock().expect("limited accounts");
        match seen.get(account) {
            Some(at) if at.elapsed() < LIMITED_FOR => true,
            Some(_) => {
                seen.remove(account);
                false
            }
            None => false,
        }
    }

    fn add(&self, account: &AccountId) {
        self.0.lock().expect("limited accounts").insert(account.clone(), std::time::Instant::now());
    }

    fn forget(&self, account: &AccountId) {
        self.0.lock().expect("limited accounts").remove(account);
    }
}

/// What [`enforce`] would answer now, read without locking (for a plan: the creating
/// transaction checks again).
pub async fn check(
    conn: &mut sqlx::AnyConnection,
    ctx: &SharedCtx,
    account: &AccountId,
    asks: &[(QuotaKey, u64)],
) -> ApiResult<()> {
    let own = store::set_for(&mut *conn, account).await?;
    let limits = limits(&ctx.config.quotas, &own);
    if unlimited(&limits, asks) {
        return Ok(());
    }
    let used = store::usage(&mut *conn, account).await?;
    decide(&limits, &used, asks)
}

/// The bytes of image data `account` may still store under its `image_gib` quota (None
/// when no limit applies), read without a lock: an upload or import stops taking data
/// past it, so that a stream can fill neither the quota nor dcmgr's disk (the commit
/// decides again, under the account's lock).
/// With the bytes left, the refusal of data past them, as [`decide`] words it.
pub async fn image_bytes_left(ctx: &SharedCtx, account: &AccountId) -> ApiResult<Option<(u64, String)>> {
    let key = QuotaKey::ImageGib;
    let mut conn = ctx.db.acquire().await?;
    let own = store::set_for(&mut *conn, account).await?;
    let Some(Some(limit)) = limits(&ctx.config.quotas, &own).get(&key).copied() else {
        return Ok(None);
    };
    let used = store::usage(&mut *conn, account).await?;
    let now = used.iter().find(|(k, _)| *k == key).map_or(0, |u| u.1);
    let left = limit.saturating_mul(scale(key)).saturating_sub(now);
    let message = format!(
        "quota {key} is {limit} and {} of it is in use; the image data is larger than the {left} bytes left: \
         delete something or ask an admin to raise the quota",
        in_units(key, now)
    );
    Ok(Some((left, message)))
}

/// An account's quotas and usage: the caller's own, or any for an admin (else 404).
pub async fn show(ctx: &SharedCtx, caller: &Caller, id: &AccountId) -> ApiResult<AccountQuotas> {
    let account = crate::app::account::fetch(ctx, caller, id).await?;
    let mut tx = db::begin(&ctx.db).await?;
    let own = store::set_for(tx.conn().await?, &account.id).await?;
    let used = store::usage(tx.conn().await?, &account.id).await?;
    tx.commit().await?;
    Ok(report(&account.id, &ctx.config.quotas, &own, &used))
}

fn report(
    id: &AccountId,
    defaults: &BTreeMap<QuotaKey, u64>,
    own: &[(String, i64)],
    used: &[(QuotaKey, u64)],
) -> AccountQuotas {
    let limits = limits(defaults, own);
    let quotas = QuotaKey::ALL
        .into_iter()
        .map(|key| QuotaUsage {
            key,
            limit: limits.get(&key).copied().flatten(),
            used: used.iter().find(|(k, _)| *k == key).map_or(0, |u| u.1.div_ceil(scale(key))),
            set_for_account: own.iter().any(|(k, _)| k == key.as_str()),
        })
        .collect();
    AccountQuotas { account_id: id.clone(), quotas }
}

/// Checks a request to set quotas: every key known, every value ≥ 0.
pub fn parse(req: &SetQuotas) -> ApiResult<Vec<(QuotaKey, Option<i64>)>> {
    if req.quotas.is_empty() {
        return Err(ApiError::Unprocessable {
            code: "invalid_quota",
            message: "no quota given: send {\"quotas\": {\"instances\": 10, …}}".into(),
        });
    }
    req.quotas
        .iter()
        .map(|(k, v)| {
            let key =
                k.parse::<QuotaKey>().map_err(|message| ApiError::Unprocessable { code: "invalid_quota", message })?;
            if let Some(n) = v.filter(|n| *n < 0) {
                return Err(ApiError::Unprocessable {
                    code: "invalid_quota",
                    message: format!("quota {key} = {n} is negative: give 0 or more, or null for the default"),
                });
            }
            Ok((key, *v))
        })
        .collect()
}

/// Sets quotas of an account (admin only), all or none; answers the result.
pub async fn set(
    ctx: &SharedCtx,
    caller: &Caller,
    id: ApiResult<AccountId>,
    req: SetQuotas,
) -> ApiResult<AccountQuotas> {
    if !caller.admin {
        return Err(ApiError::Forbidden("only an admin can set quotas".into()));
    }
    let changes = parse(&req)?;
    let account = crate::app::account::fetch(ctx, caller, &id?).await?;
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        accounts::lock(&mut tx, &account.id).await?;
        for (key, value) in &changes {
            store::set(&mut tx, &account.id, *key, *value).await?;
        }
        accounts::count_own_quotas(&mut tx, &account.id).await?;
        let own = store::set_for(tx.conn().await?, &account.id).await?;
        let used = store::usage(tx.conn().await?, &account.id).await?;
        tx.commit().await?;
        ctx.limited.forget(&account.id);
        Ok(report(&account.id, &ctx.config.quotas, &own, &used))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(v: &[(QuotaKey, u64)]) -> Vec<(QuotaKey, u64)> {
        v.to_vec()
    }

    #[test]
    fn an_account_seen_limited_is_held_until_forgotten_or_old() {
        let (l, a, b) = (Limited::default(), AccountId::generate(), AccountId::generate());
        assert!(!l.holds(&a));
        l.add(&a);
        assert!(l.holds(&a) && !l.holds(&b));
        l.forget(&a);
        assert!(!l.holds(&a));
        l.0.lock().unwrap().insert(b.clone(), std::time::Instant::now() - LIMITED_FOR);
        assert!(!l.holds(&b), "a hint older than LIMITED_FOR is looked at again");
        assert!(l.0.lock().unwrap().is_empty());
    }

    #[test]
    fn the_account_overrides_the_default_and_unset_is_unlimited() {
        let defaults = BTreeMap::from([(QuotaKey::Instances, 10), (QuotaKey::Vcpus, 20)]);
        let l = limits(&defaults, &[("instances".into(), 3), ("future_thing".into(), 1)]);
        assert_eq!(l[&QuotaKey::Instances], Some(3));
        assert_eq!(l[&QuotaKey::Vcpus], Some(20));
        assert_eq!(l[&QuotaKey::Networks], None);
        assert_eq!(l.len(), QuotaKey::ALL.len());
    }

    #[test]
    fn at_the_limit_is_allowed_beyond_it_is_refused_with_the_numbers() {
        let l = limits(&BTreeMap::from([(QuotaKey::Instances, 2), (QuotaKey::Vcpus, 4)]), &[]);
        let u = used(&[(QuotaKey::Instances, 1), (QuotaKey::Vcpus, 2)]);
        decide(&l, &u, &[(QuotaKey::Instances, 1), (QuotaKey::Vcpus, 2)]).unwrap();
        let e = decide(&l, &u, &[(QuotaKey::Instances, 1), (QuotaKey::Vcpus, 3)]).unwrap_err();
        assert_eq!(e.code(), "quota_exceeded");
        assert!(e.to_string().starts_with("quota vcpus is 4 and 2 of it is in use; this needs 3 more"), "{e}");
        let e = decide(&l, &used(&[(QuotaKey::Instances, 2)]), &[(QuotaKey::Instances, 1)]).unwrap_err();
        assert!(e.to_string().starts_with("quota instances is 2 and 2 of it"), "{e}");
        // Unlimited keys and asks of nothing pass, even above a lowered limit.
        decide(&l, &used(&[(QuotaKey::Instances, 9)]), &[(QuotaKey::Instances, 0), (QuotaKey::Networks, 99)]).unwrap();
    }

    #[test]
    fn sizes_compare_in_base_units_and_show_in_gib() {
        let l = limits(&BTreeMap::from([(QuotaKey::VolumeGib, 1), (QuotaKey::ImageGib, 1)]), &[]);
        decide(&l, &used(&[(QuotaKey::VolumeGib, 512)]), &[(QuotaKey::VolumeGib, 512)]).unwrap();
        let e = decide(&l, &used(&[(QuotaKey::VolumeGib, 512)]), &[(QuotaKey::VolumeGib, 513)]).unwrap_err();
        assert!(e.to_string().contains("volume_gib is 1 and 0.50 of it is in use; this needs 513 MiB more"), "{e}");
        let e = decide(&l, &used(&[(QuotaKey::ImageGib, 1 << 29)]), &[(QuotaKey::ImageGib, 1 << 30)]).unwrap_err();
        assert!(e.to_string().contains("image_gib is 1 and 0.50 of it is in use; this needs 1073741824 bytes"), "{e}");
        assert!(decide(&l, &[], &[(QuotaKey::ImageGib, (1 << 30) + 1)]).is_err());
        let id: AccountId = AccountId::generate();
        let r = report(&id, &BTreeMap::new(), &[("volume_gib".into(), 5)], &used(&[(QuotaKey::VolumeGib, 1025)]));
        let v = r.quotas.iter().find(|q| q.key == QuotaKey::VolumeGib).unwrap();
        assert_eq!((v.limit, v.used, v.set_for_account), (Some(5), 2, true));
        assert!(!r.quotas.iter().find(|q| q.key == QuotaKey::Instances).unwrap().set_for_account);
    }

    #[test]
    fn unknown_keys_and_negative_values_are_named() {
        let req = |k: &str, v: Option<i64>| SetQuotas { quotas: BTreeMap::from([(k.to_owned(), v)]) };
        let e = parse(&req("cpus", Some(1))).unwrap_err();
        assert_eq!(e.code(), "invalid_quota");
        assert!(e.to_string().contains("unknown quota \"cpus\": use one of instances, vcpus"), "{e}");
        let e = parse(&req("vcpus", Some(-1))).unwrap_err();
        assert!(e.to_string().contains("quota vcpus = -1 is negative"), "{e}");
        assert_eq!(parse(&req("keypairs", None)).unwrap(), vec![(QuotaKey::Keypairs, None)]);
        assert!(parse(&SetQuotas::default()).is_err());
    }
}
