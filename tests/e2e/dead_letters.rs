//! The dead-letter admin workflow through the binary: `tributary dlq …` on a local
//! store written through its pipeline sink, and the same operations on a running
//! process's admin endpoint, with the admin token.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use tributary::connectors::dead_letters::DeadLetterStore;
use tributary::connectors::dead_letters::local::LocalStore;
use tributary::dlq::BadRecordReason;
use tributary::dlq::record::{DeadLetter, Origin, PayloadFormat, Status, to_batch};
use tributary::types::TaskInfo;

use crate::common::*;

const TOKEN: &str = "s3cret";

/// A pipeline `shop` whose source table `orders` has a CHECK, for edits to be checked
/// against.
fn shop_pipeline(d: &Path) {
    write(&d.join("in.jsonl"), "");
    write(
        &d.join("pipelines/shop.yaml"),
        "name: shop\nsql: |\n  CREATE TABLE orders (order_id BIGINT NOT NULL, total DOUBLE CHECK (total >= 0))\n    WITH (connector = 'file', path = 'in.jsonl', format = 'json');\n  CREATE TABLE out WITH (connector = 'file', path = 'out.jsonl');\n  INSERT INTO out SELECT * FROM orders;\n",
    );
}

fn letter(
    pipeline: &str,
    class: BadRecordReason,
    table: Option<&str>,
    payload: &[u8],
    at: i64,
) -> DeadLetter {
    DeadLetter {
        id: DeadLetter::new_id(),
        pipeline: pipeline.into(),
        node: table.unwrap_or("stage_1").into(),
        failure_class: class,
        message: format!("{} record", class.as_str()),
        payload: payload.to_vec(),
        payload_format: PayloadFormat::Bytes,
        source: Origin {
            table: table.map(str::to_string),
            file: table.map(|_| "in.jsonl".to_string()),
            line: table.map(|_| at % 100),
            ..Origin::default()
        },
        schema_id: None,
        event_time: None,
        first_failure: at,
        last_failure: at,
        attempts: 1,
        status: Status::Pending,
        status_reason: None,
        original_payload: None,
    }
}

/// Writes `letters` into the local store at `path` through the pipeline's dead-letter
/// sink, as a running pipeline does.
fn write_letters(path: &Path, letters: &[DeadLetter]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = LocalStore::open(path).unwrap();
        let task = TaskInfo {
            pipeline: letters[0].pipeline.as_str().into(),
            node: "dead_letters".into(),
            partition: 0,
            parallelism: 1,
            state: tributary::state::memory_backend(),
        };
        let mut sink = store
            .sink(&letters[0].pipeline)
            .unwrap()
            .create(&task, tributary::dlq::record::schema())
            .unwrap();
        sink.write(to_batch(letters)).await.unwrap();
        sink.finish().await.unwrap();
    });
}

