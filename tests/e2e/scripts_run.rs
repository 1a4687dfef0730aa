//! `scripts/run` as a new user runs it (issue 20): the reference pipelines of the
//! clone's `pipelines/` and `sql/`, on the embedded default, with nothing configured.
//! Run in a directory of its own (`TRIBUTARY_RUN_DIR`, a copy of the layout; the build
//! is the clone's). Every reference output must get rows; SIGTERM must stop it cleanly
//! (exit 0, every pipeline finished); a second run resumes from the checkpoints and is
//! killed with `kill -9`; a third resumes again. The order-status files must then hold
//! the first run's rows unchanged at their start (appended, not rewritten), and no
//! event twice beyond the generator's own duplicates (`duplicate_fraction = 0.001`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const PIPELINES: [&str; 9] = [
    "kitchen_slow_tickets",
    "offer_conversion",
    "offer_engagement",
    "offer_targeting",
    "order_prep_times",
    "order_status",
    "sales_items",
    "sales_per_minute",
    "sales_top_items",
];

/// Whether a Parquet output directory holds a published file (in any partition).
fn has_parquet(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|r| {
        r.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            !name.starts_with('.')
                && (name.ends_with(".parquet")
                    || e.file_type().is_ok_and(|t| t.is_dir()) && has_parquet(&e.path()))
        })
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A run, killed if the test fails while it lives.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// `scripts/run` in `dir`, its stderr in `dir/run-N.log`.
fn start(dir: &Path, n: usize) -> (Running, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The target directory this test was built in: the script's build is then a no-op.
    let target = Path::new(bin()).parent().unwrap().parent().unwrap();
    let log = dir.join(format!("run-{n}.log"));
    let mut cmd = Command::new("bash");
    // A user's shell, not `cargo test`'s: the variables Cargo sets for tests (package
    // metadata, the library path) would change build scripts' inputs and rebuild.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let cargos = k.starts_with("CARGO") && k != "CARGO_HOME";
        if cargos || k == "LD_LIBRARY_PATH" || k.starts_with("RUST_TEST") {
            cmd.env_remove(&k);
        }
    }
    let child = cmd
        .arg(repo.join("scripts/run"))
        .args(["--set", "admin.listen=127.0.0.1:0"])
        .env("TRIBUTARY_RUN_DIR", dir)
        .env("CARGO_TARGET_DIR", target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("bash runs");
    (Running(child), log)
}

/// The order-status files' contents (one per task).
fn order_status(dir: &Path) -> Vec<String> {
    (0..2)
        .map(|p| {
            std::fs::read_to_string(dir.join(format!("data/order_status-{p}.jsonl")))
                .unwrap_or_default()
        })
        .collect()
}

fn rows(files: &[String]) -> usize {
    files.iter().map(|f| f.lines().count()).sum()
}

fn wait(
    what: &str,
    child: &mut Child,
    log: &Path,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "scripts/run exited ({status}) while waiting for {what}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() >= deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("\"progress\""))
                .collect();
            panic!(
                "timed out waiting for {what}:\n{}",
                tail[tail.len().saturating_sub(40)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm_and_wait(child: &mut Child, log: &Path) -> String {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within 90 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM stops cleanly:\n{text}");
    text
}

#[test]
fn scripts_run_shows_outputs_stops_on_sigterm_and_resumes_appending_exactly_once() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    for sub in ["pipelines", "sql", "schemas"] {
        copy_dir(&repo.join(sub), &d.join(sub));
    }

    // First run: every reference pipeline's output gets rows (the generators' warmup
    // puts orders at every stage from the start), then SIGTERM.
    let (mut child, log) = start(d, 1);
    let started = Instant::now();
    let has_rows = |file: &str| {
        std::fs::read_to_string(d.join("data").join(file)).is_ok_and(|t| t.lines().count() > 0)
    };
    wait(
        "every output",
        &mut child,
        &log,
        Duration::from_secs(600),
        || {
            rows(&order_status(d)) > 0
                && (has_rows("order_sla_alerts-0.jsonl") || has_rows("order_sla_alerts-1.jsonl"))
                && has_rows("offer_triggers.jsonl")
                && has_rows("offer_events.jsonl")
                && has_rows("slow_tickets.jsonl")
                && [
                    "sales_items",
                    "sales_per_minute",
                    "sales_top_items",
                    "order_prep_times",
                    "offer_triggers",
                    "offer_conversions",
                ]
                .iter()
                .all(|o| has_parquet(&d.join("data").join(o)))
        },
    );
    println!(
        "scripts_run: every output has rows {:.1} s after the start (build check included)",
        started.elapsed().as_secs_f64()
    );
    let text = sigterm_and_wait(&mut child, &log);
    for p in PIPELINES {
        assert!(
            text.lines().any(|l| l.contains("\"pipeline finished\"")
                && l.contains(&format!("\"pipeline\":\"{p}\""))),
            "{p} finished on SIGTERM:\n{text}"
        );
    }
    let first = order_status(d);

    // Second run: resumes from the checkpoints, writes more, is killed with kill -9.
    let (mut child, log) = start(d, 2);
    wait(
        "more order statuses",
        &mut child,
        &log,
        Duration::from_secs(120),
        || rows(&order_status(d)) > rows(&first) + 100,
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("resuming from checkpoint"), "{text}");
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = rows(&order_status(d));

    // Third run: resumes again, then SIGTERM.
    let (mut child, log) = start(d, 3);
    wait(
        "more order statuses after the kill",
        &mut child,
        &log,
        Duration::from_secs(120),
        || rows(&order_status(d)) > killed + 100,
    );
    sigterm_and_wait(&mut child, &log);

    let last = order_status(d);
    for (before, after) in first.iter().zip(&last) {
        assert!(
            after.starts_with(before.as_str()),
            "the first run's rows are kept, in place"
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in last.iter().flat_map(|f| f.lines()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *seen
            .entry(v["event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let total = rows(&last);
    let repeated: usize = seen.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    println!(
        "scripts_run: order statuses {} after run 1, {killed} at the kill, {total} at the end; \
         {repeated} repeated event ids",
        rows(&first)
    );
    // The generator repeats 0.1% of its events; a restart that wrote rows twice would
    // repeat seconds of output (hundreds of rows).
    assert!(
        repeated * 200 <= total,
        "{repeated} of {total} rows repeat an event id"
    );
}
