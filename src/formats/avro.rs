//! Avro object container files to Arrow, with arrow-avro.
//!
//! The file's framing (header, then blocks of `count`, `size`, data, sync marker) is
//! read here, with every length checked against the file before anything is allocated;
//! the records of each block are decoded straight to Arrow by arrow-avro, then gathered
//! into batches of the configured size.
//!
//! Why not arrow-avro's own file reader over the whole file: on a corrupt block it can
//! loop forever (a block whose records end before its data does) or panic (a snappy
//! block shorter than its checksum). Here each block is handed to arrow-avro alone,
//! with a batch size equal to its record count, so a decode ends after that block; a
//! block whose records do not decode is an error naming the file and the block's
//! offset; a panic inside the decoder is caught and reported the same way. What this
//! cannot see: bytes left over at the end of a block's data after its last record are
//! ignored.
//!
//! A file can also be read in parts, each a run of whole blocks ([`block_parts`],
//! [`AvroReader::open_range`]): the parts of one file decode on several cores at once,
//! and read one after the other they give the file's rows in its order. Cutting a file
//! reads only the blocks' framing; a part is checked as it is read, so a corrupt block
//! is reported with its offset whichever part it falls in.
//!
//! Supported codecs: null, deflate, snappy.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::compute::BatchCoalescer;
use arrow::datatypes::SchemaRef;
use arrow_avro::compression::CompressionCodec;
use arrow_avro::reader::{ReaderBuilder, read_header_info};

use super::FormatError;

/// Most records one block may declare: a sanity bound on a length read from the file.
pub const MAX_BLOCK_RECORDS: u64 = 1 << 26;

/// Reads one Avro object container file as batches of at most `batch_size` rows.
pub struct AvroReader<R = BufReader<File>> {
    path: PathBuf,
    input: R,
    /// The header each block is handed to arrow-avro with: the file's, verbatim, or
    /// for a snappy file the same schema and sync marker with codec `null` (its blocks
    /// are decompressed here, see [`unsnap`]).
    header: Vec<u8>,
    sync: [u8; 16],
    snappy: bool,
    /// Offset of the next block.
    offset: u64,
    /// File length when opened.
    len: u64,
    /// Where reading stops: the end of the file, or of the range being read.
    end: u64,
    schema: SchemaRef,
    out: BatchCoalescer,
    finished: bool,
}

impl<R> std::fmt::Debug for AvroReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroReader")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .finish()
    }
}

fn decode_error(path: &Path, message: String) -> crate::Error {
    FormatError::Decode {
        format: "avro",
        message: format!("{}: {message}", path.display()),
    }
    .into()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Reads an Avro zig-zag long; `Ok(None)` at a clean end of input.
fn read_long(r: &mut impl Read) -> std::io::Result<Option<i64>> {
    let mut value: u64 = 0;
    let mut byte = [0u8; 1];
    for i in 0..10 {
        if r.read(&mut byte)? == 0 {
            if i == 0 {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        value |= ((byte[0] & 0x7f) as u64) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(Some((value >> 1) as i64 ^ -((value & 1) as i64)));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "variable-length integer longer than 10 bytes",
    ))
}

fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Records the bytes consumed from a reader (the header, to hand it to arrow-avro with
/// each block).
struct Tee<'a, R> {
    inner: &'a mut R,
    seen: Vec<u8>,
}

impl<R: BufRead> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Tee<'_, R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        // The bytes are still buffered: `fill_buf` returned them just before.
        if let Ok(buf) = self.inner.fill_buf() {
            let n = amt.min(buf.len());
            self.seen.extend_from_slice(&buf[..n]);
        }
        self.inner.consume(amt);
    }
}

impl AvroReader<BufReader<File>> {
    /// Opens the file at `path` and reads its header. Errors if the file cannot be
    /// read, is not an Avro object container file, or uses an unsupported codec or
    /// schema.
    pub fn open(path: &Path, batch_size: usize) -> crate::Result<Self> {
        let file = File::open(path).map_err(|e| crate::Error::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| crate::Error::io(path, e))?
            .len();
        AvroReader::new(path, BufReader::new(file), len, batch_size)
    }

