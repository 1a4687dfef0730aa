//! The platform end to end, as its users run it (issue 19): the release binary
//! (`tributary run`, `tributary query`) on copies of the reference pipelines.
//!
//! 1. **All pipelines together**, every generator stream unpaced (a day of event time
//!    at `PLATFORM_RATE` events/s per stream, emitted as fast as the pipelines take
//!    it): events/s and CPU-milliseconds per 1,000 events (the child's user + system
//!    time, so other processes on the machine do not count). Then `order_status`
//!    alone the same way: its own maximum rate.
//! 2. **Order-status freshness**: `order_status` paced at half its maximum rate with
//!    event time = wall-clock time, for `PLATFORM_FRESHNESS_SECS`; event time → status
//!    readable at `GET /orders/{id}` from the serving sink's `latency_column`
//!    histogram on `/metrics` (p50/p99 interpolated within its buckets).
//! 3. **`tributary query` over the day of analytics output** of run 1 (Parquet, by
//!    date/hour) against DataFusion over the same files in this process: the median
//!    wall time of 5 runs per query, with the answers compared.
//!
//! Run with `cargo bench --bench platform` (see docs/benchmarks.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

const BIN: &str = env!("CARGO_BIN_EXE_tributary");

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system) of the waited-for children of this process, from
/// `/proc/self/stat` (`cutime`, `cstime`; 100 ticks per second).
fn children_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 16 and 17 of stat(5); `rest` starts at field 3.
    let ticks: u64 = f[13].parse::<u64>().unwrap() + f[14].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How the copies' generator streams run: `rate` gives the options that replace a
/// stream's `rate = '…'` (from its rate), `warmup` the value of its `warmup`.
struct Generators<'a> {
    rate: &'a dyn Fn(&str) -> String,
    warmup: &'a str,
}

/// Replaces the quoted value of `key = '…'` at the start of `line` (trimmed) with
/// `with(value)`, keeping the indent and what follows the value (a comma, a comment).
fn rewrite(line: &str, key: &str, with: &dyn Fn(&str) -> String) -> Option<String> {
    let t = line.trim_start();
    let rest = t
        .strip_prefix(key)?
        .trim_start()
        .strip_prefix('=')?
        .trim_start();
    let rest = rest.strip_prefix('\'')?;
    let (value, after) = rest.split_once('\'')?;
    let indent = &line[..line.len() - t.len()];
    Some(format!("{indent}{}{after}", with(value)))
}

/// Copies the reference pipelines (`pipelines/`, `sql/`, `schemas/`) into `dir`, each
/// generator event stream rewritten by `streams_as` (reference tables, which have no
/// `rate`, are left alone). Returns the event streams of the pipelines copied.
fn layout(dir: &Path, only: Option<&str>, streams_as: &Generators) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut streams = 0;
    for sub in ["pipelines", "sql", "schemas"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for entry in std::fs::read_dir(root.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if sub == "pipelines"
                && let Some(only) = only
                && name != format!("{only}.yaml")
            {
                continue;
            }
            let mut text = std::fs::read_to_string(&path).unwrap();
            if sub == "sql" {
                let mut out = String::new();
                for line in text.lines() {
                    if let Some(l) = rewrite(line, "rate", streams_as.rate) {
                        if only.is_none_or(|o| name == format!("{o}.sql")) {
                            streams += 1;
                        }
                        out.push_str(&l);
                    } else if let Some(l) = rewrite(line, "warmup", &|_| {
                        format!("warmup = '{}'", streams_as.warmup)
                    }) {
                        out.push_str(&l);
                    } else {
                        assert!(
                            !line.trim_start().starts_with("start_time"),
                            "{name}: a start_time the bench does not rewrite"
                        );
                        out.push_str(line);
                    }
                    out.push('\n');
                }
                text = out;
            }
            std::fs::write(dir.join(sub).join(&name), text).unwrap();
        }
    }
    streams
}

