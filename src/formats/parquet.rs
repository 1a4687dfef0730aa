//! Parquet files to Arrow, with the parquet crate's Arrow reader.
//!
//! Reading streams row group by row group in batches of the configured size; a reader
//! may also read one row group alone, so that a file's row groups can be decoded at
//! once on several cores (the file source does). A file
//! that cannot be read (not Parquet, corrupt pages, unsupported encoding) is an error
//! naming the file; a panic inside the reader on a corrupt file is caught and reported
//! the same way.

use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ::parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::FormatError;

fn decode_error(path: &Path, message: impl std::fmt::Display) -> crate::Error {
    FormatError::Decode {
        format: "parquet",
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

/// Reads one Parquet file as batches of at most `batch_size` rows.
pub struct ParquetReader {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    schema: SchemaRef,
    finished: bool,
}

impl std::fmt::Debug for ParquetReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetReader")
            .field("path", &self.path)
            .finish()
    }
}

fn builder(path: &Path) -> crate::Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| crate::Error::io(path, e))?;
    catch_unwind(AssertUnwindSafe(|| {
        ParquetRecordBatchReaderBuilder::try_new(file)
    }))
    .map_err(|p| decode_error(path, format!("reader failed: {}", panic_message(&*p))))?
    .map_err(|e| decode_error(path, e))
}

impl ParquetReader {
    /// Opens `path` and reads its footer (schema and row groups).
    pub fn open(path: &Path, batch_size: usize) -> crate::Result<Self> {
        Self::open_row_groups(path, batch_size, None)
    }

    /// Opens `path` to read only its row group `group` (numbered from 0), or every
    /// row group with `None`.
    pub fn open_row_groups(
        path: &Path,
        batch_size: usize,
        group: Option<usize>,
    ) -> crate::Result<Self> {
        let mut b = builder(path)?;
        if let Some(g) = group {
            let groups = b.metadata().num_row_groups();
            if g >= groups {
                return Err(decode_error(
                    path,
                    format!("row group {g} of a file with {groups}"),
                ));
            }
            b = b.with_row_groups(vec![g]);
        }
        let schema = b.schema().clone();
        let reader = b
            .with_batch_size(batch_size.max(1))
            .build()
            .map_err(|e| decode_error(path, e))?;
        Ok(ParquetReader {
            path: path.to_path_buf(),
            reader,
            schema,
            finished: false,
        })
    }

    /// The Arrow schema of the file.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next batch, `Ok(None)` at the end of the file.
    pub fn next_batch(&mut self) -> crate::Result<Option<RecordBatch>> {
        if self.finished {
            return Ok(None);
        }
        let next = catch_unwind(AssertUnwindSafe(|| self.reader.next()));
        match next {
            Ok(Some(Ok(b))) => Ok(Some(b)),
            Ok(None) => {
                self.finished = true;
                Ok(None)
            }
            Ok(Some(Err(e))) => {
                self.finished = true;
                Err(decode_error(&self.path, e))
            }
            Err(p) => {
                self.finished = true;
                Err(decode_error(
                    &self.path,
                    format!("reader failed: {}", panic_message(&*p)),
                ))
            }
        }
    }
}

impl Iterator for ParquetReader {
    type Item = crate::Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

/// The Arrow schema of the Parquet file at `path` (read from its footer).
pub fn read_schema(path: &Path) -> crate::Result<SchemaRef> {
    Ok(builder(path)?.schema().clone())
}

/// How many row groups the Parquet file at `path` has (read from its footer).
pub fn row_groups(path: &Path) -> crate::Result<usize> {
    Ok(builder(path)?.metadata().num_row_groups())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use ::parquet::arrow::ArrowWriter;
    use arrow::array::{
        Float64Array, Int64Array, ListBuilder, StringArray, StringBuilder,
        TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    pub(crate) fn sample(n: usize) -> RecordBatch {
        let mut tags = ListBuilder::new(StringBuilder::new());
        for i in 0..n {
            if i % 5 == 0 {
                tags.append_null();
            } else {
                tags.append_value((0..i % 3).map(|t| Some(format!("t{t}"))));
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new_list("tags", Field::new("item", DataType::Utf8, true), true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 7 != 0).then(|| format!("n{i}"))),
                )),
                Arc::new(Float64Array::from_iter(
                    (0..n).map(|i| (i % 4 != 0).then_some(i as f64 * 0.5)),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        (0..n as i64).map(|i| 1_700_000_000_000_000 + i),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(tags.finish()),
            ],
        )
        .unwrap()
    }

    pub(crate) fn write_parquet(path: &Path, batch: &RecordBatch) {
        let file = File::create(path).unwrap();
        let props = ::parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(300))
            .build();
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn row_groups_read_alone_make_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let batch = sample(1000);
        write_parquet(&path, &batch);
        let groups = row_groups(&path).unwrap();
        assert_eq!(groups, 4);
        let mut rows = Vec::new();
        for g in 0..groups {
            for b in ParquetReader::open_row_groups(&path, 128, Some(g)).unwrap() {
                rows.push(b.unwrap());
            }
        }
        let whole = arrow::compute::concat_batches(&batch.schema(), &rows).unwrap();
        assert_eq!(whole, batch);
        let e = ParquetReader::open_row_groups(&path, 128, Some(4)).unwrap_err();
        assert!(
            e.to_string().contains("row group 4 of a file with 4"),
            "{e}"
        );
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let batch = sample(1000);
        write_parquet(&path, &batch);
        assert_eq!(read_schema(&path).unwrap(), batch.schema());
        let batches: Vec<RecordBatch> = ParquetReader::open(&path, 128)
            .unwrap()
            .collect::<crate::Result<_>>()
            .unwrap();
        assert!(batches.iter().all(|b| b.num_rows() <= 128));
        let all = arrow::compute::concat_batches(&batch.schema(), &batches).unwrap();
        assert_eq!(all, batch);
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.parquet");
        std::fs::write(&garbage, b"not parquet at all").unwrap();
        let e = ParquetReader::open(&garbage, 10).unwrap_err().to_string();
        assert!(e.contains("garbage.parquet"), "{e}");

        let good = dir.path().join("good.parquet");
        write_parquet(&good, &sample(1000));
        let bytes = std::fs::read(&good).unwrap();
        let truncated = dir.path().join("truncated.parquet");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let e = ParquetReader::open(&truncated, 10).unwrap_err().to_string();
        assert!(e.contains("truncated.parquet"), "{e}");

        // Pages overwritten with garbage: the footer reads, the data does not.
        let mut smashed = bytes.clone();
        for b in smashed.iter_mut().skip(4).take(bytes.len() / 2) {
            *b = 0x5a;
        }
        let path = dir.path().join("smashed.parquet");
        std::fs::write(&path, &smashed).unwrap();
        let r: crate::Result<Vec<RecordBatch>> =
            ParquetReader::open(&path, 10).and_then(|r| r.collect());
        let e = r.unwrap_err().to_string();
        assert!(e.contains("smashed.parquet"), "{e}");
    }
}
