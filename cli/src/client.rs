//! A typed client for the vdc Web API (`/api/v1`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), vdc_cli::client::ClientError> {
//! use std::time::Duration;
//! use vdc_cli::client::Client;
//! use vdc_schema::api::CreateNetwork;
//!
//! let client = Client::new("http://127.0.0.1:9000", "TOKEN");
//! let nw = client
//!     .create_network(&CreateNetwork {
//!         name: "default".into(),
//!         cidr: "10.0.0.0/24".into(),
//!         gateway: None,
//!         dhcp_start: None,
//!         dhcp_end: None,
//!     })
//!     .await?;
//! for inst in client.list_all_instances().await? {
//!     println!("{} {}", inst.id, inst.state);
//! }
//! # let _ = (nw, Duration::from_secs(1));
//! # Ok(()) }
//! ```

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, Instant};
use vdc_schema::api::*;
use vdc_schema::*;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How often [`Client::wait_job`] polls.
pub const JOB_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The largest page the API serves; used when following cursors to save round trips.
pub const MAX_PAGE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{message}")]
    Api { status: u16, code: String, message: String },
    #[error("{}", transport_message(.0))]
    Transport(#[source] reqwest::Error),
    /// A success answer whose body is not what the API promises.
    #[error("{0}")]
    Decode(String),
    #[error("{0}")]
    Timeout(String),
    /// Returned by [`Client::wait_job_ok`] when the job ended in another state than succeeded.
    #[error("job {} ({}) {}: {}", .job.id, .job.action, .job.state, .job.message.as_deref().unwrap_or("no message"))]
    JobFailed { job: Box<Job> },
}

/// Why a file upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot read the file: {0}")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Api(#[from] ClientError),
}

fn transport_message(err: &reqwest::Error) -> String {
    // reqwest's own Display hides the useful part ("Connection refused") in the source chain.
    let mut cause = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(err);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if cause.is_empty() {
        cause = err.to_string();
    }
    let url = err.url().map(|u| u.as_str()).unwrap_or("the API");
    if err.is_timeout() {
        format!("request to {url} timed out: {cause}; the server may be down or overloaded")
    } else {
        format!("cannot reach {url}: {cause}; the server may be down or the API URL wrong")
    }
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's machine-readable code, or a fixed one for local failures.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Api { code, .. } => code,
            ClientError::Transport(_) => "transport",
            ClientError::Decode(_) => "decode",
            ClientError::Timeout(_) => "timeout",
            ClientError::JobFailed { .. } => "job_failed",
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Build an [`ClientError::Api`] from a non-success answer's status and body.
    pub fn from_response(status: u16, body: &str) -> Self {
        match serde_json::from_str::<ErrorBody>(body) {
            Ok(b) => ClientError::Api { status, code: b.error.code, message: b.error.message },
            Err(_) => {
                let text = body.trim();
                let message = if text.is_empty() {
                    StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("no response body")
                        .to_string()
                } else {
                    // An HTML error page from a proxy can be huge; the start is enough.
                    text.chars().take(500).collect()
                };
                ClientError::Api { status, code: format!("http_{status}"), message }
            }
        }
    }
}

/// A connection to one vdc controller with one account's token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    /// The account an admin's token acts in (`X-Vdc-Account`), when not its own.
    act_in: Option<String>,
}

impl Client {
    /// `base_url` is the server root, e.g. `http://127.0.0.1:9000`; a trailing `/api/v1` is
    /// accepted too.
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("vdc-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap_or_default();
        Self::with_http(base_url, token, http)
    }

    /// Like [`Client::new`] with a caller-configured `reqwest::Client` (timeouts, proxies).
    pub fn with_http(base_url: impl Into<String>, token: impl Into<String>, http: reqwest::Client) -> Self {
        let mut base = base_url.into().trim().trim_end_matches('/').to_string();
        if let Some(stripped) = base.strip_suffix("/api/v1") {
            base = stripped.to_string();
        }
        Self { base, token: token.into(), http, act_in: None }
    }

    /// Acts in `account` (name or ID) rather than the token's own: an admin's token only
    /// (the server refuses others with 403).
    pub fn acting_in(mut self, account: impl Into<String>) -> Self {
        self.act_in = Some(account.into());
        self
    }

    /// The server root, without `/api/v1`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The full URL of an API path such as `/instances` (`""` is the API root).
    pub fn url(&self, path: &str) -> String {
        if path.is_empty() || path.starts_with('/') {
            format!("{}/api/v1{path}", self.base)
        } else {
            format!("{}/api/v1/{path}", self.base)
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self.http.request(method, self.url(path));
        if let Some(a) = &self.act_in {
            req = req.header("X-Vdc-Account", a);
        }
        // No token yet (signing in): no Authorization header at all.
        if self.token.is_empty() {
            return req;
        }
        req.bearer_auth(&self.token)
    }

    /// Send, turning error statuses into [`ClientError::Api`]; `None` for an empty body.
    async fn send_raw(&self, req: RequestBuilder) -> Result<(String, Option<String>)> {
        let resp = req.send().await.map_err(ClientError::Transport)?;
        let status = resp.status();
        let url = resp.url().to_string();
        let body = resp.text().await.map_err(ClientError::Transport)?;
        tracing::debug!(%url, status = status.as_u16(), bytes = body.len(), "api answer");
        if !status.is_success() {
            return Err(ClientError::from_response(status.as_u16(), &body));
        }
        if status == StatusCode::NO_CONTENT || body.trim().is_empty() {
            Ok((url, None))
        } else {
            Ok((url, Some(body)))
        }
    }

    async fn send<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        match self.send_raw(req).await? {
            (url, Some(body)) => decode(&url, &body),
            (url, None) => {
                Err(ClientError::Decode(format!("{url} answered with an empty body where a JSON object was expected")))
            }
        }
    }

    async fn send_opt<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<Option<T>> {
        match self.send_raw(req).await? {
            (url, Some(body)) => decode(&url, &body).map(Some),
            (_, None) => Ok(None),
        }
    }

