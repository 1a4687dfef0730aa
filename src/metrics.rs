//! Every metric Tributary exposes, in one place.
//!
//! Labels are few and bounded: `pipeline` and `operator` (a node name), plus `reason`
//! for bad records. Names follow Prometheus conventions (`_total` counters, `_seconds`).
//! Every series is created by a function of this module and described in [`SERIES`]
//! (name, type, unit and the `# HELP` text of `/metrics`, installed by [`describe`]);
//! docs/operations.md lists them with their labels for operators, and tests keep both
//! in step with the source.

use metrics::{Counter, Gauge, Histogram, Unit, counter, gauge, histogram};

/// The kind of a series, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One series: its name, kind, unit (if any) and `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
}

const fn series(name: &'static str, kind: Kind, unit: Option<Unit>, help: &'static str) -> Series {
    Series {
        name,
        kind,
        unit,
        help,
    }
}

const S: Option<Unit> = Some(Unit::Seconds);
const B: Option<Unit> = Some(Unit::Bytes);

/// Every series Tributary emits, with its `# HELP` text (the table above, one line each).
#[rustfmt::skip]
pub const SERIES: &[Series] = &[
    series("tributary_rows_in_total", Kind::Counter, None, "Rows received by an operator or sink."),
    series("tributary_rows_out_total", Kind::Counter, None, "Rows emitted by a source or operator."),
    series("tributary_batches_out_total", Kind::Counter, None, "Batches emitted by a source or operator."),
    series("tributary_processing_seconds", Kind::Histogram, S, "Time an operator took to process one batch."),
    series("tributary_channel_fill_ratio", Kind::Gauge, None, "Fill of an operator's input channels, 0 to 1 (1: backpressure)."),
    series("tributary_source_lag_seconds", Kind::Gauge, S, "How far a source is behind its schedule or input."),
    series("tributary_sink_latency_seconds", Kind::Histogram, S, "Event time to sink, where the sink measures it."),
    series("tributary_bad_records_total", Kind::Counter, None, "Records refused, by reason (failure class), whatever the policy did with them."),
    series("tributary_dead_letters_total", Kind::Counter, None, "Records sent to the dead-letter queue, by failure class."),
    series("tributary_dead_letter_queue_size", Kind::Gauge, None, "Pending dead letters of a pipeline, set by its dead-letter sink."),
    series("tributary_dead_letter_oldest_age_seconds", Kind::Gauge, S, "Age of a pipeline's oldest pending dead letter (0 when none)."),
    series("tributary_watermark_seconds", Kind::Gauge, S, "An operator's combined input watermark, in seconds since the epoch."),
    series("tributary_late_rows_total", Kind::Counter, None, "Rows dropped because their window was already emitted."),
    series("tributary_state_bytes", Kind::Gauge, B, "Memory held by an operator's state."),
    series("tributary_checkpoints_total", Kind::Counter, None, "Checkpoints committed."),
    series("tributary_checkpoints_failed_total", Kind::Counter, None, "Checkpoints abandoned (a task did not acknowledge in time)."),
    series("tributary_checkpoint_seconds", Kind::Histogram, S, "Time from a checkpoint's trigger to its commit."),
    series("tributary_checkpoint_alignment_seconds", Kind::Histogram, S, "Time from a checkpoint's trigger until every task acknowledged its barriers."),
    series("tributary_checkpoint_bytes", Kind::Gauge, B, "Size of the last committed checkpoint."),
    series("tributary_checkpoint_age_seconds", Kind::Gauge, S, "Time since the last committed checkpoint."),
    series("tributary_component_up", Kind::Gauge, None, "1 while a component reaches its infrastructure, 0 while connecting or retrying."),
    series("tributary_component_retrying_seconds", Kind::Gauge, S, "Length of a component's current outage, set at scrape time (0 when not retrying)."),
    series("tributary_dynamodb_writes_total", Kind::Counter, None, "Items a DynamoDB sink put or deleted."),
    series("tributary_webhook_requests_total", Kind::Counter, None, "Requests of a webhook sink by outcome: delivered (2xx), retried (an outage: no connection, timeout, 408, 429, 5xx), refused (another 4xx: dead-lettered)."),
    series("tributary_dynamodb_stale_writes_total", Kind::Counter, None, "DynamoDB writes skipped because the item held a newer version (a replay, a fenced process)."),
    series("tributary_lookup_cache_hits_total", Kind::Counter, None, "Keys a lookup table found in its cache."),
    series("tributary_lookup_cache_misses_total", Kind::Counter, None, "Keys a lookup table read from DynamoDB."),
    series("tributary_lookup_not_found_total", Kind::Counter, None, "Keys a lookup table read that have no item (joined as misses)."),
    series("tributary_lookup_bad_items_total", Kind::Counter, None, "Lookup items whose attributes do not fit the declared columns (joined as misses)."),
    series("tributary_lookup_seconds", Kind::Histogram, S, "Latency of one lookup read request (BatchGetItem)."),
    series("tributary_kafka_breaker_state", Kind::Gauge, None, "State of a Kafka cluster's circuit breaker: 0 closed, 1 half-open, 2 open."),
    series("tributary_kafka_breaker_transitions_total", Kind::Counter, None, "State changes of a Kafka cluster's circuit breaker."),
    series("tributary_fallback_records_total", Kind::Counter, None, "Records of an exactly-once Kafka sink stored in the fallback store (path=stored) or drained from it to Kafka (path=drained)."),
];

