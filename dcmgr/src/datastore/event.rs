//! The event log behind `GET /api/v1/events`. [`record`] runs inside the transaction of
//! the change it describes and copies the object's account and state from its row, so
//! the event says what was committed.
//!
//! IDs must grow in commit order, or a client resuming after ID N could miss an event
//! N-1 committed later. SQLite has one writer at a time, so `MAX(id) + 1` taken inside
//! the writing transaction is enough. PostgreSQL takes IDs from a sequence (concurrent
//! writers, no hot row), and [`after`] reads under `LOCK TABLE events IN SHARE MODE`:
//! that lock waits for every transaction that has inserted an event to end, and holds
//! off new inserts (whose `nextval` comes later, so is larger) until the read is done.

use crate::db;
use vdc_schema::api::Event;

/// What an event is about: the table it is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Instance,
    Volume,
    Snapshot,
    Image,
    Network,
    SecurityGroup,
    KeyPair,
    FloatingIp,
    ServerGroup,
    /// An instance's network interface: its state as nwagent reports it.
    Interface,
    Job,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Instance => "instance",
            Kind::Volume => "volume",
            Kind::Snapshot => "snapshot",
            Kind::Image => "image",
            Kind::Network => "network",
            Kind::SecurityGroup => "security_group",
            Kind::KeyPair => "keypair",
            Kind::FloatingIp => "floating_ip",
            Kind::ServerGroup => "server_group",
            Kind::Interface => "interface",
            Kind::Job => "job",
        }
    }

    /// (table, state expression, detail expression)
    fn source(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Kind::Instance => ("instances", "state", "''"),
            Kind::Volume => ("volumes", "state", "''"),
            Kind::Snapshot => ("snapshots", "state", "''"),
            Kind::Image => ("images", "state", "''"),
            Kind::Network => ("networks", "''", "''"),
            Kind::SecurityGroup => ("security_groups", "''", "''"),
            Kind::KeyPair => ("keypairs", "''", "''"),
            Kind::FloatingIp => ("floating_ips", "''", "''"),
            Kind::ServerGroup => ("server_groups", "''", "''"),
            Kind::Interface => ("vifs", "state", "instance_id"),
            Kind::Job => ("jobs", "state", "action || ' ' || resource_id"),
        }
    }
}

/// The change an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    State,
    /// Something but its state changed: a group's rules, an address's association.
    Updated,
    /// Recorded before the row goes (or with the row's final state when it is kept).
    Deleted,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::State => "state",
            Change::Updated => "updated",
            Change::Deleted => "deleted",
        }
    }
}

use super::is_postgres;

/// PostgreSQL's sequence of event IDs. Created at connect (not in a migration: SQLite,
/// which shares the migrations, has no sequences).
pub const PG_SEQUENCE: &str = "CREATE SEQUENCE IF NOT EXISTS events_seq";

/// Records `change` of the object `id` of `kind`, as its row is now in this transaction.
/// Nothing is recorded for a row that does not exist (or a floating IP without account).
/// A row whose state is now `deleted` or `terminated` (kept rows) records `deleted`.
pub async fn record(conn: &mut sqlx::AnyConnection, kind: Kind, id: &str, change: Change) -> Result<(), sqlx::Error> {
    insert(conn, kind, id, change, None).await
}

/// The state of the object `id` of `kind` (before a change: see [`changed`]).
pub async fn state_of(conn: &mut sqlx::AnyConnection, kind: Kind, id: &str) -> Result<Option<String>, sqlx::Error> {
    let (table, state, _) = kind.source();
    let row: Option<(String,)> =
        sqlx::query_as(&format!("SELECT {state} FROM {table} WHERE id = $1")).bind(id).fetch_optional(conn).await?;
    Ok(row.map(|r| r.0))
}

/// Records a state change of `id` if its state is no longer `before` (from [`state_of`]).
pub async fn changed(
    conn: &mut sqlx::AnyConnection,
    kind: Kind,
    id: &str,
    before: Option<&str>,
) -> Result<(), sqlx::Error> {
    insert(conn, kind, id, Change::State, Some(before.unwrap_or(""))).await
}

