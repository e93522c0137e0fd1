//! What each command does.

use super::*;
use crate::client::{Client, ClientError};
use crate::config;
use crate::output::{
    encode, fields_table, list_table, render_accepted, render_list, render_one, InAnyAccount, Tabular,
};
use crate::resolve::{resolve, resolve_all};
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;
use vdc_schema::api::*;

/// The API limit on user-data.
const MAX_USER_DATA: usize = 64 * 1024;
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(200);

struct Ctx {
    client: Client,
    /// `--account` (or its default from the environment or config file).
    account: Option<String>,
    format: OutputFormat,
    wait_timeout: Duration,
}

pub(super) async fn run(global: &GlobalArgs, mut command: Command) -> Result<(), CliError> {
    let format = match (&global.output, &mut command) {
        (OutputArg::Format(f), _) => *f,
        (OutputArg::File(p), Command::Bundle(BundleCmd::Export { out, .. })) => {
            if out.is_some() {
                return Err(CliError::usage("name the bundle's file once: --output FILE or --out FILE"));
            }
            *out = Some(p.clone());
            OutputFormat::Table
        }
        (OutputArg::File(p), _) => {
            return Err(CliError::usage(format!(
                "--output {}: the output format is table, json or yaml (only `vdc bundle export` \
                 takes a file there)",
                p.display()
            )))
        }
    };
    match command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vdc", &mut out);
            return emit(&String::from_utf8_lossy(&out));
        }
        Command::Up(_) => {
            return Err(CliError::usage("`vdc up` is run by the vdc binary itself"));
        }
        _ => {}
    }
    if let Command::Login { user, password_stdin } = &command {
        return login(global, user, *password_stdin).await;
    }
    let ep = config::load(global.api.as_deref(), global.token.as_deref(), global.account.as_deref())?;
    // An account named on the command line whose session is not kept: the token must act
    // in it, or the command would silently act in another account. (Account and user
    // commands, and a token's create, take the account as what they manage; audit as a
    // filter. A token's list and revoke act in it: they listed and revoked the admin's
    // own tokens, one of the same name too.)
    let manages = matches!(
        command,
        Command::Account(_)
            | Command::User(_)
            | Command::Token(TokenCmd::Create { .. })
            | Command::Audit(_)
            | Command::Logout { .. }
    );
    // An admin's token acts in the named account (the server checks it is an admin's).
    let mut client = Client::new(ep.api.clone(), ep.token.clone());
    if let (Some(a), true, false, false) = (&ep.account, ep.account_explicit, ep.token_for_account, manages) {
        let me = client.whoami().await?;
        if me.account.name != *a && me.account.id.as_str() != a {
            if me.admin {
                client = client.acting_in(a.clone());
                // An unknown account is said now, not as a 404 of whatever the command reads;
                // and a server older than X-Vdc-Account, which would act in the token's own
                // account, is caught before anything is done there.
                let there = client.whoami().await?;
                if there.account.name != *a && there.account.id.as_str() != a {
                    return Err(CliError::Failed(format!(
                        "--account {a}: this server does not let an admin's token act in another account \
                         (it answered as {}); use a token of {a} (`vdc account token {a}`)",
                        there.account.name
                    )));
                }
            } else {
                return Err(CliError::usage(format!(
                    "--account {a}: the token acts in account {} ({}); sign in to {a} with `vdc login {} --account {a}`, \
                     or pass a token of {a} with --token",
                    me.account.name, me.account.id, me.user.name
                )));
            }
        }
    }
    let ctx = Ctx { client, account: ep.account, format, wait_timeout: Duration::from_secs(global.wait_timeout) };
    match command {
        Command::Info => ctx.show(&ctx.client.api_info().await?),
        Command::Account(c) => account(&ctx, c).await,
        Command::User(c) => user(&ctx, c).await,
        Command::Token(c) => token(&ctx, c).await,
        Command::Keypair(c) => keypair(&ctx, c).await,
        Command::ServerGroup(c) => server_group(&ctx, c).await,
        Command::Image(c) => image(&ctx, c).await,
        Command::Network(c) => network(&ctx, c).await,
        Command::Secgroup(c) => secgroup(&ctx, c).await,
        Command::Instance(c) => instance(&ctx, c).await,
        Command::Volume(c) => volume(&ctx, c).await,
        Command::FloatingIp(c) => floating_ip(&ctx, c).await,
        Command::Snapshot(c) => snapshot(&ctx, c).await,
        Command::Host(c) => host(&ctx, c).await,
        Command::Job(c) => job(&ctx, c).await,
        Command::Events { follow, after } => events(&ctx, follow, after).await,
        Command::Bundle(c) => bundle(&ctx, c).await,
        Command::Whoami => ctx.show(&ctx.client.whoami().await?),
        Command::Logout { all } => logout(&ctx, all).await,
        Command::Login { .. } => unreachable!("handled above"),
        Command::Audit(AuditCmd::List { since, user, action, list }) => audit(&ctx, since, user, action, list).await,
        Command::Completions { .. } | Command::Up(_) => Ok(()),
    }
}

/// Write to stdout; a closed pipe (`vdc … | head`) is not an error.
#[cfg(not(test))]
fn emit(s: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::io("cannot write to stdout", e)),
        _ => Ok(()),
    }
}

// The test harness captures only `print!`.
#[cfg(test)]
fn emit(s: &str) -> Result<(), CliError> {
    print!("{s}");
    Ok(())
}

fn state_filter<T: ToString>(s: Option<T>) -> Option<String> {
    s.map(|s| s.to_string())
}

impl Ctx {
    fn quotas(&self, q: &AccountQuotas) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Table => emit(&list_table(&q.quotas)),
            f => emit(&encode(f, q)?),
        }
    }

    fn show<T: Tabular + Serialize>(&self, value: &T) -> Result<(), CliError> {
        emit(&render_one(self.format, value)?)
    }

    /// One page if `--limit`/`--cursor` was given, else every page.
    async fn list<T: Tabular + Serialize + DeserializeOwned>(
        &self,
        path: &str,
        args: ListArgs,
        name: Option<String>,
        state: Option<String>,
    ) -> Result<(), CliError> {
        self.list_query::<T>(path, args, ListQuery { state, name, ..Default::default() }, |_| {}).await
    }

    /// [`Self::list`] with every filter of `query` (its limit and cursor come from `args`),
    /// each item completed by `fill` before it is shown.
    async fn list_query<T: Tabular + Serialize + DeserializeOwned>(
        &self,
        path: &str,
        args: ListArgs,
        query: ListQuery,
        fill: impl FnMut(&mut T),
    ) -> Result<(), CliError> {
        let one_page = args.limit.is_some() || args.cursor.is_some();
        let query = ListQuery { limit: args.limit, cursor: args.cursor, ..query };
        let mut page: Page<T> = if one_page {
            self.client.list(path, &query).await?
        } else {
            Page { items: self.client.list_all(path, &query).await?, next_cursor: None }
        };
        page.items.iter_mut().for_each(fill);
        emit(&render_list(self.format, &page)?)?;
        if let (OutputFormat::Table, Some(c)) = (self.format, &page.next_cursor) {
            eprintln!("more items follow: add --cursor {c}");
        }
        Ok(())
    }

    /// What a 204 delete prints.
    fn deleted(&self, id: &str) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Table => emit(&format!("deleted {id}\n")),
            f => emit(&encode(f, &serde_json::json!({ "deleted": id }))?),
        }
    }

    /// Follow a job with a spinner (on a terminal) until it ends; a job that did not
    /// succeed is an error.
    async fn wait(&self, job: &Job) -> Result<Job, CliError> {
        let done = if job.state != JobState::Running {
            job.clone()
        } else {
            let bar = if std::io::stderr().is_terminal() {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.enable_steady_tick(Duration::from_millis(100));
                bar
            } else {
                ProgressBar::hidden()
            };
            bar.set_message(format!("{} {}", job.action, job.resource_id));
            let res = self
                .client
                .poll_job(&job.id, WAIT_POLL_INTERVAL, Some(self.wait_timeout), |j| {
                    bar.set_message(format!("{} {} ({})", j.action, j.resource_id, j.state))
                })
                .await;
            bar.finish_and_clear();
            match res {
                Err(ClientError::Timeout(msg)) => {
                    return Err(ClientError::Timeout(format!("{msg}; follow it with `vdc job wait {}`", job.id)).into())
                }
                other => other?,
            }
        };
        if done.state == JobState::Succeeded {
            Ok(done)
        } else {
            Err(CliError::JobFailed(Box::new(done)))
        }
    }

    /// Print a 202 answer, or with `--wait` the resource once its job is done.
    async fn accepted<T: Resource>(&self, acc: Accepted<T>, wait: WaitArg) -> Result<(), CliError> {
        if !wait.wait {
            return emit(&render_accepted(self.format, &acc)?);
        }
        let job = self.wait(&acc.job).await?;
        match acc.resource.refetch(&self.client).await {
            Ok(r) => self.show(&r),
            // A deleted resource may be gone: the finished job is what is left to show.
            Err(e) if e.is_not_found() => self.show(&job),
            Err(e) => Err(e.into()),
        }
    }
}

