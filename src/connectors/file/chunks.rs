//! JSON lines files cut into chunks of whole lines, so that several chunks of one file
//! can be decoded at once (on the blocking pool) while the source emits their batches
//! in file order.
//!
//! [`LineChunks`] reads a file in large blocks and cuts it after every `lines`-th
//! newline (counted with `memchr`'s vector count; only the cut itself is searched for);
//! a chunk knows the number of its first line, so bad records name their line wherever
//! the chunk is decoded. A line longer than the limit
//! is never held whole: once the unfinished line in hand passes the limit, the rest of
//! it is read and dropped, and it becomes a [`Piece::TooLong`] of its own, in its place
//! in the file's order. [`read_ahead`] cuts pieces on a thread of its own, a few ahead
//! of their decoding, so that reading the file never waits for the source to emit a
//! batch. [`decode_piece`] turns a piece into batches of at most the
//! batch size; it is what a decoding worker runs. A good line's end is found, and its
//! text checked as UTF-8, by the decoder as it scans it
//! ([`JsonDecoder::push_line_at`]); only other lines are searched for their end.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;

use crate::dlq::{BadRecordReason, BadRecords};
use crate::formats::json::JsonDecoder;

/// How much of a refused over-long line is kept for the bad-record report.
pub(super) const SAMPLE: usize = 256;

/// The smallest read from the file.
const MIN_READ: usize = 64 << 10;

/// A part of a JSON lines file, in the file's order.
#[derive(Debug)]
pub(super) enum Piece {
    /// Whole lines (the last one may lack its `\n` at the end of the file); `first` is
    /// the number (from 1) of the first one.
    Lines { bytes: Vec<u8>, first: u64 },
    /// A line longer than the limit: its number, its length and its first bytes.
    TooLong {
        line: u64,
        len: u64,
        sample: Vec<u8>,
    },
}

/// A JSON lines file being cut into [`Piece`]s.
pub(super) struct LineChunks<R = File> {
    input: R,
    /// Bytes read after the last piece: the start of the next one.
    carry: Vec<u8>,
    eof: bool,
    /// Lines in the pieces so far.
    lines: u64,
    /// Lines per chunk.
    per_chunk: usize,
    max_line: usize,
    /// Bytes per line seen so far, for sizing reads.
    avg_line: usize,
    /// Bounds of one read from `input`.
    min_read: usize,
    max_read: usize,
}

impl LineChunks<File> {
    pub(super) fn open(path: &Path, per_chunk: usize, max_line: usize) -> std::io::Result<Self> {
        Ok(Self::new(File::open(path)?, per_chunk, max_line))
    }
}

impl<R: Read> LineChunks<R> {
    pub(super) fn new(input: R, per_chunk: usize, max_line: usize) -> Self {
        LineChunks {
            input,
            carry: Vec::new(),
            eof: false,
            lines: 0,
            per_chunk: per_chunk.max(1),
            max_line: max_line.max(1),
            avg_line: 256,
            min_read: MIN_READ,
            max_read: 64 << 20,
        }
    }

    /// Reads of exactly `n` bytes (tests: long lines met across reads).
    #[cfg(test)]
    fn with_reads(mut self, n: usize) -> Self {
        self.min_read = n;
        self.max_read = n;
        self
    }

