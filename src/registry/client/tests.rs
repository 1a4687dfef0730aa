//! Tests of the registry client against real servers on loopback: the built-in
//! registry (plain, and behind a TLS front with a private CA that requires basic
//! authentication), servers that answer fixed statuses, one that never answers, and a
//! port where nothing listens.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::rustls;

use super::*;
use crate::health::{Probe, State};
use crate::registry::Registry;

const ORDER: &str =
    r#"{"type":"record","name":"Order","namespace":"t","fields":[{"name":"id","type":"long"}]}"#;

fn settings() -> ClientSettings {
    ClientSettings {
        request_timeout: Duration::from_secs(5),
        ..ClientSettings::default()
    }
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The built-in registry in `dir`, with `ORDER` registered; its id.
async fn registry_with_order(dir: &std::path::Path) -> (Arc<Registry>, u32) {
    let registry = Arc::new(Registry::open(dir).await.unwrap());
    let id = registry
        .register("orders-value", ORDER, false)
        .await
        .unwrap();
    (registry, id)
}

/// Serves `listener` with the built-in registry's REST API, plain HTTP.
fn serve_plain(listener: TcpListener, registry: Arc<Registry>) {
    tokio::spawn(crate::registry::server::serve(
        listener,
        registry,
        futures::future::pending(),
    ));
}

/// A private CA, and a server certificate it signed for `localhost` and 127.0.0.1:
/// the CA's PEM, the server's certificate and key.
fn private_ca() -> (
    String,
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "tributary test ca");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
    (
        ca.pem(),
        leaf.der().clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// The built-in registry behind HTTPS (a certificate of a private CA) that requires
/// HTTP basic authentication with `user_info`, as a managed registry does; answers
/// 401 with Confluent's error body otherwise. Returns the address and the CA's PEM.
async fn tls_front(registry: Arc<Registry>, user_info: &'static str) -> (SocketAddr, String) {
    use base64::Engine;
    let (ca_pem, cert, key) = private_ca();
    #[allow(deprecated)] // see tls_config
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_info)
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, registry, expected) =
                (acceptor.clone(), registry.clone(), expected.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let registry = registry.clone();
                    let authorised = req
                        .headers()
                        .get("authorization")
                        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                    async move {
                        if authorised {
                            crate::registry::server::handle(registry, req).await
                        } else {
                            Ok(fixed(401, r#"{"error_code":401,"message":"Unauthorized"}"#))
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, ca_pem)
}

fn fixed(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

/// A plain-HTTP server answering every request with `status` and `body`.
async fn answering(status: u16, body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req: Request<_>| async move {
                    Ok::<_, Infallible>(fixed(status, body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

#[test]
fn urls_are_taken_apart_and_their_credentials_decoded() {
    let t = parse_url("http://127.0.0.1:8081").unwrap();
    assert_eq!(
        (t.https, t.host.as_str(), t.port),
        (false, "127.0.0.1", 8081)
    );
    assert_eq!((t.base.as_str(), t.user_info), ("", None));
    let t = parse_url("HTTPS://KEY:se%2Fcr%40et@psrc-x.eu-west-1.aws.confluent.cloud/").unwrap();
    assert!(t.https);
    assert_eq!(t.host, "psrc-x.eu-west-1.aws.confluent.cloud");
    assert_eq!(t.port, 443);
    assert_eq!(t.user_info.as_deref(), Some("KEY:se/cr@et"));
    assert_eq!(t.shown(), "https://psrc-x.eu-west-1.aws.confluent.cloud");
    let t = parse_url("http://[::1]:8081/registry/").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("[::1]", 8081));
    assert_eq!(t.base, "/registry");
    assert_eq!(t.shown(), "http://[::1]:8081/registry");
    assert_eq!(parse_url("http://registry").unwrap().port, 80);
    for bad in [
        "registry:8081",
        "ftp://x",
        "http://",
        "http://x:port",
        "http://x/?a=1",
    ] {
        assert!(parse_url(bad).is_err(), "{bad} should be refused");
    }
}

#[test]
fn credentials_come_from_the_url_or_the_user_info_and_are_never_shown() {
    let header = |c: &RegistryClient| c.authorization.clone().unwrap_or_default();
    // Confluent's basic.auth.user.info.
    let with_info = ClientSettings {
        basic_auth_user_info: Some("KEY:SECRET".into()),
        ..settings()
    };
    let c = RegistryClient::new("https://registry.example", &with_info).unwrap();
    assert_eq!(header(&c), "Basic S0VZOlNFQ1JFVA==");
    // In the URL: they win over the settings'.
    let c =
        RegistryClient::new("https://URLKEY:URL%3ASECRET@registry.example", &with_info).unwrap();
    assert_eq!(header(&c), "Basic VVJMS0VZOlVSTDpTRUNSRVQ=");
    assert_eq!(c.url(), "https://registry.example");
    assert!(!format!("{c:?}").contains("SECRET"), "{c:?}");
    // None at all.
    let c = RegistryClient::new("http://127.0.0.1:8081", &settings()).unwrap();
    assert_eq!(c.authorization, None);
    // KEY:SECRET, nothing else.
    let e = RegistryClient::new(
        "http://127.0.0.1:8081",
        &ClientSettings {
            basic_auth_user_info: Some("just-a-key".into()),
            ..settings()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("KEY:SECRET"), "{e}");
    let e = RegistryClient::new("http://KEY:SECRET@host:port", &settings()).unwrap_err();
    assert!(!e.to_string().contains("SECRET"), "{e}");
    assert_eq!(e.code(), "REG024");
    // A CA file that is not there is a settings error, named.
    let e = RegistryClient::new(
        "https://registry.example",
        &ClientSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..settings()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
}

#[tokio::test]
async fn https_with_a_private_ca_and_basic_auth_fetches_a_schema_and_other_credentials_are_refused()
{
    let dir = tempfile::tempdir().unwrap();
    let (registry, id) = registry_with_order(&dir.path().join("reg")).await;
    let (addr, ca_pem) = tls_front(registry, "KEY:SECRET").await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let trusting = ClientSettings {
        ca_file: Some(ca_file),
        ..settings()
    };
    let with = |user_info: &str| ClientSettings {
        basic_auth_user_info: Some(user_info.into()),
        ..trusting.clone()
    };
    let url = format!("https://127.0.0.1:{}", addr.port());

    let client = RegistryClient::new(&url, &with("KEY:SECRET")).unwrap();
    let schema = client.schema_by_id(id).await.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&schema).unwrap(),
        serde_json::from_str::<serde_json::Value>(ORDER).unwrap()
    );
    client.check().await.unwrap();
    // Credentials in the URL, the host by name.
    let in_url = format!("https://KEY:SECRET@localhost:{}", addr.port());
    let client = RegistryClient::new(&in_url, &trusting).unwrap();
    assert_eq!(client.schema_by_id(id).await.unwrap(), schema);
    // An id the registry does not have: its definite answer.
    assert!(matches!(
        client.schema_by_id(id + 100).await,
        Err(RegistryError::SchemaIdNotFound(_))
    ));

    // Wrong or no credentials: refused, naming the refusal.
    for settings in [with("KEY:WRONG"), trusting.clone()] {
        let client = RegistryClient::new(&url, &settings).unwrap();
        match client.schema_by_id(id).await {
            Err(e @ RegistryError::Refused { status: 401, .. }) => {
                assert_eq!(e.code(), "REG026");
                assert!(e.to_string().contains("refused the credentials"), "{e}");
                assert!(!e.to_string().contains("WRONG"), "{e}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(matches!(
            client.check().await,
            Err(RegistryError::Refused { .. })
        ));
    }

    // Without the private CA the certificate is not trusted: a setting to fix, not an
    // outage to wait out.
    let client = RegistryClient::new(&url, &with("KEY:SECRET").clone_without_ca()).unwrap();
    match client.schema_by_id(id).await {
        Err(e @ RegistryError::Client(_)) => {
            assert!(e.to_string().contains("tls handshake refused"), "{e}")
        }
        other => panic!("expected an untrusted certificate, got {other:?}"),
    }
}

impl ClientSettings {
    fn clone_without_ca(&self) -> ClientSettings {
        ClientSettings {
            ca_file: None,
            ..self.clone()
        }
    }
}

#[tokio::test]
async fn unreachable_timeouts_5xx_and_429_are_outages_and_a_404_without_40403_is_not_bad_data() {
    let nobody =
        RegistryClient::new(&format!("http://127.0.0.1:{}", free_port()), &settings()).unwrap();
    assert!(matches!(
        nobody.schema_by_id(1).await,
        Err(RegistryError::Unavailable { .. })
    ));
    for status in [500, 502, 503, 429, 408] {
        let addr = answering(status, r#"{"error_code":50001,"message":"store down"}"#).await;
        let c = RegistryClient::new(&format!("http://{addr}"), &settings()).unwrap();
        match c.schema_by_id(1).await {
            Err(e @ RegistryError::Unavailable { .. }) => assert_eq!(e.code(), "REG025"),
            other => panic!("HTTP {status}: expected unavailable, got {other:?}"),
        }
    }
    let addr = answering(403, r#"{"error_code":40301,"message":"forbidden"}"#).await;
    let c = RegistryClient::new(&format!("http://{addr}"), &settings()).unwrap();
    assert!(matches!(
        c.schema_by_id(1).await,
        Err(RegistryError::Refused { status: 403, .. })
    ));
    // A 404 that is not the registry saying "no such id" (a wrong path, a proxy).
    let addr = answering(404, "not found").await;
    let c = RegistryClient::new(&format!("http://{addr}"), &settings()).unwrap();
    assert!(matches!(
        c.schema_by_id(1).await,
        Err(RegistryError::Client(_))
    ));

    // A server that takes the connection and never answers: the request timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    let c = RegistryClient::new(
        &format!("http://{addr}"),
        &ClientSettings {
            request_timeout: Duration::from_millis(300),
            ..settings()
        },
    )
    .unwrap();
    let started = Instant::now();
    match c.schema_by_id(1).await {
        Err(RegistryError::Unavailable { message, .. }) => {
            assert!(message.contains("no answer within"), "{message}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    held.abort();
}

#[tokio::test]
async fn an_outage_is_waited_out_until_the_registry_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, id) = registry_with_order(dir.path()).await;
    let port = free_port();
    let client = RegistryClient::new(&format!("http://127.0.0.1:{port}"), &settings()).unwrap();
    let probe = Probe::detached("schema-registry");
    let mut tries = 0;
    let mut registry = Some(registry);
    let schema = client
        .wait_out(&probe, futures::future::pending(), || {
            tries += 1;
            if tries == 3 {
                // Two tries failed: the registry starts on the port.
                assert!(matches!(probe.state(), State::Retrying { .. }));
                let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
                listener.set_nonblocking(true).unwrap();
                serve_plain(
                    TcpListener::from_std(listener).unwrap(),
                    registry.take().unwrap(),
                );
            }
            client.schema_by_id(id)
        })
        .await
        .unwrap();
    assert!(schema.contains("Order"));
    assert_eq!(tries, 3);
    assert_eq!(probe.state(), State::Up);
}

#[tokio::test]
async fn an_outage_longer_than_the_outage_timeout_fails_and_a_stop_ends_the_wait() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let client = RegistryClient::new(
        &url,
        &ClientSettings {
            outage_timeout: Duration::from_millis(700),
            ..settings()
        },
    )
    .unwrap();
    let probe = Probe::detached("schema-registry");
    let started = Instant::now();
    match client
        .wait_out(&probe, futures::future::pending(), || {
            client.schema_by_id(1)
        })
        .await
    {
        Err(e @ RegistryError::Outage { .. }) => {
            assert_eq!(e.code(), "REG027");
            let text = e.to_string();
            assert!(
                text.contains(&url) && text.contains("outage_timeout"),
                "{text}"
            );
        }
        other => panic!("expected the outage to time out, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert!(matches!(probe.state(), State::Retrying { .. }));

    // Stopped while waiting: its own error, at once rather than at the timeout.
    let client = RegistryClient::new(&url, &settings()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stop = Some(stop);
    let started = Instant::now();
    let r = client
        .wait_out(
            &probe,
            async {
                let _ = stopped.await;
            },
            || {
                if let Some(s) = stop.take() {
                    s.send(()).unwrap();
                }
                client.schema_by_id(1)
            },
        )
        .await;
    assert!(
        matches!(r, Err(RegistryError::StoppedDuringOutage { .. })),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Serves the built-in registry under the path `prefix` (as behind a proxy that
/// routes `/registry/…` to it); anything else is a plain 404 page.
async fn serve_under(prefix: &'static str, registry: Arc<Registry>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let registry = registry.clone();
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let Some(rest) = parts
                            .uri
                            .path_and_query()
                            .and_then(|p| p.as_str().strip_prefix(prefix).map(str::to_string))
                        else {
                            return Ok(fixed(404, "<html>Not Found</html>"));
                        };
                        parts.uri = rest.parse().unwrap();
                        crate::registry::server::handle(registry, Request::from_parts(parts, body))
                            .await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_registry_under_a_path_is_reached_and_a_url_that_is_no_registry_is_said_to_be() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, id) = registry_with_order(dir.path()).await;
    let addr = serve_under("/registry", registry).await;
    for url in [
        format!("http://{addr}/registry"),
        format!("http://{addr}/registry/"),
    ] {
        let c = RegistryClient::new(&url, &settings()).unwrap();
        c.check().await.unwrap();
        assert!(c.schema_by_id(id).await.unwrap().contains("Order"), "{url}");
    }
    // The server's root is not the registry: check says so instead of succeeding.
    let c = RegistryClient::new(&format!("http://{addr}"), &settings()).unwrap();
    match c.check().await {
        Err(e @ RegistryError::Client(_)) => {
            assert!(
                e.to_string().contains("is the URL a schema registry's?"),
                "{e}"
            )
        }
        other => panic!("expected not a registry, got {other:?}"),
    }
    // A web server that answers 200 with a page is no registry either.
    let page = answering(200, "<html>hello</html>").await;
    let c = RegistryClient::new(&format!("http://{page}"), &settings()).unwrap();
    assert!(matches!(c.check().await, Err(RegistryError::Client(_))));
}
