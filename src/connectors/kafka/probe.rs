//! How Kafka source and sink tasks report to the health table ([`crate::health`]):
//! one probe per task, named `node[partition]`, of kind `kafka`.
//!
//! The data path reports what it sees: the source is retrying while metadata fetches
//! or the consumer fail and up once metadata lists its topic or records arrive; the
//! sink is retrying on produce or delivery errors and while no delivery is
//! acknowledged for [`STALLED`], and up on each delivery. What the data path cannot see
//! is left to [`recheck`]: a sink that has sent nothing yet, and a source whose
//! cluster came back while its topic stays quiet, ask the cluster for metadata in the
//! background until it answers.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, Producer};

use super::client::Watch;
use crate::engine::TaskInfo;
use crate::health::{Probe, State};

/// How long the sink waits for a delivery before it reports itself retrying (it keeps
/// waiting: librdkafka retries until `message.timeout.ms`).
pub(super) const STALLED: Duration = Duration::from_secs(5);
/// How often [`recheck`] asks while its probe is not up.
const EVERY: Duration = Duration::from_secs(3);
/// How long one of its metadata requests may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The probe of a Kafka task.
pub(super) fn task_probe(task: &TaskInfo) -> Probe {
    Probe::new(
        &task.pipeline,
        format!("{}[{}]", task.node, task.partition),
        "kafka",
    )
}

/// `Ok` when `md` lists `topic` with partitions (as a source needs it), else why not.
fn topic_listed(md: &Metadata, topic: &str) -> Result<(), String> {
    let listed = md
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if listed {
        Ok(())
    } else {
        Err(format!("topic {topic} not found"))
    }
}

/// Until when [`recheck`] keeps asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// The probe was up once (a sink: afterwards its deliveries tell).
    FirstUp,
    /// The task ends (a source: a quiet topic gives no other sign of recovery).
    TaskEnds,
}

/// The background re-check of one task; stops when dropped (with its task).
pub(super) struct Recheck(Option<tokio::task::AbortHandle>);

impl Drop for Recheck {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// While `probe` is not up, calls `fetch` (a blocking metadata request taking at most
/// the timeout given) every few seconds, off the async threads, and reports its
/// answer: up when it succeeds, retrying with its error otherwise. The first call is
/// made after `first`. Outside a tokio runtime nothing is started.
pub(super) fn recheck(
    probe: Probe,
    first: Duration,
    until: Until,
    fetch: impl Fn(Duration) -> Result<(), String> + Send + Sync + 'static,
) -> Recheck {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return Recheck(None);
    };
    let fetch = Arc::new(fetch);
    let task = rt.spawn(async move {
        tokio::time::sleep(first).await;
        loop {
            if probe.state() == State::Up {
                if until == Until::FirstUp {
                    return;
                }
            } else {
                let fetch = fetch.clone();
                match tokio::task::spawn_blocking(move || fetch(TIMEOUT)).await {
                    Ok(Ok(())) => probe.up(),
                    Ok(Err(e)) => probe.retrying(e),
                    Err(_) => return,
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    });
    Recheck(Some(task.abort_handle()))
}

/// A source's re-check: its own consumer asks for its topic's metadata.
pub(super) fn recheck_source(
    probe: Probe,
    consumer: Arc<BaseConsumer<Watch>>,
    topic: String,
) -> Recheck {
    recheck(probe, EVERY, Until::TaskEnds, move |timeout| {
        consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(metadata_error)
            .and_then(|md| topic_listed(&md, &topic))
    })
}

/// A sink's re-check, until it is up once: its producer asks for the cluster's
/// metadata. All topics, not the sink's: asking for one topic may have the broker
/// create it with its defaults before the sink creates it as configured.
pub(super) fn recheck_sink(probe: Probe, producer: &FutureProducer) -> Recheck {
    let producer = producer.clone();
    recheck(probe, Duration::ZERO, Until::FirstUp, move |timeout| {
        producer
            .client()
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(metadata_error)
    })
}

fn metadata_error(e: KafkaError) -> String {
    format!("fetching metadata: {e}")
}
