//! Decoding: [`JsonDecoder`], which scans each record and appends the accepted ones to
//! Arrow builders, or has arrow-json decode them in bulk (schemas with a struct of two
//! fields of the same name).

use std::sync::Arc;

use arrow::array::builder::PrimitiveBuilder;
use arrow::array::timezone::Tz;
use arrow::array::{
    Array, ArrayRef, AsArray, LargeListArray, ListArray, MapArray, RecordBatch, RecordBatchOptions,
    StructArray,
};
use arrow::datatypes::{
    DataType, FieldRef, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder;

use super::columns::Column;
use super::rules::{LastHour, Spill, timestamp_text};
use super::scanner::{Refusal, Scan, Sink, StructNode, compile_struct, scan_line, scan_record};
use crate::dlq::{BadRecordReason, BadRecords};
use crate::formats::FormatError;

/// Rows decoded per internal arrow-json decoder run when no capacity is given.
pub const DEFAULT_CAPACITY: usize = 8192;

fn decode_err(message: impl Into<String>) -> crate::Error {
    FormatError::Decode {
        format: "json",
        message: message.into(),
    }
    .into()
}

// ------------------------------------------------------------------------------------
// Wire types: timestamps travel through arrow-json as text
// ------------------------------------------------------------------------------------

/// The type arrow-json decodes for a column of type `dt`: timestamps become `Utf8`
/// (numbers arrive as their text) and are converted by [`to_target`].
fn wire_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Timestamp(_, _) => DataType::Utf8,
        DataType::List(f) => DataType::List(wire_field(f)),
        DataType::LargeList(f) => DataType::LargeList(wire_field(f)),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(wire_field).collect()),
        DataType::Map(f, sorted) => DataType::Map(wire_field(f), *sorted),
        other => other.clone(),
    }
}

fn wire_field(f: &FieldRef) -> FieldRef {
    let dt = wire_type(f.data_type());
    if &dt == f.data_type() {
        f.clone()
    } else {
        Arc::new(f.as_ref().clone().with_data_type(dt))
    }
}

