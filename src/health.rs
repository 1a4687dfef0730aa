//! Connection state of every component that talks to infrastructure — a source or sink
//! task and its cluster, a schema registry, a lookup table's store — in one
//! process-wide table that readiness (`/readyz`), `/healthz` and the
//! `tributary_component_up` and `tributary_component_retrying_seconds` metrics read.
//!
//! A component holds a [`Probe`] and says [`Probe::up`] when a call to its
//! infrastructure succeeds and [`Probe::retrying`] when one fails with an error that
//! is retried (an outage, not bad data). Each transition is logged once (a warning
//! when an outage starts, an info line with its length when it ends); repeated
//! failures only update the last error. A probe leaves the table when dropped (its
//! task ended), so the table lists what is running now.
//!
//! Invariant: this module imports nothing of ours; every layer may report to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

/// Where a component stands with its infrastructure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Started, nothing succeeded or failed yet.
    Connecting,
    /// The last call succeeded.
    Up,
    /// Calls fail and are being retried since `since`.
    Retrying {
        /// When the first failure of this outage happened.
        since: SystemTime,
        /// The most recent failure.
        last_error: String,
    },
}

impl State {
    /// `connecting`, `up` or `retrying`: how the admin endpoint names it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Up => "up",
            State::Retrying { .. } => "retrying",
        }
    }
}

/// One row of the table, as the admin endpoint reports it.
#[derive(Debug, Clone)]
pub struct Status {
    pub pipeline: String,
    /// The node (table) and task partition, e.g. `orders[0]`; or `registry`.
    pub component: String,
    /// What it talks to: `kafka`, `schema-registry`, `dynamodb`, …
    pub kind: &'static str,
    pub state: State,
    /// How long the current outage has lasted (0 unless retrying).
    pub retrying_for: Duration,
}

#[derive(Debug)]
struct Entry {
    pipeline: String,
    component: String,
    kind: &'static str,
    state: Mutex<(State, Option<Instant>)>,
    /// Whether `state` is `Up`: lets the hot path (a call per record) skip the lock.
    is_up: AtomicBool,
    up: metrics::Gauge,
    /// Seconds of the current outage, set at scrape time ([`refresh_gauges`]).
    retrying_seconds: metrics::Gauge,
}

fn table() -> &'static Mutex<Vec<Weak<Entry>>> {
    static TABLE: OnceLock<Mutex<Vec<Weak<Entry>>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// A component's handle on its row; cheap to clone (clones share the row).
#[derive(Debug, Clone)]
pub struct Probe {
    entry: Arc<Entry>,
}

impl Probe {
    /// Registers `component` of `pipeline`, talking to `kind`, as connecting.
    pub fn new(pipeline: &str, component: impl Into<String>, kind: &'static str) -> Probe {
        let component = component.into();
        let up = crate::metrics::component_up(pipeline, &component, kind);
        up.set(0.0);
        let retrying_seconds =
            crate::metrics::component_retrying_seconds(pipeline, &component, kind);
        retrying_seconds.set(0.0);
        let entry = Arc::new(Entry {
            pipeline: pipeline.to_string(),
            component,
            kind,
            state: Mutex::new((State::Connecting, None)),
            is_up: AtomicBool::new(false),
            up,
            retrying_seconds,
        });
        if let Ok(mut t) = table().lock() {
            t.retain(|w| w.strong_count() > 0);
            t.push(Arc::downgrade(&entry));
        }
        Probe { entry }
    }

    /// A probe in no table (tests, components outside a pipeline).
    pub fn detached(kind: &'static str) -> Probe {
        Probe {
            entry: Arc::new(Entry {
                pipeline: String::new(),
                component: String::new(),
                kind,
                state: Mutex::new((State::Connecting, None)),
                is_up: AtomicBool::new(false),
                up: metrics::Gauge::noop(),
                retrying_seconds: metrics::Gauge::noop(),
            }),
        }
    }

