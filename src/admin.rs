//! The admin endpoint: `GET /metrics` (Prometheus text format), the probes
//! `GET /livez`, `GET /readyz` and `GET /healthz`,
//! `POST /savepoint?pipeline=NAME[&name=LABEL]` (a savepoint of a running pipeline
//! with checkpoints; replies with its checkpoint id once committed), and the
//! dead-letter queue's admin routes under `/dlq` ([`DlqAccess`]; the operations are
//! [`crate::connectors::dead_letters::workflow`]'s, shared with `tributary dlq`; docs/operations.md),
//! and the broker-outage fallback's routes under `/fallback` ([`crate::fallback::Fallback`];
//! `tributary fallback status|drain|pause|resume` call them):
//! - `GET /fallback`: the breakers, each pipeline's drain mode and counters, and
//!   `backlog`, what waits in the store per pipeline and topic (`backlog_error`
//!   instead when the store cannot be read).
//! - `POST /fallback/drain?pipeline=NAME` (drain without the rate limit until the
//!   backlog is empty), `POST /fallback/pause?pipeline=NAME`, `POST
//!   /fallback/resume?pipeline=NAME` (back to the rate-limited drain): they answer
//!   `{"pipeline", "mode"}`. A process without a fallback (`[fallback] enabled =
//!   false`) answers 404.
//!
//! Probes (Kubernetes' liveness and readiness):
//! - `/livez`: 200 while the process serves and no pipeline has failed; 503 once one
//!   has (restarting the process is then the remedy).
//! - `/readyz`: 200 only when every pipeline has started, none has failed, no stop is
//!   under way, and every component in the health table ([`crate::health`]: a Kafka
//!   source or sink task, a registry…) is up; 503 otherwise. A component connecting
//!   or retrying is not ready, but it is alive: the process waits for its cluster.
//! - `/healthz`: what it always meant, liveness (the same answer as `/livez`); kept for
//!   existing checks. It is not readiness: it stays 200 while a cluster is unreachable.
//!
//! Every probe answers JSON: `status`, the failed pipelines, and each component's
//! `state` (`connecting`, `up`, `retrying`) with, when retrying, `retrying_since`
//! (RFC 3339), `retrying_for_s` and `last_error`.
//!
//! The `/dlq` routes that change dead letters (POST) need `Authorization: Bearer
//! TOKEN` equal to `dlq.admin_token`: 401 when it is missing or wrong, 403 when no token
//! is configured (changes over HTTP are then disabled). The actor is the
//! `x-tributary-actor` header (default `admin-http`). The `/fallback` POST routes need
//! the same token when one is configured (401 otherwise); with none they are open, as
//! `POST /savepoint` is: they change no data, only how fast the backlog drains.
//!
//! A deliberately small HTTP/1.1 responder on tokio (one request per connection; a
//! head of at most 8 KiB, a body of at most `content-length` ≤ 1 MiB, else 413; 5 s to
//! read it) so the binary does not carry a web framework for a few routes; the HTTP
//! gateway work brings a real server. [`Routes::handle`] answers a parsed [`Request`],
//! so the routes are tested without a socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::connectors::dead_letters::Store;
use crate::connectors::dead_letters::workflow::{
    self, EditValidator, Target, Unset, Workflow, authorize, parse_params,
};
use crate::dlq::record::now_ms;
use crate::dlq::{DeadLetter, DlqError};
use crate::fallback::DrainControl;

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0,
                    2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
                ])
                .expect("static buckets are valid")
                .install_recorder()
                .expect("metrics recorder installed once");
            // `# HELP` text and units for every series.
            crate::metrics::describe();
            handle
        })
        .clone()
}

/// The run's own part of the probes: started, stopping, failed pipelines. The
/// components' part is the process-wide table in [`crate::health`].
#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    stopping: AtomicBool,
    failed: std::sync::Mutex<Vec<String>>,
}

impl Health {
    /// Every pipeline has been started and every source and sink task has built its
    /// connector (and so registered its components).
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }
    /// A stop is under way: not ready any more.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
    pub fn set_failed(&self, pipeline: &str) {
        if let Ok(mut f) = self.failed.lock() {
            f.push(pipeline.to_string());
        }
    }
    fn failed(&self) -> Vec<String> {
        self.failed.lock().map(|f| f.clone()).unwrap_or_default()
    }
    /// A probe's answer now: (HTTP status, JSON body).
    fn probe(&self, path: &str) -> (&'static str, String) {
        answer(
            path,
            self.started.load(Ordering::Relaxed),
            self.stopping.load(Ordering::Relaxed),
            self.failed(),
            crate::health::components(),
        )
    }
}