/// `tributary dlq ARGS` in `d` on the store `dlq.sqlite`, with the admin token
/// configured when `token` is set (through the environment, as documented).
fn dlq(d: &Path, token: bool, args: &[&str]) -> Output {
    let mut c = tributary(d);
    c.env_remove("TRIBUTARY_ADMIN_TOKEN")
        .env_remove("USER")
        .args(["--set", "dlq.path=dlq.sqlite", "dlq"])
        .args(args);
    if token {
        c.env("TRIBUTARY__DLQ__ADMIN_TOKEN", TOKEN);
    }
    c.stdin(std::process::Stdio::null()).output().unwrap()
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn refused(o: &Output, code: &str, fragment: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
    let err = stderr(o);
    assert!(
        err.contains(&format!("error[{code}]")) && err.contains(fragment),
        "expected {code} with '{fragment}':\n{err}"
    );
}

#[test]
fn dlq_commands_list_show_and_change_dead_letters_with_the_token_and_audit_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    shop_pipeline(d);
    let t0 = 1_800_000_000_000;
    let malformed = letter(
        "shop",
        BadRecordReason::Malformed,
        Some("orders"),
        b"{\"order_id\": 1, \"total\":",
        t0,
    );
    let negative = letter(
        "shop",
        BadRecordReason::Constraint,
        Some("orders"),
        b"{\"order_id\":2,\"total\":-5.0}",
        t0 + 1,
    );
    let operator_row = DeadLetter {
        payload_format: PayloadFormat::Row,
        ..letter(
            "shop",
            BadRecordReason::Processing,
            None,
            b"{\"n\":1}",
            t0 + 2,
        )
    };
    let avro = DeadLetter {
        schema_id: Some(7),
        ..letter(
            "other",
            BadRecordReason::SchemaMismatch,
            Some("clicks"),
            &[0, 2, 0xff, 0x10],
            t0 + 3,
        )
    };
    write_letters(
        &d.join("dlq.sqlite"),
        &[malformed.clone(), negative.clone(), operator_row.clone()],
    );
    write_letters(&d.join("dlq.sqlite"), std::slice::from_ref(&avro));

    // list: JSON lines, oldest first, filtered.
    let o = dlq(d, false, &["list", "--format", "json"]);
    ok(&o);
    let listed = lines(&o);
    let ids: Vec<&str> = listed.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [&malformed.id, &negative.id, &operator_row.id, &avro.id]
    );
    assert_eq!(listed[1]["pipeline"], "shop");
    assert_eq!(listed[1]["failure_class"], "constraint");
    assert_eq!(listed[1]["message"], "constraint record");
    assert_eq!(listed[1]["source"]["table"], "orders");
    assert_eq!(listed[1]["status"], "pending");
    let o = dlq(
        d,
        false,
        &[
            "list",
            "--class",
            "constraint",
            "--since",
            "2027-01-01T00:00:00Z",
            "--format",
            "json",
        ],
    );
    ok(&o);
    assert_eq!(lines(&o).len(), 1);
    let o = dlq(
        d,
        false,
        &[
            "list",
            "--pipeline",
            "other",
            "--limit",
            "1",
            "--format",
            "json",
        ],
    );
    assert_eq!(lines(&o)[0]["id"], avro.id.as_str());
    refused(
        &dlq(d, false, &["list", "--class", "broken"]),
        "DLQ006",
        "unknown failure class broken (known: malformed, schema_mismatch",
    );
    refused(
        &dlq(d, false, &["list", "--since", "yesterday"]),
        "DLQ006",
        "RFC 3339",
    );
    let o = dlq(d, false, &["list"]);
    ok(&o);
    let table = stdout(&o);
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains(&negative.id) && table.contains("in.jsonl"),
        "{table}"
    );

    // show: JSON payloads pretty-printed, binary ones in base64 with their schema id.
    let o = dlq(d, false, &["show", &negative.id]);
    ok(&o);
    let shown = stdout(&o);
    assert!(shown.contains("\"total\": -5.0"), "{shown}");
    assert!(shown.contains("constraint record"), "{shown}");
    let o = dlq(d, false, &["show", &avro.id]);
    assert!(stdout(&o).contains("base64, schema id 7"), "{}", stdout(&o));
    assert!(stdout(&o).contains("AAL/EA=="), "{}", stdout(&o));
    let o = dlq(d, false, &["show", &negative.id, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["payload_decoded"]["order_id"], 2);
    refused(
        &dlq(d, false, &["show", "nope"]),
        "DLQ002",
        "no dead letter nope",
    );

    // stats.
    let o = dlq(d, false, &["stats", "--format", "json"]);
    ok(&o);
    let stats: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(stats["total"], 4);
    assert_eq!(stats["pending"], 4);
    assert_eq!(stats["oldest_pending"], t0);
    assert_eq!(stats["groups"].as_array().unwrap().len(), 4);

    // A discard needs a reason (clap refuses before anything runs).
    let o = dlq(d, false, &["discard", &operator_row.id]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--reason"), "{}", stderr(&o));

    // A dry run counts and changes nothing.
    let o = dlq(d, true, &["replay", "--pipeline", "shop", "--dry-run"]);
    ok(&o);
    assert!(
        stdout(&o).contains("dry run: 2 pending record(s) would be replayed; 1 selected record(s) have no source table"),
        "{}",
        stdout(&o)
    );
    let o = dlq(
        d,
        false,
        &["list", "--status", "pending", "--format", "json"],
    );
    assert_eq!(lines(&o).len(), 4);

    // Changes need the configured token.
    refused(
        &dlq(d, true, &["replay", &malformed.id]),
        "DLQ005",
        "needs the admin token",
    );
    refused(
        &dlq(d, true, &["replay", &malformed.id, "--token", "nope"]),
        "DLQ005",
        "the admin token is wrong",
    );
    refused(
        &dlq(d, true, &["discard", &operator_row.id, "--reason", "x"]),
        "DLQ005",
        "needs the admin token",
    );
    let o = dlq(
        d,
        true,
        &[
            "replay",
            &malformed.id,
            "--token",
            TOKEN,
            "--actor",
            "alice",
        ],
    );
    ok(&o);
    assert_eq!(
        stdout(&o).trim(),
        "replayed 1, skipped 0 (already replayed or discarded)"
    );

    // Edits are checked against the record's table; a refused one changes nothing.
    let edit = |payload: &str| {
        let mut c = tributary(d);
        c.env_remove("TRIBUTARY_ADMIN_TOKEN")
            .env("USER", "bob")
            .env("TRIBUTARY__DLQ__ADMIN_TOKEN", TOKEN)
            .env("TRIBUTARY_ADMIN_TOKEN", TOKEN)
            .args(["--set", "dlq.path=dlq.sqlite", "dlq", "edit", &negative.id])
            .args(["--payload", payload]);
        c.output().unwrap()
    };
    refused(
        &edit("{\"order_id\": 2, \"total\":"),
        "DLQ004",
        "not valid JSON",
    );
    refused(
        &edit("{\"order_id\": \"two\"}"),
        "DLQ004",
        "schema_mismatch",
    );
    refused(
        &edit("{\"order_id\": 2, \"total\": -1}"),
        "DLQ004",
        "the edited record is refused: table orders: CHECK (total >= 0) failed",
    );
    refused(
        &dlq(
            d,
            true,
            &[
                "edit",
                &operator_row.id,
                "--payload",
                "{}",
                "--token",
                TOKEN,
            ],
        ),
        "DLQ004",
        "has no source table",
    );
    let o = dlq(d, false, &["show", &negative.id, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v["original_payload"],
        serde_json::Value::Null,
        "no edit yet"
    );
    write(&d.join("fixed.json"), "{\"order_id\": 2, \"total\": 5}");
    let o = {
        let mut c = tributary(d);
        c.env_remove("TRIBUTARY_ADMIN_TOKEN")
            .env("USER", "bob")
            .env("TRIBUTARY__DLQ__ADMIN_TOKEN", TOKEN)
            .env("TRIBUTARY_ADMIN_TOKEN", TOKEN)
            .args(["--set", "dlq.path=dlq.sqlite", "dlq", "edit", &negative.id])
            .args(["--file", "fixed.json"]);
        c.output().unwrap()
    };
    ok(&o);
    let o = dlq(d, false, &["show", &negative.id]);
    let shown = stdout(&o);
    assert!(shown.contains("\"total\": 5"), "{shown}");
    assert!(shown.contains("original payload"), "{shown}");
    assert!(
        shown.contains("\"total\": -5.0"),
        "the original is kept: {shown}"
    );

    // Discard with a reason, then replay every pending record of the pipeline.
    let o = dlq(
        d,
        true,
        &[
            "discard",
            &operator_row.id,
            "--reason",
            "operator bug, fixed",
            "--token",
            TOKEN,
            "--actor",
            "carol",
        ],
    );
    ok(&o);
    assert_eq!(stdout(&o).trim(), "discarded 1");
    let o = dlq(d, true, &["replay", "--pipeline", "shop", "--token", TOKEN]);
    ok(&o);
    assert_eq!(
        stdout(&o).trim(),
        "replayed 1, skipped 0 (already replayed or discarded)"
    );

    let o = dlq(d, false, &["list", "--format", "json"]);
    let status: Vec<(String, String)> = lines(&o)
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_string(),
                l["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        status,
        [
            (malformed.id.clone(), "replayed".to_string()),
            (negative.id.clone(), "replayed".to_string()),
            (operator_row.id.clone(), "discarded".to_string()),
            (avro.id.clone(), "pending".to_string()),
        ]
    );

    // The audit log has every change, newest first, with who and which records.
    let o = dlq(d, false, &["audit", "--format", "json"]);
    ok(&o);
    let audit = lines(&o);
    let got: Vec<(&str, &str, Vec<&str>)> = audit
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("replay", "unknown", vec![negative.id.as_str()]),
            ("discard", "carol", vec![operator_row.id.as_str()]),
            ("edit", "bob", vec![negative.id.as_str()]),
            ("replay", "alice", vec![malformed.id.as_str()]),
        ]
    );
    assert!(
        audit[1]["detail"]
            .as_str()
            .unwrap()
            .contains("operator bug, fixed"),
        "{audit:?}"
    );
    let o = dlq(d, false, &["audit"]);
    ok(&o);
    assert!(stdout(&o).contains("carol"), "{}", stdout(&o));
}

