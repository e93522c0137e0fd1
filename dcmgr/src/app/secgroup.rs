//! Security groups and their rules. A rule admits traffic by protocol and port range from
//! a CIDR or from the members of another group. A change re-sends the ensures of every
//! interface it touches, so it takes effect on running guests.

use crate::app::{check_name_free, name_some, page, paging_of, quota, validate_name};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::datastore::interface::GroupChange;
use crate::datastore::{self as db, interface as ifstore, secgroup as store};
use crate::error::{ApiError, ApiResult};
use std::collections::HashMap;
use vdc_schema::api::{CreateSecurityGroup, ListQuery, Page, QuotaKey, RuleSpec, SecurityGroup, SecurityGroupRule};
use vdc_schema::id::{RuleId, SecurityGroupId};
use vdc_schema::Protocol;

/// Checks a rule and normalizes it (a single port fills both ends, CIDRs are truncated).
pub fn normalize(mut r: RuleSpec) -> ApiResult<RuleSpec> {
    let bad = |m: String| ApiError::bad("invalid_rule", m);
    match (&r.cidr, &r.group) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(bad("a rule needs exactly one of cidr (e.g. 0.0.0.0/0) or group (an sg- ID)".into()))
        }
        (Some(c), None) => {
            let net: ipnet::Ipv4Net =
                c.parse().map_err(|_| bad(format!("cidr {c:?} is not an IPv4 network such as 10.0.0.0/8")))?;
            r.cidr = Some(net.trunc().to_string());
        }
        (None, Some(_)) => {}
    }
    match r.protocol {
        Protocol::Tcp | Protocol::Udp => {
            let (lo, hi) = match (r.port_min, r.port_max) {
                (None, None) => (1, 65535),
                (Some(p), None) | (None, Some(p)) => (p, p),
                (Some(a), Some(b)) => (a, b),
            };
            if lo == 0 || lo > hi {
                return Err(bad(format!("port range {lo}-{hi} is invalid: use 1 to 65535, low to high")));
            }
            r.port_min = Some(lo);
            r.port_max = Some(hi);
        }
        Protocol::Icmp => {
            if r.port_min.is_some_and(|t| t > 255) || r.port_max.is_some() {
                return Err(bad("for icmp, port_min is the ICMP type (0-255) and port_max is not used".into()));
            }
        }
        Protocol::Any => {
            if r.port_min.is_some() || r.port_max.is_some() {
                return Err(bad("protocol any takes no ports".into()));
            }
        }
    }
    Ok(r)
}

async fn rules_of(ctx: &SharedCtx, ids: &[String]) -> ApiResult<HashMap<String, Vec<SecurityGroupRule>>> {
    let mut out: HashMap<String, Vec<SecurityGroupRule>> = HashMap::new();
    for id in ids {
        for r in store::rules(&ctx.db, id).await? {
            out.entry(r.group_id.clone()).or_default().push(r.into_api()?);
        }
    }
    Ok(out)
}

async fn to_api(ctx: &SharedCtx, rows: Vec<store::Row>) -> ApiResult<Vec<SecurityGroup>> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut rules = rules_of(ctx, &ids).await?;
    rows.into_iter()
        .map(|r| {
            Ok(SecurityGroup {
                rules: rules.remove(&r.id).unwrap_or_default(),
                id: r.id.parse().map_err(ApiError::internal)?,
                name: r.name,
                description: r.description,
                created_at: db::parse_time(&r.created_at),
            })
        })
        .collect()
}

/// A group of the caller's, or 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &SecurityGroupId) -> ApiResult<SecurityGroup> {
    let row = store::get_own(&ctx.db, &caller.account_id, id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("security group", id))?;
    Ok(to_api(ctx, vec![row]).await?.remove(0))
}

pub async fn create(ctx: &SharedCtx, caller: &Caller, req: CreateSecurityGroup) -> ApiResult<SecurityGroup> {
    validate_name("security group", &req.name)?;
    vdc_bundle::check_description(&req.description).map_err(|e| ApiError::bad("invalid_description", e))?;
    if req.rules.len() > 200 {
        return Err(ApiError::bad("too_many_rules", "a security group holds at most 200 rules"));
    }
    let rules = req.rules.into_iter().map(normalize).collect::<ApiResult<Vec<_>>>()?;
    // As a rule added twice is refused (`add_rule`), so is a rule given twice here.
    if let Some(j) = (1..rules.len()).find(|&j| rules[..j].contains(&rules[j])) {
        let i = rules.iter().position(|r| *r == rules[j]).expect("found above");
        return Err(ApiError::conflict("duplicate_rule", format!("rules[{j}] is the same rule as rules[{i}]")));
    }
    let id = db::retry(|| async {
        let id = SecurityGroupId::generate();
        let mut tx = db::begin(&ctx.db).await?;
        quota::enforce(&mut tx, ctx, &caller.account_id, &[(QuotaKey::SecurityGroups, 1)]).await?;
        check_name_free(&mut tx, db::Named::SecurityGroup, &caller.account_id, &req.name).await?;
        store::insert(&mut tx, &id, &caller.account_id, &req.name, &req.description).await?;
        lock_remote_groups(&mut tx, caller, None, &rules).await?;
        for r in &rules {
            store::insert_rule(&mut tx, &id, r).await?;
        }
        // Groups whose members this group's rules now name need nothing: a new group
        // has no members yet.
        tx.commit().await?;
        ctx.events.wake();
        Ok(id)
    })
    .await?;
    fetch(ctx, caller, &id).await
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<SecurityGroup>> {
    let (limit, cursor) = paging_of::<vdc_schema::id::SecurityGroupId>(q)?;
    let rows = store::list(&ctx.db, &caller.account_id, &cursor, q.name.as_deref(), limit).await?;
    let items = to_api(ctx, rows).await?;
    Ok(page(items, limit, |g| g.id.to_string()))
}

/// Deletes a group no interface is a member of and no other group's rule refers to.
pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: &SecurityGroupId) -> ApiResult<()> {
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // Instance creates and rules that refer to this group lock it too.
        lock_own(&mut tx, caller, id).await?;
        let members = store::member_instances(&mut tx, id).await?;
        if !members.is_empty() {
            return Err(ApiError::conflict(
                "security_group_in_use",
                format!(
                    "security group {id} is used by the interfaces of {}",
                    name_some("instance", members.iter().map(String::as_str))
                ),
            ));
        }
        let refs = store::referring_groups(&mut tx, id).await?;
        if !refs.is_empty() {
            return Err(ApiError::conflict(
                "security_group_in_use",
                format!(
                    "security group {id} is referred to by rules of {}; delete those rules first",
                    name_some("security group", refs.iter().map(String::as_str))
                ),
            ));
        }
        store::delete(&mut tx, id).await?;
        tx.commit().await?;
        ctx.events.wake();
        Ok(())
    })
    .await
}

