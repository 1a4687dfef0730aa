//! Nexmark bids read as JSON lines from a file through the `file` source: q0, q1, q2,
//! a tumbling count, q5 and q7 (each planned as a pipeline's SQL, into `blackhole`), at
//! parallelism 1 and 2, printed side by side with the figures before the source decoded
//! in parallel (issue 21).
//!
//! The generator's bids (seed 7) are written once to a temporary file; each run reads
//! it whole. Events/s and MB/s are wall-clock; CPU-seconds per million events is the
//! process's user + system time over the run (every thread, the decoding pool
//! included).
//!
//! Then q0 over the same bids as Parquet (one row group, decoded on one core, against
//! row groups of 1,048,576 rows, decoded several at once) and as an Avro object
//! container file (blocks of 8,192 rows, cut into runs of blocks decoded several at
//! once).
//!
//! `cargo bench --bench json_file` (release profile). Environment:
//! `TRIBUTARY_BENCH_BIDS` (default 8,000,000), `TRIBUTARY_BENCH_ONLY` (only the rows
//! whose query or file format starts with it: `q0`, `parquet`, `avro`).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary::connectors::generator::{
    GeneratorSettings, Q5_HOT_ITEMS, Q7_HIGHEST_BID, write_events,
};
use tributary::engine::{BatchSettings, Runtime, RuntimeSettings};
use tributary::planner::{PlanSettings, SqlPlanner, SqlText};

const QUERIES: &[(&str, &str)] = &[
    (
        "q0 pass-through",
        "SELECT auction, bidder, price, date_time, extra FROM bids",
    ),
    (
        "q1 currency",
        "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bids",
    ),
    (
        "q2 filter",
        "SELECT auction, price FROM bids WHERE auction % 123 = 0",
    ),
    (
        "tumble count",
        "SELECT tumble(INTERVAL '10' SECOND) AS w, count(*) AS n FROM bids GROUP BY w",
    ),
    (
        // Hot items: a join of two windowed aggregates on the window (as in
        // tests/e2e/nexmark_suite.rs).
        "q5 hot items",
        Q5_HOT_ITEMS,
    ),
    (
        // Highest bid: a join with the window's maximum.
        "q7 highest bid",
        Q7_HIGHEST_BID,
    ),
];

/// Events/s of the same pipelines before this bench's change (docs/benchmarks.md):
/// every query ran at 2.2–2.4M events/s, bound by the decoder (~400 MB/s).
const BEFORE: &str = "2.2-2.4M";

fn settings() -> RuntimeSettings {
    RuntimeSettings {
        channel_capacity: 8,
        batch: BatchSettings {
            size: 8192,
            flush_interval: Duration::from_millis(10),
        },
        ..RuntimeSettings::default()
    }
}

/// User + system CPU time of this process, from `/proc/self/stat`.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces), from field 3 on.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // Clock ticks are 1/100 s on Linux.
    Duration::from_millis(ticks * 10)
}

