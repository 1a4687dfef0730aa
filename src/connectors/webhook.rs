//! The webhook sink (`connector = 'webhook'`): each row, or each batch of rows, POSTed
//! as JSON to an HTTP endpoint, signed, with an idempotency key, at least once.
//!
//! Owns: the sink's options, the request (body, signature, headers), what each answer
//! means, retries with backoff, the idempotency keys and the little state that keeps
//! them stable across restores. One HTTP/1.1 request on a fresh connection is
//! [`crate::http`]'s.
//!
//! The request: `POST <url>` with `Content-Type: application/json`, the row as one
//! JSON object (`batch = 1`) or the rows as a JSON array (`batch > 1`), encoded by
//! [`crate::formats::json`] like the file sink's lines; `X-Tributary-Timestamp: <unix
//! seconds>`; with a secret, `X-Tributary-Signature: sha256=<hex HMAC-SHA256 of
//! "<timestamp>.<body>">` (Stripe's scheme: the receiver recomputes it over the exact
//! bytes it got and may refuse old timestamps); `Idempotency-Key`; the table's
//! `headers.*`.
//!
//! Invariants:
//! - At least once: a checkpoint's barrier passes this sink (`pre_commit`) only once
//!   every record written before it got a 2xx, or was refused for good and reported
//!   as a dead letter (class `sink`) before the barrier.
//! - An outage is waited out, never turned into lost or dead-lettered records: no
//!   connection, a timeout, HTTP 408, 429 (after its `Retry-After`) and 5xx are
//!   retried with exponential backoff and jitter, without end; after `retries` tries
//!   the sink logs the outage. Meanwhile the task's [`Probe`] says "retrying" (in
//!   `/readyz`) and writes wait: back-pressure up to the sources.
//! - A definite refusal of one request's records (any other 4xx) sends those records
//!   to the dead-letter queue, with the status and the start of the answer, and the
//!   rest go on; a refused batch is resent record by record, so only the records the
//!   endpoint refuses are dead-lettered. A refusal of the sink itself (401, 403, 407,
//!   a redirect, a TLS certificate not trusted) fails the pipeline (`CON009`,
//!   `CON010`): it would refuse every record, and the checkpoint replays them once
//!   fixed.
//! - The idempotency key of a request is the same each time its records are sent
//!   again: retries, and replays after a restore (see [`IdempotencyKeys`]).
//! - The secret is never logged, shown by `explain`, or put in an error message.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use sha2::Digest;

use super::{ConnectorError, Options, TableRequest};
use crate::dlq::{BadRecordReason, BadRecords};
use crate::engine::{Sink, SinkFactory, TaskInfo};
use crate::health::Probe;
use crate::http::{Endpoint, HttpError};

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// The longest wait between two tries (the backoff doubles up to it).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// How much of a refusal's answer goes into its dead letter.
const REASON_BYTES: usize = 500;
/// Headers the sink sets itself, which `headers.*` may not.
const RESERVED: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "idempotency-key",
    "x-tributary-signature",
    "x-tributary-timestamp",
];

/// The table's settings, shared by its tasks and their requests.
struct Settings {
    table: String,
    endpoint: Endpoint,
    shown: String,
    secret: Option<Secret>,
    batch: usize,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    headers: Vec<(String, String)>,
    max_in_flight: usize,
}

/// The HMAC key: given, or named by an environment variable read when a task starts.
enum Secret {
    Key(Vec<u8>),
    Env(String),
}

impl Settings {
    /// The HMAC key, if the table has one; an unset variable fails the task (`CON004`).
    fn key(&self) -> Result<Option<Arc<[u8]>>> {
        match &self.secret {
            None => Ok(None),
            Some(Secret::Key(k)) => Ok(Some(k.as_slice().into())),
            Some(Secret::Env(var)) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Ok(Some(k.as_bytes().into())),
                _ => Err(ConnectorError::InvalidOption {
                    table: self.table.clone(),
                    option: "secret_env".into(),
                    value: var.clone(),
                    reason: "the environment variable is not set (or empty)".into(),
                }
                .into()),
            },
        }
    }
}