    /// Reads up to `want` more bytes at the end of `buf`; whether any came.
    fn fill(&mut self, buf: &mut Vec<u8>, want: usize) -> std::io::Result<bool> {
        loop {
            match (&mut self.input).take(want as u64).read_to_end(buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next piece of the file, `None` at its end.
    pub(super) fn next_piece(&mut self) -> std::io::Result<Option<Piece>> {
        let mut buf = std::mem::take(&mut self.carry);
        // How many newlines `buf[..scanned]` holds, and where the line after the last
        // of them starts.
        let (mut found, mut scanned, mut line_start) = (0usize, 0usize, 0usize);
        loop {
            let more = memchr::memchr_iter(b'\n', &buf[scanned..]).count();
            if more > 0 {
                // The chunk ends at its `per_chunk`-th newline: the last one read, or
                // one of the few before it.
                let past = (found + more).saturating_sub(self.per_chunk);
                let last = memchr::memrchr_iter(b'\n', &buf[scanned..])
                    .nth(past)
                    .map_or(scanned, |p| scanned + p + 1);
                if found + more >= self.per_chunk {
                    return Ok(Some(self.cut(buf, last, self.per_chunk)));
                }
                line_start = last;
            }
            found += more;
            scanned = buf.len();
            if self.eof {
                if buf.is_empty() {
                    return Ok(None);
                }
                let first = self.lines + 1;
                self.lines += found as u64 + u64::from(buf.len() > line_start);
                return Ok(Some(Piece::Lines { bytes: buf, first }));
            }
            if buf.len() - line_start > self.max_line {
                if line_start > 0 {
                    // The whole lines first; the long one is the next piece.
                    return Ok(Some(self.cut(buf, line_start, found)));
                }
                return self.too_long(buf).map(Some);
            }
            let missing = self.per_chunk - found;
            let want = (missing.saturating_mul(self.avg_line) + self.avg_line)
                .clamp(self.min_read, self.max_read);
            self.fill(&mut buf, want)?;
        }
    }

    /// The `lines` lines of `buf` up to `end`; the rest is carried over.
    fn cut(&mut self, mut buf: Vec<u8>, end: usize, lines: usize) -> Piece {
        self.carry = buf[end..].to_vec();
        buf.truncate(end);
        if let Some(avg) = end.checked_div(lines) {
            self.avg_line = avg.max(1);
        }
        let first = self.lines + 1;
        self.lines += lines as u64;
        Piece::Lines { bytes: buf, first }
    }

    /// `buf` is the start of a line already longer than the limit: reads and drops the
    /// rest of it, keeping what follows.
    fn too_long(&mut self, mut buf: Vec<u8>) -> std::io::Result<Piece> {
        let mut len = buf.len() as u64;
        buf.truncate(SAMPLE);
        let sample = buf;
        let mut block = Vec::with_capacity(self.min_read);
        loop {
            block.clear();
            if !self.fill(&mut block, self.min_read)? {
                break;
            }
            match memchr::memchr(b'\n', &block) {
                Some(p) => {
                    len += p as u64;
                    self.carry = block[p + 1..].to_vec();
                    break;
                }
                None => len += block.len() as u64,
            }
        }
        self.lines += 1;
        Ok(Piece::TooLong {
            line: self.lines,
            len,
            sample,
        })
    }
}

/// What [`read_ahead`]'s thread sends: the next piece, `None` at the end of the file,
/// or why the file could not be read (the thread's last message, either way).
pub(super) type NextPiece = std::io::Result<Option<Piece>>;

/// Cuts `chunks` into pieces on a thread of its own, at most `ahead` pieces ahead of
/// the receiver. The thread ends after the file's end or a read error (its last
/// message), or when the receiver is dropped; a receiver that sees the channel close
/// without either lost the thread (a panic).
///
/// Reading ahead keeps the decoders fed: the source emits a chunk's batches only once
/// that chunk is decoded, and a read made only then left the cores idle while it ran.
pub(super) fn read_ahead<R: Read + Send + 'static>(
    mut chunks: LineChunks<R>,
    ahead: usize,
) -> std::io::Result<tokio::sync::mpsc::Receiver<NextPiece>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
    std::thread::Builder::new()
        .name("tributary-file-read".into())
        .spawn(move || {
            loop {
                let next = chunks.next_piece();
                let last = !matches!(next, Ok(Some(_)));
                if tx.blocking_send(next).is_err() || last {
                    return;
                }
            }
        })?;
    Ok(rx)
}

/// Where a JSON line came from, for bad-record details.
struct LineOrigin<'a> {
    path: &'a Path,
    line: u64,
}

