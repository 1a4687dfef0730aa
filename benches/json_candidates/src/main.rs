//! simd-json and sonic-rs turning JSON lines into Arrow columns, the way the decoder
//! would use them: each line parsed into the library's DOM (simd-json needs a mutable
//! copy; its buffers are reused), each schema column looked up by name and appended to
//! an Arrow builder (timestamps parsed with chrono's RFC 3339 parser), a record checked
//! whole before anything is appended (per-record isolation). MB/s per core over the
//! CPU time of the thread, best and median of 3 runs, for the flat streams the formats
//! bench wrote (`bids`, `kitchen`, `app`).

use std::time::Duration;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    I64,
    I32,
    F64,
    Bool,
    Str,
    Ts,
}

fn schema(stream: &str) -> Vec<(&'static str, Kind, bool)> {
    use Kind::*;
    match stream {
        "bids" => vec![
            ("auction", I64, false),
            ("bidder", I64, false),
            ("price", I64, false),
            ("channel", Str, false),
            ("url", Str, false),
            ("date_time", Ts, false),
            ("extra", Str, false),
        ],
        "kitchen" => vec![
            ("ticket_id", Str, false),
            ("event_time", Ts, false),
            ("order_id", I64, false),
            ("restaurant_id", I64, false),
            ("station", Str, false),
            ("item_count", I32, false),
            ("status", Str, false),
            ("queued_at", Ts, false),
            ("started_at", Ts, true),
            ("finished_at", Ts, true),
            ("wait_seconds", F64, true),
            ("prep_seconds", F64, true),
        ],
        "app" => vec![
            ("event_id", Str, false),
            ("event_type", Str, false),
            ("event_time", Ts, false),
            ("session_id", Str, false),
            ("customer_id", I64, false),
            ("device", Str, false),
            ("app_version", Str, false),
            ("restaurant_id", I64, false),
            ("menu_item_id", I64, true),
            ("quantity", I32, true),
            ("cart_total", F64, true),
            ("offer_id", I64, true),
            ("offer_name", Str, true),
            ("duration_seconds", F64, true),
            ("converted", Bool, true),
        ],
        other => panic!("no schema for {other}"),
    }
}

enum Val<'a> {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'a str),
}

struct Columns {
    fields: Vec<(&'static str, Kind, bool)>,
    builders: Vec<Box<dyn ArrayBuilder>>,
    ts: Vec<i64>,
    rows: usize,
}

impl Columns {
    fn new(stream: &str) -> Self {
        let fields = schema(stream);
        let builders = fields
            .iter()
            .map(|(_, k, _)| -> Box<dyn ArrayBuilder> {
                match k {
                    Kind::I64 => Box::new(Int64Builder::new()),
                    Kind::I32 => Box::new(Int32Builder::new()),
                    Kind::F64 => Box::new(Float64Builder::new()),
                    Kind::Bool => Box::new(BooleanBuilder::new()),
                    Kind::Str => Box::new(StringBuilder::new()),
                    Kind::Ts => Box::new(TimestampMillisecondBuilder::new()),
                }
            })
            .collect();
        Columns {
            fields,
            builders,
            ts: Vec::new(),
            rows: 0,
        }
    }