    /// Opens the file at `path` to read only the blocks that start in `range` (one of
    /// [`block_parts`]); `None` reads the whole file.
    pub fn open_range(
        path: &Path,
        batch_size: usize,
        range: Option<Range<u64>>,
    ) -> crate::Result<Self> {
        let mut reader = AvroReader::open(path, batch_size)?;
        if let Some(range) = range {
            if range.start < reader.offset || range.start > reader.len {
                return Err(decode_error(
                    path,
                    format!(
                        "blocks from offset {} in a file whose blocks span {}..{}",
                        range.start, reader.offset, reader.len
                    ),
                ));
            }
            reader
                .input
                .seek(SeekFrom::Start(range.start))
                .map_err(|e| crate::Error::io(path, e))?;
            reader.offset = range.start;
            reader.end = range.end.min(reader.len);
        }
        Ok(reader)
    }
}

/// Cuts the Avro file at `path` into runs of whole blocks of at least `min_bytes`
/// each (the last may be shorter), in the file's order; together they cover every
/// block. Only the framing is read (each block's count and size), so cutting costs a
/// seek per block. Where the framing stops making sense, the rest of the file is one
/// last part: its reader reports the corrupt block with its offset.
pub fn block_parts(path: &Path, min_bytes: u64) -> crate::Result<Vec<Range<u64>>> {
    let mut reader = AvroReader::open(path, 1)?;
    let mut parts = Vec::new();
    let mut start = reader.offset;
    let mut at = start;
    while at < reader.len {
        let skipped = (|| -> std::io::Result<Option<u64>> {
            let (Some(count), Some(size)) =
                (read_long(&mut reader.input)?, read_long(&mut reader.input)?)
            else {
                return Ok(None);
            };
            let framing = varint_len(count) + varint_len(size);
            if count < 0 || size < 0 || at + framing + size as u64 + 16 > reader.len {
                return Ok(None);
            }
            reader.input.seek_relative(size + 16)?;
            Ok(Some(framing + size as u64 + 16))
        })();
        let Ok(Some(block)) = skipped else { break };
        at += block;
        if at - start >= min_bytes {
            parts.push(start..at);
            start = at;
        }
    }
    if start < reader.len || parts.is_empty() {
        parts.push(start..reader.len);
    }
    Ok(parts)
}

