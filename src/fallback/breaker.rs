//! The circuit breaker of one Kafka cluster: whether a sink writes to Kafka or to the
//! fallback store.
//!
//! - **Closed** (Kafka is fine): calls go to Kafka. `failures` consecutive failed
//!   calls (produce or commit errors, timeouts), or failures for longer than
//!   `open_after` without a success, open it.
//! - **Open** (Kafka is down): calls go to the fallback. After `probe_interval` the
//!   next caller gets a probe.
//! - **Half-open**: one probe call goes to Kafka; its success closes the breaker,
//!   its failure opens it again for another `probe_interval`.
//!
//! Each transition is logged once and counted; the state is a gauge
//! (`tributary_kafka_breaker_state{cluster}`: 0 closed, 1 half-open, 2 open). Times
//! are passed in (`*_at` methods), so the behaviour is tested without waiting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::FallbackError;

/// When a breaker opens and how it probes (`[fallback]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failed calls that open the breaker.
    pub failures: u32,
    /// A cluster failing for this long without a success opens it, however few the
    /// calls were.
    pub open_after: Duration,
    /// How long an open breaker waits before letting a probe through.
    pub probe_interval: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            open_after: Duration::from_secs(30),
            probe_interval: Duration::from_secs(5),
        }
    }
}

impl BreakerSettings {
    pub fn check(&self) -> Result<(), FallbackError> {
        if self.failures == 0 {
            return Err(FallbackError::Config(
                "fallback.failures: must be at least 1".into(),
            ));
        }
        if self.probe_interval.is_zero() {
            return Err(FallbackError::Config(
                "fallback.probe_interval: must be more than 0".into(),
            ));
        }
        Ok(())
    }
}

/// A breaker's state, as `tributary fallback status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half-open",
            BreakerState::Open => "open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To Kafka.
    Direct,
    /// To Kafka, as the probe of a half-open breaker: report its outcome.
    Probe,
    /// To the fallback store.
    Fallback,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive: u32,
    /// Since when calls have been failing without a success.
    failing_since: Option<Instant>,
    /// When the breaker last opened (or its probe last failed).
    opened_at: Option<Instant>,
    /// When the breaker last closed after being open (the cluster's return).
    closed_at: Option<Instant>,
    last_error: Option<String>,
}

/// One Kafka cluster's breaker.
#[derive(Debug)]
pub struct Breaker {
    cluster: String,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    state_gauge: metrics::Gauge,
    transitions: metrics::Counter,
}

