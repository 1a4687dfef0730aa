//! Bad pipelines are refused at start with the file, line and column and a reason;
//! `check`, `explain` and `generate` do what they say.

use crate::common::*;

fn check(dir: &std::path::Path, file: &str) -> (Option<i32>, String) {
    let o = run(dir, &["check", file]);
    (o.status.code(), stderr(&o))
}

const SRC: &str = "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '10');\n\
                   CREATE TABLE out WITH (connector = 'stdout');\n";

#[test]
fn sql_errors_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(&str, String, &str)> = vec![
        // (file, contents, expected fragment)
        (
            "syntax.sql",
            format!("{SRC}INSERT INTO out\nSELEC order_id FROM orders;\n"),
            "syntax.sql:4:1: syntax error",
        ),
        (
            "column.sql",
            format!("{SRC}INSERT INTO out\nSELECT order_id, no_such_column FROM orders;\n"),
            "column.sql:4:18:",
        ),
        (
            "connector.sql",
            "CREATE TABLE orders WITH (connector = 'kafkaa');\nCREATE TABLE out WITH (connector = 'stdout');\nINSERT INTO out SELECT * FROM orders;\n".to_string(),
            "connector.sql:1:39: unknown connector 'kafkaa' for table orders (did you mean 'kafka'?)",
        ),
        (
            "option.sql",
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', rat = '5');\nCREATE TABLE out WITH (connector = 'stdout');\nINSERT INTO out SELECT * FROM orders;\n".to_string(),
            "option.sql:1:71: connector 'generator' of table orders has no option 'rat' (did you mean 'rate'?)",
        ),
        (
            "check.sql",
            "CREATE TABLE orders (order_id BIGINT,\n  total DOUBLE CHECK (amount >= 0))\n  WITH (connector = 'generator', stream = 'orders', count = '10');\nCREATE TABLE out WITH (connector = 'stdout');\nINSERT INTO out SELECT * FROM orders;\n".to_string(),
            "check.sql:2:23: table orders: CHECK (amount >= 0):",
        ),
        (
            "type.sql",
            format!("{SRC}INSERT INTO out SELECT order_id + 'abc' FROM orders;\n"),
            "type.sql:3:",
        ),
        (
            "order_by.sql",
            format!("{SRC}INSERT INTO out SELECT order_id FROM orders ORDER BY order_id;\n"),
            "order_by.sql:3:1: not supported on a stream: ORDER BY",
        ),
        (
            "group_by.sql",
            format!(
                "{SRC}INSERT INTO out SELECT n, count(*) FROM \
                 (SELECT restaurant_id, count(*) AS n FROM orders GROUP BY restaurant_id) GROUP BY n;\n"
            ),
            "group_by.sql:3:1: not supported on a stream: a GROUP BY reads the results of a GROUP BY without a window, which update",
        ),
        (
            "no_sink.sql",
            format!("{SRC}INSERT INTO nowhere SELECT * FROM orders;\n"),
            "no_sink.sql:3:1: INSERT INTO nowhere: no such table",
        ),
    ];
    for (file, text, expected) in cases {
        write(&d.join(file), &text);
        let (code, err) = check(d, file);
        assert_eq!(code, Some(2), "{file} should be refused:\n{err}");
        assert!(
            err.contains(expected),
            "{file}: expected '{expected}' in:\n{err}"
        );
    }
}