async fn insert(
    conn: &mut sqlx::AnyConnection,
    kind: Kind,
    id: &str,
    change: Change,
    unless_state: Option<&str>,
) -> Result<(), sqlx::Error> {
    let next =
        if is_postgres(conn) { "nextval('events_seq')" } else { "(SELECT COALESCE(MAX(id), 0) + 1 FROM events)" };
    let (table, _, _) = kind.source();
    let sql = insert_sql(kind, next, table, "id = $1 AND", 2);
    sqlx::query(&sql)
        .bind(id)
        .bind(change.as_str())
        .bind(db::now())
        .bind(unless_state.unwrap_or(""))
        .execute(conn)
        .await?;
    Ok(())
}

/// The `INSERT` of the event of each row of `from` (a table, or a statement's `RETURNING`)
/// that passes `filter`: the change, the time and the state before a state change (`''`
/// for any) are parameters `$p`, `$p+1` and `$p+2`. A row without account (a floating IP
/// in the pool) records nothing; one kept in its final state records `deleted`.
fn insert_sql(kind: Kind, next: &str, from: &str, filter: &str, p: usize) -> String {
    let (_, state, detail) = kind.source();
    let (change, at, unless) = (p, p + 1, p + 2);
    format!(
        "INSERT INTO events (id, account_id, kind, resource_id, change, state, detail, created_at) \
         SELECT {next}, account_id, '{}', id, \
                CASE WHEN {state} IN ('deleted', 'terminated') THEN 'deleted' ELSE ${change} END, {state}, {detail}, ${at} \
         FROM {from} WHERE {filter} account_id IS NOT NULL AND (${unless} = '' OR {state} <> ${unless})",
        kind.as_str()
    )
}

/// An event to write as its transaction commits.
pub struct Pending {
    kind: Kind,
    id: String,
    change: Change,
    /// For a state change, the state before it: nothing is written if it is the same.
    unless_state: Option<String>,
}

/// As [`record`], on SQLite written as `tx` commits together with the others recorded
/// so: one statement for all of a transaction's events (a create records two, a report
/// one or two, and on SQLite's one writer each statement is a round trip the next
/// transaction waits behind). The state copied is the row's at commit. PostgreSQL
/// records at once, as [`record`] (deferred there, `vdc-bench` measured creates 18 %
/// slower).
pub async fn record_at_commit(tx: &mut db::Tx<'_>, kind: Kind, id: &str, change: Change) -> Result<(), sqlx::Error> {
    if is_postgres(tx) {
        return record(tx.conn().await?, kind, id, change).await;
    }
    push(tx, Pending { kind, id: id.to_owned(), change, unless_state: None });
    Ok(())
}

/// Sends `w`, a write of the row `id` of `kind` (rows, for [`Change::State`]), with the
/// event it makes, as [`record_at_commit`] and [`changed_at_commit`] would record it
/// after `w` (`unless_state`: the state before a state change). On PostgreSQL the two are
/// one statement (`WITH w AS (… RETURNING *) INSERT INTO events … FROM w`): a create and
/// a report each sent two events this way in round trips of their own, a quarter of the
/// statements of a create measured by `vdc-bench`. On SQLite `w` is sent later
/// ([`db::Tx::later`]) and the event as the transaction commits.
pub async fn later_with_event(
    tx: &mut db::Tx<'_>,
    w: db::Write,
    kind: Kind,
    id: &str,
    change: Change,
    unless_state: Option<&str>,
) -> Result<(), sqlx::Error> {
    if !is_postgres(tx) {
        tx.later(w).await?;
        return match unless_state {
            Some(before) => changed_at_commit(tx, kind, id, Some(before)).await,
            None => record_at_commit(tx, kind, id, change).await,
        };
    }
    tx.later(pg_with_event(w, kind, change, unless_state)).await
}