impl fmt::Display for LineOrigin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// Decodes `piece` of the file at `path` into batches of at most `batch_size` rows,
/// reporting its bad lines (naming file and line) to `bad`. Lines longer than
/// `max_line` are bad records; blank lines are skipped; a byte-order mark on line 1 and
/// a `\r` before a `\n` are ignored.
pub(super) fn decode_piece(
    piece: Piece,
    path: &PathBuf,
    decoder: &mut JsonDecoder,
    batch_size: usize,
    max_line: usize,
    bad: &mut BadRecords,
) -> crate::Result<Vec<RecordBatch>> {
    let at = bad.origin_mut();
    at.file = Some(path.display().to_string());
    let (bytes, first) = match piece {
        Piece::TooLong { line, len, sample } => {
            bad.origin_mut().line = Some(line as i64);
            let origin = LineOrigin { path, line };
            let detail =
                format!("{origin}: line of {len} bytes is longer than the {max_line} byte limit");
            bad.report(BadRecordReason::Malformed, &detail, &sample);
            return Ok(Vec::new());
        }
        Piece::Lines { bytes, first } => (bytes, first),
    };
    let mut batches = Vec::new();
    let mut line = first;
    let mut start = 0;
    while start < bytes.len() {
        let no = line;
        line += 1;
        // A good line in one pass (line 1 may start with a byte-order mark: it takes
        // the way below).
        if no > 1
            && let Some(end) = decoder.push_line_at(&bytes, start, max_line)
        {
            start = end;
            if decoder.buffered() >= batch_size {
                batches.extend(flush(decoder, bad)?);
            }
            continue;
        }
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |p| start + p);
        let (mut a, mut b) = (start, end);
        start = end + 1;
        if no == 1 && bytes[a..b].starts_with(b"\xEF\xBB\xBF") {
            a += 3;
        }
        if bytes[a..b].last() == Some(&b'\r') {
            b -= 1;
        }
        let rec = &bytes[a..b];
        if rec.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        bad.origin_mut().line = Some(no as i64);
        let origin = LineOrigin { path, line: no };
        if rec.len() > max_line {
            let detail = format!(
                "{origin}: line of {} bytes is longer than the {max_line} byte limit",
                rec.len()
            );
            bad.report(
                BadRecordReason::Malformed,
                &detail,
                &rec[..rec.len().min(SAMPLE)],
            );
            continue;
        }
        decoder.push_from(rec, Some(&origin), bad);
        if decoder.buffered() >= batch_size {
            batches.extend(flush(decoder, bad)?);
        }
    }
    batches.extend(flush(decoder, bad)?);
    Ok(batches)
}