/// Converts an array decoded with [`wire_type`] to `target`.
fn to_target(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, String> {
    if array.data_type() == target {
        return Ok(array.clone());
    }
    match target {
        DataType::Timestamp(unit, zone) => {
            let tz = zone
                .as_ref()
                .map(|z| z.parse::<Tz>())
                .transpose()
                .map_err(|e| e.to_string())?;
            let text = array
                .as_string_opt::<i32>()
                .ok_or_else(|| format!("expected text for {target}"))?;
            let last = LastHour::default();
            macro_rules! build {
                ($t:ty) => {{
                    let mut b = PrimitiveBuilder::<$t>::with_capacity(text.len())
                        .with_data_type(target.clone());
                    for v in text.iter() {
                        match v {
                            None => b.append_null(),
                            Some(s) => {
                                b.append_value(timestamp_text(s, *unit, tz.as_ref(), &last)?)
                            }
                        }
                    }
                    Arc::new(b.finish()) as ArrayRef
                }};
            }
            Ok(match unit {
                TimeUnit::Second => build!(TimestampSecondType),
                TimeUnit::Millisecond => build!(TimestampMillisecondType),
                TimeUnit::Microsecond => build!(TimestampMicrosecondType),
                TimeUnit::Nanosecond => build!(TimestampNanosecondType),
            })
        }
        DataType::Struct(fields) => {
            let s = array.as_struct_opt().ok_or("expected a struct")?;
            let children = s
                .columns()
                .iter()
                .zip(fields.iter())
                .map(|(c, f)| to_target(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            let out = StructArray::try_new(fields.clone(), children, s.nulls().cloned())
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(out))
        }
        DataType::List(f) => {
            let l = array.as_list_opt::<i32>().ok_or("expected a list")?;
            let values = to_target(l.values(), f.data_type())?;
            let out =
                ListArray::try_new(f.clone(), l.offsets().clone(), values, l.nulls().cloned())
                    .map_err(|e| e.to_string())?;
            Ok(Arc::new(out))
        }
        DataType::LargeList(f) => {
            let l = array.as_list_opt::<i64>().ok_or("expected a list")?;
            let values = to_target(l.values(), f.data_type())?;
            let out =
                LargeListArray::try_new(f.clone(), l.offsets().clone(), values, l.nulls().cloned())
                    .map_err(|e| e.to_string())?;
            Ok(Arc::new(out))
        }
        DataType::Map(f, sorted) => {
            let m = array.as_map_opt().ok_or("expected a map")?;
            let entries: ArrayRef = Arc::new(m.entries().clone());
            let entries = to_target(&entries, f.data_type())?;
            let entries = entries
                .as_struct_opt()
                .ok_or("expected map entries")?
                .clone();
            let out = MapArray::try_new(
                f.clone(),
                m.offsets().clone(),
                entries,
                m.nulls().cloned(),
                *sorted,
            )
            .map_err(|e| e.to_string())?;
            Ok(Arc::new(out))
        }
        other => Err(format!("cannot convert {} to {other}", array.data_type())),
    }
}

// ------------------------------------------------------------------------------------
// Schemas the scanner builds rows for: its values straight into columns
// ------------------------------------------------------------------------------------

/// The rows of a schema whose structs (the root's and the nested ones) have no two
/// fields of the same name: built from what the scanner converted, with no second
/// decoder.
///
/// The scanner writes a record's values into `columns` while it checks them; a refused
/// record is cut off them again (to `rows` values each), so a refused record leaves
/// nothing behind and an accepted one is never refused afterwards.
struct ScannedRows {
    /// One per root field, in order.
    columns: Vec<Column>,
    /// The values being converted that the record's text does not hold.
    spill: Spill,
    /// Rows appended since the last flush.
    rows: usize,
}

impl ScannedRows {
    /// `None` unless `schema` (compiled into `root`) has no struct with two fields of
    /// the same name. A schema without columns is left to arrow-json, whose batches of
    /// no columns have no rows either.
    fn new(schema: &Schema, root: &StructNode, capacity: usize) -> Option<Self> {
        if !root.all_unique() || schema.fields().is_empty() {
            return None;
        }
        let capacity = capacity.min(DEFAULT_CAPACITY);
        let columns = schema
            .fields()
            .iter()
            .map(|f| Column::new(f.data_type(), capacity))
            .collect::<Option<Vec<_>>>()?;
        Some(ScannedRows {
            columns,
            spill: Spill::default(),
            rows: 0,
        })
    }

    fn sink(&mut self) -> Sink<'_> {
        Sink {
            columns: &mut self.columns,
            spill: &mut self.spill,
        }
    }

    /// Keeps the record just scanned if `kept`, else cuts it off the columns.
    fn settle(&mut self, kept: bool) {
        if kept {
            self.rows += 1;
        } else {
            self.columns.iter_mut().for_each(|c| c.truncate(self.rows));
        }
    }

    fn push(&mut self, record: &[u8], root: &StructNode) -> Scan {
        let scanned = scan_record(record, root, Some(self.sink()));
        self.settle(scanned.is_ok());
        scanned.map(|_| ())
    }

    /// Like [`ScannedRows::push`], for the line of `text` starting at `at`
    /// ([`scan_line`]): where it ends, if it holds a good record of at most `max_len`
    /// bytes, appended; else `None`, and nothing appended.
    fn push_line(
        &mut self,
        text: &[u8],
        at: usize,
        root: &StructNode,
        max_len: usize,
    ) -> Option<usize> {
        let end = scan_line(text, at, root, self.sink()).filter(|end| end - at <= max_len);
        self.settle(end.is_some());
        end
    }

    fn flush(&mut self, schema: &SchemaRef) -> crate::Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let columns = self
            .columns
            .iter_mut()
            .map(Column::finish)
            .collect::<Result<Vec<_>, _>>()
            .map_err(decode_err)?;
        let options =
            RecordBatchOptions::new().with_row_count(Some(std::mem::take(&mut self.rows)));
        RecordBatch::try_new_with_options(schema.clone(), columns, &options)
            .map(Some)
            .map_err(|e| decode_err(e.to_string()))
    }
}

// ------------------------------------------------------------------------------------
// Other schemas: arrow-json behind a safety net
// ------------------------------------------------------------------------------------

fn builder(wire: &SchemaRef, capacity: usize) -> ReaderBuilder {
    ReaderBuilder::new(wire.clone())
        .with_batch_size(capacity.max(1))
        .with_coerce_primitive(true)
}

/// A bad record found after `push` accepted it (a safety net: the scanner and
/// arrow-json disagree); reported by the next `push` or [`JsonDecoder::report_late`].
struct Late {
    reason: BadRecordReason,
    detail: String,
    raw: Vec<u8>,
}