/// A resource that long operations change, fetched again once they are done.
trait Resource: Tabular + Serialize + Sized {
    async fn refetch(&self, client: &Client) -> Result<Self, ClientError>;
}

impl Resource for Instance {
    /// Once running, its interfaces too: `--wait` means ready to use, and a script that
    /// pinged a guest right after `create --wait` found its interface not yet programmed
    /// (red team, 2026-12-06). At most a minute more.
    async fn refetch(&self, client: &Client) -> Result<Self, ClientError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let i = client.get_instance(&self.id).await?;
            let plugging = i.state == vdc_schema::InstanceState::Running
                && i.interfaces.iter().any(|v| v.state == vdc_schema::InterfaceState::Pending);
            if !plugging || std::time::Instant::now() >= deadline {
                return Ok(i);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Resource for Volume {
    async fn refetch(&self, client: &Client) -> Result<Self, ClientError> {
        client.get_volume(&self.id).await
    }
}

impl Resource for Image {
    async fn refetch(&self, client: &Client) -> Result<Self, ClientError> {
        client.get_image(&self.id).await
    }
}

impl Resource for Snapshot {
    async fn refetch(&self, client: &Client) -> Result<Self, ClientError> {
        client.get_snapshot(&self.id).await
    }
}

// ------------------------------------------------------------------ handlers

async fn account(ctx: &Ctx, cmd: AccountCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        AccountCmd::Create { name, admin } => {
            let created = c.create_account(&CreateAccount { name, admin }).await?;
            match ctx.format {
                OutputFormat::Table => {
                    let mut fields = created.account.fields();
                    fields.push(("TOKEN", created.token.clone()));
                    emit(&fields_table(fields))?;
                }
                f => emit(&encode(f, &created)?)?,
            }
            eprintln!("note: the token is shown only once; keep it safe");
            Ok(())
        }
        AccountCmd::List { name, list } => ctx.list::<Account>("/accounts", list, name, None).await,
        AccountCmd::Show { id } => ctx.show(&c.get_account(&resolve(c, &id).await?).await?),
        AccountCmd::Delete { id } => {
            let id = resolve(c, &id).await?;
            c.delete_account(&id).await?;
            ctx.deleted(id.as_str())
        }
        AccountCmd::Member(m) => members(ctx, m).await,
        AccountCmd::Leave => {
            let account = ctx.account_id().await?;
            c.leave_account(&account).await?;
            match ctx.format {
                OutputFormat::Table => emit(&format!("left account {account}; your tokens there are revoked\n")),
                f => emit(&encode(f, &serde_json::json!({ "left": account }))?),
            }
        }
        AccountCmd::Token { id } => {
            let t = c.create_account_token(&resolve(c, &id).await?).await?;
            match ctx.format {
                // Bare, so that `TOKEN=$(vdc account token a-…)` works.
                OutputFormat::Table => emit(&format!("{}\n", t.token)),
                f => emit(&encode(f, &t)?),
            }
        }
        AccountCmd::Quota(QuotaCmd::Set { id, quotas }) => {
            let req = SetQuotas { quotas: quotas.into_iter().collect() };
            let q = c.set_account_quotas(&resolve(c, &id).await?, &req).await?;
            ctx.quotas(&q)
        }
        AccountCmd::Usage { id } => {
            // The token's own account, named, is read as its own (another's is an admin's).
            let me = match &id {
                Some(_) => Some(c.whoami().await?),
                None => None,
            };
            let q = match (id, me) {
                (Some(id), Some(me)) if me.account.name == id.as_str() || me.account.id.as_str() == id.as_str() => {
                    c.own_quotas().await?
                }
                (Some(id), _) => c.account_quotas(&resolve(c, &id).await?).await?,
                (None, _) => c.own_quotas().await?,
            };
            ctx.quotas(&q)
        }
    }
}

impl Ctx {
    /// The account `--account` names, else the calling token's own: the account of the
    /// first token it lists (a token always sees itself).
    /// The account `--account` names (by name among the caller's own, as `vdc login`
    /// keeps it, or by ID; an admin's by any name), else the token's own.
    async fn account_id(&self) -> Result<AccountId, CliError> {
        let me = self.client.whoami().await?;
        match &self.account {
            None => Ok(me.account.id),
            Some(a) => account_of(&self.client, &me, a).await,
        }
    }

    /// A member of the account by user name or ID.
    async fn member_id(&self, account: &AccountId, user: &str) -> Result<UserId, CliError> {
        let members = self.client.list_members(account).await?;
        members
            .into_iter()
            .find(|m| m.user_name == user || m.user_id.as_str() == user)
            .map(|m| m.user_id)
            .ok_or_else(|| CliError::Failed(format!("{user:?} is not a member of account {account}")))
    }
}

/// Account `a` (a name or an ID) among the caller's own, else as [`member`] finds it.
async fn account_of(c: &Client, me: &Whoami, a: &str) -> Result<AccountId, CliError> {
    match me.accounts.iter().find(|m| m.account_name == a || m.account_id.as_str() == a) {
        Some(m) => Ok(m.account_id.clone()),
        None => member(c, &a.parse().map_err(CliError::usage)?).await,
    }
}

/// `vdc audit list`. The account filter is `--account` (or its default), by ID or by a
/// name among the caller's accounts (or any, for an admin); the user by ID, by name among
/// the users (admin) or the account's members (owner).
async fn audit(
    ctx: &Ctx,
    since: Option<chrono::DateTime<chrono::Utc>>,
    user: Option<String>,
    action: Option<String>,
    list: ListArgs,
) -> Result<(), CliError> {
    let c = &ctx.client;
    let me = c.whoami().await?;
    let account = match &ctx.account {
        None => None,
        Some(a) => Some(account_of(c, &me, a).await?),
    };
    let user = match user {
        None => None,
        Some(u) => Some(match u.parse::<UserId>() {
            Ok(id) => id,
            Err(_) if me.admin => resolve(c, &u.parse::<Ref<User>>().map_err(CliError::usage)?).await?,
            Err(_) => ctx.member_id(account.as_ref().unwrap_or(&me.account.id), &u).await?,
        }),
    };
    let one_page = list.limit.is_some() || list.cursor.is_some();
    let mut q = AuditQuery { account, user, since, until: None, action, limit: list.limit, cursor: list.cursor };
    let mut page: Page<AuditEntry> = c.list_audit(&q).await?;
    if !one_page {
        while let Some(next) = page.next_cursor.take() {
            q.cursor = Some(next);
            let more = c.list_audit(&q).await?;
            page.items.extend(more.items);
            page.next_cursor = more.next_cursor;
        }
    }
    emit(&render_list(ctx.format, &page)?)?;
    if let (OutputFormat::Table, Some(c)) = (ctx.format, &page.next_cursor) {
        eprintln!("more items follow: add --cursor {c}");
    }
    Ok(())
}

async fn members(ctx: &Ctx, cmd: MemberCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    let account = ctx.account_id().await?;
    match cmd {
        MemberCmd::Add { user, role } => ctx.show(&c.add_member(&account, &AddMember { user, role }).await?),
        MemberCmd::Remove { user } => {
            let id = ctx.member_id(&account, &user).await?;
            c.remove_member(&account, &id).await?;
            // Not "deleted": the user stays, only its role here goes.
            match ctx.format {
                OutputFormat::Table => emit(&format!("removed {user} ({id}) from account {account}\n")),
                f => emit(&encode(f, &serde_json::json!({ "removed": id, "account": account }))?),
            }
        }
        MemberCmd::List => {
            let items = c.list_members(&account).await?;
            emit(&render_list(ctx.format, &Page { items, next_cursor: None })?)
        }
    }
}

async fn user(ctx: &Ctx, cmd: UserCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        UserCmd::Create { name, admin, password_stdin } => {
            let password = if password_stdin { Some(read_password()?) } else { None };
            ctx.show(&c.create_user(&CreateUser { name, admin, password }).await?)
        }
        UserCmd::Passwd { id, password_stdin, remove } => {
            let me = c.whoami().await?.user.id;
            let id = match &id {
                Some(r) => resolve(c, r).await?,
                None => me.clone(),
            };
            // Lines of standard input: [current,] new; or, removing, [current].
            let mut lines = match (password_stdin, std::io::stdin().is_terminal()) {
                (true, _) => read_passwords()?,
                (false, true) => prompt_passwords(id == me, remove)?,
                (false, false) => {
                    return Err(CliError::usage(
                        "standard input is not a terminal to ask on: send the passwords with --password-stdin",
                    ))
                }
            };
            let password = if remove { None } else { lines.pop() };
            let current = if id == me { lines.pop() } else { None };
            if !remove && password.is_none() {
                return Err(CliError::usage("--password-stdin read nothing: send the password on standard input"));
            }
            match c.set_password(&id, password.as_deref(), current.as_deref()).await {
                Err(e) if e.code() == "current_password_required" => {
                    return Err(CliError::Failed(format!(
                        "your current password is needed: send it on the first line of standard input{} \
                         (vdc user passwd --password-stdin{}) (current_password_required)",
                        if remove { "" } else { " and the new one on the second" },
                        if remove { " --remove" } else { "" },
                    )))
                }
                done => done?,
            }
            match ctx.format {
                OutputFormat::Table => emit(&format!("password {} for {id}\n", if remove { "removed" } else { "set" })),
                f => emit(&encode(f, &serde_json::json!({ "user_id": id, "password": !remove }))?),
            }
        }
        UserCmd::List { name, list } => ctx.list::<User>("/users", list, name, None).await,
        UserCmd::Show { id } => ctx.show(&c.get_user(&resolve(c, &id).await?).await?),
        UserCmd::Delete { id } => {
            let id = resolve(c, &id).await?;
            c.delete_user(&id).await?;
            ctx.deleted(id.as_str())
        }
    }
}

