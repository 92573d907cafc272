//! A fake forge API on 127.0.0.1 for tests: GitHub (api.github.com, or Enterprise under
//! `/api/v3`) or Gitea (under `/api/v1`). It is the one part of the forge loop that cannot be
//! real, so it is strict where the real APIs are: every request to
//! `POST {api}/repos/{owner}/{repo}/statuses/{sha}` is checked as GitHub's "Create a commit
//! status" and Gitea's `repoCreateStatus` check it (auth header, known repository, User-Agent
//! on GitHub, sha, JSON fields, allowed states, GitHub's 140-character description) and answered
//! with the status code and error shape the real API uses. Accepted statuses and refused
//! requests are both recorded, so a test can assert the exact sequence posted *and* that
//! nothing malformed was ever sent.
//!
//! It also stands in for outgoing notification webhooks: `POST {url}/hooks/{name}` records the
//! JSON body; names under `slack/` must be a valid Slack incoming-webhook message.
//!
//! Failures can be injected (`fail_next`, `set_down`) to exercise retries, timeouts and the
//! status outbox. The server runs on its own thread and tokio runtime so synchronous and
//! `#[tokio::test]` tests alike can block on its `wait_for_*` methods; dropping it stops it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Which API the fake speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    GitHub,
    Gitea,
}

/// A commit status the fake accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// `owner/name` as the request's path spelled it.
    pub repo: String,
    pub sha: String,
    pub state: String,
    pub target_url: Option<String>,
    pub description: Option<String>,
    pub context: Option<String>,
}

/// A request the fake refused because the real API would have: a client bug.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub reason: String,
}

/// What the next requests get instead of their real answer (after they passed every check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// This HTTP status with the forge's error body (500, 502, 401…).
    Status(u16),
    /// No answer at all: the client's own timeout has to fire.
    Hang,
}

#[derive(Default)]
struct Book {
    /// Lowercased `owner/name` → the tokens that may post statuses to it.
    allowed: HashMap<String, Vec<String>>,
    statuses: Vec<Status>,
    refused: Vec<Refusal>,
    status_failures: VecDeque<Failure>,
    hook_failures: VecDeque<Failure>,
    failed: usize,
    hooks: Vec<(String, Value)>,
    next_id: u64,
}

struct Shared {
    kind: Kind,
    /// `http://127.0.0.1:PORT`.
    root: String,
    /// The API's path prefix: "", "/api/v3" or "/api/v1".
    prefix: String,
    book: Mutex<Book>,
    changed: Condvar,
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    Up,
    Down,
    Stop,
}

pub struct FakeForge {
    shared: Arc<Shared>,
    control: watch::Sender<Control>,
    thread: Option<JoinHandle<()>>,
}

/// How long `wait_for_*` sleeps at most between looks: they are woken on every change, this
/// only bounds a missed wake-up.
const RECHECK: Duration = Duration::from_millis(200);

impl FakeForge {
    /// GitHub's API under `prefix`: "" as on api.github.com, "/api/v3" as on Enterprise Server.
    pub fn github(prefix: &str) -> FakeForge {
        assert!(
            prefix.is_empty() || (prefix.starts_with('/') && !prefix.ends_with('/')),
            "prefix `{prefix}`: empty or like /api/v3"
        );
        Self::start(Kind::GitHub, prefix)
    }

    /// Gitea's API, under `/api/v1`.
    pub fn gitea() -> FakeForge {
        Self::start(Kind::Gitea, "/api/v1")
    }

    fn start(kind: Kind, prefix: &str) -> FakeForge {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            kind,
            root: format!("http://{address}"),
            prefix: prefix.to_owned(),
            book: Mutex::default(),
            changed: Condvar::new(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (control, watched) = watch::channel(Control::Up);
        let thread = std::thread::Builder::new()
            .name("fake-forge".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(serve(listener, address, app, watched));
            })
            .unwrap();
        FakeForge {
            shared,
            control,
            thread: Some(thread),
        }
    }

    pub fn kind(&self) -> Kind {
        self.shared.kind
    }

    /// `http://127.0.0.1:PORT`, where `/hooks/…` live.
    pub fn url(&self) -> String {
        self.shared.root.clone()
    }

    /// The API base URL a server's settings name: `http://127.0.0.1:PORT`, `…/api/v3` or
    /// `…/api/v1`.
    pub fn api_url(&self) -> String {
        format!("{}{}", self.shared.root, self.shared.prefix)
    }

