//! Event time and watermarks.
//!
//! A watermark `w` is a promise that no more rows with an event time `< w` are expected
//! on that channel (milliseconds since the Unix epoch). Source tasks generate them from
//! the declared event-time column (bounded out-of-orderness: the largest event time
//! seen minus the declared delay) and send them after the batch that advanced them, to
//! every downstream partition. Every other task tracks one watermark per input channel
//! and acts on the minimum across its inputs:
//! - an input that has ended counts as [`Watermark::END`], so at the end of a bounded
//!   input every window and timer fires before the pipeline finishes;
//! - an input that has sent nothing for the idle timeout is left out of the minimum
//!   until it sends again, so one quiet partition does not hold every window open;
//!   when every input is idle, the watermark moves to the furthest any input promised.
//!
//! Invariant: the watermark a task forwards never goes backwards.

use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::kernels::aggregate::max;
use arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};

use super::{EngineError, Result};

/// Watermark values; plain milliseconds since the epoch.
pub struct Watermark;

impl Watermark {
    /// Before any event: nothing is complete.
    pub const START: i64 = i64::MIN;
    /// After the last event of a bounded input: everything is complete.
    pub const END: i64 = i64::MAX;
}

/// How a source derives watermarks from its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTime {
    /// Name of the event-time column (a timestamp) in the source's schema.
    pub column: String,
    /// Bounded out-of-orderness: rows may arrive up to this much older than the
    /// newest row seen so far without being late.
    pub delay: Duration,
}

/// Milliseconds since the epoch of every row of a timestamp column (nulls stay null).
pub fn event_times_ms(array: &dyn Array) -> Result<arrow::array::TimestampMillisecondArray> {
    let target = DataType::Timestamp(TimeUnit::Millisecond, None);
    let plain = match array.data_type() {
        DataType::Timestamp(_, _) => arrow::compute::cast(array, &target),
        other => {
            return Err(EngineError::Invalid(format!(
                "the event-time column must be a timestamp, not {other}"
            ))
            .into());
        }
    }
    .map_err(|e| EngineError::arrow("reading the event-time column", e))?;
    Ok(plain.as_primitive::<TimestampMillisecondType>().clone())
}

/// The watermark generator of one source task.
///
/// A task may read several *splits* (a Kafka task, several topic partitions), each in
/// its own order: the watermark is then the smallest of the splits' newest event
/// times, minus the delay, so a split that is behind does not see its rows made late
/// by another that is ahead. A registered split that has sent nothing yet holds the
/// watermark back; an ended split no longer counts. A source that does not speak of
/// splits is one split.
///
/// Idleness per split (as Flink's per-split watermarks): with an idle timeout, a split
/// that has sent no row for that long stops holding the watermark back until it sends
/// again; its rows may then be late. When every split is idle the watermark stays
/// where it is (the task as a whole is idle; downstream inputs handle that).
///
/// The newest event time of every split is part of the source's checkpoint
/// ([`WatermarkGen::event_times`], [`WatermarkGen::restore`]): after a restore a
/// split that sends nothing more still lets the watermark advance past what it had
/// already sent, instead of holding it back for good.
#[derive(Debug)]
pub(crate) struct WatermarkGen {
    column: usize,
    delay_ms: i64,
    idle_timeout: Option<Duration>,
    /// Per split: the newest event time seen (`None`: nothing yet), and when it last
    /// sent a row (or was registered).
    splits: std::collections::BTreeMap<u64, (Option<i64>, Instant)>,
    /// Newest event times from a restored checkpoint, for splits not registered yet.
    restored: std::collections::BTreeMap<u64, i64>,
    last_sent: i64,
}

impl WatermarkGen {
    pub(crate) fn new(column: usize, delay: Duration, idle_timeout: Option<Duration>) -> Self {
        WatermarkGen {
            column,
            delay_ms: delay.as_millis().min(i64::MAX as u128) as i64,
            idle_timeout,
            splits: Default::default(),
            restored: Default::default(),
            last_sent: Watermark::START,
        }
    }

    /// Declares the splits the task reads, before any of their rows; a split with a
    /// restored event time starts from it.
    pub(crate) fn register(&mut self, splits: impl IntoIterator<Item = u64>, now: Instant) {
        for s in splits {
            let restored = self.restored.get(&s).copied();
            self.splits.entry(s).or_insert((restored, now));
        }
    }

