//! Decoding Kafka record values into Arrow batches, off the task that polls the
//! consumer.
//!
//! Owns the record decoders (JSON, or Avro in the Confluent wire format) and the
//! workers that run them. The polling thread (`poll.rs`) copies each record's value,
//! and the attributes its metadata columns need, into a chunk per partition
//! ([`RawRecords`]); the source task hands each chunk it receives to [`Decoding`],
//! whose workers decode chunks while the next ones are polled, so polling, decoding
//! and emitting run on different cores.
//!
//! Invariants:
//! - A partition's chunks all go to one worker (its lane), which decodes them in the
//!   order sent: a partition's rows stay in offset order, and every batch holds one
//!   partition's rows. There is a worker per partition of the task, up to the number
//!   of cores.
//! - At most [`MAX_IN_FLIGHT`] chunks per worker are out at once; sending another
//!   first waits for a result and emits it (back-pressure on polling, bounded memory).
//! - [`Decoding::drain`] returns once every chunk sent has been emitted or refused.
//!   The source drains before a checkpoint barrier, at the end of a bounded partition
//!   and at the end, so a checkpoint's offsets never run ahead of the rows emitted
//!   before its barrier.
//! - A record the decoder refuses is reported by its worker, through its own handle on
//!   the task's bad-record counters, and never reaches a batch.
//! - Only the record is ever blamed: a writer schema that cannot be fetched because
//!   the registry is unavailable is waited for ([`Schemas`]), the worker blocking and
//!   so back-pressuring polling and holding back checkpoints; a record is refused for
//!   its schema only when the registry answers that the id does not exist or the
//!   schema does not resolve.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use rdkafka::{ClientConfig, Message};
use tokio::sync::mpsc;

use super::headers::HeaderReader;
use super::metadata::{MetadataColumns, RecordMeta};
use super::{Result, kafka_error};
use crate::dlq::{BadRecordReason, BadRecords};
use crate::engine::{Collector, StopSignal, TaskInfo};
use crate::formats::json::JsonDecoder;
use crate::health::Probe;
use crate::registry::RegistryError;
use crate::registry::client::RegistryClient;

/// Chunks per worker sent and not yet emitted: one being decoded while the next
/// waits, so neither side idles for the other.
pub(super) const MAX_IN_FLIGHT: usize = 2;

/// Records of one partition copied out of the consumer's buffers: their values back
/// to back, where each ends, and (when the table has metadata columns) each one's
/// attributes.
#[derive(Default)]
pub(super) struct RawRecords {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    metas: Vec<RecordMeta>,
    /// Each record's offset and key, for the dead letter of a record refused.
    offsets: Vec<i64>,
    /// Keys, one after the other in `key_bytes` (no allocation per record).
    key_bytes: Vec<u8>,
    keys: Vec<Option<(usize, usize)>>,
    // Not the headers: librdkafka parses a record's header block only when asked,
    // and a refused record's are read again (`headers.rs`).
}

/// A record's headers as (name, value) pairs (a header without a value: empty).
pub(super) fn headers_of<M: Message>(m: &M) -> Vec<(String, Vec<u8>)> {
    use rdkafka::message::Headers;
    m.headers().map_or_else(Vec::new, |h| {
        h.iter()
            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
            .collect()
    })
}

impl RawRecords {
    /// Adds record `m` (its value, and its attributes when the table has metadata
    /// columns). A record without a value, or with an attribute its column cannot
    /// hold, is reported to `bad` instead.
    pub(super) fn take<M: Message>(&mut self, m: &M, meta: &MetadataColumns, bad: &mut BadRecords) {
        let Some(value) = m.payload() else {
            let detail = format!(
                "partition {} offset {}: a record without a value",
                m.partition(),
                m.offset()
            );
            blame(bad, m).report(BadRecordReason::Malformed, &detail, &[]);
            return;
        };
        let attributes = match meta.capture(m) {
            Ok(_) if meta.is_empty() => None,
            Ok(captured) => Some(captured),
            Err(why) => {
                let detail = format!("partition {} offset {}: {why}", m.partition(), m.offset());
                blame(bad, m).report(BadRecordReason::SchemaMismatch, &detail, value);
                return;
            }
        };
        self.push(value, attributes, m);
    }

