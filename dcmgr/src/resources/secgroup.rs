//! Security groups and their rules. A rule admits traffic by protocol and port range from
//! a CIDR or from the members of another group. A change re-sends the ensures of every
//! interface it touches, so it takes effect on running guests.

use crate::api::{Body, ListParams};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{page, paging, path_id, validate_name};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use std::collections::HashMap;
use vdc_schema::api::{CreateSecurityGroup, ErrorBody, Page, RuleSpec, SecurityGroup, SecurityGroupRule};
use vdc_schema::id::{RuleId, SecurityGroupId};
use vdc_schema::Protocol;

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    description: String,
    created_at: String,
}

#[derive(sqlx::FromRow)]
pub(crate) struct RuleRow {
    pub id: String,
    pub group_id: String,
    pub direction: String,
    pub protocol: String,
    pub port_min: Option<i64>,
    pub port_max: Option<i64>,
    pub cidr: Option<String>,
    pub remote_group_id: Option<String>,
}

impl RuleRow {
    pub fn into_api(self) -> ApiResult<SecurityGroupRule> {
        Ok(SecurityGroupRule {
            id: self.id.parse().map_err(ApiError::internal)?,
            spec: RuleSpec {
                direction: self.direction.parse().map_err(ApiError::internal)?,
                protocol: self.protocol.parse().map_err(ApiError::internal)?,
                port_min: self.port_min.map(|p| p as u16),
                port_max: self.port_max.map(|p| p as u16),
                cidr: self.cidr,
                group: self.remote_group_id.map(|g| g.parse()).transpose().map_err(ApiError::internal)?,
            },
        })
    }
}

pub(crate) const RULE_COLS: &str = "id, group_id, direction, protocol, port_min, port_max, cidr, remote_group_id";

