//! JSON lines → Arrow: the generator's Nexmark bids and restaurant streams (`orders`,
//! `kitchen`, `app`) as JSON lines, decoded in one run over the same bytes by:
//! - `tributary`: `JsonDecoder::push_line_at`, one record at a time with per-record
//!   error isolation, as the file source runs it: each line decoded where it starts,
//!   its end found and its text checked as UTF-8 while it is scanned;
//! - `tributary/arrow-json`: `JsonDecoder` forced onto its arrow-json path (the scanner
//!   checks each record, then arrow-json's tape decoder decodes the accepted ones: the
//!   path of schemas with a struct of two fields of the same name, and of every schema
//!   with structs, lists or maps before ADR 0018's addendum);
//! - `arrow-json tape`: arrow-json's `Decoder` over the whole buffer, without the
//!   scanner (no per-record isolation: one bad line fails the batch);
//! - `dom->arrow (serde_json)`: each line parsed into serde_json's DOM, its values
//!   appended to Arrow builders by the schema (flat schemas only: the streams without
//!   lists). simd-json and sonic-rs, the same way, are measured by
//!   `benches/json_candidates` (a crate of its own: as dev-dependencies they change
//!   shared dependencies' features, and with them every build of this crate).
//!
//! MB/s per core: input bytes over the CPU time of the decoding thread. Runs alternate
//! between the candidates; the best and the median of the runs are shown.
//!
//! `cargo bench --bench formats` (`TRIBUTARY_BENCH_EVENTS`, default 1,000,000 bids and
//! as many restaurant records per stream; `TRIBUTARY_BENCH_ONLY=<stream>[,<candidate>]`
//! runs one stream, or one candidate on it, e.g. under a profiler; `TRIBUTARY_BENCH_DUMP=<dir>` also writes each
//! stream's bytes to `<dir>/<stream>.jsonl` for `benches/json_candidates`).

use std::time::Duration;

use arrow::array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::array::timezone::Tz;
use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::kernels::cast_utils::string_to_datetime;
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::json::ReaderBuilder;
use tributary::connectors::generator::{GeneratorSettings, stream_schema, write_events};
use tributary::dlq::BadRecords;
use tributary::formats::json::JsonDecoder;

/// Rows per flush, as the sources' default batch size.
const BATCH: usize = 8192;
/// Timed runs of each candidate, alternating.
const RUNS: usize = 3;

/// CPU time of the calling thread (the machine may be shared: wall time would count
/// other processes' turns), from `/proc/thread-self/schedstat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// The lines of `bytes` (without their `\n`), found with `memchr`.
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', bytes)
        .chain(std::iter::once(bytes.len()))
        .filter_map(move |end| {
            let l = &bytes[start..end];
            start = end + 1;
            (!l.is_empty()).then_some(l)
        })
}

fn tributary(schema: &SchemaRef, bytes: &[u8], via_arrow: bool) -> usize {
    let mut d = if via_arrow {
        JsonDecoder::with_capacity_through_arrow_json(schema.clone(), BATCH)
    } else {
        JsonDecoder::with_capacity(schema.clone(), BATCH)
    }
    .expect("decoder");
    let mut bad = BadRecords::detached("bench");
    let mut rows = 0;
    // As the file source does: each line is decoded where it starts (its end found
    // and its text checked as UTF-8 as it is scanned); a line the decoder does not
    // take that way (none here) is found and pushed on its own.
    let mut at = 0;
    while at < bytes.len() {
        at = match d.push_line_at(bytes, at, usize::MAX) {
            Some(end) => end,
            None => {
                let end = memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len(), |p| at + p);
                d.push_from(&bytes[at..end], None, &mut bad);
                end + 1
            }
        };
        if d.buffered() >= BATCH {
            rows += d.flush().expect("flush").map_or(0, |b| b.num_rows());
        }
    }
    rows += d.flush().expect("flush").map_or(0, |b| b.num_rows());
    assert_eq!(bad.count(), 0, "no bad records expected");
    rows
}

fn arrow_tape(schema: &SchemaRef, bytes: &[u8]) -> usize {
    let mut d = ReaderBuilder::new(schema.clone())
        .with_batch_size(BATCH)
        .build_decoder()
        .expect("decoder");
    let mut rows = 0;
    let mut pos = 0;
    while pos < bytes.len() {
        pos += d.decode(&bytes[pos..]).expect("decode");
        rows += d.flush().expect("flush").map_or(0, |b| b.num_rows());
    }
    rows + d.flush().expect("flush").map_or(0, |b| b.num_rows())
}