/// Builds the `webhook` sink from its options.
pub fn sink(_req: &TableRequest<'_>, opts: &mut Options) -> Result<Arc<dyn SinkFactory>> {
    let url = opts.required("url")?;
    let target = crate::http::parse_url(&url)
        .map_err(|e| opts.invalid("url", &crate::http::redact(&url), e))?;
    if target.user_info.is_some() {
        return Err(opts.invalid(
            "url",
            &crate::http::redact(&url),
            "no credentials in the URL: send them with headers.authorization",
        ));
    }
    let shown = target.shown();
    let ca_file = opts.get("ca_file").map(std::path::PathBuf::from);
    let endpoint =
        Endpoint::new(target, ca_file.as_deref()).map_err(|e| opts.invalid("url", &shown, e))?;
    let secret = match (opts.get("secret"), opts.get("secret_env")) {
        (Some(_), Some(_)) => {
            return Err(opts.invalid("secret_env", "…", "give secret or secret_env, not both"));
        }
        (Some(s), None) if s.is_empty() => {
            return Err(opts.invalid("secret", "", "an empty key signs nothing"));
        }
        (Some(s), None) => Some(Secret::Key(s.into_bytes())),
        (None, Some(var)) if var.is_empty() || var.contains(['=', '\0']) => {
            return Err(opts.invalid("secret_env", &var, "not an environment variable's name"));
        }
        // Read when the sink starts, so `tributary check` runs without the secret.
        (None, Some(var)) => Some(Secret::Env(var)),
        (None, None) => None,
    };
    let batch = opts.parse::<usize>("batch", 1)?;
    if batch == 0 {
        return Err(opts.invalid("batch", "0", "at least 1 record per request"));
    }
    let timeout = opts.parse_duration("timeout", Duration::from_secs(10))?;
    if timeout.is_zero() {
        return Err(opts.invalid("timeout", "0", "a request needs some time"));
    }
    let retries = opts.parse::<u32>("retries", 5)?;
    let backoff = opts.parse_duration("backoff", Duration::from_millis(200))?;
    if backoff.is_zero() {
        return Err(opts.invalid("backoff", "0", "retries need a pause between them"));
    }
    let max_in_flight = opts.parse::<usize>("max_in_flight", 4)?;
    if max_in_flight == 0 {
        return Err(opts.invalid("max_in_flight", "0", "at least 1 request at a time"));
    }
    let mut headers = Vec::new();
    for (name, value) in opts.prefixed("headers.") {
        let key = format!("headers.{name}");
        let name = name.to_ascii_lowercase();
        if RESERVED.contains(&name.as_str()) {
            return Err(opts.invalid(&key, "…", "the sink sets this header itself"));
        }
        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(opts.invalid(&key, "…", "not a valid header name"));
        }
        if hyper::header::HeaderValue::from_str(&value).is_err() {
            // The value may be a credential: not shown.
            return Err(opts.invalid(&key, "…", "not a valid header value"));
        }
        headers.push((name, value));
    }
    Ok(Arc::new(WebhookSinkFactory {
        settings: Arc::new(Settings {
            table: opts.table.clone(),
            endpoint,
            shown,
            secret,
            batch,
            timeout,
            retries,
            backoff,
            headers,
            max_in_flight,
        }),
    }))
}

struct WebhookSinkFactory {
    settings: Arc<Settings>,
}

impl SinkFactory for WebhookSinkFactory {
    fn describe(&self) -> String {
        let s = &self.settings;
        format!(
            "webhook: POST {} ({}, {}, up to {} requests in flight, at-least-once)",
            s.shown,
            if s.batch == 1 {
                "one JSON object per request".to_string()
            } else {
                format!("JSON arrays of up to {} rows", s.batch)
            },
            if s.secret.is_some() {
                "signed"
            } else {
                "unsigned"
            },
            s.max_in_flight
        )
    }