impl Breaker {
    pub fn new(cluster: &str, settings: BreakerSettings) -> Breaker {
        let state_gauge = crate::metrics::kafka_breaker_state(cluster);
        state_gauge.set(0.0);
        Breaker {
            cluster: cluster.to_string(),
            settings,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive: 0,
                failing_since: None,
                opened_at: None,
                closed_at: None,
                last_error: None,
            }),
            state_gauge,
            transitions: crate::metrics::kafka_breaker_transitions(cluster),
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// The last failure that counted, for status.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    fn enter(&self, inner: &mut Inner, to: BreakerState, now: Instant) {
        if inner.state == to {
            return;
        }
        let from = inner.state;
        inner.state = to;
        match to {
            BreakerState::Open => inner.opened_at = Some(now),
            BreakerState::Closed => inner.closed_at = Some(now),
            BreakerState::HalfOpen => {}
        }
        self.state_gauge.set(to.gauge());
        self.transitions.increment(1);
        match to {
            BreakerState::Open => tracing::warn!(cluster = %self.cluster, from = from.as_str(),
                error = inner.last_error.as_deref().unwrap_or(""),
                "kafka breaker open: output goes to the fallback store"),
            BreakerState::HalfOpen => tracing::info!(cluster = %self.cluster,
                "kafka breaker half-open: probing the cluster"),
            BreakerState::Closed => tracing::info!(cluster = %self.cluster, from = from.as_str(),
                "kafka breaker closed: output goes to kafka again"),
        }
    }

    /// When the breaker last closed after an outage, if it ever did: what was
    /// stored while it was open drains at its rate from then on, whichever task of
    /// the cluster's sinks found it back.
    pub fn closed_at(&self) -> Option<Instant> {
        self.lock().closed_at
    }

    /// Where the next call goes, now.
    pub fn route(&self) -> Route {
        self.route_at(Instant::now())
    }

    pub fn route_at(&self, now: Instant) -> Route {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Route::Direct,
            // The probe is out: everyone else waits for its outcome in the fallback.
            BreakerState::HalfOpen => Route::Fallback,
            BreakerState::Open => {
                let due = inner
                    .opened_at
                    .is_none_or(|at| now.duration_since(at) >= self.settings.probe_interval);
                if due {
                    self.enter(&mut inner, BreakerState::HalfOpen, now);
                    Route::Probe
                } else {
                    Route::Fallback
                }
            }
        }
    }

    /// A call to Kafka succeeded.
    pub fn success(&self) {
        self.success_at(Instant::now())
    }

    pub fn success_at(&self, now: Instant) {
        let mut inner = self.lock();
        inner.consecutive = 0;
        inner.failing_since = None;
        self.enter(&mut inner, BreakerState::Closed, now);
    }

    /// The probe handed out by [`Breaker::route`] ended without telling anything of
    /// the cluster (its caller failed elsewhere, or started over): open again, with
    /// the next call a probe, so the breaker never waits on a probe that is gone.
    pub fn probe_abandoned(&self) {
        let mut inner = self.lock();
        if inner.state == BreakerState::HalfOpen {
            inner.state = BreakerState::Open;
            inner.opened_at = None;
            self.state_gauge.set(BreakerState::Open.gauge());
        }
    }

    /// A call to Kafka failed (an error, a timeout).
    pub fn failure(&self, error: impl std::fmt::Display) {
        self.failure_at(Instant::now(), error)
    }

    pub fn failure_at(&self, now: Instant, error: impl std::fmt::Display) {
        let mut inner = self.lock();
        inner.last_error = Some(error.to_string());
        inner.consecutive = inner.consecutive.saturating_add(1);
        let since = *inner.failing_since.get_or_insert(now);
        match inner.state {
            BreakerState::Closed => {
                if inner.consecutive >= self.settings.failures
                    || now.duration_since(since) >= self.settings.open_after
                {
                    self.enter(&mut inner, BreakerState::Open, now);
                }
            }
            // The probe failed: wait another interval.
            BreakerState::HalfOpen => self.enter(&mut inner, BreakerState::Open, now),
            BreakerState::Open => inner.opened_at = Some(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            open_after: Duration::from_secs(10),
            probe_interval: Duration::from_secs(5),
        }
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_in_between_starts_over() {
        let b = Breaker::new("t1", settings());
        let t = Instant::now();
        b.failure_at(t, "timeout");
        b.failure_at(t, "timeout");
        b.success_at(t);
        b.failure_at(t, "timeout");
        b.failure_at(t, "timeout");
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.route_at(t), Route::Direct);
        b.failure_at(t, "all brokers down");
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.route_at(t), Route::Fallback);
        assert_eq!(b.last_error().as_deref(), Some("all brokers down"));
    }

    #[test]
    fn failing_for_longer_than_open_after_opens_it_even_with_few_calls() {
        let b = Breaker::new("t2", settings());
        let t = Instant::now();
        b.failure_at(t, "timeout");
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure_at(t + Duration::from_secs(11), "timeout");
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn an_open_breaker_lets_one_probe_through_per_interval_and_its_outcome_decides() {
        let b = Breaker::new("t3", settings());
        let t = Instant::now();
        for _ in 0..3 {
            b.failure_at(t, "down");
        }
        assert_eq!(b.route_at(t + Duration::from_secs(4)), Route::Fallback);
        assert_eq!(b.route_at(t + Duration::from_secs(5)), Route::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Only one probe at a time.
        assert_eq!(b.route_at(t + Duration::from_secs(5)), Route::Fallback);
        // The probe fails: another interval from now.
        b.failure_at(t + Duration::from_secs(6), "still down");
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.route_at(t + Duration::from_secs(10)), Route::Fallback);
        assert_eq!(b.route_at(t + Duration::from_secs(11)), Route::Probe);
        b.success_at(t + Duration::from_secs(11));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.route_at(t + Duration::from_secs(11)), Route::Direct);
    }

    #[test]
    fn it_records_when_it_closed_after_an_outage_and_only_then() {
        let b = Breaker::new("t5", settings());
        let t = Instant::now();
        b.success_at(t);
        assert_eq!(b.closed_at(), None, "closed all along");
        for _ in 0..3 {
            b.failure_at(t, "down");
        }
        assert_eq!(b.route_at(t + Duration::from_secs(5)), Route::Probe);
        b.success_at(t + Duration::from_secs(6));
        assert_eq!(b.closed_at(), Some(t + Duration::from_secs(6)));
        b.success_at(t + Duration::from_secs(9));
        assert_eq!(
            b.closed_at(),
            Some(t + Duration::from_secs(6)),
            "a success while closed is no close"
        );
    }

    #[test]
    fn an_abandoned_probe_is_handed_out_again() {
        let b = Breaker::new("t4", settings());
        let t = Instant::now();
        for _ in 0..3 {
            b.failure_at(t, "down");
        }
        assert_eq!(b.route_at(t + Duration::from_secs(5)), Route::Probe);
        b.probe_abandoned();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.route_at(t + Duration::from_secs(5)), Route::Probe);
        // Only a half-open breaker is affected.
        b.success_at(t + Duration::from_secs(5));
        b.probe_abandoned();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn settings_are_checked() {
        assert!(BreakerSettings::default().check().is_ok());
        let e = BreakerSettings {
            failures: 0,
            ..Default::default()
        }
        .check()
        .unwrap_err();
        assert_eq!(e.code(), "FBK003");
    }
}
