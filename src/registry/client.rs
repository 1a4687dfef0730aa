//! A client for Confluent-compatible schema registries, over HTTP/1.1 or HTTPS: what
//! `tributary schemas`, `tributary check` and Avro Kafka tables need.
//!
//! Owns talking to one registry: its URL (credentials written in it,
//! `https://KEY:SECRET@host`, are taken out of it), HTTP basic authentication
//! (Confluent's `basic.auth.user.info`, `KEY:SECRET`, as Confluent Cloud's API keys
//! use), TLS (rustls with the ring provider, Mozilla's roots from `webpki-roots`, plus
//! the CA certificates of an optional PEM file), a timeout on every request, and what
//! an answer means.
//!
//! Invariants:
//! - Every request succeeds or fails within the request timeout.
//! - An infrastructure failure — the registry not reachable, no answer in time, HTTP
//!   5xx, 408 or 429 — is [`RegistryError::Unavailable`], and only that is retried
//!   ([`RegistryClient::wait_out`]). It is never taken for the registry's definite
//!   answer that a schema id does not exist ([`RegistryError::SchemaIdNotFound`]:
//!   HTTP 404 with Confluent's error code 40403), nor for a refusal of the credentials
//!   ([`RegistryError::Refused`]: HTTP 401 or 403), which retrying does not mend.
//! - Credentials never appear in messages or logs: the URL shown is without them.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio_rustls::rustls;

use super::RegistryError;
use crate::health::Probe;

/// The first wait after a failed request during an outage; it doubles up to
/// [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two requests during an outage.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a client talks to its registry; from `[registry]` in the configuration, the
/// table's options overriding.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `KEY:SECRET`, sent as HTTP basic authentication (unless the URL has credentials).
    pub basic_auth_user_info: Option<String>,
    /// A PEM file of CA certificates trusted besides the built-in (Mozilla) roots.
    pub ca_file: Option<PathBuf>,
    /// The longest one request may take, connection and TLS handshake included.
    pub request_timeout: Duration,
    /// How long an outage is waited out before the caller fails.
    pub outage_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            basic_auth_user_info: None,
            ca_file: None,
            request_timeout: Duration::from_secs(10),
            outage_timeout: Duration::from_secs(300),
        }
    }
}

/// A registry's URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    https: bool,
    /// The host as written (an IPv6 address in brackets).
    host: String,
    port: u16,
    /// `host[:port]` as written: the `Host` header.
    authority: String,
    /// A path prefix the registry is served under, without the trailing `/` (often "").
    base: String,
    /// `user:password` from the URL, percent-decoded.
    user_info: Option<String>,
}

impl Target {
    /// The URL as shown in messages: without credentials.
    fn shown(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.authority,
            self.base
        )
    }
}

/// Parses `http[s]://[user:password@]host[:port][/path]`.
fn parse_url(url: &str) -> Result<Target, String> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    let (https, rest) = if lower.starts_with("https://") {
        (true, &url["https://".len()..])
    } else if lower.starts_with("http://") {
        (false, &url["http://".len()..])
    } else {
        return Err("expected an http:// or https:// URL".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (user_info, host_port) = match authority.rsplit_once('@') {
        Some((info, hp)) => (Some(percent_decode(info)?), hp),
        None => (None, authority),
    };
    let (host, port) = if let Some(inner) = host_port.strip_prefix('[') {
        let (addr, after) = inner
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ]")?;
        (format!("[{addr}]"), after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (host_port.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("no host".into());
    }
    let port = match port {
        None | Some("") => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => p.parse().map_err(|_| format!("bad port '{p}'"))?,
    };
    if path.contains(['?', '#']) {
        return Err("no query or fragment: the URL is the registry's base".into());
    }
    Ok(Target {
        https,
        authority: host_port.to_string(),
        host,
        port,
        base: path.trim_end_matches('/').to_string(),
        user_info,
    })
}

/// `url` with any credentials in it masked, for a message about a URL that does not
/// parse.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[end..]),
        None => url.to_string(),
    }
}

/// `%XX` escapes decoded (credentials in a URL escape `@`, `:`, `/`…).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding in the URL's credentials")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL's credentials are not UTF-8".into())
}

/// The `Authorization` header of Confluent's `basic.auth.user.info` (`KEY:SECRET`).
fn basic_authorization(user_info: &str) -> Result<String, String> {
    use base64::Engine;
    if !user_info.contains(':') {
        return Err("basic auth user info must be KEY:SECRET (user:password)".into());
    }
    Ok(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_info)
    ))
}

