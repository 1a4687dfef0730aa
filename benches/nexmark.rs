//! Nexmark q0–q2 on the built-in Nexmark generator into `blackhole`, at parallelism 1
//! and 2, printed side by side in one run with:
//! - the generator alone (generator → blackhole, no SQL stage),
//! - DataFusion batch executing the same SELECT over the same rows already in memory
//!   (the engine's physical limit),
//! - p99 latency from generation to sink at half the maximum rate;
//! - a tumbling-window `GROUP BY` over 1,000 and about 1,000,000 keys, against
//!   DataFusion batch `GROUP BY` over the same bids in memory, and a q5-style hop
//!   window count per auction;
//! - an interval join of bids with the auctions they bid on (bids within 10 s of the
//!   auction's creation), and a `GROUP BY` without a window (a changelog), each against
//!   DataFusion batch over the same rows in memory.
//!
//! Run: `cargo bench --bench nexmark` (release profile). Environment: `NEXMARK_EVENTS`
//! (default 10,000,000), `NEXMARK_LATENCY_SECS` (default 10), `NEXMARK_ONLY` (`join`:
//! only the interval join and the changelog `GROUP BY`, each also in CPU-seconds per
//! million input rows). Not part of the test suite; figures go to docs/benchmarks.md.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use tributary::connectors::blackhole::{BlackholeSink, blackhole_with_latency};
use tributary::connectors::memory::MemorySource;
use tributary::engine::{BatchSettings, RuntimeSettings};
use tributary::pipeline::{PipelineBuilder, Stream};

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
];

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

fn source_ddl(events: u64, extra: &str) -> String {
    format!(
        "CREATE TABLE bids WITH (connector = 'generator', world = 'nexmark', stream = 'bids', \
         count = '{events}'{extra})"
    )
}

/// Runs `src` → (`query`) → blackhole to completion; events per second.
async fn events_per_second(
    mut p: PipelineBuilder,
    src: Stream,
    query: Option<&str>,
    events: u64,
) -> f64 {
    let out = match query {
        Some(q) => p.sql(src, q).await.unwrap(),
        None => src,
    };
    p.sink(out, "blackhole", Arc::new(BlackholeSink::new(None)))
        .unwrap();
    let t = Instant::now();
    p.run_to_completion().await.unwrap();
    events as f64 / t.elapsed().as_secs_f64()
}

/// Events per second through generator → (SQL) → blackhole.
async fn tributary(events: u64, parallelism: usize, query: Option<&str>) -> f64 {
    let mut p = PipelineBuilder::new("bench")
        .parallelism(parallelism)
        .runtime_settings(settings());
    let src = p.source_sql(&source_ddl(events, ", rate = '0'")).unwrap();
    events_per_second(p, src, query, events).await
}

/// Events per second through the streaming engine fed from the bids already in
/// memory (no generator): the engine's own cost against the batch figure.
async fn from_memory(
    bids: &[RecordBatch],
    events: u64,
    parallelism: usize,
    query: &str,
    windowed: bool,
) -> f64 {
    let parts: Vec<Vec<RecordBatch>> = (0..parallelism)
        .map(|p| bids.iter().skip(p).step_by(parallelism).cloned().collect())
        .collect();
    let source = MemorySource::new(bids[0].schema(), parts).unwrap();
    let mut p = PipelineBuilder::new("bench")
        .parallelism(parallelism)
        .runtime_settings(settings());
    let src = p.source("bids", Arc::new(source));
    if windowed {
        p.event_time(&src, "date_time", Duration::from_secs(1))
            .unwrap();
    }
    events_per_second(p, src, Some(query), events).await
}

/// The median of `runs` measurements: the in-memory runs last milliseconds, where one
/// run is at the mercy of the scheduler.
async fn median<F, Fut>(runs: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        v.push(f().await);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[runs / 2]
}

const RUNS: usize = 7;

/// The generator's events of one Nexmark stream, collected in memory (the bids: the
/// batch baseline's input).
async fn collect_stream(stream: &str, events: u64) -> Vec<RecordBatch> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut p = PipelineBuilder::new("collect").runtime_settings(settings());
    let src = p
        .source_sql(&format!(
            "CREATE TABLE s WITH (connector = 'generator', world = 'nexmark', stream = '{stream}', \
             count = '{events}', rate = '0')"
        ))
        .unwrap();
    let schema = p.schema(&src);
    let g = got.clone();
    let kept = p.map(src, "keep", schema, move |b| {
        g.lock().unwrap().push(b.clone());
        Ok(b)
    });
    p.sink(kept, "blackhole", Arc::new(BlackholeSink::new(None)))
        .unwrap();
    p.run_to_completion().await.unwrap();
    Arc::try_unwrap(got).unwrap().into_inner().unwrap()
}