/// One HTTP/1.1 exchange: (status line, body).
fn http(addr: &str, method: &str, target: &str, headers: &[&str], body: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, rest) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), rest.to_string())
}

#[test]
fn the_admin_endpoint_serves_the_same_operations_behind_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    shop_pipeline(d);
    let t0 = 1_800_000_000_000;
    let letters = [
        letter("shop", BadRecordReason::Malformed, Some("orders"), b"{", t0),
        letter(
            "shop",
            BadRecordReason::Late,
            Some("orders"),
            b"{\"order_id\":3}",
            t0 + 1,
        ),
    ];
    write_letters(&d.join("dlq.sqlite"), &letters);
    write(
        &d.join("p.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', rate = '100');\n\
         CREATE TABLE out WITH (connector = 'file', path = 'out.jsonl');\n\
         INSERT INTO out SELECT order_id FROM orders;\n",
    );
    let mut r = Running::start(
        d,
        &[
            "p.sql",
            "--set",
            "dlq.path=dlq.sqlite",
            "--set",
            &format!("dlq.admin_token={TOKEN}"),
        ],
    );
    let ready = r.wait_for_log(
        "admin endpoint: /metrics and /healthz",
        Duration::from_secs(60),
    );
    let addr = ready["addr"].as_str().unwrap().to_string();

    let (status, body) = http(&addr, "GET", "/dlq?pipeline=shop&class=late", &[], "");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let listed: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], letters[1].id.as_str());
    let (status, body) = http(&addr, "GET", &format!("/dlq/{}", letters[1].id), &[], "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let full: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(full["failure_class"], "late");
    assert_eq!(full["payload_decoded"]["order_id"], 3);
    let (_, body) = http(&addr, "GET", "/dlq/stats", &[], "");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["pending"],
        2
    );

    let replay = "/dlq/replay?status=pending";
    let (status, body) = http(&addr, "POST", replay, &[], "");
    assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{body}");
    let (status, _) = http(&addr, "POST", replay, &["Authorization: Bearer nope"], "");
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (status, body) = http(
        &addr,
        "POST",
        &format!("{replay}&dry_run=true"),
        &[&auth],
        "",
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let dry: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (dry["selected"].as_u64(), dry["replayed"].as_u64()),
        (Some(2), Some(0))
    );
    // An edit over HTTP, checked against the pipeline file (found by name).
    let edit = format!("/dlq/{}/edit", letters[0].id);
    let (status, body) = http(
        &addr,
        "POST",
        &edit,
        &[&auth],
        "{\"order_id\": 1, \"total\": -1}",
    );
    assert_eq!(status, "HTTP/1.1 422 Unprocessable Entity", "{body}");
    assert!(body.contains("CHECK (total >= 0) failed"), "{body}");
    let (status, body) = http(
        &addr,
        "POST",
        &edit,
        &[&auth, "x-tributary-actor: dana"],
        "{\"order_id\": 1, \"total\": 1}",
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let (status, body) = http(
        &addr,
        "POST",
        replay,
        &[&auth, "x-tributary-actor: dana"],
        "",
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["replayed"],
        2
    );
    let (_, body) = http(&addr, "GET", "/dlq/audit", &[], "");
    let audit: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(audit.len(), 2, "{body}");
    assert_eq!(
        (audit[0]["action"].as_str(), audit[0]["actor"].as_str()),
        (Some("replay"), Some("dana"))
    );
    assert_eq!(audit[1]["action"], "edit");
    // The other routes still answer.
    let (status, _) = http(&addr, "GET", "/livez", &[], "");
    assert_eq!(status, "HTTP/1.1 200 OK");

    r.sigterm();
    let (code, err) = r.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
}
