//! The webhook sink end to end: the real binary POSTs to a receiver in this test (a
//! hyper server on 127.0.0.1:0) that verifies every HMAC signature itself (the `hmac`
//! crate, not the sink's code), fails a deterministic subset of first attempts (503,
//! connections closed without an answer), refuses one kind of row for good (400) and
//! accepts the rest. The oracle is the same query written by the file sink.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper_util::rt::TokioIo;

use tributary::connectors::dead_letters::local::LocalStore;
use tributary::connectors::dead_letters::{DeadLetterStore, Filter, Page};

use crate::common::*;

const SECRET: &str = "whsec_e2e_0123456789";

/// One request the receiver got: its idempotency key, body and the status answered
/// (0: the connection was closed without an answer).
#[derive(Clone, Debug)]
struct Hit {
    key: String,
    body: Bytes,
    status: u16,
}

#[derive(Default)]
struct Log {
    hits: Mutex<Vec<Hit>>,
    bad_signatures: AtomicUsize,
    /// Attempts per idempotency key.
    attempts: Mutex<BTreeMap<String, usize>>,
}

impl Log {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn delivered(&self) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| (200..300).contains(&h.status))
            .collect()
    }
}

/// `hex(HMAC-SHA256(SECRET, timestamp + "." + body))`, computed here.
fn expected_signature(timestamp: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the receiver does with a well-signed request: `attempt` is the number of
/// earlier requests with the same key.
type Rule = fn(attempt: usize, row: &serde_json::Value) -> Option<u16>;

/// Starts the receiver: `rule` gives the status, `None` closes the connection.
async fn receiver(rule: Rule, delay: Duration) -> (SocketAddr, Arc<Log>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Log::default());
    let log2 = log.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log2.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            let key = header("idempotency-key");
                            let ts = header("x-tributary-timestamp");
                            let sig = header("x-tributary-signature");
                            let json = header("content-type") == "application/json";
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let signed = json
                                && !key.is_empty()
                                && sig == format!("sha256={}", expected_signature(&ts, &body));
                            let status = if signed {
                                let attempt = {
                                    let mut a = log.attempts.lock().unwrap();
                                    let n = a.entry(key.clone()).or_default();
                                    *n += 1;
                                    *n - 1
                                };
                                let row: serde_json::Value = serde_json::from_slice(&body).unwrap();
                                rule(attempt, &row)
                            } else {
                                log.bad_signatures.fetch_add(1, Ordering::SeqCst);
                                Some(401)
                            };
                            log.hits.lock().unwrap().push(Hit {
                                key,
                                body,
                                status: status.unwrap_or(0),
                            });
                            match status {
                                Some(s) => {
                                    let text = if s == 400 {
                                        "{\"error\":\"verdict refuse is not an offer\"}"
                                    } else {
                                        ""
                                    };
                                    let mut r = Response::new(Full::new(Bytes::from(text)));
                                    *r.status_mut() = hyper::StatusCode::from_u16(s).unwrap();
                                    Ok::<_, std::io::Error>(r)
                                }
                                None => Err(std::io::Error::other("closing the connection")),
                            }
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, log)
}

/// The query, from `orders` into `into`.
fn sql(generator: &str, into: &str) -> String {
    format!(
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '11', {generator});\n\
         {into}\n\
         INSERT INTO hooks SELECT event_id, event_type, order_id, event_time, channel, \
         CASE WHEN order_id % 10 = 3 THEN 'refuse' ELSE 'ok' END AS verdict FROM orders;\n"
    )
}

/// The rows the file sink writes for the same query: the oracle.
fn oracle(generator: &str) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("o.sql"),
        &sql(
            generator,
            "CREATE TABLE hooks WITH (connector = 'file', path = 'expected.jsonl');",
        ),
    );
    ok(&run(d, &["run", "o.sql"]));
    json_lines(&d.join("expected.jsonl"))
}