/// A container file header declaring `schema`, codec `null` and `sync`.
fn plain_header(schema: &str, sync: &[u8; 16]) -> Vec<u8> {
    let mut out = b"Obj\x01".to_vec();
    write_long(&mut out, 2);
    for (key, value) in [("avro.schema", schema), ("avro.codec", "null")] {
        for bytes in [key.as_bytes(), value.as_bytes()] {
            write_long(&mut out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
    }
    write_long(&mut out, 0);
    out.extend_from_slice(sync);
    out
}

/// A snappy block (count, size, compressed data and its CRC-32, sync) as the same block
/// uncompressed, its checksum verified.
///
/// Why here and not in arrow-avro: its snappy path checks the CRC a byte at a time
/// (the `crc` crate's one-table algorithm), which measured two thirds of the CPU of
/// reading a snappy file (docs/adr/0008-avro-decoding.md); `crc32fast` computes the same
/// CRC-32 (ISO-HDLC) with carry-less multiplication.
fn unsnap(framed: &[u8], count: u64, sync: &[u8; 16]) -> Result<Vec<u8>, String> {
    let mut cursor = framed;
    let lengths = read_long(&mut cursor).and_then(|_| read_long(&mut cursor));
    let Ok(Some(_)) = lengths else {
        return Err("unreadable block framing".into());
    };
    let data = &cursor[..cursor.len().saturating_sub(16)];
    let Some(split) = data.len().checked_sub(4) else {
        return Err("snappy block shorter than its checksum".into());
    };
    let (compressed, crc) = data.split_at(split);
    let length = snap::raw::decompress_len(compressed).map_err(|e| format!("snappy: {e}"))?;
    // A bound before allocating: snappy's densest element (a 3-byte copy of 64 bytes)
    // expands about 21×, so a claimed length beyond 64× the input is corrupt.
    if length > compressed.len().saturating_mul(64).max(1 << 20) {
        return Err(format!("snappy block claims {length} bytes uncompressed"));
    }
    let mut out = Vec::with_capacity(length + 40);
    write_long(&mut out, count as i64);
    write_long(&mut out, length as i64);
    let at = out.len();
    out.resize(at + length, 0);
    let n = snap::raw::Decoder::new()
        .decompress(compressed, &mut out[at..])
        .map_err(|e| format!("snappy: {e}"))?;
    out.truncate(at + n);
    if crc32fast::hash(&out[at..]).to_be_bytes() != crc {
        return Err("snappy CRC mismatch".into());
    }
    out.extend_from_slice(sync);
    Ok(out)
}

/// Bytes of `v` as an Avro zig-zag long.
fn varint_len(v: i64) -> u64 {
    let mut out = Vec::with_capacity(10);
    write_long(&mut out, v);
    out.len() as u64
}

impl<R: BufRead> AvroReader<R> {
    /// Reads the header of the container file `input` holds (`len` bytes long; `path`
    /// names it in errors).
    pub fn new(path: &Path, mut input: R, len: u64, batch_size: usize) -> crate::Result<Self> {
        let mut tee = Tee {
            inner: &mut input,
            seen: Vec::new(),
        };
        let info = catch_unwind(AssertUnwindSafe(|| read_header_info(&mut tee)))
            .map_err(|p| decode_error(path, format!("reading the header: {}", panic_message(&*p))))?
            .map_err(|e| {
                decode_error(path, format!("not a valid Avro object container file: {e}"))
            })?;
        let header_len = info.header_len();
        if header_len > len {
            return Err(decode_error(path, "header longer than the file".into()));
        }
        let snappy = match info.compression() {
            Ok(None | Some(CompressionCodec::Deflate)) => false,
            Ok(Some(CompressionCodec::Snappy)) => true,
            Ok(Some(other)) => {
                return Err(decode_error(
                    path,
                    format!("codec {other:?} is not supported (use null, deflate or snappy)"),
                ));
            }
            Err(e) => return Err(decode_error(path, e.to_string())),
        };
        let mut header = tee.seen;
        if header.len() as u64 != header_len {
            return Err(decode_error(path, "header length mismatch".into()));
        }
        if snappy {
            let schema = info
                .writer_schema()
                .map_err(|e| decode_error(path, e.to_string()))?;
            header = plain_header(&schema.json_string, &info.sync());
        }
        let schema = catch_unwind(AssertUnwindSafe(|| {
            ReaderBuilder::new()
                .with_batch_size(1)
                .build(&header[..])
                .map(|r| r.schema())
        }))
        .map_err(|p| decode_error(path, format!("reading the schema: {}", panic_message(&*p))))?
        .map_err(|e| decode_error(path, format!("unsupported schema: {e}")))?;
        Ok(AvroReader {
            path: path.to_path_buf(),
            input,
            header,
            sync: info.sync(),
            snappy,
            offset: header_len,
            len,
            end: len,
            out: BatchCoalescer::new(schema.clone(), batch_size.max(1)),
            schema,
            finished: false,
        })
    }

    /// The Arrow schema of the file's records (from its writer schema).
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Bytes of the file read so far.
    pub fn position(&self) -> u64 {
        self.offset
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next batch, `Ok(None)` at the end of the file.
    pub fn next_batch(&mut self) -> crate::Result<Option<RecordBatch>> {
        loop {
            if let Some(b) = self.out.next_completed_batch() {
                return Ok(Some(b));
            }
            if self.finished {
                return Ok(None);
            }
            match self.read_block()? {
                Some((start, count, raw)) => {
                    if let Some(batch) = self.decode_block(start, count, &raw)? {
                        self.out
                            .push_batch(batch)
                            .map_err(|e| decode_error(&self.path, e.to_string()))?;
                    }
                }
                None => {
                    self.finished = true;
                    self.out
                        .finish_buffered_batch()
                        .map_err(|e| decode_error(&self.path, e.to_string()))?;
                }
            }
        }
    }

    fn corrupt(&self, start: u64, message: impl std::fmt::Display) -> crate::Error {
        decode_error(
            &self.path,
            format!("corrupt block at offset {start}: {message}"),
        )
    }

    fn io_error(&self, start: u64, e: std::io::Error, what: &str) -> crate::Error {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                self.corrupt(start, format!("file ends inside the block's {what}"))
            }
            std::io::ErrorKind::InvalidData => self.corrupt(start, format!("{what}: {e}")),
            _ => crate::Error::io(&self.path, e),
        }
    }

    /// Reads the next block's framing and bytes: its offset, record count and its
    /// bytes re-framed (count, size, data, sync); `None` at the end of the file.
    fn read_block(&mut self) -> crate::Result<Option<(u64, u64, Vec<u8>)>> {
        let start = self.offset;
        if start >= self.end {
            return Ok(None);
        }
        let count = match read_long(&mut self.input) {
            Ok(None) => return Ok(None),
            Ok(Some(c)) => c,
            Err(e) => return Err(self.io_error(start, e, "record count")),
        };
        let size = match read_long(&mut self.input) {
            Ok(Some(s)) => s,
            Ok(None) => {
                let eof = std::io::ErrorKind::UnexpectedEof.into();
                return Err(self.io_error(start, eof, "size"));
            }
            Err(e) => return Err(self.io_error(start, e, "size")),
        };
        if count < 0 || count as u64 > MAX_BLOCK_RECORDS {
            return Err(self.corrupt(start, format!("invalid record count {count}")));
        }
        let mut framed = Vec::new();
        write_long(&mut framed, count);
        write_long(&mut framed, size);
        let data_at = start + framed.len() as u64;
        let remaining = self.len.saturating_sub(data_at);
        if size < 0 || size as u64 > remaining.saturating_sub(16) {
            return Err(self.corrupt(
                start,
                format!("block size {size} exceeds the {remaining} bytes left in the file"),
            ));
        }
        let head = framed.len();
        framed.resize(head + size as usize + 16, 0);
        if let Err(e) = self.input.read_exact(&mut framed[head..]) {
            return Err(self.io_error(start, e, "data"));
        }
        if framed[framed.len() - 16..] != self.sync {
            return Err(self.corrupt(start, "sync marker does not match the header's"));
        }
        self.offset = start + framed.len() as u64;
        Ok(Some((start, count as u64, framed)))
    }

    /// Decodes the records of one block (framed as in the file) with arrow-avro.
    fn decode_block(
        &self,
        start: u64,
        count: u64,
        framed: &[u8],
    ) -> crate::Result<Option<RecordBatch>> {
        if count == 0 {
            return Ok(None);
        }
        // A snappy block too short for its checksum is refused by `unsnap`.
        let unsnapped;
        let framed = if self.snappy {
            unsnapped = unsnap(framed, count, &self.sync).map_err(|e| self.corrupt(start, e))?;
            &unsnapped[..]
        } else {
            framed
        };
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            let input = (&self.header[..]).chain(framed);
            let mut reader = ReaderBuilder::new()
                .with_batch_size(count as usize)
                .build(input)?;
            reader.next().transpose()
        }));
        match decoded {
            Ok(Ok(Some(batch))) if batch.num_rows() as u64 == count => Ok(Some(batch)),
            Ok(Ok(Some(batch))) => Err(self.corrupt(
                start,
                format!("declares {count} records but holds {}", batch.num_rows()),
            )),
            Ok(Ok(None)) => {
                Err(self.corrupt(start, format!("declares {count} records but holds none")))
            }
            Ok(Err(e)) => Err(self.corrupt(start, e)),
            Err(p) => Err(self.corrupt(start, format!("decoder failed: {}", panic_message(&*p)))),
        }
    }
}

