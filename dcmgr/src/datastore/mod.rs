//! The database: sqlx's `Any` driver over SQLite (default) or PostgreSQL, so that one set
//! of SQL and one set of migrations serve both. Queries use `$N` placeholders, which
//! both drivers accept, and only TEXT and BIGINT columns.

pub mod account;
pub mod audit;
pub mod batch;
pub mod bundle;
pub mod event;
pub mod floating_ip;
pub mod host;
pub mod idempotency;
pub mod image;
pub mod instance;
pub mod interface;
pub mod job;
pub mod keypair;
pub mod locks;
pub mod metrics;
pub mod network;
pub mod quota;
pub mod retention;
pub mod secgroup;
pub mod sent;
pub mod server_group;
pub mod site;
pub mod snapshot;
pub mod user;
pub mod volume;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use std::time::Duration;

pub type Pool = AnyPool;

/// A transaction. On SQLite it holds the database's write gate, and with it the one
/// writer connection, from begin to end.
///
/// SQLite takes one writer at a time, and a writer that finds the file locked sleeps in
/// SQLite's busy handler (1, 2, 5, 10, … ms) however soon the lock is free: with 32
/// creates in flight the file sat idle while writers slept. So a transaction first waits
/// its turn at the gate (a FIFO queue in this process, woken the moment the previous one
/// ends) and SQLite never sees two writers. SQLite serves one dcmgr (`lock_sqlite`), so
/// the gate sees every writer. PostgreSQL locks rows and has no gate.
pub struct Tx<'a> {
    conn: TxConn,
    /// SQLite: `BEGIN` was sent (with the first round trip) and neither `COMMIT` nor
    /// `ROLLBACK` ran since (dropped so, the transaction is rolled back before the next
    /// takes the writer).
    open: bool,
    /// Events written as the transaction commits, all in one statement
    /// ([`event::record_at_commit`]).
    events: Vec<event::Pending>,
    /// Rows locked in this transaction (table, ID): a lock is held to its end, so taking
    /// one again is a statement for nothing (creates recorded together lock their
    /// account and image once).
    /// (A list: a transaction locks a few rows, and a savepoint keeps its length.)
    locked: Vec<(&'static str, String)>,
    /// Writes sent with the next [`Tx::fetch`], savepoint or commit ([`Tx::later`]).
    pending: Vec<Write>,
    /// Writes sent so far ([`Savepoint::at`] counts the same way).
    sent: usize,
    /// A round trip failed ([`Tx::failed`]).
    failed: bool,
    /// On SQLite, jobs may have ended in this transaction ([`ENDED_JOBS`]).
    pub(crate) jobs_ended: bool,
    /// Quotas read under the account's lock ([`quota::set_for_locked`]): unchanged until
    /// the transaction ends.
    pub(crate) quotas: Vec<(String, Vec<(String, i64)>)>,
    _borrow: std::marker::PhantomData<&'a ()>,
}

/// A transaction's connection.
enum TxConn {
    /// PostgreSQL: a pooled connection in sqlx's transaction.
    Pooled(sqlx::Transaction<'static, sqlx::Any>),
    /// SQLite: the writer, its turn at the gate held. Not pooled: a pooled connection
    /// costs a round trip to its thread when returned (sqlx pings it), each transaction
    /// found one whose page cache the others' writes had made stale, and sqlx's
    /// `commit` is a round trip of its own where here `COMMIT` ends the last script.
    Writer(tokio::sync::OwnedMutexGuard<Option<sqlx::AnyConnection>>),
    /// Taken by commit, rollback or drop.
    Ended,
}

impl std::ops::Deref for TxConn {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        match self {
            TxConn::Pooled(tx) => tx,
            TxConn::Writer(w) => w.as_ref().expect("the writer is open while its turn is held"),
            TxConn::Ended => unreachable!("a transaction is not used once ended"),
        }
    }
}

impl std::ops::DerefMut for TxConn {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        match self {
            TxConn::Pooled(tx) => tx,
            TxConn::Writer(w) => w.as_mut().expect("the writer is open while its turn is held"),
            TxConn::Ended => unreachable!("a transaction is not used once ended"),
        }
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // Ended without commit or rollback (an error, a cancelled request): the turn
        // passes on only after the rollback. sqlx does the same for its own transactions.
        let TxConn::Writer(w) = std::mem::replace(&mut self.conn, TxConn::Ended) else { return };
        let mut w = w;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Some(c) = w.as_mut() {
                        if c.execute("ROLLBACK").await.is_err() {
                            // Closing the connection rolls back; the next turn opens another.
                            *w = None;
                        }
                    }
                });
            }
            Err(_) => *w = None,
        }
    }
}