/// `vdc login USER`: a session in `--account` (or the user's first account), kept in the
/// config file under the account's name and made the default.
async fn login(global: &GlobalArgs, user: &str, password_stdin: bool) -> Result<(), CliError> {
    let api = config::load_api(global.api.as_deref())?;
    let password = if password_stdin || !std::io::stdin().is_terminal() {
        read_password()?
    } else {
        rpassword::prompt_password(format!("Password for {user}: "))
            .map_err(|e| CliError::usage(format!("cannot read the password: {e}")))?
    };
    let req = CreateSession { user: user.to_owned(), password, account: global.account.clone() };
    let s = Client::new(api.clone(), String::new()).sign_in(&req).await?;
    let path = config::config_path();
    let mut file = config::read(&path)?.unwrap_or_default();
    let same_api = file.api.as_deref() == Some(api.as_str());
    file.api = Some(api.clone());
    file.account = Some(s.account.name.clone());
    let replaced = file.tokens.insert(s.account.name.clone(), s.token.clone());
    config::save(&path, &file)?;
    // The session this one replaces is signed out: kept nowhere any more, it stayed
    // valid for its 12 hours, out of reach of `vdc logout`.
    if let Some(old) = replaced.filter(|old| *old != s.token && same_api) {
        if let Err(e) = Client::new(api, old).sign_out().await {
            tracing::debug!("signing out the session this login replaces: {e}");
        }
    }
    let others: Vec<_> =
        s.accounts.iter().filter(|a| a.account_id != s.account.id).map(|a| a.account_name.clone()).collect();
    eprintln!(
        "signed in as {} in account {} ({}) until {}; the session is kept in {}{}",
        s.user.name,
        s.account.name,
        s.role,
        s.expires_at.format("%Y-%m-%d %H:%M UTC"),
        path.display(),
        if others.is_empty() {
            String::new()
        } else {
            format!("; your other accounts: {} (`vdc login {} --account NAME`)", others.join(", "), s.user.name)
        }
    );
    Ok(())
}

/// Revokes the session in use (or every kept one) and removes it from the config file.
async fn logout(ctx: &Ctx, all: bool) -> Result<(), CliError> {
    let path = config::config_path();
    let mut file = config::read(&path)?.unwrap_or_default();
    let api = ctx.client.base_url().to_owned();
    let tokens: Vec<String> =
        if all { file.tokens.values().cloned().collect() } else { vec![ctx.client.token().to_owned()] };
    for t in &tokens {
        match Client::new(api.clone(), t.clone()).sign_out().await {
            // Gone already (expired, revoked): forgotten all the same.
            Ok(()) => {}
            Err(e) if matches!(e.code(), "token_expired" | "token_revoked" | "unauthorized") => {}
            Err(e) => return Err(e.into()),
        }
    }
    file.tokens.retain(|_, t| !tokens.contains(t));
    if file.token.as_ref().is_some_and(|t| tokens.contains(t)) {
        file.token = None;
    }
    config::save(&path, &file)?;
    eprintln!("signed out ({} session{})", tokens.len(), if tokens.len() == 1 { "" } else { "s" });
    Ok(())
}

/// The first line of standard input, without its line ending.
/// Up to two lines of standard input (`--password-stdin` of `vdc user passwd`), none empty.
/// Asks on the terminal, as `read_passwords` reads them: [current,] new (the new twice).
/// An empty current password is none (a user who had none).
fn prompt_passwords(own: bool, remove: bool) -> Result<Vec<String>, CliError> {
    let ask =
        |p: &str| rpassword::prompt_password(p).map_err(|e| CliError::usage(format!("cannot read the password: {e}")));
    let mut lines = vec![];
    if own {
        let current = ask("Current password (empty if you have none): ")?;
        if !current.is_empty() {
            lines.push(current);
        }
    }
    if !remove {
        let new = ask("New password: ")?;
        if ask("New password again: ")? != new {
            return Err(CliError::usage("the two new passwords differ; nothing was changed"));
        }
        lines.push(new);
    }
    Ok(lines)
}

fn read_passwords() -> Result<Vec<String>, CliError> {
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        let n = std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| CliError::usage(format!("cannot read the password: {e}")))?;
        let p = line.trim_end_matches(['\n', '\r']).to_owned();
        if n == 0 || p.is_empty() {
            break;
        }
        lines.push(p);
    }
    Ok(lines)
}

fn read_password() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| CliError::usage(format!("cannot read the password: {e}")))?;
    let p = line.trim_end_matches(['\n', '\r']).to_owned();
    if p.is_empty() {
        return Err(CliError::usage("--password-stdin read an empty line: send the password on standard input"));
    }
    Ok(p)
}

async fn token(ctx: &Ctx, cmd: TokenCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        TokenCmd::Create { name, expires, role, user } => {
            let account_id = match &ctx.account {
                Some(_) => Some(ctx.account_id().await?),
                None => None,
            };
            let user_id = match user {
                Some(u) => {
                    let account = match &account_id {
                        Some(a) => a.clone(),
                        None => ctx.account_id().await?,
                    };
                    Some(ctx.member_id(&account, &u).await?)
                }
                None => None,
            };
            let named = account_id.clone().filter(|_| user_id.is_none());
            let t = match c.create_token(&CreateToken { name, account_id, expires_at: expires, role, user_id }).await {
                // Not a member of the account named: a cloud admin makes a member's token.
                Err(ClientError::Api { status: 404, .. }) if named.is_some() => {
                    let a = ctx.account.clone().unwrap_or_default();
                    return Err(CliError::Failed(format!(
                        "--account {a}: you are not a member of it, and a token acts as a member; an admin names \
                         one with --user NAME, or makes its owner's with `vdc account token {a}`"
                    )));
                }
                r => r?,
            };
            match ctx.format {
                OutputFormat::Table => {
                    let mut fields = t.token.fields();
                    fields.push(("SECRET", t.secret.clone()));
                    emit(&fields_table(fields))?;
                }
                f => emit(&encode(f, &t)?)?,
            }
            eprintln!("note: the secret is shown only once; keep it safe");
            Ok(())
        }
        TokenCmd::List { list } => ctx.list::<Token>("/tokens", list, None, None).await,
        TokenCmd::Revoke { id } => {
            let id = resolve(c, &id).await?;
            c.revoke_token(&id).await?;
            match ctx.format {
                OutputFormat::Table => emit(&format!("revoked {id}\n")),
                f => emit(&encode(f, &serde_json::json!({ "revoked": id }))?),
            }
        }
    }
}

async fn floating_ip(ctx: &Ctx, cmd: FloatingIpCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        FloatingIpCmd::Create { ip } => {
            ctx.show(&c.create_floating_ip(&CreateFloatingIp { ip: ip.map(|i| i.to_string()) }).await?)
        }
        FloatingIpCmd::List { list } => ctx.list::<FloatingIp>("/floating-ips", list, None, None).await,
        FloatingIpCmd::Show { id } => ctx.show(&c.get_floating_ip(&fip_id(c, id).await?).await?),
        FloatingIpCmd::Associate { id, instance, interface } => {
            let id = fip_id(c, id).await?;
            let req = AssociateFloatingIp { instance_id: resolve(c, &instance).await?, interface_id: interface };
            ctx.show(&c.associate_floating_ip(&id, &req).await?)
        }
        FloatingIpCmd::Disassociate { id } => ctx.show(&c.disassociate_floating_ip(&fip_id(c, id).await?).await?),
        FloatingIpCmd::Delete { id } => {
            let id = fip_id(c, id).await?;
            c.delete_floating_ip(&id).await?;
            ctx.deleted(id.as_str())
        }
    }
}