fn webhook_table(addr: SocketAddr) -> String {
    format!(
        "CREATE TABLE hooks WITH (connector = 'webhook', url = 'http://{addr}/hooks/offers', \
         secret = '{SECRET}', backoff = '5ms', retries = '2', timeout = '5s', \
         max_in_flight = '4', \"headers.x-team\" = 'marketing');"
    )
}

fn pipeline(d: &Path, generator: &str, addr: SocketAddr) {
    write(&d.join("p.sql"), &sql(generator, &webhook_table(addr)));
    write(
        &d.join("p.yaml"),
        "name: offers\nsql: p.sql\ncheckpoint: { interval: 200ms, dir: checkpoints }\n",
    );
}

fn start(d: &Path) -> Running {
    Running::start(d, &["p.yaml"])
}

fn canonical_rows(rows: impl IntoIterator<Item = serde_json::Value>) -> Vec<String> {
    let mut v: Vec<String> = rows.into_iter().map(|r| r.to_string()).collect();
    v.sort();
    v
}

/// Every key delivered maps to one body; the bodies, one per key, as rows.
fn deduplicated(log: &Log) -> Vec<serde_json::Value> {
    let mut by_key: BTreeMap<String, BTreeSet<Bytes>> = BTreeMap::new();
    for h in log.delivered() {
        by_key.entry(h.key).or_default().insert(h.body);
    }
    by_key
        .into_iter()
        .map(|(key, bodies)| {
            assert_eq!(bodies.len(), 1, "key {key} carried different bodies");
            serde_json::from_slice(bodies.iter().next().unwrap()).unwrap()
        })
        .collect()
}