impl Tx<'_> {
    /// Whether the row `id` of `table` is already locked in this transaction.
    fn holds(&self, table: &'static str, id: &str) -> bool {
        self.locked.iter().any(|(t, i)| *t == table && i == id)
    }

    fn held(&mut self, table: &'static str, id: &str) {
        if !self.holds(table, id) {
            self.locked.push((table, id.to_owned()));
        }
    }

    /// Marks where [`Tx::rollback_to`] returns to; [`Tx::next_savepoint`] moves it on.
    /// On SQLite the savepoint is itself a write sent later ([`Tx::later`]): creates
    /// recorded together send theirs, and their rows, with the commit.
    pub async fn savepoint(&mut self) -> Result<Savepoint, sqlx::Error> {
        if self.sqlite() {
            self.pending.push(Write::new("SAVEPOINT part"));
        } else {
            (&mut *self.conn).execute("SAVEPOINT part").await?;
        }
        Ok(self.mark())
    }

    /// Keeps what was done since the savepoint `sp` and moves it here (on SQLite sent
    /// later, as [`Tx::savepoint`]).
    pub async fn next_savepoint(&mut self, sp: &mut Savepoint) -> Result<(), sqlx::Error> {
        if self.sqlite() {
            self.pending.push(Write::new("RELEASE SAVEPOINT part; SAVEPOINT part"));
        } else {
            // PostgreSQL prepares a statement given as text: one command each.
            (&mut *self.conn).execute("RELEASE SAVEPOINT part").await?;
            (&mut *self.conn).execute("SAVEPOINT part").await?;
        }
        *sp = self.mark();
        Ok(())
    }

    /// Undoes what was done since the savepoint `sp` (its events, locks and writes not
    /// yet sent too); `sp` stays, for what follows. Nothing is sent while the savepoint
    /// itself has not been.
    pub async fn rollback_to(&mut self, sp: &mut Savepoint) -> Result<(), sqlx::Error> {
        if self.sqlite() && sp.at > self.sent {
            self.pending.truncate(sp.at - self.sent);
        } else {
            self.pending.clear();
            (&mut *self.conn).execute("ROLLBACK TO SAVEPOINT part").await?;
        }
        self.events.truncate(sp.events);
        self.locked.truncate(sp.locked);
        self.quotas.truncate(sp.quotas);
        Ok(())
    }

    fn mark(&self) -> Savepoint {
        Savepoint {
            at: self.sent + self.pending.len(),
            events: self.events.len(),
            locked: self.locked.len(),
            quotas: self.quotas.len(),
        }
    }

    /// Whether a round trip of this transaction failed. What it carried is then not
    /// known to have been written, nor which of its writes failed (one of an earlier part
    /// of the transaction, perhaps): only a rollback of it all is sure.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Sends the writes waiting ([`Tx::later`]), before a statement run on the connection
    /// itself.
    pub async fn flush(&mut self) -> Result<(), sqlx::Error> {
        self.send(None).await
    }

    /// The connection, to run a statement on in this transaction, once the writes waiting
    /// (and on SQLite its `BEGIN`) were sent.
    pub async fn conn(&mut self) -> Result<&mut sqlx::AnyConnection, sqlx::Error> {
        self.send(None).await?;
        Ok(&mut self.conn)
    }

    /// Commits. On SQLite `COMMIT` ends the script of the writes waiting: one round trip.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        let events = std::mem::take(&mut self.events);
        let ended = self.jobs_ended.then_some(event::ENDED_JOBS);
        let write = event::pending_write(!self.sqlite(), &events, ended);
        if let Some(w) = write {
            self.pending.push(w);
        }
        if ended.is_some() {
            self.pending.push(Write::new("DELETE FROM ended_jobs"));
        }
        if self.sqlite() {
            if !self.open && self.pending.len() == 1 {
                // Nothing was written: its `BEGIN` alone waits.
                return Ok(());
            }
            // Failed before or at `COMMIT`, the transaction is still open: the drop rolls
            // it back.
            self.send(Some(Write::new("COMMIT"))).await?;
            self.open = false;
            return Ok(());
        }
        self.send(None).await?;
        match std::mem::replace(&mut self.conn, TxConn::Ended) {
            TxConn::Pooled(tx) => tx.commit().await,
            _ => unreachable!("PostgreSQL's transactions are sqlx's"),
        }
    }

    pub(crate) fn sqlite(&self) -> bool {
        !matches!(self.conn, TxConn::Pooled(_))
    }

    /// Runs `w` now, after the writes waiting, in the same round trip.
    pub async fn run(&mut self, w: Write) -> Result<(), sqlx::Error> {
        self.send(Some(w)).await
    }

    /// A write whose only answer is whether it worked: on SQLite sent with the next
    /// [`Tx::fetch`], savepoint or commit, in the same round trip (each statement is one
    /// to the writer's thread, 45 µs here, and the next transaction waits behind it). At
    /// once on PostgreSQL, which takes one statement per command. [`Tx::conn`] sends them
    /// before anything runs on the connection itself.
    pub async fn later(&mut self, w: Write) -> Result<(), sqlx::Error> {
        if self.sqlite() {
            self.pending.push(w);
            return Ok(());
        }
        w.query().execute(&mut *self.conn).await.map(drop)
    }

    /// Runs `w` now, with nothing waiting: the rows it changed.
    pub async fn run_counted(&mut self, w: Write) -> Result<u64, sqlx::Error> {
        self.send(None).await?;
        Ok(w.query().execute(&mut *self.conn).await?.rows_affected())
    }

    /// As [`Tx::later`] for a write that must change exactly one row (an `UPDATE` whose
    /// `WHERE` checks what was decided on, e.g. a host's room): on SQLite the round trip
    /// that sends it fails when it changed none ([`is_checked_write_failure`], retryable
    /// as a lost race); a savepoint before it returns to before it. Whether it changed
    /// the row: on SQLite yes until then, on PostgreSQL as it ran.
    pub async fn later_checked(&mut self, w: Write) -> Result<bool, sqlx::Error> {
        if self.sqlite() {
            self.pending.push(w);
            self.pending.push(Write::new("INSERT INTO checked_write (changed) VALUES (changes())"));
            return Ok(true);
        }
        Ok(self.run_counted(w).await? == 1)
    }

    /// The rows `w` returns, sent after the writes waiting in the same round trip.
    pub async fn fetch<T>(&mut self, w: Write) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        let script = self.script(Some(w)).expect("a statement");
        let rows = script.query_as().fetch_all(&mut *self.conn).await;
        self.failed |= rows.is_err();
        rows
    }

    /// Sends the writes waiting, and `w`, as one script.
    async fn send(&mut self, w: Option<Write>) -> Result<(), sqlx::Error> {
        let Some(script) = self.script(w) else { return Ok(()) };
        let done = script.query().execute(&mut *self.conn).await.map(drop);
        self.failed |= done.is_err();
        done
    }

    /// The writes waiting, taken as sent, and `w` after them: one script (`w` alone when
    /// nothing waits), or nothing at all.
    fn script(&mut self, w: Option<Write>) -> Option<Write> {
        if self.pending.is_empty() {
            return w;
        }
        // On SQLite the first script carries `BEGIN`.
        self.open |= self.sqlite();
        self.sent += self.pending.len();
        Some(Write::script(std::mem::take(&mut self.pending).into_iter().chain(w)))
    }

    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        self.pending.clear();
        match std::mem::replace(&mut self.conn, TxConn::Ended) {
            TxConn::Pooled(tx) => tx.rollback().await,
            TxConn::Writer(w) => {
                self.conn = TxConn::Writer(w);
                if !self.open {
                    return Ok(());
                }
                (&mut *self.conn).execute("ROLLBACK").await?;
                self.open = false;
                Ok(())
            }
            TxConn::Ended => unreachable!("a transaction is not used once ended"),
        }
    }
}