/// The ID of the account's floating IP named by ID or by address.
async fn fip_id(c: &Client, r: FipRef) -> Result<FloatingIpId, CliError> {
    match r {
        FipRef::Id(id) => Ok(id),
        FipRef::Address(ip) => {
            let all = c.list_all_floating_ips().await?;
            all.into_iter().find(|f| f.ip == ip).map(|f| f.id).ok_or_else(|| {
                CliError::Failed(format!("the account has no floating IP {ip} (see `vdc floating-ip list`)"))
            })
        }
    }
}

async fn server_group(ctx: &Ctx, cmd: ServerGroupCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        ServerGroupCmd::Create { name, policy } => {
            ctx.show(&c.create_server_group(&CreateServerGroup { name, policy }).await?)
        }
        ServerGroupCmd::List { name, list } => ctx.list::<ServerGroup>("/server_groups", list, name, None).await,
        ServerGroupCmd::Show { id } => ctx.show(&c.get_server_group(&resolve(c, &id).await?).await?),
        ServerGroupCmd::Delete { id } => {
            let id = resolve(c, &id).await?;
            c.delete_server_group(&id).await?;
            ctx.deleted(id.as_str())
        }
    }
}

async fn keypair(ctx: &Ctx, cmd: KeypairCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        KeypairCmd::Create { name, public_key_file, public_key, private_key_out } => {
            // Checked before the key exists: afterwards its only copy would be at stake.
            if let Some(out) = &private_key_out {
                if out.exists() {
                    return Err(CliError::usage(format!(
                        "{} already exists; choose another --private-key-out",
                        out.display()
                    )));
                }
            }
            let public_key = match public_key_file {
                Some(path) => Some(read_text(&path, "public key file")?.trim().to_string()),
                None => public_key.map(|k| k.trim().to_string()),
            };
            let mut created = c.create_keypair(&CreateKeyPair { name, public_key }).await?;
            let mut print_key = None;
            let mut write_error = None;
            if let Some(key) = created.private_key.clone() {
                match &private_key_out {
                    Some(out) => match write_private(out, &key) {
                        Ok(()) => {
                            eprintln!("private key written to {}", out.display());
                            let cfg = config::config_path();
                            let dir = crate::ssh::config_dir(&cfg);
                            // Beside the config file only (never in /dev for /dev/null).
                            let remembered = match config::usable(&cfg) {
                                true => crate::ssh::remember_key(&dir, created.keypair.id.as_str(), out),
                                false => Err(std::io::Error::other(format!("{} is not a file", cfg.display()))),
                            };
                            if let Err(e) = remembered {
                                eprintln!("warning: `vdc instance ssh` will not find this key (pass -i): {e}");
                            }
                            created.private_key = None;
                        }
                        Err(e) => {
                            eprintln!("warning: {e}; the private key is printed below and shown only once");
                            print_key = Some(key);
                            write_error = Some(e);
                        }
                    },
                    None => {
                        eprintln!(
                            "warning: the private key below is shown only once; save it now \
                             (or use --private-key-out FILE next time)"
                        );
                        print_key = Some(key);
                    }
                }
            }
            match ctx.format {
                OutputFormat::Table => {
                    emit(&render_one(ctx.format, &created.keypair)?)?;
                    if let Some(key) = print_key {
                        emit(&with_newline(&key))?;
                    }
                }
                f => emit(&encode(f, &created)?)?,
            }
            write_error.map_or(Ok(()), Err)
        }
        KeypairCmd::List { name, list } => ctx.list::<KeyPair>("/keypairs", list, name, None).await,
        KeypairCmd::Show { id } => ctx.show(&c.get_keypair(&resolve(c, &id).await?).await?),
        KeypairCmd::Delete { id } => {
            let id = resolve(c, &id).await?;
            c.delete_keypair(&id).await?;
            // The record of where its private key is; the key file itself is the user's.
            crate::ssh::forget_key(&crate::ssh::config_dir(&config::config_path()), id.as_str());
            ctx.deleted(id.as_str())
        }
    }
}

async fn image(ctx: &Ctx, cmd: ImageCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        ImageCmd::Create(a) => {
            let req = CreateImage {
                name: a.name,
                format: a.format,
                arch: a.arch,
                hypervisors: a.hypervisors,
                source: Some(absolute_source(&a.source)),
                checksum: a.checksum,
                initrd: a.initrd,
                kernel_cmdline: a.cmdline,
                boot_mode: a.boot_mode,
                kernel_id: a.kernel_id,
                min_disk: a.min_disk,
                min_memory: a.min_memory,
                os: a.os,
                public: a.public,
                default_user: a.default_user,
            };
            ctx.show(&c.create_image(&req).await?)
        }
        ImageCmd::Import(a) => {
            let image = import_image(ctx, a).await?;
            ctx.show(&image)
        }
        ImageCmd::List { name, offered, declined, all, list } => {
            let member_status = match (offered, declined, all) {
                (true, _, _) => Some("pending".to_owned()),
                (_, true, _) => Some("rejected".to_owned()),
                (_, _, true) => Some("all".to_owned()),
                _ => None,
            };
            ctx.list_query::<Image>("/images", list, ListQuery { name, member_status, ..Default::default() }, |_| {})
                .await
        }
        ImageCmd::Show { id } => ctx.show(&c.get_image(&resolve(c, &id).await?).await?),
        ImageCmd::Delete { id } => {
            let id = resolve(c, &id).await?;
            c.delete_image(&id).await?;
            ctx.deleted(id.as_str())
        }
        ImageCmd::Share { image, account } => {
            let (image, account) = (resolve(c, &image).await?, member(c, &account).await?);
            ctx.show(&c.share_image(&image, &account).await?)
        }
        ImageCmd::Unshare { image, account } => {
            let (image, account) = (resolve(c, &image).await?, member(c, &account).await?);
            ctx.show(&c.unshare_image(&image, &account).await?)
        }
        ImageCmd::Members { image } => ctx.show(&c.image_members(&resolve(c, &image).await?).await?),
        // By ID: an offered image is not found by its name until it is accepted.
        ImageCmd::Accept { image } => ctx.show(&c.share_image(&image, &c.whoami().await?.account.id).await?),
        ImageCmd::Decline { image } => ctx.show(&c.unshare_image(&image, &c.whoami().await?.account.id).await?),
    }
}

