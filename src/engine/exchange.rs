//! Routing of batches from one node's task to the tasks of the next node.
//!
//! Hash routing goes through key groups, as in Flink: a row's key is hashed with fixed
//! seeds (the same on every instance and every run), the hash picks one of
//! [`KEY_GROUPS`] key groups, and each partition owns a contiguous range of key groups.
//! Keyed state will be stored per key group, so that a pipeline restarted with another
//! parallelism (or spread over more instances) moves whole key groups.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use tokio::sync::mpsc::Sender;

use crate::types::{
    EngineError, Message, NodeStats, Result, key_groups_of, partition_of_key_group,
};

/// How a node's output is spread over the downstream node's partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    /// Partition `i` sends to partition `i`. Between nodes of different parallelism
    /// this becomes round robin, except for a changelog (an [`OP_COLUMN`]
    /// (super::OP_COLUMN) last), whose order must hold: there partition `i` sends to
    /// partition `i mod n`, so each upstream task's rows stay in order.
    Forward,
    /// Each batch goes whole to the next partition in turn.
    RoundRobin,
    /// Rows are routed by the hash of these columns (by index in the upstream schema).
    Hash(Vec<usize>),
    /// Every batch goes to every partition.
    Broadcast,
}

impl std::fmt::Display for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partitioning::Forward => write!(f, "forward"),
            Partitioning::RoundRobin => write!(f, "round-robin"),
            Partitioning::Hash(cols) => write!(f, "hash{cols:?}"),
            Partitioning::Broadcast => write!(f, "broadcast"),
        }
    }
}

/// One downstream edge as seen by a sending task.
pub(crate) struct Output {
    pub(crate) partitioning: Partitioning,
    pub(crate) senders: Vec<Sender<Message>>,
    /// Fill level of the downstream node's input channels, for the backpressure gauge.
    pub(crate) fill: metrics::Gauge,
    pub(crate) capacity: usize,
    next: usize,
    /// Which of the node's outputs this edge carries: 0 the main output, `i` its side
    /// output `i` (see [`OperatorFactory::side_outputs`](super::OperatorFactory::side_outputs)).
    pub(crate) port: usize,
}

impl Output {
    pub(crate) fn new(
        partitioning: Partitioning,
        senders: Vec<Sender<Message>>,
        fill: metrics::Gauge,
        capacity: usize,
        partition: usize,
    ) -> Self {
        Output {
            partitioning,
            senders,
            fill,
            capacity,
            next: partition,
            port: 0,
        }
    }

    pub(crate) fn on_port(mut self, port: usize) -> Self {
        self.port = port;
        self
    }
}

/// Where a task emits its batches: routes each batch to the downstream partitions and
/// waits while their channels are full (backpressure).
pub struct Collector {
    pub(crate) outputs: Vec<Output>,
    pub(crate) stats: Arc<NodeStats>,
    rows_out: metrics::Counter,
    batches_out: metrics::Counter,
    bad: crate::dlq::BadRecords,
    closed: bool,
    /// Sources with an event-time column: derives watermarks from emitted rows.
    watermarks: Option<super::watermark::WatermarkGen>,
    /// The last watermark sent downstream.
    last_watermark: i64,
    /// Sources with row rules (`CHECK`): applied to every batch before it is sent.
    validator: Option<Arc<dyn super::RowValidator>>,
}

impl Collector {
    pub(crate) fn new(
        outputs: Vec<Output>,
        stats: Arc<NodeStats>,
        rows_out: metrics::Counter,
        batches_out: metrics::Counter,
        bad: crate::dlq::BadRecords,
    ) -> Self {
        Collector {
            outputs,
            stats,
            rows_out,
            batches_out,
            bad,
            closed: false,
            watermarks: None,
            last_watermark: super::Watermark::START,
            validator: None,
        }
    }

    /// Makes this (source) collector drop, and report as bad records, the rows of
    /// every batch that break `validator`'s rules.
    pub fn validate_with(&mut self, validator: Arc<dyn super::RowValidator>) {
        self.validator = Some(validator);
    }

    /// Makes this (source) collector send a watermark after every batch that advances
    /// the newest event time seen in column `column`.
    /// A split silent for `idle_timeout` stops holding the watermark back (see
    /// `WatermarkGen`); sources reading several splits call [`Collector::tick`].
    pub(crate) fn generate_watermarks(
        &mut self,
        column: usize,
        delay: std::time::Duration,
        idle_timeout: Option<std::time::Duration>,
    ) {
        self.watermarks = Some(super::watermark::WatermarkGen::new(
            column,
            delay,
            idle_timeout,
        ));
    }