impl<R: BufRead> Iterator for AvroReader<R> {
    type Item = crate::Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_batch() {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => None,
            Err(e) => {
                // An error ends the file: nothing after a corrupt block is trusted.
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

/// The Arrow schema of the Avro file at `path` (read from its header).
pub fn read_schema(path: &Path) -> crate::Result<SchemaRef> {
    Ok(AvroReader::open(path, 1)?.schema())
}

/// Reads all of `bytes` (a whole Avro object container file) into batches; for tests
/// and fuzzing.
pub fn read_bytes(bytes: &[u8], batch_size: usize) -> crate::Result<Vec<RecordBatch>> {
    let reader = AvroReader::new(Path::new("<memory>"), bytes, bytes.len() as u64, batch_size)?;
    reader.collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use apache_avro::types::{Record, Value};
    use apache_avro::{Codec, DeflateSettings, Schema, Writer};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{
        DataType, Float64Type, Int32Type, Int64Type, TimeUnit, TimestampMillisecondType,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::testing::{Edit, apply_edits};

    const SCHEMA: &str = r#"{
        "type": "record", "name": "Event", "fields": [
            {"name": "id", "type": "long"},
            {"name": "name", "type": "string"},
            {"name": "score", "type": "double"},
            {"name": "opt", "type": ["null", "int"], "default": null},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}
        ]}"#;

    /// An Avro file of `n` records written by apache-avro (not the library we read with),
    /// with a block boundary every `block` records.
    pub(crate) fn write_avro(n: usize, codec: Codec, block: usize) -> Vec<u8> {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let mut w = Writer::with_codec(&schema, Vec::new(), codec);
        for i in 0..n {
            let mut r = Record::new(&schema).unwrap();
            r.put("id", Value::Long(i as i64));
            r.put("name", Value::String(format!("name-{i}")));
            r.put("score", Value::Double(i as f64 / 4.0));
            let opt = if i % 3 == 0 {
                Value::Union(0, Box::new(Value::Null))
            } else {
                Value::Union(1, Box::new(Value::Int(i as i32)))
            };
            r.put("opt", opt);
            let tags = (0..i % 4).map(|t| Value::String(format!("t{t}"))).collect();
            r.put("tags", Value::Array(tags));
            r.put("ts", Value::TimestampMillis(1_700_000_000_000 + i as i64));
            w.append(r).unwrap();
            if (i + 1) % block == 0 {
                w.flush().unwrap();
            }
        }
        w.into_inner().unwrap()
    }

    fn check_events(batches: &[RecordBatch], n: usize, batch_size: usize) {
        assert!(
            batches
                .iter()
                .all(|b| b.num_rows() <= batch_size && b.num_rows() > 0)
        );
        let schema = batches[0].schema();
        let all = arrow::compute::concat_batches(&schema, batches).unwrap();
        assert_eq!(all.num_rows(), n);
        let ids = all.column(0).as_primitive::<Int64Type>();
        let names = all.column(1).as_string::<i32>();
        let scores = all.column(2).as_primitive::<Float64Type>();
        let opt = all.column(3).as_primitive::<Int32Type>();
        let tags = all.column(4).as_list::<i32>();
        assert!(matches!(
            all.column(5).data_type(),
            DataType::Timestamp(TimeUnit::Millisecond, _)
        ));
        let ts = all.column(5).as_primitive::<TimestampMillisecondType>();
        for i in 0..n {
            assert_eq!(ids.value(i), i as i64);
            assert_eq!(names.value(i), format!("name-{i}"));
            assert_eq!(scores.value(i), i as f64 / 4.0);
            if i % 3 == 0 {
                assert!(opt.is_null(i));
            } else {
                assert_eq!(opt.value(i), i as i32);
            }
            let t = tags.value(i);
            let t = t.as_string::<i32>();
            assert_eq!(t.len(), i % 4);
            for (k, v) in t.iter().enumerate() {
                assert_eq!(v, Some(format!("t{k}").as_str()));
            }
            assert_eq!(ts.value(i), 1_700_000_000_000 + i as i64);
        }
    }

    #[test]
    fn reads_what_apache_avro_wrote() {
        for codec in [Codec::Null, Codec::Deflate(DeflateSettings::default())] {
            let bytes = write_avro(1000, codec, 37);
            let batches = read_bytes(&bytes, 128).unwrap();
            check_events(&batches, 1000, 128);
            assert_eq!(batches.len(), 8, "batches are filled across blocks");
        }
    }

    #[test]
    fn reads_a_file_from_disk_and_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.avro");
        std::fs::write(&path, write_avro(300, Codec::Null, 1000)).unwrap();
        let batches: Vec<RecordBatch> = AvroReader::open(&path, 100)
            .unwrap()
            .collect::<crate::Result<_>>()
            .unwrap();
        check_events(&batches, 300, 100);
        assert_eq!(read_schema(&path).unwrap(), batches[0].schema());
        let empty = dir.path().join("empty.avro");
        std::fs::write(&empty, write_avro(0, Codec::Null, 1)).unwrap();
        let mut r = AvroReader::open(&empty, 10).unwrap();
        assert!(r.next_batch().unwrap().is_none());
    }

    /// Reads the parts of `path` one after the other, each with its own reader.
    fn read_parts(path: &Path, parts: &[Range<u64>]) -> crate::Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        for part in parts {
            for b in AvroReader::open_range(path, 64, Some(part.clone()))? {
                batches.push(b?);
            }
        }
        Ok(batches)
    }

