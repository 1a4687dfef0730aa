//! The registry's REST API: Confluent Schema Registry's HTTP interface, on hyper.
//!
//! Owns request routing, JSON (de)serialisation, Confluent's response shapes and
//! error bodies (`{"error_code": N, "message": "..."}`), and connection handling:
//! HTTP/1.1 with keep-alive (Confluent clients reuse connections), a bound on request
//! bodies ([`MAX_BODY_BYTES`], 413 beyond), and graceful shutdown (stop accepting,
//! let in-flight requests finish for up to [`SHUTDOWN_GRACE`]).
//!
//! Every response has `Content-Type: application/vnd.schemaregistry.v1+json`.
//! Request bodies may be `application/vnd.schemaregistry.v1+json`,
//! `application/vnd.schemaregistry+json`, `application/json` or
//! `application/octet-stream`, or carry no content type.
//!
//! Routes (Confluent's): `GET /`, `GET /schemas`, `GET /schemas/types`,
//! `GET /schemas/ids/{id}[/schema|/subjects|/versions]`, `GET /subjects`,
//! `POST|DELETE /subjects/{s}`, `GET|POST /subjects/{s}/versions`,
//! `GET|DELETE /subjects/{s}/versions/{v}`, `GET /subjects/{s}/versions/{v}/schema`,
//! `GET /subjects/{s}/versions/{v}/referencedby`,
//! `POST /compatibility/subjects/{s}/versions[/{v}]`, `GET|PUT|DELETE /config[/{s}]`,
//! `GET /mode[/{s}]`, `GET /contexts`. `/associations/…` answers 404, so that
//! clients using the "associated" subject name strategy (confluent-kafka-python
//! 2.16+) fall back to `<topic>-value`. Anything else is 404, a known path with
//! another method 405.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::compat::CompatibilityLevel;
use super::{Listing, Registry, RegistryError, VersionSelector};

/// The largest request body accepted (16 MiB).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The content type of every response.
pub const CONTENT_TYPE_V1: &str = "application/vnd.schemaregistry.v1+json";
/// How long shutdown waits for open connections to finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

const ACCEPTED_CONTENT_TYPES: [&str; 4] = [
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
];

/// Serves the REST API on `listener` until `shutdown` completes, then stops
/// accepting and gives open connections [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let registry = registry.clone();
                    let mut stop = stop_rx.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(registry.clone(), req));
                        let conn = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), service);
                        let mut conn = std::pin::pin!(conn);
                        let result = tokio::select! {
                            r = conn.as_mut() => r,
                            _ = stop.changed() => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        };
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "registry connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // E.g. out of file descriptors: wait instead of spinning.
                    tracing::warn!(error = %e, "registry: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("registry: connections still open after the shutdown grace period");
        connections.abort_all();
    }
    Ok(())
}

/// A successful answer: status and JSON body.
struct Reply {
    status: StatusCode,
    body: Bytes,
}

impl Reply {
    fn json(value: &impl serde::Serialize) -> Result<Reply, RegistryError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| RegistryError::BadRequest(format!("cannot encode response: {e}")))?;
        Ok(Reply {
            status: StatusCode::OK,
            body: Bytes::from(body),
        })
    }

    /// A body that is already JSON (a schema's text).
    fn raw(text: String) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Bytes::from(text),
        }
    }
}

fn response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_V1));
    resp
}

/// Answers one request (also behind the TLS front of the client's tests).
pub(crate) async fn handle(
    registry: Arc<Registry>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = match route(&registry, req).await {
        Ok(reply) => {
            tracing::debug!(%method, %path, status = reply.status.as_u16(), "registry request");
            response(reply.status, reply.body)
        }
        Err(e) => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status.is_server_error() {
                tracing::error!(%method, %path, code = e.code(), error = %e, "registry request failed");
            } else {
                tracing::debug!(%method, %path, code = e.code(), error = %e, "registry request refused");
            }
            let body = json!({"error_code": e.error_code(), "message": e.to_string()});
            response(status, Bytes::from(body.to_string()))
        }
    };
    Ok(resp)
}