/// rustls with the ring provider, trusting Mozilla's roots and those in `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let shown = path.display();
        let mut added = 0;
        for cert in
            CertificateDer::pem_file_iter(path).map_err(|e| format!("ca_file {shown}: {e}"))?
        {
            let cert = cert.map_err(|e| format!("ca_file {shown}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {shown}: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("ca_file {shown}: no PEM certificate in it"));
        }
    }
    // rustls 0.23.48 deprecates the ring provider (no post-quantum key exchange);
    // kept on purpose to stay off aws-lc-rs's build (ADR 0011).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Aborts a spawned task when dropped (a request given up on takes its connection
/// with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One schema registry: where it is, how to authenticate, how long to wait. Built once
/// per table (or command) and shared; cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    target: Target,
    shown: String,
    /// TLS settings and the server's name (HTTPS only).
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// `Basic …`, when credentials were given.
    authorization: Option<String>,
    request_timeout: Duration,
    outage_timeout: Duration,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.shown)
            .field("authenticated", &self.authorization.is_some())
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl RegistryClient {
    /// A client of the registry at `url`. Credentials in the URL win over
    /// `settings.basic_auth_user_info`; `settings.ca_file` applies to `https://` URLs.
    pub fn new(url: &str, settings: &ClientSettings) -> Result<Self, RegistryError> {
        let target = parse_url(url)
            .map_err(|e| RegistryError::Client(format!("registry url {}: {e}", redact(url))))?;
        let shown = target.shown();
        let invalid = |e: String| RegistryError::Client(format!("{shown}: {e}"));
        let authorization = match target
            .user_info
            .as_deref()
            .or(settings.basic_auth_user_info.as_deref())
            .filter(|u| !u.is_empty())
        {
            Some(info) => Some(basic_authorization(info).map_err(invalid)?),
            None => None,
        };
        let tls = if target.https {
            let name = target.host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(name.to_string())
                .map_err(|e| invalid(format!("host {name}: {e}")))?;
            Some((
                tls_config(settings.ca_file.as_deref()).map_err(invalid)?,
                name,
            ))
        } else {
            None
        };
        Ok(RegistryClient {
            target,
            shown,
            tls,
            authorization,
            request_timeout: settings.request_timeout,
            outage_timeout: settings.outage_timeout,
        })
    }

    /// The registry's URL, without credentials.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// How long [`RegistryClient::wait_out`] waits out an outage.
    pub fn outage_timeout(&self) -> Duration {
        self.outage_timeout
    }

    fn unavailable(&self, message: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unavailable {
            url: self.shown.clone(),
            message: message.to_string(),
        }
    }

    /// Sends one request and returns the status and the JSON reply (`Null` when not
    /// JSON); a transport failure or no answer within the request timeout is
    /// [`RegistryError::Unavailable`], a TLS handshake the client refuses (an
    /// untrusted certificate) [`RegistryError::Client`].
    async fn exchange(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), RegistryError> {
        let within =
            tokio::time::timeout(self.request_timeout, self.exchange_now(method, path, body));
        match within.await {
            Ok(r) => r,
            Err(_) => Err(self.unavailable(format_args!(
                "no answer within {:?} (registry.request_timeout)",
                self.request_timeout
            ))),
        }
    }

    async fn exchange_now(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), RegistryError> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.target.base))
            .header("host", &self.target.authority)
            .header("accept", "application/vnd.schemaregistry.v1+json")
            .header(
                "user-agent",
                concat!("tributary/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &self.authorization {
            builder = builder.header("authorization", auth);
        }
        let body = match body {
            Some(b) => {
                builder = builder.header("content-type", "application/vnd.schemaregistry.v1+json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|e| RegistryError::Client(format!("{}{path}: {e}", self.shown)))?;
        let addr = format!("{}:{}", self.target.host, self.target.port);
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| self.unavailable(format_args!("cannot connect to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let (status, bytes) = match &self.tls {
            None => send(hyper_util::rt::TokioIo::new(tcp), request).await,
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| self.tls_failure(e))?;
                send(hyper_util::rt::TokioIo::new(tls), request).await
            }
        }
        .map_err(|e| self.unavailable(format_args!("{path}: {e}")))?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// A failed TLS handshake: refused by rustls (certificate not trusted, wrong name,
    /// no common protocol) is a setting to fix; the connection dropping is an outage.
    fn tls_failure(&self, e: std::io::Error) -> RegistryError {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls) => RegistryError::Client(format!(
                "{}: tls handshake refused: {tls} (a private CA? set registry.ca_file)",
                self.shown
            )),
            None => self.unavailable(format_args!("tls handshake: {e}")),
        }
    }

    /// [`RegistryClient::exchange`], with the statuses every call treats alike: 401
    /// and 403 are [`RegistryError::Refused`]; 408, 429 and 5xx are
    /// [`RegistryError::Unavailable`].
    async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), RegistryError> {
        let (status, reply) = self.exchange(method, path, body).await?;
        let message = || {
            reply["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"))
        };
        match status {
            401 | 403 => Err(RegistryError::Refused {
                url: self.shown.clone(),
                status,
                message: message(),
            }),
            408 | 429 | 500..=599 => {
                Err(self.unavailable(format_args!("{path}: HTTP {status}: {}", message())))
            }
            _ => Ok((status, reply)),
        }
    }

    /// POSTs a JSON body; returns the status and the JSON reply (refusals and
    /// unavailability as errors, see [`RegistryClient::call`]).
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, serde_json::Value), RegistryError> {
        self.call(hyper::Method::POST, path, Some(body)).await
    }

    /// The schema text registered under `id` (`GET /schemas/ids/{id}`).
    /// [`RegistryError::SchemaIdNotFound`] only when the registry says so (HTTP 404,
    /// error code 40403); a 404 without it (a URL that is not a registry's) is
    /// [`RegistryError::Client`].
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let path = format!("/schemas/ids/{id}");
        let (status, reply) = self.call(hyper::Method::GET, &path, None).await?;
        match (
            status,
            reply["schema"].as_str(),
            reply["error_code"].as_u64(),
        ) {
            (200, Some(schema), _) => Ok(schema.to_string()),
            (404, _, Some(40403)) => Err(RegistryError::SchemaIdNotFound(id.to_string())),
            _ => Err(self.not_understood(&path, status, &reply)),
        }
    }

    /// Whether the URL is a schema registry's that answers and accepts the
    /// credentials (`GET /subjects` is a JSON list): `tributary check` and `tributary
    /// schemas`, so a URL that is something else is said to be so, not taken for a
    /// registry that finds every schema incompatible.
    pub async fn check(&self) -> Result<(), RegistryError> {
        let (status, reply) = self.call(hyper::Method::GET, "/subjects", None).await?;
        match status {
            200 if reply.is_array() => Ok(()),
            _ => Err(self.not_understood("/subjects", status, &reply)),
        }
    }

    fn not_understood(&self, path: &str, status: u16, reply: &serde_json::Value) -> RegistryError {
        RegistryError::Client(format!(
            "{}{path}: unexpected answer, HTTP {status}: {} (is the URL a schema registry's?)",
            self.shown,
            reply["message"].as_str().unwrap_or("no message")
        ))
    }

    /// Calls `call` until it returns anything but [`RegistryError::Unavailable`],
    /// waiting [`INITIAL_BACKOFF`], doubling to [`MAX_BACKOFF`], between tries, and
    /// telling `probe` (which logs the outage and shows it in health and metrics).
    /// Fails with [`RegistryError::Outage`] once the outage has lasted the outage
    /// timeout, and with [`RegistryError::StoppedDuringOutage`] when `stopped`
    /// completes while waiting (not during a first try, which has its timeout).
    pub async fn wait_out<T, Fut>(
        &self,
        probe: &Probe,
        stopped: impl Future<Output = ()>,
        mut call: impl FnMut() -> Fut,
    ) -> Result<T, RegistryError>
    where
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut stopped = std::pin::pin!(stopped);
        let mut backoff = INITIAL_BACKOFF;
        let mut started: Option<Instant> = None;
        loop {
            let attempt = call();
            let result = match started {
                None => attempt.await,
                Some(_) => tokio::select! {
                    r = attempt => r,
                    () = &mut stopped => return Err(self.stopped()),
                },
            };
            let error = match result {
                Ok(v) => {
                    probe.up();
                    return Ok(v);
                }
                Err(e @ RegistryError::Unavailable { .. }) => e,
                Err(e @ RegistryError::SchemaIdNotFound(_)) => {
                    // An answer: the registry is up.
                    probe.up();
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            probe.retrying(&error);
            let since = *started.get_or_insert_with(Instant::now);
            let waited = since.elapsed();
            if waited >= self.outage_timeout {
                return Err(RegistryError::Outage {
                    url: self.shown.clone(),
                    waited,
                    last_error: match error {
                        RegistryError::Unavailable { message, .. } => message,
                        other => other.to_string(),
                    },
                });
            }
            let pause = backoff.min(self.outage_timeout - waited);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut stopped => return Err(self.stopped()),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn stopped(&self) -> RegistryError {
        RegistryError::StoppedDuringOutage {
            url: self.shown.clone(),
        }
    }
}

/// Sends `request` over a fresh HTTP/1.1 connection on `io`; the status and body.
async fn send<IO>(
    io: IO,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, Bytes), hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// POSTs a JSON body to a plain-HTTP endpoint with default settings and returns the
/// status and reply as they are (the admin endpoint's savepoint request).
pub(crate) async fn post_json(
    url: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value), RegistryError> {
    admin_request(url, hyper::Method::POST, path, Some(body), None).await
}

/// [`post_json`] with any method, and `Authorization: Bearer TOKEN` when `bearer` is
/// given (the admin endpoint's `/fallback` routes, for `tributary fallback`).
pub(crate) async fn admin_request(
    url: &str,
    method: hyper::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    bearer: Option<&str>,
) -> Result<(u16, serde_json::Value), RegistryError> {
    let mut client = RegistryClient::new(url, &ClientSettings::default())?;
    if let Some(token) = bearer.filter(|t| !t.is_empty()) {
        client.authorization = Some(format!("Bearer {token}"));
    }
    client.exchange(method, path, body).await
}

#[cfg(test)]
mod tests;