    #[test]
    fn block_parts_read_alone_make_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.avro");
        for codec in [Codec::Null, Codec::Deflate(DeflateSettings::default())] {
            std::fs::write(&path, write_avro(1000, codec, 37)).unwrap();
            let len = std::fs::metadata(&path).unwrap().len();
            let parts = block_parts(&path, 1000).unwrap();
            assert!(parts.len() > 3, "{parts:?}");
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
            assert_eq!(parts.last().unwrap().end, len);
            check_events(&read_parts(&path, &parts).unwrap(), 1000, 64);
            // One part when the parts would be larger than the file.
            assert_eq!(block_parts(&path, len).unwrap().len(), 1);
        }
        // A file without blocks is one empty part.
        std::fs::write(&path, write_avro(0, Codec::Null, 1)).unwrap();
        let parts = block_parts(&path, 1).unwrap();
        assert_eq!(parts.len(), 1);
        assert!(read_parts(&path, &parts).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_block_is_reported_by_the_part_it_falls_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.avro");
        let good = write_avro(1000, Codec::Null, 37);
        // Cut inside the last block: the framing of the blocks before it still holds.
        std::fs::write(&path, &good[..good.len() - 20]).unwrap();
        let parts = block_parts(&path, 1000).unwrap();
        assert!(parts.len() > 3, "{parts:?}");
        let e = read_parts(&path, &parts).unwrap_err().to_string();
        assert!(e.contains("corrupt block at offset"), "{e}");
        // A range outside the file's blocks is refused, naming it.
        let e = AvroReader::open_range(&path, 64, Some(0..10)).unwrap_err();
        assert!(e.to_string().contains("blocks from offset 0"), "{e}");
    }

