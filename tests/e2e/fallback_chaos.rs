//! The broker-outage fallback under chaos (issue 18, ADR 0016), against real Apache
//! Kafka (a private one-broker cluster per test: `scripts/kafka start --dir`, killed
//! with `kill -9` and restarted on its port) and the fallback stores (local SQLite;
//! DynamoDB on the test server, `TRIBUTARY_TEST_DYNAMODB`).
//!
//! A generator of order events (one task, paced, so input is still arriving during the
//! outage and during the drain; `tributary generate` with the same seed, count and rate
//! is the oracle) feeds an exactly-once Kafka sink keyed by restaurant (200 keys),
//! checkpointing every 200 ms. The broker is killed: the breaker opens, the output of
//! every checkpoint goes to the fallback store and checkpoints go on. The broker comes
//! back: the backlog drains at `drain_rate` (a bit above the input rate) beside live
//! output; in the middle of the drain the pipeline is killed with `kill -9` and
//! started again from its checkpoint; it runs to the end of its input. A
//! `read_committed` consumer then reads the topic: every generated event exactly once,
//! and per key in the generator's order. Each test prints its figures:
//! `produced via_fallback drained duplicates order_violations missing wrong` (the
//! second and third from the processes' `GET /fallback` counters, summed over runs; a
//! record appended again after a failed attempt counts again in `via_fallback`).
//!
//! Then the fallback store (DynamoDB, reached through a TCP proxy the test switches
//! off and on) goes down with the broker: the sink holds its output (back-pressure;
//! the process lives, the backlog does not grow, the readiness probe says not ready,
//! the log says why). The store comes back, then the broker: the output is stored,
//! then drained. Or, with a backlog already waiting, the broker comes back first: its
//! probe cannot store what must wait behind the backlog, and the breaker must still
//! probe again, so that nothing is stranded in the store once it is back.
//!
//! Every step waits for something it can observe (records in the topic, the backlog,
//! checkpoints, log lines), with a deadline. A failing test keeps its directory (the
//! pipeline's logs are `run-N.log` there) and names it.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tributary::dynamodb::DynamoSettings;
use tributary::fallback::FallbackStore;
use tributary::fallback::dynamodb::DynamoFallbackStore;

use crate::common::*;

/// The pipeline's name (each test has its own cluster and store).
pub(crate) const NAME: &str = "chaos";
const SEED: &str = "23";
/// Events, and the generator's `rate`: about 43 s of input (the order events come at
/// about 100 a second at first, 230 once orders are under way).
const COUNT: usize = 8000;
const RATE: u64 = 500;
/// Records per second the sink drains beside live output: a bit above the input rate,
/// so a backlog of a few thousand records takes several seconds to drain.
const DRAIN_RATE: u64 = 350;
/// The backlog the outage must build before the broker comes back.
const OUTAGE_BACKLOG: u64 = 500;

// ------------------------------------------------------------------------------------
// Harness: a private Kafka cluster, the pipeline process, a switchable TCP proxy
// ------------------------------------------------------------------------------------

/// A one-broker cluster of this test's own (`scripts/kafka … --dir`), stopped on drop.
/// Its KRaft controller is a process of its own, which the broker's kills leave
/// running, as in production.
pub(crate) struct Cluster {
    dir: PathBuf,
    pub(crate) servers: String,
    /// One private cluster at a time: two starting together can pick the same free
    /// ports (the script looks for a free block, then binds it).
    _serial: std::sync::MutexGuard<'static, ()>,
}

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka")
}

impl Cluster {
    pub(crate) fn start(dir: &Path) -> Cluster {
        let serial = ONE_CLUSTER_AT_A_TIME
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut tries = 0;
        loop {
            tries += 1;
            let o = Command::new("bash")
                .arg(kafka_script())
                .args(["start", "--dir"])
                .arg(dir)
                .stdin(Stdio::null())
                .output()
                .expect("bash runs");
            if o.status.success() {
                let servers = stdout(&o).lines().last().unwrap_or_default().to_string();
                assert!(servers.starts_with("127.0.0.1:"), "{}", stdout(&o));
                return Cluster {
                    dir: dir.to_path_buf(),
                    servers,
                    _serial: serial,
                };
            }
            // The script fails a start now and then on a slow machine (the broker is
            // judged gone during startup): one more try before giving up.
            assert!(tries < 2, "scripts/kafka start failed:\n{}", stderr(&o));
            eprintln!("scripts/kafka start failed, once more:\n{}", stderr(&o));
        }
    }