/// The records of schemas with a struct of two fields of the same name, accepted by
/// the scanner: decoded by arrow-json in runs of `capacity`, behind the safety net
/// described at [`JsonDecoder`].
struct Bulk {
    schema: SchemaRef,
    /// The schema arrow-json decodes (see [`wire_type`]).
    wire: SchemaRef,
    decoder: Decoder,
    capacity: usize,
    /// The records in `decoder`, back to back; `ends[i]` is where record `i` ends and
    /// `ords[i]` its ordinal among the records accepted since the last flush.
    raw: Vec<u8>,
    ends: Vec<usize>,
    ords: Vec<usize>,
    /// Records accepted since the last flush.
    accepted: usize,
    /// Ordinals of accepted records refused afterwards (see [`JsonDecoder::take_dropped`]).
    dropped: Vec<usize>,
    /// Batches already decoded, in order.
    done: Vec<RecordBatch>,
    done_rows: usize,
    late: Vec<Late>,
}

impl Bulk {
    fn new(schema: SchemaRef, capacity: usize) -> crate::Result<Self> {
        let wire_fields: Vec<FieldRef> = schema.fields().iter().map(wire_field).collect();
        let wire = Arc::new(Schema::new_with_metadata(
            wire_fields,
            schema.metadata().clone(),
        ));
        let decoder = builder(&wire, capacity)
            .build_decoder()
            .map_err(|e| decode_err(e.to_string()))?;
        Ok(Bulk {
            schema,
            wire,
            decoder,
            capacity,
            raw: Vec::new(),
            ends: Vec::new(),
            ords: Vec::new(),
            accepted: 0,
            dropped: Vec::new(),
            done: Vec::new(),
            done_rows: 0,
            late: Vec::new(),
        })
    }

    /// Feeds arrow-json `record`, whose object the scanner accepted at `start..end`.
    fn push(&mut self, record: &[u8], (start, end): (usize, usize), bad: &mut BadRecords) -> bool {
        if self.decoder.len() >= self.capacity {
            self.decode_buffer();
        }
        let object = &record[start..end];
        let before = self.decoder.len();
        let fed = self.decoder.decode(object);
        let clean = matches!(fed, Ok(n) if n == object.len())
            && self.decoder.len() == before + 1
            && !self.decoder.has_partial_record();
        if !clean {
            // The scanner accepted what arrow-json's tokenizer did not: refuse the
            // record and rebuild the decoder from the records before it.
            let detail = match fed {
                Err(e) => e.to_string(),
                Ok(_) => "record not decoded as exactly one object".into(),
            };
            bad.report(BadRecordReason::Malformed, &detail, record);
            self.rebuild();
            return false;
        }
        self.raw.extend_from_slice(object);
        self.ends.push(self.raw.len());
        self.ords.push(self.accepted);
        self.accepted += 1;
        true
    }

    fn buffered(&self) -> usize {
        self.done_rows + self.decoder.len()
    }

    fn flush(&mut self) -> crate::Result<Option<RecordBatch>> {
        self.decode_buffer();
        self.done_rows = 0;
        self.accepted = 0;
        let done = std::mem::take(&mut self.done);
        match done.len() {
            0 => Ok(None),
            1 => Ok(done.into_iter().next()),
            _ => arrow::compute::concat_batches(&self.schema, &done)
                .map(Some)
                .map_err(|e| decode_err(e.to_string())),
        }
    }

    fn report_late(&mut self, bad: &mut BadRecords) {
        for l in self.late.drain(..) {
            bad.report(l.reason, &l.detail, &l.raw);
        }
    }

    fn fresh(&self, capacity: usize) -> Option<Decoder> {
        match builder(&self.wire, capacity).build_decoder() {
            Ok(d) => Some(d),
            Err(e) => {
                // Cannot happen: the same builder built the first decoder.
                tracing::error!(error = %e, "rebuilding the JSON decoder failed");
                None
            }
        }
    }

    /// The buffered records: (ordinal, start, end) in `raw`.
    fn records(&self) -> Vec<(usize, usize, usize)> {
        let mut start = 0;
        self.ends
            .iter()
            .zip(&self.ords)
            .map(|(&e, &o)| {
                let r = (o, start, e);
                start = e;
                r
            })
            .collect()
    }

    fn clear_buffer(&mut self) {
        self.raw.clear();
        self.ends.clear();
        self.ords.clear();
    }