/// The answer of probe `path` (`/livez`, `/readyz`, `/healthz`): (HTTP status, JSON).
fn answer(
    path: &str,
    started: bool,
    stopping: bool,
    failed: Vec<String>,
    components: Vec<crate::health::Status>,
) -> (&'static str, String) {
    let ok = if path == "/readyz" {
        started
            && !stopping
            && failed.is_empty()
            && components
                .iter()
                .all(|c| c.state == crate::health::State::Up)
    } else {
        failed.is_empty()
    };
    let status = match (path, ok) {
        ("/readyz", true) => "ready",
        ("/readyz", false) => "not ready",
        (_, true) => "ok",
        (_, false) => "failed",
    };
    let body = serde_json::json!({
        "status": status,
        "started": started,
        "stopping": stopping,
        "failed_pipelines": failed,
        "components": components.iter().map(component_json).collect::<Vec<_>>(),
    });
    let code = if ok {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    (code, body.to_string() + "\n")
}

/// One row of the health table as the probes report it.
fn component_json(c: &crate::health::Status) -> serde_json::Value {
    let mut v = serde_json::json!({
        "pipeline": c.pipeline,
        "component": c.component,
        "kind": c.kind,
        "state": c.state.name(),
    });
    if let crate::health::State::Retrying { since, last_error } = &c.state {
        v["retrying_since"] = chrono::DateTime::<chrono::Utc>::from(*since)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .into();
        v["retrying_for_s"] = c.retrying_for.as_secs_f64().into();
        v["last_error"] = last_error.as_str().into();
    }
    v
}

/// The running pipelines that take checkpoints, by name: where to ask for savepoints.
///
/// A pipeline is announced ([`Savepoints::expect`]) before the admin endpoint listens
/// and registered once its coordinator runs; a request that arrives in between waits
/// for it (up to [`Savepoints::STARTING`]) instead of being told the pipeline is unknown.
#[derive(Debug, Default)]
pub struct Savepoints {
    pipelines: std::sync::Mutex<std::collections::HashMap<String, SavepointSlot>>,
}

type SavepointSlot = tokio::sync::watch::Sender<
    Option<tokio::sync::mpsc::Sender<crate::checkpoint::SavepointRequest>>,
>;

impl Savepoints {
    /// How long a savepoint request waits for an announced pipeline to start.
    pub const STARTING: std::time::Duration = std::time::Duration::from_secs(60);

    fn slot(&self, pipeline: &str) -> Option<SavepointSlot> {
        let mut m = self.pipelines.lock().ok()?;
        Some(
            m.entry(pipeline.to_string())
                .or_insert_with(|| tokio::sync::watch::channel(None).0)
                .clone(),
        )
    }

    /// Announces a pipeline with checkpoints that is starting.
    pub fn expect(&self, pipeline: &str) {
        self.slot(pipeline);
    }

    pub fn register(
        &self,
        pipeline: &str,
        tx: tokio::sync::mpsc::Sender<crate::checkpoint::SavepointRequest>,
    ) {
        if let Some(slot) = self.slot(pipeline) {
            slot.send_replace(Some(tx));
        }
    }

    /// Takes a savepoint of `pipeline`: (HTTP status, JSON body).
    async fn take(&self, pipeline: &str, name: Option<String>) -> (&'static str, String) {
        let slot = self
            .pipelines
            .lock()
            .ok()
            .and_then(|m| m.get(pipeline).map(|s| s.subscribe()));
        let Some(mut slot) = slot else {
            return (
                "404 Not Found",
                serde_json::json!({ "error": format!("no running pipeline {pipeline} with checkpoints") })
                    .to_string(),
            );
        };
        let started = tokio::time::timeout(Self::STARTING, slot.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|tx| tx.clone()));
        let tx = match started {
            Some(tx) => tx,
            None => {
                return (
                    "503 Service Unavailable",
                    serde_json::json!({ "error": format!(
                        "pipeline {pipeline} has not started its checkpoints within {}s",
                        Self::STARTING.as_secs()) })
                    .to_string(),
                );
            }
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sent = tx
            .send(crate::checkpoint::SavepointRequest {
                name: name.clone(),
                reply,
            })
            .await;
        let outcome = match sent {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err("the pipeline ended".into())),
            Err(_) => Err("the pipeline ended".into()),
        };
        match outcome {
            Ok(id) => (
                "200 OK",
                serde_json::json!({ "pipeline": pipeline, "checkpoint": id,
                    "savepoint": name.unwrap_or_else(|| format!("savepoint-{id}")) })
                .to_string(),
            ),
            Err(e) => (
                "409 Conflict",
                serde_json::json!({ "error": e }).to_string(),
            ),
        }
    }
}