fn flush(decoder: &mut JsonDecoder, bad: &mut BadRecords) -> crate::Result<Option<RecordBatch>> {
    let batch = decoder.flush()?;
    // Records refused while flushing name their line in their message.
    bad.origin_mut().line = None;
    decoder.report_late(bad);
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use proptest::prelude::*;

    use super::*;

    /// Every piece of `input` cut `per_chunk` lines at a time with `max_line`.
    fn pieces(input: &[u8], per_chunk: usize, max_line: usize, reads: usize) -> Vec<Piece> {
        let mut c = LineChunks::new(input, per_chunk, max_line).with_reads(reads);
        let mut out = Vec::new();
        while let Some(p) = c.next_piece().unwrap() {
            out.push(p);
        }
        out
    }

    #[test]
    fn chunks_hold_whole_lines_and_long_lines_are_pieces_of_their_own() {
        let input = b"a\nbb\n0123456789abcdefghij\nccc\r\nlast";
        let got: Vec<String> = pieces(input, 2, 8, 4)
            .into_iter()
            .map(|p| match p {
                Piece::Lines { bytes, first } => {
                    format!("{first}:{}", String::from_utf8(bytes).unwrap())
                }
                Piece::TooLong { line, len, sample } => {
                    format!("{line}:long {len} {}", String::from_utf8(sample).unwrap())
                }
            })
            .collect();
        assert_eq!(
            got,
            vec!["1:a\nbb\n", "3:long 20 0123456789a", "4:ccc\r\nlast"]
        );
    }

    /// The columns of the UTF-8 tests' records.
    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]))
    }

    /// What each line of `input` gives pushed on its own ([`JsonDecoder::push_from`]):
    /// the rows' `n` values and the dead letters' (line, message, payload); a line
    /// longer than `max_line` is a letter of its own, `(line, "long", [])`.
    fn line_by_line(
        input: &[u8],
        max_line: usize,
    ) -> (Vec<i64>, Vec<(Option<i64>, String, Vec<u8>)>) {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let mut bad = BadRecords::collecting("test");
        let mut long = Vec::new();
        let path = PathBuf::from("f.jsonl");
        for (i, mut rec) in input.split(|b| *b == b'\n').enumerate() {
            let no = i as u64 + 1;
            if no == 1 {
                rec = rec.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(rec);
            }
            rec = rec.strip_suffix(b"\r").unwrap_or(rec);
            if rec.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            if rec.len() > max_line {
                long.push((Some(no as i64), "long".to_string(), vec![]));
                continue;
            }
            bad.origin_mut().line = Some(no as i64);
            d.push_from(
                rec,
                Some(&LineOrigin {
                    path: &path,
                    line: no,
                }),
                &mut bad,
            );
        }
        let batch = d.flush().unwrap();
        let mut refused = letters(&bad);
        refused.extend(long);
        refused.sort_by_key(|(line, _, _)| *line);
        (ns(batch.into_iter().collect()), refused)
    }

    fn ns(batches: Vec<RecordBatch>) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let n = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                n.values().to_vec()
            })
            .collect()
    }

    fn letters(bad: &BadRecords) -> Vec<(Option<i64>, String, Vec<u8>)> {
        bad.take_letters()
            .into_iter()
            .map(|l| (l.source.line, l.message, l.payload))
            .collect()
    }

    #[test]
    fn a_chunk_decodes_as_its_lines_one_by_one_utf8_or_not() {
        let valid: &[u8] = "\u{feff}{\"n\": 1, \"s\": \"caf\u{e9}\"}\r\n\n  \n{\"n\": 2}\n{\"n\": \"x\"}\n{\"n\": 3, \"s\": \"\u{1f354}\"}".as_bytes();
        // The same with a line that is not UTF-8.
        let mut invalid = valid.to_vec();
        invalid.extend_from_slice(b"\n{\"n\": 4, \"s\": \"\xff\"}\n{\"n\": 5}\n");
        for input in [valid, &invalid[..]] {
            let mut d = JsonDecoder::new(schema()).unwrap();
            let mut bad = BadRecords::collecting("test");
            let piece = Piece::Lines {
                bytes: input.to_vec(),
                first: 1,
            };
            let path = PathBuf::from("f.jsonl");
            let batches = decode_piece(piece, &path, &mut d, 3, 1 << 20, &mut bad).unwrap();
            assert_eq!((ns(batches), letters(&bad)), line_by_line(input, 1 << 20));
        }
        let (rows, refused) = line_by_line(&invalid, 1 << 20);
        assert_eq!(rows, vec![1, 2, 3, 5]);
        let reasons: Vec<_> = refused
            .iter()
            .map(|(line, m, _)| (*line, m.contains("UTF-8")))
            .collect();
        assert_eq!(reasons, vec![(Some(5), false), (Some(7), true)]);
    }

    /// A reader that gives `ok` bytes of `input`, then fails.
    struct FailsAfter {
        input: std::io::Cursor<Vec<u8>>,
        ok: u64,
    }

    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.input.position() >= self.ok {
                return Err(std::io::Error::other("disk gone"));
            }
            let n = buf.len().min((self.ok - self.input.position()) as usize);
            self.input.read(&mut buf[..n])
        }
    }

    /// What the reader thread sends, as `(first line, bytes)`, `"end"` or the error.
    fn read_all_ahead<R: Read + Send + 'static>(chunks: LineChunks<R>) -> Vec<String> {
        let mut rx = read_ahead(chunks, 2).unwrap();
        let mut got = Vec::new();
        while let Some(next) = rx.blocking_recv() {
            got.push(match next {
                Ok(Some(Piece::Lines { bytes, first, .. })) => {
                    format!("{first}:{}", String::from_utf8(bytes).unwrap())
                }
                Ok(Some(Piece::TooLong { line, .. })) => format!("{line}:long"),
                Ok(None) => "end".into(),
                Err(e) => format!("error: {e}"),
            });
        }
        got
    }

    #[test]
    fn the_reader_thread_sends_the_pieces_in_order_then_the_end_or_the_error() {
        let input = b"a\nb\nc\nd\ne\n".to_vec();
        let whole = LineChunks::new(std::io::Cursor::new(input.clone()), 2, 8).with_reads(3);
        assert_eq!(
            read_all_ahead(whole),
            ["1:a\nb\n", "3:c\nd\n", "5:e\n", "end"]
        );
        // The disk fails after "a\nb\nc\n": the chunk cut before it is sent, then
        // the error, and nothing after it (the source fails on it).
        let failing = FailsAfter {
            input: std::io::Cursor::new(input),
            ok: 6,
        };
        assert_eq!(
            read_all_ahead(LineChunks::new(failing, 2, 8).with_reads(3)),
            ["1:a\nb\n", "error: disk gone"]
        );
    }

    proptest! {
        /// A chunk decodes as its lines do one by one, whatever they hold: good
        /// records (with spaces, tabs and `\r`s around them), blank lines, bad ones,
        /// a record cut over two lines (two bad lines, not one good record), lines
        /// longer than the limit, and lines at either end of the chunk.
        #[test]
        fn a_chunk_decodes_as_its_lines_one_by_one(
            lines in prop::collection::vec(prop::sample::select(vec![
                "{\"n\": 1, \"s\": \"a\"}",
                "{\"n\":2}",
                " \t{\"n\": 3} \r",
                "{\"s\": \"no n\"}",
                "{\"n\": 4,",
                "\"s\": \"x\"}",
                "",
                " \r",
                "\u{c}",
                "[1]",
                "{\"n\": 5, \"s\": \"a string longer than the limit of forty bytes\"}",
                "{\"n\": 6, \"s\": \"caf\u{e9}\"}",
                "{\"n\": 7}}",
                "nul",
            ]), 0..12),
            end_newline: bool,
            batch in 1..4usize,
        ) {
            let mut input = lines.join("\n").into_bytes();
            if end_newline {
                input.push(b'\n');
            }
            let mut d = JsonDecoder::new(schema()).unwrap();
            let mut bad = BadRecords::collecting("test");
            let piece = Piece::Lines { bytes: input.clone(), first: 1 };
            let path = PathBuf::from("f.jsonl");
            let batches = decode_piece(piece, &path, &mut d, batch, 40, &mut bad).unwrap();
            let refused: Vec<_> = letters(&bad)
                .into_iter()
                .map(|(line, m, p)| match m.contains("longer than the 40 byte limit") {
                    true => (line, "long".to_string(), vec![]),
                    false => (line, m, p),
                })
                .collect();
            prop_assert_eq!((ns(batches), refused), line_by_line(&input, 40));
        }

        /// Cutting never loses, reorders or splits a line, and numbers lines from 1.
        #[test]
        fn pieces_are_the_lines_in_order(
            lines in prop::collection::vec(prop::collection::vec(prop_oneof![Just(b'x'), Just(b'\r')], 0..40), 0..30),
            end_newline: bool,
            per_chunk in 1..5usize,
            max_line in 1..50usize,
            reads in 1..70usize,
        ) {
            let mut input = lines.join(&b'\n');
            if end_newline && !lines.is_empty() {
                input.push(b'\n');
            }
            let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut want: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
            if want.last().is_some_and(|l| l.is_empty()) {
                want.pop();
            }
            for p in pieces(&input, per_chunk, max_line, reads) {
                match p {
                    Piece::Lines { bytes, first } => {
                        let mut body = &bytes[..];
                        if body.last() == Some(&b'\n') {
                            body = &body[..body.len() - 1];
                        }
                        let n = body.split(|b| *b == b'\n').count();
                        prop_assert!(n <= per_chunk || bytes.is_empty());
                        for (i, l) in body.split(|b| *b == b'\n').enumerate() {
                            got.push((first + i as u64, l.to_vec()));
                        }
                    }
                    Piece::TooLong { line, len, sample } => {
                        prop_assert!(len as usize > max_line);
                        prop_assert!(sample.len() <= SAMPLE);
                        got.push((line, want[line as usize - 1].to_vec()));
                    }
                }
            }
            let want: Vec<(u64, Vec<u8>)> =
                want.iter().enumerate().map(|(i, l)| (i as u64 + 1, l.to_vec())).collect();
            prop_assert_eq!(got, want);
        }
    }
}