    /// Replaces the decoder by a fresh one fed with the buffered records.
    fn rebuild(&mut self) {
        let Some(fresh) = self.fresh(self.capacity) else {
            return;
        };
        self.decoder = fresh;
        let records = self.records();
        let raw = std::mem::take(&mut self.raw);
        self.clear_buffer();
        for (ord, a, b) in records {
            let rec = &raw[a..b];
            let before = self.decoder.len();
            let ok = matches!(self.decoder.decode(rec), Ok(n) if n == rec.len())
                && self.decoder.len() == before + 1;
            if ok {
                self.raw.extend_from_slice(rec);
                self.ends.push(self.raw.len());
                self.ords.push(ord);
            } else {
                // Only possible if the tokenizer is not deterministic: this record
                // and those re-fed before it (the decoder is started afresh) are
                // refused; keep going.
                let lost = self.records();
                for (o, x, y) in lost.iter().copied().chain([(ord, a, b)]) {
                    let rec = if o == ord {
                        &raw[x..y]
                    } else {
                        &self.raw[x..y]
                    };
                    self.late.push(Late {
                        reason: BadRecordReason::Malformed,
                        detail: "record refused when re-decoded".into(),
                        raw: rec.to_vec(),
                    });
                    self.dropped.push(o);
                }
                if let Some(d) = self.fresh(self.capacity) {
                    self.decoder = d;
                }
                self.clear_buffer();
            }
        }
    }

    /// Decodes the buffered records into `done`.
    fn decode_buffer(&mut self) {
        if self.decoder.is_empty() {
            self.clear_buffer();
            return;
        }
        let decoded = self
            .decoder
            .flush()
            .map_err(|e| e.to_string())
            .and_then(|b| b.map(|b| self.to_schema(b)).transpose());
        match decoded {
            Ok(Some(batch)) => {
                self.done_rows += batch.num_rows();
                self.done.push(batch);
            }
            Ok(None) => {}
            Err(_) => {
                if let Some(d) = self.fresh(self.capacity) {
                    self.decoder = d;
                }
                let records = self.records();
                let raw = std::mem::take(&mut self.raw);
                self.isolate(&raw, &records);
                self.raw = raw;
            }
        }
        self.clear_buffer();
    }

    /// Decodes `records` of `raw` by halves until the refused ones are alone.
    fn isolate(&mut self, raw: &[u8], records: &[(usize, usize, usize)]) {
        let mut stack = vec![records];
        while let Some(part) = stack.pop() {
            if part.is_empty() {
                continue;
            }
            match self.decode_part(raw, part) {
                Ok(Some(batch)) => {
                    self.done_rows += batch.num_rows();
                    self.done.push(batch);
                }
                Ok(None) => {}
                Err(e) if part.len() == 1 => {
                    let (ord, a, b) = part[0];
                    self.dropped.push(ord);
                    self.late.push(Late {
                        reason: BadRecordReason::SchemaMismatch,
                        detail: e,
                        raw: raw[a..b].to_vec(),
                    });
                }
                Err(_) => {
                    let (left, right) = part.split_at(part.len() / 2);
                    // Right first: the stack pops the left half first, keeping order.
                    stack.push(right);
                    stack.push(left);
                }
            }
        }
    }

    fn decode_part(
        &self,
        raw: &[u8],
        part: &[(usize, usize, usize)],
    ) -> Result<Option<RecordBatch>, String> {
        let mut d = self.fresh(part.len()).ok_or("no decoder")?;
        for &(_, a, b) in part {
            d.decode(&raw[a..b]).map_err(|e| e.to_string())?;
        }
        match d.flush().map_err(|e| e.to_string())? {
            Some(b) => self.to_schema(b).map(Some),
            None => Ok(None),
        }
    }

    /// A batch decoded with the wire schema, converted to the decoder's schema.
    fn to_schema(&self, wire: RecordBatch) -> Result<RecordBatch, String> {
        let columns = wire
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| to_target(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())
    }

    /// Test hook: feed a record to the bulk decoder without the scanner, to exercise
    /// the safety net.
    #[cfg(test)]
    fn push_unchecked(&mut self, record: &[u8]) {
        if self.decoder.len() >= self.capacity {
            self.decode_buffer();
        }
        let _ = self.decoder.decode(record);
        self.raw.extend_from_slice(record);
        self.ends.push(self.raw.len());
        self.ords.push(self.accepted);
        self.accepted += 1;
    }
}