    fn push<M: Message>(&mut self, value: &[u8], meta: Option<RecordMeta>, m: &M) {
        self.bytes.extend_from_slice(value);
        self.ends.push(self.bytes.len());
        self.metas.extend(meta);
        self.offsets.push(m.offset());
        let key = m.key().map(|k| {
            let start = self.key_bytes.len();
            self.key_bytes.extend_from_slice(k);
            (start, self.key_bytes.len())
        });
        self.keys.push(key);
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.metas.clear();
        self.offsets.clear();
        self.keys.clear();
        self.key_bytes.clear();
    }
}

/// `bad` with record `m`'s origin (partition, offset, key, headers) filled in, for
/// reporting `m`. Only a refused record pays for copying its key and headers.
fn blame<'a, M: Message>(bad: &'a mut BadRecords, m: &M) -> &'a mut BadRecords {
    let origin = bad.origin_mut();
    origin.partition = Some(m.partition());
    origin.offset = Some(m.offset());
    origin.key = m.key().map(<[u8]>::to_vec);
    origin.headers = headers_of(m);
    bad
}

/// A decoded chunk: its partition and rows (`None` when every record was refused).
pub(super) type Decoded = (i32, Result<Option<RecordBatch>>);

/// The source task's side of the decoding workers.
pub(super) struct Decoding {
    table: String,
    /// One worker per lane, each with its own decoder; a partition stays on the lane
    /// it was first given, so its chunks are decoded and returned in order.
    lanes: Vec<mpsc::UnboundedSender<(i32, RawRecords)>>,
    lane_of: BTreeMap<i32, usize>,
    /// Results, each with its chunk emptied for reuse.
    done: mpsc::UnboundedReceiver<(Decoded, RawRecords)>,
    in_flight: usize,
    /// Emptied chunks go back to the polling thread, which fills their buffers again
    /// rather than grow new ones (a chunk is megabytes; growing one per batch cost
    /// allocations, copies and page faults).
    recycle: std::sync::mpsc::Sender<RawRecords>,
}

impl Decoding {
    /// Starts `lanes` workers, each with a decoder from `decoder`; `bad` is their
    /// handle for reporting refused records, and `client` the source's client settings,
    /// to read refused records' headers again with; emptied chunks go to `recycle`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        table: &str,
        lanes: usize,
        decoder: impl Fn() -> Result<RecordDecoder>,
        meta: &MetadataColumns,
        topic: &str,
        bad: &BadRecords,
        client: &ClientConfig,
        recycle: std::sync::mpsc::Sender<RawRecords>,
    ) -> Result<Self> {
        let (results, done) = mpsc::unbounded_channel();
        let mut senders = Vec::new();
        for _ in 0..lanes.max(1) {
            let (work, chunks) = mpsc::unbounded_channel();
            // A worker ends when its sender is dropped (the source ended or was
            // cancelled).
            tokio::spawn(decode_chunks(
                decoder()?,
                meta.clone(),
                topic.to_string(),
                (bad.clone(), HeaderReader::new(client.clone(), topic)),
                chunks,
                results.clone(),
            ));
            senders.push(work);
        }
        Ok(Decoding {
            table: table.to_string(),
            lanes: senders,
            lane_of: BTreeMap::new(),
            done,
            in_flight: 0,
            recycle,
        })
    }

    /// Sends partition `p`'s chunk `raw` to its worker, first emitting results while
    /// [`MAX_IN_FLIGHT`] chunks per worker are out. An empty chunk is only recycled.
    pub(super) async fn send(
        &mut self,
        p: i32,
        raw: RawRecords,
        out: &mut Collector,
    ) -> Result<()> {
        if raw.len() == 0 {
            let _ = self.recycle.send(raw);
            return Ok(());
        }
        while self.in_flight >= MAX_IN_FLIGHT * self.lanes.len() {
            self.emit_next(out).await?;
        }
        let next = self.lane_of.len() % self.lanes.len();
        let lane = *self.lane_of.entry(p).or_insert(next);
        self.lanes[lane]
            .send((p, raw))
            .map_err(|_| self.stopped())?;
        self.in_flight += 1;
        Ok(())
    }

    /// Whether any chunk is out, i.e. whether [`Decoding::finished`] will complete.
    pub(super) fn busy(&self) -> bool {
        self.in_flight > 0
    }

    /// The next chunk's result, once decoded (a partition's in the order sent).
    /// Cancel-safe: a result not returned stays in the channel. Call only when
    /// [`Decoding::busy`].
    pub(super) async fn finished(&mut self) -> Decoded {
        match self.done.recv().await {
            Some((decoded, spent)) => {
                self.in_flight -= 1;
                // The polling thread may have ended (a bounded read): then the chunk
                // is simply freed.
                let _ = self.recycle.send(spent);
                decoded
            }
            None => (-1, Err(self.stopped())),
        }
    }

    /// Waits for the next result and emits it (not cancel-safe: the select loop uses
    /// [`Decoding::finished`]).
    async fn emit_next(&mut self, out: &mut Collector) -> Result<()> {
        let decoded = self.finished().await;
        Self::emit(decoded, out).await
    }

    /// A worker ended before the source (it panicked).
    fn stopped(&self) -> crate::Error {
        kafka_error(&self.table, "decoding", "the decoding worker stopped")
    }

    /// Emits a chunk's rows as rows of its partition's split.
    pub(super) async fn emit((p, rows): Decoded, out: &mut Collector) -> Result<()> {
        match rows? {
            Some(batch) => out.emit_split(p as u64, batch).await,
            None => Ok(()),
        }
    }

    /// Emits every result: when this returns, each record of the chunks sent is in a
    /// batch emitted or was refused.
    pub(super) async fn drain(&mut self, out: &mut Collector) -> Result<()> {
        while self.busy() {
            self.emit_next(out).await?;
        }
        Ok(())
    }
}