const JOIN: &str = "SELECT b.auction, b.price, a.seller, a.category FROM bids b JOIN auctions a \
                    ON b.auction = a.id \
                    AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '10' SECOND";

/// The same join, keeping the bids without an auction opened in the 10 s before them.
const LEFT_JOIN: &str = "SELECT b.auction, b.price, a.seller, a.category FROM bids b LEFT JOIN auctions a \
                         ON b.auction = a.id \
                         AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '10' SECOND";

/// Rows per second (bids + auctions) through the interval join, both streams fed from
/// memory with event time, at parallelism 1; and its output row count.
async fn join_from_memory(
    bids: &[RecordBatch],
    auctions: &[RecordBatch],
    query: &str,
) -> (f64, usize) {
    let mut p = PipelineBuilder::new("join").runtime_settings(settings());
    let b = p.source(
        "bids",
        Arc::new(MemorySource::new(bids[0].schema(), vec![bids.to_vec()]).unwrap()),
    );
    let a = p.source(
        "auctions",
        Arc::new(MemorySource::new(auctions[0].schema(), vec![auctions.to_vec()]).unwrap()),
    );
    for s in [&b, &a] {
        p.event_time(s, "date_time", Duration::from_secs(1))
            .unwrap();
    }
    let out = p.join_sql(b, a, query).await.unwrap();
    let rows = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = rows.clone();
    let schema = p.schema(&out);
    let out = p.map(out, "count", schema, move |batch| {
        r.fetch_add(batch.num_rows(), std::sync::atomic::Ordering::Relaxed);
        Ok(batch)
    });
    p.sink(out, "blackhole", Arc::new(BlackholeSink::new(None)))
        .unwrap();
    let n: usize = bids.iter().chain(auctions).map(|b| b.num_rows()).sum();
    let t = Instant::now();
    p.run_to_completion().await.unwrap();
    (
        n as f64 / t.elapsed().as_secs_f64(),
        rows.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Rows per second (bids + auctions) for DataFusion batch's join of the same rows; and
/// its output row count.
async fn join_batch(bids: &[RecordBatch], auctions: &[RecordBatch], query: &str) -> (f64, usize) {
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(8192),
    );
    for (name, rows) in [("bids", bids), ("auctions", auctions)] {
        ctx.register_table(
            name,
            Arc::new(MemTable::try_new(rows[0].schema(), vec![rows.to_vec()]).unwrap()),
        )
        .unwrap();
    }
    let n: usize = bids.iter().chain(auctions).map(|b| b.num_rows()).sum();
    let t = Instant::now();
    let out = ctx.sql(query).await.unwrap().collect().await.unwrap();
    let elapsed = t.elapsed().as_secs_f64();
    (n as f64 / elapsed, out.iter().map(|b| b.num_rows()).sum())
}

/// Events per second for DataFusion batch over the in-memory bids.
async fn batch(bids: &[RecordBatch], events: u64, parallelism: usize, query: &str) -> f64 {
    let schema = bids[0].schema();
    let parts: Vec<Vec<RecordBatch>> = (0..parallelism)
        .map(|p| bids.iter().skip(p).step_by(parallelism).cloned().collect())
        .collect();
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(parallelism)
            .with_batch_size(8192),
    );
    ctx.register_table("bids", Arc::new(MemTable::try_new(schema, parts).unwrap()))
        .unwrap();
    let df = ctx.sql(query).await.unwrap();
    let t = Instant::now();
    // Stream the result and drop it, like the blackhole sink.
    use futures::StreamExt;
    let streams = df.execute_stream_partitioned().await.unwrap();
    let handles: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut rows = 0usize;
                while let Some(b) = s.next().await {
                    rows += b.unwrap().num_rows();
                }
                rows
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    events as f64 / t.elapsed().as_secs_f64()
}