/// `w` and the event of each row it writes, as one PostgreSQL statement (see
/// [`later_with_event`]): [`insert_sql`] reading `w`'s `RETURNING`.
pub(super) fn pg_with_event(w: db::Write, kind: Kind, change: Change, unless_state: Option<&str>) -> db::Write {
    let events = insert_sql(kind, "nextval('events_seq')", "w", "", w.args.len() + 1);
    let sql = format!("WITH w AS ({} RETURNING *) {events}", w.sql);
    db::Write { sql: sql.into(), args: w.args }.bind(change.as_str()).bind(db::now()).bind(unless_state.unwrap_or(""))
}

/// As [`changed`], on SQLite written as `tx` commits: see [`record_at_commit`].
pub async fn changed_at_commit(
    tx: &mut db::Tx<'_>,
    kind: Kind,
    id: &str,
    before: Option<&str>,
) -> Result<(), sqlx::Error> {
    if is_postgres(tx) {
        return changed(tx.conn().await?, kind, id, before).await;
    }
    push(
        tx,
        Pending { kind, id: id.to_owned(), change: Change::State, unless_state: Some(before.unwrap_or("").to_owned()) },
    );
    Ok(())
}

/// A later state change of an object already pending is the same event: both would read
/// the row as committed, and the earlier one knows the state before the transaction.
fn push(tx: &mut db::Tx<'_>, p: Pending) {
    if p.change == Change::State && tx.events.iter().any(|e| e.kind == p.kind && e.id == p.id) {
        return;
    }
    tx.events.push(p);
}

/// The events of the jobs a SQLite transaction ended, as the trigger noted them
/// (`db::ENDED_JOBS`), after the others.
pub(super) const ENDED_JOBS: &str =
    "SELECT 1000000000 + e.rowid AS ord, t.account_id, 'job' AS kind, t.id AS resource_id, \
            'state' AS change, t.state AS state, t.action || ' ' || t.resource_id AS detail \
     FROM ended_jobs e JOIN jobs t ON t.id = e.id WHERE t.account_id IS NOT NULL";

/// The statement that writes `pending` (in their order) as [`insert`] would each, and
/// the events of `ended` (a source of events, as [`ENDED_JOBS`]).
pub(super) fn pending_write(postgres: bool, pending: &[Pending], ended: Option<&str>) -> Option<db::Write> {
    if pending.is_empty() && ended.is_none() {
        return None;
    }
    // On PostgreSQL `nextval` in the select list is taken after the ORDER BY (9.6 and later).
    let next = if postgres {
        "nextval('events_seq')"
    } else {
        "(SELECT COALESCE(MAX(id), 0) FROM events) + ROW_NUMBER() OVER (ORDER BY ord)"
    };
    // One source per kind: the events' (ID, change, state before, order) as VALUES,
    // joined with the kind's table (a source per event cost the parser 30 µs each).
    let mut kinds: Vec<Kind> = pending.iter().map(|e| e.kind).collect();
    kinds.sort_by_key(|k| k.as_str());
    kinds.dedup();
    let mut sources = Vec::with_capacity(kinds.len());
    let mut binds = Vec::with_capacity(pending.len());
    for kind in kinds {
        let (table, state, detail) = kind.source();
        let mut rows = Vec::new();
        let of_kind: Vec<(usize, &Pending)> = pending.iter().enumerate().filter(|(_, e)| e.kind == kind).collect();
        // Rows up to a power of two, the others naming no object: the statement has a
        // few shapes, kept prepared, rather than one per count (each parsed anew).
        let places = of_kind.len().next_power_of_two();
        for i in 0..places {
            let n = 4 * binds.len() + 2;
            rows.push(format!("(${n}, ${}, ${}, CAST(${} AS BIGINT))", n + 1, n + 2, n + 3));
            binds.push(of_kind.get(i).map(|&(ord, e)| (ord, Some(e))).unwrap_or((0, None)));
        }
        sources.push(format!(
            "SELECT w.column4 AS ord, t.account_id, '{}' AS kind, t.id AS resource_id, \
                    CASE WHEN {state} IN ('deleted', 'terminated') THEN 'deleted' ELSE w.column2 END AS change, \
                    {state} AS state, {detail} AS detail \
             FROM (VALUES {}) AS w JOIN {table} t ON t.id = w.column1 \
             WHERE t.account_id IS NOT NULL AND (w.column3 = '' OR {state} <> w.column3)",
            kind.as_str(),
            rows.join(", "),
        ));
    }
    sources.extend(ended.map(str::to_owned));
    let sql = format!(
        "INSERT INTO events (id, account_id, kind, resource_id, change, state, detail, created_at) \
         SELECT {next}, account_id, kind, resource_id, change, state, detail, $1 FROM ({}) AS e ORDER BY ord",
        sources.join(" UNION ALL ")
    );
    let mut w = db::Write::new(sql).bind(db::now());
    for (ord, e) in binds {
        w = match e {
            Some(e) => w
                .bind(e.id.as_str())
                .bind(e.change.as_str())
                .bind(e.unless_state.as_deref().unwrap_or(""))
                .bind(ord as i64),
            None => w.bind("").bind("").bind("").bind(0i64),
        };
    }
    Some(w)
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    account_id: String,
    kind: String,
    resource_id: String,
    change: String,
    state: String,
    detail: String,
    created_at: String,
}