#[test]
fn pipeline_file_errors_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("p.sql"),
        &format!("{SRC}INSERT INTO out SELECT order_id FROM orders;\n"),
    );
    let cases = [
        (
            "unknown_key.yaml",
            "name: p\nsql: p.sql\nparalelism: 2\n",
            "unknown_key.yaml:3:1: unknown field `paralelism` (did you mean `parallelism`?)",
        ),
        (
            "bad_value.yaml",
            "name: p\nsql: p.sql\nbatch:\n  flush_interval: soon\n",
            "bad_value.yaml:4:3:",
        ),
        (
            "bad_policy.yaml",
            "name: p\nsql: p.sql\nerrors:\n  on_processing_error: retry\n",
            "bad_policy.yaml:4:",
        ),
        ("missing_sql.yaml", "name: p\n", "missing field `sql`"),
        (
            "bad_table.yaml",
            "name: p\nsql: p.sql\nconnectors:\n  ordrs: { rate: 5 }\n",
            "bad_table.yaml:3:1: connectors: no table named ordrs",
        ),
        (
            "inline.yaml",
            "name: p\nsql: |\n  CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n  CREATE TABLE out WITH (connector = 'stdout');\n  INSERT INTO out SELECT nope FROM orders;\n",
            "inline.yaml:5:26:",
        ),
    ];
    for (file, text, expected) in cases {
        write(&d.join(file), text);
        let (code, err) = check(d, file);
        assert_eq!(code, Some(2), "{file} should be refused:\n{err}");
        assert!(
            err.contains(expected),
            "{file}: expected '{expected}' in:\n{err}"
        );
    }
}

#[test]
fn check_reports_every_broken_pipeline_not_just_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("pipelines/a.yaml"), "name: a\nsql: nope.sql\n");
    write(&d.join("pipelines/b.yaml"), "name: b\nsql: x.sql\nwat: 1\n");
    let o = run(d, &["check"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("a.yaml:2:1: cannot read SQL file"), "{err}");
    assert!(err.contains("b.yaml:3:1: unknown field `wat`"), "{err}");
}

/// Named on the command line, a name not found, a file that does not plan and a table
/// whose schema registry does not answer are each reported, the pipeline that is fine
/// is said to be, and the exit code is 2.
#[test]
fn check_goes_on_after_each_failing_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = crate::registry::free_port();
    write(
        &d.join("bad.sql"),
        &format!("{SRC}INSERT INTO out\nSELECT order_id, no_such_column FROM orders;\n"),
    );
    write(
        &d.join("good.sql"),
        &format!("{SRC}INSERT INTO out SELECT order_id FROM orders;\n"),
    );
    write(
        &d.join("avro.sql"),
        &format!(
            "CREATE TABLE events (event_id VARCHAR) WITH (connector = 'kafka', \
               bootstrap_servers = '127.0.0.1:1', topic = 't', format = 'avro', \
               schema_registry_url = 'http://127.0.0.1:{port}');\n\
             CREATE TABLE out WITH (connector = 'stdout');\n\
             INSERT INTO out SELECT * FROM events;\n"
        ),
    );
    let o = run(d, &["check", "bad.sql", "missing", "good.sql", "avro.sql"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.sql:4:18:"), "{err}");
    assert!(err.contains("missing"), "{err}");
    assert!(err.contains("error[REG025]: table events"), "{err}");
    assert!(stdout(&o).contains("ok good"), "{}", stdout(&o));
}

/// `check` asks the schema registry of every Avro Kafka table: one that does not
/// answer is an error naming the table, the URL and the cause (credentials in the URL
/// not shown), exit code 2 like any other `check` error. (Kafka itself is not
/// contacted: the broker address here is never used.)
#[test]
fn check_names_an_avro_tables_unreachable_registry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = crate::registry::free_port();
    write(
        &d.join("avro.sql"),
        &format!(
            "CREATE TABLE events (event_id VARCHAR) WITH (connector = 'kafka', \
               bootstrap_servers = '127.0.0.1:1', topic = 't', format = 'avro', \
               schema_registry_url = 'http://KEY:SECRET@127.0.0.1:{port}');\n\
             CREATE TABLE out WITH (connector = 'stdout');\n\
             INSERT INTO out SELECT * FROM events;\n"
        ),
    );
    let (code, err) = check(d, "avro.sql");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("error[REG025]: table events: schema registry")
            && err.contains(&format!("http://127.0.0.1:{port}"))
            && err.contains("cannot connect"),
        "{err}"
    );
    assert!(!err.contains("SECRET"), "{err}");

    // With the registry there, the same pipeline checks.
    let (_registry, url) = crate::registry::start_registry_on(d, port);
    let (code, err) = check(d, "avro.sql");
    assert_eq!(code, Some(0), "{url}: {err}");
}

