//! Polling a source task's consumer on a thread of its own.
//!
//! Owns the thread that polls the task's `BaseConsumer` and copies its records into
//! chunks per partition ([`RawRecords`]), and the channel that hands those chunks to
//! the source task. rdkafka's async `StreamConsumer` read 0.77× what a `BaseConsumer`
//! loop reads on the same machine (docs/benchmarks.md); a thread that does nothing but
//! poll and copy keeps the source close to the loop, and leaves the async task only
//! checkpoints, emission and timers.
//!
//! Invariants:
//! - A partition's records reach the source task in offset order, in chunks of at
//!   most the batch size, each with the offset to resume that partition from after it.
//!   The source's checkpoint position is made of the chunks it has received (and
//!   emitted before the barrier): records still in this thread are after it, and are
//!   read again after a restore.
//! - A chunk is sent when full, when the source asks for a flush (every flush interval)
//!   and whenever the consumer has nothing more at the moment: a record waits at most
//!   a flush interval here.
//! - A record without a value, or with an attribute its column cannot hold, is reported
//!   here as a bad record; its offset still moves the position on.
//! - Back-pressure: the channel is bounded. A full channel blocks this thread, which
//!   stops polling; librdkafka stops fetching once its own queue is full.
//! - The thread also serves the consumer's events (errors, commit results). It ends
//!   when the source drops its side (noticed within a poll timeout), when a bounded
//!   read has ended every partition, or when the cluster refuses the credentials
//!   ([`Polled::Refused`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio::sync::mpsc;

use super::client::Watch;
use super::decode::RawRecords;
use super::metadata::MetadataColumns;
use crate::dlq::BadRecords;
use crate::health::Probe;

/// How long one poll waits for a record before the thread looks at its flags.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// What the polling thread hands the source task.
pub(super) enum Polled {
    /// Records of `partition` (possibly none, when all were refused), after which the
    /// partition resumes from offset `next`.
    Records {
        partition: i32,
        raw: RawRecords,
        next: i64,
    },
    /// A bounded read reached this partition's end; its records were all sent before.
    End(i32),
    /// The cluster refused the consumer's credentials: retrying does not mend that.
    Refused(String),
}

/// What the thread reads, and where it reports.
pub(super) struct PollSettings {
    pub(super) assigned: BTreeSet<i32>,
    /// Bounded: each partition's end offset; `None`: unbounded.
    pub(super) ends: Option<HashMap<i32, i64>>,
    pub(super) meta: MetadataColumns,
    pub(super) bad: BadRecords,
    pub(super) probe: Probe,
    pub(super) batch_size: usize,
    /// For logs.
    pub(super) task: String,
}

/// The source task's side of the polling thread.
pub(super) struct Poller {
    chunks: mpsc::Receiver<Polled>,
    flush: Arc<AtomicBool>,
    reading: Arc<AtomicBool>,
    recycle: std::sync::mpsc::Sender<RawRecords>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    /// Starts polling `consumer` (already assigned) on a new thread; `in_flight` chunks
    /// may wait in the channel.
    pub(super) fn start(
        consumer: Arc<BaseConsumer<Watch>>,
        mut settings: PollSettings,
        in_flight: usize,
    ) -> std::io::Result<Self> {
        let (tx, chunks) = mpsc::channel(in_flight.max(1));
        let (recycle, spare) = std::sync::mpsc::channel();
        let flush = Arc::new(AtomicBool::new(false));
        let reading = Arc::new(AtomicBool::new(false));
        let thread = PollThread {
            consumer,
            tx,
            spare,
            flush: flush.clone(),
            reading: reading.clone(),
            bounded: settings.ends.is_some(),
            pending: Pending::of(&settings.assigned, settings.ends.take()),
            settings,
        };
        let handle = std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || thread.run())?;
        Ok(Poller {
            chunks,
            flush,
            reading,
            recycle,
            thread: Some(handle),
        })
    }

    /// The next thing polled; `None` once the thread has ended. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<Polled> {
        self.chunks.recv().await
    }

    /// Asks the thread to send every partition's records read so far.
    pub(super) fn flush(&self) {
        self.flush.store(true, Ordering::Relaxed);
    }

    /// Whether the cluster has answered a fetch yet (records or a partition's end).
    pub(super) fn reading(&self) -> bool {
        self.reading.load(Ordering::Relaxed)
    }

    /// Where emptied chunks go back to the thread.
    pub(super) fn recycle(&self) -> std::sync::mpsc::Sender<RawRecords> {
        self.recycle.clone()
    }

    /// Stops the thread and waits for it (at most a poll timeout); `false` when it
    /// panicked.
    pub(super) fn stop(mut self) -> bool {
        self.chunks.close();
        let Some(handle) = self.thread.take() else {
            return true;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| handle.join().is_ok()),
            Err(_) => handle.join().is_ok(),
        }
    }
}

/// Records of one partition read and not sent yet.
struct Pending {
    raw: RawRecords,
    /// The offset after the last record taken (`None`: nothing taken since the last
    /// send).
    next: Option<i64>,
    /// A bounded read's end offset of the partition.
    end: Option<i64>,
}