    fn script(&self, args: &[&str]) {
        let o = Command::new("bash")
            .arg(kafka_script())
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("bash runs");
        assert!(
            o.status.success(),
            "scripts/kafka {args:?} failed:\n{}",
            stderr(&o)
        );
    }

    /// `kill -9` of the broker; returns once its ports are closed.
    pub(crate) fn kill(&self) {
        self.script(&["kill", "1"]);
    }

    /// The broker again, on the same port, under a new registration (the script
    /// removes the killed one's first); returns once it is registered.
    pub(crate) fn restart(&self) {
        self.script(&["restart", "1"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(kafka_script())
            .args(["stop", "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
    }
}

/// The test's directory, kept (and named) when the test fails, for its logs.
pub(crate) struct Workdir(Option<tempfile::TempDir>);

impl Workdir {
    pub(crate) fn new() -> Workdir {
        Workdir(Some(tempfile::tempdir().unwrap()))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.as_ref().expect("until dropped").path()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!(
                "fallback_chaos: kept {} (run-N.log: the pipeline's logs)",
                dir.keep().display()
            );
        }
    }
}

/// What `GET /fallback` says of the pipeline.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Status {
    /// Records this process stored in the fallback, and drained from it.
    pub(crate) stored: u64,
    pub(crate) drained: u64,
    /// Records waiting in the store (`None`: the store could not be read).
    pub(crate) backlog: Option<u64>,
}

/// One `tributary run p.yaml` in `d`, its stderr (JSON log lines) in `d/run-N.log`.
pub(crate) struct Run {
    pub(crate) child: Child,
    log: PathBuf,
    pub(crate) admin: String,
    /// The last `GET /fallback` answered.
    last: Status,
}

impl Run {
    pub(crate) fn start(d: &Path, n: usize) -> Run {
        Run::start_with(d, n, &[])
    }

    /// [`Run::start`] with extra environment (a fault to inject).
    fn start_with(d: &Path, n: usize, env: &[(&str, &str)]) -> Run {
        let log = d.join(format!("run-{n}.log"));
        let err = std::fs::File::create(&log).unwrap();
        let mut child = tributary(d)
            .args(["run", "--set", "admin.listen=127.0.0.1:0", "p.yaml"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("binary starts");
        let deadline = Instant::now() + Duration::from_secs(60);
        let admin = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(v) = log_event(&text, "admin endpoint: /metrics and /healthz") {
                break v["addr"].as_str().expect("addr").to_string();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("run {n} exited ({status}) before serving:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "run {n}: no admin endpoint:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            child,
            log,
            admin,
            last: Status::default(),
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn logged(&self, message: &str) -> bool {
        log_event(&self.log_text(), message).is_some()
    }

    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// `GET /fallback`, for this pipeline (`None` if the process does not answer).
    pub(crate) fn status(&mut self) -> Option<Status> {
        let (code, body) = http_get(&self.admin, "/fallback")?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let drain = v["pipelines"]
            .as_array()?
            .iter()
            .find(|p| p["pipeline"] == NAME);
        let status = Status {
            stored: drain.and_then(|p| p["stored"].as_u64()).unwrap_or(0),
            drained: drain.and_then(|p| p["drained"].as_u64()).unwrap_or(0),
            backlog: v["backlog"].as_array().map(|rows| {
                rows.iter()
                    .filter(|r| r["pipeline"] == NAME)
                    .filter_map(|r| r["records"].as_u64())
                    .sum()
            }),
        };
        self.last = status;
        Some(status)
    }

    /// `kill -9`.
    pub(crate) fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to end by itself, polling `GET /fallback` meanwhile (the
    /// last answer stays in `last`); its exit code.
    fn finish(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the run did not end within {timeout:?}:\n{}",
                tail(&self.log_text())
            );
            self.status();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of a log, for failure messages: without librdkafka's own lines,
/// which an unreachable broker makes many of, and the periodic progress lines, so that
/// the few lines a CI report keeps of a failure are the last things that happened.
pub(crate) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("librdkafka") && !l.contains(r#""message":"progress""#))
        .collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `GET path` on the admin endpoint: (status code, body); `None` when nothing answers.
pub(crate) fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// A TCP proxy to `upstream` that the test switches off (new connections are closed
/// at once, open ones are cut) and on again.
struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    closed: Arc<AtomicBool>,
}

#[derive(Default)]
struct ProxyState {
    on: bool,
    /// Both ends of every connection made while on, to cut them when switched off.
    open: Vec<TcpStream>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProxyState {
            on: true,
            open: Vec::new(),
        }));
        let closed = Arc::new(AtomicBool::new(false));
        let (st, cl) = (state.clone(), closed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if cl.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let mut state = st.lock().unwrap();
                let server = if state.on {
                    TcpStream::connect(&upstream).ok()
                } else {
                    None
                };
                let Some(server) = server else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                state.open.push(client.try_clone().unwrap());
                state.open.push(server.try_clone().unwrap());
                state.open.retain(|s| s.peer_addr().is_ok());
                drop(state);
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        Proxy {
            addr,
            state,
            closed,
        }
    }

    fn set(&self, on: bool) {
        let mut state = self.state.lock().unwrap();
        state.on = on;
        if !on {
            for s in state.open.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies `from` into `to` until either ends.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        self.set(false);
        let _ = TcpStream::connect(self.addr);
    }
}

// ------------------------------------------------------------------------------------
// The pipeline, its configuration and the oracle
// ------------------------------------------------------------------------------------

/// Where the fallback keeps its records in a test.
enum Store {
    Local,
    /// DynamoDB at `endpoint` (the test server, or the proxy in front of it).
    Dynamo {
        endpoint: String,
        table_prefix: String,
        outage_timeout: &'static str,
    },
}

/// The DynamoDB test server's endpoint (`http://host:port`).
fn dynamodb_endpoint() -> String {
    std::env::var("TRIBUTARY_TEST_DYNAMODB").unwrap_or_else(|_| {
        panic!(
            "TRIBUTARY_TEST_DYNAMODB is not set: start the test server with \
             export TRIBUTARY_TEST_DYNAMODB=\"$(scripts/dynamodb start | tail -n 1)\" \
             and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY set to anything (scripts/test does both)"
        )
    })
}

/// A table prefix of this test's own on the shared test server.
fn table_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}_{}_{nanos}_", std::process::id())
}

/// Writes `tributary.toml`, `p.sql` and `p.yaml` in `d`; returns the output topic.
fn pipeline(d: &Path, servers: &str, store: &Store) -> String {
    let topic = crate::kafka::fresh_topic("chaos.orders");
    let store_section = match store {
        Store::Local => "store = \"local\"\npath = \"fallback.sqlite\"\n".to_string(),
        Store::Dynamo {
            endpoint,
            table_prefix,
            outage_timeout,
        } => format!(
            "store = \"dynamodb\"\n\n[dynamodb]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n\
             table_prefix = \"{table_prefix}\"\noutage_timeout = \"{outage_timeout}\"\n"
        ),
    };
    write(
        &d.join("tributary.toml"),
        &format!(
            "[fallback]\nfailures = 1\nopen_after = \"1s\"\nprobe_interval = \"1s\"\n\
             attempt_timeout = \"2s\"\ndrain_rate = {DRAIN_RATE}\n{store_section}"
        ),
    );
    write(
        &d.join("p.sql"),
        &format!(
            // One generator task: `tributary generate` makes the same events in the
            // same order (the oracle).
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '{SEED}', \
               count = '{COUNT}', rate = '{RATE}', parallelism = '1');\n\
             CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
               topic = '{topic}', partitions = '3', key_field = 'restaurant_id');\n\
             INSERT INTO out SELECT event_id, event_type, order_id, restaurant_id FROM orders;\n"
        ),
    );
    write(
        &d.join("p.yaml"),
        &format!("name: {NAME}\nsql: p.sql\ncheckpoint: {{ interval: 200ms, dir: checkpoints }}\n"),
    );
    topic
}

/// One generated event as the sink writes it.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: String,
    key: String,
    value: serde_json::Value,
}

/// The oracle: the generator's events in order (`tributary generate`, same seed, count
/// and rate, one task).
fn oracle(d: &Path) -> Vec<Event> {
    generate(
        d,
        "orders",
        SEED,
        &COUNT.to_string(),
        &[&format!("rate={RATE}")],
        "oracle.jsonl",
    );
    let events: Vec<Event> = json_lines(&d.join("oracle.jsonl"))
        .into_iter()
        .map(|v| Event {
            id: v["event_id"].as_str().unwrap().to_string(),
            key: v["restaurant_id"].as_i64().unwrap().to_string(),
            value: serde_json::json!({
                "event_id": v["event_id"], "event_type": v["event_type"],
                "order_id": v["order_id"], "restaurant_id": v["restaurant_id"],
            }),
        })
        .collect();
    assert_eq!(events.len(), COUNT);
    let keys: std::collections::HashSet<&str> = events.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.len() >= 50, "only {} keys", keys.len());
    events
}

/// Whether a `read_committed` consumer finds any record in `topic` now.
pub(crate) fn any_committed(servers: &str, topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", crate::kafka::fresh_topic("chaos.probe"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return false;
    };
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    if tpl.count() == 0 || consumer.assign(&tpl).is_err() {
        return false;
    }
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
            return true;
        }
    }
    false
}