    /// Newest event times from a checkpoint (several task states after rescaling: the
    /// oldest per split wins, so no row is made late by the merge). Splits already
    /// registered take them at once; others when registered or when they first send.
    pub(crate) fn restore(&mut self, event_times: impl IntoIterator<Item = (u64, i64)>) {
        for (split, t) in event_times {
            let e = self.restored.entry(split).or_insert(t);
            *e = (*e).min(t);
        }
        for (split, (seen, _)) in self.splits.iter_mut() {
            if let Some(t) = self.restored.get(split) {
                *seen = Some(seen.map_or(*t, |s| s.max(*t)));
            }
        }
    }

    /// The newest event time of every split that has one: what a checkpoint keeps.
    pub(crate) fn event_times(&self) -> std::collections::BTreeMap<u64, i64> {
        self.splits
            .iter()
            .filter_map(|(s, (seen, _))| seen.map(|t| (*s, t)))
            .collect()
    }

    /// The source cannot read its splits now (its cluster is unreachable): their
    /// silence is not idleness, so none of them goes idle, and each idle clock starts
    /// again from `now`. Otherwise the splits that come back last would find their
    /// rows made late by those that came back first.
    pub(crate) fn unreachable(&mut self, now: Instant) {
        for (_, active) in self.splits.values_mut() {
            *active = now;
        }
    }

    /// A split has no more rows: it stops holding the watermark back.
    pub(crate) fn end(&mut self, split: u64, now: Instant) -> Option<i64> {
        self.splits.remove(&split);
        self.advance(now)
    }

    /// Takes the rows of a batch about to be sent from `split`; returns the watermark
    /// to send after it, if it advanced.
    pub(crate) fn observe(
        &mut self,
        split: u64,
        batch: &RecordBatch,
        now: Instant,
    ) -> Result<Option<i64>> {
        let times = event_times_ms(batch.column(self.column).as_ref())?;
        let restored = self.restored.get(&split).copied();
        let (seen, active) = self.splits.entry(split).or_insert((restored, now));
        *active = now;
        if let Some(m) = max(&times) {
            *seen = Some(seen.map_or(m, |s| s.max(m)));
        }
        Ok(self.advance(now))
    }

    /// Re-evaluates idleness (call on a timer); returns the watermark to send if it
    /// advanced because a split went idle.
    pub(crate) fn advance(&mut self, now: Instant) -> Option<i64> {
        let mut slowest = i64::MAX;
        let mut any_active = false;
        for (seen, active) in self.splits.values() {
            if self
                .idle_timeout
                .is_some_and(|t| now.saturating_duration_since(*active) >= t)
            {
                continue;
            }
            any_active = true;
            slowest = slowest.min((*seen)?);
        }
        if !any_active || slowest == i64::MAX {
            return None;
        }
        let wm = slowest.saturating_sub(self.delay_ms);
        (wm > self.last_sent).then(|| {
            self.last_sent = wm;
            wm
        })
    }
}

/// The watermarks of a task's inputs, and the combined watermark it acts on.
#[derive(Debug)]
pub(crate) struct InputWatermarks {
    inputs: Vec<InputState>,
    idle_timeout: Option<Duration>,
    current: i64,
}

#[derive(Debug, Clone)]
struct InputState {
    watermark: i64,
    ended: bool,
    /// Holds no watermark back (a replay inbox, whose records are late by nature).
    passive: bool,
    last_activity: Instant,
}

impl InputWatermarks {
    pub(crate) fn new(inputs: usize, idle_timeout: Option<Duration>) -> Self {
        InputWatermarks {
            inputs: vec![
                InputState {
                    watermark: Watermark::START,
                    ended: false,
                    passive: false,
                    last_activity: Instant::now(),
                };
                inputs
            ],
            idle_timeout,
            current: Watermark::START,
        }
    }

    /// Input `input` holds no watermark back and never moves it (see
    /// `Graph::add_replay_source`).
    pub(crate) fn set_passive(&mut self, input: usize) {
        self.inputs[input].passive = true;
    }

    pub(crate) fn current(&self) -> i64 {
        self.current
    }

    /// Any message (batch or watermark) arrived on `input`.
    pub(crate) fn activity(&mut self, input: usize, now: Instant) {
        self.inputs[input].last_activity = now;
    }

    pub(crate) fn watermark(&mut self, input: usize, wm: i64, now: Instant) -> Option<i64> {
        let s = &mut self.inputs[input];
        s.watermark = s.watermark.max(wm);
        s.last_activity = now;
        self.advance(now)
    }