const WINDOWED: &[(&str, &str, &str)] = &[
    (
        "tumble 1k keys",
        "SELECT tumble(INTERVAL '1' DAY) AS w, auction % 1000 AS k, count(*) AS n, sum(price) AS s, max(price) AS m \
         FROM bids GROUP BY w, k",
        "SELECT date_bin(INTERVAL '1' DAY, date_time) AS w, auction % 1000 AS k, count(*) AS n, sum(price) AS s, \
         max(price) AS m FROM bids GROUP BY w, k",
    ),
    (
        "tumble ~1M keys",
        "SELECT tumble(INTERVAL '1' DAY) AS w, (bidder * 7919 + auction) % 1000000 AS k, count(*) AS n, \
         sum(price) AS s, max(price) AS m FROM bids GROUP BY w, k",
        "SELECT date_bin(INTERVAL '1' DAY, date_time) AS w, (bidder * 7919 + auction) % 1000000 AS k, \
         count(*) AS n, sum(price) AS s, max(price) AS m FROM bids GROUP BY w, k",
    ),
    (
        "hop count/auction",
        "SELECT hop(INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS w, auction, count(*) AS n FROM bids GROUP BY w, auction",
        // The same five windows per bid, enumerated for the batch engine.
        "SELECT w, auction, count(*) AS n FROM (SELECT unnest(make_array(b, b - INTERVAL '2' SECOND, \
         b - INTERVAL '4' SECOND, b - INTERVAL '6' SECOND, b - INTERVAL '8' SECOND)) AS w, auction \
         FROM (SELECT date_bin(INTERVAL '2' SECOND, date_time) AS b, auction FROM bids)) GROUP BY w, auction",
    ),
    (
        "q11 sessions",
        "SELECT session(INTERVAL '10' SECOND) AS w, bidder, count(*) AS n FROM bids GROUP BY w, bidder",
        // Gaps and islands with window functions: a new session where the gap is >= 10 s.
        "SELECT bidder, sid, count(*) AS n FROM (SELECT bidder, sum(new) OVER (PARTITION BY bidder \
         ORDER BY date_time ROWS UNBOUNDED PRECEDING) AS sid FROM (SELECT bidder, date_time, \
         CASE WHEN date_time - lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time) \
         < INTERVAL '10' SECOND THEN 0 ELSE 1 END AS new FROM bids)) GROUP BY bidder, sid",
    ),
    (
        "q5 hot items",
        "SELECT w, auction, n FROM (SELECT w, auction, n, ROW_NUMBER() OVER (PARTITION BY w ORDER BY n DESC) AS rn \
         FROM (SELECT hop(INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS w, auction, count(*) AS n FROM bids \
         GROUP BY w, auction)) WHERE rn = 1",
        "SELECT w, auction, n FROM (SELECT w, auction, n, ROW_NUMBER() OVER (PARTITION BY w ORDER BY n DESC) AS rn \
         FROM (SELECT w, auction, count(*) AS n FROM (SELECT unnest(make_array(b, b - INTERVAL '2' SECOND, \
         b - INTERVAL '4' SECOND, b - INTERVAL '6' SECOND, b - INTERVAL '8' SECOND)) AS w, auction \
         FROM (SELECT date_bin(INTERVAL '2' SECOND, date_time) AS b, auction FROM bids)) GROUP BY w, auction)) \
         WHERE rn = 1",
    ),
];

/// Events per second through generator → windowed SQL → blackhole.
async fn tributary_windowed(events: u64, query: &str) -> f64 {
    let mut p = PipelineBuilder::new("bench").runtime_settings(settings());
    let src = p
        .source_sql(&source_ddl(
            events,
            ", rate = '0', event_time_field = 'date_time', watermark_delay = '1s'",
        ))
        .unwrap();
    events_per_second(p, src, Some(query), events).await
}

/// p50/p99 latency (event time of the oldest row in a batch to the sink) at `rate`.
async fn latency(rate: f64, secs: u64, query: &str) -> (f64, f64, u64) {
    let events = (rate * secs as f64) as u64;
    let mut p = PipelineBuilder::new("latency").runtime_settings(settings());
    let src = p
        .source_sql(&source_ddl(
            events,
            &format!(", rate = '{rate:.0}', start_time = 'now'"),
        ))
        .unwrap();
    let out = p.sql(src, query).await.unwrap();
    let (sink, handle) = blackhole_with_latency("date_time");
    p.sink(out, "blackhole", sink).unwrap();
    p.run_to_completion().await.unwrap();
    handle.percentiles().unwrap_or((f64::NAN, f64::NAN, 0))
}