/// One value taken from a DOM, checked before any column is appended to.
enum Val<'a> {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'a str),
}

/// Builders of a flat schema, filled from DOM values.
struct Columns {
    schema: SchemaRef,
    names: Vec<String>,
    builders: Vec<Box<dyn ArrayBuilder>>,
    tz: Vec<Option<Tz>>,
    vals: Vec<i64>,
    rows: usize,
}

impl Columns {
    /// `None` if the schema has a type the DOM candidates do not handle.
    fn new(schema: &SchemaRef) -> Option<Self> {
        let mut builders: Vec<Box<dyn ArrayBuilder>> = Vec::new();
        let mut tz = Vec::new();
        for f in schema.fields() {
            let (b, z): (Box<dyn ArrayBuilder>, _) = match f.data_type() {
                DataType::Int64 => (Box::new(Int64Builder::new()), None),
                DataType::Int32 => (Box::new(Int32Builder::new()), None),
                DataType::Float64 => (Box::new(Float64Builder::new()), None),
                DataType::Boolean => (Box::new(BooleanBuilder::new()), None),
                DataType::Utf8 => (Box::new(StringBuilder::new()), None),
                DataType::Timestamp(TimeUnit::Millisecond, z) => (
                    Box::new(
                        TimestampMillisecondBuilder::new().with_data_type(f.data_type().clone()),
                    ),
                    z.as_ref().map(|z| z.parse::<Tz>().expect("tz")),
                ),
                _ => return None,
            };
            builders.push(b);
            tz.push(z);
        }
        Some(Columns {
            schema: schema.clone(),
            names: schema.fields().iter().map(|f| f.name().clone()).collect(),
            builders,
            tz,
            vals: Vec::new(),
            rows: 0,
        })
    }

    /// Appends one record's values (in schema order) if they all fit; whether they did.
    fn append(&mut self, vals: &[Val<'_>]) -> bool {
        // Check (and convert timestamps) first, so a bad record leaves nothing behind.
        self.vals.clear();
        for (i, v) in vals.iter().enumerate() {
            let f = self.schema.field(i);
            let ok = match (f.data_type(), v) {
                (_, Val::Null) => f.is_nullable(),
                (DataType::Timestamp(..), Val::Str(s)) => {
                    let t = match &self.tz[i] {
                        Some(tz) => string_to_datetime(tz, s).map(|d| d.timestamp_millis()),
                        None => string_to_datetime(&chrono::Utc, s).map(|d| d.timestamp_millis()),
                    };
                    match t {
                        Ok(t) => {
                            self.vals.push(t);
                            true
                        }
                        Err(_) => false,
                    }
                }
                (DataType::Timestamp(..), Val::Int(n)) => {
                    self.vals.push(*n);
                    true
                }
                (DataType::Int64, Val::Int(_)) => true,
                (DataType::Int32, Val::Int(n)) => i32::try_from(*n).is_ok(),
                (DataType::Float64, Val::Float(_) | Val::Int(_)) => true,
                (DataType::Boolean, Val::Bool(_)) => true,
                (DataType::Utf8, Val::Str(_)) => true,
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        let mut ts = self.vals.iter();
        for (b, v) in self.builders.iter_mut().zip(vals) {
            let any = b.as_any_mut();
            if let Some(b) = any.downcast_mut::<Int64Builder>() {
                match v {
                    Val::Int(n) => b.append_value(*n),
                    _ => b.append_null(),
                }
            } else if let Some(b) = any.downcast_mut::<StringBuilder>() {
                match v {
                    Val::Str(s) => b.append_value(s),
                    _ => b.append_null(),
                }
            } else if let Some(b) = any.downcast_mut::<TimestampMillisecondBuilder>() {
                match v {
                    Val::Null => b.append_null(),
                    _ => b.append_value(*ts.next().expect("converted")),
                }
            } else if let Some(b) = any.downcast_mut::<Float64Builder>() {
                match v {
                    Val::Float(x) => b.append_value(*x),
                    Val::Int(n) => b.append_value(*n as f64),
                    _ => b.append_null(),
                }
            } else if let Some(b) = any.downcast_mut::<Int32Builder>() {
                match v {
                    Val::Int(n) => b.append_value(*n as i32),
                    _ => b.append_null(),
                }
            } else if let Some(b) = any.downcast_mut::<BooleanBuilder>() {
                match v {
                    Val::Bool(x) => b.append_value(*x),
                    _ => b.append_null(),
                }
            }
        }
        self.rows += 1;
        true
    }

    fn flush(&mut self) -> usize {
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(|b| b.finish()).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), columns).expect("batch");
        self.rows = 0;
        batch.num_rows()
    }
}

fn serde_json_dom(schema: &SchemaRef, bytes: &[u8]) -> usize {
    let mut cols = Columns::new(schema).expect("flat schema");
    let mut rows = 0;
    for line in lines(bytes) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let vals: Vec<Val<'_>> = cols
            .names
            .iter()
            .map(|n| match v.get(n.as_str()) {
                None | Some(serde_json::Value::Null) => Val::Null,
                Some(serde_json::Value::Bool(b)) => Val::Bool(*b),
                Some(serde_json::Value::String(s)) => Val::Str(s),
                Some(serde_json::Value::Number(x)) => match x.as_i64() {
                    Some(i) => Val::Int(i),
                    None => Val::Float(x.as_f64().unwrap_or(f64::NAN)),
                },
                Some(_) => Val::Null,
            })
            .collect();
        cols.append(&vals);
        if cols.rows >= BATCH {
            rows += cols.flush();
        }
    }
    rows + cols.flush()
}

