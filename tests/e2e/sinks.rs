//! Sinks end to end: partitioned Parquet is complete, visible only when complete, and
//! reads back (through the file source) to exactly what was written.

use crate::common::*;

#[test]
fn partitioned_parquet_round_trips_through_the_file_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("write.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '20000', rate = '0');\n\
         CREATE TABLE lake WITH (connector = 'parquet', path = 'lake', partition_by = 'date,channel', rollover_size = '64KB');\n\
         INSERT INTO lake SELECT order_id, event_type, total, \
         to_char(event_time, '%Y-%m-%d') AS date, channel FROM orders;\n",
    );
    ok(&run(d, &["run", "write.sql"]));

    let mut files = vec![];
    let mut hidden = vec![];
    let mut stack = vec![d.join("lake")];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                assert!(
                    name.starts_with("date=") || name.starts_with("channel="),
                    "{name}"
                );
                stack.push(path);
            } else if name.starts_with('.') {
                hidden.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(
        hidden.is_empty(),
        "in-progress files left behind: {hidden:?}"
    );
    assert!(
        files.len() > 2,
        "expected several partitions/rolled files, got {files:?}"
    );

    let lake = d.join("lake");
    // Read every file back as one table and count the rows.
    write(
        &d.join("read.sql"),
        &format!(
            "CREATE TABLE lake WITH (connector = 'file', path = '{}', format = 'parquet');\n\
             CREATE TABLE back WITH (connector = 'file', path = 'back.jsonl');\n\
             INSERT INTO back SELECT * FROM lake;\n",
            files[0].parent().unwrap().display()
        ),
    );
    ok(&run(d, &["run", "read.sql"]));
    let back = json_lines(&d.join("back.jsonl"));
    assert!(!back.is_empty());
    let total_rows: usize = files
        .iter()
        .map(|f| {
            let file = std::fs::File::open(f).unwrap();
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap().num_rows())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(
        total_rows, 20_000,
        "every generated row is in the lake exactly once"
    );
    let _ = lake;
}