    // ------------------------------------------------------------ generic helpers

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn get_query<T: DeserializeOwned, Q: Serialize + ?Sized>(&self, path: &str, query: &Q) -> Result<T> {
        self.send(self.request(Method::GET, path).query(query)).await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn patch<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.request(Method::PATCH, path).json(body)).await
    }

    /// POST without a request body.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(Method::POST, path)).await
    }

    /// DELETE; `None` when the server answers 204 (or any empty body).
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        self.send_opt(self.request(Method::DELETE, path)).await
    }

    /// DELETE expecting a JSON answer (e.g. 202 with a job).
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// DELETE ignoring any answer body (204).
    pub async fn delete_no_content(&self, path: &str) -> Result<()> {
        self.send_raw(self.request(Method::DELETE, path)).await.map(|_| ())
    }

    /// One page of a list.
    pub async fn list<T: DeserializeOwned>(&self, path: &str, query: &ListQuery) -> Result<Page<T>> {
        self.get_query(path, query).await
    }

    /// Every item of a list, following `next_cursor`. `query.cursor` is the starting point
    /// and `query.limit` the page size (default: the largest page).
    pub async fn list_all<T: DeserializeOwned>(&self, path: &str, query: &ListQuery) -> Result<Vec<T>> {
        let mut q = query.clone();
        q.limit = Some(q.limit.unwrap_or(MAX_PAGE));
        let mut items = Vec::new();
        loop {
            let page: Page<T> = self.list(path, &q).await?;
            items.extend(page.items);
            match page.next_cursor {
                // A cursor that does not move would loop forever.
                Some(c) if q.cursor.as_deref() != Some(c.as_str()) => q.cursor = Some(c),
                _ => return Ok(items),
            }
        }
    }

    // ------------------------------------------------------------ API root

    pub async fn api_info(&self) -> Result<ApiInfo> {
        self.get("").await
    }

    /// Who this token acts as.
    pub async fn whoami(&self) -> Result<Whoami> {
        self.get("/whoami").await
    }

    /// One page of the audit log, newest first.
    pub async fn list_audit(&self, q: &AuditQuery) -> Result<Page<AuditEntry>> {
        self.get_query("/audit", q).await
    }

    // ------------------------------------------------------------ accounts (admin)

    pub async fn create_account(&self, req: &CreateAccount) -> Result<AccountCreated> {
        self.post("/accounts", req).await
    }

    pub async fn list_accounts(&self, query: &ListQuery) -> Result<Page<Account>> {
        self.list("/accounts", query).await
    }

    pub async fn list_all_accounts(&self) -> Result<Vec<Account>> {
        self.list_all("/accounts", &ListQuery::default()).await
    }

    pub async fn get_account(&self, id: &AccountId) -> Result<Account> {
        self.get(&format!("/accounts/{id}")).await
    }

    pub async fn delete_account(&self, id: &AccountId) -> Result<()> {
        self.delete_no_content(&format!("/accounts/{id}")).await
    }

    /// An account's quotas and usage (an admin's any, a tenant's own).
    pub async fn account_quotas(&self, id: &AccountId) -> Result<AccountQuotas> {
        self.get(&format!("/accounts/{id}/quotas")).await
    }

    /// The caller's own account's quotas and usage.
    pub async fn own_quotas(&self) -> Result<AccountQuotas> {
        self.get("/quotas").await
    }

    /// Sets quotas of an account (admin); the keys not named keep theirs.
    pub async fn set_account_quotas(&self, id: &AccountId, req: &SetQuotas) -> Result<AccountQuotas> {
        self.send(self.request(Method::PUT, &format!("/accounts/{id}/quotas")).json(req)).await
    }

    /// A new token for the account; the old ones stay valid.
    pub async fn create_account_token(&self, id: &AccountId) -> Result<AccountToken> {
        self.post_empty(&format!("/accounts/{id}/tokens")).await
    }

    // ------------------------------------------------------------ users (admin), members

    pub async fn create_user(&self, req: &CreateUser) -> Result<User> {
        self.post("/users", req).await
    }

    pub async fn list_users(&self, query: &ListQuery) -> Result<Page<User>> {
        self.list("/users", query).await
    }

    pub async fn get_user(&self, id: &UserId) -> Result<User> {
        self.get(&format!("/users/{id}")).await
    }

    /// Sets (or with `None` removes) a user's console password: one's own, or (admin) anyone's.
    /// Sets (None: removes) user `id`'s password; users changing their own give `current`.
    pub async fn set_password(&self, id: &UserId, password: Option<&str>, current: Option<&str>) -> Result<()> {
        let req = self
            .request(Method::PUT, &format!("/users/{id}/password"))
            .json(&SetPassword { password: password.map(str::to_owned), current_password: current.map(str::to_owned) });
        self.send_raw(req).await.map(|_| ())
    }

    /// Signs in with a user's password: a session (a short-lived token) in one account.
    pub async fn sign_in(&self, req: &CreateSession) -> Result<Session> {
        self.post("/sessions", req).await
    }

    /// Signs out: revokes the session this client's token is.
    pub async fn sign_out(&self) -> Result<()> {
        self.delete_no_content("/sessions/current").await
    }

    /// A new session in another account of the user; this client's session is revoked.
    pub async fn switch_session(&self, account: &str) -> Result<Session> {
        self.post("/sessions/switch", &SwitchSession { account: account.to_owned() }).await
    }

    pub async fn delete_user(&self, id: &UserId) -> Result<()> {
        self.delete_no_content(&format!("/users/{id}")).await
    }

    pub async fn list_members(&self, account: &AccountId) -> Result<Vec<Member>> {
        Ok(self.get::<Page<Member>>(&format!("/accounts/{account}/members")).await?.items)
    }

    /// Gives the user (by name) a role in the account, or changes its role.
    pub async fn add_member(&self, account: &AccountId, req: &AddMember) -> Result<Member> {
        self.post(&format!("/accounts/{account}/members"), req).await
    }

    pub async fn remove_member(&self, account: &AccountId, user: &UserId) -> Result<()> {
        self.delete_no_content(&format!("/accounts/{account}/members/{user}")).await
    }

    /// Leaves the account (the token's own role in it, and its tokens there).
    pub async fn leave_account(&self, account: &AccountId) -> Result<()> {
        self.delete_no_content(&format!("/accounts/{account}/membership")).await
    }

    // ------------------------------------------------------------ tokens

    /// A new token; its secret is shown only in this answer.
    pub async fn create_token(&self, req: &CreateToken) -> Result<TokenCreated> {
        self.post("/tokens", req).await
    }

    pub async fn list_tokens(&self, query: &ListQuery) -> Result<Page<Token>> {
        self.list("/tokens", query).await
    }

    pub async fn list_all_tokens(&self) -> Result<Vec<Token>> {
        self.list_all("/tokens", &ListQuery::default()).await
    }

    pub async fn get_token(&self, id: &TokenId) -> Result<Token> {
        self.get(&format!("/tokens/{id}")).await
    }

    pub async fn revoke_token(&self, id: &TokenId) -> Result<()> {
        self.delete_no_content(&format!("/tokens/{id}")).await
    }

    // ------------------------------------------------------------ key pairs

    pub async fn create_keypair(&self, req: &CreateKeyPair) -> Result<KeyPairCreated> {
        self.post("/keypairs", req).await
    }

    pub async fn list_keypairs(&self, query: &ListQuery) -> Result<Page<KeyPair>> {
        self.list("/keypairs", query).await
    }

    pub async fn list_all_keypairs(&self) -> Result<Vec<KeyPair>> {
        self.list_all("/keypairs", &ListQuery::default()).await
    }

    pub async fn get_keypair(&self, id: &KeyPairId) -> Result<KeyPair> {
        self.get(&format!("/keypairs/{id}")).await
    }

    pub async fn delete_keypair(&self, id: &KeyPairId) -> Result<()> {
        self.delete_no_content(&format!("/keypairs/{id}")).await
    }

    // ------------------------------------------------------------ images

    pub async fn create_image(&self, req: &CreateImage) -> Result<Image> {
        self.post("/images", req).await
    }

    pub async fn list_images(&self, query: &ListQuery) -> Result<Page<Image>> {
        self.list("/images", query).await
    }

    pub async fn list_all_images(&self) -> Result<Vec<Image>> {
        self.list_all("/images", &ListQuery::default()).await
    }

    pub async fn get_image(&self, id: &ImageId) -> Result<Image> {
        self.get(&format!("/images/{id}")).await
    }

    pub async fn delete_image(&self, id: &ImageId) -> Result<()> {
        self.delete_no_content(&format!("/images/{id}")).await
    }

    /// `POST /instances/{id}/capture`: a new image of an instance's disk or container root.
    pub async fn capture_instance(&self, id: &InstanceId, req: &CaptureInstance) -> Result<Accepted<Image>> {
        self.post(&format!("/instances/{id}/capture"), req).await
    }

    pub async fn image_members(&self, id: &ImageId) -> Result<ImageMembers> {
        self.get(&format!("/images/{id}/members")).await
    }

    pub async fn share_image(&self, id: &ImageId, account: &AccountId) -> Result<ImageMembers> {
        self.send(self.request(Method::PUT, &format!("/images/{id}/members/{account}"))).await
    }

    pub async fn unshare_image(&self, id: &ImageId, account: &AccountId) -> Result<ImageMembers> {
        self.send(self.request(Method::DELETE, &format!("/images/{id}/members/{account}"))).await
    }

    /// Uploads the data of a pending image (`PUT /images/{id}/file`).
    pub async fn upload_image(&self, id: &ImageId, body: impl Into<reqwest::Body>) -> Result<Image> {
        let req = self
            .request(Method::PUT, &format!("/images/{id}/file"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            // An image takes as long as it takes; the client's default is for API calls.
            .timeout(Duration::from_secs(24 * 3600))
            .body(body);
        self.send(req).await
    }

    /// Streams a local file as the data of a pending image; `progress` gets the bytes
    /// sent so far.
    pub async fn upload_image_file(
        &self,
        id: &ImageId,
        path: &std::path::Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> std::result::Result<Image, UploadError> {
        use futures::StreamExt;
        let mut sent = 0u64;
        let stream = Self::file_stream(path)?.map(move |chunk| {
            if let Ok(c) = &chunk {
                sent += c.len() as u64;
                progress(sent);
            }
            chunk
        });
        let body = reqwest::Body::wrap_stream(stream);
        self.upload_image(id, body).await.map_err(UploadError::Api)
    }

    // ------------------------------------------------------------ bundles

    pub async fn bundle_key(&self) -> Result<BundleKey> {
        self.get("/bundle/key").await
    }

    /// Streams the account's bundle into `out`; `progress` gets the bytes received so far.
    /// Returns the bytes written.
    pub async fn export_bundle<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        model_only: bool,
        stop: bool,
        out: &mut W,
        progress: impl Fn(u64),
    ) -> std::result::Result<u64, UploadError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let req = self
            .request(Method::GET, "/bundle")
            .query(&[("model_only", model_only), ("stop", stop)])
            .timeout(Duration::from_secs(24 * 3600));
        let resp = req.send().await.map_err(ClientError::Transport)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.map_err(ClientError::Transport)?;
            return Err(ClientError::from_response(status.as_u16(), &body).into());
        }
        let mut n = 0u64;
        let mut stream = resp.bytes_stream();
        // The network's frames gathered into large writes: a file written frame by frame
        // (tokio hands each write to a thread) held the export back.
        let mut out = tokio::io::BufWriter::with_capacity(4 << 20, out);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(ClientError::Transport)?;
            out.write_all(&chunk).await.map_err(UploadError::Read)?;
            n += chunk.len() as u64;
            progress(n);
        }
        out.flush().await.map_err(UploadError::Read)?;
        Ok(n)
    }

    /// The account's bundle as a streaming response (its status checked), for a push.
    pub async fn export_response(&self, model_only: bool, stop: bool) -> Result<reqwest::Response> {
        let req = self
            .request(Method::GET, "/bundle")
            .query(&[("model_only", model_only), ("stop", stop)])
            .timeout(Duration::from_secs(24 * 3600));
        let resp = req.send().await.map_err(ClientError::Transport)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.map_err(ClientError::Transport)?;
            return Err(ClientError::from_response(status.as_u16(), &body));
        }
        Ok(resp)
    }

    /// Which of `q.chunks` the account lacks at this site (a push asks before it sends).
    pub async fn missing_chunks(&self, q: &BundleChunkQuery) -> Result<BundleChunksMissing> {
        self.post("/bundle/chunks/missing", q).await
    }

    /// Which chunks of the bundle whose head this is an import with `maps` would use here:
    /// those to send and those the account holds (a push asks before it sends).
    pub async fn wanted_chunks(&self, head: Vec<u8>, maps: &[String], prune: bool) -> Result<BundleChunksWanted> {
        self.send_bundle("chunks/wanted", head, maps, prune).await
    }

    async fn send_bundle<T: DeserializeOwned>(
        &self,
        what: &str,
        body: impl Into<reqwest::Body>,
        maps: &[String],
        prune: bool,
    ) -> Result<T> {
        let mut query: Vec<(&str, &str)> = maps.iter().map(|m| ("map", m.as_str())).collect();
        if prune {
            query.push(("prune", "true"));
        }
        let req = self
            .request(Method::POST, &format!("/bundle/{what}"))
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(Duration::from_secs(24 * 3600))
            .body(body);
        self.send(req).await
    }

    /// Verifies a bundle (streamed) and answers what importing it would do.
    pub async fn plan_bundle(&self, body: impl Into<reqwest::Body>, maps: &[String]) -> Result<BundlePlan> {
        self.send_bundle("plan", body, maps, false).await
    }

    pub async fn import_bundle(&self, body: impl Into<reqwest::Body>, maps: &[String]) -> Result<BundleImported> {
        self.send_bundle("import", body, maps, false).await
    }

    /// A plan whose deletes of an update are applied (`prune`).
    pub async fn plan_bundle_pruning(&self, body: impl Into<reqwest::Body>, maps: &[String]) -> Result<BundlePlan> {
        self.send_bundle("plan", body, maps, true).await
    }

    /// An import that applies an update's deletes (`prune`).
    pub async fn import_bundle_pruning(
        &self,
        body: impl Into<reqwest::Body>,
        maps: &[String],
    ) -> Result<BundleImported> {
        self.send_bundle("import", body, maps, true).await
    }

    /// A local file as a streamed request body.
    pub async fn file_body(path: &std::path::Path) -> std::result::Result<reqwest::Body, UploadError> {
        Ok(reqwest::Body::wrap_stream(Self::file_stream(path)?))
    }

    /// A local file's data: a regular file read ahead on a thread of its own, in 1 MiB
    /// blocks handed on uncopied; a pipe (`/dev/stdin`, `<(…)`), whose length reads as 0,
    /// to its end.
    fn file_stream(
        path: &std::path::Path,
    ) -> std::result::Result<futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>, UploadError> {
        use futures::StreamExt;
        let file = std::fs::File::open(path).map_err(UploadError::Read)?;
        let meta = file.metadata().map_err(UploadError::Read)?;
        Ok(if meta.is_file() {
            vdc_bus::fileio::read_stream(file, meta.len()).boxed()
        } else {
            tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20).boxed()
        })
    }

    pub async fn list_bundle_imports(&self) -> Result<Vec<BundleImport>> {
        self.get("/bundle/imports").await
    }

    pub async fn get_bundle_import(&self, id: &str) -> Result<BundleImport> {
        self.get(&format!("/bundle/imports/{id}")).await
    }

    /// Waits until the image is no longer pending, following its events.
    pub async fn wait_image(&self, id: &ImageId, timeout: Duration) -> Result<Image> {
        self.follow(
            ("image", id.as_str()),
            Duration::from_millis(200),
            Some(timeout),
            || self.get_image(id),
            |i: &Image| i.state != ImageState::Pending,
            |_| {},
            |_, waited| format!("image {id} is still pending after {waited:.1}s"),
        )
        .await
    }

    // ------------------------------------------------------------ networks

    pub async fn create_network(&self, req: &CreateNetwork) -> Result<Network> {
        self.post("/networks", req).await
    }

    pub async fn list_networks(&self, query: &ListQuery) -> Result<Page<Network>> {
        self.list("/networks", query).await
    }

    pub async fn list_all_networks(&self) -> Result<Vec<Network>> {
        self.list_all("/networks", &ListQuery::default()).await
    }

    pub async fn get_network(&self, id: &NetworkId) -> Result<Network> {
        self.get(&format!("/networks/{id}")).await
    }

    pub async fn delete_network(&self, id: &NetworkId) -> Result<()> {
        self.delete_no_content(&format!("/networks/{id}")).await
    }

    // ------------------------------------------------------------ security groups

    pub async fn create_security_group(&self, req: &CreateSecurityGroup) -> Result<SecurityGroup> {
        self.post("/security_groups", req).await
    }

    pub async fn list_security_groups(&self, query: &ListQuery) -> Result<Page<SecurityGroup>> {
        self.list("/security_groups", query).await
    }

    pub async fn list_all_security_groups(&self) -> Result<Vec<SecurityGroup>> {
        self.list_all("/security_groups", &ListQuery::default()).await
    }

    pub async fn get_security_group(&self, id: &SecurityGroupId) -> Result<SecurityGroup> {
        self.get(&format!("/security_groups/{id}")).await
    }

    pub async fn delete_security_group(&self, id: &SecurityGroupId) -> Result<()> {
        self.delete_no_content(&format!("/security_groups/{id}")).await
    }

    /// Add a rule; answers the whole group with the new rule's ID in it.
    pub async fn add_security_group_rule(&self, id: &SecurityGroupId, rule: &RuleSpec) -> Result<SecurityGroup> {
        self.post(&format!("/security_groups/{id}/rules"), rule).await
    }

    pub async fn delete_security_group_rule(&self, id: &SecurityGroupId, rule: &RuleId) -> Result<SecurityGroup> {
        self.delete_json(&format!("/security_groups/{id}/rules/{rule}")).await
    }

    // ------------------------------------------------------------ instances

    pub async fn create_instance(&self, req: &CreateInstance) -> Result<Accepted<Instance>> {
        self.post("/instances", req).await
    }

    pub async fn list_instances(&self, query: &ListQuery) -> Result<Page<Instance>> {
        self.list("/instances", query).await
    }

    pub async fn list_all_instances(&self) -> Result<Vec<Instance>> {
        self.list_all("/instances", &ListQuery::default()).await
    }

    pub async fn get_instance(&self, id: &InstanceId) -> Result<Instance> {
        self.get(&format!("/instances/{id}")).await
    }

    /// Start, stop, halt, poweron, reboot or terminate. An action that is already done
    /// answers 200 with a finished job.
    pub async fn instance_action(&self, id: &InstanceId, action: InstanceAction) -> Result<Accepted<Instance>> {
        self.post_empty(&format!("/instances/{id}/{}", action.as_str())).await
    }

    pub async fn start_instance(&self, id: &InstanceId) -> Result<Accepted<Instance>> {
        self.instance_action(id, InstanceAction::Start).await
    }

    pub async fn stop_instance(&self, id: &InstanceId) -> Result<Accepted<Instance>> {
        self.instance_action(id, InstanceAction::Stop).await
    }

    pub async fn halt_instance(&self, id: &InstanceId) -> Result<Accepted<Instance>> {
        self.instance_action(id, InstanceAction::Halt).await
    }

    pub async fn poweron_instance(&self, id: &InstanceId) -> Result<Accepted<Instance>> {
        self.instance_action(id, InstanceAction::Poweron).await
    }

    pub async fn reboot_instance(&self, id: &InstanceId) -> Result<Accepted<Instance>> {
        self.instance_action(id, InstanceAction::Reboot).await
    }

    pub async fn terminate_instance(&self, id: &InstanceId) -> Result<Accepted<Instance>> {
        self.instance_action(id, InstanceAction::Terminate).await
    }

    /// `DELETE /instances/{id}`: the same as terminate.
    pub async fn delete_instance(&self, id: &InstanceId) -> Result<Accepted<Instance>> {
        self.delete_json(&format!("/instances/{id}")).await
    }

    pub async fn console_log(&self, id: &InstanceId) -> Result<ConsoleLog> {
        self.get(&format!("/instances/{id}/console")).await
    }

    // ------------------------------------------------------------ volumes

    pub async fn create_volume(&self, req: &CreateVolume) -> Result<Accepted<Volume>> {
        self.post("/volumes", req).await
    }

    pub async fn list_volumes(&self, query: &ListQuery) -> Result<Page<Volume>> {
        self.list("/volumes", query).await
    }

    pub async fn list_all_volumes(&self) -> Result<Vec<Volume>> {
        self.list_all("/volumes", &ListQuery::default()).await
    }

    pub async fn get_volume(&self, id: &VolumeId) -> Result<Volume> {
        self.get(&format!("/volumes/{id}")).await
    }

    pub async fn delete_volume(&self, id: &VolumeId) -> Result<Accepted<Volume>> {
        self.delete_json(&format!("/volumes/{id}")).await
    }

    pub async fn attach_volume(&self, id: &VolumeId, instance: &InstanceId) -> Result<Accepted<Volume>> {
        let body = AttachVolume { instance_id: instance.clone() };
        self.post(&format!("/volumes/{id}/attach"), &body).await
    }

    pub async fn detach_volume(&self, id: &VolumeId) -> Result<Accepted<Volume>> {
        self.post_empty(&format!("/volumes/{id}/detach")).await
    }

    // ------------------------------------------------------------ floating IPs

    pub async fn create_floating_ip(&self, req: &CreateFloatingIp) -> Result<FloatingIp> {
        self.post("/floating-ips", req).await
    }

    pub async fn list_all_floating_ips(&self) -> Result<Vec<FloatingIp>> {
        self.list_all("/floating-ips", &ListQuery::default()).await
    }

    pub async fn get_floating_ip(&self, id: &FloatingIpId) -> Result<FloatingIp> {
        self.get(&format!("/floating-ips/{id}")).await
    }

    pub async fn associate_floating_ip(&self, id: &FloatingIpId, req: &AssociateFloatingIp) -> Result<FloatingIp> {
        self.post(&format!("/floating-ips/{id}/associate"), req).await
    }

    pub async fn disassociate_floating_ip(&self, id: &FloatingIpId) -> Result<FloatingIp> {
        self.post_empty(&format!("/floating-ips/{id}/disassociate")).await
    }

    pub async fn delete_floating_ip(&self, id: &FloatingIpId) -> Result<()> {
        self.delete_no_content(&format!("/floating-ips/{id}")).await
    }

    pub async fn extend_volume(&self, id: &VolumeId, req: &ExtendVolume) -> Result<Accepted<Volume>> {
        self.post(&format!("/volumes/{id}/extend"), req).await
    }

    // ------------------------------------------------------------ snapshots

    pub async fn create_snapshot(&self, req: &CreateSnapshot) -> Result<Accepted<Snapshot>> {
        self.post("/snapshots", req).await
    }

    pub async fn list_snapshots(&self, query: &ListQuery) -> Result<Page<Snapshot>> {
        self.list("/snapshots", query).await
    }

    pub async fn list_all_snapshots(&self) -> Result<Vec<Snapshot>> {
        self.list_all("/snapshots", &ListQuery::default()).await
    }

    pub async fn get_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        self.get(&format!("/snapshots/{id}")).await
    }

    pub async fn delete_snapshot(&self, id: &SnapshotId) -> Result<Accepted<Snapshot>> {
        self.delete_json(&format!("/snapshots/{id}")).await
    }

    /// `POST /snapshots/{id}/image`: a new image of a snapshot's blocks.
    pub async fn snapshot_image(&self, id: &SnapshotId, req: &CreateSnapshotImage) -> Result<Accepted<Image>> {
        self.post(&format!("/snapshots/{id}/image"), req).await
    }

    // ------------------------------------------------------------ nodes (admin)

    pub async fn list_host_nodes(&self, query: &ListQuery) -> Result<Page<HostNode>> {
        self.list("/host_nodes", query).await
    }

    pub async fn list_all_host_nodes(&self) -> Result<Vec<HostNode>> {
        self.list_all("/host_nodes", &ListQuery::default()).await
    }

    pub async fn get_host_node(&self, id: &HostNodeId) -> Result<HostNode> {
        self.get(&format!("/host_nodes/{id}")).await
    }

    pub async fn update_host_node(&self, id: &HostNodeId, req: &UpdateHostNode) -> Result<HostNode> {
        self.patch(&format!("/host_nodes/{id}"), req).await
    }

    pub async fn evacuate_host_node(&self, id: &HostNodeId) -> Result<Evacuation> {
        self.post(&format!("/host_nodes/{id}/evacuate"), &serde_json::json!({})).await
    }

    // ------------------------------------------------------------ server groups

    pub async fn create_server_group(&self, req: &CreateServerGroup) -> Result<ServerGroup> {
        self.post("/server_groups", req).await
    }

    pub async fn list_all_server_groups(&self) -> Result<Vec<ServerGroup>> {
        self.list_all("/server_groups", &ListQuery::default()).await
    }

    pub async fn get_server_group(&self, id: &ServerGroupId) -> Result<ServerGroup> {
        self.get(&format!("/server_groups/{id}")).await
    }

    pub async fn delete_server_group(&self, id: &ServerGroupId) -> Result<()> {
        self.delete_no_content(&format!("/server_groups/{id}")).await
    }

    pub async fn list_storage_nodes(&self, query: &ListQuery) -> Result<Page<StorageNode>> {
        self.list("/storage_nodes", query).await
    }

    pub async fn list_all_storage_nodes(&self) -> Result<Vec<StorageNode>> {
        self.list_all("/storage_nodes", &ListQuery::default()).await
    }

    pub async fn get_storage_node(&self, id: &StorageNodeId) -> Result<StorageNode> {
        self.get(&format!("/storage_nodes/{id}")).await
    }

    // ------------------------------------------------------------ jobs

    pub async fn list_jobs(&self, query: &ListQuery) -> Result<Page<Job>> {
        self.list("/jobs", query).await
    }

    pub async fn list_all_jobs(&self) -> Result<Vec<Job>> {
        self.list_all("/jobs", &ListQuery::default()).await
    }

    pub async fn get_job(&self, id: &JobId) -> Result<Job> {
        self.get(&format!("/jobs/{id}")).await
    }

    /// Poll the job every 100 ms until it is no longer running; the finished job is returned
    /// whatever its outcome (see [`Client::wait_job_ok`]).
    pub async fn wait_job(&self, id: &JobId, timeout: Duration) -> Result<Job> {
        self.poll_job(id, JOB_POLL_INTERVAL, Some(timeout), |_| {}).await
    }

    /// [`Client::wait_job`], with a job that did not succeed as [`ClientError::JobFailed`].
    pub async fn wait_job_ok(&self, id: &JobId, timeout: Duration) -> Result<Job> {
        let job = self.wait_job(id, timeout).await?;
        if job.state == JobState::Succeeded {
            Ok(job)
        } else {
            Err(ClientError::JobFailed { job: Box::new(job) })
        }
    }

    /// The general form of [`Client::wait_job`]: `on_poll` sees every answer (for progress
    /// display); `timeout: None` waits forever.
    pub async fn poll_job(
        &self,
        id: &JobId,
        interval: Duration,
        timeout: Option<Duration>,
        on_poll: impl FnMut(&Job),
    ) -> Result<Job> {
        self.follow(
            ("job", id.as_str()),
            interval,
            timeout,
            || self.get_job(id),
            |j: &Job| j.state != JobState::Running,
            on_poll,
            |j: &Job, waited| format!("job {id} ({}) still running after {waited:.1}s", j.action),
        )
        .await
    }

    /// Reads an object with `read` until `done` says it is: again after each of its events
    /// (`kind`, `id`) in the event stream, which tells a change as it is committed, and
    /// every `interval` when the server has no stream (an older dcmgr) or the stream
    /// breaks. `on_read` sees every answer; `timeout: None` waits forever.
    #[allow(clippy::too_many_arguments)]
    async fn follow<T, Fut>(
        &self,
        (kind, id): (&str, &str),
        interval: Duration,
        timeout: Option<Duration>,
        read: impl Fn() -> Fut,
        done: impl Fn(&T) -> bool,
        mut on_read: impl FnMut(&T),
        still: impl Fn(&T, f64) -> String,
    ) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let until = |d: Option<tokio::time::Instant>| async move {
            match d {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        // Opened before the first read: a change committed after that read is in the
        // stream ("from now" starts no later than the request).
        let stream = tokio::select! {
            s = self.events(None, true) => s.ok(),
            _ = until(deadline) => None,
        };
        let obj = read().await?;
        on_read(&obj);
        if done(&obj) {
            return Ok(obj);
        }
        if let Some(mut stream) = stream {
            loop {
                let next = tokio::select! {
                    n = stream.next() => n,
                    _ = until(deadline) => break,
                };
                match next {
                    Ok(Some(StreamItem::Event(e))) if e.kind == kind && e.resource_id == id => {
                        let obj = match read().await {
                            Ok(obj) => obj,
                            Err(ClientError::Transport(_)) => break,
                            Err(e) => return Err(e),
                        };
                        on_read(&obj);
                        if done(&obj) {
                            return Ok(obj);
                        }
                    }
                    Ok(Some(_)) => {}
                    // The stream ended or broke: poll instead.
                    Ok(None) | Err(_) => break,
                }
            }
        }
        loop {
            let obj = match read().await {
                Ok(obj) => obj,
                // The server is restarting (refused, reset): the job goes on there, and
                // is waited for as before (a `--wait` gave up; the event stream did not).
                Err(ClientError::Transport(_)) if timeout.is_none_or(|t| start.elapsed() < t) => {
                    tokio::time::sleep(interval).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            on_read(&obj);
            if done(&obj) {
                return Ok(obj);
            }
            if let Some(t) = timeout {
                let elapsed = start.elapsed();
                if elapsed >= t {
                    return Err(ClientError::Timeout(still(&obj, elapsed.as_secs_f64())));
                }
                tokio::time::sleep(interval.min(t - elapsed)).await;
            } else {
                tokio::time::sleep(interval).await;
            }
        }
    }
}

/// One message of the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    Event(Event),
    /// Events between `resumed_after` and `oldest_kept` were pruned before this client
    /// came back for them.
    Lost {
        resumed_after: u64,
        oldest_kept: u64,
    },
}

/// An open `GET /api/v1/events` response, read message by message.
pub struct EventStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// The ID of the last event read: reconnect with it to resume.
    pub last_id: Option<u64>,
}