type Candidate = (&'static str, fn(&SchemaRef, &[u8]) -> usize);

const CANDIDATES: &[Candidate] = &[
    ("tributary", |s, b| tributary(s, b, false)),
    ("tributary/arrow-json", |s, b| tributary(s, b, true)),
    ("arrow-json tape", arrow_tape),
    ("dom->arrow (serde_json)", serde_json_dom),
];

fn input(world: &str, stream: &str, n: u64) -> (SchemaRef, Vec<u8>) {
    let schema = stream_schema(world, stream).expect("schema");
    let settings = GeneratorSettings::defaults(world).expect("settings");
    let mut bytes = Vec::new();
    write_events(stream, world, 7, n, &settings, &mut bytes).expect("events");
    (schema, bytes)
}

fn main() {
    let n: u64 = std::env::var("TRIBUTARY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let only = std::env::var("TRIBUTARY_BENCH_ONLY").unwrap_or_default();
    let (only_stream, only_candidate) = only.split_once(',').unwrap_or((&only, ""));
    println!(
        "JSON lines -> Arrow, MB/s per core (input bytes / CPU seconds of the decoding thread); best and median of {RUNS} runs"
    );
    println!(
        "{:<10} {:>8} {:>8}  {:<22} {:>8} {:>8} {:>9}",
        "stream", "records", "MB", "candidate", "best", "median", "ns/rec"
    );
    for (world, stream) in [
        ("nexmark", "bids"),
        ("restaurant", "orders"),
        ("restaurant", "kitchen"),
        ("restaurant", "app"),
    ] {
        if !only_stream.is_empty() && only_stream != stream {
            continue;
        }
        let (schema, bytes) = input(world, stream, n);
        if let Ok(dir) = std::env::var("TRIBUTARY_BENCH_DUMP") {
            std::fs::write(format!("{dir}/{stream}.jsonl"), &bytes).expect("dump");
        }
        let records = lines(&bytes).count();
        let flat = Columns::new(&schema).is_some();
        let candidates: Vec<&Candidate> = CANDIDATES
            .iter()
            .filter(|(name, _)| flat || !name.starts_with("dom"))
            .filter(|(name, _)| only_candidate.is_empty() || *name == only_candidate)
            .collect();
        let mut times = vec![Vec::new(); candidates.len()];
        for _ in 0..RUNS {
            for (i, (name, f)) in candidates.iter().enumerate() {
                let t = cpu_time();
                let rows = f(&schema, &bytes);
                times[i].push(cpu_time() - t);
                assert_eq!(rows, records, "{name} on {stream}");
            }
        }
        for (i, (name, _)) in candidates.iter().enumerate() {
            let t = &mut times[i];
            t.sort();
            let mbs = |d: Duration| bytes.len() as f64 / 1e6 / d.as_secs_f64();
            println!(
                "{:<10} {:>8} {:>8.1}  {:<22} {:>8.0} {:>8.0} {:>9.0}",
                stream,
                records,
                bytes.len() as f64 / 1e6,
                name,
                mbs(t[0]),
                mbs(t[RUNS / 2]),
                t[RUNS / 2].as_nanos() as f64 / records as f64
            );
        }
    }
}
