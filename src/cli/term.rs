//! The one writer to the terminal's stderr shared by the log lines and the live
//! progress view of `tributary run`, so that log lines stay visible above the view.
//!
//! The view is the last lines on the screen, the cursor on the line below them.
//! Before a log line is written the view is cleared (cursor up over its lines,
//! `\r\x1b[J`), the log line is written where the view was, and the view is drawn
//! again below it. View lines are cut to the terminal width so none wraps (a wrapped
//! line would occupy two rows and leave fragments the next redraw does not clear).
//! With no view on screen a log line is written unchanged: the bytes of the JSON and
//! text logs are exactly those of the formatter.

use std::io::Write;
use std::sync::{Mutex, MutexGuard};

/// Width used when the terminal's cannot be found.
const FALLBACK_WIDTH: usize = 80;

struct State {
    /// The view's lines as last drawn (already cut to `width`); empty when none is on
    /// screen.
    view: Vec<String>,
    width: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    view: Vec::new(),
    width: FALLBACK_WIDTH,
});

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bytes to write to replace a view of `prev_lines` lines (directly above the
/// cursor) with `log` (written as is, to stay on screen) followed by `view`, each of
/// whose lines is cut to fit in `width` columns (at most `width - 1` characters, so
/// that no line reaches the last column and triggers a wrap).
pub(super) fn compose(prev_lines: usize, log: &[u8], view: &[String], width: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(log.len() + 16 + view.len() * width.min(256));
    if prev_lines > 0 {
        // Up to the view's first line, then clear from there to the end of the screen.
        out.extend_from_slice(format!("\x1b[{prev_lines}A\r\x1b[J").as_bytes());
    }
    out.extend_from_slice(log);
    if !view.is_empty() && !log.is_empty() && !log.ends_with(b"\n") {
        out.push(b'\n');
    }
    for line in view {
        out.extend_from_slice(fit(line, width).as_bytes());
        out.push(b'\n');
    }
    out
}

/// `line` cut to at most `width - 1` characters (at least one), on a character
/// boundary.
fn fit(line: &str, width: usize) -> &str {
    let max = width.saturating_sub(1).max(1);
    match line.char_indices().nth(max) {
        Some((at, _)) => &line[..at],
        None => line,
    }
}

/// The terminal's width in columns: `COLUMNS` if set, else `stty size` on the
/// controlling terminal, else 80.
pub(super) fn width() -> usize {
    if let Some(w) = std::env::var("COLUMNS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|w| *w > 0)
    {
        return w;
    }
    let stty = std::fs::File::open("/dev/tty").ok().and_then(|tty| {
        std::process::Command::new("stty")
            .arg("size")
            .stdin(tty)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
    });
    stty.and_then(|o| {
        let text = String::from_utf8(o.stdout).ok()?;
        text.split_whitespace().nth(1)?.parse::<usize>().ok()
    })
    .filter(|w| *w > 0)
    .unwrap_or(FALLBACK_WIDTH)
}

fn write_stderr(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(bytes);
    let _ = err.flush();
}

/// Writes `bytes` (whole log lines) to stderr above the view, if one is on screen.
pub(super) fn log(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let st = state();
    if st.view.is_empty() {
        write_stderr(bytes);
    } else {
        write_stderr(&compose(st.view.len(), bytes, &st.view, st.width));
    }
}

/// Draws the view (replacing the one on screen), its lines cut to `width` columns.
pub(super) fn draw(lines: Vec<String>, width: usize) {
    let mut st = state();
    let fitted: Vec<String> = lines.iter().map(|l| fit(l, width).to_string()).collect();
    write_stderr(&compose(st.view.len(), b"", &fitted, width));
    st.view = fitted;
    st.width = width;
}

/// Clears the view from the screen; later log lines are written unchanged.
pub(super) fn clear() {
    let mut st = state();
    if !st.view.is_empty() {
        write_stderr(&compose(st.view.len(), b"", &[], st.width));
        st.view.clear();
    }
}

/// One log record for `tracing_subscriber`'s `with_writer(LogLine::default)`:
/// collected, then written through [`log`] in one piece when dropped.
#[derive(Default)]
pub(super) struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        log(&self.0);
    }
}

/// `eprintln!` through the shared writer: the line goes above the view.
macro_rules! eprintln_above {
    ($($arg:tt)*) => {
        $crate::cli::term::log(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}
pub(super) use eprintln_above;

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows `bytes` leaves on screen after the escape prefix, split at newlines.
    fn rows(bytes: &[u8]) -> Vec<String> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .split_terminator('\n')
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn log_line_is_written_between_clearing_and_redrawing_the_view() {
        let log = b"2026-01-01T00:00:00Z  WARN window still open: orders\n";
        let view = vec![
            format!(
                "{:<24} in {:>10}/s  out {:>10}/s",
                "order_status", 12345, 678
            ),
            "short".to_string(),
            "é".repeat(200),
        ];
        let width = 40;
        let out = compose(3, log, &view, width);

        let clear = b"\x1b[3A\r\x1b[J";
        assert!(out.starts_with(clear), "clear first: {out:?}");
        let after_clear = &out[clear.len()..];
        assert!(after_clear.starts_with(log), "then the log line: {out:?}");
        let shown = rows(&after_clear[log.len()..]);
        assert_eq!(shown.len(), view.len(), "then the view, one row a line");
        for (row, line) in shown.iter().zip(&view) {
            assert!(
                row.chars().count() < width,
                "{row:?} reaches the last column"
            );
            assert!(line.starts_with(row.as_str()));
            assert!(!row.contains('\x1b'));
        }
        assert_eq!(shown[1], "short");
        assert_eq!(shown[0].chars().count(), width - 1);
        assert_eq!(shown[2].chars().count(), width - 1);
    }

    #[test]
    fn without_a_view_the_log_line_is_unchanged() {
        let json = br#"{"level":"INFO","message":"pipeline finished"}"#.to_vec();
        let line = [json.as_slice(), b"\n"].concat();
        assert_eq!(compose(0, &line, &[], 80), line);
    }

    #[test]
    fn first_frame_moves_nothing_and_clearing_leaves_only_the_clear() {
        let out = compose(0, b"", &["a".into(), "b".into()], 80);
        assert_eq!(out, b"a\nb\n");
        assert_eq!(compose(2, b"", &[], 80), b"\x1b[2A\r\x1b[J");
    }

    #[test]
    fn a_log_line_without_newline_does_not_run_into_the_view() {
        let out = compose(1, b"caused by: x", &["v".into()], 80);
        assert_eq!(out, b"\x1b[1A\r\x1b[Jcaused by: x\nv\n");
    }
}