// ------------------------------------------------------------------------------------
// The decoder
// ------------------------------------------------------------------------------------

/// Decodes JSON records (one object each) into batches of a fixed schema.
///
/// ```text
/// let mut d = JsonDecoder::new(schema)?;
/// for line in lines { d.push(line, &mut bad); }   // bad lines reported and skipped
/// let batch = d.flush()?;                          // every good record, in order
/// ```
///
/// Schemas whose structs have no two fields of the same name take one pass: the
/// scanner converts each value while it checks it and writes it into its column (a
/// list's, struct's or map's values too); a refused record is cut off the columns
/// again. Nothing is refused after `push` accepted it.
///
/// Other schemas (a struct with two fields of the same name, or no columns): each
/// record is scanned once by the scanner and decoded once by arrow-json in bulk; its
/// bytes are also copied once into a buffer kept until the next flush (the material of
/// the safety net below).
///
/// Safety net (other schemas only): should arrow-json refuse a buffer of records the
/// scanner accepted, the buffer is split in halves and re-decoded until the refused
/// records are isolated (good records keep their order); those are reported by the
/// next `push` or by [`JsonDecoder::report_late`].
pub struct JsonDecoder {
    schema: SchemaRef,
    root: StructNode,
    rows: Rows,
    /// The rows per flush the decoder is sized for (read by the test hook only).
    #[cfg(test)]
    capacity: usize,
}

/// Where a [`JsonDecoder`]'s accepted records go.
// One per decoder, chosen once: the size of the unused variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Rows {
    Scanned(ScannedRows),
    Bulk(Bulk),
}

impl std::fmt::Debug for JsonDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonDecoder")
            .field("schema", &self.schema)
            .field("scanned", &matches!(self.rows, Rows::Scanned(_)))
            .field("buffered", &self.buffered())
            .finish()
    }
}

impl JsonDecoder {
    /// A decoder producing batches of exactly `schema`. Refuses schemas with types the
    /// JSON decoder does not support (dictionaries, unions, fixed-size lists, …).
    pub fn new(schema: SchemaRef) -> crate::Result<Self> {
        Self::with_capacity(schema, DEFAULT_CAPACITY)
    }

    /// Like [`JsonDecoder::new`], sized for flushes of about `capacity` rows (more can be
    /// pushed; on the arrow-json path they are decoded in runs of `capacity`).
    pub fn with_capacity(schema: SchemaRef, capacity: usize) -> crate::Result<Self> {
        Self::build(schema, capacity, true)
    }

    /// Like [`JsonDecoder::with_capacity`], but always through arrow-json, as schemas
    /// with a struct of two fields of the same name are (the same batches and refusals,
    /// at a higher cost): for comparing the two ways.
    #[doc(hidden)]
    pub fn with_capacity_through_arrow_json(
        schema: SchemaRef,
        capacity: usize,
    ) -> crate::Result<Self> {
        Self::build(schema, capacity, false)
    }

