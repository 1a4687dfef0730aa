//! The cost of checkpoints: throughput of a stateful pipeline with checkpoints every
//! 10 s and every 1 s against checkpoints off, in one run; each checkpoint's duration
//! and size; and recovery, from starting on the latest checkpoint to the first output.
//!
//! `cargo bench --bench checkpoints` (`CHECKPOINT_EVENTS`, default 60,000,000 Nexmark
//! events, so a run lasts well over the 10 s interval). Checkpoints go to a temporary
//! directory on the local disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary::checkpoint::{
    CheckpointMeta, CheckpointSettings, CheckpointStore, LocalCheckpointStore,
};
use tributary::connectors::blackhole::BlackholeSink;
use tributary::engine::{BatchSettings, RuntimeSettings};
use tributary::pipeline::PipelineBuilder;

const QUERIES: &[(&str, &str)] = &[
    (
        "tumble ~1M keys",
        "SELECT tumble(INTERVAL '1' DAY) AS w, (bidder * 7919 + auction) % 1000000 AS k, count(*) AS n, \
         sum(price) AS s, max(price) AS m FROM bids GROUP BY w, k",
    ),
    (
        "tumble auctions",
        "SELECT tumble(INTERVAL '1' DAY) AS w, auction, count(*) AS n, sum(price) AS s, max(price) AS m \
         FROM bids GROUP BY w, auction",
    ),
    (
        "q5 hot items",
        "SELECT w, auction, n FROM (SELECT w, auction, n, ROW_NUMBER() OVER (PARTITION BY w ORDER BY n DESC) AS rn \
         FROM (SELECT hop(INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS w, auction, count(*) AS n FROM bids \
         GROUP BY w, auction)) WHERE rn = 1",
    ),
];

fn settings(checkpoints: Option<CheckpointSettings>) -> RuntimeSettings {
    RuntimeSettings {
        channel_capacity: 8,
        batch: BatchSettings {
            size: 8192,
            flush_interval: Duration::from_millis(100),
        },
        checkpoints,
        ..RuntimeSettings::default()
    }
}

/// Runs `query` over `events` bids; events per second and when the first output
/// batch reached the sink (from start).
async fn run(events: u64, query: &str, checkpoints: Option<CheckpointSettings>) -> (f64, f64) {
    let mut p = PipelineBuilder::new("ckbench").runtime_settings(settings(checkpoints));
    let src = p
        .source_sql(&format!(
            "CREATE TABLE bids WITH (connector = 'generator', world = 'nexmark', stream = 'bids', \
             count = '{events}', rate = '0', event_time_field = 'date_time', watermark_delay = '1s')"
        ))
        .unwrap();
    let out = p.sql(src, query).await.unwrap();
    let sink = BlackholeSink::new(None);
    let handle = sink.handle();
    p.sink(out, "blackhole", Arc::new(sink)).unwrap();
    let t = Instant::now();
    p.run_to_completion().await.unwrap();
    let first = handle
        .first_write()
        .map(|at| at.duration_since(t).as_secs_f64())
        .unwrap_or(f64::NAN);
    (events as f64 / t.elapsed().as_secs_f64(), first)
}

fn checkpointing(store: &Arc<LocalCheckpointStore>, every: Duration) -> CheckpointSettings {
    CheckpointSettings {
        interval: every,
        store: store.clone(),
        // Every checkpoint kept, to report what each wrote.
        retain: 100_000,
        exactly_once: true,
        restore: None,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let events: u64 = std::env::var("CHECKPOINT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000_000);
    println!("checkpoint cost, {events} Nexmark events, parallelism 1, local disk\n");
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>11} {:>11} {:>11}",
        "query",
        "off ev/s",
        "10s ev/s",
        "1s ev/s",
        "10s/off",
        "1s/off",
        "ckpt ms",
        "mean bytes",
        "full bytes",
        "restore"
    );
    for (name, q) in QUERIES {
        let (off, _) = run(events, q, None).await;
        let dir10 = tempfile::tempdir().unwrap();
        let store10 = Arc::new(LocalCheckpointStore::new(dir10.path()));
        let (ten, _) = run(
            events,
            q,
            Some(checkpointing(&store10, Duration::from_secs(10))),
        )
        .await;
        let dir1 = tempfile::tempdir().unwrap();
        let store1 = Arc::new(LocalCheckpointStore::new(dir1.path()));
        let (one, _) = run(
            events,
            q,
            Some(checkpointing(&store1, Duration::from_secs(1))),
        )
        .await;
        // At 1 s: the slowest checkpoint; the mean bytes a checkpoint wrote (deltas
        // are smaller than the state) and the most (a full snapshot of the largest
        // state); and what restoring the last checkpoint before the end of input
        // reads (every blob its tasks' chains name; the very last checkpoint, taken
        // at the end, holds no window).
        let kept = store1.list().await.unwrap();
        let ms = kept.iter().map(|m| m.duration_ms).max().unwrap_or(0);
        let written = kept.iter().map(|m| m.bytes).sum::<u64>() / kept.len().max(1) as u64;
        let most = kept.iter().map(|m| m.bytes).max().unwrap_or(0);
        let before_end = kept.iter().rev().nth(1).cloned();
        let state = match &before_end {
            Some(meta) => state_bytes(store1.as_ref(), meta).await,
            None => 0,
        };
        println!(
            "{:<16} {:>10} {:>10} {:>10} {:>8.2} {:>8.2} {:>8} {:>11} {:>11} {:>11}",
            name,
            m(off),
            m(ten),
            m(one),
            ten / off,
            one / off,
            ms,
            written,
            most,
            state
        );
        // Recovery: the same pipeline started on that checkpoint.
        if let Some(latest) = before_end {
            let settings = CheckpointSettings {
                restore: Some(latest.clone()),
                ..checkpointing(&store1, Duration::from_secs(1))
            };
            let t = Instant::now();
            let (_, first) = run(events, q, Some(settings)).await;
            println!(
                "{:<16} recovery from checkpoint {} ({} bytes): first output after {:.0} ms (run {:.1} s)",
                "",
                latest.id,
                state,
                first * 1000.0,
                t.elapsed().as_secs_f64()
            );
        }
    }
}

/// The bytes a restore of `meta` reads: every blob of every task's chain.
async fn state_bytes(store: &dyn CheckpointStore, meta: &CheckpointMeta) -> u64 {
    let mut bytes = 0;
    for task in &meta.blobs {
        for id in meta.chain(task) {
            bytes += store.get_blob(id, task).await.unwrap().len() as u64;
        }
    }
    bytes
}

fn m(x: f64) -> String {
    format!("{:.2}M", x / 1e6)
}