    /// The URL of the notification webhook `name` (`"team"`, `"slack/T0/B0/x"`).
    pub fn hook_url(&self, name: &str) -> String {
        format!("{}/hooks/{name}", self.shared.root)
    }

    /// Lets `token` post statuses to `repo` (`owner/name`); a repository may have several.
    pub fn allow(&self, repo: &str, token: &str) {
        self.shared
            .book()
            .allowed
            .entry(repo.to_lowercase())
            .or_default()
            .push(token.to_owned());
    }

    /// Every status accepted so far, in arrival order.
    pub fn statuses(&self) -> Vec<Status> {
        self.shared.book().statuses.clone()
    }

    /// Every request refused so far as the real API would have, with why.
    pub fn refused(&self) -> Vec<Refusal> {
        self.shared.book().refused.clone()
    }

    /// Panics listing the refused requests, if any.
    pub fn assert_nothing_refused(&self) {
        let refused = self.refused();
        assert!(
            refused.is_empty(),
            "the fake forge refused requests: {refused:#?}"
        );
    }

    /// How many requests got an injected failure so far.
    pub fn failed(&self) -> usize {
        self.shared.book().failed
    }

    /// The next `n` well-formed status requests get `failure` instead of being recorded.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut book = self.shared.book();
        book.status_failures.extend(std::iter::repeat_n(failure, n));
    }

    /// As [`FakeForge::fail_next`], for the notification hooks.
    pub fn fail_next_hooks(&self, n: usize, failure: Failure) {
        let mut book = self.shared.book();
        book.hook_failures.extend(std::iter::repeat_n(failure, n));
    }

    /// Down: the port refuses connections and open ones are cut, as when the forge is
    /// unreachable. Up again on the same port.
    pub fn set_down(&self, down: bool) {
        let _ = self
            .control
            .send(if down { Control::Down } else { Control::Up });
    }

    /// Blocks until at least `n` statuses are recorded, then returns them all; panics with what
    /// arrived (and what was refused) if that takes longer than `within`.
    pub fn wait_for_statuses(&self, n: usize, within: Duration) -> Vec<Status> {
        self.wait(within, |book| {
            (book.statuses.len() >= n).then(|| book.statuses.clone())
        })
        .unwrap_or_else(|book| {
            panic!(
                "{n} statuses not posted within {within:?}: got {:#?}\nrefused: {:#?}",
                book.statuses, book.refused
            )
        })
    }

    /// The JSON bodies posted to the hook `name`, in order.
    pub fn hooks(&self, name: &str) -> Vec<Value> {
        hooks_named(&self.shared.book(), name)
    }

    /// Blocks until the hook `name` got at least `n` bodies, then returns them all; panics at
    /// `within` with what it has.
    pub fn wait_for_hooks(&self, name: &str, n: usize, within: Duration) -> Vec<Value> {
        self.wait(within, |book| {
            let bodies = hooks_named(book, name);
            (bodies.len() >= n).then_some(bodies)
        })
        .unwrap_or_else(|book| {
            panic!(
                "{n} posts to hook {name} not made within {within:?}: got {:#?}\nrefused: {:#?}",
                hooks_named(&book, name),
                book.refused
            )
        })
    }

    fn wait<T>(
        &self,
        within: Duration,
        done: impl Fn(&Book) -> Option<T>,
    ) -> Result<T, MutexGuard<'_, Book>> {
        let deadline = Instant::now() + within;
        let mut book = self.shared.book();
        loop {
            if let Some(found) = done(&book) {
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(book);
            }
            book = self
                .shared
                .changed
                .wait_timeout(book, left.min(RECHECK))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn hooks_named(book: &Book, name: &str) -> Vec<Value> {
    book.hooks
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, body)| body.clone())
        .collect()
}

/// Accepts connections while `Up`; on `Down` closes the listener and cuts every open connection
/// (hanging ones included), rebinding the same address on `Up`.
async fn serve(
    first: std::net::TcpListener,
    address: SocketAddr,
    app: Router,
    mut control: watch::Receiver<Control>,
) {
    let mut listener = Some(tokio::net::TcpListener::from_std(first).unwrap());
    loop {
        let wanted = *control.borrow_and_update();
        match wanted {
            Control::Stop => return,
            Control::Down => {
                listener = None;
                if control.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Control::Up => {}
        }
        let bound = match listener.take() {
            Some(bound) => bound,
            None => rebind(address).await,
        };
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = bound.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    connections.spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
                changed = control.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *control.borrow() != Control::Up {
                        break;
                    }
                }
            }
        }
        connections.abort_all();
    }
}