impl Pending {
    /// An entry for each partition to read: every one `assigned`, or, for a bounded
    /// read, each of `ends` (those assigned and not at their end at the start). A
    /// record of a partition without an entry is skipped (one lookup per record), and
    /// a bounded read is done once no entry is left.
    fn of(assigned: &BTreeSet<i32>, ends: Option<HashMap<i32, i64>>) -> BTreeMap<i32, Pending> {
        let entry = |end| Pending {
            raw: RawRecords::default(),
            next: None,
            end,
        };
        match ends {
            None => assigned.iter().map(|p| (*p, entry(None))).collect(),
            Some(ends) => ends
                .into_iter()
                .filter(|(p, _)| assigned.contains(p))
                .map(|(p, end)| (p, entry(Some(end))))
                .collect(),
        }
    }
}

struct PollThread {
    consumer: Arc<BaseConsumer<Watch>>,
    tx: mpsc::Sender<Polled>,
    spare: std::sync::mpsc::Receiver<RawRecords>,
    flush: Arc<AtomicBool>,
    reading: Arc<AtomicBool>,
    /// A bounded read (each entry of `pending` has its end).
    bounded: bool,
    pending: BTreeMap<i32, Pending>,
    /// Its `ends` were moved into `pending`.
    settings: PollSettings,
}

/// The source task is gone: the thread ends.
struct Gone;

impl PollThread {
    fn run(mut self) {
        let _ = self.poll_all();
    }

    fn poll_all(&mut self) -> Result<(), Gone> {
        let consumer = self.consumer.clone();
        let mut logged: Option<Instant> = None;
        loop {
            if self.tx.is_closed() {
                return Err(Gone);
            }
            if self.bounded && self.pending.is_empty() {
                return Ok(());
            }
            // Read before swapped: a swap per record is a locked instruction.
            if self.flush.load(Ordering::Relaxed) && self.flush.swap(false, Ordering::Relaxed) {
                self.send_all()?;
            }
            // Without waiting first: a poll that may wait reads the clock once more,
            // which shows at millions of records a second.
            let polled = match consumer.poll(Duration::ZERO) {
                None => consumer.poll(POLL_TIMEOUT),
                some => some,
            };
            match polled {
                // Nothing more for now: what was read goes out.
                None => self.send_all()?,
                Some(Ok(m)) => {
                    self.answered();
                    let p = m.partition();
                    // Not assigned, or a bounded read's partition already at its end
                    // (one read to its end takes nothing newer).
                    let Some(pending) = self.pending.get_mut(&p) else {
                        continue;
                    };
                    let next = m.offset() + 1;
                    let s = &mut self.settings;
                    pending.raw.take(&m, &s.meta, &mut s.bad);
                    pending.next = Some(next);
                    let full = pending.raw.len() >= s.batch_size;
                    let ended = pending.end.is_some_and(|end| next >= end);
                    if full || ended {
                        self.send(p)?;
                    }
                    if ended {
                        self.end(p)?;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // Read up to the partition's end as it is now (past markers and
                    // aborted records), at or beyond its end at start: done.
                    self.answered();
                    if self.pending.get(&p).is_some_and(|x| x.end.is_some()) {
                        self.send(p)?;
                        self.end(p)?;
                    }
                }
                Some(Err(e)) => {
                    if let Some(why) = consumer.context().refused() {
                        return self.put(Polled::Refused(why));
                    }
                    self.settings.probe.retrying(&e);
                    // Transient (broker down, rebalance in the cluster): librdkafka
                    // retries; say so at most every 10 s.
                    if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(task = %self.settings.task, error = %e,
                            "kafka consumer error; retrying");
                        logged = Some(Instant::now());
                    }
                }
            }
        }
    }

    fn answered(&self) {
        self.settings.probe.up();
        if !self.reading.load(Ordering::Relaxed) {
            self.reading.store(true, Ordering::Relaxed);
        }
    }

    /// Sends partition `p`'s records taken since the last send.
    fn send(&mut self, p: i32) -> Result<(), Gone> {
        let Some(pending) = self.pending.get_mut(&p) else {
            return Ok(());
        };
        let Some(next) = pending.next.take() else {
            return Ok(());
        };
        let raw = std::mem::replace(&mut pending.raw, self.spare.try_recv().unwrap_or_default());
        self.put(Polled::Records {
            partition: p,
            raw,
            next,
        })
    }

    fn send_all(&mut self) -> Result<(), Gone> {
        let ready: Vec<i32> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.next.is_some())
            .map(|(p, _)| *p)
            .collect();
        for p in ready {
            self.send(p)?;
        }
        Ok(())
    }

    /// A bounded read's partition `p` is read: it takes nothing newer.
    fn end(&mut self, p: i32) -> Result<(), Gone> {
        self.pending.remove(&p);
        self.put(Polled::End(p))
    }

    fn put(&self, polled: Polled) -> Result<(), Gone> {
        self.tx.blocking_send(polled).map_err(|_| Gone)
    }
}