    fn create(&self, task: &TaskInfo, _schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let counters = Counters {
            delivered: crate::metrics::webhook_requests(
                &task.pipeline,
                &self.settings.table,
                "delivered",
            ),
            retried: crate::metrics::webhook_requests(
                &task.pipeline,
                &self.settings.table,
                "retried",
            ),
            refused: crate::metrics::webhook_requests(
                &task.pipeline,
                &self.settings.table,
                "refused",
            ),
        };
        Ok(Box::new(WebhookSink {
            shared: Arc::new(Shared {
                settings: self.settings.clone(),
                key: self.settings.key()?,
                probe: std::sync::OnceLock::new(),
                component: (
                    task.pipeline.to_string(),
                    format!("{}[{}]", task.node, task.partition),
                ),
                counters,
            }),
            keys: IdempotencyKeys::new(task, &self.settings.table, crate::types::run_generation()),
            task: (task.partition, task.parallelism),
            pending: Vec::new(),
            in_flight: tokio::task::JoinSet::new(),
            bad: None,
        }))
    }
}

/// `tributary_webhook_requests_total` by outcome.
struct Counters {
    delivered: metrics::Counter,
    retried: metrics::Counter,
    refused: metrics::Counter,
}

/// What a task's requests share.
struct Shared {
    settings: Arc<Settings>,
    /// The HMAC key, read when the task started.
    key: Option<Arc<[u8]>>,
    /// The task's row in the health table, registered at its first request (a task
    /// that has sent nothing yet does not hold `/readyz` back).
    probe: std::sync::OnceLock<Probe>,
    /// (pipeline, `table[partition]`) for the probe.
    component: (String, String),
    counters: Counters,
}

/// Where a task's idempotency keys come from.
///
/// The key of a request is the first 128 bits, in hex, of the SHA-256 of: the
/// pipeline, the table, the generation, the task (`partition/parallelism`), the
/// position of the request's first record in the task's stream (records since the
/// generation began), the number of records, and the body. The generation and the
/// position are kept in every checkpoint: a task restored at the same parallelism
/// resumes both where the checkpoint's barrier was, so a record replayed after a
/// crash is at the position it had before and gets the key it had. A pipeline started
/// without a checkpoint, or restored at another parallelism, starts a new generation
/// (the process's start, `types::run_generation`): its keys are new.
///
/// Stable when the task's input replays in the same order (a deterministic source —
/// generator, file, Kafka partition — feeding the sink without a repartition that
/// merges several tasks); because the body is part of the key, a replay in another
/// order gives other keys (duplicates the receiver cannot recognise) but never gives
/// one record another's key.
#[derive(Debug, Clone)]
struct IdempotencyKeys {
    /// The hash of pipeline, table, generation and task.
    stream: [u8; 32],
    generation: u64,
    /// The position of the next record.
    next: u64,
    pipeline: Arc<str>,
    table: String,
    task: (usize, usize),
}

/// What a checkpoint holds for one task.
#[derive(serde::Serialize, serde::Deserialize)]
struct Held {
    generation: u64,
    partition: usize,
    parallelism: usize,
    next: u64,
}

impl IdempotencyKeys {
    fn new(task: &TaskInfo, table: &str, generation: u64) -> Self {
        let mut keys = IdempotencyKeys {
            stream: [0; 32],
            generation,
            next: 0,
            pipeline: task.pipeline.clone(),
            table: table.to_string(),
            task: (task.partition, task.parallelism),
        };
        keys.start(generation, 0);
        keys
    }