async fn rebind(address: SocketAddr) -> tokio::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => return listener,
            Err(e) if Instant::now() > deadline => panic!("fake forge: rebind {address}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// What a request gets.
enum Answer {
    Json(StatusCode, Value),
    Text(StatusCode, &'static str),
    Hang,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let answer = match path.strip_prefix("/hooks/") {
        Some(name) => hook(&shared, &method, name, &headers, &body),
        None => status(&shared, &method, &path, &headers, &body),
    };
    if let Answer::Hang = answer {
        std::future::pending::<()>().await;
    }
    shared.changed.notify_all();
    match answer {
        Answer::Json(code, value) => (code, axum::Json(value)).into_response(),
        Answer::Text(code, text) => (code, text).into_response(),
        Answer::Hang => unreachable!(),
    }
}

/// A refusal, recorded.
fn refuse(shared: &Shared, method: &Method, path: &str, answer: Answer, reason: String) -> Answer {
    let status = match &answer {
        Answer::Json(code, _) | Answer::Text(code, _) => code.as_u16(),
        Answer::Hang => 0,
    };
    shared.book().refused.push(Refusal {
        method: method.to_string(),
        path: path.to_owned(),
        status,
        reason,
    });
    answer
}

/// The body each forge answers an error with: GitHub `{"message", "documentation_url",
/// "status"}`, Gitea `{"message", "url"}`.
fn error_body(shared: &Shared, code: StatusCode, message: &str) -> Value {
    match shared.kind {
        Kind::GitHub => json!({
            "message": message,
            "documentation_url": "https://docs.github.com/rest/commits/statuses#create-a-commit-status",
            "status": code.as_u16().to_string(),
        }),
        Kind::Gitea => json!({"message": message, "url": format!("{}/api/swagger", shared.root)}),
    }
}

const GITHUB_STATES: [&str; 4] = ["error", "failure", "pending", "success"];
const GITEA_STATES: [&str; 5] = ["pending", "success", "error", "failure", "warning"];
/// GitHub refuses longer descriptions (counted in characters).
const GITHUB_DESCRIPTION_MAX: usize = 140;

/// A `POST …/statuses/{sha}`, checked in the order the real APIs check (route, method,
/// User-Agent, auth, repository, sha, body); only a request that passes everything meets an
/// injected failure or is recorded.
fn status(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    let github = shared.kind == Kind::GitHub;
    let refused = |code: StatusCode, message: &str, reason: String| {
        refuse(
            shared,
            method,
            path,
            Answer::Json(code, error_body(shared, code, message)),
            reason,
        )
    };
    let route = path
        .strip_prefix(shared.prefix.as_str())
        .map(|rest| rest.split('/').collect::<Vec<_>>());
    let Some(["", "repos", owner, name, "statuses", sha]) = route.as_deref() else {
        return refused(
            StatusCode::NOT_FOUND,
            if github { "Not Found" } else { "not found" },
            format!("no such API path (the API is under `{}`)", shared.prefix),
        );
    };
    if owner.is_empty() || name.is_empty() || sha.is_empty() {
        return refused(
            StatusCode::NOT_FOUND,
            "Not Found",
            "empty path segment".into(),
        );
    }
    if method != Method::POST {
        return match shared.kind {
            Kind::GitHub => refused(
                StatusCode::NOT_FOUND,
                "Not Found",
                format!("{method} instead of POST"),
            ),
            Kind::Gitea => refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                format!("{method} instead of POST"),
            ),
        };
    }
    if github && !headers.contains_key(header::USER_AGENT) {
        return refuse(
            shared,
            method,
            path,
            Answer::Text(
                StatusCode::FORBIDDEN,
                "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.\n",
            ),
            "no User-Agent header".into(),
        );
    }
    if github
        && let Some(version) = headers
            .get_all("x-github-api-version")
            .iter()
            .find(|v| *v != "2022-11-28")
    {
        return refused(
            StatusCode::BAD_REQUEST,
            &format!("API version {version:?} is not supported."),
            format!("X-GitHub-Api-Version {version:?}"),
        );
    }
    let Some(token) = bearer_or_token(headers) else {
        let message = if github {
            "Requires authentication"
        } else {
            "token is required"
        };
        return refused(
            StatusCode::UNAUTHORIZED,
            message,
            "no `Authorization: Bearer|token <token>` header".into(),
        );
    };
    let repo = format!("{owner}/{name}");
    let (known_token, may_post) = {
        let book = shared.book();
        let known = book.allowed.values().flatten().any(|t| *t == token);
        let may = book
            .allowed
            .get(&repo.to_lowercase())
            .is_some_and(|tokens| tokens.contains(&token));
        (known, may)
    };
    if !known_token {
        let message = if github {
            "Bad credentials"
        } else {
            "user does not exist [uid: 0, name: ]"
        };
        return refused(
            StatusCode::UNAUTHORIZED,
            message,
            format!("unknown token {token:?}"),
        );
    }
    if !may_post {
        return refused(
            StatusCode::NOT_FOUND,
            if github {
                "Not Found"
            } else {
                "The target couldn't be found."
            },
            format!("repository {repo} unknown or not allowed for this token"),
        );
    }
    if !is_full_sha(sha) {
        return refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("No commit found for SHA: {sha}"),
            format!("sha {sha:?} is not 40 hex digits"),
        );
    }
    if !github {
        let json_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if !json_type {
            return refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Content-Type must be application/json",
                "the body is not sent as application/json (Gitea would read it as a form)".into(),
            );
        }
    }
    let fields = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => fields,
        Ok(other) => {
            return refused(
                if github {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                },
                "Body should be a JSON object",
                format!("body is not a JSON object: {other}"),
            );
        }
        Err(e) => {
            return refused(
                if github {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                },
                "Problems parsing JSON",
                format!("body is not JSON: {e}"),
            );
        }
    };
    let invalid = |message: String| {
        refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("Invalid request.\n\n{message}"),
            message.clone(),
        )
    };
    let state = match fields.get("state") {
        Some(Value::String(state)) => state.clone(),
        None => return invalid("\"state\" wasn't supplied.".into()),
        Some(other) => return invalid(format!("For 'properties/state', {other} is not a string.")),
    };
    let mut optional = HashMap::new();
    for field in ["target_url", "description", "context"] {
        // GitHub's schema: target_url and description are string or null, context a string.
        // Gitea decodes into Go strings, where null is the empty string.
        let nullable = !github || field != "context";
        match fields.get(field) {
            None => {}
            Some(Value::Null) if nullable => {}
            Some(Value::String(text)) => {
                optional.insert(field, text.clone());
            }
            Some(other) => {
                let kind = if nullable {
                    "a string or null"
                } else {
                    "a string"
                };
                return invalid(format!("For 'properties/{field}', {other} is not {kind}."));
            }
        }
    }
    let states: &[&str] = if github {
        &GITHUB_STATES
    } else {
        &GITEA_STATES
    };
    if !states.contains(&state.as_str()) {
        return validation_failed(
            shared,
            method,
            path,
            "state",
            "state is not included in the list",
            &state,
        );
    }
    if github
        && let Some(description) = optional.get("description")
        && description.chars().count() > GITHUB_DESCRIPTION_MAX
    {
        return validation_failed(
            shared,
            method,
            path,
            "description",
            "description is too long (maximum is 140 characters)",
            description,
        );
    }

    let mut book = shared.book();
    if let Some(failure) = book.status_failures.pop_front() {
        book.failed += 1;
        drop(book);
        return injected(shared, failure);
    }
    book.next_id += 1;
    let id = book.next_id;
    let status = Status {
        repo: repo.clone(),
        sha: sha.to_string(),
        state,
        target_url: optional.remove("target_url"),
        description: optional.remove("description"),
        context: optional.remove("context"),
    };
    book.statuses.push(status.clone());
    drop(book);
    Answer::Json(StatusCode::CREATED, created(shared, id, &status))
}