/// A value bound to a [`Write`].
#[derive(Debug, Clone)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
}

impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(Some(v.to_owned()))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(Some(v))
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Arg {
        Arg::Text(v.map(str::to_owned))
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Arg {
        Arg::Text(v)
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Arg {
        Arg::Int(v)
    }
}

/// A statement with its values, to run now or later ([`Tx::later`]).
pub struct Write {
    sql: std::borrow::Cow<'static, str>,
    args: Vec<Arg>,
}

impl Write {
    pub fn new(sql: impl Into<std::borrow::Cow<'static, str>>) -> Write {
        Write { sql: sql.into(), args: Vec::new() }
    }

    pub fn bind(mut self, v: impl Into<Arg>) -> Write {
        self.args.push(v.into());
        self
    }

    /// Statements joined into one text (SQLite runs them in turn), each one's `$N`
    /// renumbered past the values of those before it.
    fn script(writes: impl Iterator<Item = Write>) -> Write {
        let mut out = Write::new(String::new());
        let mut sql = String::new();
        for w in writes {
            if !sql.is_empty() {
                sql.push_str(";\n");
            }
            renumber(&w.sql, out.args.len(), &mut sql);
            out.args.extend(w.args);
        }
        out.sql = sql.into();
        out
    }

    // Kept prepared (sqlx's default): every statement and script has one of a few shapes
    // (a create's, a report's).
    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        sqlx::query_with(&self.sql, self.arguments())
    }

    fn query_as<T>(&self) -> sqlx::query::QueryAs<'_, sqlx::Any, T, sqlx::any::AnyArguments<'_>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        sqlx::query_as_with(&self.sql, self.arguments())
    }

    fn arguments(&self) -> sqlx::any::AnyArguments<'_> {
        use sqlx::Arguments;
        let mut out = sqlx::any::AnyArguments::default();
        for a in &self.args {
            // Adding a TEXT or BIGINT value cannot fail (only an encoder can).
            let _ = match a {
                Arg::Text(v) => out.add(v.as_deref()),
                Arg::Int(v) => out.add(*v),
            };
        }
        out
    }
}

/// Appends `sql` to `out` with each `$N` made `$(N + by)`.
fn renumber(sql: &str, by: usize, out: &mut String) {
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
}

/// A point in a transaction to undo what follows (`SAVEPOINT`): see [`Tx::savepoint`].
#[must_use]
pub struct Savepoint {
    /// On SQLite, the writes up to and including the savepoint's own ([`Tx::sent`]).
    at: usize,
    events: usize,
    locked: usize,
    quotas: usize,
}

impl std::ops::Deref for Tx<'_> {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.conn
    }
}

/// A SQLite database's write gate, holding its one writer connection (opened at the
/// first turn; `None` again after a failure, to be opened anew).
type Gate = std::sync::Arc<tokio::sync::Mutex<Option<sqlx::AnyConnection>>>;

/// A turn at the write gate.
type Turn = tokio::sync::OwnedMutexGuard<Option<sqlx::AnyConnection>>;

/// The writer of the turn `w`, opened if it is not.
async fn writer<'w>(w: &'w mut Turn, pool: &Pool) -> Result<&'w mut sqlx::AnyConnection, sqlx::Error> {
    if w.is_none() {
        let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect_with(&pool.connect_options()).await?;
        sqlite_settings(&mut c).await?;
        **w = Some(c);
    }
    Ok(w.as_mut().expect("opened above"))
}

/// The write gate of a SQLite database (by its URL: one per file in this process; the
/// tests run many), `None` on PostgreSQL.
fn gate_of(pool: &Pool) -> Option<Gate> {
    static GATES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Gate>>> =
        std::sync::LazyLock::new(Default::default);
    let opts = pool.connect_options();
    let url = opts.database_url.as_str();
    if !url.starts_with("sqlite:") {
        return None;
    }
    let mut gates = GATES.lock().unwrap();
    // Looked up before `entry`, which would allocate the URL on every transaction.
    if let Some(g) = gates.get(url) {
        return Some(g.clone());
    }
    // The tests' databases come and go: a gate whose file is gone closes its writer.
    gates.retain(|url, _| sqlite_path(url).is_none_or(|p| p.exists()));
    Some(gates.entry(url.to_owned()).or_default().clone())
}

/// The file of a `sqlite://` URL.
fn sqlite_path(url: &str) -> Option<&std::path::Path> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.starts_with(':')).then(|| std::path::Path::new(path))
}

fn is_postgres(conn: &sqlx::AnyConnection) -> bool {
    conn.backend_name().eq_ignore_ascii_case("postgresql")
}

/// Whether the database has one writer (SQLite), whose transactions take turns.
pub fn one_writer(pool: &Pool) -> bool {
    gate_of(pool).is_some()
}

async fn write_turn(pool: &Pool) -> Option<Turn> {
    match gate_of(pool) {
        Some(g) => Some(g.lock_owned().await),
        None => None,
    }
}

/// Runs one write outside a transaction: on SQLite on the writer, at its turn (a pooled
/// connection's write would leave the writer's page cache stale); on PostgreSQL on the
/// pool. Never while holding a [`Tx`] of the same database.
pub async fn write_alone<'q>(
    pool: &Pool,
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
) -> Result<sqlx::any::AnyQueryResult, sqlx::Error> {
    let Some(mut turn) = write_turn(pool).await else { return q.execute(pool).await };
    q.execute(writer(&mut turn, pool).await?).await
}

/// An advisory lock key for a name (an image's or an export's ID): 32 bits of its
/// SHA-256. Two names sharing one only take turns.
pub fn advisory_key(name: &str) -> i32 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(name.as_bytes());
    i32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