/// What waits in the store for the pipeline, read by `tributary fallback status` (the
/// store itself, not the process).
fn backlog_by_cli(d: &Path, extra: &[&str]) -> u64 {
    let mut args = vec!["fallback", "status", "--format", "json"];
    args.extend(extra);
    let o = run(d, &args);
    ok(&o);
    stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["pipeline"] == NAME)
        .filter_map(|v| v["records"].as_u64())
        .sum()
}

/// The figures of one test.
#[derive(Debug, Default)]
struct Figures {
    produced: usize,
    via_fallback: u64,
    drained: u64,
    duplicates: usize,
    order_violations: usize,
    missing: usize,
    /// Records that are no generated event, or not as generated (key, fields).
    wrong: usize,
    /// The first few problems, named.
    problems: Vec<String>,
}

/// Reads the whole topic (`read_committed`, to its end offsets) and compares it with
/// the oracle: each event once, per key in the oracle's order.
fn check_topic(servers: &str, topic: &str, expected: &[Event]) -> Figures {
    let records = crate::kafka::read_records(servers, topic, "read_committed");
    let position: HashMap<&str, usize> = expected
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    let mut f = Figures {
        produced: records.len(),
        ..Figures::default()
    };
    let mut seen: HashMap<usize, usize> = HashMap::new();
    // Per key: the position of the last event read (first copies only).
    let mut last: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let note = |f: &mut Figures, p: String| {
        if f.problems.len() < 20 {
            f.problems.push(p);
        }
    };
    for (key, value) in &records {
        let key = key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let Some(value) = value else {
            f.wrong += 1;
            note(&mut f, format!("a tombstone under key {key}"));
            continue;
        };
        let id = value["event_id"].as_str().unwrap_or_default();
        let Some(&pos) = position.get(id) else {
            f.wrong += 1;
            note(&mut f, format!("not generated: key {key} {value}"));
            continue;
        };
        let e = &expected[pos];
        if e.key != key || &e.value != value {
            f.wrong += 1;
            note(
                &mut f,
                format!(
                    "event {id}: read key {key} {value}, generated key {} {}",
                    e.key, e.value
                ),
            );
        }
        let copies = seen.entry(pos).or_default();
        *copies += 1;
        if *copies > 1 {
            f.duplicates += 1;
            note(
                &mut f,
                format!("event {id} (key {key}, #{pos}) read {copies} times"),
            );
            continue;
        }
        match last.get(&key) {
            Some((before, before_id)) if *before > pos => {
                f.order_violations += 1;
                let p = format!(
                    "key {key}: event {id} (#{pos}) read after event {before_id} (#{before})"
                );
                note(&mut f, p);
            }
            _ => {
                last.insert(key, (pos, id.to_string()));
            }
        }
    }
    let missing: Vec<&Event> = expected
        .iter()
        .enumerate()
        .filter(|(i, _)| !seen.contains_key(i))
        .map(|(_, e)| e)
        .collect();
    f.missing = missing.len();
    if let Some(first) = missing.first() {
        let positions: Vec<usize> = missing.iter().map(|e| position[e.id.as_str()]).collect();
        note(
            &mut f,
            format!(
                "{} events missing, e.g. {} (key {}); positions {:?}…",
                missing.len(),
                first.id,
                first.key,
                &positions[..positions.len().min(20)]
            ),
        );
    }
    f
}

