//! JSON decoding of Nexmark-like bids (flat objects of integers, strings and an RFC 3339
//! timestamp), one record at a time as the Kafka and file sources do, through
//! `JsonDecoder`'s flat path and through its arrow-json path, in one run over the same
//! bytes.
//!
//! `cargo bench --bench formats` (`TRIBUTARY_BENCH_EVENTS`, default 1,000,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tributary::dlq::BadRecords;
use tributary::formats::json::{JsonDecoder, encode_json_lines};

/// Rows per flush, as the sources' default batch size.
const BATCH: usize = 8192;
/// Timed runs of each path, alternating; the best and the median are shown.
const RUNS: usize = 5;

fn bid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
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
    ]))
}

/// `n` bids as JSON lines, with values shaped like the Nexmark generator's.
fn bid_lines(schema: &SchemaRef, n: usize) -> Vec<u8> {
    const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let rows = BATCH.min(n - start);
        let mut auction = Int64Builder::new();
        let mut bidder = Int64Builder::new();
        let mut price = Int64Builder::new();
        let mut channel = StringBuilder::new();
        let mut url = StringBuilder::new();
        let mut date_time = TimestampMillisecondBuilder::new();
        let mut extra = StringBuilder::new();
        for i in start..start + rows {
            let i = i as i64;
            auction.append_value(1000 + (i * 7919) % 5000);
            bidder.append_value(1000 + (i * 104_729) % 100_000);
            price.append_value(100 + (i * 2_654_435_761) % 10_000_000);
            let c = CHANNELS[i as usize % CHANNELS.len()];
            channel.append_value(c);
            url.append_value(format!(
                "https://www.nexmark.com/{c}/item.htm?query=1&channel_id={}",
                (i * 31) % 1024
            ));
            date_time.append_value(1_436_918_400_000 + i * 10 + (i % 7));
            extra.append_value(if i % 5 == 0 { "[extra]" } else { "" });
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(auction.finish()),
            Arc::new(bidder.finish()),
            Arc::new(price.finish()),
            Arc::new(channel.finish()),
            Arc::new(url.finish()),
            Arc::new(date_time.finish()),
            Arc::new(extra.finish()),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("bid batch");
        encode_json_lines(&batch, &mut out).expect("encode");
        start += rows;
    }
    out
}

/// CPU time of the calling thread (the machine may be shared: wall time would count
/// other processes' turns), from `/proc/thread-self/schedstat`; wall time elsewhere.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Decodes every line, flushing every `BATCH` records; the CPU time taken (wall time
/// if unknown), the wall time and the rows.
fn decode(mut d: JsonDecoder, lines: &[&[u8]]) -> (Duration, Duration, usize) {
    let mut bad = BadRecords::detached("bench");
    let mut rows = 0;
    let cpu = cpu_time();
    let t = Instant::now();
    for chunk in lines.chunks(BATCH) {
        for line in chunk {
            d.push(line, &mut bad);
        }
        rows += d.flush().expect("flush").map_or(0, |b| b.num_rows());
    }
    let wall = t.elapsed();
    let cpu = cpu.zip(cpu_time()).map_or(wall, |(a, b)| b - a);
    assert_eq!(bad.count(), 0, "no bad records expected");
    (cpu, wall, rows)
}

fn main() {
    let n: usize = std::env::var("TRIBUTARY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let schema = bid_schema();
    let bytes = bid_lines(&schema, n);
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    println!(
        "{} bids as JSON lines, {:.1} MB, e.g. {}",
        lines.len(),
        bytes.len() as f64 / 1e6,
        String::from_utf8_lossy(lines[1])
    );
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for run in 0..RUNS {
        for (i, flat) in [true, false].into_iter().enumerate() {
            let d = if flat {
                JsonDecoder::with_capacity(schema.clone(), BATCH)
            } else {
                JsonDecoder::with_capacity_through_arrow_json(schema.clone(), BATCH)
            }
            .expect("decoder");
            let (t, wall, rows) = decode(d, &lines);
            assert_eq!(rows, lines.len());
            println!(
                "run {run} {:<10} {:>6.0} ns/record CPU ({:.0} wall)",
                if flat { "flat" } else { "arrow-json" },
                t.as_nanos() as f64 / rows as f64,
                wall.as_nanos() as f64 / rows as f64
            );
            times[i].push(t);
        }
    }
    for t in &mut times {
        t.sort();
    }
    let rate = |t: Duration| lines.len() as f64 / t.as_secs_f64();
    let per = |t: Duration| t.as_nanos() as f64 / lines.len() as f64;
    for (what, pick) in [("best", 0), ("median", RUNS / 2)] {
        let (flat, arrow) = (times[0][pick], times[1][pick]);
        println!(
            "{what} of {RUNS}, CPU time: flat {:.0} records/s ({:.0} ns/record), arrow-json {:.0} records/s ({:.0} ns/record): flat {:.2}x faster",
            rate(flat),
            per(flat),
            rate(arrow),
            per(arrow),
            arrow.as_secs_f64() / flat.as_secs_f64()
        );
    }
}