    fn start(&mut self, generation: u64, next: u64) {
        self.generation = generation;
        self.next = next;
        let mut h = sha2::Sha256::new();
        for part in [
            self.pipeline.as_bytes(),
            self.table.as_bytes(),
            generation.to_string().as_bytes(),
            format!("{}/{}", self.task.0, self.task.1).as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        self.stream.copy_from_slice(&h.finalize());
    }

    /// The key of `count` records from position `first`, sent as `body`.
    fn key(&self, first: u64, count: usize, body: &[u8]) -> String {
        let mut h = sha2::Sha256::new();
        h.update(self.stream);
        h.update(first.to_be_bytes());
        h.update((count as u64).to_be_bytes());
        h.update(body);
        hex(&h.finalize()[..16])
    }

    fn held(&self) -> Vec<u8> {
        serde_json::to_vec(&Held {
            generation: self.generation,
            partition: self.task.0,
            parallelism: self.task.1,
            next: self.next,
        })
        .expect("plain numbers encode")
    }

    /// Resumes the generation and position of this task's state in `states`, when the
    /// checkpoint was taken at this parallelism; otherwise keeps a new generation.
    fn restore(&mut self, states: &[(usize, Vec<u8>)]) -> Result<()> {
        for (_, bytes) in states {
            let held: Held = serde_json::from_slice(bytes).map_err(|e| ConnectorError::Other {
                connector: "webhook",
                message: format!("table {}: restoring the checkpoint: {e}", self.table),
            })?;
            if (held.partition, held.parallelism) == self.task {
                self.start(held.generation, held.next);
                return Ok(());
            }
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` under `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    format!(
        "sha256={}",
        hmac_sha256_hex(secret, &[timestamp.as_bytes(), b".", body])
    )
}

/// The hex HMAC-SHA256 of `parts`, one after the other, under `key`.
fn hmac_sha256_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    for part in parts {
        mac.update(part);
    }
    hex(&mac.finalize().into_bytes())
}

/// One request: `records` from position `first`.
struct Request {
    first: u64,
    records: Vec<Bytes>,
    key: String,
    body: Bytes,
}

impl Request {
    fn new(keys: &IdempotencyKeys, first: u64, records: Vec<Bytes>, batch: usize) -> Self {
        let body = body_of(&records, batch > 1);
        Request {
            key: keys.key(first, records.len(), &body),
            first,
            records,
            body,
        }
    }
}

/// One JSON object, or a JSON array of them.
fn body_of(records: &[Bytes], array: bool) -> Bytes {
    if !array && records.len() == 1 {
        return records[0].clone();
    }
    let mut body = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(r);
    }
    body.push(b']');
    body.into()
}

/// A record the endpoint refused for good, and why.
struct Refusal {
    record: Bytes,
    reason: String,
}

/// What the endpoint finally said to one request.
enum Answer {
    Delivered,
    /// A definite refusal of these records: status, start of the body.
    Refused(u16, String),
}

impl Shared {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn probe(&self) -> &Probe {
        self.probe
            .get_or_init(|| Probe::new(&self.component.0, self.component.1.clone(), "webhook"))
    }