/// GitHub's 422 for a field that parsed but is not acceptable. Gitea has no such shape; it
/// answers 422 with its usual message body.
fn validation_failed(
    shared: &Shared,
    method: &Method,
    path: &str,
    field: &str,
    message: &str,
    value: &str,
) -> Answer {
    let body = match shared.kind {
        Kind::GitHub => json!({
            "message": "Validation Failed",
            "errors": [{"resource": "Status", "code": "custom", "field": field, "message": message}],
            "documentation_url": "https://docs.github.com/rest/commits/statuses#create-a-commit-status",
            "status": "422",
        }),
        Kind::Gitea => error_body(shared, StatusCode::UNPROCESSABLE_ENTITY, message),
    };
    refuse(
        shared,
        method,
        path,
        Answer::Json(StatusCode::UNPROCESSABLE_ENTITY, body),
        format!("{message}: {value:?}"),
    )
}

/// The answer to an injected failure.
fn injected(shared: &Shared, failure: Failure) -> Answer {
    match failure {
        Failure::Hang => Answer::Hang,
        Failure::Status(code) => {
            let code = StatusCode::from_u16(code).expect("an HTTP status code");
            let message = match (shared.kind, code) {
                (Kind::GitHub, StatusCode::UNAUTHORIZED) => "Bad credentials",
                (Kind::Gitea, StatusCode::UNAUTHORIZED) => "token is required",
                (_, StatusCode::NOT_FOUND) => "Not Found",
                _ => "Server Error",
            };
            Answer::Json(code, error_body(shared, code, message))
        }
    }
}