/// A worker: decodes each chunk into rows of the table's columns, in order. The dead
/// letters of a chunk's refused records are held until `reader` has read their
/// headers again, and released before the chunk's result is sent: a checkpoint
/// barrier, which waits for every result, comes after them.
async fn decode_chunks(
    mut decoder: RecordDecoder,
    meta: MetadataColumns,
    topic: String,
    (mut bad, reader): (BadRecords, HeaderReader),
    mut chunks: mpsc::UnboundedReceiver<(i32, RawRecords)>,
    results: mpsc::UnboundedSender<(Decoded, RawRecords)>,
) {
    bad.hold_letters();
    let mut reader = Some(reader);
    while let Some((p, mut raw)) = chunks.recv().await {
        bad.origin_mut().partition = Some(p);
        let rows = decoder.decode(&mut raw, &meta, &topic, &mut bad).await;
        raw.clear();
        let mut held = bad.take_held();
        if !held.is_empty() {
            let Some(mut r) = reader.take() else { return };
            // The reader blocks on the cluster: off the runtime's threads.
            match tokio::task::spawn_blocking(move || {
                r.fill(p, &mut held);
                (r, held)
            })
            .await
            {
                Ok((r, letters)) => {
                    reader = Some(r);
                    bad.release(letters);
                }
                // It panicked: the worker ends, and the source with it, before any
                // checkpoint passes these records.
                Err(_) => return,
            }
        }
        if results.send(((p, rows), raw)).is_err() {
            return;
        }
    }
}

/// Turns one partition's record values into rows of the table's columns.
pub(super) enum RecordDecoder {
    Json(JsonDecoder),
    Avro(AvroDecoder),
}

impl RecordDecoder {
    /// The decoder for a table whose record values have columns `value`: JSON, or
    /// Avro with writer schemas from `avro` (its registry).
    pub(super) fn new(
        value: SchemaRef,
        avro: Option<Schemas>,
        reader_schema: Option<Arc<str>>,
        batch_size: usize,
    ) -> Result<Self> {
        Ok(match avro {
            None => RecordDecoder::Json(JsonDecoder::new(value)?),
            Some(registry) => {
                RecordDecoder::Avro(AvroDecoder::new(registry, reader_schema, value, batch_size))
            }
        })
    }

