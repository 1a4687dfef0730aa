//! The command line tells the truth (issue "the first hour" §8): `savepoint delete`
//! deletes what `savepoint take` kept, and nothing a restart needs; `explain` names the
//! files a run really writes. (Every `--help` argument having a description is a lib
//! test: `cli::tests`.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

/// A stateless pipeline `sp` (generator → Parquet), checkpointing every `interval`:
/// every task's state is whole in each checkpoint (no incremental chains), so a deleted
/// savepoint's blobs have nothing building on them.
fn savepoint_pipeline(d: &Path, interval: &str) {
    write(
        &d.join("p.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '7', \
           rate = '2000');\n\
         CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
         INSERT INTO out SELECT order_id, event_type, total FROM orders;\n",
    );
    write(
        &d.join("p.yaml"),
        &format!(
            "name: sp\nsql: p.sql\ncheckpoint: {{ interval: {interval}, dir: checkpoints, retain: 2 }}\n"
        ),
    );
}

/// `tributary savepoint take|PIPELINE` on the running pipeline: the savepoint's id.
fn take_savepoint(d: &Path, running: &mut Running, args: &[&str]) -> u64 {
    let admin = running.wait_for_log(
        "admin endpoint: /metrics and /healthz",
        Duration::from_secs(30),
    );
    let listen = format!("admin.listen={}", admin["addr"].as_str().unwrap());
    let o = tributary(d)
        .args(args)
        .args(["--set", &listen])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let said = stdout(&o);
    said.trim().rsplit(' ').next().unwrap().parse().unwrap()
}

/// `tributary checkpoints p.yaml`'s rows: (id, savepoint name or "").
fn listed(d: &Path) -> Vec<(u64, String)> {
    let o = run(d, &["checkpoints", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .skip(2)
        .map(|r| {
            let id = r.split_whitespace().next().unwrap().parse().unwrap();
            // The savepoint column is the last; a regular checkpoint's is empty.
            let cols: Vec<&str> = r.split_whitespace().collect();
            let name = if cols.len() > 6 {
                cols.last().unwrap().to_string()
            } else {
                String::new()
            };
            (id, name)
        })
        .collect()
}

fn blobs(d: &Path, id: u64) -> PathBuf {
    d.join("checkpoints").join(format!("{id:020}"))
}

/// `savepoint delete` removes a savepoint and its blobs from the store, refuses a
/// regular checkpoint, an unknown name and the latest checkpoint (unless --force), and
/// the pipeline then resumes from its latest checkpoint.
#[test]
fn a_savepoint_is_deleted_with_its_blobs_and_the_pipeline_resumes_from_its_latest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    savepoint_pipeline(d, "100ms");
    let mut first = Running::start(d, &["p.yaml"]);
    let kept = take_savepoint(
        d,
        &mut first,
        &["savepoint", "take", "sp", "--name", "keep-me"],
    );
    eventually("three more checkpoints", Duration::from_secs(60), || {
        committed(&d.join("checkpoints")) >= kept + 3
    });
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let rows = listed(d);
    assert!(rows.contains(&(kept, "keep-me".to_string())), "{rows:?}");
    assert!(blobs(d, kept).is_dir(), "the savepoint's blobs are there");
    let regular = rows.iter().find(|(_, n)| n.is_empty()).unwrap().0;

    // Refusals: a regular checkpoint, an unknown savepoint.
    let o = run(d, &["savepoint", "delete", "p.yaml", &regular.to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("error[CHK005]"), "{}", stderr(&o));
    let o = run(d, &["savepoint", "delete", "p.yaml", "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("error[CHK006]"), "{err}");
    assert!(
        err.contains(&format!("keep-me (checkpoint {kept})")),
        "lists the savepoints: {err}"
    );
    assert_eq!(listed(d), rows, "a refusal changes nothing");

    // Deleted: gone from the listing, its blobs gone from the store directory.
    let latest = committed(&d.join("checkpoints"));
    let o = run(d, &["savepoint", "delete", "p.yaml", "keep-me"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = stdout(&o);
    assert!(
        said.starts_with(&format!(
            "deleted savepoint keep-me (checkpoint {kept}) of sp"
        )),
        "{said}"
    );
    assert!(said.contains("its state blobs are deleted"), "{said}");
    assert!(
        said.contains(&format!("a restart resumes from checkpoint {latest}")),
        "{said}"
    );
    let after = listed(d);
    assert!(after.iter().all(|(id, _)| *id != kept), "{after:?}");
    assert_eq!(after.len(), rows.len() - 1, "only it is gone: {after:?}");
    assert!(!blobs(d, kept).exists(), "its blobs are deleted");
    assert!(!d.join(format!("checkpoints/{kept:020}.json")).exists());

    // The pipeline resumes from its latest checkpoint; a savepoint taken now, with
    // no regular checkpoint after it, is what a restart would resume from.
    savepoint_pipeline(d, "1h");
    let mut second = Running::start(d, &["p.yaml"]);
    let last = take_savepoint(d, &mut second, &["savepoint", "sp", "--name", "last"]);
    let resumed = second.wait_for_log("resuming from checkpoint", Duration::from_secs(30));
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    assert_eq!(resumed["checkpoint"], latest, "{resumed}");
    assert_eq!(
        committed(&d.join("checkpoints")),
        last,
        "the savepoint is latest"
    );

    let o = run(d, &["savepoint", "delete", "p.yaml", "last"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("error[CHK007]"), "{err}");
    assert!(
        err.contains(&format!("resume from checkpoint {latest} instead")),
        "{err}"
    );
    assert!(blobs(d, last).is_dir());
    let o = run(d, &["savepoint", "delete", "p.yaml", "last", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("a restart resumes from checkpoint {latest}")),
        "{}",
        stdout(&o)
    );
    assert!(!blobs(d, last).exists());
    assert_eq!(committed(&d.join("checkpoints")), latest);

    let mut third = Running::start(d, &["p.yaml"]);
    let resumed = third.wait_for_log("resuming from checkpoint", Duration::from_secs(30));
    assert_eq!(resumed["checkpoint"], latest, "{resumed}");
    third.child.kill().unwrap();
    third.child.wait().unwrap();
}

/// The `writes:` lines of `tributary explain`, after the sink's name.
fn writes_of(explained: &str, sink: &str) -> String {
    let prefix = format!("  sink {sink}: ");
    explained
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no writes line for {sink}:\n{explained}"))
        .to_string()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Whether `path` matches `pattern`, where each `<…>` stands for any text without `/`.
fn matches(pattern: &str, path: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('<') else {
        return pattern == path;
    };
    let Some(path) = path.strip_prefix(head) else {
        return false;
    };
    let rest = rest.split_once('>').map(|(_, r)| r).unwrap_or("");
    (0..=path.len())
        .take_while(|i| !path[..*i].contains('/'))
        .filter(|i| path.is_char_boundary(*i))
        .any(|i| matches(rest, &path[i..]))
}

/// `explain` names the real files: each task's JSON lines file, the Parquet partition
/// directories and file names, the checkpoint files; a run then writes exactly those.
#[test]
fn explain_names_the_files_a_run_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().canonicalize().unwrap();
    write(
        &d.join("p.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '3', \
           count = '400');\n\
         CREATE TABLE lines WITH (connector = 'file', path = 'out/orders.jsonl');\n\
         CREATE TABLE lake WITH (connector = 'parquet', path = 'lake', partition_by = 'channel');\n\
         INSERT INTO lines SELECT order_id, event_type FROM orders;\n\
         INSERT INTO lake SELECT order_id, channel, total FROM orders;\n",
    );
    write(
        &d.join("p.yaml"),
        "name: files\nsql: p.sql\nparallelism: 2\n\
         checkpoint: { interval: 100ms, dir: ckpt }\n",
    );
    let o = run(&d, &["explain", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let explained = stdout(&o);
    assert!(explained.contains("\nwrites:\n"), "{explained}");

    let lines = writes_of(&explained, "lines");
    let named: Vec<String> = (0..2)
        .map(|p| {
            d.join(format!("out/orders-{p}.jsonl"))
                .display()
                .to_string()
        })
        .collect();
    assert!(
        lines.starts_with(&format!("{}, {} (JSON lines", named[0], named[1])),
        "{lines}"
    );
    let lake = writes_of(&explained, "lake");
    let pattern = lake.split(" (").next().unwrap().to_string();
    assert_eq!(
        pattern,
        format!(
            "{}/channel=<channel>/part-<task 0-1>-<n>.parquet",
            d.join("lake").display()
        ),
        "{explained}"
    );
    let ckpt = d.join("ckpt").display().to_string();
    assert!(
        explained.contains(&format!(
            "checkpoints: {ckpt}/<id>.json (metadata) and {ckpt}/<id>/"
        )),
        "{explained}"
    );
    assert!(
        explained.contains(&format!(
            "dead letters: {}",
            d.join("data/dlq.sqlite").display()
        )),
        "{explained}"
    );

    let o = run(&d, &["run", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let written: Vec<String> = files_under(&d.join("out"))
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(written, named, "the JSON lines files explain named");
    let parquet: Vec<String> = files_under(&d.join("lake"))
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(!parquet.is_empty());
    for f in &parquet {
        assert!(matches(&pattern, f), "{f} is not {pattern}");
    }
    let ckpt_files = files_under(&d.join("ckpt"));
    assert!(
        ckpt_files
            .iter()
            .any(|f| f.extension().is_some_and(|x| x == "json")),
        "{ckpt_files:?}"
    );
}