    /// The newest event time per split, for the source's checkpoint (`None` without
    /// event time).
    pub(crate) fn split_event_times(&self) -> Option<std::collections::BTreeMap<u64, i64>> {
        self.watermarks.as_ref().map(|g| g.event_times())
    }

    /// Event times from a checkpoint (see [`Collector::split_event_times`]).
    pub(crate) fn restore_split_event_times(
        &mut self,
        times: impl IntoIterator<Item = (u64, i64)>,
    ) {
        if let Some(g) = self.watermarks.as_mut() {
            g.restore(times);
        }
    }

    /// Time has passed without rows: a split may have gone idle, letting the
    /// watermark advance. Sources reading several splits call this on a timer.
    pub async fn tick(&mut self) -> Result<()> {
        let now = std::time::Instant::now();
        match self.watermarks.as_mut().and_then(|g| g.advance(now)) {
            Some(wm) => self.emit_watermark(wm).await,
            None => Ok(()),
        }
    }

    /// The source cannot reach what it reads (an outage): its splits' silence is not
    /// idleness (see `WatermarkGen::unreachable`). Sources call this on their timer
    /// instead of [`Collector::tick`] while they are retrying.
    pub fn unreachable(&mut self) {
        if let Some(g) = self.watermarks.as_mut() {
            g.unreachable(std::time::Instant::now());
        }
    }

    /// Sends a watermark to every downstream partition, unless it does not advance
    /// the last one sent.
    pub async fn emit_watermark(&mut self, watermark: i64) -> Result<()> {
        self.flush_dead_letters().await?;
        if watermark <= self.last_watermark {
            return Ok(());
        }
        self.last_watermark = watermark;
        for output in &self.outputs {
            for s in &output.senders {
                s.send(Message::Watermark(watermark))
                    .await
                    .map_err(|_| EngineError::DownstreamGone)?;
            }
        }
        Ok(())
    }

    /// Where this task reports records it cannot process.
    pub fn bad_records(&mut self) -> &mut crate::dlq::BadRecords {
        &mut self.bad
    }

    /// A collector that drops everything; for tests of single operators.
    pub fn discard() -> Self {
        Collector::new(
            vec![],
            Arc::default(),
            metrics::Counter::noop(),
            metrics::Counter::noop(),
            crate::dlq::BadRecords::detached("discard"),
        )
    }

    /// A collector whose main output goes to the returned receiver (one partition,
    /// room for `capacity` messages); for tests of single operators.
    #[cfg(test)]
    pub(crate) fn capture(capacity: usize) -> (Self, tokio::sync::mpsc::Receiver<Message>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let output = Output::new(
            Partitioning::Forward,
            vec![tx],
            metrics::Gauge::noop(),
            capacity,
            0,
        );
        let mut c = Collector::discard();
        c.outputs.push(output);
        (c, rx)
    }

    /// Sends `batch` downstream; empty batches are dropped.
    pub async fn emit(&mut self, batch: RecordBatch) -> Result<()> {
        self.emit_to(0, batch).await
    }

    /// Declares the splits a source task reads (Kafka partitions): its watermark is
    /// the slowest split's (see `WatermarkGen`). Sources that read one ordered input
    /// never call this.
    pub fn register_splits(&mut self, splits: impl IntoIterator<Item = u64>) {
        if let Some(g) = self.watermarks.as_mut() {
            g.register(splits, std::time::Instant::now());
        }
    }

    /// Sends `batch`, whose rows all come from `split`, downstream.
    pub async fn emit_split(&mut self, split: u64, batch: RecordBatch) -> Result<()> {
        self.send(0, split, batch).await
    }

    /// `split` has no more rows (a bounded read reached its end).
    pub async fn end_split(&mut self, split: u64) -> Result<()> {
        let now = std::time::Instant::now();
        match self.watermarks.as_mut().and_then(|g| g.end(split, now)) {
            Some(wm) => self.emit_watermark(wm).await,
            None => Ok(()),
        }
    }

    /// Sends `batch` to the node's output `port`: 0 the main output, `i` its side
    /// output `i` (rows the edges reading other outputs never see). Watermarks and the
    /// end of input reach every output.
    pub async fn emit_to(&mut self, port: usize, batch: RecordBatch) -> Result<()> {
        self.send(port, 0, batch).await
    }