    /// One chunk's records as rows, with their metadata columns; refused records are
    /// reported to `bad` and left out.
    async fn decode(
        &mut self,
        raw: &mut RawRecords,
        meta: &MetadataColumns,
        topic: &str,
        bad: &mut BadRecords,
    ) -> Result<Option<RecordBatch>> {
        let RawRecords {
            bytes,
            ends,
            metas,
            offsets,
            key_bytes,
            keys,
        } = raw;
        let mut metas = metas.drain(..);
        let mut kept = Vec::new();
        let mut start = 0;
        bad.origin_mut().topic = Some(topic.to_string());
        for (i, &end) in ends.iter().enumerate() {
            let origin = bad.origin_mut();
            origin.offset = offsets.get(i).copied();
            // Reusing the key buffer: no allocation per record.
            match keys.get(i).copied().flatten() {
                Some((a, b)) => {
                    let key = origin.key.get_or_insert_with(Vec::new);
                    key.clear();
                    key.extend_from_slice(&key_bytes[a..b]);
                }
                None => origin.key = None,
            }
            let accepted = self.push(&bytes[start..end], bad).await?;
            start = end;
            if let Some(m) = metas.next()
                && accepted
            {
                kept.push(m);
            }
        }
        // Records refused while flushing are not tied to one offset here.
        let origin = bad.origin_mut();
        (origin.offset, origin.key) = (None, None);
        let batch = self.flush(bad)?;
        let dropped = self.take_dropped();
        let Some(batch) = batch else {
            return Ok(None);
        };
        if meta.is_empty() {
            return Ok(Some(batch));
        }
        if !dropped.is_empty() {
            kept = kept
                .into_iter()
                .enumerate()
                .filter(|(i, _)| dropped.binary_search(i).is_err())
                .map(|(_, m)| m)
                .collect();
        }
        meta.assemble(batch, &kept, topic).map(Some)
    }

    /// Decodes one record value; `false` when it was refused (and reported).
    async fn push(&mut self, payload: &[u8], bad: &mut BadRecords) -> Result<bool> {
        match self {
            RecordDecoder::Json(d) => Ok(d.push(payload, bad)),
            RecordDecoder::Avro(d) => d.push(payload, bad).await,
        }
    }

    /// Ordinals of records accepted by `push` but refused at the last flush.
    fn take_dropped(&mut self) -> Vec<usize> {
        match self {
            RecordDecoder::Json(d) => d.take_dropped(),
            RecordDecoder::Avro(_) => Vec::new(),
        }
    }

    fn flush(&mut self, bad: &mut BadRecords) -> Result<Option<RecordBatch>> {
        match self {
            RecordDecoder::Json(d) => {
                let b = d.flush()?;
                d.report_late(bad);
                Ok(b)
            }
            RecordDecoder::Avro(d) => d.flush(),
        }
    }
}

/// Where a source task's Avro decoders get writer schemas: its registry, asked while
/// the task runs. An outage is waited out (retried with backoff, reported through the
/// task's [`Probe`]) until it lasts `registry.outage_timeout` or the task is stopped,
/// and both end the source with an error, never with records reported bad.
#[derive(Clone)]
pub(super) struct Schemas {
    client: Arc<RegistryClient>,
    task: TaskInfo,
    /// The task's row in the health table, shared by its workers; made at the first
    /// request, so a task that never needs the registry is not listed as connecting.
    probe: Arc<std::sync::OnceLock<Probe>>,
    stop: StopSignal,
}

impl Schemas {
    /// Task `task`'s view of `client`.
    pub(super) fn new(client: Arc<RegistryClient>, task: &TaskInfo, stop: &StopSignal) -> Self {
        Schemas {
            client,
            task: task.clone(),
            probe: Default::default(),
            stop: stop.clone(),
        }
    }

    /// The writer schema of `id`; `None` when the registry answers that no schema has
    /// this id.
    async fn fetch(&self, id: u32) -> Result<Option<String>> {
        let probe = self.probe.get_or_init(|| {
            Probe::new(
                &self.task.pipeline,
                format!("{}[{}]", self.task.node, self.task.partition),
                "schema-registry",
            )
        });
        let mut stop = self.stop.clone();
        let fetched = self
            .client
            .wait_out(probe, stop.raised(), || self.client.schema_by_id(id))
            .await;
        match fetched {
            Ok(text) => Ok(Some(text)),
            Err(RegistryError::SchemaIdNotFound(_)) => Ok(None),
            Err(e) => Err(e.in_table(&self.task.node).into()),
        }
    }
}