    pub(crate) fn ended(&mut self, input: usize, now: Instant) -> Option<i64> {
        let s = &mut self.inputs[input];
        s.ended = true;
        s.watermark = Watermark::END;
        self.advance(now)
    }

    /// Re-evaluates idleness (call on a timer); returns the new watermark if it moved.
    pub(crate) fn advance(&mut self, now: Instant) -> Option<i64> {
        let active: Vec<i64> = self
            .inputs
            .iter()
            .filter(|s| !s.passive)
            .filter(|s| {
                s.ended
                    || self
                        .idle_timeout
                        .is_none_or(|t| now.duration_since(s.last_activity) < t)
            })
            .map(|s| s.watermark)
            .collect();
        // Every input idle: nothing holds the watermark back any more, so it moves to
        // the furthest any input has promised (as Flink's watermark valve does).
        let candidate = match active.into_iter().min() {
            Some(min) => min,
            None => self
                .inputs
                .iter()
                .filter(|s| !s.passive)
                .map(|s| s.watermark)
                .max()?,
        };
        if candidate > self.current {
            self.current = candidate;
            Some(candidate)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMillisecondArray;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(ts: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        )]));
        let a = TimestampMillisecondArray::from(ts.to_vec()).with_timezone("UTC");
        RecordBatch::try_new(schema, vec![Arc::new(a)]).unwrap()
    }

    #[test]
    fn generator_trails_the_newest_event_by_the_delay_and_never_goes_back() {
        let t = Instant::now();
        let mut g = WatermarkGen::new(0, Duration::from_millis(100), None);
        assert_eq!(
            g.observe(0, &batch(&[1000, 1200, 1100]), t).unwrap(),
            Some(1100)
        );
        // An older batch does not move it back, nor does an equal one re-send it.
        assert_eq!(g.observe(0, &batch(&[500]), t).unwrap(), None);
        assert_eq!(g.observe(0, &batch(&[1200]), t).unwrap(), None);
        assert_eq!(g.observe(0, &batch(&[1300]), t).unwrap(), Some(1200));
    }

    /// With splits (Kafka partitions), the slowest split sets the watermark: one that
    /// has sent nothing holds it back, an ended one stops counting.
    #[test]
    fn the_slowest_split_sets_the_watermark() {
        let t = Instant::now();
        let mut g = WatermarkGen::new(0, Duration::from_millis(100), None);
        g.register([0, 1], t);
        assert_eq!(g.observe(0, &batch(&[10_000]), t).unwrap(), None);
        assert_eq!(g.observe(1, &batch(&[500]), t).unwrap(), Some(400));
        assert_eq!(g.observe(1, &batch(&[700]), t).unwrap(), Some(600));
        assert_eq!(g.observe(0, &batch(&[20_000]), t).unwrap(), None);
        assert_eq!(g.end(1, t), Some(19_900));
    }

    /// A split silent for the idle timeout stops holding the watermark back; when it
    /// speaks again it counts again (and the watermark never goes back).
    #[test]
    fn a_silent_split_is_set_aside_until_it_sends_again() {
        let t0 = Instant::now();
        let mut g = WatermarkGen::new(0, Duration::ZERO, Some(Duration::from_secs(5)));
        g.register([0, 1], t0);
        assert_eq!(g.observe(0, &batch(&[1_000]), t0).unwrap(), None);
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(g.observe(0, &batch(&[2_000]), t1).unwrap(), None);
        assert_eq!(g.advance(t1), None, "split 1 is not idle yet");
        let t2 = t0 + Duration::from_secs(5);
        assert_eq!(g.advance(t2), Some(2_000), "split 1 never sent: idle");
        // Split 0 goes on alone; split 1 comes back behind and holds it again.
        assert_eq!(g.observe(0, &batch(&[3_000]), t2).unwrap(), Some(3_000));
        assert_eq!(g.observe(1, &batch(&[2_500]), t2).unwrap(), None);
        assert_eq!(g.observe(0, &batch(&[4_000]), t2).unwrap(), None);
        assert_eq!(g.observe(1, &batch(&[3_500]), t2).unwrap(), Some(3_500));
        // Every split idle: nothing moves (the task is idle as a whole).
        let t3 = t2 + Duration::from_secs(10);
        assert_eq!(g.advance(t3), None);
    }

    /// Restored event times count for registered splits, so a split that sends
    /// nothing after a restore does not hold the watermark back; merged states keep
    /// the oldest time per split.
    /// Silence while the source cannot reach its cluster is not idleness: a split
    /// that has not sent since the outage still holds the watermark back after it.
    #[test]
    fn unreachable_splits_do_not_go_idle() {
        let t = Instant::now();
        let idle = Duration::from_secs(1);
        let mut g = WatermarkGen::new(0, Duration::ZERO, Some(idle));
        g.register([0, 1], t);
        assert_eq!(g.observe(0, &batch(&[1000]), t).unwrap(), None);
        assert_eq!(g.observe(1, &batch(&[900]), t).unwrap(), Some(900));
        // Three idle timeouts of outage, reported every half timeout.
        for step in 1..=6 {
            g.unreachable(t + idle * step / 2);
        }
        let back = t + idle * 3;
        // Split 0 comes back first; split 1 has not sent yet, and still counts.
        assert_eq!(g.observe(0, &batch(&[5000]), back).unwrap(), None);
        assert_eq!(g.advance(back + idle / 2), None);
        assert_eq!(
            g.observe(1, &batch(&[4000]), back + idle / 2).unwrap(),
            Some(4000)
        );
        // Without the outage report, split 1 would have gone idle long before.
        let mut h = WatermarkGen::new(0, Duration::ZERO, Some(idle));
        h.register([0, 1], t);
        h.observe(1, &batch(&[900]), t).unwrap();
        assert_eq!(h.observe(0, &batch(&[5000]), back).unwrap(), Some(5000));
    }

    #[test]
    fn restored_event_times_let_a_quiet_split_release_the_watermark() {
        let t = Instant::now();
        let mut g = WatermarkGen::new(0, Duration::ZERO, None);
        g.restore([(1, 3_600_000), (0, 5_000)]);
        g.restore([(1, 7_200_000)]);
        g.register([0, 1], t);
        assert_eq!(g.event_times().get(&1), Some(&3_600_000));
        assert_eq!(g.observe(0, &batch(&[4_000]), t).unwrap(), Some(5_000));
        assert_eq!(
            g.observe(0, &batch(&[3_700_000]), t).unwrap(),
            Some(3_600_000),
            "split 1's restored time lets split 0's end marker pass"
        );
        let mut unregistered = WatermarkGen::new(0, Duration::ZERO, None);
        unregistered.restore([(0, 9_000)]);
        assert_eq!(
            unregistered.observe(0, &batch(&[1_000]), t).unwrap(),
            Some(9_000)
        );
    }

    #[test]
    fn combined_watermark_is_the_minimum_and_ended_inputs_count_as_end() {
        let t = Instant::now();
        let mut w = InputWatermarks::new(2, None);
        assert_eq!(w.watermark(0, 50, t), None, "input 1 has no watermark yet");
        assert_eq!(w.watermark(1, 30, t), Some(30));
        assert_eq!(w.watermark(1, 80, t), Some(50));
        assert_eq!(w.ended(0, t), Some(80));
        assert_eq!(w.ended(1, t), Some(Watermark::END));
    }

    #[test]
    fn an_idle_input_stops_holding_the_watermark_back_until_it_speaks_again() {
        let t0 = Instant::now();
        let mut w = InputWatermarks::new(2, Some(Duration::from_secs(5)));
        assert_eq!(w.watermark(0, 100, t0), None);
        let later = t0 + Duration::from_secs(6);
        // Input 0 keeps talking, input 1 never did: after the timeout it is idle.
        w.activity(0, later);
        assert_eq!(w.advance(later), Some(100));
        // Input 1 comes back with an older watermark: the combined one holds.
        assert_eq!(w.watermark(1, 40, later), None);
        assert_eq!(w.current(), 100);
        assert_eq!(
            w.watermark(0, 200, later),
            None,
            "input 1 holds it at 40 < 100"
        );
        assert_eq!(w.watermark(1, 150, later), Some(150));
    }

    #[test]
    fn when_every_input_is_idle_the_watermark_moves_to_the_furthest_promise() {
        let t0 = Instant::now();
        let mut w = InputWatermarks::new(3, Some(Duration::from_secs(1)));
        assert_eq!(w.watermark(0, 10, t0), None);
        assert_eq!(w.watermark(1, 30, t0), None, "input 2 has said nothing yet");
        let later = t0 + Duration::from_secs(2);
        assert_eq!(w.advance(later), Some(30));
        // And it never goes back when an input with an older watermark returns.
        assert_eq!(w.watermark(2, 5, later), None);
        assert_eq!(w.current(), 30);
    }
}