/// Prints the figures and asserts what the issue asks.
fn report(label: &str, f: &Figures, elapsed: Duration) {
    println!(
        "fallback_chaos[{label}]: produced={} via_fallback={} drained={} duplicates={} \
         order_violations={} missing={} wrong={} ({:.1} s)",
        f.produced,
        f.via_fallback,
        f.drained,
        f.duplicates,
        f.order_violations,
        f.missing,
        f.wrong,
        elapsed.as_secs_f64()
    );
    for p in &f.problems {
        println!("fallback_chaos[{label}]:   {p}");
    }
    assert_eq!(
        (f.duplicates, f.order_violations, f.missing, f.wrong),
        (0, 0, 0, 0),
        "{label}: duplicates, order violations, missing and wrong records: {:#?}",
        f.problems
    );
    assert!(
        f.via_fallback > 0 && f.drained > 0,
        "{label}: records went through the fallback ({}) and were drained ({})",
        f.via_fallback,
        f.drained
    );
}

/// Polls `cond` every 20 ms until it holds; panics after `timeout` with `what` and the
/// run's log.
pub(crate) fn wait_until(
    run: &mut Run,
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut(&mut Run) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !cond(run) {
        if !run.running() {
            panic!(
                "the pipeline exited while waiting for {what}:\n{}",
                tail(&run.log_text())
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out ({timeout:?}) waiting for {what}; last status {:?}:\n{}",
            run.last,
            tail(&run.log_text())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------
// The tests
// ------------------------------------------------------------------------------------

/// How the pipeline dies in the middle of the drain.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MidDrain {
    /// `kill -9` once the drain has sent some records and others still wait.
    Kill,
    /// Aborted by the fault point right after a drain's transaction committed and
    /// before its records are deleted from the store (the window where a resend would
    /// double them).
    Fault,
}

/// The issue's scenario: the broker killed for a while and restarted, the pipeline
/// killed in the middle of the drain and restarted; everything once, in order per key.
fn broker_outage_then_a_kill_mid_drain(label: &str, store: Store, how: MidDrain) {
    let started = Instant::now();
    let work = Workdir::new();
    let d = work.path();
    let cluster = Cluster::start(&d.join("kafka"));
    let topic = pipeline(d, &cluster.servers, &store);
    let expected = oracle(d);
    let checkpoints = d.join("checkpoints");

    let fault: &[(&str, &str)] = match how {
        MidDrain::Kill => &[],
        MidDrain::Fault => &[("TRIBUTARY_FAULT_INJECT", "fallback-drain-committed")],
    };
    let mut first = Run::start_with(d, 1, fault);
    wait_until(
        &mut first,
        "records committed to kafka",
        Duration::from_secs(60),
        |_| any_committed(&cluster.servers, &topic),
    );

    // The outage: the breaker opens, checkpoints go on, the backlog grows.
    cluster.kill();
    let killed_at = Instant::now();
    wait_until(
        &mut first,
        "a backlog in the fallback store",
        Duration::from_secs(60),
        |r| r.status().and_then(|s| s.backlog).is_some_and(|b| b > 0),
    );
    let (backlog0, checkpoint0) = (first.last.backlog.unwrap(), committed(&checkpoints));
    wait_until(
        &mut first,
        "the backlog to grow while checkpoints go on",
        Duration::from_secs(60),
        |r| {
            r.status()
                .and_then(|s| s.backlog)
                .is_some_and(|b| b > backlog0 && b >= OUTAGE_BACKLOG)
                && committed(&checkpoints) >= checkpoint0 + 3
        },
    );
    println!(
        "fallback_chaos[{label}]: broker down {:.1} s: backlog {} → {}, checkpoints {} → {}",
        killed_at.elapsed().as_secs_f64(),
        backlog0,
        first.last.backlog.unwrap(),
        checkpoint0,
        committed(&checkpoints)
    );

    // The broker back: the drain starts; the pipeline is killed in its middle. The
    // drain is watched from the broker's launch on, while `restart` still waits for
    // the cluster to report the broker registered (a tool polled every second): a
    // backlog of a few hundred records drains in about as long, so watching only
    // after `restart` returned could miss the whole drain (a CI run did).
    let mut peak = first.last.backlog.unwrap_or(0);
    std::thread::scope(|scope| {
        let restarting = scope.spawn(|| cluster.restart());
        if how == MidDrain::Fault {
            let code = first.finish(Duration::from_secs(60));
            let log = first.log_text();
            assert!(
                code.is_none() && log.contains("\"phase\":\"fallback-drain-committed\""),
                "the run aborts at the fault point ({code:?}):\n{}",
                tail(&log)
            );
        }
        if how == MidDrain::Kill {
            wait_until(
                &mut first,
                "the drain to start, with records still waiting",
                Duration::from_secs(60),
                |r| {
                    let Some(s) = r.status() else { return false };
                    let backlog = s.backlog.unwrap_or(0);
                    peak = peak.max(backlog);
                    assert!(
                        s.drained == 0 || backlog > 0,
                        "the drain sent the whole backlog (up to {peak} records) before a kill could \
                 land in its middle: {s:?}; drain_rate = {DRAIN_RATE}/s:\n{}",
                        tail(&r.log_text())
                    );
                    s.drained > 0
                },
            );
            // At once, not after `restart` returns: the drain goes on meanwhile.
            first.kill();
        }
        restarting.join().expect("scripts/kafka restart");
    });
    let at_kill = first.last;
    println!(
        "fallback_chaos[{label}]: killed mid-drain: stored {} drained {} backlog {:?}",
        at_kill.stored, at_kill.drained, at_kill.backlog
    );
    assert!(
        first.logged("kafka breaker open: output goes to the fallback store"),
        "the breaker opened"
    );

    // Restarted from its checkpoint: it drains the rest and ends with its input.
    let mut second = Run::start(d, 2);
    let code = second.finish(Duration::from_secs(180));
    let log = second.log_text();
    assert_eq!(code, Some(0), "{}", tail(&log));
    assert!(
        log_event(&log, "resuming from checkpoint").is_some(),
        "{}",
        tail(&log)
    );
    let left = backlog_by_cli(d, &[]);
    assert_eq!(left, 0, "records left in the fallback store at the end");

    let mut figures = check_topic(&cluster.servers, &topic, &expected);
    figures.via_fallback = at_kill.stored + second.last.stored;
    // What waited at the last look was drained after it (the store is empty now).
    figures.drained = at_kill.drained + second.last.drained + second.last.backlog.unwrap_or(0);
    report(label, &figures, started.elapsed());
}

#[test]
fn a_broker_outage_and_a_kill_mid_drain_lose_and_reorder_nothing_with_the_local_store() {
    broker_outage_then_a_kill_mid_drain("local", Store::Local, MidDrain::Kill);
}

#[test]
fn an_abort_between_a_drain_commit_and_its_delete_doubles_nothing() {
    broker_outage_then_a_kill_mid_drain("local-fault", Store::Local, MidDrain::Fault);
}

#[test]
fn a_broker_outage_and_a_kill_mid_drain_lose_and_reorder_nothing_with_the_dynamodb_store() {
    broker_outage_then_a_kill_mid_drain(
        "dynamodb",
        Store::Dynamo {
            endpoint: dynamodb_endpoint(),
            table_prefix: table_prefix("chaos"),
            outage_timeout: "5m",
        },
        MidDrain::Kill,
    );
}

/// The backlog in DynamoDB, read past the proxy (the process's own view goes through
/// it).
fn dynamo_backlog(rt: &tokio::runtime::Runtime, store: &DynamoFallbackStore) -> u64 {
    rt.block_on(store.backlog(Some(NAME)))
        .expect("the test server answers")
        .iter()
        .map(|b| b.records)
        .sum()
}

/// Which comes back first after the broker and the fallback store went down together.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BackFirst {
    Store,
    Broker,
}

/// The broker and the fallback store (DynamoDB behind a proxy) down together: the sink
/// holds its output (back-pressure) without failing; then both come back, in the
/// order `first` says; the outage's output is stored, then drained. Everything once,
/// in order per key.
fn broker_and_store_down_together(label: &str, first: BackFirst) {
    let started = Instant::now();
    let work = Workdir::new();
    let d = work.path();
    let endpoint = dynamodb_endpoint();
    let proxy = Proxy::start(endpoint.trim_start_matches("http://").to_string());
    let prefix = table_prefix("chaosdown");
    let cluster = Cluster::start(&d.join("kafka"));
    let topic = pipeline(
        d,
        &cluster.servers,
        &Store::Dynamo {
            endpoint: format!("http://{}", proxy.addr),
            table_prefix: prefix.clone(),
            // The store's own retries give up soon, so the sink's hold shows.
            outage_timeout: "3s",
        },
    );
    let expected = oracle(d);
    let checkpoints = d.join("checkpoints");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let direct = DynamoFallbackStore::new(&DynamoSettings {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.clone()),
        table_prefix: prefix,
        create_tables: true,
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(500),
        request_timeout: Duration::from_secs(10),
        outage_timeout: Duration::from_secs(30),
    });

    let mut run = Run::start(d, 1);
    wait_until(
        &mut run,
        "records committed to kafka",
        Duration::from_secs(60),
        |_| any_committed(&cluster.servers, &topic),
    );

    // Both down: the sink holds.
    if first == BackFirst::Broker {
        // A backlog first (the store up), so that output must wait behind it.
        cluster.kill();
        wait_until(
            &mut run,
            "a backlog in the fallback store",
            Duration::from_secs(60),
            |_| dynamo_backlog(&rt, &direct) >= OUTAGE_BACKLOG,
        );
        proxy.set(false);
    } else {
        proxy.set(false);
        cluster.kill();
    }
    let down_at = Instant::now();
    wait_until(
        &mut run,
        "the sink to say the fallback store is unavailable",
        Duration::from_secs(60),
        |r| r.logged("fallback store unavailable; output held (back-pressure)"),
    );
    let (code, ready) = http_get(&run.admin, "/readyz").expect("the process answers");
    assert_eq!(code, 503, "not ready while output is held: {ready}");
    let held = dynamo_backlog(&rt, &direct);
    let stored = run.status().map(|s| s.stored);
    let checkpoint = committed(&checkpoints);
    // It stays so: alive, nothing more stored (observed over a few store retries).
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert!(
            run.running(),
            "the pipeline failed:\n{}",
            tail(&run.log_text())
        );
        assert_eq!(
            dynamo_backlog(&rt, &direct),
            held,
            "the backlog grew with the store down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        run.status().map(|s| s.stored),
        stored,
        "stored with the store down"
    );
    println!(
        "fallback_chaos[{label}]: held {:.1} s: backlog {held}, checkpoints {checkpoint} → {}",
        down_at.elapsed().as_secs_f64(),
        committed(&checkpoints)
    );

    match first {
        BackFirst::Store => {
            // The store back: the held output and what follows go there; then the
            // broker.
            proxy.set(true);
            wait_until(
                &mut run,
                "the backlog to grow once the store is back",
                Duration::from_secs(60),
                |r| {
                    r.status();
                    dynamo_backlog(&rt, &direct) >= (held + 1).max(OUTAGE_BACKLOG)
                },
            );
            cluster.restart();
        }
        BackFirst::Broker => {
            // The broker back while the store is still down. The breaker's next probe
            // finds it, but cannot store the records that must wait behind the
            // backlog; the probe must still end (a failure that reopens the breaker,
            // which probes again, or a success that closes it), or the output never
            // reaches Kafka again. Then the store.
            let count = |r: &Run, message: &str| {
                r.log_text()
                    .matches(&format!("\"message\":\"{message}\""))
                    .count()
            };
            cluster.restart();
            let probing = "kafka breaker half-open: probing the cluster";
            let closed = "kafka breaker closed: output goes to kafka again";
            let (probes, closes) = (count(&run, probing), count(&run, closed));
            wait_until(
                &mut run,
                "the breaker to probe the broker again once back (two probes, or closed)",
                Duration::from_secs(60),
                |r| count(r, probing) >= probes + 2 || count(r, closed) > closes,
            );
            assert_eq!(
                dynamo_backlog(&rt, &direct),
                held,
                "stored with the store down"
            );
            proxy.set(true);
        }
    }

    // Drained, to the end of the input.
    wait_until(
        &mut run,
        "the drain to start",
        Duration::from_secs(60),
        |r| r.status().is_some_and(|s| s.drained > 0),
    );
    let code = run.finish(Duration::from_secs(180));
    assert_eq!(code, Some(0), "{}", tail(&run.log_text()));
    assert_eq!(dynamo_backlog(&rt, &direct), 0, "records left in the store");

    let mut figures = check_topic(&cluster.servers, &topic, &expected);
    figures.via_fallback = run.last.stored;
    figures.drained = run.last.drained + run.last.backlog.unwrap_or(0);
    report(label, &figures, started.elapsed());
    drop(proxy);
}

/// The issue's third case: broker and store down; the store comes back, then the
/// broker.
#[test]
fn with_the_fallback_store_down_as_well_the_sink_holds_then_stores_then_drains() {
    broker_and_store_down_together("store-down", BackFirst::Store);
}

/// A backlog built while the broker is down, then the store down too, then the broker
/// back first while the store is still down: the probe that finds the broker cannot
/// store what must wait behind the backlog; once the store is back, the backlog and
/// the held output are drained all the same.
#[test]
fn with_the_fallback_store_down_as_well_and_the_broker_back_first_nothing_is_stranded() {
    broker_and_store_down_together("store-down-broker-first", BackFirst::Broker);
}

/// What the tests above rely on from `scripts/kafka`: a broker killed and restarted at
/// once comes back under a registration of its own, without acting on the old one.
/// (A broker that took its partitions back on its old registration lost them when the
/// controller fenced it, and Kafka then skipped the markers of a transaction it was
/// completing, which stayed open for good: CI's failure of stop 34.) The controller,
/// a process of its own, outlives the kill; the restart removes the old registration
/// before the broker starts, so the broker is never refused as a duplicate.
#[test]
fn a_restarted_broker_registers_anew_instead_of_reusing_its_killed_registration() {
    let work = Workdir::new();
    let cluster = Cluster::start(&work.path().join("kafka"));
    let log = |node: &str| {
        std::fs::read_to_string(cluster.dir.join(node).join("server.log")).unwrap_or_default()
    };
    cluster.kill();
    let controller = log("controller");
    assert!(
        !controller.contains("UnregisterBrokerRecord"),
        "nothing unregistered before the restart"
    );
    // At once: well within the killed broker's session (9 s), which the controller
    // would otherwise wait out before taking a new registration.
    cluster.restart();
    let controller = log("controller");
    assert!(
        controller.contains("Replayed UnregisterBrokerRecord(brokerId=1"),
        "the restart removed the killed broker's registration:\n{}",
        tail(&controller)
    );
    let broker = log("broker-1");
    assert!(
        !broker.contains("DUPLICATE_BROKER_REGISTRATION"),
        "the restarted broker was refused as a duplicate of its old registration:\n{}",
        tail(&broker)
    );
    assert_eq!(
        broker.matches("Successfully registered broker 1 ").count(),
        2,
        "registered once at the start and once after the restart"
    );
    // And the cluster serves again: a topic is created.
    crate::kafka_faults::create_topic(&cluster.servers, &crate::kafka::fresh_topic("anew"), 1);
}