/// The value of `key` in a query string, percent-decoded.
/// `GET /<route>/<key>` and `GET /<route>?column=value&…` of a `serving` sink's table
/// (`crate::connectors::serving`); `None` when no table serves the route.
fn served_route(path: &str, query: &str) -> Option<Answer> {
    let rest = path.strip_prefix('/')?;
    let (route, key) = match rest.split_once('/') {
        Some((r, k)) => (r, Some(percent_decode(k))),
        None => (rest, None),
    };
    let table = crate::connectors::serving::served(route)?;
    Some(match key {
        Some(key) => match table.get(&key) {
            Some(row) => ("200 OK", "application/json", row + "\n"),
            None => message_answer(
                "404 Not Found",
                &format!("no row with {} {key} in /{route}", table.key_field()),
            ),
        },
        None => {
            let mut filters = query_pairs(query);
            let limit = match filters.iter().position(|(k, _)| k == "limit") {
                Some(i) => match filters.remove(i).1.parse::<usize>() {
                    Ok(n) if (1..=10_000).contains(&n) => n,
                    _ => {
                        return Some(message_answer(
                            "400 Bad Request",
                            "limit: give a number from 1 to 10000",
                        ));
                    }
                },
                None => 1000,
            };
            let rows = table.find(&filters, limit);
            (
                "200 OK",
                "application/x-ndjson",
                rows.iter().map(|r| format!("{r}\n")).collect(),
            )
        }
    })
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The pairs of a query string, percent-decoded (`+` is a space).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The largest request body accepted (an edited dead letter): 1 MiB.
pub const MAX_BODY: usize = 1 << 20;

/// The largest request head accepted.
const MAX_HEAD: usize = 8192;

/// One request, read.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The query string, not decoded.
    pub query: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: (HTTP status line, content type, body).
pub type Answer = (&'static str, &'static str, String);

/// What the `/dlq` routes need: the store (opened at the first request that needs it),
/// the admin token, and the check of edited records (planning the record's pipeline).
pub struct DlqAccess {
    open: Box<dyn Fn() -> Result<Store, DlqError> + Send + Sync>,
    opened: tokio::sync::OnceCell<Workflow>,
    admin_token: String,
    validator: Arc<dyn EditValidator>,
}

impl DlqAccess {
    pub fn new(
        open: Box<dyn Fn() -> Result<Store, DlqError> + Send + Sync>,
        admin_token: String,
        validator: Arc<dyn EditValidator>,
    ) -> Self {
        DlqAccess {
            open,
            opened: tokio::sync::OnceCell::new(),
            admin_token,
            validator,
        }
    }

    async fn workflow(&self) -> Result<&Workflow, DlqError> {
        self.opened
            .get_or_try_init(|| async { (self.open)().map(Workflow::new) })
            .await
    }
}

/// Everything the endpoint answers from.
pub struct Routes {
    pub metrics: Option<PrometheusHandle>,
    pub health: Arc<Health>,
    pub savepoints: Arc<Savepoints>,
    pub dlq: Option<DlqAccess>,
    /// The broker-outage fallback's routes (`/fallback`), when the process has one.
    pub fallback: Option<Arc<crate::fallback::Fallback>>,
}

const ROUTES: &str = "GET /metrics, GET /livez, GET /readyz, GET /healthz, POST /savepoint, \
                      GET /dlq, GET /dlq/stats, GET /dlq/audit, GET /dlq/ID, POST /dlq/replay, \
                      POST /dlq/ID/edit, POST /dlq/discard, GET /fallback, \
                      POST /fallback/drain, POST /fallback/pause, POST /fallback/resume\n";

impl Routes {
    /// The answer to `req`.
    pub async fn handle(&self, req: &Request) -> Answer {
        let (method, path, query) = (req.method.as_str(), req.path.as_str(), req.query.as_str());
        if path == "/dlq" || path.starts_with("/dlq/") {
            return match &self.dlq {
                Some(access) => dlq_route(access, req).await,
                None => error_answer(
                    "404 Not Found",
                    "DLQ006",
                    "this process serves no dead-letter routes",
                ),
            };
        }
        if path == "/fallback" || path.starts_with("/fallback/") {
            return self.fallback_route(req).await;
        }
        match (method, path) {
            ("POST", "/savepoint") => match query_value(query, "pipeline") {
                Some(p) => {
                    let (status, body) = self.savepoints.take(&p, query_value(query, "name")).await;
                    (status, "application/json", body + "\n")
                }
                None => (
                    "400 Bad Request",
                    "application/json",
                    "{\"error\":\"pipeline=NAME is required\"}\n".to_string(),
                ),
            },
            ("GET", "/metrics") => match &self.metrics {
                Some(m) => {
                    crate::health::refresh_gauges();
                    ("200 OK", "text/plain; version=0.0.4", m.render())
                }
                None => ("404 Not Found", "text/plain", "not found\n".to_string()),
            },
            ("GET", "/livez" | "/readyz" | "/healthz") => {
                let (status, body) = self.health.probe(path);
                (status, "application/json", body)
            }
            ("GET", _) => match served_route(path, query) {
                Some(answer) => answer,
                None => ("404 Not Found", "text/plain", "not found\n".to_string()),
            },
            _ => ("405 Method Not Allowed", "text/plain", ROUTES.to_string()),
        }
    }

    /// The admin token (`dlq.admin_token`) the operator routes need when it is set;
    /// held by the `/dlq` routes' access, empty without them.
    fn admin_token(&self) -> &str {
        self.dlq.as_ref().map_or("", |d| d.admin_token.as_str())
    }

    /// The `/fallback` routes (see the module docs).
    async fn fallback_route(&self, req: &Request) -> Answer {
        let Some(fallback) = &self.fallback else {
            return message_answer(
                "404 Not Found",
                "this process has no fallback: [fallback] enabled = false",
            );
        };
        let action: fn(&DrainControl) = match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/fallback") => return json_answer(&fallback_status(fallback).await),
            ("POST", "/fallback/drain") => DrainControl::drain_now,
            ("POST", "/fallback/pause") => DrainControl::pause,
            ("POST", "/fallback/resume") => DrainControl::resume,
            ("GET" | "POST", _) => {
                return message_answer(
                    "404 Not Found",
                    &format!(
                        "route {} {} (routes: {})",
                        req.method,
                        req.path,
                        ROUTES.trim_end()
                    ),
                );
            }
            _ => return ("405 Method Not Allowed", "text/plain", ROUTES.to_string()),
        };
        let token = self.admin_token();
        if let Err(e) = authorize(token, bearer(req), Unset::Open) {
            let message = match bearer(req).filter(|b| !b.is_empty()) {
                Some(_) => e.to_string(),
                None => "draining, pausing and resuming the fallback need the admin token \
                         (dlq.admin_token): Authorization: Bearer TOKEN (command line: --token \
                         or TRIBUTARY_ADMIN_TOKEN)"
                    .to_string(),
            };
            return error_answer("401 Unauthorized", e.code(), &message);
        }
        let Some(pipeline) = query_value(&req.query, "pipeline") else {
            return message_answer("400 Bad Request", "pipeline=NAME is required");
        };
        let control = fallback.control(&pipeline);
        action(&control);
        json_answer(&serde_json::json!({ "pipeline": pipeline, "mode": control.mode() }))
    }
}

