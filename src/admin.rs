//! The admin endpoint: `GET /metrics` (Prometheus text format), the probes
//! `GET /livez`, `GET /readyz` and `GET /healthz`, and
//! `POST /savepoint?pipeline=NAME[&name=LABEL]` (a savepoint of a running pipeline
//! with checkpoints; replies with its checkpoint id once committed).
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
//! A deliberately small HTTP/1.1 responder on tokio (GET only, one request per
//! connection, bounded request size and read time) so the binary does not carry a web
//! framework for two read-only routes; the HTTP gateway work brings a real server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .expect("static buckets are valid")
                .install_recorder()
                .expect("metrics recorder installed once")
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
#[derive(Debug, Default)]
pub struct Savepoints {
    pipelines: std::sync::Mutex<
        std::collections::HashMap<
            String,
            tokio::sync::mpsc::Sender<crate::checkpoint::SavepointRequest>,
        >,
    >,
}

impl Savepoints {
    pub fn register(
        &self,
        pipeline: &str,
        tx: tokio::sync::mpsc::Sender<crate::checkpoint::SavepointRequest>,
    ) {
        if let Ok(mut m) = self.pipelines.lock() {
            m.insert(pipeline.to_string(), tx);
        }
    }

    /// Takes a savepoint of `pipeline`: (HTTP status, JSON body).
    async fn take(&self, pipeline: &str, name: Option<String>) -> (&'static str, String) {
        let tx = self
            .pipelines
            .lock()
            .ok()
            .and_then(|m| m.get(pipeline).cloned());
        let Some(tx) = tx else {
            return (
                "404 Not Found",
                serde_json::json!({ "error": format!("no running pipeline {pipeline} with checkpoints") })
                    .to_string(),
            );
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

/// The value of `key` in a query string (no percent-decoding: names are plain).
fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// Binds `addr` and serves until the process ends. Returns the bound address.
pub async fn serve(
    addr: &str,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    savepoints: Arc<Savepoints>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            let health = health.clone();
            let savepoints = savepoints.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while len < buf.len() {
                        let n = sock.read(&mut buf[len..]).await?;
                        if n == 0 {
                            break;
                        }
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let mut parts = head.split_whitespace();
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let (status, ctype, body) = match (method, path) {
                    ("POST", "/savepoint") => match query_value(query, "pipeline") {
                        Some(p) => {
                            let (status, body) =
                                savepoints.take(&p, query_value(query, "name")).await;
                            (status, "application/json", body + "\n")
                        }
                        None => (
                            "400 Bad Request",
                            "application/json",
                            "{\"error\":\"pipeline=NAME is required\"}\n".to_string(),
                        ),
                    },
                    ("GET", "/metrics") => {
                        crate::health::refresh_gauges();
                        ("200 OK", "text/plain; version=0.0.4", metrics.render())
                    }
                    ("GET", "/livez" | "/readyz" | "/healthz") => {
                        let (status, body) = health.probe(path);
                        (status, "application/json", body)
                    }
                    ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
                    _ => (
                        "405 Method Not Allowed",
                        "text/plain",
                        "GET /metrics, GET /livez, GET /readyz, GET /healthz, POST /savepoint\n"
                            .to_string(),
                    ),
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
}