/// Gives every series in [`SERIES`] its `# HELP` text and unit in the installed
/// recorder. Called once, right after the recorder is installed.
pub fn describe() {
    for s in SERIES {
        match (s.kind, s.unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(s.name, u, s.help),
            (Kind::Counter, None) => metrics::describe_counter!(s.name, s.help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(s.name, u, s.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(s.name, s.help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(s.name, u, s.help),
            (Kind::Histogram, None) => metrics::describe_histogram!(s.name, s.help),
        }
    }
}

fn labels(pipeline: &str, operator: &str) -> [(&'static str, String); 2] {
    [
        ("pipeline", pipeline.to_string()),
        ("operator", operator.to_string()),
    ]
}

pub fn rows_in(pipeline: &str, operator: &str) -> Counter {
    counter!("tributary_rows_in_total", &labels(pipeline, operator))
}

pub fn rows_out(pipeline: &str, operator: &str) -> Counter {
    counter!("tributary_rows_out_total", &labels(pipeline, operator))
}

pub fn batches_out(pipeline: &str, operator: &str) -> Counter {
    counter!("tributary_batches_out_total", &labels(pipeline, operator))
}

pub fn processing_latency(pipeline: &str, operator: &str) -> Histogram {
    histogram!("tributary_processing_seconds", &labels(pipeline, operator))
}

pub fn channel_fill(pipeline: &str, operator: &str) -> Gauge {
    gauge!("tributary_channel_fill_ratio", &labels(pipeline, operator))
}

pub fn source_lag(pipeline: &str, operator: &str) -> Gauge {
    gauge!("tributary_source_lag_seconds", &labels(pipeline, operator))
}

pub fn sink_latency(pipeline: &str, operator: &str) -> Histogram {
    histogram!(
        "tributary_sink_latency_seconds",
        &labels(pipeline, operator)
    )
}

pub fn bad_records(pipeline: &str, operator: &str, reason: &'static str) -> Counter {
    counter!(
        "tributary_bad_records_total",
        "pipeline" => pipeline.to_string(),
        "operator" => operator.to_string(),
        "reason" => reason
    )
}

pub fn dead_letters(pipeline: &str, class: &'static str) -> Counter {
    counter!(
        "tributary_dead_letters_total",
        "pipeline" => pipeline.to_string(),
        "class" => class
    )
}

pub fn dead_letter_queue_size(pipeline: &str) -> Gauge {
    gauge!("tributary_dead_letter_queue_size", "pipeline" => pipeline.to_string())
}

pub fn dead_letter_oldest_age(pipeline: &str) -> Gauge {
    gauge!("tributary_dead_letter_oldest_age_seconds", "pipeline" => pipeline.to_string())
}

pub fn watermark(pipeline: &str, operator: &str) -> Gauge {
    gauge!("tributary_watermark_seconds", &labels(pipeline, operator))
}

pub fn late_rows(pipeline: &str, operator: &str) -> Counter {
    counter!("tributary_late_rows_total", &labels(pipeline, operator))
}

pub fn state_bytes(pipeline: &str, operator: &str) -> Gauge {
    gauge!("tributary_state_bytes", &labels(pipeline, operator))
}

/// A pipeline's checkpoint metrics.
pub struct CheckpointMetrics {
    pub completed: Counter,
    pub failed: Counter,
    pub duration: Histogram,
    pub alignment: Histogram,
    pub size: Gauge,
    pub age: Gauge,
}

pub fn checkpoints(pipeline: &str) -> CheckpointMetrics {
    let l = [("pipeline", pipeline.to_string())];
    CheckpointMetrics {
        completed: counter!("tributary_checkpoints_total", &l),
        failed: counter!("tributary_checkpoints_failed_total", &l),
        duration: histogram!("tributary_checkpoint_seconds", &l),
        alignment: histogram!("tributary_checkpoint_alignment_seconds", &l),
        size: gauge!("tributary_checkpoint_bytes", &l),
        age: gauge!("tributary_checkpoint_age_seconds", &l),
    }
}

/// Items a DynamoDB sink wrote (puts and deletes), by DynamoDB table.
pub fn dynamodb_writes(pipeline: &str, table: &str) -> Counter {
    counter!("tributary_dynamodb_writes_total", "pipeline" => pipeline.to_string(), "table" => table.to_string())
}

/// Requests of a webhook sink, by table and outcome (`delivered`, `retried`,
/// `refused`).
pub fn webhook_requests(pipeline: &str, table: &str, outcome: &'static str) -> Counter {
    counter!("tributary_webhook_requests_total", "pipeline" => pipeline.to_string(), "table" => table.to_string(), "outcome" => outcome)
}

/// Writes a DynamoDB sink skipped because the item held a newer version (a replay,
/// a fenced process's late write).
pub fn dynamodb_stale_writes(pipeline: &str, table: &str) -> Counter {
    counter!("tributary_dynamodb_stale_writes_total", "pipeline" => pipeline.to_string(), "table" => table.to_string())
}

/// A lookup table read by key: cache hits, keys read, keys without an item, items
/// that did not fit the columns, and the latency of each read request.
pub struct LookupMetrics {
    pub hits: Counter,
    pub fetched: Counter,
    pub not_found: Counter,
    pub bad_items: Counter,
    pub latency: Histogram,
}

pub fn lookup(pipeline: &str, table: &str) -> LookupMetrics {
    let labels = [
        ("pipeline", pipeline.to_string()),
        ("table", table.to_string()),
    ];
    LookupMetrics {
        hits: counter!("tributary_lookup_cache_hits_total", &labels),
        fetched: counter!("tributary_lookup_cache_misses_total", &labels),
        not_found: counter!("tributary_lookup_not_found_total", &labels),
        bad_items: counter!("tributary_lookup_bad_items_total", &labels),
        latency: histogram!("tributary_lookup_seconds", &labels),
    }
}

/// A component's health gauges, kept by [`crate::health`]: `up` (1 or 0) and the
/// length of its current outage in seconds.
pub fn component_up(pipeline: &str, component: &str, kind: &'static str) -> Gauge {
    gauge!(
        "tributary_component_up",
        "pipeline" => pipeline.to_string(),
        "component" => component.to_string(),
        "kind" => kind,
    )
}

pub fn component_retrying_seconds(pipeline: &str, component: &str, kind: &'static str) -> Gauge {
    gauge!(
        "tributary_component_retrying_seconds",
        "pipeline" => pipeline.to_string(),
        "component" => component.to_string(),
        "kind" => kind,
    )
}

/// A Kafka cluster's circuit breaker (`crate::fallback::breaker`): its state (0 closed,
/// 1 half-open, 2 open) and its transitions.
pub fn kafka_breaker_state(cluster: &str) -> Gauge {
    gauge!("tributary_kafka_breaker_state", "cluster" => cluster.to_string())
}

pub fn kafka_breaker_transitions(cluster: &str) -> Counter {
    counter!("tributary_kafka_breaker_transitions_total", "cluster" => cluster.to_string())
}

/// Records of an exactly-once Kafka sink that went through the fallback store, by
/// `path`: `"stored"` in it, `"drained"` from it to Kafka.
pub fn fallback_records(pipeline: &str, table: &str, path: &'static str) -> Counter {
    counter!(
        "tributary_fallback_records_total",
        "pipeline" => pipeline.to_string(),
        "table" => table.to_string(),
        "path" => path
    )
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    /// Touches every series once, through the functions the engine calls.
    fn touch_every_series() {
        let (p, op) = ("p", "op");
        rows_in(p, op).increment(1);
        rows_out(p, op).increment(1);
        batches_out(p, op).increment(1);
        processing_latency(p, op).record(0.01);
        channel_fill(p, op).set(0.5);
        source_lag(p, op).set(1.0);
        sink_latency(p, op).record(0.01);
        bad_records(p, op, "decode").increment(1);
        dead_letters(p, "decode").increment(1);
        dead_letter_queue_size(p).set(1.0);
        dead_letter_oldest_age(p).set(1.0);
        watermark(p, op).set(1.0);
        late_rows(p, op).increment(1);
        state_bytes(p, op).set(1.0);
        let c = checkpoints(p);
        c.completed.increment(1);
        c.failed.increment(1);
        c.duration.record(0.01);
        c.alignment.record(0.01);
        c.size.set(1.0);
        c.age.set(1.0);
        dynamodb_writes(p, "t").increment(1);
        dynamodb_stale_writes(p, "t").increment(1);
        let l = lookup(p, "t");
        l.hits.increment(1);
        l.fetched.increment(1);
        l.not_found.increment(1);
        l.bad_items.increment(1);
        l.latency.record(0.01);
        component_up(p, "events[0]", "kafka").set(1.0);
        component_retrying_seconds(p, "events[0]", "kafka").set(0.0);
        kafka_breaker_state("c").set(0.0);
        kafka_breaker_transitions("c").increment(1);
        fallback_records(p, "t", "stored").increment(1);
        webhook_requests(p, "t", "delivered").increment(1);
    }

    /// The rendered `/metrics` of every series: each `tributary_` family that has a
    /// sample has a `# HELP` line (with the text of [`SERIES`]) and a `# TYPE` line of
    /// its kind, and the families are exactly those of [`SERIES`].
    #[test]
    fn every_series_renders_with_help_and_type() {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.001, 0.1, 10.0])
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            touch_every_series();
        });
        let text = handle.render();

        let mut help = BTreeMap::new();
        let mut types = BTreeMap::new();
        let mut sampled = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').unwrap();
                help.insert(name.to_string(), text.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                types.insert(name.to_string(), kind.to_string());
            } else if line.starts_with("tributary_") {
                let name = line.split(['{', ' ']).next().unwrap();
                sampled.insert(name.to_string());
            } else {
                assert!(
                    line.is_empty() || !line.contains("tributary_"),
                    "unexpected line: {line}"
                );
            }
        }
        // A histogram's samples are `_bucket`, `_sum` and `_count` of its family.
        let families: BTreeSet<String> = sampled
            .iter()
            .map(|n| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        n.strip_suffix(s)
                            .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                    })
                    .unwrap_or(n)
                    .to_string()
            })
            .collect();
        for f in &families {
            assert!(help.contains_key(f), "no # HELP for {f} in:\n{text}");
            assert!(types.contains_key(f), "no # TYPE for {f} in:\n{text}");
        }
        let expected: BTreeSet<String> = SERIES.iter().map(|s| s.name.to_string()).collect();
        assert_eq!(expected.len(), SERIES.len(), "a name twice in SERIES");
        assert_eq!(families, expected, "series rendered vs SERIES");
        for s in SERIES {
            assert_eq!(help[s.name], s.help, "help of {}", s.name);
            let kind = match s.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert_eq!(types[s.name], kind, "type of {}", s.name);
        }
    }
}