/// Query parameters, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Result<Query, RegistryError> {
        let mut out = Vec::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.push((percent_decode(k, true)?, percent_decode(v, true)?));
        }
        Ok(Query(out))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean flag: `true` in any case (Python clients send `True`).
    fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    fn int(&self, key: &str, default: i64) -> Result<i64, RegistryError> {
        match self.get(key) {
            None | Some("") => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                RegistryError::BadRequest(format!("query parameter {key}={v} is not an integer"))
            }),
        }
    }

    fn listing(&self) -> Listing {
        Listing::from_flags(self.flag("deleted"), self.flag("deleted_only"))
    }

    /// `subjectPrefix`, where Confluent's "all contexts" prefix `:*:` means none.
    fn prefix(&self) -> Option<&str> {
        self.get("subjectPrefix")
            .filter(|p| !p.is_empty() && *p != ":*:")
    }

    /// Applies `offset` and `limit` (negative: no limit).
    fn paginate<T>(&self, items: Vec<T>) -> Result<Vec<T>, RegistryError> {
        let offset = usize::try_from(self.int("offset", 0)?.max(0)).unwrap_or(usize::MAX);
        let limit = self.int("limit", -1)?;
        let iter = items.into_iter().skip(offset);
        Ok(if limit < 0 {
            iter.collect()
        } else {
            iter.take(usize::try_from(limit).unwrap_or(usize::MAX))
                .collect()
        })
    }
}

fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, RegistryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        RegistryError::BadRequest(format!("bad percent-encoding in '{s}'"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| RegistryError::BadRequest(format!("'{s}' is not UTF-8 once decoded")))
}

/// The body of register, lookup and compatibility requests.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
}

impl SchemaRequest {
    /// The schema text, after checking the request is one this registry supports.
    fn into_schema(self) -> Result<String, RegistryError> {
        let invalid = |message: String| RegistryError::InvalidSchema {
            path: "/".into(),
            message,
        };
        if let Some(t) = self.schema_type.as_deref()
            && !t.eq_ignore_ascii_case("AVRO")
        {
            return Err(invalid(format!(
                "schema type {t} is not supported: this registry supports AVRO only"
            )));
        }
        if self.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(invalid(
                "schema references are not supported: inline the referenced types".into(),
            ));
        }
        match self.schema {
            Some(Value::String(s)) => Ok(s),
            // Lenient: a schema given as JSON rather than as a string of JSON.
            Some(v @ (Value::Object(_) | Value::Array(_))) => Ok(v.to_string()),
            Some(Value::Null) | None => {
                Err(invalid("empty schema: the request has no 'schema'".into()))
            }
            Some(other) => Err(invalid(format!("'schema' must be a string, not {other}"))),
        }
    }
}

/// The body of config updates: Confluent's `compatibility` (or `compatibilityLevel`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigRequest {
    #[serde(default)]
    compatibility: Option<String>,
    #[serde(default)]
    compatibility_level: Option<String>,
}

impl ConfigRequest {
    fn level(self) -> Result<CompatibilityLevel, RegistryError> {
        match self.compatibility.or(self.compatibility_level) {
            Some(level) => level.parse(),
            None => Err(RegistryError::InvalidCompatibilityLevel(String::new())),
        }
    }
}

/// Reads and decodes a JSON body, enforcing the content type and size bound.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, RegistryError> {
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !media.is_empty() && !ACCEPTED_CONTENT_TYPES.contains(&media.as_str()) {
            return Err(RegistryError::UnsupportedMediaType(ct.to_owned()));
        }
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(RegistryError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                RegistryError::PayloadTooLarge {
                    limit: MAX_BODY_BYTES,
                }
            } else {
                RegistryError::BadRequest(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| RegistryError::BadRequest(format!("invalid JSON body: {e}")))
}

fn schema_id(s: &str) -> Result<u32, RegistryError> {
    s.parse::<u32>()
        .map_err(|_| RegistryError::SchemaIdNotFound(s.to_owned()))
}

