//! A fault-injecting proxy in front of the test server, for tests: DynamoDB's own
//! ways of pushing back, injected deterministically. Every `throttle_every`-th
//! request is answered `ProvisionedThroughputExceededException` without reaching the
//! server; every `BatchWriteItem` or `BatchGetItem` passes only its first half to the
//! server and answers the rest as unprocessed (as DynamoDB does under load).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// What the proxy did, for the test's assertions.
#[derive(Debug, Default)]
pub(crate) struct Injected {
    pub(crate) requests: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) unprocessed: AtomicU64,
}

/// Starts the proxy to `upstream` (`http://host:port`); returns its endpoint.
pub(crate) async fn start(upstream: &str, throttle_every: u64) -> (String, Arc<Injected>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream: SocketAddr = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let injected = Arc::new(Injected::default());
    let state = injected.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service =
                    service_fn(move |req| handle(req, upstream, throttle_every, state.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), injected)
}

fn reply(status: u16, body: Value) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    upstream: SocketAddr,
    throttle_every: u64,
    state: Arc<Injected>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if throttle_every > 0 && n.is_multiple_of(throttle_every) {
        state.throttled.fetch_add(1, Ordering::Relaxed);
        return Ok(reply(
            400,
            json!({"__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                   "message": "injected by the test proxy"}),
        ));
    }
    // Batches: the server sees the first half, the rest comes back unprocessed.
    let (field, out_field) = match target.rsplit('.').next() {
        Some("BatchWriteItem") => ("RequestItems", "UnprocessedItems"),
        Some("BatchGetItem") => ("RequestItems", "UnprocessedKeys"),
        _ => ("", ""),
    };
    let mut held_back = serde_json::Map::new();
    let body = if field.is_empty() {
        body
    } else {
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        for (table, requests) in v[field].as_object_mut().unwrap().iter_mut() {
            let list = if out_field == "UnprocessedKeys" {
                requests["Keys"].as_array_mut().unwrap()
            } else {
                requests.as_array_mut().unwrap()
            };
            if list.len() > 1 {
                let rest = list.split_off(list.len().div_ceil(2));
                state
                    .unprocessed
                    .fetch_add(rest.len() as u64, Ordering::Relaxed);
                let back = if out_field == "UnprocessedKeys" {
                    let mut r = requests.clone();
                    r["Keys"] = Value::Array(rest);
                    r
                } else {
                    Value::Array(rest)
                };
                held_back.insert(table.clone(), back);
            }
        }
        Bytes::from(v.to_string())
    };
    let stream = tokio::net::TcpStream::connect(upstream).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut forward = hyper::Request::builder()
        .method(parts.method)
        .uri(parts.uri);
    for (k, v) in parts.headers.iter() {
        if k != "content-length" {
            forward = forward.header(k, v);
        }
    }
    let forward = forward
        .header("content-length", body.len())
        .body(Full::new(body))
        .unwrap();
    let response = sender.send_request(forward).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    if held_back.is_empty() || status != 200 {
        return Ok(hyper::Response::builder()
            .status(status)
            .header("content-type", "application/x-amz-json-1.0")
            .body(Full::new(bytes))
            .unwrap());
    }
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    v[out_field] = Value::Object(held_back);
    Ok(reply(200, v))
}