impl Row {
    fn into_api(self) -> Option<Event> {
        Some(Event {
            seq: u64::try_from(self.id).ok()?,
            account_id: self.account_id.parse().ok()?,
            kind: self.kind,
            resource_id: self.resource_id,
            change: self.change,
            state: self.state,
            detail: self.detail,
            time: db::parse_time(&self.created_at),
        })
    }
}

/// Up to `limit` events after `after`, oldest first; only `account`'s unless it is None.
/// Every event with a smaller ID than the last returned is committed and returned (or
/// had been returned before): see the module comment.
pub async fn after(pool: &db::Pool, account: Option<&str>, after: u64, limit: i64) -> Result<Vec<Event>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    // Two statements rather than `($2 = '' OR account_id = $2)`: PostgreSQL's generic plan
    // for that condition, made while the table is small (a new database, before its
    // first ANALYZE), scans and sorts the whole table on every read of the pump; these
    // read the primary key's or (account_id, id)'s index whatever the statistics.
    let scope = if account.is_some() { "account_id = $2" } else { "$2 = ''" };
    let sql = format!(
        "SELECT id, account_id, kind, resource_id, change, state, detail, created_at FROM events \
         WHERE id > $1 AND {scope} ORDER BY id LIMIT $3"
    );
    let read =
        sqlx::query_as(&sql).bind(i64::try_from(after).unwrap_or(i64::MAX)).bind(account.unwrap_or("")).bind(limit);
    let rows: Vec<Row> = if is_postgres(&conn) {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query("LOCK TABLE events IN SHARE MODE").execute(&mut *tx).await?;
        let rows = read.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows
    } else {
        // One writer, IDs taken in commit order: a statement's own snapshot is enough.
        read.fetch_all(&mut *conn).await?
    };
    Ok(rows.into_iter().filter_map(Row::into_api).collect())
}

/// The newest event's ID (0 when there is none).
pub async fn head(pool: &db::Pool) -> Result<u64, sqlx::Error> {
    let (max,): (Option<i64>,) = sqlx::query_as("SELECT MAX(id) FROM events").fetch_one(pool).await?;
    Ok(max.unwrap_or(0).max(0) as u64)
}

/// The oldest event kept (0 when there is none): a client resuming before it missed some.
pub async fn oldest(pool: &db::Pool) -> Result<u64, sqlx::Error> {
    let (min,): (Option<i64>,) = sqlx::query_as("SELECT MIN(id) FROM events").fetch_one(pool).await?;
    Ok(min.unwrap_or(0).max(0) as u64)
}

/// Removes events older than `before` (a stored time) and all but the newest `keep`.
/// The newest event always stays, so that SQLite's `MAX(id) + 1` never goes back.
pub async fn prune(pool: &db::Pool, before: &str, keep: u64) -> Result<u64, sqlx::Error> {
    let head = head(pool).await? as i64;
    let floor = head.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX));
    let r = sqlx::query("DELETE FROM events WHERE id < $1 AND (id <= $2 OR created_at < $3)")
        .bind(head)
        .bind(floor)
        .bind(before)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
