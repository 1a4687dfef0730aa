//! `tributary … | head` ends quietly: a reader that closes standard output early is no
//! error, so no panic ("failed printing to stdout: Broken pipe"), no exit code 101,
//! nothing on standard error.

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};

use crate::common::*;

/// Runs the binary in `dir` with `args`, reads at most `lines` lines of its standard
/// output, closes the pipe and waits for it.
fn closed_after(dir: &std::path::Path, args: &[&str], lines: usize) -> (Output, Vec<String>) {
    let mut child = tributary(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let mut read = Vec::new();
    {
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        for _ in 0..lines {
            let mut line = String::new();
            if out.read_line(&mut line).expect("read stdout") == 0 {
                break;
            }
            read.push(line);
        }
        // `out` dropped here: the read end of the pipe is closed, like `head` exiting.
    }
    let output = child.wait_with_output().expect("wait for the binary");
    (output, read)
}

fn assert_quiet_success(what: &str, o: &Output) {
    let err = stderr(o);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{what}: stderr:\n{err}"
    );
    assert_ne!(o.status.code(), Some(101), "{what}: panicked:\n{err}");
    assert!(o.status.success(), "{what}: {:?}:\n{err}", o.status);
}

/// `generate` writes far more than a pipe holds; the reader takes one line and leaves.
#[test]
fn generate_into_head_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (o, lines) = closed_after(dir.path(), &["generate", "--count", "200000"], 1);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with('{'), "{}", lines[0]);
    assert_quiet_success("generate | head -1", &o);
}

/// `explain` prints with `println!`: the pipe is closed before it writes anything, so
/// its first line already meets a closed pipe.
#[test]
fn explain_into_a_closed_pipe_exits_quietly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (o, _) = closed_after(root, &["explain", "order_status"], 0);
    assert_quiet_success("explain | (closed)", &o);
}

#[test]
fn help_into_head_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (o, lines) = closed_after(dir.path(), &["--help"], 1);
    assert_eq!(lines.len(), 1);
    assert_quiet_success("--help | head -1", &o);
}
