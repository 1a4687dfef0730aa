use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::physical_plan::displayable;

use super::*;

fn write_parquet(path: &Path, values: &[i64]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(values.to_vec()))],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// The sum of `v` and the files the physical plan reads.
async fn sum_and_files(session: &QuerySession, sql: &str) -> (i64, Vec<String>) {
    let df = session.sql(sql).await.unwrap();
    let plan = df.clone().create_physical_plan().await.unwrap();
    let text = displayable(plan.as_ref()).indent(true).to_string();
    let files = text
        .split(|c: char| c == '[' || c == ']' || c == ',' || c.is_whitespace())
        .filter(|w| w.ends_with(".parquet") || w.contains(".inprogress"))
        .map(str::to_string)
        .collect();
    let batches = df.collect().await.unwrap();
    let sum = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            a.iter().flatten().sum::<i64>()
        })
        .sum();
    (sum, files)
}

#[tokio::test]
async fn partitions_are_pruned_and_in_progress_files_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sales");
    write_parquet(
        &root.join("date=2026-01-01/hour=13/part-0-0.parquet"),
        &[1, 2],
    );
    write_parquet(
        &root.join("date=2026-01-01/hour=14/part-0-1.parquet"),
        &[10],
    );
    write_parquet(
        &root.join("date=2026-01-02/hour=13/part-0-2.parquet"),
        &[100],
    );
    // Being written: not Parquet yet (unreadable if it were read).
    std::fs::write(
        root.join("date=2026-01-01/hour=13/.part-0-3.parquet.inprogress"),
        b"not parquet yet",
    )
    .unwrap();
    let session = QuerySession::new();
    let spec = TableSpec::by_hand(&format!("sales={}", root.display())).unwrap();
    assert_eq!(spec.partition_by, ["date", "hour"]);
    session.register(&spec).await.unwrap();

    let (sum, files) = sum_and_files(&session, "SELECT sum(v) FROM sales").await;
    assert_eq!(sum, 113);
    assert_eq!(files.len(), 3, "{files:?}");

    let (sum, files) = sum_and_files(
        &session,
        "SELECT sum(v) FROM sales WHERE date = '2026-01-01' AND hour = '13'",
    )
    .await;
    assert_eq!(sum, 3);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].contains("date=2026-01-01/hour=13/part-0-0.parquet"));
}

#[tokio::test]
async fn show_tables_lists_user_tables_and_errors_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.jsonl");
    std::fs::write(&file, "{\"a\": 1}\n{\"a\": 2}\n").unwrap();
    let session = QuerySession::new();
    session
        .register(&TableSpec::by_hand(&format!("orders={}", file.display())).unwrap())
        .await
        .unwrap();
    let batches = session
        .sql("show tables;")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(text.contains("orders"), "{text}");
    assert!(!text.contains("information_schema"), "{text}");

    let e = session.sql("SELECT nope FROM orders").await.unwrap_err();
    assert_eq!(e.code(), "QRY001");
    assert!(e.to_string().contains("line 1, column 8"), "{e}");
    let e = session.sql("SELEC 1").await.unwrap_err();
    assert!(e.to_string().contains("Line: 1, Column: 1"), "{e}");

    assert!(TableSpec::by_hand("nothing").is_err());
    assert!(TableSpec::by_hand("x=/no/such/file.jsonl").is_err());
}
