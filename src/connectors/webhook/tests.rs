//! Tests of the webhook sink against a real HTTP server on loopback ([`Receiver`]),
//! which checks every signature and answers as each test tells it; the signature
//! against vectors computed independently (Python's `hmac`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::connectors::ConnectorEnv;

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    Status(u16, &'static str),
    /// Drop the connection without an answer.
    Close,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub key: String,
    pub body: Bytes,
    pub status: u16,
}

type Rule = dyn Fn(usize, &Received) -> Reply + Send + Sync;

/// An HTTP server on 127.0.0.1 that verifies `X-Tributary-Signature` (401 when wrong,
/// counted in `bad_signatures`) and otherwise answers what `rule` says for the n-th
/// request.
pub(crate) struct Receiver {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Received>>>,
    pub bad_signatures: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    pub(crate) async fn start(secret: Option<&'static [u8]>, rule: Arc<Rule>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let bad: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (log2, bad2) = (log.clone(), bad.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (log, bad, rule) = (log2.clone(), bad2.clone(), rule.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (log, bad, rule) = (log.clone(), bad.clone(), rule.clone());
                            async move {
                                let header = |n: &str| {
                                    req.headers()
                                        .get(n)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_string()
                                };
                                let (key, ts, sig) = (
                                    header("idempotency-key"),
                                    header("x-tributary-timestamp"),
                                    header("x-tributary-signature"),
                                );
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let signed = secret.is_none_or(|k: &[u8]| {
                                    ts.parse::<u64>()
                                        .is_ok_and(|t| signature(k, t, &body) == sig)
                                });
                                let mut received = Received {
                                    key,
                                    body,
                                    status: 0,
                                };
                                let reply = if signed {
                                    let n = log.lock().unwrap().len();
                                    rule(n, &received)
                                } else {
                                    bad.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                    Reply::Status(401, "bad signature")
                                };
                                received.status = match &reply {
                                    Reply::Status(s, _) => *s,
                                    Reply::Close => 0,
                                };
                                log.lock().unwrap().push(received);
                                match reply {
                                    Reply::Status(status, text) => {
                                        let mut r = Response::new(Full::new(Bytes::from_static(
                                            text.as_bytes(),
                                        )));
                                        *r.status_mut() =
                                            hyper::StatusCode::from_u16(status).unwrap();
                                        if status == 429 {
                                            r.headers_mut()
                                                .insert("retry-after", "0".parse().unwrap());
                                        }
                                        Ok::<_, std::io::Error>(r)
                                    }
                                    Reply::Close => Err(std::io::Error::other("closing")),
                                }
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            log,
            bad_signatures: bad,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hooks/offers", self.addr)
    }

    /// Bodies of the requests answered 2xx, one per idempotency key.
    pub(crate) fn delivered(&self) -> BTreeMap<String, Bytes> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| (r.key.clone(), r.body.clone()))
            .collect()
    }
}

fn factory(options: &[(&str, &str)]) -> Result<Arc<dyn SinkFactory>> {
    let values = options
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let req = TableRequest {
        table: "offers",
        env: &ConnectorEnv::default(),
        schema: None,
        base_dir: std::path::Path::new("."),
    };
    crate::connectors::sink(&req, Options::new("offers", "webhook", values))
}

/// The error `options` get.
fn refused(options: &[(&str, &str)]) -> crate::Error {
    match factory(options) {
        Ok(_) => panic!("{options:?} accepted"),
        Err(e) => e,
    }
}

fn task() -> TaskInfo {
    TaskInfo {
        pipeline: "unit".into(),
        node: "offers".into(),
        partition: 0,
        parallelism: 1,
        state: crate::state::memory_backend(),
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("kind", DataType::Utf8, false),
    ]))
}

/// Rows `from..to`; every fifth is of kind `bad`.
fn rows(from: i64, to: i64) -> RecordBatch {
    let ids: Vec<i64> = (from..to).collect();
    let kinds: Vec<&str> = ids
        .iter()
        .map(|i| if i % 5 == 0 { "bad" } else { "offer" })
        .collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(kinds)),
        ],
    )
    .unwrap()
}

fn id_of(record: &[u8]) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(record).unwrap();
    v["id"].as_i64().unwrap()
}