    /// A snappy Avro file of `n` records (`id`, `name`) written by arrow-avro's writer, a
    /// block every `block` records.
    fn write_snappy(n: usize, block: usize) -> Vec<u8> {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::{Field, Schema as ArrowSchema};
        use arrow_avro::writer::{WriterBuilder, format::AvroOcfFormat};
        let schema = std::sync::Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        let mut w = WriterBuilder::new(schema.as_ref().clone())
            .with_compression(Some(CompressionCodec::Snappy))
            .build::<_, AvroOcfFormat>(Vec::new())
            .unwrap();
        for start in (0..n).step_by(block.max(1)) {
            let ids: Vec<i64> = (start..(start + block).min(n)).map(|i| i as i64).collect();
            let names: Vec<String> = ids.iter().map(|i| format!("name-{i}")).collect();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    std::sync::Arc::new(Int64Array::from(ids)),
                    std::sync::Arc::new(StringArray::from(names)),
                ],
            )
            .unwrap();
            w.write(&batch).unwrap();
        }
        w.finish().unwrap();
        w.into_inner()
    }

    #[test]
    fn reads_snappy_blocks_checking_their_crc() {
        let bytes = write_snappy(1000, 128);
        let batches = read_bytes(&bytes, 100).unwrap();
        assert!(batches.iter().all(|b| b.num_rows() <= 100));
        let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let ids = all.column(0).as_primitive::<Int64Type>();
        let names = all.column(1).as_string::<i32>();
        assert_eq!(all.num_rows(), 1000);
        for i in 0..1000 {
            assert_eq!(ids.value(i), i as i64);
            assert_eq!(names.value(i), format!("name-{i}"));
        }
        // The CRC of the last block (the 4 bytes before its sync marker) altered.
        let mut bad = bytes.clone();
        let at = bad.len() - 17;
        bad[at] ^= 0x01;
        let e = read_err(&bad);
        assert!(
            e.contains("snappy CRC mismatch") && e.contains("offset"),
            "{e}"
        );
        // Compressed bytes altered: an error, never a panic or rows.
        let mut bad = bytes;
        let at = bad.len() - 30;
        bad[at] ^= 0xff;
        let e = read_err(&bad);
        assert!(e.contains("corrupt block at offset"), "{e}");
    }

    fn read_err(bytes: &[u8]) -> String {
        match read_bytes(bytes, 64) {
            Ok(b) => panic!("expected an error, read {} batches", b.len()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file_and_offset() {
        let good = write_avro(200, Codec::Null, 50);
        let header_len = {
            let mut r = &good[..];
            read_header_info(&mut r).unwrap().header_len() as usize
        };
        // Truncated inside the last block.
        let e = read_err(&good[..good.len() - 20]);
        assert!(e.contains("<memory>") && e.contains("offset"), "{e}");
        // A sync marker that does not match.
        let mut bad_sync = good.clone();
        let last = bad_sync.len() - 1;
        bad_sync[last] ^= 0xff;
        let e = read_err(&bad_sync);
        assert!(e.contains("sync marker") && e.contains("offset"), "{e}");
        // A block claiming more bytes than the file has.
        let mut huge = good[..header_len].to_vec();
        write_long(&mut huge, 1);
        write_long(&mut huge, i64::MAX);
        let e = read_err(&huge);
        assert!(
            e.contains(&format!("offset {header_len}")) && e.contains("exceeds"),
            "{e}"
        );
        // Records that do not decode (a string longer than its block).
        let mut garbage = good[..header_len].to_vec();
        write_long(&mut garbage, 1);
        write_long(&mut garbage, 2);
        garbage.extend_from_slice(&[0x02, 0x7e]);
        garbage.extend_from_slice(&good[header_len - 16..header_len]);
        let e = read_err(&garbage);
        assert!(
            e.contains(&format!("corrupt block at offset {header_len}")),
            "{e}"
        );
        // Not Avro at all.
        let e = read_err(b"PAR1 definitely not avro");
        assert!(e.contains("not a valid Avro"), "{e}");
    }

    #[test]
    fn an_error_ends_the_iteration() {
        let good = write_avro(200, Codec::Null, 50);
        let mut r = AvroReader::new(
            Path::new("x.avro"),
            &good[..good.len() - 20],
            (good.len() - 20) as u64,
            64,
        )
        .unwrap();
        let results: Vec<_> = r.by_ref().collect();
        assert!(results.last().unwrap().is_err());
        assert!(r.next().is_none());
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Edit::Flip(i, v)),
            (
                any::<usize>(),
                prop::sample::select(vec![0x00u8, 0x01, 0x7f, 0x80, 0xff])
            )
                .prop_map(|(i, v)| Edit::Flip(i, v)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Edit::Insert(i, v)),
            any::<usize>().prop_map(Edit::Delete),
            any::<usize>().prop_map(Edit::Truncate),
        ]
    }

    /// Reading `bytes` ends, in `Ok` or a clean error, without the decoder panicking.
    fn check_robust(bytes: &[u8]) -> Result<(), TestCaseError> {
        match read_bytes(bytes, 16) {
            Ok(batches) => {
                for b in batches {
                    prop_assert!(b.num_rows() <= 16);
                }
            }
            Err(e) => {
                let e = e.to_string();
                prop_assert!(e.starts_with("avro: <memory>: "), "{}", e);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_break_the_reader(
            with_magic in any::<bool>(),
            tail in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = if with_magic { b"Obj\x01".to_vec() } else { vec![] };
            bytes.extend(tail);
            check_robust(&bytes)?;
        }

        #[test]
        fn mutated_files_never_break_the_reader(
            codec in 0..3u8,
            edits in prop::collection::vec(edit(), 1..4),
        ) {
            let good = match codec {
                0 => write_avro(20, Codec::Null, 7),
                1 => write_avro(20, Codec::Deflate(DeflateSettings::default()), 7),
                _ => write_snappy(20, 7),
            };
            check_robust(&apply_edits(good, &edits))?;
        }
    }
}