/// The 201 body: the status object as each API returns it (Gitea calls the state `status`).
fn created(shared: &Shared, id: u64, status: &Status) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let url = format!(
        "{}{}/repos/{}/statuses/{}",
        shared.root, shared.prefix, status.repo, status.sha
    );
    let creator = json!({"login": "dockhand-bot", "id": 1, "type": "User"});
    match shared.kind {
        Kind::GitHub => json!({
            "url": url,
            "avatar_url": null,
            "id": id,
            "node_id": format!("SC_fake{id}"),
            "state": status.state,
            "description": status.description,
            "target_url": status.target_url,
            "context": status.context.as_deref().unwrap_or("default"),
            "created_at": now,
            "updated_at": now,
            "creator": creator,
        }),
        Kind::Gitea => json!({
            "id": id,
            "status": status.state,
            "target_url": status.target_url.as_deref().unwrap_or(""),
            "description": status.description.as_deref().unwrap_or(""),
            "url": url,
            "context": status.context.as_deref().unwrap_or(""),
            "creator": creator,
            "created_at": now,
            "updated_at": now,
        }),
    }
}

/// The token of `Authorization: Bearer <t>` or `token <t>` (the scheme case-insensitive, as
/// both forges read it).
fn bearer_or_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
    (known && !token.is_empty()).then(|| token.to_owned())
}

fn is_full_sha(sha: &str) -> bool {
    sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A notification webhook: any JSON body is recorded; Slack-style hooks (`slack/…`) must also
/// be a message Slack would post, else they get Slack's own 400 answers.
fn hook(shared: &Shared, method: &Method, name: &str, headers: &HeaderMap, body: &[u8]) -> Answer {
    let path = format!("/hooks/{name}");
    let slack = name == "slack" || name.starts_with("slack/");
    if method != Method::POST {
        return refuse(
            shared,
            method,
            &path,
            Answer::Text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            format!("{method} instead of POST"),
        );
    }
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let parsed = serde_json::from_slice::<Value>(body);
    let bad = |text: &'static str, reason: String| {
        refuse(
            shared,
            method,
            &path,
            Answer::Text(StatusCode::BAD_REQUEST, text),
            reason,
        )
    };
    if !json_type {
        return bad(
            "invalid_payload",
            "Content-Type is not application/json".into(),
        );
    }
    let body = match parsed {
        Ok(body @ Value::Object(_)) => body,
        Ok(other) => return bad("invalid_payload", format!("not a JSON object: {other}")),
        Err(e) => return bad("invalid_payload", format!("not JSON: {e}")),
    };
    if slack {
        let filled = |key: &str| match &body[key] {
            Value::String(text) => !text.is_empty(),
            Value::Array(items) => key != "text" && !items.is_empty(),
            _ => false,
        };
        if !matches!(body["text"], Value::Null | Value::String(_)) {
            return bad(
                "invalid_payload",
                format!("`text` is {}, not a string", body["text"]),
            );
        }
        if !["text", "blocks", "attachments"]
            .iter()
            .any(|key| filled(key))
        {
            return bad(
                "no_text",
                "a Slack message needs `text`, `blocks` or `attachments`".into(),
            );
        }
    }
    let mut book = shared.book();
    if let Some(failure) = book.hook_failures.pop_front() {
        book.failed += 1;
        drop(book);
        return match failure {
            Failure::Hang => Answer::Hang,
            Failure::Status(code) => Answer::Text(
                StatusCode::from_u16(code).expect("an HTTP status code"),
                "failure",
            ),
        };
    }
    book.hooks.push((name.to_owned(), body));
    Answer::Text(StatusCode::OK, "ok")
}