/// Begins a transaction, after the write gate on SQLite.
pub async fn begin(pool: &Pool) -> Result<Tx<'static>, sqlx::Error> {
    let conn = match write_turn(pool).await {
        None => TxConn::Pooled(pool.begin().await?),
        Some(mut w) => {
            writer(&mut w, pool).await?;
            TxConn::Writer(w)
        }
    };
    // On SQLite `BEGIN` goes with the transaction's first round trip.
    let pending = if matches!(conn, TxConn::Writer(_)) { vec![Write::new("BEGIN")] } else { Vec::new() };
    Ok(Tx {
        open: false,
        conn,
        events: Vec::new(),
        locked: Vec::new(),
        pending,
        sent: 0,
        failed: false,
        jobs_ended: false,
        quotas: Vec::new(),
        _borrow: std::marker::PhantomData,
    })
}
/// One connection taken from the pool, for reads that run several statements.
pub type Conn = sqlx::AnyConnection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn connect(url: &str) -> Result<(Pool, DbKind), sqlx::Error> {
    sqlx::any::install_default_drivers();
    let (kind, url) = if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or(rest);
        if let Some(dir) = std::path::Path::new(path).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
            }
        }
        private_file(std::path::Path::new(path)).map_err(sqlx::Error::Io)?;
        let url = if rest.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") };
        (DbKind::Sqlite, url)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        (DbKind::Postgres, url.to_owned())
    } else {
        return Err(sqlx::Error::Configuration(
            format!("unsupported database URL {url:?}: use sqlite://PATH or postgres://…").into(),
        ));
    };
    let pool = AnyPoolOptions::new()
        .max_connections(if kind == DbKind::Sqlite { 8 } else { 16 })
        .acquire_timeout(Duration::from_secs(30))
        // A ping before each use is a round trip to SQLite's worker thread (5 % of
        // `vdc-bench`'s CPU) for a connection to a file, which cannot break; a PostgreSQL
        // connection can, when the server restarts.
        .test_before_acquire(kind != DbKind::Sqlite)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if kind == DbKind::Sqlite {
                    sqlite_settings(conn).await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    MIGRATOR.run(&pool).await?;
    if kind == DbKind::Sqlite {
        pool.execute(ENDED_JOBS).await?;
    }
    if kind == DbKind::Postgres {
        // IF NOT EXISTS does not hold against a concurrent create (pg_class's unique
        // index refuses the second): a dcmgr starting beside another finds it made.
        if let Err(e) = pool.execute(event::PG_SEQUENCE).await {
            if !is_unique_violation(&e) {
                return Err(e);
            }
        }
    }
    Ok((pool, kind))
}

/// What each SQLite connection is set to (the pool's and the writer).
async fn sqlite_settings(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    // WAL lets readers run beside the one writer; NORMAL sync is safe with WAL (a power
    // cut can lose the last commits, never corrupt the file).
    conn.execute(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON",
    )
    .await?;
    conn.execute(CHECKED_WRITES).await?;
    Ok(())
}

/// SQLite serves one dcmgr: holds an exclusive `flock` on the database file for as long
/// as the returned file is open, or says that another dcmgr has it. `None` for
/// PostgreSQL (several dcmgrs may share it) and in-memory databases.
pub fn lock_sqlite(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(rest) = url.strip_prefix("sqlite://") else { return Ok(None) };
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.starts_with(':') {
        return Ok(None);
    }
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    private_file(path)?;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => anyhow::bail!(
            "another dcmgr serves the SQLite database {}: SQLite takes one dcmgr; run several on PostgreSQL \
             (README: several controllers)",
            path.display()
        ),
        Err(e) => Err(anyhow::anyhow!("cannot lock {}: {e}", path.display())),
    }
}

/// Makes the SQLite database file exist, readable by its owner only (it holds every
/// tenant's data and token hashes). SQLite gives its `-wal` and `-shm` files the
/// database's mode; those of an older, more open database are closed too.
fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if path.as_os_str().is_empty() || path.to_str().is_some_and(|p| p == ":memory:" || p.starts_with(':')) {
        return Ok(());
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if std::path::Path::new(&p).exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// True for errors that a retry of the whole transaction can fix: lock contention and
/// unique-key races on generated values.
pub fn is_retryable(e: &sqlx::Error) -> bool {
    match e.as_database_error().and_then(|d| d.code()) {
        // SQLite: BUSY, BUSY_SNAPSHOT, LOCKED, UNIQUE, PRIMARYKEY, FOREIGNKEY; PostgreSQL:
        // unique and foreign-key violations, serialization failure, deadlock. A foreign
        // key only fails when what a request refers to went away meanwhile: the retry
        // decides again and answers what is now true (404, 409).
        // And a write sent later that found its row changed (the decision is made again).
        Some(c) => {
            matches!(&*c, "5" | "517" | "6" | "2067" | "1555" | "787" | "23505" | "23503" | "40001" | "40P01")
                || is_checked_write_failure(e)
        }
        None => matches!(e, sqlx::Error::PoolTimedOut),
    }
}

/// What fails a SQLite script whose checked write changed no row ([`Tx::later_checked`]):
/// inserting into this view the rows the statement before changed. Made on each
/// connection (TEMP), as PostgreSQL, which never sends writes later, has no use for it.
const CHECKED_WRITES: &str = "CREATE TEMP VIEW IF NOT EXISTS checked_write AS SELECT 1 AS changed;
    CREATE TEMP TRIGGER IF NOT EXISTS checked_write_failed INSTEAD OF INSERT ON checked_write
    WHEN NEW.changed <> 1 BEGIN SELECT RAISE(ABORT, 'vdc_checked_write: the row changed before the commit'); END";

/// On SQLite, the jobs a transaction ended, noted by a trigger, whose events the commit
/// writes and then forgets (`event::ENDED_JOBS`): an `UPDATE` of jobs then needs no
/// `RETURNING`, so it too can be sent later ([`Tx::later`]). Made at connect, after the
/// migrations (SQLite's trigger syntax is its own; PostgreSQL returns the IDs).
const ENDED_JOBS: &str = "CREATE TABLE IF NOT EXISTS ended_jobs (id TEXT NOT NULL);
    CREATE TRIGGER IF NOT EXISTS job_ended AFTER UPDATE OF state ON jobs
    WHEN OLD.state = 'running' AND NEW.state <> 'running' BEGIN INSERT INTO ended_jobs (id) VALUES (NEW.id); END";

/// Whether `e` is a write sent later that found its row changed ([`Tx::later_checked`]).
pub fn is_checked_write_failure(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.message().contains("vdc_checked_write"))
}

pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e.as_database_error().and_then(|d| d.code()).as_deref(), Some("2067" | "1555" | "23505"))
}

/// Now, as stored: RFC 3339, UTC, milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Parses a value read from `column` (an address, a CIDR) into its contract type. Only
/// dcmgr writes these columns, from values it parsed: a failure is a bug or a hand-edited
/// database, answered as an internal error that names the column and the value.
pub fn stored<T>(column: &str, s: &str) -> Result<T, crate::error::ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| crate::error::ApiError::internal(format!("{column} {s:?} in the database: {e}")))
}

pub fn parse_time(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&chrono::Utc)).unwrap_or_default()
}

/// `,a,b,` ↔ `[a, b]`: lists stored so that `LIKE '%,a,%'` finds members.
pub fn join_list<T: std::fmt::Display>(items: &[T]) -> String {
    let mut s = String::from(",");
    for i in items {
        s.push_str(&i.to_string());
        s.push(',');
    }
    s
}

pub fn split_list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').filter(|p| !p.is_empty()).filter_map(|p| p.parse().ok()).collect()
}

/// Runs a transaction body again when it lost a race (see [`ApiError::Busy`]).
pub async fn retry<T, F, Fut>(mut body: F) -> Result<T, crate::error::ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::error::ApiError>>,
{
    use rand::Rng;
    let mut attempt = 0;
    loop {
        match body().await {
            Err(crate::error::ApiError::Busy(why)) if attempt < 10 => {
                attempt += 1;
                tracing::debug!(attempt, %why, "retrying transaction");
                let ms = rand::thread_rng().gen_range(1..=5u64 << attempt.min(5));
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            other => return other,
        }
    }
}

/// Resources whose names are unique within their account (migration 0014: a unique
/// index is the last guard; a create checks first, to answer `name_taken` with the
/// holder's ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    Network,
    SecurityGroup,
    Volume,
    Image,
}

/// The ID of the account's resource of kind `what` named `name`, if there is one. A
/// deleted volume (its row kept) no longer holds its name.
pub async fn named(tx: &mut Tx<'_>, what: Named, account: &str, name: &str) -> Result<Option<String>, sqlx::Error> {
    let sql = match what {
        Named::Network => "SELECT id FROM networks WHERE account_id = $1 AND name = $2",
        Named::SecurityGroup => "SELECT id FROM security_groups WHERE account_id = $1 AND name = $2",
        Named::Volume => "SELECT id FROM volumes WHERE account_id = $1 AND name = $2 AND state <> 'deleted'",
        Named::Image => "SELECT id FROM images WHERE account_id = $1 AND name = $2",
    };
    let row: Option<(String,)> = sqlx::query_as(sql).bind(account).bind(name).fetch_optional(tx.conn().await?).await?;
    Ok(row.map(|r| r.0))
}

/// Rows a decision can lock (see [`lock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    Instance,
    Volume,
    Snapshot,
    Network,
    SecurityGroup,
    Image,
    KeyPair,
    FloatingIp,
    Interface,
}

/// Takes the lock on one row as the first write of a decision's transaction: PostgreSQL
/// holds the row lock and SQLite the database write lock until commit, so everything the
/// transaction reads afterwards is current and stays so. Concurrent decisions on the
/// same row run one after the other, each seeing what the previous one committed.
/// Returns false when the row does not exist.
pub async fn lock(tx: &mut Tx<'_>, what: Lock, id: &str) -> Result<bool, sqlx::Error> {
    // Fixed statements: sqlx wants no SQL built at run time.
    let (table, sql) = match what {
        Lock::Instance => ("instances", "UPDATE instances SET lock_seq = lock_seq + 1 WHERE id = $1 RETURNING 1"),
        Lock::Volume => ("volumes", "UPDATE volumes SET lock_seq = lock_seq + 1 WHERE id = $1 RETURNING 1"),
        Lock::Snapshot => ("snapshots", "UPDATE snapshots SET lock_seq = lock_seq + 1 WHERE id = $1 RETURNING 1"),
        Lock::Network => ("networks", "UPDATE networks SET lock_seq = lock_seq + 1 WHERE id = $1 RETURNING 1"),
        Lock::SecurityGroup => {
            ("security_groups", "UPDATE security_groups SET lock_seq = lock_seq + 1 WHERE id = $1 RETURNING 1")
        }
        // A deleted image (its row kept while used) is not there for a decision.
        Lock::Image => {
            ("images", "UPDATE images SET lock_seq = lock_seq + 1 WHERE id = $1 AND deleted_at IS NULL RETURNING 1")
        }
        Lock::KeyPair => ("keypairs", "UPDATE keypairs SET lock_seq = lock_seq + 1 WHERE id = $1 RETURNING 1"),
        Lock::FloatingIp => {
            ("floating_ips", "UPDATE floating_ips SET lock_seq = lock_seq + 1 WHERE id = $1 RETURNING 1")
        }
        // Interfaces have no lock_seq: a write that changes nothing takes the lock as well.
        Lock::Interface => ("vifs", "UPDATE vifs SET report_gen = report_gen WHERE id = $1 RETURNING 1"),
    };
    if tx.holds(table, id) {
        return Ok(true);
    }
    // With the writes waiting ([`Tx::later`]) in the same round trip.
    let found = !tx.fetch::<(i64,)>(Write::new(sql).bind(id)).await?.is_empty();
    if found {
        tx.held(table, id);
    }
    Ok(found)
}