/// Avro records in the Confluent wire format (magic byte 0, 4-byte big-endian schema
/// id, Avro binary body), decoded straight into Arrow by `arrow-avro` with the writer
/// schema fetched from the registry by id (and cached). With a reader schema
/// (`schema_file`), each writer schema is resolved against it per the Avro
/// specification (defaults fill fields the writer lacks, promotions widen types);
/// either way the result is matched to the table's columns by name: a column the
/// record does not have is NULL, a field the table does not declare is ignored, so
/// older and newer producers' records both read.
///
/// A record that does not decode is reported and skipped; the rows decoded before it
/// are kept (the decoder is rebuilt and fed their bytes again, since a failed decode
/// may leave half a row behind).
pub(super) struct AvroDecoder {
    registry: Schemas,
    reader_schema: Option<Arc<str>>,
    target: SchemaRef,
    batch_size: usize,
    schemas: std::collections::HashMap<u32, String>,
    /// The decoder of the schema id being read, and its rows not yet flushed.
    current: Option<(u32, arrow_avro::reader::Decoder)>,
    /// The current decoder's records, back to back, and where each ends.
    raw: Vec<u8>,
    ends: Vec<usize>,
    /// Rows of earlier schema ids, already in the table's columns.
    done: Vec<RecordBatch>,
}

impl AvroDecoder {
    fn new(
        registry: Schemas,
        reader_schema: Option<Arc<str>>,
        target: SchemaRef,
        batch_size: usize,
    ) -> Self {
        AvroDecoder {
            registry,
            reader_schema,
            target,
            batch_size: batch_size.max(1),
            schemas: Default::default(),
            current: None,
            raw: Vec::new(),
            ends: Vec::new(),
            done: Vec::new(),
        }
    }

    fn decoder_for(&self, id: u32) -> Result<arrow_avro::reader::Decoder> {
        use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        let text = self.schemas.get(&id).cloned().unwrap_or_default();
        let arrow =
            |e: arrow::error::ArrowError| crate::engine::EngineError::arrow("Avro schema", e);
        store
            .set(Fingerprint::Id(id), AvroSchema::new(text))
            .map_err(arrow)?;
        let mut builder = arrow_avro::reader::ReaderBuilder::new()
            // Room for a whole flush: the decoder is drained by `drain_current` only.
            .with_batch_size(self.batch_size + 1)
            .with_writer_schema_store(store);
        if let Some(reader) = &self.reader_schema {
            builder = builder.with_reader_schema(AvroSchema::new(reader.to_string()));
        }
        builder.build_decoder().map_err(arrow)
    }

    /// Moves the current decoder's rows, in the table's columns, to `done`.
    fn drain_current(&mut self) -> Result<()> {
        if let Some((_, decoder)) = self.current.as_mut()
            && !self.ends.is_empty()
        {
            self.raw.clear();
            self.ends.clear();
            let batch = decoder
                .flush()
                .map_err(|e| crate::engine::EngineError::Internal(format!("decoding Avro: {e}")))?;
            if let Some(b) = batch {
                self.done.push(conform(&b, &self.target)?);
            }
        }
        Ok(())
    }

