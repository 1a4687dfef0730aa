//! `tributary query` over a pipeline's outputs (issue "the four users end to end" §5):
//! a generator with a fixed seed and count into a Parquet sink partitioned by date and
//! hour and a JSON-lines sink of parallelism 2, run to the end; then SQL over both in
//! each output format, compared with sums computed here from `tributary generate`'s
//! lines (the exact input) with serde_json; `SHOW TABLES`; partition pruning in the
//! physical plan; an in-progress file never read; a bad query's error.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;

const GEN: &str = "stream = 'orders', seed = '5', count = '3000', rate = '0', \
                   start_time = '2026-01-01T23:59:59Z'";

/// (date, hour) → (rows, sum of total) and the placed orders' (rows, sum of total),
/// from the generator's lines.
fn expected(d: &Path) -> (BTreeMap<(String, String), (u64, f64)>, (u64, f64)) {
    let mut parts = BTreeMap::new();
    let mut placed = (0, 0.0);
    for line in json_lines(&d.join("input.jsonl")) {
        // Milliseconds, or an RFC 3339 string.
        let t = match &line["event_time"] {
            serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc),
            v => chrono::DateTime::from_timestamp_millis(v.as_i64().unwrap()).unwrap(),
        };
        let key = (t.format("%Y-%m-%d").to_string(), t.format("%H").to_string());
        let total = line["total"].as_f64().unwrap_or(0.0);
        let e = parts.entry(key).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += total;
        if line["event_type"] == "order_placed" {
            placed.0 += 1;
            placed.1 += total;
        }
    }
    (parts, placed)
}

fn query(d: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["query"];
    all.extend(args);
    run(d, &all)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.005
}

/// The pipeline's directory: written and run to the end.
fn ran() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(
        d,
        "orders",
        "5",
        "3000",
        &["rate=0", "start_time=2026-01-01T23:59:59Z"],
        "input.jsonl",
    );
    write(
        &d.join("pipelines/sales.yaml"),
        &format!(
            "name: sales\nsql: |\n  \
             CREATE TABLE orders WITH (connector = 'generator', {GEN});\n  \
             CREATE TABLE sales WITH (connector = 'parquet', path = 'out/sales', \
             partition_by = 'date,hour');\n  \
             CREATE TABLE placed WITH (connector = 'file', path = 'out/placed.jsonl', \
             parallelism = '2');\n  \
             INSERT INTO sales SELECT order_id, event_type, total, \
             to_char(event_time, '%Y-%m-%d') AS date, to_char(event_time, '%H') AS hour \
             FROM orders;\n  \
             INSERT INTO placed SELECT order_id, channel, total FROM orders \
             WHERE event_type = 'order_placed';\n"
        ),
    );
    ok(&run(d, &["run"]));
    assert!(d.join("out/placed-0.jsonl").exists() && d.join("out/placed-1.jsonl").exists());
    dir
}

