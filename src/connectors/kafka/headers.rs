//! The headers of records refused while decoding, read again from the topic.
//!
//! Owns [`HeaderReader`]. The polling thread does not copy the headers of the records
//! it passes on: librdkafka parses a record's header block only when asked, and
//! asking for every record cost 12–15% of the Kafka source's throughput
//! (docs/benchmarks.md), for headers that only a dead letter needs. A decoding worker
//! holds the dead letters of a chunk ([`crate::dlq::BadRecords::hold_letters`]); once
//! the chunk is decoded, the reader fetches the partition again from the first refused
//! offset to the last and copies each refused record's headers into its letter, which
//! is then released. Records refused on the polling thread (no value, a metadata
//! column that cannot hold an attribute) take their headers there, from the record at
//! hand.
//!
//! Invariants:
//! - Only letters kept for the dead-letter queue are completed; a source without one
//!   never reads a record twice.
//! - A record is identified by partition and offset, which Kafka never reuses; what
//!   the reader finds at an offset is the record that was refused.
//! - The reader waits for the cluster at most [`PATIENCE`] per chunk. A record it
//!   cannot read again (the cluster unreachable that long, or the record deleted by
//!   retention in between) keeps its letter, with every other attribute, and no
//!   headers; a warning names it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::decode::headers_of;
use crate::dlq::record::DeadLetter;

/// How long reading a chunk's refused records again may wait for the cluster.
pub(super) const PATIENCE: Duration = Duration::from_secs(30);

/// A record's headers as (name, value) pairs.
type Headers = Vec<(String, Vec<u8>)>;

/// Reads records of one topic again by offset, on a consumer of its own made at the
/// first need (a task that refuses nothing never connects it).
pub(super) struct HeaderReader {
    config: ClientConfig,
    topic: String,
    consumer: Option<BaseConsumer>,
}

impl HeaderReader {
    /// A reader of `topic` with the source's client settings `config` (its cluster,
    /// credentials and isolation level).
    pub(super) fn new(config: ClientConfig, topic: &str) -> Self {
        let mut config = config;
        // It assigns partitions itself and commits nothing; it stops at a partition's
        // end rather than wait for records that will not come.
        config
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        HeaderReader {
            config,
            topic: topic.to_string(),
            consumer: None,
        }
    }

    /// Fills in the headers of `letters`, records of partition `p` (letters without an
    /// offset are left as they are). Blocks on the cluster, at most [`PATIENCE`].
    pub(super) fn fill(&mut self, p: i32, letters: &mut [DeadLetter]) {
        let wanted: BTreeSet<i64> = letters.iter().filter_map(|l| l.source.offset).collect();
        if wanted.is_empty() {
            return;
        }
        let (found, problem) = self.read(p, &wanted);
        for l in letters.iter_mut() {
            if let Some(h) = l.source.offset.and_then(|o| found.get(&o)) {
                l.source.headers = h.clone();
            }
        }
        let missing: Vec<i64> = wanted
            .iter()
            .filter(|o| !found.contains_key(o))
            .copied()
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                topic = %self.topic,
                partition = p,
                offsets = ?missing,
                problem = problem.as_deref().unwrap_or("not found again"),
                "dead letters kept without their records' headers"
            );
        }
    }

    /// The headers of the records of partition `p` at the offsets `wanted` (absent:
    /// not read again), and the last problem met, if any.
    fn read(&mut self, p: i32, wanted: &BTreeSet<i64>) -> (BTreeMap<i64, Headers>, Option<String>) {
        let mut found = BTreeMap::new();
        let (Some(&first), Some(&last)) = (wanted.first(), wanted.last()) else {
            return (found, None);
        };
        let mut tpl = TopicPartitionList::new();
        if let Err(e) = tpl.add_partition_offset(&self.topic, p, Offset::Offset(first)) {
            return (found, Some(e.to_string()));
        }
        let consumer = match self.consumer() {
            Ok(c) => c,
            Err(e) => return (found, Some(e)),
        };
        if let Err(e) = consumer.assign(&tpl) {
            return (found, Some(e.to_string()));
        }
        let deadline = Instant::now() + PATIENCE;
        let mut problem = None;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(m)) => {
                    if m.partition() != p {
                        continue;
                    }
                    if wanted.contains(&m.offset()) {
                        found.insert(m.offset(), headers_of(&m));
                    }
                    if m.offset() >= last {
                        break;
                    }
                }
                // The end of the partition: what was wanted and not found is gone.
                Some(Err(KafkaError::PartitionEOF(q))) if q == p => break,
                Some(Err(e)) => problem = Some(e.to_string()),
            }
        }
        if found.len() < wanted.len() && Instant::now() >= deadline {
            problem = Some(format!(
                "the cluster did not answer within {}s{}",
                PATIENCE.as_secs(),
                problem.map_or(String::new(), |e| format!(" ({e})"))
            ));
        }
        let _ = consumer.unassign();
        (found, problem)
    }

    fn consumer(&mut self) -> Result<&BaseConsumer, String> {
        if self.consumer.is_none() {
            let c: BaseConsumer = self.config.create().map_err(|e| e.to_string())?;
            self.consumer = Some(c);
        }
        Ok(self.consumer.as_ref().expect("made above"))
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::*;
    use crate::dlq::record::{DeadLetter, sample};

    /// A letter of a record of partition 0 at `offset`.
    fn letter(offset: Option<i64>) -> DeadLetter {
        let mut l = sample(1);
        l.source.partition = Some(0);
        l.source.offset = offset;
        l.source.headers.clear();
        l
    }

    /// Against the test broker (`TRIBUTARY_TEST_KAFKA`; fails without one): letters
    /// get their own record's headers; a letter whose record is not there keeps no
    /// headers (the partition's end stops the reading); one without an offset is left
    /// alone.
    #[test]
    fn letters_get_the_headers_of_the_records_at_their_offsets() {
        let servers = crate::connectors::kafka::test_bootstrap();
        let topic = format!("headers.{}.{:x}", std::process::id(), rand::random::<u64>());
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        for i in 0..3u8 {
            let headers = OwnedHeaders::new().insert(Header {
                key: "n",
                value: Some(&[i, 0xff][..]),
            });
            let record = BaseRecord::<(), _>::to(&topic)
                .partition(0)
                .payload("{")
                .headers(headers);
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();

        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &servers)
            .set("group.id", format!("{topic}-reader"));
        let mut reader = HeaderReader::new(config, &topic);
        let mut letters: Vec<DeadLetter> = [Some(2), None, Some(0), Some(99)]
            .into_iter()
            .map(letter)
            .collect();
        reader.fill(0, &mut letters);
        let headers: Vec<_> = letters.iter().map(|l| l.source.headers.clone()).collect();
        let n = |i: u8| vec![("n".to_string(), vec![i, 0xff])];
        assert_eq!(headers, [n(2), vec![], n(0), vec![]]);

        // The reader is used again for the next chunk, from an earlier offset.
        let mut again = vec![letter(Some(1))];
        reader.fill(0, &mut again);
        assert_eq!(again[0].source.headers, n(1));
    }
}