impl EventStream {
    /// The next message; None when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<StreamItem>> {
        loop {
            while let Some(end) = find_blank_line(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.1).collect();
                if let Some(item) = self.parse(&block[..end.0])? {
                    return Ok(Some(item));
                }
            }
            match self.resp.chunk().await.map_err(ClientError::Transport)? {
                Some(c) => self.buf.extend_from_slice(&c),
                None => return Ok(None),
            }
        }
    }

    /// One SSE message (`field: value` lines); comments and empty messages give None.
    fn parse(&mut self, block: &[u8]) -> Result<Option<StreamItem>> {
        let text = String::from_utf8_lossy(block);
        let (mut name, mut data) = (String::new(), String::new());
        for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => name = value.to_owned(),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
        if data.is_empty() {
            return Ok(None);
        }
        if name == "lost" {
            let v: serde_json::Value = decode("the event stream", &data)?;
            let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            return Ok(Some(StreamItem::Lost { resumed_after: n("resumed_after"), oldest_kept: n("oldest_kept") }));
        }
        let e: Event = decode("the event stream", &data)?;
        self.last_id = Some(e.seq);
        Ok(Some(StreamItem::Event(e)))
    }
}

/// (end of the message, end of the blank line after it) of the first complete message.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

impl Client {
    /// Opens the account's event stream after event `after` (None: from now on); with
    /// `follow` false the server ends it once the recorded events are sent.
    pub async fn events(&self, after: Option<u64>, follow: bool) -> Result<EventStream> {
        let mut req = self
            .request(Method::GET, "/events")
            .query(&[("follow", follow)])
            .header(reqwest::header::ACCEPT, "text/event-stream")
            // A followed stream stays open: only the connect timeout applies.
            .timeout(Duration::from_secs(30 * 24 * 3600));
        if let Some(a) = after {
            req = req.header("Last-Event-ID", a.to_string());
        }
        let resp = req.send().await.map_err(ClientError::Transport)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.map_err(ClientError::Transport)?;
            return Err(ClientError::from_response(status.as_u16(), &body));
        }
        Ok(EventStream { resp, buf: Vec::new(), last_id: after })
    }
}