/// Plans `query` as a pipeline's SQL (the bids file read as `format`, a `blackhole`
/// sink) at `parallelism` and runs it to the end of the file: (wall, CPU).
async fn run(
    dir: &Path,
    path: &str,
    format: &str,
    parallelism: usize,
    query: &str,
) -> (Duration, Duration) {
    let sql = format!(
        "CREATE TABLE bids (auction BIGINT NOT NULL, bidder BIGINT NOT NULL, \
         price BIGINT NOT NULL, channel VARCHAR NOT NULL, url VARCHAR NOT NULL, \
         date_time TIMESTAMP NOT NULL, extra VARCHAR NOT NULL) \
         WITH (connector = 'file', path = '{path}', format = '{format}', \
         event_time_field = 'date_time', watermark_delay = '1s');\n\
         CREATE TABLE out WITH (connector = 'blackhole');\n\
         INSERT INTO out {query};\n"
    );
    let planned = SqlPlanner::new()
        .plan_pipeline(
            "bench",
            &SqlText::file(sql, dir.join("bench.sql")),
            dir,
            &PlanSettings {
                parallelism,
                ..PlanSettings::default()
            },
        )
        .await
        .unwrap();
    let cpu = process_cpu();
    let t = Instant::now();
    Runtime::run(planned.graph, settings(), std::future::pending())
        .await
        .unwrap();
    (t.elapsed(), process_cpu() - cpu)
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("TRIBUTARY_BENCH_BIDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bids.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let settings = GeneratorSettings::defaults("nexmark").unwrap();
        write_events("bids", "nexmark", 7, n, &settings, &mut f).unwrap();
        f.flush().unwrap();
    }
    let bytes = std::fs::metadata(&path).unwrap().len();
    println!(
        "{n} bids as JSON lines, {:.2} GB, file -> SQL -> blackhole; {} cores",
        bytes as f64 / 1e9,
        std::thread::available_parallelism().map_or(0, |c| c.get())
    );
    println!(
        "{:<16} {:>4} {:>12} {:>9} {:>14} {:>14}",
        "query", "par", "events/s", "MB/s", "CPU-s/M events", "before ev/s"
    );
    let path = path.to_str().unwrap().to_string();
    let only = std::env::var("TRIBUTARY_BENCH_ONLY").ok();
    for &(name, query) in QUERIES {
        if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        for parallelism in [1, 2] {
            let (wall, cpu) = run(dir.path(), &path, "json", parallelism, query).await;
            println!(
                "{:<16} {:>4} {:>11.2}M {:>9.0} {:>14.2} {:>14}",
                name,
                parallelism,
                n as f64 / wall.as_secs_f64() / 1e6,
                bytes as f64 / 1e6 / wall.as_secs_f64(),
                cpu.as_secs_f64() / (n as f64 / 1e6),
                BEFORE
            );
        }
    }

    // The same bids in columnar files (Snappy): Parquet with one row group, read on
    // one core, against row groups of 1,048,576 rows, decoded several at once; Avro in
    // blocks of 8,192 rows, cut into runs of blocks decoded several at once.
    println!("\nthe same bids in Parquet and Avro files (Snappy), q0 at parallelism 1:");
    println!(
        "{:<34} {:>10} {:>12} {:>14}",
        "file", "MB", "events/s", "CPU-s/M events"
    );
    let files = [
        ("parquet", "Parquet, one row group", n as usize),
        ("parquet", "Parquet, row groups of 1,048,576", 1 << 20),
        ("avro", "Avro, blocks of 8,192", 8192),
    ];
    for (format, name, rows) in files {
        if only.as_deref().is_some_and(|o| !format.starts_with(o)) {
            continue;
        }
        let file = dir.path().join(format!("bids-{rows}.{format}"));
        write_columnar(Path::new(&path), &file, format, rows);
        let mb = std::fs::metadata(&file).unwrap().len() as f64 / 1e6;
        let (wall, cpu) = run(dir.path(), file.to_str().unwrap(), format, 1, QUERIES[0].1).await;
        println!(
            "{:<34} {:>10.0} {:>11.2}M {:>14.2}",
            name,
            mb,
            n as f64 / wall.as_secs_f64() / 1e6,
            cpu.as_secs_f64() / (n as f64 / 1e6),
        );
    }
}

/// Writes the JSON lines bids at `json` to `out` (Snappy) as `format`: Parquet with row
/// groups of `rows` rows, or an Avro object container file with blocks of `rows` rows.
fn write_columnar(json: &Path, out: &Path, format: &str, rows: usize) {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("extra", DataType::Utf8, false),
    ]));
    let reader = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(if format == "avro" { rows } else { 65536 })
        .build(std::io::BufReader::new(std::fs::File::open(json).unwrap()))
        .unwrap();
    let file = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    if format == "avro" {
        let mut w = arrow_avro::writer::WriterBuilder::new(schema.as_ref().clone())
            .with_compression(Some(arrow_avro::compression::CompressionCodec::Snappy))
            .build::<_, arrow_avro::writer::format::AvroOcfFormat>(file)
            .unwrap();
        for batch in reader {
            w.write(&batch.unwrap()).unwrap();
        }
        w.finish().unwrap();
        return;
    }
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(rows))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props)).unwrap();
    for batch in reader {
        w.write(&batch.unwrap()).unwrap();
    }
    w.close().unwrap();
}