fn m(x: f64) -> String {
    format!("{:.2}M", x / 1e6)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let events: u64 = std::env::var("NEXMARK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let latency_secs: u64 = std::env::var("NEXMARK_LATENCY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    println!(
        "Nexmark, {events} events, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let bids = collect_stream("bids", events).await;
    let bid_rows: usize = bids.iter().map(|b| b.num_rows()).sum();
    println!("bids in memory for the batch baseline: {bid_rows}\n");
    let only_join = std::env::var("NEXMARK_ONLY").is_ok_and(|v| v == "join");
    if only_join {
        joins_and_updating(&bids, events).await;
        return;
    }
    println!("generator: generator -> blackhole; tributary: generator -> SQL -> blackhole;");
    println!(
        "from mem: the same bids from memory -> SQL -> blackhole; df batch: DataFusion over them"
    );
    println!("(from mem and df batch: median of {RUNS} runs; windowed: of 3)\n");
    println!(
        "{:<18} {:>3} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "query", "par", "generator", "tributary", "from mem", "df batch", "trib/gen", "mem/batch"
    );
    let mut max_q1 = 0.0f64;
    for parallelism in [1usize, 2] {
        let gen_alone = tributary(events, parallelism, None).await;
        for (name, q) in QUERIES {
            let t = tributary(events, parallelism, Some(q)).await;
            let mem = median(RUNS, || from_memory(&bids, events, parallelism, q, false)).await;
            let b = median(RUNS, || batch(&bids, events, parallelism, q)).await;
            if name.starts_with("q1") && parallelism == 1 {
                max_q1 = t;
            }
            println!(
                "{:<18} {:>3} {:>10} {:>10} {:>10} {:>10} {:>10.2} {:>10.2}",
                name,
                parallelism,
                m(gen_alone),
                m(t),
                m(mem),
                m(b),
                t / gen_alone,
                mem / b
            );
        }
    }
    println!(
        "\n{:<18} {:>3} {:>10} {:>10} {:>10} {:>10}",
        "windowed", "par", "tributary", "from mem", "df batch", "mem/batch"
    );
    for (name, streaming, batch_q) in WINDOWED {
        let t = tributary_windowed(events, streaming).await;
        let mem = median(3, || from_memory(&bids, events, 1, streaming, true)).await;
        let b = median(3, || batch(&bids, events, 1, batch_q)).await;
        println!(
            "{:<18} {:>3} {:>10} {:>10} {:>10} {:>10.2}",
            name,
            1,
            m(t),
            m(mem),
            m(b),
            mem / b
        );
    }

    joins_and_updating(&bids, events).await;

    let rate = max_q1 / 2.0;
    let (p50, p99, n) = latency(rate, latency_secs, QUERIES[1].1).await;
    println!(
        "\nlatency, q1 at parallelism 1, {:.0} events/s (half the maximum) for {latency_secs}s: \
         p50 {:.1} ms, p99 {:.1} ms over {n} batches",
        rate,
        p50 * 1000.0,
        p99 * 1000.0
    );
}

/// CPU time of the whole process so far (user + system, every thread), in seconds:
/// `/proc/self/stat` in clock ticks of 1/100 s (Linux).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime
    // the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The interval join and the changelog `GROUP BY`, each against DataFusion batch over
/// the same rows, with CPU-seconds per million input rows.
async fn joins_and_updating(bids: &[RecordBatch], events: u64) {
    let auctions = collect_stream("auctions", events).await;
    let n: usize = bids.iter().chain(&auctions).map(|b| b.num_rows()).sum();
    for (name, query) in [
        ("interval join", JOIN),
        ("left outer interval join", LEFT_JOIN),
    ] {
        let cpu = cpu_secs();
        let (join_mem, join_rows) = join_from_memory(bids, &auctions, query).await;
        let join_cpu = (cpu_secs() - cpu) / (n as f64 / 1e6);
        let cpu = cpu_secs();
        let (join_df, join_df_rows) = join_batch(bids, &auctions, query).await;
        let join_df_cpu = (cpu_secs() - cpu) / (n as f64 / 1e6);
        println!(
            "\n{name} bids x auctions (10 s), p1, from memory: {} rows/s, DataFusion batch \
             hash join: {} rows/s, ratio {:.2} ({join_rows} joined rows; batch {join_df_rows})",
            m(join_mem),
            m(join_df),
            join_mem / join_df
        );
        println!(
            "  CPU-seconds per million input rows: streaming {join_cpu:.3}, batch {join_df_cpu:.3}"
        );
        assert_eq!(
            join_rows, join_df_rows,
            "the streaming join's rows differ from batch"
        );
    }
    let updating = "SELECT auction % 100000 AS k, count(*) AS n, max(price) AS m FROM bids GROUP BY auction % 100000";
    let cpu = cpu_secs();
    let upd_mem = median(3, || from_memory(bids, events, 1, updating, false)).await;
    let upd_cpu = (cpu_secs() - cpu) / 3.0 / (events as f64 / 1e6);
    let cpu = cpu_secs();
    let upd_df = median(3, || batch(bids, events, 1, updating)).await;
    let upd_df_cpu = (cpu_secs() - cpu) / 3.0 / (events as f64 / 1e6);
    println!(
        "GROUP BY without a window (changelog, 100k keys), p1, from memory: {} events/s, \
         DataFusion batch: {} events/s, ratio {:.2}",
        m(upd_mem),
        m(upd_df),
        upd_mem / upd_df
    );
    println!("  CPU-seconds per million events: streaming {upd_cpu:.3}, batch {upd_df_cpu:.3}");
}