    /// Sends `req` until the endpoint answers other than with an outage.
    async fn send(&self, req: &Request) -> Result<Answer> {
        let s = self.settings();
        let mut delay = s.backoff;
        let mut tries: u32 = 0;
        loop {
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let timestamp_text = timestamp.to_string();
            let signed = self
                .key
                .as_deref()
                .map(|k| signature(k, timestamp, &req.body));
            let mut headers: Vec<(&str, &str)> = vec![
                ("content-type", "application/json"),
                (
                    "user-agent",
                    concat!("tributary/", env!("CARGO_PKG_VERSION")),
                ),
                ("idempotency-key", &req.key),
                ("x-tributary-timestamp", &timestamp_text),
            ];
            if let Some(sig) = &signed {
                headers.push(("x-tributary-signature", sig));
            }
            for (name, value) in &s.headers {
                headers.push((name, value));
            }
            let sent = s
                .endpoint
                .send(
                    hyper::Method::POST,
                    "",
                    &headers,
                    req.body.clone(),
                    s.timeout,
                )
                .await;
            let (error, retry_after) = match sent {
                Ok(r) if (200..300).contains(&r.status) => {
                    self.probe().up();
                    self.counters.delivered.increment(1);
                    return Ok(Answer::Delivered);
                }
                Ok(r) if matches!(r.status, 408 | 429 | 500..=599) => (
                    format!("HTTP {}: {}", r.status, excerpt(&r.body)),
                    retry_after(&r.headers),
                ),
                Ok(r)
                    if r.status < 200
                        || (300..400).contains(&r.status)
                        || matches!(r.status, 401 | 403 | 407) =>
                {
                    let reason = match r.status {
                        300..=399 => {
                            "redirects are not followed: set url to where it points".to_string()
                        }
                        _ => format!("{} (check secret and headers.*)", excerpt(&r.body)),
                    };
                    return Err(ConnectorError::WebhookRefused {
                        table: s.table.clone(),
                        url: s.shown.clone(),
                        status: r.status,
                        reason,
                    }
                    .into());
                }
                Ok(r) => {
                    // An answer, and a definite one: the endpoint is up.
                    self.probe().up();
                    self.counters.refused.increment(1);
                    return Ok(Answer::Refused(r.status, excerpt(&r.body)));
                }
                Err(HttpError::Tls(message)) => {
                    return Err(ConnectorError::WebhookTls {
                        table: s.table.clone(),
                        url: s.shown.clone(),
                        message,
                    }
                    .into());
                }
                Err(HttpError::Request(message)) => {
                    return Err(ConnectorError::Other {
                        connector: "webhook",
                        message: format!("table {}: {message}", s.table),
                    }
                    .into());
                }
                Err(e) => (e.to_string(), None),
            };
            tries += 1;
            self.counters.retried.increment(1);
            self.probe().retrying(&error);
            if tries == s.retries.max(1) {
                tracing::error!(
                    table = %s.table,
                    url = %s.shown,
                    tries,
                    error = %error,
                    "webhook unreachable: waiting the outage out (back-pressure, no record dropped)"
                );
            } else {
                tracing::debug!(table = %s.table, url = %s.shown, tries, error = %error, "webhook retry");
            }
            let jittered = delay.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            let pause = retry_after.map_or(jittered, |r| r.min(MAX_RETRY_AFTER));
            tokio::time::sleep(pause).await;
            delay = (delay * 2).min(MAX_BACKOFF.max(s.backoff));
        }
    }

