//! The admin endpoint: `GET /metrics` (Prometheus text format), `GET /healthz`, and
//! `POST /savepoint?pipeline=NAME[&name=LABEL]` (a savepoint of a running pipeline
//! with checkpoints; replies with its checkpoint id once committed).
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

/// Health as `/healthz` reports it: 200 while every pipeline runs, 503 once one failed.
#[derive(Debug, Default)]
pub struct Health {
    failed: AtomicBool,
}

impl Health {
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
    pub fn is_healthy(&self) -> bool {
        !self.failed.load(Ordering::Relaxed)
    }
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
                        ("200 OK", "text/plain; version=0.0.4", metrics.render())
                    }
                    ("GET", "/healthz") if health.is_healthy() => (
                        "200 OK",
                        "application/json",
                        "{\"status\":\"ok\"}\n".to_string(),
                    ),
                    ("GET", "/healthz") => (
                        "503 Service Unavailable",
                        "application/json",
                        "{\"status\":\"failed\"}\n".to_string(),
                    ),
                    ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
                    _ => (
                        "405 Method Not Allowed",
                        "text/plain",
                        "GET /metrics, GET /healthz, POST /savepoint\n".to_string(),
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
