//! A dead letter: one record a pipeline could not handle, with what is known about it.
//!
//! The same fields travel three ways: as a Rust value ([`DeadLetter`]) in the stores
//! and the admin workflow, as Arrow rows ([`schema`]) from every task to the pipeline's
//! dead-letter sink, and as Avro (`schemas/tributary.dead_letter.avsc`) on a Kafka
//! dead-letter topic. `record_round_trips_through_arrow` and the contract test keep the
//! three in step.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, Int32Array, Int32Builder, Int64Array,
    Int64Builder, RecordBatch, StringArray, StringBuilder, TimestampMillisecondArray,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::BadRecordReason;

/// What the payload of a dead letter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// The input bytes exactly as they were received (a Kafka value, a line of a file).
    Bytes,
    /// A row after decoding, as one JSON object (an operator's input row).
    Row,
}

impl PayloadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Bytes => "bytes",
            PayloadFormat::Row => "row",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bytes" => Some(PayloadFormat::Bytes),
            "row" => Some(PayloadFormat::Row),
            _ => None,
        }
    }
}

/// Where a dead letter stands in the admin workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In the queue, waiting for an admin.
    Pending,
    /// Sent back to the pipeline's input; if it fails again it returns as pending,
    /// with one more attempt.
    Replayed,
    /// Given up on, with a reason.
    Discarded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Replayed => "replayed",
            Status::Discarded => "discarded",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Status::Pending),
            "replayed" => Some(Status::Replayed),
            "discarded" => Some(Status::Discarded),
            _ => None,
        }
    }
}

/// Where the record came from. Which fields are set depends on the source: a Kafka
/// topic, partition, offset, key and headers; a file and line; a generator position.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Origin {
    /// The pipeline's source table the payload can be replayed into; `None` when the
    /// payload is not one of its records (a row an operator produced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<i64>,
    /// A generator's sequence number of the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    /// The Kafka record key, kept for a replay into the topic.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_base64", default)]
    pub key: Option<Vec<u8>>,
    /// The Kafka record headers, kept for a replay into the topic.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        default,
        with = "headers_base64"
    )]
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Origin {
    /// One line for tables and logs: `orders.order_placed[2]@1234`, `in.jsonl:17`, …
    pub fn describe(&self) -> String {
        let mut s = match (&self.topic, &self.file) {
            (Some(t), _) => match (self.partition, self.offset) {
                (Some(p), Some(o)) => format!("{t}[{p}]@{o}"),
                _ => t.clone(),
            },
            (None, Some(f)) => match self.line {
                Some(l) => format!("{f}:{l}"),
                None => f.clone(),
            },
            _ => self.table.clone().unwrap_or_else(|| "-".into()),
        };
        if let Some(p) = self.position {
            s.push_str(&format!("#{p}"));
        }
        s
    }
}

/// A record that failed, with its metadata. `payload` is never altered; an edit keeps
/// the original in `original_payload`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// 32 hex digits, assigned when the record first failed and kept for its life
    /// (a replayed record that fails again comes back under the same id).
    pub id: String,
    pub pipeline: String,
    /// The node that refused it (a source table, an operator, a sink).
    pub node: String,
    pub failure_class: BadRecordReason,
    pub message: String,
    #[serde(with = "base64_bytes")]
    pub payload: Vec<u8>,
    pub payload_format: PayloadFormat,
    pub source: Origin,
    /// The schema-registry id the payload was written with, when known.
    pub schema_id: Option<i32>,
    /// The record's event time (ms since the epoch, UTC), when known.
    pub event_time: Option<i64>,
    /// When it first and last failed (ms since the epoch, UTC).
    pub first_failure: i64,
    pub last_failure: i64,
    /// How many times it failed: 1, then one more per replay that failed again.
    pub attempts: i32,
    pub status: Status,
    /// Why it was discarded, or a note about the last change of status.
    pub status_reason: Option<String>,
    /// Set once the record was edited: the payload it first failed with.
    #[serde(with = "opt_base64", default)]
    pub original_payload: Option<Vec<u8>>,
}