    /// Sends the dead letters reported since the last call to the pipeline's
    /// dead-letter sink ([`DEAD_LETTER_PORT`](super::DEAD_LETTER_PORT)); under the
    /// `fail` policy, fails with the first bad record instead. Called before every
    /// batch, watermark, barrier and end this task sends, so a checkpoint covers the
    /// dead letters of the records before its barrier.
    pub async fn flush_dead_letters(&mut self) -> Result<()> {
        if let Some(failure) = self.bad.failure() {
            return Err(failure.into());
        }
        if !self.bad.has_pending() {
            return Ok(());
        }
        let letters = self.bad.take_letters();
        if letters.is_empty() {
            return Ok(());
        }
        let batch = crate::dlq::record::to_batch(&letters);
        for output in self
            .outputs
            .iter_mut()
            .filter(|o| o.port == super::DEAD_LETTER_PORT)
        {
            route(output, &batch).await?;
        }
        Ok(())
    }

    async fn send(&mut self, port: usize, split: u64, batch: RecordBatch) -> Result<()> {
        let batch = match &self.validator {
            Some(v) if batch.num_rows() > 0 => v.validate(batch, &mut self.bad)?,
            _ => batch,
        };
        self.flush_dead_letters().await?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = batch.num_rows() as u64;
        self.stats.rows_out.fetch_add(rows, Ordering::Relaxed);
        self.stats.batches_out.fetch_add(1, Ordering::Relaxed);
        self.rows_out.increment(rows);
        self.batches_out.increment(1);
        for output in self.outputs.iter_mut().filter(|o| o.port == port) {
            route(output, &batch).await?;
        }
        let advanced = match self.watermarks.as_mut() {
            Some(g) => g.observe(split, &batch, std::time::Instant::now())?,
            None => None,
        };
        if let Some(wm) = advanced {
            self.emit_watermark(wm).await?;
        }
        Ok(())
    }

    /// Sends checkpoint barrier `id` to every downstream partition of every output,
    /// after everything emitted so far.
    pub(crate) async fn emit_barrier(&mut self, id: u64) -> Result<()> {
        self.flush_dead_letters().await?;
        for output in &self.outputs {
            for s in &output.senders {
                s.send(Message::Barrier(id))
                    .await
                    .map_err(|_| EngineError::DownstreamGone)?;
            }
        }
        Ok(())
    }

    /// Sends `End` to every downstream partition; idempotent.
    pub(crate) async fn close(&mut self) {
        if self.closed {
            return;
        }
        if let Err(e) = self.flush_dead_letters().await {
            // A task that ends normally has flushed already; this one is failing.
            tracing::debug!(error = %e, "dead letters not sent at close");
        }
        self.closed = true;
        for output in &self.outputs {
            for s in &output.senders {
                // A receiver that is gone has failed or been cancelled; the runtime
                // reports that failure, so a lost `End` needs no error of its own.
                let _ = s.send(Message::End).await;
            }
        }
    }
}

async fn send(output: &Output, index: usize, batch: RecordBatch) -> Result<()> {
    let sender = &output.senders[index];
    sender
        .send(Message::Batch(batch))
        .await
        .map_err(|_| EngineError::DownstreamGone)?;
    let used = output.capacity.saturating_sub(sender.capacity());
    output.fill.set(used as f64 / output.capacity.max(1) as f64);
    Ok(())
}

async fn route(output: &mut Output, batch: &RecordBatch) -> Result<()> {
    let n = output.senders.len();
    match &output.partitioning {
        _ if n == 1 => send(output, 0, batch.clone()).await,
        Partitioning::Forward => {
            Err(EngineError::Graph("forward edge with more than one receiver".into()).into())
        }
        Partitioning::RoundRobin => {
            let i = output.next % n;
            output.next = output.next.wrapping_add(1);
            send(output, i, batch.clone()).await
        }
        Partitioning::Broadcast => {
            for i in 0..n {
                send(output, i, batch.clone()).await?;
            }
            Ok(())
        }
        Partitioning::Hash(keys) => {
            let groups = key_groups_of(batch, keys)?;
            let mut rows: Vec<Vec<u32>> = vec![Vec::new(); n];
            for (row, kg) in groups.iter().enumerate() {
                let p = partition_of_key_group(*kg, n);
                rows[p].push(row as u32);
            }
            for (p, idx) in rows.into_iter().enumerate() {
                if idx.is_empty() {
                    continue;
                }
                let part = if idx.len() == batch.num_rows() {
                    batch.clone()
                } else {
                    take_record_batch(batch, &UInt32Array::from(idx))
                        .map_err(|e| EngineError::arrow("hash repartitioning", e))?
                };
                send(output, p, part).await?;
            }
            Ok(())
        }
    }
}