/// Locks the caller's group in `tx`; 404 when it is not theirs.
async fn lock_own(tx: &mut db::Tx<'_>, caller: &Caller, id: &SecurityGroupId) -> ApiResult<()> {
    db::lock(tx, db::Lock::SecurityGroup, id.as_str()).await?;
    match store::owner(tx, id).await? {
        Some(a) if a == caller.account_id.as_str() => Ok(()),
        _ => Err(ApiError::not_found("security group", id)),
    }
}

/// Locks the groups the rules refer to (other than `own`), so they cannot be deleted
/// before commit; 404 for one that is not the caller's.
async fn lock_remote_groups(
    tx: &mut db::Tx<'_>,
    caller: &Caller,
    own: Option<&SecurityGroupId>,
    rules: &[RuleSpec],
) -> ApiResult<()> {
    let mut seen = std::collections::BTreeSet::new();
    for g in rules.iter().filter_map(|r| r.group.as_ref()) {
        if Some(g) != own && seen.insert(g.clone()) {
            lock_own(tx, caller, g).await?;
        }
    }
    Ok(())
}

/// Adds a rule; its members' interfaces are re-sent.
pub async fn add_rule(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &SecurityGroupId,
    rule: RuleSpec,
) -> ApiResult<SecurityGroup> {
    let rule = normalize(rule)?;
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        lock_own(&mut tx, caller, id).await?;
        lock_remote_groups(&mut tx, caller, Some(id), std::slice::from_ref(&rule)).await?;
        let rows = store::rules(tx.conn().await?, id.as_str()).await?;
        if rows.len() >= 200 {
            return Err(ApiError::bad("too_many_rules", "a security group holds at most 200 rules"));
        }
        for r in rows {
            if r.into_api()?.spec == rule {
                return Err(ApiError::conflict("duplicate_rule", format!("security group {id} already has this rule")));
            }
        }
        store::insert_rule(&mut tx, id, &rule).await?;
        ifstore::bump_for_group(&mut tx, id.as_str(), GroupChange::Rules).await?;
        db::event::record(tx.conn().await?, db::event::Kind::SecurityGroup, id.as_str(), db::event::Change::Updated)
            .await?;
        tx.commit().await?;
        ctx.events.wake();
        Ok(())
    })
    .await?;
    ctx.enqueue(Work::SecurityGroup(id.clone(), GroupChange::Rules));
    fetch(ctx, caller, id).await
}

/// Deletes a rule; its members' interfaces are re-sent.
pub async fn delete_rule(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &SecurityGroupId,
    rule_id: &RuleId,
) -> ApiResult<SecurityGroup> {
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        lock_own(&mut tx, caller, id).await?;
        ifstore::bump_for_group(&mut tx, id.as_str(), GroupChange::Rules).await?;
        if !store::delete_rule(&mut tx, id, rule_id).await? {
            return Err(ApiError::not_found("security group rule", rule_id));
        }
        db::event::record(tx.conn().await?, db::event::Kind::SecurityGroup, id.as_str(), db::event::Change::Updated)
            .await?;
        tx.commit().await?;
        ctx.events.wake();
        Ok(())
    })
    .await?;
    ctx.enqueue(Work::SecurityGroup(id.clone(), GroupChange::Rules));
    fetch(ctx, caller, id).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_schema::Direction;

    fn rule(p: Protocol, lo: Option<u16>, hi: Option<u16>, cidr: Option<&str>) -> RuleSpec {
        RuleSpec {
            direction: Direction::Ingress,
            protocol: p,
            port_min: lo,
            port_max: hi,
            cidr: cidr.map(Into::into),
            group: None,
        }
    }

    #[test]
    fn rules_are_checked_and_normalized() {
        let r = normalize(rule(Protocol::Tcp, Some(22), None, Some("10.0.0.9/8"))).unwrap();
        assert_eq!((r.port_min, r.port_max, r.cidr.as_deref()), (Some(22), Some(22), Some("10.0.0.0/8")));
        assert!(normalize(rule(Protocol::Tcp, Some(30), Some(20), Some("0.0.0.0/0"))).is_err());
        assert!(normalize(rule(Protocol::Tcp, Some(22), None, None)).is_err());
        assert!(normalize(rule(Protocol::Any, Some(1), None, Some("0.0.0.0/0"))).is_err());
        assert!(normalize(rule(Protocol::Udp, None, None, Some("nope"))).is_err());
    }
}