fn decode<T: DeserializeOwned>(url: &str, body: &str) -> Result<T> {
    serde_json::from_str(body).map_err(|e| {
        let excerpt: String = body.chars().take(200).collect();
        ClientError::Decode(format!("unexpected answer from {url}: {e} (body starts with {excerpt:?})"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::mock;

    #[test]
    fn urls_are_under_api_v1() {
        let c = Client::new("http://127.0.0.1:9000/", "t");
        assert_eq!(c.url(""), "http://127.0.0.1:9000/api/v1");
        assert_eq!(c.url("/jobs"), "http://127.0.0.1:9000/api/v1/jobs");
        assert_eq!(c.url("jobs"), "http://127.0.0.1:9000/api/v1/jobs");
        let c = Client::new("http://h:1/api/v1/", "t");
        assert_eq!(c.base_url(), "http://h:1");
    }

    #[test]
    fn error_bodies_are_parsed_or_kept_as_text() {
        let e = ClientError::from_response(404, r#"{"error":{"code":"not_found","message":"no instance i-x"}}"#);
        assert!(matches!(&e, ClientError::Api { status: 404, code, message }
            if code == "not_found" && message == "no instance i-x"));
        assert!(e.is_not_found());

        let e = ClientError::from_response(502, "Bad gateway\n");
        assert_eq!(e.code(), "http_502");
        assert_eq!(e.to_string(), "Bad gateway");

        let e = ClientError::from_response(500, "");
        assert_eq!(e.to_string(), "Internal Server Error");
    }

    fn job_json(state: &str) -> serde_json::Value {
        serde_json::json!({
            "id": "job-1", "action": "instance.reboot", "resource_id": "i-1", "state": state,
            "message": null, "created_at": "2024-01-01T00:00:00Z", "finished_at": null,
        })
    }

    /// `vdc … --wait` across a restart of the server: it waits for it to answer again
    /// (it gave up at the first refused connection), then for the job.
    #[tokio::test]
    async fn waiting_for_a_job_outlives_a_server_restart() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // No event stream (404): polled; the first server says running.
        let running = |s: &crate::testutil::Seen| match s.target.starts_with("/api/v1/events") {
            true => (404, String::new()),
            false => (200, job_json("running").to_string()),
        };
        let (first, _) = crate::testutil::mock_on(listener, running);
        let c = Client::new(format!("http://{addr}"), "t");
        let waiting = tokio::spawn(async move {
            c.poll_job(&"job-1".parse().unwrap(), Duration::from_millis(50), Some(Duration::from_secs(20)), |_| {})
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.abort();
        let _ = first.await;
        // Down for a second, then back with the job done.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let done = |s: &crate::testutil::Seen| match s.target.starts_with("/api/v1/events") {
            true => (404, String::new()),
            false => (200, job_json("succeeded").to_string()),
        };
        let (_second, _) = crate::testutil::mock_on(listener, done);
        let job = waiting.await.unwrap().expect("waited through the restart");
        assert_eq!(job.state, JobState::Succeeded);
    }

    #[tokio::test]
    async fn requests_carry_the_token_and_answers_decode() {
        let (base, log) = mock(|req| match (req.method.as_str(), req.target.as_str()) {
            ("GET", "/api/v1") => (200, r#"{"api_version":"1.0","server_version":"x","extensions":["jobs"]}"#.into()),
            ("DELETE", "/api/v1/keypairs/ssh-k") => (204, String::new()),
            ("POST", "/api/v1/instances/i-1/reboot") => {
                (202, serde_json::json!({"job": job_json("running"), "resource": {}}).to_string())
            }
            _ => (404, r#"{"error":{"code":"not_found","message":"nothing here"}}"#.into()),
        })
        .await;
        let c = Client::new(base, "sekret");
        assert_eq!(c.api_info().await.unwrap().extensions, ["jobs"]);
        c.delete_keypair(&"ssh-k".parse().unwrap()).await.unwrap();
        let err = c.get_image(&"img-x".parse().unwrap()).await.unwrap_err();
        assert_eq!((err.status(), err.code()), (Some(404), "not_found"));
        assert_eq!(err.to_string(), "nothing here");
        // The resource is not an Instance: a decode error that names the URL.
        let err = c.instance_action(&"i-1".parse().unwrap(), InstanceAction::Reboot).await.unwrap_err();
        assert!(matches!(&err, ClientError::Decode(m) if m.contains("/instances/i-1/reboot")));

        let log = log.lock().unwrap();
        assert_eq!(log.len(), 4);
        assert!(log.iter().all(|r| r.auth == "Bearer sekret"), "{log:?}");
    }

    #[tokio::test]
    async fn list_all_follows_cursors_and_bodies_are_json() {
        let (base, log) = mock(|req| {
            let page = if req.target.contains("cursor=c1") {
                serde_json::json!({"items": [job_json("succeeded")], "next_cursor": null})
            } else {
                serde_json::json!({"items": [job_json("running")], "next_cursor": "c1"})
            };
            (200, page.to_string())
        })
        .await;
        let c = Client::new(base.clone(), "t");
        let jobs = c.list_all_jobs().await.unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].state, JobState::Succeeded);
        {
            let log = log.lock().unwrap();
            assert_eq!(log[0].target, "/api/v1/jobs?limit=1000");
            assert_eq!(log[1].target, "/api/v1/jobs?limit=1000&cursor=c1");
        }

        let (base, log) = mock(|_| (400, "plain text failure".into())).await;
        let c = Client::new(base, "t");
        let req = CreateAccount { name: "bob".into(), admin: true };
        let err = c.create_account(&req).await.unwrap_err();
        assert_eq!(err.code(), "http_400");
        assert_eq!(err.to_string(), "plain text failure");
        let body: serde_json::Value = serde_json::from_str(&log.lock().unwrap()[0].body).unwrap();
        assert_eq!(body, serde_json::json!({"name": "bob", "admin": true}));
    }

    #[tokio::test]
    async fn wait_job_follows_the_event_stream() {
        let gets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let g = gets.clone();
        let (base, log) = mock(move |s| {
            if s.target.starts_with("/api/v1/events") {
                // Another job's end, a comment, then this job's end split over lines.
                let other = r#"{"seq":7,"account_id":"a-1","kind":"job","resource_id":"job-2","change":"state","state":"succeeded","detail":"","time":"2026-01-01T00:00:00Z"}"#;
                let mine = r#"{"seq":8,"account_id":"a-1","kind":"job","resource_id":"job-1","change":"state","state":"failed","detail":"instance.create i-1","time":"2026-01-01T00:00:00Z"}"#;
                return (200, format!(": keep-alive\n\nid: 7\nevent: job\ndata: {other}\n\nid: 8\r\nevent: job\r\ndata: {mine}\r\n\r\n"));
            }
            let n = g.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (200, job_json(if n == 0 { "running" } else { "failed" }).to_string())
        })
        .await;
        let c = Client::new(base, "t");
        let id: JobId = "job-1".parse().unwrap();
        let job = c.wait_job(&id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(job.state, JobState::Failed);
        // One read before, one after the event: no polling.
        assert_eq!(gets.load(std::sync::atomic::Ordering::SeqCst), 2);
        let log = log.lock().unwrap();
        assert!(log[0].target.starts_with("/api/v1/events?follow=true"), "the stream opens first: {log:?}");
    }

    #[tokio::test]
    async fn wait_job_polls_until_the_job_ends() {
        let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = polls.clone();
        let (base, _) = mock(move |s| {
            if s.target.contains("/events") {
                // A dcmgr without the event stream: --wait polls.
                return (404, String::new());
            }
            let n = p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let state = if n < 2 { "running" } else { "failed" };
            (200, job_json(state).to_string())
        })
        .await;
        let c = Client::new(base, "t");
        let id: JobId = "job-1".parse().unwrap();
        let job = c.wait_job(&id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 3);
        let err = c.wait_job_ok(&id, Duration::from_secs(10)).await.unwrap_err();
        assert_eq!(err.code(), "job_failed");

        let (base, _) = mock(|_| (200, job_json("running").to_string())).await;
        let c = Client::new(base, "t");
        let err = c.wait_job(&id, Duration::from_millis(250)).await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn transport_errors_name_the_url() {
        // Port 1 on loopback is essentially never listening.
        let c = Client::new("http://127.0.0.1:1", "t");
        let e = c.api_info().await.unwrap_err();
        assert_eq!(e.code(), "transport");
        let msg = e.to_string();
        assert!(msg.contains("http://127.0.0.1:1/api/v1"), "{msg}");
        assert!(msg.contains("server may be down"), "{msg}");
    }
}
