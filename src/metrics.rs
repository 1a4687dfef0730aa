//! Every metric Tributary exposes, in one place.
//!
//! Labels are few and bounded: `pipeline` and `operator` (a node name), plus `reason`
//! for bad records. Names follow Prometheus conventions (`_total` counters, `_seconds`).
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `tributary_rows_in_total` | counter | rows received by an operator or sink |
//! | `tributary_rows_out_total` | counter | rows emitted by a source or operator |
//! | `tributary_batches_out_total` | counter | batches emitted |
//! | `tributary_processing_seconds` | histogram | time to process one batch |
//! | `tributary_channel_fill_ratio` | gauge | fill of an operator's input channels (0–1): backpressure |
//! | `tributary_source_lag_seconds` | gauge | how far a source is behind its schedule or input |
//! | `tributary_bad_records_total` | counter | records refused, by reason (failure class), whatever the policy did with them |
//! | `tributary_dead_letters_total` | counter | records sent to the dead-letter queue (`pipeline`, `class`) |
//! | `tributary_dead_letter_queue_size` | gauge | pending dead letters of a pipeline (`pipeline`), set by its dead-letter sink |
//! | `tributary_dead_letter_oldest_age_seconds` | gauge | age of a pipeline's oldest pending dead letter (0 when none) |
//! | `tributary_sink_latency_seconds` | histogram | event time to sink, where the sink measures it |
//! | `tributary_watermark_seconds` | gauge | an operator's combined input watermark (seconds since the epoch) |
//! | `tributary_late_rows_total` | counter | rows dropped because their window was already emitted |
//! | `tributary_state_bytes` | gauge | memory held by an operator's state |
//! | `tributary_checkpoints_total` | counter | checkpoints committed (`pipeline`) |
//! | `tributary_checkpoints_failed_total` | counter | checkpoints abandoned (a task did not acknowledge in time) |
//! | `tributary_checkpoint_seconds` | histogram | trigger to commit |
//! | `tributary_checkpoint_alignment_seconds` | histogram | trigger until every task acknowledged (barriers through the graph, aligned) |
//! | `tributary_checkpoint_bytes` | gauge | size of the last committed checkpoint |
//! | `tributary_checkpoint_age_seconds` | gauge | time since the last committed checkpoint |
//! | `tributary_component_up` | gauge | 1 while a component (`pipeline`, `component`, `kind`) reaches its infrastructure; kept by `crate::health` |
//! | `tributary_component_retrying_seconds` | gauge | length of a component's current outage, set at scrape time; kept by `crate::health` |

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

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