async fn route(reg: &Registry, req: Request<Incoming>) -> Result<Reply, RegistryError> {
    let method = req.method().clone();
    let raw_path = req.uri().path().to_owned();
    let query = Query::parse(req.uri().query())?;
    let segments: Vec<String> = raw_path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect::<Result<_, _>>()?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let not_allowed = || {
        Err(RegistryError::MethodNotAllowed {
            method: method.to_string(),
            path: raw_path.clone(),
        })
    };
    let get = method == Method::GET || method == Method::HEAD;

    match segs.as_slice() {
        [] if get => Reply::json(&json!({})),
        ["schemas"] if get => {
            let all = reg
                .all_versions(query.listing(), query.prefix(), query.flag("latestOnly"))
                .await;
            Reply::json(&query.paginate(all)?)
        }
        ["schemas", "types"] if get => Reply::json(&["AVRO"]),
        ["schemas", "ids", id] if get => {
            let text = reg.schema_by_id(schema_id(id)?).await?;
            Reply::json(&json!({ "schema": text }))
        }
        ["schemas", "ids", id, "schema"] if get => {
            Ok(Reply::raw(reg.schema_by_id(schema_id(id)?).await?))
        }
        ["schemas", "ids", id, "subjects"] if get => {
            let subjects = reg
                .subjects_by_id(schema_id(id)?, query.flag("deleted"))
                .await?;
            Reply::json(&query.paginate(subjects)?)
        }
        ["schemas", "ids", id, "versions"] if get => {
            let versions: Vec<Value> = reg
                .versions_by_id(schema_id(id)?, query.flag("deleted"))
                .await?
                .into_iter()
                .map(|(subject, version)| json!({"subject": subject, "version": version}))
                .collect();
            Reply::json(&query.paginate(versions)?)
        }
        ["subjects"] if get => {
            let subjects = reg.subjects(query.listing(), query.prefix()).await;
            Reply::json(&query.paginate(subjects)?)
        }
        ["subjects", subject] => match method {
            Method::POST => {
                let schema = read_json::<SchemaRequest>(req).await?.into_schema()?;
                let found = reg.lookup(subject, &schema, query.flag("deleted")).await?;
                Reply::json(&found)
            }
            Method::DELETE => {
                let versions = reg.delete_subject(subject, query.flag("permanent")).await?;
                Reply::json(&versions)
            }
            _ => not_allowed(),
        },
        ["subjects", subject, "versions"] => match method {
            Method::GET | Method::HEAD => {
                let versions = reg.versions(subject, query.listing()).await?;
                Reply::json(&query.paginate(versions)?)
            }
            Method::POST => {
                let schema = read_json::<SchemaRequest>(req).await?.into_schema()?;
                let id = reg
                    .register(subject, &schema, query.flag("normalize"))
                    .await?;
                Reply::json(&json!({ "id": id }))
            }
            _ => not_allowed(),
        },
        ["subjects", subject, "versions", version] => {
            let selector = VersionSelector::parse(version)?;
            match method {
                Method::GET | Method::HEAD => Reply::json(
                    &reg.version(subject, selector, query.flag("deleted"))
                        .await?,
                ),
                Method::DELETE => {
                    let v = reg
                        .delete_version(subject, selector, query.flag("permanent"))
                        .await?;
                    Reply::json(&v)
                }
                _ => not_allowed(),
            }
        }
        ["subjects", subject, "versions", version, "schema"] if get => {
            let selector = VersionSelector::parse(version)?;
            let found = reg
                .version(subject, selector, query.flag("deleted"))
                .await?;
            Ok(Reply::raw(found.schema))
        }
        ["subjects", subject, "versions", version, "referencedby"] if get => {
            // Schema references are not supported, so nothing refers to anything.
            let selector = VersionSelector::parse(version)?;
            reg.version(subject, selector, false).await?;
            Reply::json(&Vec::<u32>::new())
        }
        ["compatibility", "subjects", subject, "versions", rest @ ..] if rest.len() <= 1 => {
            if method != Method::POST {
                return not_allowed();
            }
            let selector = rest
                .first()
                .map(|v| VersionSelector::parse(v))
                .transpose()?;
            let schema = read_json::<SchemaRequest>(req).await?.into_schema()?;
            let messages = reg.check_compatibility(subject, selector, &schema).await?;
            let mut body = json!({ "is_compatible": messages.is_empty() });
            if query.flag("verbose") {
                body["messages"] = json!(messages);
            }
            Reply::json(&body)
        }
        ["config"] => match method {
            Method::GET | Method::HEAD => {
                Reply::json(&json!({ "compatibilityLevel": reg.global_level().await }))
            }
            Method::PUT => {
                let level = read_json::<ConfigRequest>(req).await?.level()?;
                reg.set_global_level(level).await?;
                Reply::json(&json!({ "compatibility": level }))
            }
            Method::DELETE => {
                let old = reg.reset_global_level().await?;
                Reply::json(&json!({ "compatibilityLevel": old }))
            }
            _ => not_allowed(),
        },
        ["config", subject] => match method {
            Method::GET | Method::HEAD => match reg.subject_level(subject).await {
                Some(level) => Reply::json(&json!({ "compatibilityLevel": level })),
                None if query.flag("defaultToGlobal") => {
                    Reply::json(&json!({ "compatibilityLevel": reg.global_level().await }))
                }
                None => Err(RegistryError::SubjectLevelNotConfigured(
                    (*subject).to_owned(),
                )),
            },
            Method::PUT => {
                let level = read_json::<ConfigRequest>(req).await?.level()?;
                reg.set_subject_level(subject, level).await?;
                Reply::json(&json!({ "compatibility": level }))
            }
            Method::DELETE => {
                let old = reg.delete_subject_level(subject).await?;
                Reply::json(&json!({ "compatibilityLevel": old }))
            }
            _ => not_allowed(),
        },
        ["mode"] | ["mode", _] if get => Reply::json(&json!({ "mode": "READWRITE" })),
        ["contexts"] if get => Reply::json(&["."]),
        ["associations", rest @ ..] => Err(RegistryError::AssociationsUnsupported(rest.join("/"))),
        // Known paths with a method not handled above.
        []
        | ["schemas"]
        | ["schemas", "types"]
        | ["schemas", "ids", _]
        | ["schemas", "ids", _, "schema" | "subjects" | "versions"]
        | ["subjects"]
        | ["subjects", _, "versions", _, "schema" | "referencedby"]
        | ["mode"]
        | ["mode", _]
        | ["contexts"] => not_allowed(),
        _ => Err(RegistryError::RouteNotFound {
            method: method.to_string(),
            path: raw_path.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    /// A minimal HTTP/1.1 client over one kept-alive connection.
    struct Client {
        stream: BufReader<TcpStream>,
    }

    struct Answer {
        status: u16,
        content_type: String,
        body: String,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
        }

        fn error_code(&self) -> i64 {
            self.json()["error_code"].as_i64().unwrap()
        }
    }

    async fn read_answer<R: AsyncBufRead + Unpin>(stream: &mut R) -> Answer {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        let mut content_type = String::new();
        loop {
            let mut h = String::new();
            stream.read_line(&mut h).await.unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap(),
                "content-type" => content_type = v.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        Answer {
            status,
            content_type,
            body: String::from_utf8(body).unwrap(),
        }
    }

    impl Client {
        async fn connect(addr: std::net::SocketAddr) -> Client {
            Client {
                stream: BufReader::new(TcpStream::connect(addr).await.unwrap()),
            }
        }

        async fn send(
            &mut self,
            method: &str,
            path: &str,
            body: Option<&str>,
            content_type: &str,
        ) -> Answer {
            let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
            if let Some(b) = body {
                req.push_str(&format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                    b.len()
                ));
            }
            req.push_str("\r\n");
            req.push_str(body.unwrap_or(""));
            self.stream
                .get_mut()
                .write_all(req.as_bytes())
                .await
                .unwrap();
            self.read_answer().await
        }

        async fn read_answer(&mut self) -> Answer {
            read_answer(&mut self.stream).await
        }

        async fn get(&mut self, path: &str) -> Answer {
            self.send("GET", path, None, "").await
        }

        async fn post(&mut self, path: &str, body: &Value) -> Answer {
            self.send("POST", path, Some(&body.to_string()), CONTENT_TYPE_V1)
                .await
        }

        async fn put(&mut self, path: &str, body: &Value) -> Answer {
            self.send("PUT", path, Some(&body.to_string()), "application/json")
                .await
        }

        async fn delete(&mut self, path: &str) -> Answer {
            self.send("DELETE", path, None, "").await
        }
    }

    struct Server {
        addr: std::net::SocketAddr,
        /// The registry's store, deleted when the last test holding it drops it.
        dir: tempfile::TempDir,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), RegistryError>>,
    }

    impl Server {
        async fn start(name: &str) -> Server {
            let dir = tempfile::Builder::new()
                .prefix(&format!("registry-http-{name}-"))
                .tempdir()
                .unwrap();
            Self::start_in(dir).await
        }

        async fn start_in(dir: tempfile::TempDir) -> Server {
            let registry = Arc::new(Registry::open(dir.path()).await.unwrap());
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, registry, async move {
                let _ = rx.await;
            }));
            Server {
                addr,
                dir,
                stop: Some(tx),
                task,
            }
        }

        /// Stops the server; its store stays until the returned directory is dropped.
        async fn stop(mut self) -> tempfile::TempDir {
            let _ = self.stop.take().unwrap().send(());
            (&mut self.task).await.unwrap().unwrap();
            self.dir
        }
    }

    fn schema_body(schema: &str) -> Value {
        json!({ "schema": schema })
    }

    const V1: &str = r#"{"type":"record","name":"Order","namespace":"t","fields":[{"name":"id","type":"long"}]}"#;
    const V2: &str = r#"{"type":"record","name":"Order","namespace":"t","fields":[{"name":"id","type":"long"},{"name":"total","type":"double","default":0}]}"#;
    const V3: &str = r#"{"type":"record","name":"Order","namespace":"t","fields":[{"name":"id","type":"long"}]}"#;

    #[tokio::test]
    async fn confluent_routes_over_one_connection() {
        let server = Server::start("routes").await;
        let mut c = Client::connect(server.addr).await;

        let a = c.get("/").await;
        assert_eq!((a.status, a.body.as_str()), (200, "{}"));
        assert_eq!(a.content_type, CONTENT_TYPE_V1);
        assert_eq!(c.get("/schemas/types").await.json(), json!(["AVRO"]));

        // Register, de-duplicate, evolve.
        let a = c
            .post("/subjects/orders-value/versions", &schema_body(V1))
            .await;
        assert_eq!((a.status, a.json()), (200, json!({"id": 1})));
        let a = c
            .post(
                "/subjects/orders-value/versions?normalize=False",
                &schema_body(V1),
            )
            .await;
        assert_eq!(a.json(), json!({"id": 1}));
        let a = c
            .post("/subjects/orders-value/versions", &schema_body(V2))
            .await;
        assert_eq!(a.json(), json!({"id": 2}));
        assert_eq!(c.get("/subjects").await.json(), json!(["orders-value"]));
        assert_eq!(
            c.get("/subjects/orders-value/versions").await.json(),
            json!([1, 2])
        );

        let a = c.get("/subjects/orders-value/versions/latest").await;
        assert_eq!(
            a.json(),
            json!({"subject": "orders-value", "version": 2, "id": 2, "schema": V2})
        );
        assert_eq!(
            c.get("/subjects/orders-value/versions/-1").await.json()["version"],
            2
        );
        assert_eq!(
            c.get("/subjects/orders-value/versions/1").await.json()["id"],
            1
        );
        let a = c.get("/subjects/orders-value/versions/1/schema").await;
        assert_eq!(a.body, V1);
        assert_eq!(c.get("/schemas/ids/2").await.json(), json!({"schema": V2}));
        assert_eq!(c.get("/schemas/ids/2/schema").await.body, V2);
        assert_eq!(
            c.get("/schemas/ids/1/subjects").await.json(),
            json!(["orders-value"])
        );
        assert_eq!(
            c.get("/schemas/ids/1/versions").await.json(),
            json!([{"subject": "orders-value", "version": 1}])
        );
        assert_eq!(
            c.get("/schemas?latestOnly=true")
                .await
                .json()
                .as_array()
                .unwrap()
                .len(),
            1
        );

        // Lookup.
        let a = c
            .post(
                "/subjects/orders-value?normalize=False&deleted=False",
                &schema_body(V1),
            )
            .await;
        assert_eq!(a.json()["version"], 1);
        let a = c
            .post("/subjects/orders-value", &schema_body("\"string\""))
            .await;
        assert_eq!((a.status, a.error_code()), (404, 40403));

        // Compatibility.
        let no_default = r#"{"type":"record","name":"Order","namespace":"t","fields":[{"name":"id","type":"long"},{"name":"x","type":"int"}]}"#;
        let a = c
            .post(
                "/compatibility/subjects/orders-value/versions/latest?verbose=True",
                &schema_body(no_default),
            )
            .await;
        assert_eq!(a.json()["is_compatible"], false);
        let messages = a.json()["messages"].clone();
        assert!(
            messages[0]
                .as_str()
                .unwrap()
                .starts_with("READER_FIELD_MISSING_DEFAULT_VALUE at /fields/1:"),
            "{messages}"
        );
        let a = c
            .post(
                "/compatibility/subjects/orders-value/versions",
                &schema_body(V3),
            )
            .await;
        assert_eq!(a.json(), json!({"is_compatible": true}));
        let a = c
            .post("/subjects/orders-value/versions", &schema_body(no_default))
            .await;
        assert_eq!((a.status, a.error_code()), (409, 409));
        assert!(
            a.json()["message"]
                .as_str()
                .unwrap()
                .contains("READER_FIELD_MISSING_DEFAULT_VALUE")
        );

        // Config.
        assert_eq!(
            c.get("/config").await.json(),
            json!({"compatibilityLevel": "BACKWARD"})
        );
        let a = c.put("/config", &json!({"compatibility": "FULL"})).await;
        assert_eq!(a.json(), json!({"compatibility": "FULL"}));
        let a = c.get("/config/orders-value").await;
        assert_eq!((a.status, a.error_code()), (404, 40408));
        let a = c.get("/config/orders-value?defaultToGlobal=true").await;
        assert_eq!(a.json(), json!({"compatibilityLevel": "FULL"}));
        let a = c
            .put("/config/orders-value", &json!({"compatibility": "none"}))
            .await;
        assert_eq!(a.json(), json!({"compatibility": "NONE"}));
        assert_eq!(
            c.get("/config/orders-value").await.json(),
            json!({"compatibilityLevel": "NONE"})
        );
        let a = c
            .put("/config", &json!({"compatibility": "SIDEWAYS"}))
            .await;
        assert_eq!((a.status, a.error_code()), (422, 42203));
        assert_eq!(
            c.delete("/config/orders-value").await.json(),
            json!({"compatibilityLevel": "NONE"})
        );
        assert_eq!(
            c.delete("/config").await.json(),
            json!({"compatibilityLevel": "FULL"})
        );
        assert_eq!(c.get("/mode").await.json(), json!({"mode": "READWRITE"}));

        // Errors.
        let a = c.get("/subjects/nope/versions").await;
        assert_eq!((a.status, a.error_code()), (404, 40401));
        let a = c.get("/subjects/orders-value/versions/9").await;
        assert_eq!((a.status, a.error_code()), (404, 40402));
        let a = c.get("/subjects/orders-value/versions/zero").await;
        assert_eq!((a.status, a.error_code()), (422, 42202));
        let a = c.get("/schemas/ids/99").await;
        assert_eq!((a.status, a.error_code()), (404, 40403));
        let a = c
            .post(
                "/subjects/x/versions",
                &schema_body("{\"type\":\"record\"}"),
            )
            .await;
        assert_eq!((a.status, a.error_code()), (422, 42201));
        let a = c
            .post(
                "/subjects/x/versions",
                &json!({"schema": V1, "schemaType": "PROTOBUF"}),
            )
            .await;
        assert_eq!(a.error_code(), 42201);
        let a = c
            .send(
                "POST",
                "/subjects/x/versions",
                Some("{not json"),
                CONTENT_TYPE_V1,
            )
            .await;
        assert_eq!((a.status, a.error_code()), (400, 400));
        let a = c
            .send("POST", "/subjects/x/versions", Some("{}"), "text/plain")
            .await;
        assert_eq!((a.status, a.error_code()), (415, 415));
        let a = c.get("/no/such/route").await;
        assert_eq!((a.status, a.error_code()), (404, 404));
        let a = c.send("PATCH", "/subjects", None, "").await;
        assert_eq!((a.status, a.error_code()), (405, 405));
        let a = c
            .get("/associations/resources/-/orders?resourceType=topic&associationType=value")
            .await;
        assert_eq!((a.status, a.error_code()), (404, 404));

        // Deletes.
        let a = c.delete("/subjects/orders-value?permanent=true").await;
        assert_eq!(a.error_code(), 40405);
        assert_eq!(
            c.delete("/subjects/orders-value/versions/2").await.json(),
            json!(2)
        );
        let a = c.delete("/subjects/orders-value/versions/2").await;
        assert_eq!(a.error_code(), 40406);
        assert_eq!(c.delete("/subjects/orders-value").await.json(), json!([1]));
        assert_eq!(c.delete("/subjects/orders-value").await.error_code(), 40404);
        assert_eq!(c.get("/subjects").await.json(), json!([]));
        assert_eq!(
            c.get("/subjects?deleted=true").await.json(),
            json!(["orders-value"])
        );
        assert_eq!(
            c.get("/schemas/ids/1").await.status,
            200,
            "readable after a soft delete"
        );
        assert_eq!(
            c.delete("/subjects/orders-value?permanent=true")
                .await
                .json(),
            json!([1, 2])
        );
        assert_eq!(c.get("/schemas/ids/1").await.error_code(), 40403);

        server.stop().await;
    }

    #[tokio::test]
    async fn subject_names_are_percent_decoded() {
        let server = Server::start("names").await;
        let mut c = Client::connect(server.addr).await;
        let a = c
            .post("/subjects/a%2Fb%20c/versions", &schema_body("\"int\""))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(c.get("/subjects").await.json(), json!(["a/b c"]));
        assert_eq!(
            c.get("/subjects?subjectPrefix=a%2F").await.json(),
            json!(["a/b c"])
        );
        assert_eq!(c.get("/subjects?subjectPrefix=zz").await.json(), json!([]));
        server.stop().await;
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let server = Server::start("big").await;
        let mut c = Client::connect(server.addr).await;
        let req = format!(
            "POST /subjects/x/versions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        c.stream.get_mut().write_all(req.as_bytes()).await.unwrap();
        let a = c.read_answer().await;
        assert_eq!((a.status, a.error_code()), (413, 413));

        // Without a Content-Length (chunked), the bound applies while reading.
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            let head = "POST /subjects/x/versions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
            write.write_all(head.as_bytes()).await?;
            let chunk = vec![b' '; 1024 * 1024];
            for _ in 0..=MAX_BODY_BYTES / chunk.len() {
                write
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                write.write_all(&chunk).await?;
                write.write_all(b"\r\n").await?;
            }
            write.write_all(b"0\r\n\r\n").await
        });
        let a = read_answer(&mut BufReader::new(read)).await;
        assert_eq!((a.status, a.error_code()), (413, 413));
        // The server stops reading: the writer fails or finishes, but must not hang.
        let _ = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writer is not stuck");
        server.stop().await;
    }

    #[tokio::test]
    async fn state_survives_a_server_restart() {
        let server = Server::start("restart").await;
        let mut c = Client::connect(server.addr).await;
        assert_eq!(
            c.post("/subjects/s/versions", &schema_body(V1))
                .await
                .json(),
            json!({"id": 1})
        );
        assert_eq!(
            c.put("/config/s", &json!({"compatibility": "FORWARD"}))
                .await
                .status,
            200
        );
        drop(c);
        let dir = server.stop().await;
        let server = Server::start_in(dir).await;
        let mut c = Client::connect(server.addr).await;
        assert_eq!(c.get("/schemas/ids/1").await.json(), json!({"schema": V1}));
        assert_eq!(
            c.get("/config/s").await.json(),
            json!({"compatibilityLevel": "FORWARD"})
        );
        assert_eq!(
            c.post("/subjects/s/versions", &schema_body(V2))
                .await
                .json(),
            json!({"id": 2})
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_lets_idle_keep_alive_connections_go() {
        let server = Server::start("shutdown").await;
        let mut c = Client::connect(server.addr).await;
        assert_eq!(c.get("/").await.status, 200);
        // The connection stays open (keep-alive); shutdown must not wait for it.
        let started = std::time::Instant::now();
        server.stop().await;
        assert!(
            started.elapsed() < SHUTDOWN_GRACE,
            "{:?}",
            started.elapsed()
        );
        let mut rest = Vec::new();
        let n = c.stream.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "the server closed the idle connection");
    }
}