#[test]
fn the_reference_pipelines_plan() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = run(root, &["check"]);
    ok(&o);
    for name in [
        "order_status",
        "sales_items",
        "offer_engagement",
        "kitchen_slow_tickets",
        "sales_per_minute",
    ] {
        assert!(
            stdout(&o).contains(&format!("ok {name}")),
            "{name} not checked:\n{}",
            stdout(&o)
        );
    }
}

#[test]
fn explain_shows_operators_partitioning_parallelism_and_the_datafusion_plan() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = run(root, &["explain", "order_status"]);
    ok(&o);
    let out = stdout(&o);
    for fragment in [
        "source orders [parallelism 2]",
        "operator order_status_select [parallelism 2]",
        "<- orders (forward)",
        "sink order_status [parallelism 2]",
        "ProjectionExec",
    ] {
        assert!(out.contains(fragment), "missing '{fragment}' in:\n{out}");
    }
}

#[test]
fn generate_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gen_args = |seed: &str, out: &str| -> Vec<String> {
        [
            "generate",
            "--stream",
            "orders",
            "--seed",
            seed,
            "--count",
            "3000",
            "--option",
            "out_of_order=3s",
            "--option",
            "late_fraction=0.01",
            "--option",
            "duplicate_fraction=0.01",
            "--option",
            "malformed_fraction=0.01",
            "-o",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    for (seed, out) in [("5", "a.jsonl"), ("5", "b.jsonl"), ("6", "c.jsonl")] {
        let args = gen_args(seed, out);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        ok(&run(d, &args));
    }
    let a = std::fs::read(d.join("a.jsonl")).unwrap();
    let b = std::fs::read(d.join("b.jsonl")).unwrap();
    let c = std::fs::read(d.join("c.jsonl")).unwrap();
    assert_eq!(a.iter().filter(|&&x| x == b'\n').count(), 3000);
    assert!(a == b, "same seed, different bytes");
    assert!(a != c, "different seeds, same bytes");
    // The nexmark world too.
    let o1 = run(
        d,
        &[
            "generate", "--world", "nexmark", "--stream", "bids", "--count", "500",
        ],
    );
    let o2 = run(
        d,
        &[
            "generate", "--world", "nexmark", "--stream", "bids", "--count", "500",
        ],
    );
    ok(&o1);
    assert_eq!(o1.stdout, o2.stdout);
    // `count` counts all Nexmark events; bids are 46 of every 50.
    let bids = stdout(&o1).lines().count();
    assert!((440..=470).contains(&bids), "{bids} bids out of 500 events");
}

/// One pipeline file with several broken INSERTs: each is reported with its place,
/// in one pass.
#[test]
fn check_reports_every_failing_insert_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("two.sql"),
        &format!(
            "{SRC}INSERT INTO out SELECT nope FROM orders;\n\
             INSERT INTO out SELECT order_id FROM orders;\n\
             INSERT INTO out SELECT order_idd FROM orders;\n\
             INSERT INTO out3 SELECT order_id FROM orders;\n"
        ),
    );
    let (code, err) = check(d, "two.sql");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("error[SQL002]: two.sql:3:24: Schema error: No field named nope"),
        "{err}"
    );
    assert!(
        err.contains("error[SQL002]: two.sql:5:24: Schema error: No field named order_idd"),
        "{err}"
    );
    assert!(
        err.contains("error[SQL002]: two.sql:6:1: INSERT INTO out3: no such table"),
        "{err}"
    );
    assert_eq!(err.matches("error[").count(), 3, "{err}");
}

/// A configuration error names the layer and the place that caused it.
#[test]
fn configuration_errors_name_their_file_line_or_variable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("tributary.toml"),
        "[run]\nstop_grace = \"5s\"\n\n[kafka]\nbogus = 1\n",
    );
    let o = run(d, &["check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(
            "error[PIP003]: configuration: tributary.toml:5:1: kafka.bogus: unknown field `bogus`"
        ),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(d.join("tributary.toml")).unwrap();
    let o = tributary(d)
        .args(["check"])
        .env("TRIBUTARY__ADMIN__LISTEN", "5")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("environment variable TRIBUTARY__ADMIN__LISTEN: invalid type"),
        "{}",
        stderr(&o)
    );
}
