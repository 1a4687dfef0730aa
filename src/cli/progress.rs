//! The live progress view of `tributary run`: one line per pipeline on a terminal
//! (rows/s in and out, rows written, bad records), redrawn every second below the log
//! lines through the shared terminal writer ([`term`]) and cleared at the end; a
//! periodic structured log line per pipeline otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::term;
use crate::engine::NodeStats;

struct Line {
    name: String,
    sources: Vec<Arc<NodeStats>>,
    sinks: Vec<Arc<NodeStats>>,
    all: Vec<Arc<NodeStats>>,
    last: (u64, u64),
}

impl Line {
    fn totals(&self) -> (u64, u64, u64) {
        let sum = |v: &[Arc<NodeStats>], f: fn(&NodeStats) -> u64| v.iter().map(|s| f(s)).sum();
        (
            sum(&self.sources, |s| s.rows_out.load(Ordering::Relaxed)),
            sum(&self.sinks, |s| s.rows_in.load(Ordering::Relaxed)),
            sum(&self.all, |s| s.bad_records.load(Ordering::Relaxed)),
        )
    }
}

pub(super) struct Progress {
    lines: Vec<Line>,
    terminal: bool,
}

pub(super) struct ViewTask {
    stop: tokio::sync::oneshot::Sender<()>,
    join: tokio::task::JoinHandle<()>,
}

impl ViewTask {
    pub(super) async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.join.await;
    }
}

impl Progress {
    pub(super) fn new(mode: &str) -> Self {
        let terminal = match mode {
            "on" => true,
            "off" => false,
            _ => std::io::stderr().is_terminal(),
        };
        Progress {
            lines: vec![],
            terminal,
        }
    }

    pub(super) fn add(
        &mut self,
        name: &str,
        stats: &[(String, Arc<NodeStats>)],
        is_source: &[bool],
        is_sink: &[bool],
    ) {
        let pick = |flags: &[bool]| {
            stats
                .iter()
                .zip(flags)
                .filter(|(_, f)| **f)
                .map(|((_, s), _)| s.clone())
                .collect::<Vec<_>>()
        };
        self.lines.push(Line {
            name: name.to_string(),
            sources: pick(is_source),
            sinks: pick(is_sink),
            all: stats.iter().map(|(_, s)| s.clone()).collect(),
            last: (0, 0),
        });
    }

    pub(super) fn spawn(mut self) -> ViewTask {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(async move {
            let every = if self.terminal {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(10)
            };
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let mut at = Instant::now();
            loop {
                let last_round = tokio::select! {
                    _ = tick.tick() => false,
                    _ = &mut rx => true,
                };
                let secs = at.elapsed().as_secs_f64().max(1e-3);
                at = Instant::now();
                if self.terminal && last_round {
                    // Cleared once; the stop summaries logged above it stay.
                    term::clear();
                } else if self.terminal {
                    let lines = self
                        .lines
                        .iter_mut()
                        .map(|l| {
                            let (i, o, bad) = l.totals();
                            let line = format!(
                                "{:<24} in {:>10.0}/s  out {:>10.0}/s  written {:>12}  bad {:>8}",
                                l.name,
                                (i - l.last.0) as f64 / secs,
                                (o - l.last.1) as f64 / secs,
                                o,
                                bad
                            );
                            l.last = (i, o);
                            line
                        })
                        .collect();
                    // `stty` may run: off the async workers.
                    let width = tokio::task::spawn_blocking(term::width).await;
                    term::draw(lines, width.unwrap_or(80));
                } else {
                    for l in &mut self.lines {
                        let (i, o, bad) = l.totals();
                        tracing::info!(
                            pipeline = %l.name,
                            rows_in_per_s = ((i - l.last.0) as f64 / secs).round(),
                            rows_out_per_s = ((o - l.last.1) as f64 / secs).round(),
                            rows_written = o,
                            bad_records = bad,
                            "progress"
                        );
                        l.last = (i, o);
                    }
                }
                if last_round {
                    break;
                }
            }
        });
        ViewTask { stop: tx, join }
    }
}