impl DeadLetter {
    /// A fresh id: 32 hex digits, the time in ms then 80 unpredictable bits, so ids
    /// sort by creation (stores append to their indexes instead of inserting at random
    /// places) and never collide.
    pub fn new_id() -> String {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        // `RandomState` keys are drawn from the OS once per process and then varied
        // per instance; hashing a counter with two of them gives unpredictable bits.
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let half = || {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(n);
            h.finish()
        };
        let now = now_ms().max(0) as u64 & 0xffff_ffff_ffff;
        format!("{now:012x}{:04x}{:016x}", half() & 0xffff, half())
    }

    /// The payload as text when it is UTF-8 (JSON), else as base64.
    pub fn payload_text(&self) -> String {
        match std::str::from_utf8(&self.payload) {
            Ok(s) => s.to_string(),
            Err(_) => format!("base64:{}", b64(&self.payload)),
        }
    }

    /// The JSON line `dlq list --format json` prints for it.
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "pipeline": self.pipeline,
            "node": self.node,
            "failure_class": self.failure_class.as_str(),
            "message": self.message,
            "source": self.source,
            "status": self.status.as_str(),
            "attempts": self.attempts,
            "first_failure": self.first_failure,
            "last_failure": self.last_failure,
        })
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| e.to_string())
}

mod base64_bytes {
    pub(super) fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::b64(b))
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        super::unb64(&s).map_err(serde::de::Error::custom)
    }
}