    /// A call succeeded. Cheap when already up (one atomic load), so a component may
    /// call it for every record.
    pub fn up(&self) {
        if self.entry.is_up.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut s) = self.entry.state.lock() else {
            return;
        };
        if let (State::Retrying { .. }, Some(started)) = (&s.0, s.1) {
            tracing::info!(
                pipeline = %self.entry.pipeline,
                component = %self.entry.component,
                kind = self.entry.kind,
                outage_s = started.elapsed().as_secs_f64(),
                "reachable again"
            );
        }
        if s.0 != State::Up {
            *s = (State::Up, None);
            self.entry.is_up.store(true, Ordering::Relaxed);
            self.entry.up.set(1.0);
            self.entry.retrying_seconds.set(0.0);
        }
    }

    /// A call failed with an error that is retried.
    pub fn retrying(&self, error: impl std::fmt::Display) {
        let Ok(mut s) = self.entry.state.lock() else {
            return;
        };
        let last_error = error.to_string();
        self.entry.is_up.store(false, Ordering::Relaxed);
        match &mut s.0 {
            State::Retrying { last_error: e, .. } => *e = last_error,
            _ => {
                tracing::warn!(
                    pipeline = %self.entry.pipeline,
                    component = %self.entry.component,
                    kind = self.entry.kind,
                    error = %last_error,
                    "unreachable; retrying"
                );
                *s = (
                    State::Retrying {
                        since: SystemTime::now(),
                        last_error,
                    },
                    Some(Instant::now()),
                );
                self.entry.up.set(0.0);
            }
        }
    }

    pub fn state(&self) -> State {
        self.entry
            .state
            .lock()
            .map(|s| s.0.clone())
            .unwrap_or(State::Connecting)
    }

    /// How long the current outage has lasted (`None` unless retrying).
    pub fn retrying_for(&self) -> Option<Duration> {
        self.entry
            .state
            .lock()
            .ok()
            .and_then(|s| s.1.map(|t| t.elapsed()))
    }
}

/// Sets every live component's `tributary_component_retrying_seconds` to the length
/// of its current outage (0 when not retrying): called when metrics are scraped, so
/// the gauge is read from live state and cannot drift.
pub fn refresh_gauges() {
    let live: Vec<Arc<Entry>> = match table().lock() {
        Ok(t) => t.iter().filter_map(Weak::upgrade).collect(),
        Err(_) => return,
    };
    for e in live {
        let started = e.state.lock().ok().and_then(|s| s.1);
        e.retrying_seconds
            .set(started.map_or(0.0, |t| t.elapsed().as_secs_f64()));
    }
}

/// Every registered component now, in registration order.
pub fn components() -> Vec<Status> {
    let live: Vec<Arc<Entry>> = match table().lock() {
        Ok(t) => t.iter().filter_map(Weak::upgrade).collect(),
        Err(_) => return Vec::new(),
    };
    live.iter()
        .map(|e| {
            let (state, started) = e
                .state
                .lock()
                .map(|s| s.clone())
                .unwrap_or((State::Connecting, None));
            Status {
                pipeline: e.pipeline.clone(),
                component: e.component.clone(),
                kind: e.kind,
                state,
                retrying_for: started.map(|t| t.elapsed()).unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_listed_while_alive_and_tracks_its_outage() {
        let p = Probe::new("health-test", "orders[0]", "kafka");
        let mine = || {
            components()
                .into_iter()
                .find(|s| s.pipeline == "health-test")
        };
        assert_eq!(mine().unwrap().state, State::Connecting);
        p.retrying("connection refused");
        p.retrying("timed out");
        match mine().unwrap().state {
            State::Retrying { last_error, .. } => assert_eq!(last_error, "timed out"),
            other => panic!("expected retrying, got {other:?}"),
        }
        assert!(p.retrying_for().is_some());
        p.up();
        assert_eq!(mine().unwrap().state, State::Up);
        assert_eq!(p.retrying_for(), None);
        p.up(); // already up: the fast path changes nothing
        assert_eq!(mine().unwrap().state, State::Up);
        p.retrying("refused again");
        assert_eq!(mine().unwrap().state.name(), "retrying", "up is left again");
        p.up();
        assert_eq!(mine().unwrap().state, State::Up);
        drop(p);
        assert!(mine().is_none(), "a dropped probe leaves the table");
    }
}