    /// Feeds one whole record to `decoder`: `Err(why)` when it is not exactly one
    /// record of the writer schema.
    fn feed(decoder: &mut arrow_avro::reader::Decoder, payload: &[u8]) -> Result<(), String> {
        match decoder.decode(payload) {
            Ok(n) if n == payload.len() => Ok(()),
            Ok(n) => Err(format!(
                "the record ends early ({} of {} bytes decoded)",
                n,
                payload.len()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Decodes one record; `false` when it is refused (and reported).
    async fn push(&mut self, payload: &[u8], bad: &mut BadRecords) -> Result<bool> {
        if payload.len() < 5 || payload[0] != 0 {
            bad.report(
                BadRecordReason::Malformed,
                "not in the Confluent wire format (magic byte 0, 4-byte schema id, Avro body)",
                payload,
            );
            return Ok(false);
        }
        let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
        if self.current.as_ref().map(|c| c.0) != Some(id) {
            self.drain_current()?;
            if !self.schemas.contains_key(&id) {
                // Waits out an outage; fails the source if it lasts.
                match self.registry.fetch(id).await? {
                    Some(text) => {
                        self.schemas.insert(id, text);
                    }
                    None => {
                        bad.report(
                            BadRecordReason::SchemaMismatch,
                            &format!(
                                "schema id {id} does not exist in the registry {} (error code 40403)",
                                self.registry.client.url()
                            ),
                            payload,
                        );
                        return Ok(false);
                    }
                }
            }
            match self.decoder_for(id) {
                Ok(d) => self.current = Some((id, d)),
                Err(e) => {
                    // The registry's schema does not resolve against the reader
                    // schema (or is not Avro arrow-avro reads).
                    bad.report(
                        BadRecordReason::SchemaMismatch,
                        &format!("schema id {id}: {e}"),
                        payload,
                    );
                    self.schemas.remove(&id);
                    return Ok(false);
                }
            }
        }
        if self.ends.len() >= self.batch_size {
            self.drain_current()?;
        }
        let (_, decoder) = self.current.as_mut().expect("set above");
        match Self::feed(decoder, payload) {
            Ok(()) => {
                self.raw.extend_from_slice(payload);
                self.ends.push(self.raw.len());
                Ok(true)
            }
            Err(why) => {
                bad.report(
                    BadRecordReason::Malformed,
                    &format!("Avro record (schema id {id}): {why}"),
                    payload,
                );
                // The decoder may hold half a record: a fresh one, fed the good
                // records again (they decoded once, so they decode again).
                let mut fresh = self.decoder_for(id)?;
                let mut start = 0;
                for &end in &self.ends {
                    Self::feed(&mut fresh, &self.raw[start..end]).map_err(|e| {
                        crate::engine::EngineError::Internal(format!(
                            "re-decoding Avro records that decoded before: {e}"
                        ))
                    })?;
                    start = end;
                }
                self.current = Some((id, fresh));
                Ok(false)
            }
        }
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>> {
        self.drain_current()?;
        if self.done.is_empty() {
            return Ok(None);
        }
        let batches = std::mem::take(&mut self.done);
        arrow::compute::concat_batches(&self.target, &batches)
            .map(Some)
            .map_err(|e| crate::engine::EngineError::arrow("assembling Avro rows", e))
    }
}

/// `batch` (a writer schema's columns) as the table's columns, by name.
pub(super) fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let columns = target
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, f.data_type())
                .map_err(|e| crate::engine::EngineError::arrow(format!("column {}", f.name()), e)),
            None => Ok(arrow::array::new_null_array(
                f.data_type(),
                batch.num_rows(),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| {
        crate::engine::EngineError::arrow("matching Avro fields to the table's columns", e)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;
    use crate::connectors::Options;

    /// The `n` of each row and the offsets of the records refused.
    async fn decode(values: &[&[u8]]) -> (Vec<i64>, Vec<Option<i64>>) {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let meta = MetadataColumns::from_options(
            &mut Options::new("t", "kafka", BTreeMap::new()),
            &schema,
        )
        .unwrap();
        let mut raw = RawRecords::default();
        let mut bad = BadRecords::collecting("test");
        for (offset, v) in values.iter().enumerate() {
            let m = OwnedMessage::new(
                Some(v.to_vec()),
                None,
                "t".into(),
                Timestamp::NotAvailable,
                0,
                offset as i64,
                None,
            );
            raw.take(&m, &meta, &mut bad);
        }
        let mut d = RecordDecoder::new(schema, None, None, 1024).unwrap();
        let batch = d.decode(&mut raw, &meta, "t", &mut bad).await.unwrap();
        let rows = batch.map_or_else(Vec::new, |b| {
            let n = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            n.values().to_vec()
        });
        let refused = bad.take_letters().iter().map(|l| l.source.offset).collect();
        (rows, refused)
    }

    #[tokio::test]
    async fn each_value_is_checked_as_utf8_on_its_own() {
        // All valid.
        let ok: [&[u8]; 2] = [
            br#"{"n": 1}"#,
            "{\"n\": 2, \"s\": \"caf\u{e9}\"}".as_bytes(),
        ];
        assert_eq!(decode(&ok).await, (vec![1, 2], vec![]));
        // Offsets 1 and 2 are one character cut in two: the bytes are valid text
        // together, but neither record is on its own.
        let cut: [&[u8]; 4] = [
            br#"{"n": 1}"#,
            b"{\"n\": 2, \"s\": \"\xc3",
            b"\xa9\"}",
            br#"{"n": 4}"#,
        ];
        assert!(std::str::from_utf8(&cut.concat()).is_ok());
        assert_eq!(decode(&cut).await, (vec![1, 4], vec![Some(1), Some(2)]));
        // A record that is not UTF-8 among good ones.
        let bad: [&[u8]; 3] = [
            br#"{"n": 1}"#,
            b"{\"n\": 2, \"s\": \"\xff\"}",
            br#"{"n": 3}"#,
        ];
        assert_eq!(decode(&bad).await, (vec![1, 3], vec![Some(1)]));
    }
}