/// `GET /fallback`: the process's [`crate::fallback::FallbackStatus`] and, under
/// `backlog`, what waits in the store (`backlog_error` when it cannot be read).
async fn fallback_status(fallback: &crate::fallback::Fallback) -> serde_json::Value {
    let mut v = serde_json::to_value(fallback.status()).unwrap_or_default();
    let backlog = match fallback.store().await {
        Ok(store) => store.backlog(None).await,
        Err(e) => Err(e),
    };
    match backlog {
        Ok(rows) => v["backlog"] = serde_json::to_value(rows).unwrap_or_default(),
        Err(e) => v["backlog_error"] = e.to_string().into(),
    }
    v
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(req: &Request) -> Option<&str> {
    req.header("authorization")
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// An error as the routes without an error code answer it: `{"error": message}`.
fn message_answer(status: &'static str, message: &str) -> Answer {
    (
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string() + "\n",
    )
}

fn error_answer(status: &'static str, code: &str, message: &str) -> Answer {
    (
        status,
        "application/json",
        serde_json::json!({ "error": message, "code": code }).to_string() + "\n",
    )
}

/// The HTTP status of a dead-letter error; `Unauthorized` is 403 when no token is
/// configured (nothing the client sends can help), else 401.
fn dlq_error(e: &DlqError, token_configured: bool) -> Answer {
    let status = match e {
        DlqError::Unauthorized(_) if !token_configured => "403 Forbidden",
        DlqError::Unauthorized(_) => "401 Unauthorized",
        DlqError::NotFound(_) => "404 Not Found",
        DlqError::NotReplayable { .. } => "409 Conflict",
        DlqError::InvalidEdit(_) => "422 Unprocessable Entity",
        DlqError::BadRequest(_) => "400 Bad Request",
        DlqError::Store { .. } => "503 Service Unavailable",
        DlqError::Failed { .. } => "500 Internal Server Error",
    };
    error_answer(status, e.code(), &e.to_string())
}

fn json_answer(v: &impl serde::Serialize) -> Answer {
    (
        "200 OK",
        "application/json",
        serde_json::to_string(v).unwrap_or_default() + "\n",
    )
}

fn json_lines<T>(items: &[T], line: impl Fn(&T) -> serde_json::Value) -> Answer {
    let body: String = items.iter().map(|i| line(i).to_string() + "\n").collect();
    ("200 OK", "application/x-ndjson", body)
}

/// The `/dlq` routes (see [`crate::connectors::dead_letters::workflow`]).
async fn dlq_route(access: &DlqAccess, req: &Request) -> Answer {
    let configured = !access.admin_token.is_empty();
    match dlq_operation(access, req).await {
        Ok(answer) => answer,
        Err(e) => dlq_error(&e, configured),
    }
}

async fn dlq_operation(access: &DlqAccess, req: &Request) -> Result<Answer, DlqError> {
    let rest = req.path.trim_start_matches("/dlq").trim_start_matches('/');
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let pairs = query_pairs(&req.query);
    let params = || {
        parse_params(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            now_ms(),
        )
    };
    let changes = req.method == "POST";
    if changes {
        authorize(&access.admin_token, bearer(req), Unset::Closed)?;
    }
    let actor = req
        .header("x-tributary-actor")
        .filter(|a| !a.trim().is_empty())
        .unwrap_or("admin-http")
        .to_string();
    let method_not_allowed = || Ok(("405 Method Not Allowed", "text/plain", ROUTES.to_string()));
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", []) => {
            let p = params()?;
            let flow = access.workflow().await?;
            let letters = flow.store().list(&p.filter, p.page).await?;
            Ok(json_lines(&letters, DeadLetter::summary_json))
        }
        ("GET", ["stats"]) => {
            let p = params()?;
            let flow = access.workflow().await?;
            let rows = flow.store().stats(&p.filter).await?;
            Ok(json_answer(&workflow::stats_json(&rows, now_ms())))
        }
        ("GET", ["audit"]) => {
            let p = params()?;
            let flow = access.workflow().await?;
            let entries = flow.store().audit(p.limit.unwrap_or(50)).await?;
            Ok(json_lines(&entries, |e| {
                serde_json::to_value(e).unwrap_or_default()
            }))
        }
        ("GET", [id]) => {
            let flow = access.workflow().await?;
            Ok(json_answer(&workflow::show_json(&flow.get(id).await?)))
        }
        ("POST", ["replay"]) => {
            let p = params()?;
            let target = Target::from_params(&p)?;
            let flow = access.workflow().await?;
            Ok(json_answer(&flow.replay(&target, &actor, p.dry_run).await?))
        }
        ("POST", ["discard"]) => {
            let p = params()?;
            let target = Target::from_params(&p)?;
            let reason = p
                .reason
                .clone()
                .ok_or_else(|| DlqError::BadRequest("reason=TEXT is required".into()))?;
            let flow = access.workflow().await?;
            Ok(json_answer(
                &flow.discard(&target, &reason, &actor, p.dry_run).await?,
            ))
        }
        ("POST", [id, "edit"]) => {
            let flow = access.workflow().await?;
            flow.edit(id, req.body.clone(), &actor, access.validator.as_ref())
                .await?;
            Ok(json_answer(&serde_json::json!({ "edited": id })))
        }
        ("GET" | "POST", _) => Err(DlqError::NotFound(format!(
            "route {} {} (routes: {})",
            req.method,
            req.path,
            ROUTES.trim_end()
        ))),
        _ => method_not_allowed(),
    }
}

