//! `tributary registry` and `tributary schemas`: the repository's own contracts are
//! registered in a freshly started built-in registry, pass `schemas check`, and a
//! contract that breaks compatibility is refused with the field and rule.
//! (Confluent's own client drives the registry in tests/python/test_registry.py.)

use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A running `tributary registry`, killed when dropped.
pub struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tributary registry` on a free port, its state in `dir/reg`; its URL.
pub fn start_registry(dir: &std::path::Path) -> (Registry, String) {
    start_registry_on(dir, free_port())
}

/// `tributary registry` on `port`, its state in `dir/reg`, once it accepts
/// connections; its URL.
pub fn start_registry_on(dir: &std::path::Path, port: u16) -> (Registry, String) {
    let listen = format!("127.0.0.1:{port}");
    let child = tributary(dir)
        .args(["registry", "--listen", &listen, "--dir", "reg"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary runs");
    let registry = Registry(child);
    // Ready when it accepts connections.
    let started = Instant::now();
    while TcpStream::connect(&listen).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the registry did not listen on {listen}"
        );
        std::thread::yield_now();
    }
    (registry, format!("http://{listen}"))
}

#[test]
fn contracts_register_check_and_refuse_an_incompatible_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_registry, url) = start_registry(d);
    let schemas = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let schemas = schemas.to_str().unwrap();

    let o = run(
        d,
        &["schemas", "register", "--dir", schemas, "--registry", &url],
    );
    ok(&o);
    let count = std::fs::read_dir(schemas)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "avsc")
        })
        .count();
    assert_eq!(
        stdout(&o).matches("registered as id").count(),
        count,
        "{}",
        stdout(&o)
    );
    let o = run(
        d,
        &["schemas", "check", "--dir", schemas, "--registry", &url],
    );
    ok(&o);
    // A URL that is not the registry's (a wrong path): said so, exit 2, not
    // "incompatible" with exit 1.
    let wrong = format!("{url}/nope");
    let o = run(
        d,
        &["schemas", "check", "--dir", schemas, "--registry", &wrong],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is the URL a schema registry's?"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("not compatible"), "{}", stderr(&o));

    // A new field without a default: old events cannot be read with it (BACKWARD).
    let mut placed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{schemas}/orders.order_placed.avsc")).unwrap(),
    )
    .unwrap();
    placed["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "loyalty_tier", "type": "string"}));
    write(
        &d.join("changed/orders.order_placed.avsc"),
        &placed.to_string(),
    );
    let o = run(
        d,
        &["schemas", "check", "--dir", "changed", "--registry", &url],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("orders.order_placed-value"), "{e}");
    assert!(
        e.contains("READER_FIELD_MISSING_DEFAULT_VALUE") && e.contains("loyalty_tier"),
        "{e}"
    );

    // An unreachable registry is exit code 2, not a failed check.
    let o = run(
        d,
        &[
            "schemas",
            "check",
            "--dir",
            schemas,
            "--registry",
            "http://127.0.0.1:9",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