/// A deterministic subset of first attempts fails (503, or the connection closed);
/// rows with `verdict = 'refuse'` are refused (400).
fn flaky(attempt: usize, row: &serde_json::Value) -> Option<u16> {
    if row["verdict"] == "refuse" {
        return Some(400);
    }
    let id = row["order_id"].as_i64().unwrap_or(0);
    match (attempt, id % 5) {
        (0, 0) => Some(503),
        (0, 1) => None,
        (1, 0) if id % 2 == 0 => Some(503),
        _ => Some(200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_delivered_signed_and_refusals_are_dead_letters() {
    let generator = "count = '600', rate = '0'";
    let expected = oracle(generator);
    let (addr, log) = receiver(flaky, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pipeline(d, generator, addr);
    let (code, stderr) = tokio::task::spawn_blocking({
        let d = d.to_path_buf();
        move || start(&d).wait(Duration::from_secs(120))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(SECRET), "the secret is logged");

    assert_eq!(log.bad_signatures.load(Ordering::SeqCst), 0);
    let hits = log.hits();
    let failed: usize = hits.iter().filter(|h| h.status == 503).count();
    let closed: usize = hits.iter().filter(|h| h.status == 0).count();
    let refused: usize = hits.iter().filter(|h| h.status == 400).count();
    let (good, bad): (Vec<_>, Vec<_>) =
        expected.iter().cloned().partition(|r| r["verdict"] == "ok");
    assert!(
        !bad.is_empty() && failed > 0 && closed > 0,
        "{failed} {closed}"
    );
    // Delivered: each good row once per key, nothing else.
    let delivered = deduplicated(&log);
    assert_eq!(
        canonical_rows(delivered.clone()),
        canonical_rows(good.clone())
    );
    let duplicates = log.delivered().len() - delivered.len();
    eprintln!(
        "webhook e2e: {} rows, {} delivered, {} requests: {failed} answered 503, {closed} \
         closed, {refused} refused (400), {duplicates} duplicate deliveries",
        expected.len(),
        delivered.len(),
        hits.len()
    );

    // Refused: dead letters of class sink, with the status and answer, the rows
    // as they were sent.
    let o = run(d, &["dlq", "list", "--format", "json"]);
    ok(&o);
    let listed: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), bad.len(), "{listed:?}");
    for l in &listed {
        assert_eq!(l["failure_class"], "sink");
        let m = l["message"].as_str().unwrap();
        assert!(
            m.contains("HTTP 400") && m.contains("verdict refuse is not an offer"),
            "{m}"
        );
    }
    let store = LocalStore::open(d.join("data/dlq.sqlite")).unwrap();
    let letters = store
        .list(
            &Filter::default(),
            Page {
                offset: 0,
                limit: 1_000_000,
                after: None,
            },
        )
        .await
        .unwrap();
    let payloads = letters
        .iter()
        .map(|l| serde_json::from_slice::<serde_json::Value>(&l.payload).unwrap());
    assert_eq!(canonical_rows(payloads), canonical_rows(bad.clone()));
}

/// Slow, sometimes failing receiver; the process is aborted (as abruptly as `kill -9`,
/// `TRIBUTARY_FAULT_INJECT`) while the generator still produces, once its sink has
/// pre-committed a checkpoint that is not committed yet, and restarted from the
/// checkpoint before. The rows between the two checkpoints were delivered, so they are
/// delivered again, on purpose rather than by the timing of a kill. Every row arrives
/// at least once, and every repeat carries the key of its first delivery:
/// deduplicated by key, the deliveries are exactly the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_mid_stream_after_a_pre_commit_repeats_records_only_under_their_first_keys() {
    fn slow(attempt: usize, row: &serde_json::Value) -> Option<u16> {
        let id = row["order_id"].as_i64().unwrap_or(0);
        match (attempt, id % 4) {
            (0, 0) => Some(503),
            _ => Some(200),
        }
    }
    // No refusals in this one: every row goes through.
    let generator = "count = '2400', rate = '400', start_time = '2026-03-01T00:00:00Z'";
    let sql_ok = |s: String| s.replace("order_id % 10 = 3", "order_id < 0");
    let expected = {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            &d.join("o.sql"),
            &sql_ok(sql(
                generator,
                "CREATE TABLE hooks WITH (connector = 'file', path = 'expected.jsonl');",
            )),
        );
        ok(&run(d, &["run", "o.sql"]));
        json_lines(&d.join("expected.jsonl"))
    };
    let (addr, log) = receiver(slow, Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    pipeline(&d, generator, addr);
    write(
        &d.join("p.sql"),
        &sql_ok(sql(generator, &webhook_table(addr))),
    );

    let total = expected.len();
    // Checkpoint 10 of ~30 (200 ms apart over 6 s of input): mid-run, input arriving.
    let fault = "pre-commit@10";
    let first = tokio::task::spawn_blocking({
        let d = d.clone();
        move || {
            tributary(&d)
                .env("TRIBUTARY_FAULT_INJECT", fault)
                .args(["run", "--set", "admin.listen=127.0.0.1:0", "p.yaml"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let err = stderr(&first);
    assert_eq!(first.status.code(), None, "aborted, not finished:\n{err}");
    assert!(
        err.contains("\"message\":\"fault injected\",\"phase\":\"pre-commit\""),
        "the abort came from {fault}:\n{err}"
    );
    let before = log.delivered().len();
    assert!(before < total, "the input ended before the abort");
    let (code, stderr) = tokio::task::spawn_blocking({
        let d = d.clone();
        move || start(&d).wait(Duration::from_secs(120))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("resuming from checkpoint"), "{stderr}");

    assert_eq!(log.bad_signatures.load(Ordering::SeqCst), 0);
    let delivered = deduplicated(&log);
    assert_eq!(
        canonical_rows(delivered.clone()),
        canonical_rows(expected.clone()),
        "deduplicated by key, the deliveries are the rows"
    );
    let all = log.delivered().len();
    let duplicates = all - delivered.len();
    let retried = log.hits().iter().filter(|h| h.status == 503).count();
    eprintln!(
        "webhook crash e2e: {total} rows, {before} deliveries before the abort, {all} in all, \
         {duplicates} repeated under their first key, {retried} answered 503"
    );
    assert!(
        duplicates > 0,
        "the restart replayed nothing, though the rows between checkpoints 9 and 10 were delivered"
    );
}
