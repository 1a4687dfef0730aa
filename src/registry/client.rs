//! A client for Confluent-compatible schema registries, over HTTP/1.1 or HTTPS: what
//! `tributary schemas`, `tributary check` and Avro Kafka tables need.
//!
//! Owns talking to one registry: its URL (credentials written in it,
//! `https://KEY:SECRET@host`, are taken out of it), HTTP basic authentication
//! (Confluent's `basic.auth.user.info`, `KEY:SECRET`, as Confluent Cloud's API keys
//! use), and what an answer means. The request itself — TLS (rustls with the ring
//! provider, Mozilla's roots, an optional CA file) and its timeout — is
//! [`crate::http`]'s, shared with the webhook sink.
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
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::http::{Endpoint, HttpError, Target, redact};

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

/// Parses `http[s]://[user:password@]host[:port][/path]` (`crate::http::parse_url`),
/// without a query or fragment: the URL is the registry's base.
fn parse_url(url: &str) -> Result<Target, String> {
    if url.contains(['?', '#']) {
        return Err("no query or fragment: the URL is the registry's base".into());
    }
    crate::http::parse_url(url)
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

/// One schema registry: where it is, how to authenticate, how long to wait. Built once
/// per table (or command) and shared; cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    endpoint: Endpoint,
    shown: String,
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
        let endpoint = Endpoint::new(target, settings.ca_file.as_deref()).map_err(invalid)?;
        Ok(RegistryClient {
            endpoint,
            shown,
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
        const JSON: &str = "application/vnd.schemaregistry.v1+json";
        let mut headers = vec![
            ("accept", JSON),
            (
                "user-agent",
                concat!("tributary/", env!("CARGO_PKG_VERSION")),
            ),
        ];
        if let Some(auth) = &self.authorization {
            headers.push(("authorization", auth));
        }
        let body = match body {
            Some(b) => {
                headers.push(("content-type", JSON));
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let response = self
            .endpoint
            .send(method, path, &headers, body, self.request_timeout)
            .await
            .map_err(|e| match e {
                HttpError::Timeout(_) => self.unavailable(format_args!(
                    "no answer within {:?} (registry.request_timeout)",
                    self.request_timeout
                )),
                HttpError::Tls(tls) => RegistryError::Client(format!(
                    "{}: tls handshake refused: {tls} (a private CA? set registry.ca_file)",
                    self.shown
                )),
                HttpError::Request(m) => {
                    RegistryError::Client(format!("{}{path}: {m}", self.shown))
                }
                HttpError::Unreachable(m) => self.unavailable(m),
            })?;
        Ok((
            response.status,
            serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null),
        ))
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

/// POSTs a JSON body to a plain-HTTP endpoint and returns the status and reply as
/// they are, waiting up to `timeout` for the answer (the admin endpoint's savepoint
/// request, answered once the savepoint's checkpoint has committed).
pub(crate) async fn post_json(
    url: &str,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), RegistryError> {
    let client = RegistryClient::new(
        url,
        &ClientSettings {
            request_timeout: timeout,
            ..ClientSettings::default()
        },
    )?;
    client.exchange(hyper::Method::POST, path, Some(body)).await
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