/// Checks a rule and normalizes it (a single port fills both ends, CIDRs are truncated).
fn normalize(mut r: RuleSpec) -> ApiResult<RuleSpec> {
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

async fn insert_rule(tx: &mut db::Tx<'_>, group: &SecurityGroupId, r: &RuleSpec) -> ApiResult<RuleId> {
    let id = RuleId::generate();
    sqlx::query(&format!("INSERT INTO security_group_rules ({RULE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
        .bind(id.as_str())
        .bind(group.as_str())
        .bind(r.direction.as_str())
        .bind(r.protocol.as_str())
        .bind(r.port_min.map(i64::from))
        .bind(r.port_max.map(i64::from))
        .bind(&r.cidr)
        .bind(r.group.as_ref().map(|g| g.to_string()))
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

async fn rules_of(ctx: &SharedCtx, ids: &[String]) -> ApiResult<HashMap<String, Vec<SecurityGroupRule>>> {
    let mut out: HashMap<String, Vec<SecurityGroupRule>> = HashMap::new();
    for id in ids {
        let rows: Vec<RuleRow> =
            sqlx::query_as(&format!("SELECT {RULE_COLS} FROM security_group_rules WHERE group_id = $1 ORDER BY id"))
                .bind(id)
                .fetch_all(&ctx.db)
                .await?;
        for r in rows {
            out.entry(r.group_id.clone()).or_default().push(r.into_api()?);
        }
    }
    Ok(out)
}

async fn to_api(ctx: &SharedCtx, rows: Vec<Row>) -> ApiResult<Vec<SecurityGroup>> {
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
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, name, description, created_at FROM security_groups WHERE id = $1 AND account_id = $2",
    )
    .bind(id.as_str())
    .bind(caller.account_id.as_str())
    .fetch_optional(&ctx.db)
    .await?;
    let row = row.ok_or_else(|| ApiError::not_found("security group", id))?;
    Ok(to_api(ctx, vec![row]).await?.remove(0))
}

#[utoipa::path(post, path = "/api/v1/security_groups", tag = "security_groups", operation_id = "security_group_create",
    summary = "Create a security group with its rules", request_body = CreateSecurityGroup,
    responses(
        (status = 201, description = "The security group", body = SecurityGroup),
        (status = 400,
            description = "`invalid_name`, `invalid_description`, `too_many_rules`, `invalid_rule`, or a malformed \
                body (`invalid_body`)", body = ErrorBody),
        (status = 404, description = "`not_found`: a rule names a group that is not the account's", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateSecurityGroup>,
) -> ApiResult<(StatusCode, Json<SecurityGroup>)> {
    validate_name("security group", &req.name)?;
    if req.description.len() > 1024 {
        return Err(ApiError::bad("invalid_description", "description must be at most 1024 characters"));
    }
    if req.rules.len() > 200 {
        return Err(ApiError::bad("too_many_rules", "a security group holds at most 200 rules"));
    }
    let rules = req.rules.into_iter().map(normalize).collect::<ApiResult<Vec<_>>>()?;
    let id = db::retry(|| async {
        let id = SecurityGroupId::generate();
        let mut tx = ctx.db.begin().await?;
        sqlx::query(
            "INSERT INTO security_groups (id, account_id, name, description, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.as_str())
        .bind(caller.account_id.as_str())
        .bind(&req.name)
        .bind(&req.description)
        .bind(db::now())
        .execute(&mut *tx)
        .await?;
        lock_remote_groups(&mut tx, &caller, None, &rules).await?;
        for r in &rules {
            insert_rule(&mut tx, &id, r).await?;
        }
        // Groups whose members this group's rules now name need nothing: a new group
        // has no members yet.
        tx.commit().await?;
        Ok(id)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(fetch(&ctx, &caller, &id).await?)))
}

#[utoipa::path(get, path = "/api/v1/security_groups", tag = "security_groups", operation_id = "security_group_list",
    summary = "List the account's security groups",
    params(
        vdc_schema::api::ListQuery,
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of security groups", body = Page<SecurityGroup>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<SecurityGroup>>> {
    let (limit, cursor) = paging(&q)?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, name, description, created_at FROM security_groups
         WHERE account_id = $1 AND id > $2 AND ($3 = '' OR name = $3) ORDER BY id LIMIT $4",
    )
    .bind(caller.account_id.as_str())
    .bind(cursor)
    .bind(q.name.clone().unwrap_or_default())
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    let items = to_api(&ctx, rows).await?;
    Ok(Json(page(items, limit, |g| g.id.to_string())))
}

#[utoipa::path(get, path = "/api/v1/security_groups/{id}", tag = "security_groups",
    operation_id = "security_group_show", summary = "Show a security group and its rules",
    params(
        ("id" = vdc_schema::id::SecurityGroupId, Path,
            description = "A security group ID (`sg-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The security group", body = SecurityGroup),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SecurityGroup>> {
    Ok(Json(fetch(&ctx, &caller, &path_id("security group", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/security_groups/{id}", tag = "security_groups",
    operation_id = "security_group_delete", summary = "Delete a security group",
    params(
        ("id" = vdc_schema::id::SecurityGroupId, Path,
            description = "A security group ID (`sg-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409,
            description = "`security_group_in_use`: interfaces are members, or rules of other groups name it",
            body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id: SecurityGroupId = path_id("security group", &id)?;
    db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        // Instance creates and rules that refer to this group lock it too.
        lock_own(&mut tx, &caller, &id).await?;
        let members: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT v.instance_id FROM vif_security_groups s JOIN vifs v ON v.id = s.vif_id
             WHERE s.group_id = $1 ORDER BY v.instance_id",
        )
        .bind(id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        if !members.is_empty() {
            return Err(ApiError::conflict(
                "security_group_in_use",
                format!(
                    "security group {id} is used by the interfaces of {}",
                    crate::resources::name_some("instance", members.iter().map(|m| m.0.as_str()))
                ),
            ));
        }
        let refs: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT group_id FROM security_group_rules WHERE remote_group_id = $1 AND group_id <> $1 ORDER BY group_id",
        )
        .bind(id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        if !refs.is_empty() {
            return Err(ApiError::conflict(
                "security_group_in_use",
                format!(
                    "security group {id} is referred to by rules of {}; delete those rules first",
                    crate::resources::name_some("security group", refs.iter().map(|m| m.0.as_str()))
                ),
            ));
        }
        sqlx::query("DELETE FROM security_group_rules WHERE group_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM security_groups WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Locks the caller's group in `tx`; 404 when it is not theirs.
async fn lock_own(tx: &mut db::Tx<'_>, caller: &Caller, id: &SecurityGroupId) -> ApiResult<()> {
    db::lock(tx, db::Lock::SecurityGroup, id.as_str()).await?;
    let owner: Option<(String,)> = sqlx::query_as("SELECT account_id FROM security_groups WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    match owner {
        Some((a,)) if a == caller.account_id.as_str() => Ok(()),
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

#[utoipa::path(post, path = "/api/v1/security_groups/{id}/rules", tag = "security_groups",
    operation_id = "security_group_add_rule", summary = "Add a rule to a security group", request_body = RuleSpec,
    params(
        ("id" = vdc_schema::id::SecurityGroupId, Path,
            description = "A security group ID (`sg-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 201, description = "The security group with the new rule", body = SecurityGroup),
        (status = 400, description = "`invalid_rule`, `too_many_rules`, or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 404, description = "`not_found`: the group, or the group the rule names", body = ErrorBody),
        (status = 409, description = "`duplicate_rule`: the group has this rule already", body = ErrorBody)))]
pub async fn add_rule(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(rule): Body<RuleSpec>,
) -> ApiResult<(StatusCode, Json<SecurityGroup>)> {
    let id: SecurityGroupId = path_id("security group", &id)?;
    let rule = normalize(rule)?;
    db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        lock_own(&mut tx, &caller, &id).await?;
        lock_remote_groups(&mut tx, &caller, Some(&id), std::slice::from_ref(&rule)).await?;
        let rows: Vec<RuleRow> =
            sqlx::query_as(&format!("SELECT {RULE_COLS} FROM security_group_rules WHERE group_id = $1"))
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await?;
        if rows.len() >= 200 {
            return Err(ApiError::bad("too_many_rules", "a security group holds at most 200 rules"));
        }
        for r in rows {
            if r.into_api()?.spec == rule {
                return Err(ApiError::conflict("duplicate_rule", format!("security group {id} already has this rule")));
            }
        }
        insert_rule(&mut tx, &id, &rule).await?;
        crate::resources::interface::bump_for_group(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    ctx.enqueue(Work::SecurityGroup(id.clone()));
    Ok((StatusCode::CREATED, Json(fetch(&ctx, &caller, &id).await?)))
}

#[utoipa::path(delete, path = "/api/v1/security_groups/{id}/rules/{rule_id}", tag = "security_groups",
    operation_id = "security_group_delete_rule", summary = "Delete a rule of a security group",
    params(
        ("id" = vdc_schema::id::SecurityGroupId, Path,
            description = "A security group ID (`sg-…`); an unknown, malformed or foreign one answers 404"),
        ("rule_id" = vdc_schema::id::RuleId, Path,
            description = "A rule ID (`sgr-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The security group without the rule", body = SecurityGroup),
        (status = 404, description = "`not_found`: the group, or the rule in it", body = ErrorBody)))]
pub async fn delete_rule(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path((id, rule_id)): Path<(String, String)>,
) -> ApiResult<Json<SecurityGroup>> {
    let id: SecurityGroupId = path_id("security group", &id)?;
    let rule_id: RuleId = path_id("security group rule", &rule_id)?;
    db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        lock_own(&mut tx, &caller, &id).await?;
        // The members' generations first: the interfaces the rule's reference reached
        // are found through the rule itself.
        crate::resources::interface::bump_for_group(&mut tx, id.as_str()).await?;
        let r = sqlx::query("DELETE FROM security_group_rules WHERE id = $1 AND group_id = $2")
            .bind(rule_id.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(ApiError::not_found("security group rule", &rule_id));
        }
        tx.commit().await?;
        Ok(())
    })
    .await?;
    ctx.enqueue(Work::SecurityGroup(id.clone()));
    Ok(Json(fetch(&ctx, &caller, &id).await?))
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