    fn append(&mut self, vals: &[Val<'_>]) -> bool {
        self.ts.clear();
        for ((_, kind, nullable), v) in self.fields.iter().zip(vals) {
            let ok = match (kind, v) {
                (_, Val::Null) => *nullable,
                (Kind::Ts, Val::Str(s)) => match chrono::DateTime::parse_from_rfc3339(s) {
                    Ok(d) => {
                        self.ts.push(d.timestamp_millis());
                        true
                    }
                    Err(_) => false,
                },
                (Kind::Ts, Val::Int(n)) => {
                    self.ts.push(*n);
                    true
                }
                (Kind::I64, Val::Int(_)) => true,
                (Kind::I32, Val::Int(n)) => i32::try_from(*n).is_ok(),
                (Kind::F64, Val::Float(_) | Val::Int(_)) => true,
                (Kind::Bool, Val::Bool(_)) => true,
                (Kind::Str, Val::Str(_)) => true,
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        let mut ts = self.ts.iter();
        for ((b, (_, kind, _)), v) in self.builders.iter_mut().zip(&self.fields).zip(vals) {
            let any = b.as_any_mut();
            match (kind, v) {
                (Kind::I64, Val::Int(n)) => {
                    any.downcast_mut::<Int64Builder>().unwrap().append_value(*n)
                }
                (Kind::I64, _) => any.downcast_mut::<Int64Builder>().unwrap().append_null(),
                (Kind::I32, Val::Int(n)) => any
                    .downcast_mut::<Int32Builder>()
                    .unwrap()
                    .append_value(*n as i32),
                (Kind::I32, _) => any.downcast_mut::<Int32Builder>().unwrap().append_null(),
                (Kind::F64, Val::Float(x)) => any
                    .downcast_mut::<Float64Builder>()
                    .unwrap()
                    .append_value(*x),
                (Kind::F64, Val::Int(n)) => any
                    .downcast_mut::<Float64Builder>()
                    .unwrap()
                    .append_value(*n as f64),
                (Kind::F64, _) => any.downcast_mut::<Float64Builder>().unwrap().append_null(),
                (Kind::Bool, Val::Bool(x)) => any
                    .downcast_mut::<BooleanBuilder>()
                    .unwrap()
                    .append_value(*x),
                (Kind::Bool, _) => any.downcast_mut::<BooleanBuilder>().unwrap().append_null(),
                (Kind::Str, Val::Str(s)) => {
                    any.downcast_mut::<StringBuilder>().unwrap().append_value(s)
                }
                (Kind::Str, _) => any.downcast_mut::<StringBuilder>().unwrap().append_null(),
                (Kind::Ts, Val::Null) => any
                    .downcast_mut::<TimestampMillisecondBuilder>()
                    .unwrap()
                    .append_null(),
                (Kind::Ts, _) => any
                    .downcast_mut::<TimestampMillisecondBuilder>()
                    .unwrap()
                    .append_value(*ts.next().unwrap()),
            }
        }
        self.rows += 1;
        true
    }

    fn flush(&mut self) -> usize {
        let n = self.rows;
        for b in &mut self.builders {
            b.finish();
        }
        self.rows = 0;
        n
    }
}

const BATCH: usize = 8192;

/// `vals`' allocation, emptied, for values of another lifetime (one record's parse).
fn recycle<'b>(mut vals: Vec<Val<'_>>) -> Vec<Val<'b>> {
    vals.clear();
    vals.into_iter().map(|_| Val::Null).collect()
}

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

fn simd_json(stream: &str, bytes: &[u8]) -> usize {
    use simd_json::prelude::*;
    let mut cols = Columns::new(stream);
    let mut buffers = simd_json::Buffers::new(1024);
    let mut scratch = Vec::new();
    let mut rows = 0;
    let mut spare: Vec<Val<'static>> = Vec::new();
    for line in lines(bytes) {
        scratch.clear();
        scratch.extend_from_slice(line);
        let Ok(v) = simd_json::borrowed::to_value_with_buffers(&mut scratch, &mut buffers) else {
            continue;
        };
        let mut vals = recycle(std::mem::take(&mut spare));
        for (n, _, _) in &cols.fields {
            vals.push(match v.get(*n) {
                None => Val::Null,
                Some(x) if x.is_null() => Val::Null,
                Some(x) => {
                    if let Some(i) = x.as_i64() {
                        Val::Int(i)
                    } else if let Some(f) = x.as_f64() {
                        Val::Float(f)
                    } else if let Some(b) = x.as_bool() {
                        Val::Bool(b)
                    } else if let Some(s) = x.as_str() {
                        Val::Str(s)
                    } else {
                        Val::Null
                    }
                }
            });
        }
        cols.append(&vals);
        spare = recycle(vals);
        if cols.rows >= BATCH {
            rows += cols.flush();
        }
    }
    rows + cols.flush()
}

fn sonic_rs(stream: &str, bytes: &[u8]) -> usize {
    use sonic_rs::JsonValueTrait;
    let mut cols = Columns::new(stream);
    let mut rows = 0;
    let mut spare: Vec<Val<'static>> = Vec::new();
    for line in lines(bytes) {
        let Ok(v) = sonic_rs::from_slice::<sonic_rs::Value>(line) else {
            continue;
        };
        let mut vals = recycle(std::mem::take(&mut spare));
        for (n, _, _) in &cols.fields {
            vals.push(match v.get(*n) {
                None => Val::Null,
                Some(x) if x.is_null() => Val::Null,
                Some(x) => {
                    if let Some(i) = x.as_i64() {
                        Val::Int(i)
                    } else if let Some(f) = x.as_f64() {
                        Val::Float(f)
                    } else if let Some(b) = x.as_bool() {
                        Val::Bool(b)
                    } else if let Some(s) = x.as_str() {
                        Val::Str(s)
                    } else {
                        Val::Null
                    }
                }
            });
        }
        cols.append(&vals);
        spare = recycle(vals);
        if cols.rows >= BATCH {
            rows += cols.flush();
        }
    }
    rows + cols.flush()
}

fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: json_candidates <dir>");
    const RUNS: usize = 3;
    type Candidate = (&'static str, fn(&str, &[u8]) -> usize);
    let candidates: [Candidate; 2] = [("simd-json", simd_json), ("sonic-rs", sonic_rs)];
    println!(
        "{:<10} {:>8} {:>8}  {:<22} {:>8} {:>8} {:>9}",
        "stream", "records", "MB", "candidate", "best", "median", "ns/rec"
    );
    for stream in ["bids", "kitchen", "app"] {
        let path = format!("{dir}/{stream}.jsonl");
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let records = lines(&bytes).count();
        let mut times = vec![Vec::new(); candidates.len()];
        for _ in 0..RUNS {
            for (i, (name, f)) in candidates.iter().enumerate() {
                let t = cpu_time();
                let rows = f(stream, &bytes);
                times[i].push(cpu_time() - t);
                assert_eq!(rows, records, "{name} on {stream}: every record decoded");
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