/// The account an image is shared with. An ID is taken as is: a tenant cannot read other
/// accounts, and the API accepts any well-formed ID (sharing is no oracle of which
/// accounts exist). Anything else is an account name, which only an admin can look up.
async fn member(c: &Client, account: &Ref<Account>) -> Result<AccountId, CliError> {
    if let Ok(id) = account.as_str().parse::<AccountId>() {
        return Ok(id);
    }
    match resolve(c, account).await {
        Ok(id) => Ok(id),
        Err(e) if e.code() == "forbidden" => Err(CliError::Failed(format!(
            "{:?} is not an account ID (a-…), and only an admin can look accounts up by name: give the account's ID",
            account.as_str()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `vdc image import`: a pending image, then its data (uploaded with a progress bar, or
/// fetched by dcmgr); waits until it is available or failed.
async fn import_image(ctx: &Ctx, a: ImageImportArgs) -> Result<Image, CliError> {
    let c = &ctx.client;
    let lower = a.source.to_ascii_lowercase();
    let is_url = lower.starts_with("http://") || lower.starts_with("https://");
    if !is_url && lower.contains("://") {
        return Err(CliError::usage(format!("{}: vdc image import takes a local file or an http(s):// URL", a.source)));
    }
    let format = a.format.unwrap_or(if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
        ImageFormat::Tar
    } else {
        ImageFormat::Qcow2
    });
    let hypervisors = if !a.hypervisors.is_empty() {
        a.hypervisors
    } else if format == ImageFormat::Tar {
        vec![HypervisorKind::Lxc]
    } else {
        vec![HypervisorKind::Qemu, HypervisorKind::Kvm]
    };
    let path = Path::new(&a.source);
    let size = if is_url {
        None
    } else {
        Some(std::fs::metadata(path).map_err(|e| CliError::io(format!("reading {}", path.display()), e))?.len())
    };
    let req = CreateImage {
        name: a.name,
        format,
        arch: a.arch,
        hypervisors,
        source: is_url.then(|| a.source.clone()),
        checksum: a.sha256,
        initrd: None,
        kernel_cmdline: None,
        public: a.public,
        default_user: a.default_user,
        boot_mode: a.boot_mode,
        kernel_id: None,
        min_disk: a.min_disk,
        min_memory: a.min_memory,
        os: a.os,
    };
    let image = c.create_image(&req).await?;
    let terminal = std::io::stderr().is_terminal();
    let result = if let Some(size) = size {
        let bar = if terminal { ProgressBar::new(size) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let b = bar.clone();
        let res = c.upload_image_file(&image.id, path, move |n| b.set_position(n)).await;
        bar.finish_and_clear();
        match res {
            Ok(img) => Ok(img),
            Err(crate::client::UploadError::Read(e)) => Err(CliError::io(format!("reading {}", path.display()), e)),
            Err(crate::client::UploadError::Api(e)) => Err(e.into()),
        }
    } else {
        let bar = if terminal { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
        bar.set_message(format!("dcmgr imports {}", a.source));
        bar.enable_steady_tick(Duration::from_millis(100));
        let res = c.wait_image(&image.id, ctx.wait_timeout).await;
        bar.finish_and_clear();
        res.map_err(CliError::from)
    };
    let image = match result {
        Ok(img) => img,
        Err(e) => {
            // Say which image the failure left behind, so it can be deleted or retried;
            // the API's code as every other refusal shows it. A refusal, not a usage error.
            let why = match &e {
                CliError::Client(ce) => format!("{ce} ({})", ce.code()),
                e => e.to_string(),
            };
            return Err(CliError::Failed(format!("image {} ({}): {why}", image.id, image.name)));
        }
    };
    if image.state == ImageState::Failed {
        return Err(CliError::Failed(format!(
            "image {} failed: {}",
            image.id,
            image.failure_reason.as_deref().unwrap_or("no reason given")
        )));
    }
    Ok(image)
}

/// A relative local path would be resolved by the host in its own working directory, so an
/// existing one is made absolute here.
fn absolute_source(source: &str) -> String {
    let is_local = !source.contains("://") && !source.starts_with("builtin:");
    let path = Path::new(source);
    if is_local && path.is_relative() && path.exists() {
        if let Ok(abs) = std::fs::canonicalize(path) {
            return abs.to_string_lossy().into_owned();
        }
    }
    source.to_string()
}

async fn network(ctx: &Ctx, cmd: NetworkCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        NetworkCmd::Create { name, cidr, gateway, dhcp_start, dhcp_end } => {
            let req = CreateNetwork {
                name,
                cidr,
                gateway: gateway.map(|ip| ip.to_string()),
                dhcp_start: dhcp_start.map(|ip| ip.to_string()),
                dhcp_end: dhcp_end.map(|ip| ip.to_string()),
            };
            ctx.show(&c.create_network(&req).await?)
        }
        NetworkCmd::List { name, list } => ctx.list::<Network>("/networks", list, name, None).await,
        NetworkCmd::Show { id } => ctx.show(&c.get_network(&resolve(c, &id).await?).await?),
        NetworkCmd::Delete { id } => {
            let id = resolve(c, &id).await?;
            c.delete_network(&id).await?;
            ctx.deleted(id.as_str())
        }
    }
}

async fn secgroup(ctx: &Ctx, cmd: SecgroupCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        SecgroupCmd::Create { name, description, rules } => {
            let mut specs = Vec::with_capacity(rules.len());
            for r in rules {
                specs.push(rule_spec(c, r).await?);
            }
            let req = CreateSecurityGroup { name, description, rules: specs };
            ctx.show(&c.create_security_group(&req).await?)
        }
        SecgroupCmd::List { name, list } => ctx.list::<SecurityGroup>("/security_groups", list, name, None).await,
        SecgroupCmd::Show { id } => ctx.show(&c.get_security_group(&resolve(c, &id).await?).await?),
        SecgroupCmd::Delete { id } => {
            let id = resolve(c, &id).await?;
            c.delete_security_group(&id).await?;
            ctx.deleted(id.as_str())
        }
        SecgroupCmd::RuleAdd { sg, spec, egress } => {
            let sg = resolve(c, &sg).await?;
            let mut spec = rule_spec(c, spec).await?;
            if egress {
                spec.direction = Direction::Egress;
            }
            ctx.show(&c.add_security_group_rule(&sg, &spec).await?)
        }
        SecgroupCmd::RuleDelete { sg, rule_id } => {
            ctx.show(&c.delete_security_group_rule(&resolve(c, &sg).await?, &rule_id).await?)
        }
    }
}

/// The rule to send, its SOURCE group (if any) resolved to an ID.
async fn rule_spec(c: &Client, r: crate::parse::RuleArg) -> Result<RuleSpec, CliError> {
    let mut spec = r.spec;
    if let Some(g) = &r.group {
        spec.group = Some(resolve(c, g).await?);
    }
    Ok(spec)
}

async fn instance(ctx: &Ctx, cmd: InstanceCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    let (action, args) = match cmd {
        InstanceCmd::Create(a) => {
            let wait = a.wait;
            let req = create_instance_request(c, a).await?;
            return ctx.accepted(c.create_instance(&req).await?, wait).await;
        }
        InstanceCmd::List { state, name, address, all_accounts, list } => {
            let query = ListQuery {
                state: state_filter(state),
                name,
                address: address.map(|a| a.to_string()),
                all_accounts: all_accounts.then_some(true),
                ..Default::default()
            };
            return if all_accounts {
                // Accounts by name, as an operator knows them (the IDs stay beside them).
                let accounts: Vec<Account> = c.list_all("/accounts", &ListQuery::default()).await.unwrap_or_default();
                let names: std::collections::HashMap<_, _> = accounts.into_iter().map(|a| (a.id, a.name)).collect();
                let fill = |i: &mut InAnyAccount| i.account_name = names.get(&i.instance.account_id).cloned();
                ctx.list_query("/instances", list, query, fill).await
            } else {
                ctx.list_query::<Instance>("/instances", list, query, |_| {}).await
            };
        }
        InstanceCmd::Ssh(a) => return ssh(ctx, a).await,
        InstanceCmd::Capture(a) => {
            let id = resolve(c, &a.id).await?;
            let p = a.props;
            let req = CaptureInstance {
                image_name: p.image_name,
                os: p.os,
                min_disk: p.min_disk,
                min_memory: p.min_memory,
                default_user: p.default_user,
            };
            return ctx.accepted(c.capture_instance(&id, &req).await?, p.wait).await;
        }
        InstanceCmd::Show { id } => return ctx.show(&c.get_instance(&resolve(c, &id).await?).await?),
        InstanceCmd::ConsoleLog { id } => {
            let log = c.console_log(&resolve(c, &id).await?).await?;
            return match ctx.format {
                OutputFormat::Table if log.output.is_empty() => Ok(()),
                OutputFormat::Table => emit(&with_newline(&log.output)),
                f => emit(&encode(f, &log)?),
            };
        }
        InstanceCmd::Start(a) => (InstanceAction::Start, a),
        InstanceCmd::Stop(a) => (InstanceAction::Stop, a),
        InstanceCmd::Halt(a) => (InstanceAction::Halt, a),
        InstanceCmd::Poweron(a) => (InstanceAction::Poweron, a),
        InstanceCmd::Reboot(a) => (InstanceAction::Reboot, a),
        InstanceCmd::Terminate(a) => (InstanceAction::Terminate, a),
    };
    let acc = c.instance_action(&resolve(c, &args.id).await?, action).await?;
    ctx.accepted(acc, args.wait).await
}

/// Runs `ssh` in place of this process, so that its exit code (the remote command's) is
/// the command's.
async fn ssh(ctx: &Ctx, a: InstanceSshArgs) -> Result<(), CliError> {
    use crate::ssh::{config_dir, no_floating_ip, saved_key, ssh_args, SshPlan};
    let c = &ctx.client;
    let inst = c.get_instance(&resolve(c, &a.id).await?).await?;
    let shown = a.id.as_str();
    if inst.state != InstanceState::Running {
        return Err(CliError::Failed(format!(
            "instance {shown} is {}; ssh needs it running (vdc instance start {shown})",
            inst.state
        )));
    }
    let fips: Vec<FloatingIp> = c.list_all("/floating-ips", &ListQuery::default()).await?;
    let ip = fips
        .iter()
        .find(|f| f.instance_id.as_ref() == Some(&inst.id))
        .map(|f| f.ip)
        .ok_or_else(|| CliError::Failed(no_floating_ip(shown)))?;
    let user = match a.user {
        Some(u) => u,
        None => match c.get_image(&inst.image_id).await {
            Ok(img) => img
                .default_user
                .ok_or_else(|| CliError::usage(format!("image {} has no default user; pass -l USER", img.name)))?,
            Err(e) if e.is_not_found() => {
                return Err(CliError::usage(format!("image {} is gone; pass -l USER", inst.image_id)))
            }
            Err(e) => return Err(e.into()),
        },
    };
    let dir = config_dir(&config::config_path());
    let identity = match a.identity {
        Some(f) if !f.is_file() => return Err(CliError::usage(format!("-i {}: no such file", f.display()))),
        Some(f) => Some(f),
        None => inst.ssh_key_id.as_ref().and_then(|k| saved_key(&dir, k.as_str())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| CliError::io(format!("cannot create {}", dir.display()), e))?;
    let plan = SshPlan {
        ip,
        port: a.port,
        user,
        identity,
        known_hosts: dir.join("known_hosts"),
        host_key_alias: inst.id.to_string(),
        command: a.command,
    };
    tracing::debug!(?plan, "exec ssh");
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new("ssh").args(ssh_args(&plan)).exec();
    Err(CliError::io("cannot run ssh (is openssh-client installed?)", e))
}

/// The request `vdc instance create` sends, with every name resolved to its ID.
async fn create_instance_request(c: &Client, a: InstanceCreateArgs) -> Result<CreateInstance, CliError> {
    if a.ip.is_some() && a.networks.len() != 1 {
        return Err(CliError::usage(format!(
            "--ip needs exactly one --network (got {}); the address belongs to that interface",
            a.networks.len()
        )));
    }
    let user_data = match &a.user_data_file {
        Some(path) => {
            let text = read_text(path, "user-data file")?;
            if text.len() > MAX_USER_DATA {
                return Err(CliError::usage(format!(
                    "user-data file {} is {} bytes; the limit is {MAX_USER_DATA}",
                    path.display(),
                    text.len()
                )));
            }
            Some(text)
        }
        None => None,
    };
    let image_id = resolve(c, &a.image).await?;
    let networks = resolve_all(c, &a.networks).await?;
    let secgroups = resolve_all(c, &a.secgroups).await?;
    let ssh_key_id = match &a.keypair {
        Some(k) => Some(resolve(c, k).await?),
        None => None,
    };
    let interfaces = networks
        .into_iter()
        .map(|network_id| CreateInterface {
            network_id,
            security_groups: secgroups.clone(),
            ip: a.ip.map(|ip| ip.to_string()),
        })
        .collect();
    Ok(CreateInstance {
        name: a.name.or(a.name_flag),
        image_id,
        hypervisor: a.hypervisor,
        cpus: a.cpus,
        memory_mib: a.memory,
        interfaces,
        ssh_key_id,
        user_data,
        root_disk_size: a.root_disk_size,
        server_group: a.server_group,
        zone: a.zone,
        host_labels: a.host_labels.into_iter().collect(),
    })
}

async fn volume(ctx: &Ctx, cmd: VolumeCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        VolumeCmd::Create { name, size, snapshot, image, wait } => {
            let snapshot_id = match &snapshot {
                Some(s) => Some(resolve(c, s).await?),
                None => None,
            };
            let image_id = match &image {
                Some(i) => Some(resolve(c, i).await?),
                None => None,
            };
            let req = CreateVolume { name, size_mib: size, snapshot_id, image_id };
            ctx.accepted(c.create_volume(&req).await?, wait).await
        }
        VolumeCmd::List { state, name, list } => ctx.list::<Volume>("/volumes", list, name, state_filter(state)).await,
        VolumeCmd::Show { id } => ctx.show(&c.get_volume(&resolve(c, &id).await?).await?),
        VolumeCmd::Delete { id, wait } => ctx.accepted(c.delete_volume(&resolve(c, &id).await?).await?, wait).await,
        VolumeCmd::Attach { volume, instance, wait } => {
            let (volume, instance) = (resolve(c, &volume).await?, resolve(c, &instance).await?);
            let acc = c.attach_volume(&volume, &instance).await?;
            ctx.accepted(acc, wait).await
        }
        VolumeCmd::Detach { volume, wait } => {
            ctx.accepted(c.detach_volume(&resolve(c, &volume).await?).await?, wait).await
        }
        VolumeCmd::Extend { volume, size, wait } => {
            let volume = resolve(c, &volume).await?;
            ctx.accepted(c.extend_volume(&volume, &ExtendVolume { size_mib: size }).await?, wait).await
        }
    }
}

async fn snapshot(ctx: &Ctx, cmd: SnapshotCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        SnapshotCmd::Create { volume, name, wait } => {
            let req = CreateSnapshot { volume_id: resolve(c, &volume).await?, name };
            ctx.accepted(c.create_snapshot(&req).await?, wait).await
        }
        SnapshotCmd::List { state, name, list } => {
            ctx.list::<Snapshot>("/snapshots", list, name, state_filter(state)).await
        }
        SnapshotCmd::Show { id } => ctx.show(&c.get_snapshot(&resolve(c, &id).await?).await?),
        SnapshotCmd::Delete { id, wait } => ctx.accepted(c.delete_snapshot(&resolve(c, &id).await?).await?, wait).await,
        SnapshotCmd::Image(a) => {
            let id = resolve(c, &a.id).await?;
            let p = a.props;
            let req = CreateSnapshotImage {
                image_name: p.image_name,
                format: a.format,
                hypervisors: (!a.hypervisors.is_empty()).then_some(a.hypervisors),
                os: p.os,
                min_disk: p.min_disk,
                min_memory: p.min_memory,
                default_user: p.default_user,
                ..Default::default()
            };
            ctx.accepted(c.snapshot_image(&id, &req).await?, p.wait).await
        }
    }
}

async fn host(ctx: &Ctx, cmd: HostCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        HostCmd::List { state, list } => ctx.list::<HostNode>("/host_nodes", list, None, state_filter(state)).await,
        HostCmd::Show { id } => ctx.show(&c.get_host_node(&id).await?),
        HostCmd::Instances { id, list } => {
            ctx.list::<HostInstance>(&format!("/host_nodes/{id}/instances"), list, None, None).await
        }
        HostCmd::Evacuate { id, start } => {
            // What it held, read first: which were meant to run, and in which account.
            let held: Vec<HostInstance> =
                c.list_all(&format!("/host_nodes/{id}/instances"), &ListQuery::default()).await?;
            let done = c.evacuate_host_node(&id).await?;
            ctx.show(&done)?;
            if start {
                let meant_to_run = |s: InstanceState| {
                    use InstanceState::*;
                    matches!(s, Scheduling | Pending | Starting | Running)
                };
                for h in held.iter().filter(|h| done.instances.contains(&h.id) && meant_to_run(h.state)) {
                    match c.clone().acting_in(h.account_id.as_str()).start_instance(&h.id).await {
                        Ok(a) => {
                            eprintln!("started {} ({}) in account {}: job {}", h.id, h.name, h.account_name, a.job.id)
                        }
                        Err(e) => eprintln!("could not start {} ({}) in account {}: {e}", h.id, h.name, h.account_name),
                    }
                }
            }
            Ok(())
        }
        HostCmd::Cordon { id, reason } => {
            let req = UpdateHostNode { schedulable: Some(false), cordon_reason: reason, ..Default::default() };
            ctx.show(&c.update_host_node(&id, &req).await?)
        }
        HostCmd::Uncordon { id } => {
            ctx.show(&c.update_host_node(&id, &UpdateHostNode { schedulable: Some(true), ..Default::default() }).await?)
        }
        HostCmd::Label { id, labels } => {
            let req = UpdateHostNode { labels: labels.into_iter().collect(), ..Default::default() };
            ctx.show(&c.update_host_node(&id, &req).await?)
        }
        HostCmd::Zone { id, zone, clear } => {
            let zone = if clear { Some(String::new()) } else { zone };
            ctx.show(&c.update_host_node(&id, &UpdateHostNode { zone, ..Default::default() }).await?)
        }
        HostCmd::StorageList { state, list } => {
            ctx.list::<StorageNode>("/storage_nodes", list, None, state_filter(state)).await
        }
        HostCmd::StorageShow { id } => ctx.show(&c.get_storage_node(&id).await?),
    }
}

async fn job(ctx: &Ctx, cmd: JobCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        JobCmd::List { state, list } => ctx.list::<Job>("/jobs", list, None, state_filter(state)).await,
        JobCmd::Show { id } => ctx.show(&c.get_job(&id).await?),
        JobCmd::Wait { id } => {
            let job = c.get_job(&id).await?;
            let done = ctx.wait(&job).await?;
            ctx.show(&done)
        }
    }
}

// ------------------------------------------------------------------ events

/// Prints events one per line (a table row, or one JSON/YAML document each); with
/// `follow`, a broken connection is opened again after the last event printed.
async fn events(ctx: &Ctx, follow: bool, after: u64) -> Result<(), CliError> {
    use crate::client::StreamItem;
    let mut last = after;
    let mut failures = 0u32;
    loop {
        let mut stream = match ctx.client.events(Some(last), follow).await {
            Ok(s) => s,
            Err(e) if follow && failures < 30 && !matches!(e, ClientError::Api { .. }) => {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        loop {
            match stream.next().await {
                Ok(Some(StreamItem::Event(e))) => {
                    failures = 0;
                    last = e.seq;
                    emit(&render_event(ctx.format, &e)?)?;
                }
                Ok(Some(StreamItem::Lost { resumed_after, oldest_kept })) => {
                    eprintln!("events after {resumed_after} and before {oldest_kept} were pruned before they were read")
                }
                Ok(None) if !follow => return Ok(()),
                Ok(None) => break,
                Err(_) if follow => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn render_event(format: OutputFormat, e: &vdc_schema::api::Event) -> Result<String, CliError> {
    Ok(match format {
        OutputFormat::Table => {
            let mut line = format!(
                "{:>6}  {}  {:<14} {:<26} {:<8} {}",
                e.seq,
                crate::output::time(&e.time),
                e.kind,
                e.resource_id,
                e.change,
                e.state
            );
            if !e.detail.is_empty() {
                line.push_str("  ");
                line.push_str(&e.detail);
            }
            line.trim_end().to_owned() + "\n"
        }
        OutputFormat::Json => serde_json::to_string(e).map_err(|x| CliError::Encode(x.to_string()))? + "\n",
        OutputFormat::Yaml => format!("---\n{}", encode(format, e)?),
    })
}

// ------------------------------------------------------------------ bundles

impl Tabular for BundleImport {
    fn headers() -> &'static [&'static str] {
        &["ID", "SOURCE VDC", "OBJECTS", "CREATED"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.source_vdc.clone(),
            self.id_map.len().to_string(),
            crate::output::time(&self.created_at),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let map: Vec<String> = self.id_map.iter().map(|(k, v)| format!("{k} → {v}")).collect();
        vec![
            ("id", self.id.to_string()),
            ("source_site", self.source_site.clone()),
            ("source_vdc", self.source_vdc.clone()),
            ("manifest_hash", self.manifest_hash.clone()),
            ("ids", map.join("\n")),
            ("created_at", crate::output::time(&self.created_at)),
        ]
    }
}

/// Says so when the account has snapshots: a bundle carries volumes' data, not their
/// snapshots, and the export's output did not tell (red team, 2026-12-06). Best effort.
async fn snapshots_stay(c: &Client) {
    use vdc_schema::SnapshotState::{Available, Creating};
    let Ok(all) = c.list_all_snapshots().await else { return };
    let kept: Vec<String> =
        all.iter().filter(|s| matches!(s.state, Available | Creating)).map(|s| s.name.clone()).collect();
    if !kept.is_empty() {
        eprintln!(
            "note: {} snapshot(s) stay on this site ({}): a bundle carries volumes' data, not their snapshots; \
             to carry one, make a volume of it first (vdc volume create NAME --snapshot SNAPSHOT)",
            kept.len(),
            kept.join(", ")
        );
    }
}

fn plan_text(p: &BundlePlan) -> String {
    let mut s = format!("bundle of {} ({} chunks, {} bytes) verified\n", p.source_vdc, p.chunks, p.bytes);
    // Deletes `--prune` applies, waits for or refuses; not those it was not asked for.
    let prunes = p.deletes.iter().any(|d| !d.detail.starts_with("only with --prune"));
    if let Some(i) = &p.already_imported {
        if p.creates.is_empty() && p.updates.is_empty() && !prunes {
            s += &format!("imported already as {i}: nothing to do\n");
            return s;
        }
        s += &format!("imported already as {i}; importing it again makes what was deleted here since");
        s += if prunes { ", and --prune deletes what it no longer has\n" } else { "\n" };
    } else if let Some(i) = &p.update_of {
        s += &format!("updates import {i} (the bundle wins for the fields it carries)\n");
    }
    for c in &p.creates {
        let note = c.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
        s += &format!("  + {} {:?}{note}\n", c.kind, c.name);
    }
    for c in &p.updates {
        s += &format!("  ~ {} {:?} {}: {}\n", c.kind, c.name, c.id, c.detail);
    }
    for c in &p.deletes {
        s += &format!("  - {} {:?} {}: {}\n", c.kind, c.name, c.id, c.detail);
    }
    if !p.unchanged.is_empty() {
        s += &format!("  = {} unchanged\n", p.unchanged.len());
    }
    if p.update_of.is_some() && p.creates.is_empty() && p.updates.is_empty() && !prunes {
        s += "  nothing to change\n";
    }
    for c in &p.conflicts {
        let fix = c.resolve.as_deref().map(|r| format!("  [--map {r}]")).unwrap_or_default();
        s += &format!("  ! {}: {}{fix}\n", c.code, c.message);
    }
    s
}

async fn bundle(ctx: &Ctx, cmd: BundleCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    let progress = |what: &str| {
        let bar = if std::io::stderr().is_terminal() { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template(&format!("{what} {{bytes}} {{bytes_per_sec}}"))
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar
    };
    match cmd {
        BundleCmd::Key => {
            let k = c.bundle_key().await?;
            match ctx.format {
                OutputFormat::Table => emit(&format!("{}\n", k.public_key)),
                f => emit(&encode(f, &k)?),
            }
        }
        BundleCmd::Export { out, model_only, stop } => {
            let path =
                out.unwrap_or_else(|| format!("vdc-{}.bundle", chrono::Utc::now().format("%Y%m%dT%H%M%S")).into());
            // Written beside and renamed: a cut export never looks like a bundle.
            let tmp = path.with_extension("partial");
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| CliError::io(format!("creating {}", tmp.display()), e))?;
            let bar = progress("exporting");
            let b = bar.clone();
            let res = c.export_bundle(model_only, stop, &mut f, move |n| b.set_position(n)).await;
            bar.finish_and_clear();
            let n = match res {
                Ok(n) => n,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(match e {
                        crate::client::UploadError::Read(e) => CliError::io(format!("writing {}", tmp.display()), e),
                        crate::client::UploadError::Api(e) => e.into(),
                    });
                }
            };
            std::fs::rename(&tmp, &path).map_err(|e| CliError::io(format!("renaming to {}", path.display()), e))?;
            eprintln!("wrote {} ({n} bytes)", path.display());
            snapshots_stay(c).await;
            Ok(())
        }
        BundleCmd::Plan { file, maps, prune } => {
            let body = Client::file_body(&file).await.map_err(|e| upload_error(&file, e))?;
            let plan = match prune {
                true => c.plan_bundle_pruning(body, &maps).await?,
                false => c.plan_bundle(body, &maps).await?,
            };
            match ctx.format {
                OutputFormat::Table => emit(&plan_text(&plan))?,
                f => emit(&encode(f, &plan)?)?,
            }
            if plan.conflicts.is_empty() {
                Ok(())
            } else {
                Err(CliError::Failed(format!("{} conflict(s) unresolved", plan.conflicts.len())))
            }
        }
        BundleCmd::Import { file, maps, prune } => {
            let body = Client::file_body(&file).await.map_err(|e| upload_error(&file, e))?;
            let done = match prune {
                true => c.import_bundle_pruning(body, &maps).await?,
                false => c.import_bundle(body, &maps).await?,
            };
            if !done.created {
                eprintln!("this bundle was imported already ({}): nothing changed", done.import.id);
            }
            ctx.show(&done.import)
        }
        BundleCmd::Push { to, to_token, maps, map_file, prune, model_only, stop, dry_run } => {
            let mut all = match &map_file {
                Some(f) => map_lines(&read_text(f, "map file")?),
                None => vec![],
            };
            all.extend(maps);
            let target = Client::new(to.clone(), to_token);
            let o = crate::push::PushOptions { maps: all, prune, model_only, stop, dry_run };
            let bar = progress("pushing");
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            let r = crate::push::push(c, &target, &o).await;
            bar.finish_and_clear();
            let r = r.map_err(|e| match e {
                crate::push::PushError::Source(e) => CliError::Client(e),
                crate::push::PushError::Target(e) => CliError::Client(e),
                e => CliError::Failed(e.to_string()),
            })?;
            let saved = r.bytes_full.saturating_sub(r.bytes_sent);
            let done = if dry_run { "planned at" } else { "pushed to" };
            let summary = format!(
                "{done} {to}: {} bytes sent ({} bytes without dedup, {saved} saved); {} of {} chunks sent, {} held \
                 by the target, {} left out (the target keeps what holds them){}",
                r.bytes_sent,
                r.bytes_full,
                r.chunks_sent,
                r.chunks,
                r.chunks_held,
                r.chunks_left_out,
                if r.dedup { "" } else { " (the target cannot say which chunks it lacks: all sent)" }
            );
            match ctx.format {
                OutputFormat::Table => {
                    if let Some(p) = &r.plan {
                        emit(&plan_text(p))?;
                    }
                    if let Some(i) = &r.import {
                        if !i.created {
                            eprintln!("this bundle was imported already ({}): nothing changed", i.import.id);
                        }
                        ctx.show(&i.import)?;
                    }
                    eprintln!("{summary}");
                }
                f => emit(&encode(f, &r)?)?,
            }
            snapshots_stay(c).await;
            match &r.plan {
                Some(p) if !p.conflicts.is_empty() => {
                    Err(CliError::Failed(format!("{} conflict(s) unresolved", p.conflicts.len())))
                }
                _ => Ok(()),
            }
        }
        BundleCmd::Imports => {
            let all = c.list_bundle_imports().await?;
            match ctx.format {
                OutputFormat::Table => emit(&crate::output::list_table(&all)),
                f => emit(&encode(f, &all)?),
            }
        }
        BundleCmd::Show { id } => ctx.show(&c.get_bundle_import(&id).await?),
    }
}

/// KEY=VALUE lines of a map file: blank lines and `#` comments left out.
fn map_lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

fn upload_error(file: &Path, e: crate::client::UploadError) -> CliError {
    match e {
        crate::client::UploadError::Read(e) => CliError::io(format!("reading {}", file.display()), e),
        crate::client::UploadError::Api(e) => e.into(),
    }
}

// ------------------------------------------------------------------ files

fn read_text(path: &Path, what: &str) -> Result<String, CliError> {
    let bytes =
        std::fs::read(path).map_err(|e| CliError::usage(format!("cannot read {what} {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|_| CliError::usage(format!("{what} {} is not UTF-8 text", path.display())))
}

fn with_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// Write a private key readable by its owner only, never replacing an existing file.
fn write_private(path: &Path, key: &str) -> Result<(), CliError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(with_newline(key).as_bytes()))
        .map_err(|e| CliError::io(format!("cannot write private key to {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(deletes: &[&str]) -> BundlePlan {
        serde_json::from_value(serde_json::json!({
            "source_site": "k", "source_vdc": "a-1", "manifest_hash": "h",
            "already_imported": "imp-1", "update_of": null, "creates": [], "conflicts": [],
            "chunks": 0, "bytes": 0, "prune": true,
            "deletes": deletes.iter().map(|d| serde_json::json!({
                "kind": "network", "bundle_id": "nw-1", "id": "nw-2", "name": "net1", "detail": d
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn a_plan_imported_already_still_shows_the_deletes_prune_waits_for() {
        let waits = plan(&["waits: in use by instance(s) web being terminated"]);
        let text = plan_text(&waits);
        assert!(text.contains("- network \"net1\" nw-2: waits: in use by"), "{text}");
        assert!(!text.contains("nothing to do"), "{text}");
        let text = plan_text(&plan(&["deleted (--prune)"]));
        assert!(text.contains("- network \"net1\" nw-2: deleted (--prune)"), "{text}");
        let text = plan_text(&plan(&["only with --prune"]));
        assert!(text.contains("nothing to do") && !text.contains("net1"), "{text}");
        // Deleted here since: imported again, it is made again.
        let mut again = plan(&[]);
        again.creates.push(serde_json::from_value(serde_json::json!({
            "kind": "instance", "bundle_id": "i-1", "name": "web", "note": "created again: deleted here since the import"
        })).unwrap());
        let text = plan_text(&again);
        assert!(text.contains("importing it again makes what was deleted here since"), "{text}");
        assert!(text.contains("+ instance \"web\" (created again"), "{text}");
    }

    fn create_args(args: &[&str]) -> InstanceCreateArgs {
        let cli = Cli::try_parse_from(
            ["vdc", "instance", "create", "--image", "img-a"].into_iter().chain(args.iter().copied()),
        )
        .unwrap();
        match cli.command {
            Command::Instance(InstanceCmd::Create(a)) => a,
            _ => unreachable!(),
        }
    }

    /// A server where every ID exists and nothing has a name.
    async fn ids_exist() -> Client {
        let (base, _) = crate::testutil::mock(|req| {
            if req.target.contains('?') {
                (200, r#"{"items": [], "next_cursor": null}"#.into())
            } else {
                (200, "{}".into())
            }
        })
        .await;
        Client::new(base, "t")
    }

    #[tokio::test]
    async fn secgroups_apply_to_every_interface() {
        let c = ids_exist().await;
        let args = create_args(&["--network", "nw-a", "--network", "nw-b", "--secgroup", "sg-x"]);
        let req = create_instance_request(&c, args).await.unwrap();
        assert_eq!(req.interfaces.len(), 2);
        assert!(req.interfaces.iter().all(|i| i.security_groups.len() == 1 && i.ip.is_none()));
        assert_eq!(req.memory_mib, 256);
    }

    #[tokio::test]
    async fn ip_needs_exactly_one_network() {
        let c = ids_exist().await;
        let args = create_args(&["--network", "nw-a", "--network", "nw-b", "--ip", "10.0.0.9"]);
        let err = create_instance_request(&c, args).await.unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let req = create_instance_request(&c, create_args(&["--network", "nw-a", "--ip", "10.0.0.9"])).await.unwrap();
        assert_eq!(req.interfaces[0].ip.as_deref(), Some("10.0.0.9"));
    }

    #[test]
    fn the_name_is_positional_and_resources_take_names() {
        let cli = Cli::try_parse_from([
            "vdc",
            "instance",
            "create",
            "web1",
            "--image",
            "debian",
            "--network",
            "net1",
            "--secgroup",
            "web",
            "--keypair",
            "mykey",
            "--wait",
        ])
        .unwrap();
        let Command::Instance(InstanceCmd::Create(a)) = cli.command else { unreachable!() };
        assert_eq!(a.name.as_deref(), Some("web1"));
        assert_eq!(a.image.as_str(), "debian");
        assert_eq!(a.networks[0].as_str(), "net1");
        assert_eq!(a.keypair.as_ref().map(|k| k.as_str()), Some("mykey"));
        let old = Cli::try_parse_from(["vdc", "instance", "create", "--name", "web1", "--image", "img-a"]).unwrap();
        let Command::Instance(InstanceCmd::Create(a)) = old.command else { unreachable!() };
        assert_eq!(a.name_flag.as_deref(), Some("web1"));
        assert!(Cli::try_parse_from(["vdc", "instance", "create", "a", "--name", "b", "--image", "i"]).is_err());
    }

    #[test]
    fn sources_other_than_local_relative_paths_are_kept() {
        for s in ["http://x/y.img", "builtin:cirros", "/abs/path.img", "no/such/file"] {
            assert_eq!(absolute_source(s), s);
        }
        assert!(absolute_source("Cargo.toml").starts_with('/'));
    }

    fn global(api: &str) -> GlobalArgs {
        GlobalArgs {
            output: OutputArg::Format(OutputFormat::Table),
            api: Some(api.to_string()),
            token: Some("t".into()),
            account: None,
            wait_timeout: 10,
            verbose: 0,
        }
    }

    fn job_json(state: &str, message: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "id": "job-1", "action": "x.y", "resource_id": "r", "state": state,
            "message": message, "created_at": "2024-01-01T00:00:00Z", "finished_at": null,
        })
    }

    fn volume_json(state: &str) -> serde_json::Value {
        serde_json::json!({
            "id": "vol-1", "name": "data", "size_mib": 10240, "state": state,
            "storage_node_id": null, "instance_id": null, "snapshot_id": null,
            "failure_reason": null, "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
        })
    }

    fn cmd(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("vdc").chain(args.iter().copied())).unwrap().command
    }

    #[tokio::test]
    async fn wait_fetches_the_final_resource() {
        let (base, log) = crate::testutil::mock(|req| match (req.method.as_str(), req.target.as_str()) {
            ("POST", "/api/v1/volumes") => (
                202,
                serde_json::json!({"job": job_json("running", None), "resource": volume_json("creating")}).to_string(),
            ),
            ("GET", "/api/v1/jobs/job-1") => (200, job_json("succeeded", None).to_string()),
            ("GET", "/api/v1/volumes/vol-1") => (200, volume_json("available").to_string()),
            _ => (404, String::new()),
        })
        .await;
        run(&global(&base), cmd(&["volume", "create", "data", "--size", "10G", "--wait"])).await.unwrap();
        let log = log.lock().unwrap();
        let targets: Vec<_> = log.iter().map(|r| r.target.as_str()).collect();
        // The event stream first (this server has none: --wait polls).
        assert_eq!(
            targets,
            ["/api/v1/volumes", "/api/v1/events?follow=true", "/api/v1/jobs/job-1", "/api/v1/volumes/vol-1"]
        );
        let body: serde_json::Value = serde_json::from_str(&log[0].body).unwrap();
        assert_eq!(body["size_mib"], 10240);
    }

    #[tokio::test]
    async fn a_failed_job_is_exit_1_with_its_message() {
        let (base, _) = crate::testutil::mock(|req| match req.target.as_str() {
            "/api/v1/volumes/vol-1" => (
                202,
                serde_json::json!({"job": job_json("running", None), "resource": volume_json("deleting")}).to_string(),
            ),
            _ => (200, job_json("failed", Some("disk on fire")).to_string()),
        })
        .await;
        let err = run(&global(&base), cmd(&["volume", "delete", "vol-1", "--wait"])).await.unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.report().contains("disk on fire"), "{}", err.report());
    }

    #[tokio::test]
    async fn api_errors_are_reported_with_their_code() {
        let (base, _) =
            crate::testutil::mock(|_| (403, r#"{"error":{"code":"forbidden","message":"admins only"}}"#.into())).await;
        let err = run(&global(&base), cmd(&["host", "list"])).await.unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert_eq!(err.report(), "error: admins only (forbidden)");
    }
}