    /// Delivers `req`; a refused batch is resent record by record. The records
    /// refused for good.
    async fn deliver(&self, keys: &IdempotencyKeys, req: Request) -> Result<Vec<Refusal>> {
        let status = match self.send(&req).await? {
            Answer::Delivered => return Ok(Vec::new()),
            Answer::Refused(status, body) if req.records.len() == 1 => {
                return Ok(vec![Refusal {
                    record: req.records[0].clone(),
                    reason: format!("webhook {}: HTTP {status}: {body}", self.settings.shown),
                }]);
            }
            Answer::Refused(status, _) => status,
        };
        tracing::warn!(
            table = %self.settings.table,
            status,
            records = req.records.len(),
            "webhook refused a batch: sending its records one by one"
        );
        let mut refused = Vec::new();
        for (i, record) in req.records.into_iter().enumerate() {
            let one = Request::new(
                keys,
                req.first + i as u64,
                vec![record],
                self.settings.batch,
            );
            if let Answer::Refused(status, body) = self.send(&one).await? {
                refused.push(Refusal {
                    record: one.records[0].clone(),
                    reason: format!("webhook {}: HTTP {status}: {body}", self.settings.shown),
                });
            }
        }
        Ok(refused)
    }
}

/// The start of an answer's body, as text on one line.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(REASON_BYTES)]);
    let mut line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.len() > REASON_BYTES {
        line.push('…');
    }
    if line.is_empty() {
        "no body".into()
    } else {
        line
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let ms = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// One task of a webhook table.
struct WebhookSink {
    shared: Arc<Shared>,
    keys: IdempotencyKeys,
    task: (usize, usize),
    /// Records waiting to fill a batch.
    pending: Vec<Bytes>,
    in_flight: tokio::task::JoinSet<Result<Vec<Refusal>>>,
    bad: Option<BadRecords>,
}

impl WebhookSink {
    /// Sends the pending records as one request, once fewer than `max_in_flight`
    /// requests are under way (waiting for them is the back-pressure).
    async fn dispatch(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.shared.settings.max_in_flight {
            let done = self.in_flight.join_next().await.expect("not empty");
            self.settle(done)?;
        }
        let records = std::mem::take(&mut self.pending);
        let first = self.keys.next;
        self.keys.next += records.len() as u64;
        let req = Request::new(&self.keys, first, records, self.shared.settings.batch);
        let (shared, keys) = (self.shared.clone(), self.keys.clone());
        self.in_flight
            .spawn(async move { shared.deliver(&keys, req).await });
        Ok(())
    }

    /// Reports a finished request's refusals, or fails with its error.
    fn settle(
        &mut self,
        done: std::result::Result<Result<Vec<Refusal>>, tokio::task::JoinError>,
    ) -> Result<()> {
        let refused = done.map_err(|e| ConnectorError::Other {
            connector: "webhook",
            message: format!(
                "table {}: a request task failed: {e}",
                self.shared.settings.table
            ),
        })??;
        for r in refused {
            tracing::warn!(table = %self.shared.settings.table, reason = %r.reason, "webhook refused a record");
            if let Some(bad) = &mut self.bad {
                bad.report_with(crate::dlq::Report {
                    reason: BadRecordReason::Sink,
                    detail: &r.reason,
                    payload: &r.record,
                    format: crate::dlq::PayloadFormat::Row,
                    event_time: None,
                });
            }
        }
        Ok(())
    }

    /// Settles the requests that have finished, without waiting.
    fn settle_finished(&mut self) -> Result<()> {
        while let Some(done) = self.in_flight.try_join_next() {
            self.settle(done)?;
        }
        Ok(())
    }

    /// Sends what is pending and waits for every request.
    async fn drain(&mut self) -> Result<()> {
        self.dispatch().await?;
        while let Some(done) = self.in_flight.join_next().await {
            self.settle(done)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn report_refusals_to(&mut self, bad: BadRecords) {
        self.bad = Some(bad);
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let mut lines = Vec::new();
        crate::formats::json::encode_json_lines(&batch, &mut lines)?;
        let lines = Bytes::from(lines);
        let mut start = 0;
        // JSON lines escape newlines inside strings: every `\n` ends a row.
        for end in memchr_all(&lines) {
            self.pending.push(lines.slice(start..end));
            start = end + 1;
            if self.pending.len() >= self.shared.settings.batch {
                self.dispatch().await?;
            }
        }
        self.settle_finished()
    }

    async fn flush(&mut self) -> Result<()> {
        self.dispatch().await?;
        self.settle_finished()
    }

    async fn pre_commit(&mut self, _id: u64) -> Result<Option<Vec<u8>>> {
        self.drain().await?;
        Ok(Some(self.keys.held()))
    }

    async fn restore(&mut self, states: &[(usize, Vec<u8>)]) -> Result<()> {
        self.keys.restore(states)?;
        tracing::info!(
            table = %self.shared.settings.table,
            task = self.task.0,
            generation = self.keys.generation,
            position = self.keys.next,
            "webhook sink resumes its idempotency keys"
        );
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.drain().await
    }
}

/// The positions of `\n` in `bytes`.
fn memchr_all(bytes: &[u8]) -> Vec<usize> {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
