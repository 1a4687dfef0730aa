//! Test kit: run the binary, read its outputs, compute oracles with DataFusion batch.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tributary")
}

/// A command for the binary, run in `dir`, with the admin endpoint on an ephemeral
/// port so tests never collide, and no stray configuration from the environment.
pub fn tributary(dir: &Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .env_remove("TRIBUTARY_CONFIG")
        .env_remove("TRIBUTARY_LOG")
        .env("NO_COLOR", "1");
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIBUTARY__") {
            c.env_remove(k);
        }
    }
    c
}

pub fn run(dir: &Path, args: &[&str]) -> Output {
    let mut c = tributary(dir);
    if args.first() == Some(&"run") {
        c.args(["--set", "admin.listen=127.0.0.1:0"]);
    }
    c.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `tributary generate --stream STREAM --seed SEED --count COUNT [--option o]… -o OUT`
/// in `dir`; asserts it succeeds.
pub fn generate(dir: &Path, stream: &str, seed: &str, count: &str, options: &[&str], out: &str) {
    let mut args = vec![
        "generate", "--stream", stream, "--seed", seed, "--count", count,
    ];
    for o in options {
        args.extend(["--option", o]);
    }
    args.extend(["-o", out]);
    ok(&run(dir, &args));
}

/// Asserts success, printing the binary's stderr otherwise.
pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "tributary failed ({:?}):\n{}",
        o.status.code(),
        stderr(o)
    );
}

pub fn write(path: &Path, text: &str) -> PathBuf {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// The JSON log line with `"message": msg` (logs are JSON lines when not a terminal).
pub fn log_event(stderr: &str, msg: &str) -> Option<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == msg)
}

/// Every line of a JSON-lines file, parsed.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// Every line of every file in `dir` (a sink's output at parallelism > 1), parsed.
pub fn json_lines_in(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
    {
        out.extend(json_lines(&e.unwrap().path()));
    }
    out
}

/// Rows as canonical JSON strings, sorted: a multiset to compare results by.
pub fn canonical(rows: &[serde_json::Value]) -> Vec<String> {
    let mut out: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    out.sort();
    out
}

/// Encodes batches with the same JSON encoder the file sink uses, so that the oracle's
/// rows and the pipeline's rows are compared in one representation.
pub fn batches_as_json(batches: &[RecordBatch]) -> Vec<serde_json::Value> {
    let mut buf = Vec::new();
    for b in batches {
        tributary::formats::json::encode_json_lines(b, &mut buf).unwrap();
    }
    String::from_utf8(buf)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Splits JSON lines into the batch of lines arrow-json accepts for `schema` and the
/// number it refuses.
pub fn good_rows(text: &str, schema: &SchemaRef) -> (Vec<RecordBatch>, u64) {
    let mut good = String::new();
    let mut bad = 0;
    for line in text.lines() {
        let one = arrow::json::ReaderBuilder::new(schema.clone())
            .build(std::io::Cursor::new(line.as_bytes()))
            .and_then(|r| r.collect::<Result<Vec<_>, _>>());
        match one {
            Ok(b) if b.iter().map(|b| b.num_rows()).sum::<usize>() == 1 => {
                good.push_str(line);
                good.push('\n');
            }
            _ => bad += 1,
        }
    }
    let batches = arrow::json::ReaderBuilder::new(schema.clone())
        .build(std::io::Cursor::new(good.into_bytes()))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (batches, bad)
}

/// Registers in `ctx`, as `table`, the rows of the restaurant generator's `stream` in
/// the JSON lines `files` that arrow-json accepts; returns (rows, refused lines).
pub fn register_generated(
    ctx: &SessionContext,
    table: &str,
    stream: &str,
    files: &[PathBuf],
) -> (usize, u64) {
    let schema = tributary::connectors::generator::stream_schema("restaurant", stream).unwrap();
    let mut text = String::new();
    for f in files {
        text.push_str(&std::fs::read_to_string(f).unwrap());
    }
    let (batches, bad) = good_rows(&text, &schema);
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    let table_data = datafusion::datasource::MemTable::try_new(schema, vec![batches]).unwrap();
    ctx.register_table(table, std::sync::Arc::new(table_data))
        .unwrap();
    (rows, bad)
}

/// Runs `sql` with DataFusion in batch mode over `ctx`.
pub async fn batch_sql(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql)
        .await
        .unwrap_or_else(|e| panic!("oracle query failed: {e}\n{sql}"))
        .collect()
        .await
        .unwrap()
}

/// A running `tributary run` whose stderr is read line by line in the background.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn start(dir: &Path, args: &[&str]) -> Running {
        let mut child = tributary(dir)
            .args(["run", "--set", "admin.listen=127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            seen: vec![],
        }
    }

    /// Waits for a JSON log line with this message; panics after `timeout`.
    pub fn wait_for_log(&mut self, msg: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["message"] == msg
                    {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no log line '{msg}' within {timeout:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit; returns the exit code and the rest of stderr.
    pub fn wait(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(l);
                }
                return (status.code(), self.seen.join("\n"));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "tributary did not exit within {timeout:?}:\n{}",
                    self.seen.join("\n")
                );
            }
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(l);
            }
        }
    }
}

/// Polls `cond` until true; panics with `what` after `timeout`. For waiting on state
/// another process produces (a file growing), not as a stand-in for synchronisation
/// inside one process.
pub fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The latest committed checkpoint's id in `dir` (0: none).
pub fn committed(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| e.path().file_stem()?.to_str()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Every row of the published (not hidden) Parquet files under `dir`, as JSON.
pub fn published_rows(dir: &Path) -> Vec<serde_json::Value> {
    let mut batches = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".parquet") {
            continue;
        }
        let file = std::fs::File::open(entry.path()).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(|b| b.unwrap()));
    }
    batches_as_json(&batches)
}

/// Runs the pipeline `p.yaml` in `d` (checkpoints under `d/checkpoints`) once per phase
/// of a checkpoint, each run aborted (`TRIBUTARY_FAULT_INJECT`, as abruptly as
/// `kill -9`) in that phase two checkpoints after the latest committed one, so mid-run
/// with input arriving; then lets a last run finish, resumed from a checkpoint.
pub fn abort_in_every_checkpoint_phase_then_resume(d: &Path) {
    let checkpoints = d.join("checkpoints");
    for phase in [
        "snapshot",
        "pre-commit",
        "blobs-written",
        "metadata-committed",
        "restore",
        "sink-committed",
    ] {
        // Two checkpoints after the latest committed one: mid-run, input arriving.
        let fault = format!("{phase}@{}", committed(&checkpoints) + 2);
        let mut cmd = tributary(d);
        cmd.env("TRIBUTARY_FAULT_INJECT", &fault);
        let o = cmd
            .args(["run", "--set", "admin.listen=127.0.0.1:0", "p.yaml"])
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            None,
            "the run with {fault} was aborted, not finished:\n{err}"
        );
        assert!(
            err.contains(&format!(
                "\"message\":\"fault injected\",\"phase\":\"{phase}\""
            )),
            "the abort came from {fault}:\n{err}"
        );
    }
    let (code, stderr) = Running::start(d, &["p.yaml"]).wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("resuming from checkpoint"), "{stderr}");
}