#[test]
fn signatures_match_independently_computed_vectors() {
    // RFC 4231, test case 1.
    assert_eq!(
        hmac_sha256_hex(&[0x0b; 20], &[b"Hi There"]),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
    // python3 -c 'import hmac,hashlib;print(hmac.new(b"whsec_test",
    //   b"1700000000." + b"{\"id\":1,\"kind\":\"offer\"}", hashlib.sha256).hexdigest())'
    assert_eq!(
        signature(b"whsec_test", 1_700_000_000, br#"{"id":1,"kind":"offer"}"#),
        "sha256=dec84a0c39e0dadf5caa15789292631f4133c3a35dc7c394e25fcc7a14d5c47c"
    );
}

#[test]
fn options_are_checked_and_the_secret_is_never_shown() {
    let f = factory(&[
        ("url", "https://hooks.example/offers"),
        ("secret", "s3cr3t"),
    ])
    .unwrap();
    let shown = f.describe();
    assert!(shown.contains("https://hooks.example/offers") && shown.contains("signed"));
    assert!(!shown.contains("s3cr3t"), "{shown}");
    let e = refused(&[("url", "http://x"), ("retires", "3")]);
    assert_eq!(e.code(), "CON002");
    assert!(e.to_string().contains("did you mean 'retries'"), "{e}");
    let e = refused(&[("batch", "2")]);
    assert_eq!(e.code(), "CON003");
    for bad in [
        vec![("url", "ftp://x")],
        vec![("url", "http://user:pw@x")],
        vec![("url", "http://x"), ("batch", "0")],
        vec![("url", "http://x"), ("timeout", "soon")],
        vec![("url", "http://x"), ("secret", "a"), ("secret_env", "B")],
        vec![("url", "http://x"), ("headers.idempotency-key", "k")],
        vec![("url", "http://x"), ("headers.x bad", "v")],
    ] {
        let e = refused(&bad);
        assert_eq!(e.code(), "CON004", "{bad:?}: {e}");
        assert!(!e.to_string().contains("pw"), "{e}");
    }
    // secret_env is read when a task starts: `check` needs no secret.
    let f = factory(&[
        ("url", "http://x"),
        ("secret_env", "TRIBUTARY_NO_SUCH_VARIABLE"),
    ])
    .unwrap();
    let e = f
        .create(&task(), schema())
        .err()
        .expect("no secret, no sink");
    assert_eq!(e.code(), "CON004");
    assert!(e.to_string().contains("TRIBUTARY_NO_SUCH_VARIABLE"), "{e}");
    let f = factory(&[
        ("url", "http://x/hook?token=abc"),
        ("headers.authorization", "Bearer t0ken"),
        ("batch", "50"),
        ("max_in_flight", "2"),
        ("retries", "3"),
        ("backoff", "50ms"),
        ("timeout", "2s"),
    ])
    .unwrap();
    let shown = f.describe();
    assert!(
        !shown.contains("t0ken") && !shown.contains("abc"),
        "{shown}"
    );
}

/// Outages (503, 429, connections closed) are retried until answered; 400s are dead
/// letters with their status and answer; every other record is delivered; a restored
/// task gives the records it replays the keys they had.
#[tokio::test]
async fn outages_are_retried_refusals_dead_lettered_and_replays_keep_their_keys() {
    let rule: Arc<Rule> = Arc::new(|n, r: &Received| {
        if r.body.windows(5).any(|w| w == b"\"bad\"") {
            return Reply::Status(400, "kind bad is not an offer");
        }
        match n % 4 {
            0 => Reply::Status(503, "busy"),
            1 => Reply::Close,
            2 => Reply::Status(429, "slow down"),
            _ => Reply::Status(204, ""),
        }
    });
    let receiver = Receiver::start(Some(b"k3y"), rule).await;
    let f = factory(&[
        ("url", &receiver.url()),
        ("secret", "k3y"),
        ("backoff", "1ms"),
        ("retries", "2"),
    ])
    .unwrap();
    let bad = BadRecords::collecting("offers");
    let mut sink = f.create(&task(), schema()).unwrap();
    sink.report_refusals_to(bad.clone());
    sink.write(rows(0, 20)).await.unwrap();
    let held = sink.pre_commit(1).await.unwrap().unwrap();
    sink.write(rows(20, 30)).await.unwrap();
    sink.flush().await.unwrap();
    sink.finish().await.unwrap();
    let letters = bad.take_letters();
    let mut refused: Vec<i64> = letters.iter().map(|l| id_of(&l.payload)).collect();
    refused.sort();
    assert_eq!(refused, vec![0, 5, 10, 15, 20, 25]);
    for l in &letters {
        assert_eq!(l.failure_class, BadRecordReason::Sink);
        assert!(
            l.message.contains("HTTP 400: kind bad is not an offer"),
            "{}",
            l.message
        );
    }
    let first = receiver.delivered();
    let mut ids: Vec<i64> = first.values().map(|b| id_of(b)).collect();
    ids.sort();
    let want: Vec<i64> = (0..30).filter(|i| i % 5 != 0).collect();
    assert_eq!(ids, want);
    assert_eq!(
        receiver
            .bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let tries = receiver.log.lock().unwrap().len();
    assert!(tries > 3 * 24, "{tries} requests for 24 records");

    // A crash after checkpoint 1: the restored task replays rows 20..30.
    let mut again = f.create(&task(), schema()).unwrap();
    again.report_refusals_to(BadRecords::collecting("offers"));
    again.restore(&[(0, held)]).await.unwrap();
    again.write(rows(20, 30)).await.unwrap();
    again.finish().await.unwrap();
    let second = receiver.delivered();
    assert_eq!(
        second, first,
        "the replay's keys and bodies are the first run's"
    );
}

/// `batch > 1`: JSON arrays; a refused batch is resent record by record, so only the
/// refused record is a dead letter.
#[tokio::test]
async fn batches_are_arrays_and_a_refused_batch_is_split() {
    let rule: Arc<Rule> = Arc::new(|_, r: &Received| {
        if r.body.windows(5).any(|w| w == b"\"bad\"") {
            Reply::Status(422, "no")
        } else {
            Reply::Status(200, "ok")
        }
    });
    let receiver = Receiver::start(None, rule).await;
    let f = factory(&[("url", &receiver.url()), ("batch", "4"), ("backoff", "1ms")]).unwrap();
    let bad = BadRecords::collecting("offers");
    let mut sink = f.create(&task(), schema()).unwrap();
    sink.report_refusals_to(bad.clone());
    sink.write(rows(1, 11)).await.unwrap();
    sink.finish().await.unwrap();
    let letters = bad.take_letters();
    let mut refused: Vec<i64> = letters.iter().map(|l| id_of(&l.payload)).collect();
    refused.sort();
    assert_eq!(refused, vec![5, 10]);
    let mut ids = Vec::new();
    for body in receiver.delivered().values() {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        for row in v.as_array().expect("an array") {
            ids.push(row["id"].as_i64().unwrap());
        }
    }
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 4, 6, 7, 8, 9]);
}

/// A 401 refuses the sink itself: the pipeline fails (CON009), nothing is
/// dead-lettered.
#[tokio::test]
async fn unauthorized_fails_the_sink_without_dead_letters() {
    let receiver = Receiver::start(
        Some(b"right"),
        Arc::new(|_, _: &Received| Reply::Status(200, "")),
    )
    .await;
    let f = factory(&[("url", &receiver.url()), ("secret", "wrong")]).unwrap();
    let bad = BadRecords::collecting("offers");
    let mut sink = f.create(&task(), schema()).unwrap();
    sink.report_refusals_to(bad.clone());
    sink.write(rows(1, 3)).await.unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(e.code(), "CON009", "{e}");
    assert!(!e.to_string().contains("wrong"), "{e}");
    assert!(bad.take_letters().is_empty());
}

/// An endpoint that is down: the task says so in the health table (retrying, as
/// `/readyz` shows it), its checkpoint waits, nothing is dead-lettered; once the
/// endpoint answers, the rows are delivered and the task is up.
#[tokio::test]
async fn an_outage_is_reported_and_waited_out_without_losing_rows() {
    static DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    let rule: Arc<Rule> = Arc::new(|_, _: &Received| {
        if DOWN.load(std::sync::atomic::Ordering::SeqCst) {
            Reply::Status(503, "maintenance")
        } else {
            Reply::Status(200, "ok")
        }
    });
    let receiver = Receiver::start(None, rule).await;
    let f = factory(&[
        ("url", &receiver.url()),
        ("backoff", "1ms"),
        ("retries", "3"),
    ])
    .unwrap();
    let outage = TaskInfo {
        pipeline: "webhook-outage".into(),
        ..task()
    };
    let bad = BadRecords::collecting("offers");
    let mut sink = f.create(&outage, schema()).unwrap();
    sink.report_refusals_to(bad.clone());
    sink.write(rows(1, 4)).await.unwrap();
    let state = || {
        crate::health::components()
            .into_iter()
            .find(|c| c.pipeline == "webhook-outage")
            .map(|c| c.state)
    };
    let checkpoint = tokio::spawn(async move {
        let held = sink.pre_commit(1).await;
        (sink, held)
    });
    // Wait (on the condition, with a deadline) until the probe says retrying.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(crate::health::State::Retrying { last_error, .. }) = state() {
            assert!(last_error.contains("HTTP 503: maintenance"), "{last_error}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never retrying");
        tokio::task::yield_now().await;
    }
    assert!(!checkpoint.is_finished(), "the checkpoint passed an outage");
    DOWN.store(false, std::sync::atomic::Ordering::SeqCst);
    let (mut sink, held) = checkpoint.await.unwrap();
    held.unwrap();
    assert_eq!(state(), Some(crate::health::State::Up));
    assert_eq!(receiver.delivered().len(), 3);
    assert!(bad.take_letters().is_empty());
    sink.finish().await.unwrap();
}