#[test]
fn query_reads_the_outputs_in_every_format() {
    let dir = ran();
    let d = dir.path();
    let (parts, placed) = expected(d);
    assert!(parts.len() >= 2, "the input spans two dates: {parts:?}");

    // JSON lines: one object per row.
    let o = query(
        d,
        &[
            "--format",
            "json",
            "SELECT date, hour, count(*) AS n, sum(total) AS total FROM sales \
             GROUP BY date, hour ORDER BY date, hour",
        ],
    );
    ok(&o);
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), parts.len(), "{rows:?}");
    for (row, ((date, hour), (n, total))) in rows.iter().zip(&parts) {
        assert_eq!(row["date"], date.as_str());
        assert_eq!(row["hour"], hour.as_str());
        assert_eq!(row["n"].as_u64(), Some(*n), "{row}");
        assert!(
            close(row["total"].as_f64().unwrap(), *total),
            "{row} vs {total}"
        );
    }

    // CSV: a header, then the rows; the JSON-lines sink's two files are one table.
    let o = query(
        d,
        &[
            "--format",
            "csv",
            "SELECT count(*) AS n, round(sum(total), 2) AS total FROM placed",
        ],
    );
    ok(&o);
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "n,total", "{text}");
    let (n, total) = lines[1].split_once(',').unwrap();
    assert_eq!(n.parse::<u64>().unwrap(), placed.0);
    assert!(
        close(total.parse().unwrap(), placed.1),
        "{total} vs {}",
        placed.1
    );
    assert!(placed.0 > 100);

    // Table (the default); a table added by hand.
    let o = query(
        d,
        &[
            "--table",
            "first_half=out/placed-0.jsonl",
            "SELECT count(*) AS n FROM first_half",
        ],
    );
    ok(&o);
    let first = json_lines(&d.join("out/placed-0.jsonl")).len();
    let text = stdout(&o);
    assert!(text.contains("| n "), "{text}");
    assert!(text.contains(&format!("| {first} ")), "{text}");

    // Empty results: the header (table, csv), nothing (json).
    let none = "SELECT order_id, channel FROM placed WHERE order_id < 0";
    let o = query(d, &["--format", "csv", none]);
    ok(&o);
    assert_eq!(stdout(&o), "order_id,channel\n");
    let o = query(d, &["--format", "json", none]);
    ok(&o);
    assert_eq!(stdout(&o), "");
    let o = query(d, &[none]);
    ok(&o);
    assert!(stdout(&o).contains("order_id") && stdout(&o).contains("channel"));

    // SHOW TABLES: the user tables, without information_schema's.
    let o = query(d, &["--format", "csv", "SHOW TABLES"]);
    ok(&o);
    let text = stdout(&o);
    assert!(
        text.contains(",placed,") && text.contains(",sales,"),
        "{text}"
    );
    assert!(!text.contains("information_schema"), "{text}");
}

#[test]
fn filters_on_partition_columns_read_only_their_files_and_never_in_progress_ones() {
    let dir = ran();
    let d = dir.path();
    let (parts, _) = expected(d);
    let ((date, hour), (n, total)) = parts.iter().last().unwrap();
    let want = format!("date={date}/hour={hour}/");
    // A file being written, in the partition read: never read (it is not Parquet).
    write(
        &d.join(format!("out/sales/{want}.part-7-0.parquet.inprogress")),
        "half-written",
    );
    let sql = format!(
        "SELECT count(*) AS n, sum(total) AS total FROM sales \
         WHERE date = '{date}' AND hour = '{hour}'"
    );
    let o = query(d, &["--format", "json", &sql]);
    ok(&o);
    let row: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(row["n"].as_u64(), Some(*n));
    assert!(close(row["total"].as_f64().unwrap(), *total));

    // The physical plan lists only that partition's files.
    let o = query(
        d,
        &[
            "--format",
            "csv",
            &format!("EXPLAIN {}", sql.replace("count(*) AS n, ", "")),
        ],
    );
    ok(&o);
    let plan = stdout(&o);
    let files: Vec<&str> = plan
        .split(|c: char| c == '[' || c == ']' || c == ',' || c.is_whitespace() || c == '"')
        .filter(|w| w.contains(".parquet"))
        .collect();
    assert!(!files.is_empty(), "{plan}");
    for f in &files {
        assert!(f.contains(&want), "{f} is not under {want}:\n{plan}");
        assert!(!f.contains("inprogress"), "{plan}");
    }
    let all = std::fs::read_dir(d.join("out/sales"))
        .unwrap()
        .flatten()
        .flat_map(|date| std::fs::read_dir(date.path()).unwrap().flatten())
        .flat_map(|hour| std::fs::read_dir(hour.path()).unwrap().flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".parquet"))
        .count();
    assert!(files.len() < all, "{} of {all} files read", files.len());
}

#[test]
fn a_bad_query_is_an_error_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("t.jsonl"), "{\"a\": 1}\n");
    let o = query(d, &["--table", "t=t.jsonl", "SELECT nope FROM t"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("error[QRY001]"), "{e}");
    assert!(e.contains("line 1, column 8"), "{e}");
    assert!(!e.contains("panicked"), "{e}");

    let o = query(d, &["--table", "t=t.jsonl", "SELEC a FROM t"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("error[QRY001]"), "{}", stderr(&o));
    assert!(stderr(&o).contains("Line: 1, Column: 1"), "{}", stderr(&o));
    let o = query(d, &["--table", "t=t.jsonl", "SELECT a FROM t WHERE"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("at the end of the statement"),
        "{}",
        stderr(&o)
    );

    let o = query(d, &["--table", "t", "SELECT 1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("error[QRY002]"), "{}", stderr(&o));
}