/// Locks row `id` of `what` against its deletion until the transaction ends, for a new
/// row that refers to it. On PostgreSQL a share lock: creates from one image (or with
/// one key pair) took its row's exclusive lock, so each waited for the one before it to
/// commit; a delete's lock ([`lock`]) still waits for them, and then sees what they made.
/// On SQLite [`lock`] (one writer).
pub async fn lock_referred(tx: &mut Tx<'_>, what: Lock, id: &str) -> Result<bool, sqlx::Error> {
    let (table, shared, sql) = match what {
        Lock::Image => {
            ("images", "images, shared", "SELECT 1 FROM images WHERE id = $1 AND deleted_at IS NULL FOR SHARE")
        }
        Lock::KeyPair => ("keypairs", "keypairs, shared", "SELECT 1 FROM keypairs WHERE id = $1 FOR SHARE"),
        _ => return lock(tx, what, id).await,
    };
    if tx.sqlite() {
        return lock(tx, what, id).await;
    }
    if tx.holds(table, id) || tx.holds(shared, id) {
        return Ok(true);
    }
    let found = !tx.fetch::<(i64,)>(Write::new(sql).bind(id)).await?.is_empty();
    if found {
        tx.held(shared, id);
    }
    Ok(found)
}

/// A time as stored (see [`now`]).
pub fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row of network `nw-{i}` (VNI 1000 + i), as a write.
    fn network_row(i: i64) -> Write {
        Write::new(
            "INSERT INTO networks (id, account_id, name, cidr, gateway, dhcp_start, dhcp_end, vni, created_at) \
             VALUES ($1, 'a-1', $1, '10.0.0.0/24', '10.0.0.1', '10.0.0.2', '10.0.0.9', $2, 'now')",
        )
        .bind(format!("nw-{i}"))
        .bind(1000 + i)
    }

    /// On SQLite a transaction waits for the one before it to end instead of meeting
    /// SQLite's busy handler, and many at once all commit; a second database in the same
    /// process has a gate of its own.
    #[tokio::test]
    async fn sqlite_transactions_take_turns_at_the_gate() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = connect(&format!("sqlite://{}/a.sqlite", dir.path().display())).await.unwrap();
        let (other, _) = connect(&format!("sqlite://{}/b.sqlite", dir.path().display())).await.unwrap();
        let first = begin(&pool).await.unwrap();
        let second = tokio::spawn({
            let pool = pool.clone();
            async move { begin(&pool).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "a second transaction began beside the first");
        let elsewhere = tokio::time::timeout(Duration::from_secs(2), begin(&other)).await;
        assert!(elsewhere.is_ok(), "another database's transaction waited for this one's gate");
        drop(elsewhere);
        first.commit().await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), second).await.unwrap().unwrap().unwrap();
        // 64 writers at once, on 8 connections: every one commits, none waits out a timeout.
        let started = std::time::Instant::now();
        let writers: Vec<_> = (0..64)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut tx = begin(&pool).await?;
                    sqlx::query(
                        "INSERT INTO networks (id, account_id, name, cidr, gateway, dhcp_start, dhcp_end, vni, created_at) \
                         VALUES ($1, 'a-1', $1, '10.0.0.0/24', '10.0.0.1', '10.0.0.2', '10.0.0.9', $2, 'now')",
                    )
                    .bind(format!("nw-{i}"))
                    .bind(1000 + i as i64)
                    .execute(tx.conn().await?)
                    .await?;
                    tx.commit().await
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap().unwrap();
        }
        let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM networks").fetch_one(&pool).await.unwrap();
        assert_eq!(n.0, 64);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    /// SQLite's writer is one connection, in a transaction `Tx` begins and ends itself: a
    /// transaction dropped, rolled back, cancelled mid-way or whose commit fails leaves
    /// nothing written and the writer free for the next, which commits.
    #[tokio::test]
    async fn sqlite_writer_is_left_clean_however_a_transaction_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = connect(&format!("sqlite://{}/a.sqlite", dir.path().display())).await.unwrap();
        let count = |pool: Pool| async move {
            let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM networks").fetch_one(&pool).await.unwrap();
            n.0
        };
        // Dropped after its write was sent.
        let mut tx = begin(&pool).await.unwrap();
        tx.run(network_row(1)).await.unwrap();
        drop(tx);
        // Rolled back, with a write still waiting and one sent.
        let mut tx = begin(&pool).await.unwrap();
        tx.run(network_row(2)).await.unwrap();
        tx.later(network_row(3)).await.unwrap();
        tx.rollback().await.unwrap();
        // Cancelled while it holds the writer.
        let task = tokio::spawn({
            let pool = pool.clone();
            async move {
                let mut tx = begin(&pool).await.unwrap();
                tx.run(network_row(4)).await.unwrap();
                std::future::pending::<()>().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        task.abort();
        let _ = task.await;
        // Its commit fails (a duplicate ID, sent with the commit).
        let mut tx = begin(&pool).await.unwrap();
        tx.run(network_row(5)).await.unwrap();
        tx.later(network_row(5)).await.unwrap();
        assert!(tx.commit().await.is_err(), "a duplicate ID committed");
        // Ended with nothing sent, not even its BEGIN; and a statement run on the
        // connection itself sees what waited before it, in the transaction.
        begin(&pool).await.unwrap().commit().await.unwrap();
        begin(&pool).await.unwrap().rollback().await.unwrap();
        let mut tx = begin(&pool).await.unwrap();
        tx.later(network_row(8)).await.unwrap();
        let seen: (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM networks").fetch_one(tx.conn().await.unwrap()).await.unwrap();
        assert_eq!(seen.0, 1);
        tx.rollback().await.unwrap();
        assert_eq!(count(pool.clone()).await, 0, "a write of a transaction that did not commit is in the database");
        // The writer goes on.
        for i in [6, 7] {
            let mut tx = tokio::time::timeout(Duration::from_secs(5), begin(&pool))
                .await
                .expect("the writer was freed")
                .unwrap();
            tx.later(network_row(i)).await.unwrap();
            tx.commit().await.unwrap();
        }
        assert_eq!(count(pool.clone()).await, 2);
    }

    /// Events recorded for the commit are written in one statement, in their order, and
    /// only for what commits: a savepoint rolled back to takes its rows, events and locks
    /// with it; a second state change of an object already pending is one event.
    #[tokio::test]
    async fn events_at_commit_follow_savepoints() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = connect(&format!("sqlite://{}/a.sqlite", dir.path().display())).await.unwrap();
        let mut tx = begin(&pool).await.unwrap();
        let mut sp = tx.savepoint().await.unwrap();
        tx.run(network_row(1)).await.unwrap();
        event::record_at_commit(&mut tx, event::Kind::Network, "nw-1", event::Change::Created).await.unwrap();
        assert!(lock(&mut tx, Lock::Network, "nw-1").await.unwrap());
        tx.next_savepoint(&mut sp).await.unwrap();
        tx.run(network_row(2)).await.unwrap();
        event::record_at_commit(&mut tx, event::Kind::Network, "nw-2", event::Change::Created).await.unwrap();
        assert!(lock(&mut tx, Lock::Network, "nw-2").await.unwrap());
        tx.rollback_to(&mut sp).await.unwrap();
        assert!(!tx.holds("networks", "nw-2"), "the lock went with the savepoint");
        assert!(tx.holds("networks", "nw-1"));
        tx.run(network_row(3)).await.unwrap();
        event::record_at_commit(&mut tx, event::Kind::Network, "nw-3", event::Change::Created).await.unwrap();
        event::changed_at_commit(&mut tx, event::Kind::Network, "nw-3", Some("x")).await.unwrap();
        tx.next_savepoint(&mut sp).await.unwrap();
        tx.commit().await.unwrap();
        let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM networks ORDER BY id").fetch_all(&pool).await.unwrap();
        assert_eq!(ids, [("nw-1".to_owned(),), ("nw-3".to_owned(),)]);
        let events: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT id, resource_id, change FROM events ORDER BY id").fetch_all(&pool).await.unwrap();
        assert_eq!(events, [(1, "nw-1".into(), "created".into()), (2, "nw-3".into(), "created".into())]);
    }

    /// Writes sent later go, in order, with the next round trip that needs them: a read
    /// sees them, each one's `$N` reaches its own values, a savepoint rolled back takes
    /// those waiting, and one that fails fails the commit, which keeps nothing.
    #[tokio::test]
    async fn later_writes_go_with_the_next_round_trip() {
        let mut out = String::new();
        renumber("a = $1 AND b IN ($2, $12) -- $x $", 3, &mut out);
        assert_eq!(out, "a = $4 AND b IN ($5, $15) -- $x $");
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = connect(&format!("sqlite://{}/a.sqlite", dir.path().display())).await.unwrap();
        let names = || Write::new("SELECT id, vni FROM networks WHERE vni >= $1 ORDER BY id").bind(1000);
        let renamed = |id: &str| Write::new("UPDATE networks SET name = 'renamed' WHERE id = $1").bind(id);
        let mut tx = begin(&pool).await.unwrap();
        tx.later(network_row(1)).await.unwrap();
        tx.later(network_row(2)).await.unwrap();
        assert_eq!(tx.pending.len(), 3, "SQLite keeps them, after its BEGIN, for the next round trip");
        let seen: Vec<(String, i64)> = tx.fetch(names()).await.unwrap();
        assert_eq!(seen, [("nw-1".into(), 1001), ("nw-2".into(), 1002)]);
        // A savepoint not yet sent is undone without a round trip: what followed it goes.
        let mut sp = tx.savepoint().await.unwrap();
        tx.later(network_row(3)).await.unwrap();
        tx.rollback_to(&mut sp).await.unwrap();
        assert_eq!(tx.pending.len(), 1, "the savepoint itself stays");
        tx.later(network_row(4)).await.unwrap();
        tx.next_savepoint(&mut sp).await.unwrap();
        let seen: Vec<(String, i64)> = tx.fetch(names()).await.unwrap();
        assert_eq!(seen.len(), 3);
        // One sent is rolled back to in SQL, with what waits after it.
        tx.later(network_row(6)).await.unwrap();
        tx.later_checked(renamed("nw-404")).await.unwrap();
        tx.rollback_to(&mut sp).await.unwrap();
        assert!(tx.pending.is_empty());
        assert!(tx.later_checked(renamed("nw-4")).await.unwrap());
        assert!(!tx.failed());
        tx.commit().await.unwrap();
        let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM networks ORDER BY id").fetch_all(&pool).await.unwrap();
        assert_eq!(ids, [("nw-1".to_owned(),), ("nw-2".to_owned(),), ("nw-4".to_owned(),)]);
        let (name,): (String,) =
            sqlx::query_as("SELECT name FROM networks WHERE id = 'nw-4'").fetch_one(&pool).await.unwrap();
        assert_eq!(name, "renamed");
        // A checked write that changes no row fails its round trip, as a lost race, and
        // the transaction knows it failed.
        let mut tx = begin(&pool).await.unwrap();
        tx.later(network_row(5)).await.unwrap();
        assert!(tx.later_checked(renamed("nw-404")).await.unwrap(), "SQLite answers at the round trip");
        let e = tx.flush().await.unwrap_err();
        assert!(is_checked_write_failure(&e) && is_retryable(&e), "{e}");
        assert!(tx.failed());
        drop(tx);
        // A write sent later that fails fails the commit, which keeps nothing.
        let mut tx = begin(&pool).await.unwrap();
        tx.later(network_row(7)).await.unwrap();
        tx.later(network_row(1)).await.unwrap();
        assert!(tx.commit().await.is_err());
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM networks").fetch_one(&pool).await.unwrap();
        assert_eq!(n, 3);
    }

    /// On SQLite the jobs a transaction ends are noted by a trigger and become events at
    /// its commit, the update itself sent later; a savepoint rolled back takes its note.
    #[tokio::test]
    async fn ended_jobs_become_events_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = connect(&format!("sqlite://{}/a.sqlite", dir.path().display())).await.unwrap();
        let account: vdc_schema::id::AccountId = "a-1".parse().unwrap();
        let mut tx = begin(&pool).await.unwrap();
        let one = job::start_first(&mut tx, &account, "instance.create", "i-1", "running").await.unwrap();
        let two = job::start_first(&mut tx, &account, "instance.create", "i-2", "running").await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = begin(&pool).await.unwrap();
        job::finish_reached(&mut tx, "i-1", "running", None).await.unwrap();
        let mut sp = tx.savepoint().await.unwrap();
        job::fail_all(&mut tx, "i-2", "undone").await.unwrap();
        tx.rollback_to(&mut sp).await.unwrap();
        tx.commit().await.unwrap();
        let events: Vec<(String, String, String)> =
            sqlx::query_as("SELECT resource_id, change, state FROM events WHERE change = 'state' ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(events, [(one.id.to_string(), "state".into(), "succeeded".into())]);
        let (state,): (String,) = sqlx::query_as("SELECT state FROM jobs WHERE id = $1")
            .bind(two.id.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(state, "running", "the rolled-back failure is gone");
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ended_jobs").fetch_one(&pool).await.unwrap();
        assert_eq!(left, 0, "the commit forgets what it wrote");
    }

    /// An upgrade onto a database that holds a name twice (allowed before 0014) keeps
    /// every row: the oldest keeps the name, the others become NAME-ID.
    #[tokio::test]
    async fn unique_names_upgrade_renames_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new().max_connections(1).connect(&format!("{url}?mode=rwc")).await.unwrap();
        let before = sqlx::migrate::Migrator {
            migrations: MIGRATOR.migrations.iter().filter(|m| m.version < 14).cloned().collect(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before.run(&pool).await.unwrap();
        for (id, account, name) in [("nw-1", "a-1", "net"), ("nw-2", "a-1", "net"), ("nw-3", "a-2", "net")] {
            sqlx::query(
                "INSERT INTO networks (id, account_id, name, cidr, gateway, dhcp_start, dhcp_end, vni, created_at) \
                 VALUES ($1, $2, $3, '10.0.0.0/24', '10.0.0.1', '10.0.0.2', '10.0.0.9', $4, 'now')",
            )
            .bind(id)
            .bind(account)
            .bind(name)
            .bind(id.len() as i64 * 100 + id.as_bytes()[3] as i64)
            .execute(&pool)
            .await
            .unwrap();
        }
        for (id, state) in [("vol-1", "deleted"), ("vol-2", "available"), ("vol-3", "available")] {
            sqlx::query(
                "INSERT INTO volumes (id, account_id, name, size_mib, state, created_at, updated_at) \
                 VALUES ($1, 'a-1', 'data', 16, $2, 'now', 'now')",
            )
            .bind(id)
            .bind(state)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
        let (pool, _) = connect(&url).await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm"] {
            let mode = std::fs::metadata(dir.path().join(f)).map(|m| m.permissions().mode() & 0o777);
            assert!(matches!(mode, Ok(0o600) | Err(_)), "{f}: {mode:?}");
        }
        assert_eq!(std::fs::metadata(dir.path().join("db.sqlite")).unwrap().permissions().mode() & 0o777, 0o600);
        let names = |table: &'static str| {
            let pool = pool.clone();
            async move {
                let rows: Vec<(String, String)> = sqlx::query_as(&format!("SELECT id, name FROM {table} ORDER BY id"))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                rows
            }
        };
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(names("networks").await, [s("nw-1", "net"), s("nw-2", "net-nw-2"), s("nw-3", "net")]);
        assert_eq!(names("volumes").await, [s("vol-1", "data"), s("vol-2", "data"), s("vol-3", "data-vol-3")]);
        // And from now on the database itself refuses a second name.
        let again = sqlx::query(
            "INSERT INTO networks (id, account_id, name, cidr, gateway, dhcp_start, dhcp_end, vni, created_at) \
             VALUES ('nw-4', 'a-1', 'net', '10.1.0.0/24', '10.1.0.1', '10.1.0.2', '10.1.0.9', 999, 'now')",
        )
        .execute(&pool)
        .await
        .unwrap_err();
        assert!(is_unique_violation(&again), "{again}");
    }

    /// Tokens made before users existed (migration 0016) keep working: each account gets an
    /// owner user of its name that holds them, admin if the account was.
    #[tokio::test]
    async fn tokens_from_before_users_still_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new().max_connections(1).connect(&format!("{url}?mode=rwc")).await.unwrap();
        let before = sqlx::migrate::Migrator {
            migrations: MIGRATOR.migrations.iter().filter(|m| m.version < 16).cloned().collect(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before.run(&pool).await.unwrap();
        for (id, name, admin) in [("a-0kq3m5v2ab7x9c", "alice", 0), ("a-1", "admin", 1)] {
            sqlx::query("INSERT INTO accounts (id, name, admin, created_at) VALUES ($1, $2, $3, 'now')")
                .bind(id)
                .bind(name)
                .bind(admin)
                .execute(&pool)
                .await
                .unwrap();
        }
        let hashes = ["a".repeat(64), "b".repeat(64), "c".repeat(64)];
        for (hash, account) in [(&hashes[0], "a-0kq3m5v2ab7x9c"), (&hashes[1], "a-0kq3m5v2ab7x9c"), (&hashes[2], "a-1")]
        {
            sqlx::query("INSERT INTO api_tokens (token_hash, account_id, created_at) VALUES ($1, $2, 'now')")
                .bind(hash)
                .bind(account)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
        let (pool, _) = connect(&url).await.unwrap();
        let row = user::by_hash(&pool, &hashes[1]).await.unwrap().expect("the old token is known");
        assert_eq!(
            (row.account_id.as_str(), row.user_id.as_str(), row.member_role.as_deref(), row.admin),
            ("a-0kq3m5v2ab7x9c", "u-0kq3m5v2ab7x9c", Some("owner"), 0)
        );
        assert!(row.revoked_at.is_none() && row.expires_at.is_none() && row.token_role.is_none());
        assert!(row.id.parse::<vdc_schema::id::TokenId>().is_ok(), "{}", row.id);
        let admin = user::by_hash(&pool, &hashes[2]).await.unwrap().unwrap();
        assert_eq!((admin.user_id.as_str(), admin.admin), ("u-1", 1));
        let u = user::user_named(&pool, "alice").await.unwrap().unwrap().into_api().unwrap();
        assert_eq!(u.id.as_str(), "u-0kq3m5v2ab7x9c");
        // Listed under names of their own, which are unique.
        let tokens = user::list_tokens(&pool, "a-0kq3m5v2ab7x9c", None, "", None, 10).await.unwrap();
        assert_eq!(tokens.len(), 2);
        assert_ne!(tokens[0].name, tokens[1].name);
        assert!(tokens.into_iter().all(|t| t.into_api().is_ok()));
    }
}