mod opt_base64 {
    pub(super) fn serialize<S: serde::Serializer>(
        b: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_some(&super::b64(b)),
            None => s.serialize_none(),
        }
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = serde::Deserialize::deserialize(d)?;
        s.map(|s| super::unb64(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// One Kafka header as the JSON form keeps it: `{"key", "value"}` (base64).
#[derive(serde::Serialize, serde::Deserialize)]
struct HeaderJson {
    key: String,
    #[serde(with = "base64_bytes")]
    value: Vec<u8>,
}

/// Headers in their JSON form (the `source_headers` column, `source.headers`).
fn headers_json(h: &[(String, Vec<u8>)]) -> Vec<HeaderJson> {
    h.iter()
        .map(|(key, value)| HeaderJson {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

mod headers_base64 {
    pub(super) fn serialize<S: serde::Serializer>(
        h: &[(String, Vec<u8>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&super::headers_json(h), s)
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, Vec<u8>)>, D::Error> {
        let h: Vec<super::HeaderJson> = serde::Deserialize::deserialize(d)?;
        Ok(h.into_iter().map(|h| (h.key, h.value)).collect())
    }
}

/// The columns of a dead letter as Arrow rows (and, through the contract, Avro fields).
/// `source_headers` is the headers as a JSON array of `{"key", "value" (base64)}`.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("pipeline", DataType::Utf8, false),
            Field::new("node", DataType::Utf8, false),
            Field::new("failure_class", DataType::Utf8, false),
            Field::new("message", DataType::Utf8, false),
            Field::new("payload", DataType::Binary, false),
            Field::new("payload_format", DataType::Utf8, false),
            Field::new("source_table", DataType::Utf8, true),
            Field::new("source_topic", DataType::Utf8, true),
            Field::new("source_partition", DataType::Int32, true),
            Field::new("source_offset", DataType::Int64, true),
            Field::new("source_file", DataType::Utf8, true),
            Field::new("source_line", DataType::Int64, true),
            Field::new("source_position", DataType::Int64, true),
            Field::new("source_key", DataType::Binary, true),
            Field::new("source_headers", DataType::Utf8, true),
            Field::new("schema_id", DataType::Int32, true),
            Field::new("event_time", ts(), true),
            Field::new("first_failure", ts(), false),
            Field::new("last_failure", ts(), false),
            Field::new("attempts", DataType::Int32, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("status_reason", DataType::Utf8, true),
            Field::new("original_payload", DataType::Binary, true),
        ]))
    });
    SCHEMA.clone()
}

/// Dead letters as one Arrow batch of [`schema`].
pub fn to_batch(letters: &[DeadLetter]) -> RecordBatch {
    let n = letters.len();
    let text = |f: &dyn Fn(&DeadLetter) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        for l in letters {
            b.append_option(f(l));
        }
        Arc::new(b.finish())
    };
    let bin = |f: &dyn Fn(&DeadLetter) -> Option<&[u8]>| -> ArrayRef {
        let mut b = BinaryBuilder::with_capacity(n, n * 64);
        for l in letters {
            b.append_option(f(l));
        }
        Arc::new(b.finish())
    };
    let int = |f: &dyn Fn(&DeadLetter) -> Option<i32>| -> ArrayRef {
        let mut b = Int32Builder::with_capacity(n);
        for l in letters {
            b.append_option(f(l));
        }
        Arc::new(b.finish())
    };
    let long = |f: &dyn Fn(&DeadLetter) -> Option<i64>| -> ArrayRef {
        let mut b = Int64Builder::with_capacity(n);
        for l in letters {
            b.append_option(f(l));
        }
        Arc::new(b.finish())
    };
    let time = |f: &dyn Fn(&DeadLetter) -> Option<i64>| -> ArrayRef {
        let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        for l in letters {
            b.append_option(f(l));
        }
        Arc::new(b.finish())
    };
    let headers: Vec<Option<String>> = letters
        .iter()
        .map(|l| {
            (!l.source.headers.is_empty()).then(|| {
                serde_json::to_string(&headers_json(&l.source.headers)).unwrap_or_default()
            })
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        text(&|l| Some(&l.id)),
        text(&|l| Some(&l.pipeline)),
        text(&|l| Some(&l.node)),
        text(&|l| Some(l.failure_class.as_str())),
        text(&|l| Some(&l.message)),
        bin(&|l| Some(&l.payload)),
        text(&|l| Some(l.payload_format.as_str())),
        text(&|l| l.source.table.as_deref()),
        text(&|l| l.source.topic.as_deref()),
        int(&|l| l.source.partition),
        long(&|l| l.source.offset),
        text(&|l| l.source.file.as_deref()),
        long(&|l| l.source.line),
        long(&|l| l.source.position),
        bin(&|l| l.source.key.as_deref()),
        Arc::new(StringArray::from(headers)),
        int(&|l| l.schema_id),
        time(&|l| l.event_time),
        time(&|l| Some(l.first_failure)),
        time(&|l| Some(l.last_failure)),
        int(&|l| Some(l.attempts)),
        text(&|l| Some(l.status.as_str())),
        text(&|l| l.status_reason.as_deref()),
        bin(&|l| l.original_payload.as_deref()),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns follow the dead-letter schema")
}

/// The dead letters of a batch of [`schema`] (as `to_batch` made, or decoded from a
/// dead-letter topic). Fails naming the column when the batch does not follow it.
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<DeadLetter>, String> {
    fn col<'a, A: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a A, String> {
        b.column_by_name(name)
            .ok_or_else(|| format!("no column {name}"))?
            .as_any()
            .downcast_ref::<A>()
            .ok_or_else(|| format!("column {name} has the wrong type"))
    }
    let s = |name| col::<StringArray>(batch, name);
    let (id, pipeline, node, class, message, format) = (
        s("id")?,
        s("pipeline")?,
        s("node")?,
        s("failure_class")?,
        s("message")?,
        s("payload_format")?,
    );
    let (table, topic, file, headers, status, status_reason) = (
        s("source_table")?,
        s("source_topic")?,
        s("source_file")?,
        s("source_headers")?,
        s("status")?,
        s("status_reason")?,
    );
    let payload = col::<BinaryArray>(batch, "payload")?;
    let key = col::<BinaryArray>(batch, "source_key")?;
    let original = col::<BinaryArray>(batch, "original_payload")?;
    let partition = col::<Int32Array>(batch, "source_partition")?;
    let schema_id = col::<Int32Array>(batch, "schema_id")?;
    let attempts = col::<Int32Array>(batch, "attempts")?;
    let offset = col::<Int64Array>(batch, "source_offset")?;
    let line = col::<Int64Array>(batch, "source_line")?;
    let position = col::<Int64Array>(batch, "source_position")?;
    let ts = |name| col::<TimestampMillisecondArray>(batch, name);
    let (event_time, first, last) = (ts("event_time")?, ts("first_failure")?, ts("last_failure")?);
    let opt_s = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    let opt_b = |a: &BinaryArray, i: usize| a.is_valid(i).then(|| a.value(i).to_vec());
    let opt_i = |a: &Int32Array, i: usize| a.is_valid(i).then(|| a.value(i));
    let opt_l = |a: &Int64Array, i: usize| a.is_valid(i).then(|| a.value(i));
    (0..batch.num_rows())
        .map(|i| {
            let headers = match opt_s(headers, i) {
                Some(h) => serde_json::from_str::<Vec<HeaderJson>>(&h)
                    .map_err(|e| format!("source_headers of {}: {e}", id.value(i)))?
                    .into_iter()
                    .map(|h| (h.key, h.value))
                    .collect(),
                None => vec![],
            };
            Ok(DeadLetter {
                id: id.value(i).to_string(),
                pipeline: pipeline.value(i).to_string(),
                node: node.value(i).to_string(),
                failure_class: BadRecordReason::parse(class.value(i))
                    .ok_or_else(|| format!("unknown failure class {}", class.value(i)))?,
                message: message.value(i).to_string(),
                payload: payload.value(i).to_vec(),
                payload_format: PayloadFormat::parse(format.value(i))
                    .ok_or_else(|| format!("unknown payload format {}", format.value(i)))?,
                source: Origin {
                    table: opt_s(table, i),
                    topic: opt_s(topic, i),
                    partition: opt_i(partition, i),
                    offset: opt_l(offset, i),
                    file: opt_s(file, i),
                    line: opt_l(line, i),
                    position: opt_l(position, i),
                    key: opt_b(key, i),
                    headers,
                },
                schema_id: opt_i(schema_id, i),
                event_time: event_time.is_valid(i).then(|| event_time.value(i)),
                first_failure: first.value(i),
                last_failure: last.value(i),
                attempts: attempts.value(i),
                status: Status::parse(status.value(i))
                    .ok_or_else(|| format!("unknown status {}", status.value(i)))?,
                status_reason: opt_s(status_reason, i),
                original_payload: opt_b(original, i),
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) fn sample(i: usize) -> DeadLetter {
    DeadLetter {
        id: format!("{i:032x}"),
        pipeline: "p".into(),
        node: "orders".into(),
        failure_class: BadRecordReason::Malformed,
        message: format!("bad record {i}"),
        payload: format!("{{\"n\":{i}").into_bytes(),
        payload_format: PayloadFormat::Bytes,
        source: Origin {
            table: Some("orders".into()),
            topic: Some("orders.order_placed".into()),
            partition: Some(1),
            offset: Some(i as i64),
            key: Some(b"k".to_vec()),
            headers: vec![("h".into(), vec![0, 255])],
            ..Origin::default()
        },
        schema_id: Some(7),
        event_time: Some(1_700_000_000_000 + i as i64),
        first_failure: 1_700_000_000_000,
        last_failure: 1_700_000_000_500,
        attempts: 1,
        status: Status::Pending,
        status_reason: None,
        original_payload: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_through_arrow_and_json() {
        let mut letters: Vec<DeadLetter> = (0..3).map(sample).collect();
        letters[1].source = Origin {
            file: Some("in.jsonl".into()),
            line: Some(4),
            ..Origin::default()
        };
        letters[2].original_payload = Some(vec![1, 2]);
        letters[2].status = Status::Discarded;
        letters[2].status_reason = Some("duplicate".into());
        letters[2].failure_class = BadRecordReason::LookupMiss;
        let back = from_batch(&to_batch(&letters)).unwrap();
        assert_eq!(back, letters);
        for l in &letters {
            let json = serde_json::to_string(l).unwrap();
            assert_eq!(&serde_json::from_str::<DeadLetter>(&json).unwrap(), l);
        }
    }

    #[test]
    fn origin_describes_each_kind_of_source() {
        assert_eq!(sample(3).source.describe(), "orders.order_placed[1]@3");
        let file = Origin {
            file: Some("a.jsonl".into()),
            line: Some(9),
            ..Origin::default()
        };
        assert_eq!(file.describe(), "a.jsonl:9");
        let generator = Origin {
            table: Some("orders".into()),
            position: Some(12),
            ..Origin::default()
        };
        assert_eq!(generator.describe(), "orders#12");
    }
}