/// Reads one request from `sock`: its head (at most [`MAX_HEAD`] bytes) and a body of
/// `content-length` bytes (at most [`MAX_BODY`]). `Err` is the answer to send instead.
async fn read_request<S: AsyncReadExt + Unpin>(
    sock: &mut S,
) -> std::io::Result<Result<Request, Answer>> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let head_end = loop {
        if let Some(at) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if len == buf.len() {
            return Ok(Err((
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n".into(),
            )));
        }
        let n = sock.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
    };
    let length = match req.header("content-length") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                return Ok(Err((
                    "400 Bad Request",
                    "text/plain",
                    "bad content-length\n".into(),
                )));
            }
        },
    };
    if length > MAX_BODY {
        return Ok(Err((
            "413 Payload Too Large",
            "application/json",
            serde_json::json!({ "error": format!("the body is over {MAX_BODY} bytes") })
                .to_string()
                + "\n",
        )));
    }
    let mut body = buf[head_end..len].to_vec();
    body.truncate(length);
    if body.len() < length {
        let already = body.len();
        body.resize(length, 0);
        sock.read_exact(&mut body[already..]).await?;
    }
    req.body = body;
    Ok(Ok(req))
}

/// Binds `addr` and serves until the process ends. Returns the bound address.
pub async fn serve(addr: &str, routes: Routes) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let routes = Arc::new(routes);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let read =
                    tokio::time::timeout(Duration::from_secs(5), read_request(&mut sock)).await;
                let (status, ctype, body) = match read {
                    Ok(Ok(Ok(req))) => routes.handle(&req).await,
                    Ok(Ok(Err(refused))) => refused,
                    _ => return,
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{State, Status};

    fn component(state: State) -> Status {
        Status {
            pipeline: "p".into(),
            component: "orders[0]".into(),
            kind: "kafka",
            state,
            retrying_for: Duration::from_secs(12),
        }
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap()
    }

    /// A savepoint asked for while an announced pipeline is still starting waits for
    /// its coordinator; an unknown pipeline is a 404.
    #[tokio::test]
    async fn a_savepoint_request_waits_for_an_announced_pipeline_to_start() {
        let savepoints = Arc::new(Savepoints::default());
        savepoints.expect("sp");
        let asking = {
            let s = savepoints.clone();
            tokio::spawn(async move { s.take("sp", Some("before".into())).await })
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        savepoints.register("sp", tx);
        let request: crate::checkpoint::SavepointRequest = rx.recv().await.unwrap();
        assert_eq!(request.name.as_deref(), Some("before"));
        request.reply.send(Ok(7)).unwrap();
        let (status, body) = asking.await.unwrap();
        assert_eq!(status, "200 OK");
        assert_eq!(json(&body)["checkpoint"], 7);
        assert_eq!(savepoints.take("other", None).await.0, "404 Not Found");
    }

    #[test]
    fn readiness_needs_a_started_run_and_every_component_up_liveness_only_no_failure() {
        let retrying = State::Retrying {
            since: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            last_error: "connection refused".into(),
        };
        let (status, body) = answer(
            "/readyz",
            true,
            false,
            vec![],
            vec![component(retrying.clone())],
        );
        assert_eq!(status, "503 Service Unavailable");
        let c = &json(&body)["components"][0];
        assert_eq!(c["state"], "retrying");
        assert_eq!(c["component"], "orders[0]");
        assert_eq!(c["last_error"], "connection refused");
        assert_eq!(c["retrying_since"], "2027-01-15T08:00:00.000Z");
        assert_eq!(c["retrying_for_s"], 12.0);
        for path in ["/livez", "/healthz"] {
            let (status, body) =
                answer(path, true, false, vec![], vec![component(retrying.clone())]);
            assert_eq!(status, "200 OK", "{path}: an outage is not a failure");
            assert_eq!(json(&body)["status"], "ok");
        }
        let up = || vec![component(State::Up)];
        assert_eq!(answer("/readyz", true, false, vec![], up()).0, "200 OK");
        assert_eq!(answer("/readyz", true, false, vec![], vec![]).0, "200 OK");
        assert_eq!(
            answer("/readyz", false, false, vec![], up()).0,
            "503 Service Unavailable",
            "not started"
        );
        assert_eq!(
            answer("/readyz", true, true, vec![], up()).0,
            "503 Service Unavailable",
            "stopping"
        );
        assert_eq!(
            answer(
                "/readyz",
                true,
                false,
                vec![],
                vec![component(State::Connecting)]
            )
            .0,
            "503 Service Unavailable"
        );
        let (status, body) = answer("/livez", true, false, vec!["p".into()], up());
        assert_eq!(status, "503 Service Unavailable");
        assert_eq!(json(&body)["failed_pipelines"][0], "p");
        assert_eq!(
            answer("/readyz", true, false, vec!["p".into()], up()).0,
            "503 Service Unavailable"
        );
    }

    // ---- the /dlq routes, against a real local store ----

    use crate::connectors::dead_letters::conformance::{letter, write_finished};
    use crate::dlq::record::DeadLetter;

    const TOKEN: &str = "s3cret";

    /// A local store in `dir` holding `letters`, and the routes over it with `token`;
    /// edits are checked against the pipelines of `dir/pipelines`.
    async fn routes(dir: &std::path::Path, token: &str, letters: &[DeadLetter]) -> Routes {
        let store: Store = Arc::new(
            crate::connectors::dead_letters::local::LocalStore::open(dir.join("dlq.sqlite"))
                .unwrap(),
        );
        if !letters.is_empty() {
            write_finished(&store, letters).await;
        }
        let config = crate::pipeline::load_config(
            None,
            vec![],
            &[format!(
                "run.pipelines_dir={}",
                dir.join("pipelines").display()
            )],
        )
        .unwrap();
        Routes {
            metrics: None,
            health: Arc::default(),
            savepoints: Arc::default(),
            dlq: Some(DlqAccess::new(
                Box::new(move || Ok(store.clone())),
                token.to_string(),
                Arc::new(crate::cli::dlq::PipelineValidator::new(config)),
            )),
            fallback: None,
        }
    }

    fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }

    const BEARER: (&str, &str) = ("authorization", "Bearer s3cret");

    #[tokio::test]
    async fn dlq_reads_are_open_and_changes_need_the_bearer_token() {
        let dir = tempfile::tempdir().unwrap();
        let letters: Vec<DeadLetter> = (0..3).map(letter).collect();
        let r = routes(dir.path(), TOKEN, &letters).await;
        let (status, ctype, body) = r.handle(&request("GET", "/dlq", &[], b"")).await;
        assert_eq!((status, ctype), ("200 OK", "application/x-ndjson"));
        let lines: Vec<serde_json::Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["id"], letters[0].id);
        assert_eq!(lines[0]["failure_class"], "malformed");
        let one = format!("/dlq/replay?ids={}", letters[0].id);
        let (status, _, body) = r.handle(&request("POST", &one, &[], b"")).await;
        assert_eq!(status, "401 Unauthorized", "{body}");
        assert_eq!(json(&body)["code"], "DLQ005");
        let wrong = [("authorization", "Bearer nope")];
        let (status, _, body) = r.handle(&request("POST", &one, &wrong, b"")).await;
        assert_eq!(status, "401 Unauthorized");
        assert_eq!(json(&body)["error"], "the admin token is wrong");
        let (status, _, body) = r
            .handle(&request(
                "POST",
                &one,
                &[BEARER, ("x-tributary-actor", "carol")],
                b"",
            ))
            .await;
        assert_eq!(status, "200 OK", "{body}");
        assert_eq!(json(&body)["replayed"], 1);
        let (_, _, body) = r
            .handle(&request(
                "GET",
                &format!("/dlq/{}", letters[0].id),
                &[],
                b"",
            ))
            .await;
        assert_eq!(json(&body)["status"], "replayed");
        // A discard by filter, with its reason percent-encoded; the rest stay.
        let (status, _, body) = r
            .handle(&request(
                "POST",
                "/dlq/discard?status=pending&text=bad%20record%201&reason=known+bug",
                &[BEARER],
                b"",
            ))
            .await;
        assert_eq!(status, "200 OK", "{body}");
        assert_eq!(json(&body)["discarded"], 1);
        let (_, _, body) = r
            .handle(&request("GET", "/dlq/audit?limit=10", &[], b""))
            .await;
        let audit: Vec<serde_json::Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(audit.len(), 2, "{body}");
        assert_eq!(audit[0]["action"], "discard");
        assert_eq!(audit[0]["actor"], "admin-http");
        assert_eq!(audit[0]["ids"][0], letters[1].id.as_str());
        assert_eq!(audit[1]["action"], "replay");
        assert_eq!(audit[1]["actor"], "carol");
        let (_, _, body) = r.handle(&request("GET", "/dlq/stats", &[], b"")).await;
        assert_eq!(json(&body)["pending"], 1);
        for (target, status) in [
            ("/dlq?class=nope", "400 Bad Request"),
            ("/dlq/ffff", "404 Not Found"),
        ] {
            assert_eq!(r.handle(&request("GET", target, &[], b"")).await.0, status);
        }
        let (status, _, body) = r
            .handle(&request("POST", "/dlq/discard?ids=x", &[BEARER], b""))
            .await;
        assert_eq!(status, "400 Bad Request");
        assert!(body.contains("reason=TEXT is required"), "{body}");
    }

    #[tokio::test]
    async fn without_a_configured_token_dlq_changes_are_forbidden() {
        let dir = tempfile::tempdir().unwrap();
        let letters = [letter(0)];
        let r = routes(dir.path(), "", &letters).await;
        for headers in [&[][..], &[BEARER][..]] {
            let (status, _, body) = r
                .handle(&request("POST", "/dlq/replay?status=pending", headers, b""))
                .await;
            assert_eq!(status, "403 Forbidden");
            assert!(body.contains("no admin token is configured"), "{body}");
        }
        let (status, _, body) = r
            .handle(&request(
                "GET",
                &format!("/dlq/{}", letters[0].id),
                &[],
                b"",
            ))
            .await;
        assert_eq!(status, "200 OK");
        assert_eq!(json(&body)["status"], "pending", "nothing changed");
    }

    #[tokio::test]
    async fn an_edit_over_http_is_checked_against_its_table() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "").unwrap();
        std::fs::write(
            dir.path().join("pipelines/shop.yaml"),
            format!(
                "name: shop\nsql: |\n  CREATE TABLE orders (order_id BIGINT NOT NULL, total DOUBLE CHECK (total >= 0))\n    WITH (connector = 'file', path = '{}', format = 'json');\n  CREATE TABLE out WITH (connector = 'stdout');\n  INSERT INTO out SELECT * FROM orders;\n",
                input.display()
            ),
        )
        .unwrap();
        let l = DeadLetter {
            pipeline: "shop".into(),
            ..letter(0)
        };
        let r = routes(dir.path(), TOKEN, std::slice::from_ref(&l)).await;
        let edit = format!("/dlq/{}/edit", l.id);
        for (body, why) in [
            (&b"{\"order_id\": 1, \"total\": "[..], "not valid JSON"),
            (b"{\"order_id\": \"one\"}", "schema_mismatch"),
            (
                b"{\"order_id\": 1, \"total\": -2}",
                "CHECK (total >= 0) failed",
            ),
        ] {
            let (status, _, answer) = r.handle(&request("POST", &edit, &[BEARER], body)).await;
            assert_eq!(status, "422 Unprocessable Entity", "{answer}");
            assert_eq!(json(&answer)["code"], "DLQ004");
            assert!(answer.contains(why), "{why}: {answer}");
        }
        let (status, _, answer) = r.handle(&request("POST", &edit, &[], b"{}")).await;
        assert_eq!(status, "401 Unauthorized", "{answer}");
        let good = b"{\"order_id\": 1, \"total\": 2.5}";
        let (status, _, answer) = r.handle(&request("POST", &edit, &[BEARER], good)).await;
        assert_eq!(status, "200 OK", "{answer}");
        let (_, _, shown) = r
            .handle(&request("GET", &format!("/dlq/{}", l.id), &[], b""))
            .await;
        let shown = json(&shown);
        assert_eq!(shown["payload_decoded"]["total"], 2.5);
        assert!(shown["original_payload"].is_string(), "{shown}");
    }

    // ---- the /fallback routes, against a real local fallback store ----

    use crate::fallback::local::LocalFallbackStore;
    use crate::fallback::{Fallback, FallbackRecord, FallbackStore, Seq, StreamId};

    /// The routes of [`routes`] (admin token `token`) with a fallback whose local store
    /// in `dir` holds two records of `orders` under one key, and a breaker that saw a
    /// failure.
    async fn fallback_routes(dir: &std::path::Path, token: &str) -> (Routes, Arc<Fallback>) {
        let store = LocalFallbackStore::open(dir.join("fallback.sqlite")).unwrap();
        let records: Vec<FallbackRecord> = (0..2)
            .map(|index| FallbackRecord {
                stream: StreamId {
                    pipeline: "orders".into(),
                    topic: "orders.tracking".into(),
                    key: Some(b"o1".to_vec()),
                },
                seq: Seq {
                    checkpoint: 3,
                    index,
                },
                value: Some(b"{}".to_vec()),
                headers: Vec::new(),
                timestamp_ms: None,
                stored_ms: 1_000,
            })
            .collect();
        store.append(&records).await.unwrap();
        let fallback = Arc::new(Fallback::with_store(Default::default(), Arc::new(store)));
        fallback
            .breaker("kafka-1:9092")
            .failure("connection refused");
        let mut r = routes(dir, token, &[]).await;
        r.fallback = Some(fallback.clone());
        (r, fallback)
    }

    #[tokio::test]
    async fn fallback_status_shows_the_breakers_the_drains_and_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let (r, fallback) = fallback_routes(dir.path(), "").await;
        fallback.control("orders").pause();
        let (status, ctype, body) = r.handle(&request("GET", "/fallback", &[], b"")).await;
        assert_eq!((status, ctype), ("200 OK", "application/json"), "{body}");
        let v = json(&body);
        assert_eq!(
            v["breakers"],
            serde_json::json!([{ "cluster": "kafka-1:9092", "state": "closed",
                "last_error": "connection refused" }])
        );
        assert_eq!(
            v["pipelines"],
            serde_json::json!([{ "pipeline": "orders", "mode": "paused",
                "drained": 0, "stored": 0 }])
        );
        assert_eq!(
            v["backlog"],
            serde_json::json!([{ "pipeline": "orders", "topic": "orders.tracking",
                "records": 2, "keys": 1, "oldest_stored_ms": 1_000 }])
        );
        assert!(v.get("backlog_error").is_none(), "{v}");
    }

    /// A store that cannot be opened leaves the status readable, saying why the
    /// backlog is missing.
    #[tokio::test]
    async fn fallback_status_without_its_store_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = routes(dir.path(), "", &[]).await;
        let fallback = Fallback::new(
            Default::default(),
            Box::new(|| {
                Err(crate::fallback::FallbackError::Unavailable {
                    store: "local",
                    message: "disk on fire".into(),
                })
            }),
        );
        fallback.control("orders").drain_now();
        r.fallback = Some(Arc::new(fallback));
        let (status, _, body) = r.handle(&request("GET", "/fallback", &[], b"")).await;
        assert_eq!(status, "200 OK", "{body}");
        let v = json(&body);
        assert_eq!(v["pipelines"][0]["mode"], "unlimited");
        assert!(v.get("backlog").is_none(), "{v}");
        assert_eq!(
            v["backlog_error"],
            "fallback store local unavailable: disk on fire"
        );
    }

    #[tokio::test]
    async fn fallback_pause_drain_and_resume_set_a_pipelines_drain_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (r, fallback) = fallback_routes(dir.path(), "").await;
        for (action, mode) in [
            ("pause", "paused"),
            ("drain", "unlimited"),
            ("pause", "paused"),
            ("resume", "rate-limited"),
        ] {
            let target = format!("/fallback/{action}?pipeline=orders");
            let (status, ctype, body) = r.handle(&request("POST", &target, &[], b"")).await;
            assert_eq!((status, ctype), ("200 OK", "application/json"), "{body}");
            assert_eq!(
                json(&body),
                serde_json::json!({ "pipeline": "orders", "mode": mode }),
                "{action}"
            );
            assert_eq!(
                serde_json::to_value(fallback.control("orders").mode()).unwrap(),
                mode
            );
        }
        // A pipeline the process does not know gets its control on demand.
        let (status, _, body) = r
            .handle(&request("POST", "/fallback/pause?pipeline=later", &[], b""))
            .await;
        assert_eq!(status, "200 OK", "{body}");
        assert_eq!(json(&body)["mode"], "paused");
        for target in ["/fallback/drain", "/fallback/drain?pipeline="] {
            let (status, _, body) = r.handle(&request("POST", target, &[], b"")).await;
            assert_eq!(status, "400 Bad Request", "{target}");
            assert_eq!(json(&body)["error"], "pipeline=NAME is required");
        }
        let (status, _, body) = r
            .handle(&request(
                "POST",
                "/fallback/flush?pipeline=orders",
                &[],
                b"",
            ))
            .await;
        assert_eq!(status, "404 Not Found");
        assert!(body.contains("POST /fallback/drain"), "{body}");
        let (status, _, _) = r
            .handle(&request(
                "DELETE",
                "/fallback/pause?pipeline=orders",
                &[],
                b"",
            ))
            .await;
        assert_eq!(status, "405 Method Not Allowed");
        assert_eq!(
            fallback.control("orders").mode(),
            crate::fallback::DrainMode::RateLimited,
            "refused requests changed nothing"
        );
    }

    #[tokio::test]
    async fn without_a_fallback_its_routes_answer_404() {
        let dir = tempfile::tempdir().unwrap();
        let r = routes(dir.path(), "", &[]).await;
        for (method, target) in [
            ("GET", "/fallback"),
            ("POST", "/fallback/drain?pipeline=orders"),
            ("POST", "/fallback/pause?pipeline=orders"),
            ("POST", "/fallback/resume?pipeline=orders"),
        ] {
            let (status, ctype, body) = r.handle(&request(method, target, &[], b"")).await;
            assert_eq!(
                (status, ctype),
                ("404 Not Found", "application/json"),
                "{target}"
            );
            assert_eq!(
                json(&body)["error"],
                "this process has no fallback: [fallback] enabled = false"
            );
        }
    }

    #[tokio::test]
    async fn fallback_changes_need_the_admin_token_when_one_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let (r, fallback) = fallback_routes(dir.path(), TOKEN).await;
        let pause = "/fallback/pause?pipeline=orders";
        let (status, _, body) = r.handle(&request("POST", pause, &[], b"")).await;
        assert_eq!(status, "401 Unauthorized", "{body}");
        assert_eq!(json(&body)["code"], "DLQ005");
        assert!(body.contains("Authorization: Bearer TOKEN"), "{body}");
        let wrong = [("authorization", "Bearer nope")];
        let (status, _, body) = r.handle(&request("POST", pause, &wrong, b"")).await;
        assert_eq!(status, "401 Unauthorized");
        assert_eq!(json(&body)["error"], "the admin token is wrong");
        assert_eq!(
            fallback.control("orders").mode(),
            crate::fallback::DrainMode::RateLimited,
            "refused: nothing changed"
        );
        // Reading stays open; the right token changes the mode.
        let (status, _, _) = r.handle(&request("GET", "/fallback", &[], b"")).await;
        assert_eq!(status, "200 OK");
        let (status, _, body) = r.handle(&request("POST", pause, &[BEARER], b"")).await;
        assert_eq!(status, "200 OK", "{body}");
        assert_eq!(json(&body)["mode"], "paused");
    }

    /// Sends `raw` to the server and returns its answer's status line and body.
    async fn exchange(addr: SocketAddr, raw: &[&[u8]]) -> (String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        for part in raw {
            s.write_all(part).await.unwrap();
            s.flush().await.unwrap();
        }
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_string(), body.to_string())
    }

    #[tokio::test]
    async fn the_server_reads_request_bodies_and_refuses_large_ones() {
        let dir = tempfile::tempdir().unwrap();
        let l = letter(0);
        let r = routes(dir.path(), TOKEN, std::slice::from_ref(&l)).await;
        let addr = serve("127.0.0.1:0", r).await.unwrap();
        let (status, body) = exchange(addr, &[b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(json(&body)["status"], "ok");
        let big = format!(
            "POST /dlq/{}/edit HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: {}\r\n\r\n",
            l.id,
            MAX_BODY + 1
        );
        let (status, _) = exchange(addr, &[big.as_bytes()]).await;
        assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
        // A body sent after the head, in two parts, is read whole (here: refused by
        // the validator because there is no pipeline `p`, which names it).
        let body = b"{\"order_id\": 1}";
        let head = format!(
            "POST /dlq/{}/edit HTTP/1.1\r\nauthorization: Bearer s3cret\r\ncontent-length: {}\r\n\r\n",
            l.id,
            body.len()
        );
        let (status, answer) = exchange(addr, &[head.as_bytes(), &body[..5], &body[5..]]).await;
        assert_eq!(status, "HTTP/1.1 422 Unprocessable Entity", "{answer}");
        assert!(answer.contains("no pipeline named p"), "{answer}");
        let (status, _) = exchange(addr, &[b"DELETE /dlq HTTP/1.1\r\n\r\n"]).await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    }
}