/// Runs `tributary run` (all pipelines in `dir`, or `only`) until its input ends;
/// returns (wall, CPU).
fn run_to_end(dir: &Path, only: Option<&str>) -> (Duration, Duration) {
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).arg("run");
    if let Some(p) = only {
        cmd.arg(p);
    }
    let out = cmd
        .args(["--progress", "off", "--set"])
        .arg(format!("admin.listen=127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("tributary run");
    let wall = t0.elapsed();
    assert!(
        out.status.success(),
        "tributary run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (wall, children_cpu() - cpu0)
}

/// Linear interpolation of quantile `q` within the cumulative `(le, count)` buckets.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = (rank - prev.1) / (count - prev.1).max(1e-9);
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (le, count);
    }
    None
}

/// `(p50, p99, batches)` of `tributary_sink_latency_seconds` for `operator`.
fn freshness(metrics: &str, operator: &str) -> Option<(f64, f64, f64)> {
    let mut buckets = Vec::new();
    for line in metrics.lines() {
        if !line.starts_with("tributary_sink_latency_seconds_bucket")
            || !line.contains(&format!("operator=\"{operator}\""))
        {
            continue;
        }
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
        buckets.push((le, count));
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = buckets.last()?.1;
    Some((
        bucket_quantile(&buckets, 0.5)?,
        bucket_quantile(&buckets, 0.99)?,
        n,
    ))
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// `order_status` paced at `rate` events/s from now, for `secs`: its freshness.
fn order_status_freshness(dir: &Path, rate: f64, secs: u64) -> Option<(f64, f64, f64)> {
    layout(
        dir,
        Some("order_status"),
        &Generators {
            rate: &|_| format!("rate = '{rate:.0}', start_time = 'now'"),
            warmup: "0s",
        },
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .args(["run", "order_status", "--progress", "off", "--set"])
        .arg(format!("admin.listen={addr}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tributary run");
    // The measuring window is the run itself: samples from its first seconds included.
    std::thread::sleep(Duration::from_secs(secs));
    let metrics = http_get(&addr, "/metrics");
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    freshness(&metrics?, "orders_served")
}

/// Median of `runs` timings of `f`, and its last result.
fn median<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let t0 = Instant::now();
        last = Some(f());
        times.push(t0.elapsed());
    }
    times.sort();
    (times[runs / 2], last.unwrap())
}

const QUERIES: &[(&str, &str)] = &[
    (
        "revenue per restaurant",
        "SELECT restaurant_id, round(sum(revenue), 2) AS revenue, sum(orders) AS orders \
         FROM sales_per_minute GROUP BY restaurant_id ORDER BY revenue DESC, restaurant_id LIMIT 10",
    ),
    (
        "one hour (pruned)",
        "SELECT count(*) AS minutes, round(sum(revenue), 2) AS revenue FROM sales_per_minute \
         WHERE hour = '12'",
    ),
    (
        "top items at noon",
        "SELECT item_name, sum(units) AS units FROM sales_top_items \
         WHERE hour = '12' AND item_rank = 1 GROUP BY item_name ORDER BY units DESC, item_name LIMIT 5",
    ),
    (
        "slowest kitchens",
        "SELECT restaurant_id, round(avg(avg_prep_seconds), 1) AS prep FROM order_prep_times \
         GROUP BY restaurant_id ORDER BY prep DESC, restaurant_id LIMIT 5",
    ),
];

/// `tributary query --format csv` in `dir`: its output.
fn tributary_query(dir: &Path, sql: &str) -> String {
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(["query", "--format", "csv", sql])
        .env("RUST_LOG", "warn")
        .output()
        .expect("tributary query");
    assert!(
        out.status.success(),
        "tributary query: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// DataFusion over the same Parquet directories (partition columns as text, as Hive
/// directories hold them): the query's rows as CSV.
async fn datafusion_query(dir: &Path, sql: &str) -> String {
    let ctx = SessionContext::new();
    for table in ["sales_per_minute", "sales_top_items", "order_prep_times"] {
        let path: PathBuf = dir.join("data").join(table);
        let options = ParquetReadOptions::default().table_partition_cols(vec![
            ("date".to_string(), DataType::Utf8),
            ("hour".to_string(), DataType::Utf8),
        ]);
        ctx.register_parquet(table, path.to_str().unwrap(), options)
            .await
            .unwrap();
    }
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        for b in &batches {
            w.write(b).unwrap();
        }
    }
    String::from_utf8(out).unwrap()
}

fn main() {
    let rate = knob("PLATFORM_RATE", 10);
    let hours = knob("PLATFORM_HOURS", 24);
    let fresh_secs = knob("PLATFORM_FRESHNESS_SECS", 20);
    let count = rate * 3600 * hours;
    // A day of event time from the default start, all of it due at once.
    let unpaced_rate = move |_: &str| format!("rate = '{rate}', count = '{count}'");
    let unpaced = Generators {
        rate: &unpaced_rate,
        warmup: "3650d",
    };

    println!(
        "platform: every reference pipeline, {hours} h of event time at {rate} events/s per stream ({count} events each), unpaced"
    );
    let all = tempfile::tempdir().unwrap();
    let streams = layout(all.path(), None, &unpaced);
    let events = (streams as u64 * count) as f64;
    let (wall, cpu) = run_to_end(all.path(), None);
    println!(
        "all pipelines     {streams:>2} streams  {:>10.0} events  {:>7.1} s  {:>9.0} events/s  {:>6.3} CPU-ms per 1,000 events  ({:.1} CPU-s)",
        events,
        wall.as_secs_f64(),
        events / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / events,
        cpu.as_secs_f64()
    );

    let alone = tempfile::tempdir().unwrap();
    let streams = layout(alone.path(), Some("order_status"), &unpaced);
    let events = (streams as u64 * count) as f64;
    let (wall, cpu) = run_to_end(alone.path(), Some("order_status"));
    let max = events / wall.as_secs_f64();
    println!(
        "order_status      {streams:>2} streams  {:>10.0} events  {:>7.1} s  {:>9.0} events/s  {:>6.3} CPU-ms per 1,000 events",
        events,
        wall.as_secs_f64(),
        max,
        cpu.as_secs_f64() * 1e6 / events,
    );

    let paced = tempfile::tempdir().unwrap();
    match order_status_freshness(paced.path(), max / 2.0, fresh_secs) {
        Some((p50, p99, n)) => println!(
            "order-status freshness at {:.0} events/s (half the maximum) for {fresh_secs} s: event time -> readable at GET /orders/{{id}}: p50 {:.2} s, p99 {:.2} s over {n:.0} batches",
            max / 2.0,
            p50,
            p99
        ),
        None => println!("order-status freshness: no samples"),
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "\nqueries over run 1's analytics output (Parquet by date/hour), median of 5 wall times:"
    );
    println!(
        "{:<24} {:>16} {:>16} {:>8}  same answer",
        "query", "tributary query", "DataFusion", "ratio"
    );
    // What every `tributary query` pays before its query: starting the process,
    // reading the configuration and the pipelines, registering the tables.
    let (start, _) = median(5, || tributary_query(all.path(), "SELECT 1"));
    println!(
        "{:<24} {:>13.1} ms {:>16} {:>8}",
        "(start: SELECT 1)",
        start.as_secs_f64() * 1e3,
        "-",
        "-"
    );
    for (name, sql) in QUERIES {
        let (trib, trib_out) = median(5, || tributary_query(all.path(), sql));
        let (df, df_out) = median(5, || rt.block_on(datafusion_query(all.path(), sql)));
        let same = trib_out.trim() == df_out.trim();
        println!(
            "{name:<24} {:>13.1} ms {:>13.1} ms {:>8.2}  {same}",
            trib.as_secs_f64() * 1e3,
            df.as_secs_f64() * 1e3,
            trib.as_secs_f64() / df.as_secs_f64()
        );
        if !same {
            println!("  tributary:\n{trib_out}  datafusion:\n{df_out}");
        }
    }
}
