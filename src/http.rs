//! One HTTP/1.1 request, over plain TCP or TLS, within a timeout: what the schema
//! registry client and the webhook sink share.
//!
//! Owns: taking an `http[s]://` URL apart ([`Target`]), the TLS client configuration
//! (rustls with the ring provider, Mozilla's roots from `webpki-roots`, plus the CA
//! certificates of an optional PEM file), and sending one request on a fresh
//! connection ([`Endpoint::send`]) with its status, headers and body back. What an
//! answer means is the caller's business.
//!
//! Invariants:
//! - Every request succeeds or fails within its timeout, connection and TLS handshake
//!   included; a request given up on takes its connection with it.
//! - A transport failure (no connection, the connection dropped, no answer in time) is
//!   [`HttpError::Unreachable`] or [`HttpError::Timeout`]; a TLS handshake rustls
//!   refuses (an untrusted certificate, a wrong name) is [`HttpError::Tls`], a setting
//!   to fix rather than an outage.
//! - Credentials written in a URL never appear in what [`Target::shown`] or [`redact`]
//!   return.
//!
//! Imports nothing of ours: it sits below `registry` and `connectors`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio_rustls::rustls;

/// A URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// The host as written (an IPv6 address in brackets).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written: the `Host` header.
    pub authority: String,
    /// The path, without the trailing `/` (often ""), with its query if it has one.
    pub base: String,
    /// `user:password` from the URL, percent-decoded.
    pub user_info: Option<String>,
}

impl Target {
    /// The URL as shown in messages: without credentials (nor query, which may carry
    /// a token).
    pub fn shown(&self) -> String {
        let path = self.base.split('?').next().unwrap_or_default();
        format!(
            "{}://{}{path}",
            if self.https { "https" } else { "http" },
            self.authority,
        )
    }
}

/// Parses `http[s]://[user:password@]host[:port][/path][?query]`; a fragment is
/// refused.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    let (https, rest) = if lower.starts_with("https://") {
        (true, &url["https://".len()..])
    } else if lower.starts_with("http://") {
        (false, &url["http://".len()..])
    } else {
        return Err("expected an http:// or https:// URL".into());
    };
    let (authority, path) = match rest.find(['/', '?']) {
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
    if path.contains('#') {
        return Err("no fragment in the URL".into());
    }
    let base = match path.split_once('?') {
        Some((p, q)) => format!("{}?{q}", p.trim_end_matches('/')),
        None => path.trim_end_matches('/').to_string(),
    };
    Ok(Target {
        https,
        authority: host_port.to_string(),
        host,
        port,
        base,
        user_info,
    })
}

/// `url` with any credentials in it masked, for a message about a URL that does not
/// parse.
pub fn redact(url: &str) -> String {
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

/// rustls with the ring provider, trusting Mozilla's roots and those in `ca_file`.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
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

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    /// No connection, or it dropped before the answer.
    #[error("{0}")]
    Unreachable(String),
    /// No answer within the request's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// rustls refused the handshake (certificate not trusted, wrong name, no common
    /// protocol): a setting to fix.
    #[error("tls handshake refused: {0}")]
    Tls(String),
    /// The request could not be built (a bad header value).
    #[error("{0}")]
    Request(String),
}

impl HttpError {
    /// Whether retrying may help (an outage rather than a setting).
    pub fn is_transient(&self) -> bool {
        matches!(self, HttpError::Unreachable(_) | HttpError::Timeout(_))
    }
}

/// An answer: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// Where requests go: a [`Target`] and, for HTTPS, the TLS settings and the server's
/// name. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    pub target: Target,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.target.shown())
            .finish()
    }
}

impl Endpoint {
    /// The endpoint of `target`; `ca_file` adds trusted CAs for `https://`.
    pub fn new(target: Target, ca_file: Option<&Path>) -> Result<Self, String> {
        let tls = if target.https {
            let name = target.host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(name.to_string())
                .map_err(|e| format!("host {name}: {e}"))?;
            Some((tls_config(ca_file)?, name))
        } else {
            None
        };
        Ok(Endpoint { target, tls })
    }

    /// Sends `method` to `path` (appended to the target's base path) with `headers`
    /// (besides `Host`) and `body`, on a fresh connection, within `timeout`.
    pub async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        match tokio::time::timeout(timeout, self.send_now(method, path, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout(timeout)),
        }
    }

    async fn send_now(
        &self,
        method: hyper::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, HttpError> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.target.base))
            .header("host", &self.target.authority);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| HttpError::Request(e.to_string()))?;
        let addr = format!("{}:{}", self.target.host, self.target.port);
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| HttpError::Unreachable(format!("cannot connect to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => exchange(hyper_util::rt::TokioIo::new(tcp), request).await,
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(tls_failure)?;
                exchange(hyper_util::rt::TokioIo::new(tls), request).await
            }
        }
        .map_err(|e| HttpError::Unreachable(format!("{path}: {e}")))
    }
}

/// A failed TLS handshake: refused by rustls is a setting to fix; the connection
/// dropping is an outage.
fn tls_failure(e: std::io::Error) -> HttpError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => HttpError::Tls(tls.to_string()),
        None => HttpError::Unreachable(format!("tls handshake: {e}")),
    }
}

/// Aborts a spawned task when dropped (a request given up on takes its connection
/// with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `request` over a fresh HTTP/1.1 connection on `io`.
async fn exchange<IO>(
    io: IO,
    request: hyper::Request<Full<Bytes>>,
) -> Result<Response, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Response {
        status,
        headers,
        body,
    })
}