    fn build(schema: SchemaRef, capacity: usize, scanned: bool) -> crate::Result<Self> {
        let capacity = capacity.clamp(1, 1 << 20);
        let root =
            compile_struct(schema.fields()).map_err(|e| decode_err(format!("column {e}")))?;
        let rows = match scanned
            .then(|| ScannedRows::new(&schema, &root, capacity))
            .flatten()
        {
            Some(scanned) => Rows::Scanned(scanned),
            None => Rows::Bulk(Bulk::new(schema.clone(), capacity)?),
        };
        Ok(JsonDecoder {
            schema,
            root,
            rows,
            #[cfg(test)]
            capacity,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes one record (one JSON object, surrounding whitespace allowed). A record
    /// that is not JSON is reported as [`BadRecordReason::Malformed`], one whose values
    /// do not fit the schema as [`BadRecordReason::SchemaMismatch`]; either way it is
    /// skipped and `false` returned.
    pub fn push(&mut self, record: &[u8], bad: &mut BadRecords) -> bool {
        self.push_from(record, None, bad)
    }

    /// Like [`JsonDecoder::push`]; a refusal's detail starts with `origin` (e.g.
    /// `file.jsonl:12`), formatted only if the record is refused. The record's bytes
    /// are checked as UTF-8 as they are scanned, not in a pass of their own.
    pub fn push_from(
        &mut self,
        record: &[u8],
        origin: Option<&dyn std::fmt::Display>,
        bad: &mut BadRecords,
    ) -> bool {
        let refusal = match &mut self.rows {
            Rows::Scanned(rows) => match rows.push(record, &self.root) {
                Ok(()) => return true,
                Err(refusal) => refusal,
            },
            Rows::Bulk(bulk) => {
                bulk.report_late(bad);
                match scan_record(record, &self.root, None) {
                    Ok(range) => return bulk.push(record, range, bad),
                    Err(refusal) => refusal,
                }
            }
        };
        Self::refuse(&refusal, record, origin, bad)
    }

    /// Decodes the record on the line of `text` (JSON lines: lines end at `\n`) that
    /// starts at byte `at`, if it is a good one: returns where the line ends (past its
    /// `\n`, or at the end of `text`). Returns `None`, having appended and reported
    /// nothing, for a line that is blank, longer than `max_len` bytes (its `\n`
    /// included) or refused, and for every line of a schema the scanner does not build
    /// rows for: the caller finds where that line ends and pushes it with
    /// [`JsonDecoder::push_from`], which decides (and words a refusal) as for any
    /// record. A good line costs one pass: its end is found, and its text checked as
    /// UTF-8, while it is scanned.
    pub fn push_line_at(&mut self, text: &[u8], at: usize, max_len: usize) -> Option<usize> {
        match &mut self.rows {
            Rows::Scanned(rows) => rows.push_line(text, at, &self.root, max_len),
            Rows::Bulk(_) => None,
        }
    }

    /// Reports a refused record; `false`.
    fn refuse(
        refusal: &Refusal,
        record: &[u8],
        origin: Option<&dyn std::fmt::Display>,
        bad: &mut BadRecords,
    ) -> bool {
        let detail = match origin {
            Some(o) => format!("{o}: {}", refusal.detail()),
            None => refusal.detail(),
        };
        bad.report(refusal.reason, &detail, record);
        false
    }

    /// Number of good records pushed since the last flush.
    pub fn buffered(&self) -> usize {
        match &self.rows {
            Rows::Scanned(rows) => rows.rows,
            Rows::Bulk(bulk) => bulk.buffered(),
        }
    }

    /// Every good record pushed since the last flush, in order, as one batch with
    /// exactly the decoder's schema; `None` when there are none.
    pub fn flush(&mut self) -> crate::Result<Option<RecordBatch>> {
        match &mut self.rows {
            Rows::Scanned(rows) => rows.flush(&self.schema),
            Rows::Bulk(bulk) => bulk.flush(),
        }
    }

    /// Which records, counted from 0 at the last flush in the order `push` accepted
    /// them, the safety net refused afterwards: the rows of that flush are the accepted
    /// records without these (always none off the arrow-json path). Call after `flush`;
    /// callers that pair each record with data of their own (a Kafka record's key,
    /// offset) use it to stay aligned.
    pub fn take_dropped(&mut self) -> Vec<usize> {
        match &mut self.rows {
            Rows::Scanned(_) => Vec::new(),
            Rows::Bulk(bulk) => {
                let mut d = std::mem::take(&mut bulk.dropped);
                d.sort_unstable();
                d
            }
        }
    }

    /// Reports the records refused after `push` had accepted them (see the type's
    /// documentation); `push` does this itself, so call it after the last `flush`.
    pub fn report_late(&mut self, bad: &mut BadRecords) {
        if let Rows::Bulk(bulk) = &mut self.rows {
            bulk.report_late(bad);
        }
    }

    /// Test hook: feed a record to the bulk decoder without the scanner, to exercise
    /// the safety net. A decoder on the scanned path moves to the arrow-json path first,
    /// the rows it holds becoming its first decoded batch.
    #[cfg(test)]
    fn push_unchecked(&mut self, record: &[u8]) {
        if let Rows::Scanned(rows) = &mut self.rows {
            let mut bulk = Bulk::new(self.schema.clone(), self.capacity).unwrap();
            if let Some(batch) = rows.flush(&self.schema).unwrap() {
                bulk.accepted = batch.num_rows();
                bulk.done_rows = batch.num_rows();
                bulk.done.push(batch);
            }
            self.rows = Rows::Bulk(bulk);
        }
        if let Rows::Bulk(bulk) = &mut self.rows {
            bulk.push_unchecked(record);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
