//! Kafka source and sink throughput, each against what the hardware and the broker
//! allow, in one run over the same topics:
//!
//! - sink: generator → Tributary's Kafka sink (idempotent, acks=all) writing N Nexmark
//!   bids to a 2-partition topic (Avro in the Confluent wire format, then JSON); and
//!   the same exactly-once (checkpoints every second, one Kafka transaction each);
//! - source: a plain `rdkafka` consumer loop that only counts bytes (the physical
//!   limit), against a Tributary pipeline reading the same topic into Arrow (Kafka
//!   source → blackhole), both with one consumer, each timed from the creation of
//!   its client (connecting and finding the partitions' ends included in both); and
//!   the same loop copying each value out, which any consumer that reads its values
//!   pays (the count never touches a value's bytes);
//! - decoding alone: the same Avro records decoded into Arrow by `arrow-avro` and by
//!   `apache-avro` (a `Value` per record, then Arrow builders) — ADR 0008.
//!
//! Needs a broker: `scripts/kafka start` then
//! `TRIBUTARY_BENCH_KAFKA=127.0.0.1:19092 cargo bench --bench kafka`
//! (`TRIBUTARY_BENCH_EVENTS`, default 10,000,000; `TRIBUTARY_BENCH_FORMATS`, default
//! `avro,json`; `TRIBUTARY_BENCH_ROUNDS` of reads, default 3, whose medians are shown).
//! The registry is served in-process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayBuilder, ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tributary::connectors::blackhole::BlackholeSink;
use tributary::engine::{BatchSettings, RuntimeSettings};
use tributary::pipeline::PipelineBuilder;

const PARTITIONS: i32 = 2;
/// Records kept from the Avro topic for the decoding comparison.
const DECODE_SAMPLE: usize = 1_000_000;

fn settings(checkpoints: Option<tributary::checkpoint::CheckpointSettings>) -> RuntimeSettings {
    RuntimeSettings {
        checkpoints,
        channel_capacity: 8,
        batch: BatchSettings {
            size: 8192,
            flush_interval: Duration::from_millis(100),
        },
        ..RuntimeSettings::default()
    }
}

fn format_options(format: &str, registry: &str) -> String {
    match format {
        "avro" => format!(", format = 'avro', schema_registry_url = '{registry}'"),
        _ => String::new(),
    }
}

/// Writes the bids of `events` Nexmark events to `topic` through Tributary's sink,
/// in transactions committed by checkpoints every `transactions` if given; (records
/// per second, records written).
async fn load(
    servers: &str,
    topic: &str,
    format: &str,
    registry: &str,
    events: u64,
    transactions: Option<Duration>,
) -> (f64, u64) {
    let store = tempfile::tempdir().unwrap();
    let checkpoints = transactions.map(|every| tributary::checkpoint::CheckpointSettings {
        interval: every,
        store: Arc::new(tributary::checkpoint::LocalCheckpointStore::new(
            store.path(),
        )),
        retain: 3,
        exactly_once: true,
        restore: None,
    });
    let mut p = PipelineBuilder::new("load").runtime_settings(settings(checkpoints));
    let src = p
        .source_sql(&format!(
            "CREATE TABLE bids WITH (connector = 'generator', world = 'nexmark', stream = 'bids', \
             count = '{events}', rate = '0')"
        ))
        .unwrap();
    p.sink_sql(
        src,
        &format!(
            "CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
             topic = '{topic}', partitions = '{PARTITIONS}', key_field = 'auction'{})",
            format_options(format, registry)
        ),
    )
    .unwrap();
    let t = Instant::now();
    let report = p.run_to_completion().await.unwrap();
    let written = report
        .rows_in
        .iter()
        .filter(|(n, _)| n == "out")
        .map(|(_, r)| *r)
        .sum::<u64>();
    (written as f64 / t.elapsed().as_secs_f64(), written)
}

/// A plain consumer reading `partitions` to their end, counting bytes: records per
/// second, bytes read, and the first `keep` payloads. With `copy`, each value is also
/// copied out, into a buffer cleared every 8,192 records (as the source copies values
/// into its chunks): what any consumer that reads its values pays on top of the
/// count, which never touches a value's bytes.
fn plain_loop(
    servers: &str,
    topic: &str,
    keep: usize,
    partitions: &[i32],
    copy: bool,
) -> (f64, u64, u64, Vec<Vec<u8>>) {
    // Timed from the client's creation, as the pipeline's read is: both pay for
    // connecting and for finding where each partition ends.
    let t = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", format!("bench-plain-{topic}-{partitions:?}"))
        .set("enable.auto.commit", "false")
        // As the source sets it: librdkafka's 1 s default starves a slow consumer.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    let mut ends = std::collections::HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .unwrap();
        ends.insert(p, high);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut kept = Vec::new();
    let mut copied: Vec<u8> = Vec::new();
    while !ends.is_empty() {
        let Some(m) = consumer.poll(Duration::from_secs(1)) else {
            continue;
        };
        let m = m.unwrap();
        let payload = m.payload().unwrap_or_default();
        records += 1;
        bytes += payload.len() as u64;
        if copy {
            if records % 8192 == 0 {
                copied.clear();
            }
            copied.extend_from_slice(payload);
        }
        if kept.len() < keep {
            kept.push(payload.to_vec());
        }
        if ends
            .get(&m.partition())
            .is_some_and(|e| m.offset() + 1 >= *e)
        {
            ends.remove(&m.partition());
        }
    }
    (
        records as f64 / t.elapsed().as_secs_f64(),
        records,
        bytes,
        kept,
    )
}

/// One plain consumer per partition, each on its own thread: records per second
/// together.
fn plain_loops(servers: &str, topic: &str) -> f64 {
    let t = Instant::now();
    let records: u64 = std::thread::scope(|s| {
        let loops: Vec<_> = (0..PARTITIONS)
            .map(|p| s.spawn(move || plain_loop(servers, topic, 0, &[p], false).1))
            .collect();
        loops.into_iter().map(|l| l.join().unwrap()).sum()
    });
    records as f64 / t.elapsed().as_secs_f64()
}

/// The same count through rdkafka's async `StreamConsumer` (what the source uses),
/// still only counting bytes: records per second.
async fn stream_loop(servers: &str, topic: &str, records: u64) -> f64 {
    use futures::StreamExt;
    let t = Instant::now();
    let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", format!("bench-stream-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut seen, mut bytes) = (0u64, 0u64);
    let mut stream = consumer.stream();
    while seen < records {
        let m = stream.next().await.unwrap().unwrap();
        bytes += m.payload().map_or(0, |p| p.len()) as u64;
        seen += 1;
    }
    assert!(bytes > 0);
    records as f64 / t.elapsed().as_secs_f64()
}

/// Tributary's Kafka source (bounded, `tasks` tasks) into a blackhole; records per
/// second.
async fn tributary_source(
    servers: &str,
    topic: &str,
    format: &str,
    registry: &str,
    events: u64,
    tasks: usize,
) -> f64 {
    let mut p = PipelineBuilder::new("read").runtime_settings(settings(None));
    let src = p
        .source_sql(&format!(
            "CREATE TABLE bids (auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL, \
             channel VARCHAR NOT NULL, url VARCHAR NOT NULL, date_time TIMESTAMP NOT NULL, \
             extra VARCHAR NOT NULL) WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
             topic = '{topic}', bounded = 'true', parallelism = '{tasks}'{})",
            format_options(format, registry)
        ))
        .unwrap();
    p.sink(src, "blackhole", Arc::new(BlackholeSink::new(None)))
        .unwrap();
    let t = Instant::now();
    let report = p.run_to_completion().await.unwrap();
    assert_eq!(report.bad_records, 0, "every record decodes");
    events as f64 / t.elapsed().as_secs_f64()
}

/// `arrow-avro`: records straight into Arrow builders; records per second.
fn decode_arrow_avro(payloads: &[Vec<u8>], id: u32, schema: &str) -> f64 {
    use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(id), AvroSchema::new(schema.to_string()))
        .unwrap();
    let t = Instant::now();
    let mut decoder = arrow_avro::reader::ReaderBuilder::new()
        .with_batch_size(8192)
        .with_writer_schema_store(store)
        .build_decoder()
        .unwrap();
    let mut rows = 0;
    for chunk in payloads.chunks(8192) {
        for p in chunk {
            assert_eq!(decoder.decode(p).unwrap(), p.len());
        }
        rows += decoder.flush().unwrap().map_or(0, |b| b.num_rows());
    }
    assert_eq!(rows, payloads.len());
    payloads.len() as f64 / t.elapsed().as_secs_f64()
}

/// `apache-avro`: a `Value` tree per record, then appended to Arrow builders (the
/// bids' types: long, string, timestamp); records per second.
fn decode_apache_avro(payloads: &[Vec<u8>], schema: &str) -> f64 {
    use apache_avro::types::Value;
    let schema = apache_avro::Schema::parse_str(schema).unwrap();
    let t = Instant::now();
    let mut rows = 0;
    for chunk in payloads.chunks(8192) {
        let mut builders: Vec<Box<dyn ArrayBuilder>> = Vec::new();
        for p in chunk {
            let Value::Record(fields) =
                apache_avro::from_avro_datum(&schema, &mut &p[5..], None).unwrap()
            else {
                panic!("a record");
            };
            if builders.is_empty() {
                builders = fields
                    .iter()
                    .map(|(_, v)| -> Box<dyn ArrayBuilder> {
                        match v {
                            Value::Long(_) => Box::new(Int64Builder::new()),
                            Value::String(_) => Box::new(StringBuilder::new()),
                            _ => Box::new(TimestampMillisecondBuilder::new()),
                        }
                    })
                    .collect();
            }
            for (b, (_, v)) in builders.iter_mut().zip(fields) {
                let any = b.as_any_mut();
                match v {
                    Value::Long(x) => any.downcast_mut::<Int64Builder>().unwrap().append_value(x),
                    Value::String(s) => {
                        any.downcast_mut::<StringBuilder>().unwrap().append_value(s)
                    }
                    Value::TimestampMillis(x) => any
                        .downcast_mut::<TimestampMillisecondBuilder>()
                        .unwrap()
                        .append_value(x),
                    Value::TimestampMicros(x) => any
                        .downcast_mut::<TimestampMillisecondBuilder>()
                        .unwrap()
                        .append_value(x / 1000),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        let columns: Vec<ArrayRef> = builders.iter_mut().map(|b| b.finish()).collect();
        rows += RecordBatch::try_from_iter(
            columns
                .into_iter()
                .enumerate()
                .map(|(i, c)| (format!("c{i}"), c)),
        )
        .unwrap()
        .num_rows();
    }
    assert_eq!(rows, payloads.len());
    payloads.len() as f64 / t.elapsed().as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn m(x: f64) -> String {
    format!("{:.2}M", x / 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(servers) = std::env::var("TRIBUTARY_BENCH_KAFKA") else {
        eprintln!(
            "kafka bench skipped: start a broker (scripts/kafka start) and set TRIBUTARY_BENCH_KAFKA"
        );
        return;
    };
    let events: u64 = std::env::var("TRIBUTARY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let rounds: usize = std::env::var("TRIBUTARY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(
        tributary::registry::Registry::open(dir.path())
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tributary::registry::server::serve(
        listener,
        registry,
        std::future::pending(),
    ));
    let run = format!("{:08x}", rand::random::<u32>());
    println!(
        "Kafka bench: the bids of {events} Nexmark events, {PARTITIONS} partitions, broker {servers}; \
         reads: median of {rounds} rounds"
    );
    println!(
        "{:<6} {:>11} {:>14} {:>11} {:>6} {:>12} {:>11} {:>6} {:>12} {:>12} {:>6}",
        "format",
        "sink rec/s",
        "txn sink (1s)",
        "plain loop",
        "MB/s",
        "stream loop",
        "tributary",
        "ratio",
        "2 plain",
        "2 tasks",
        "ratio"
    );
    let formats = std::env::var("TRIBUTARY_BENCH_FORMATS").unwrap_or_else(|_| "avro,json".into());
    let mut sample = Vec::new();
    for format in formats.split(',') {
        let topic = format!("bench.bids.{format}.{run}");
        let (sink, written) = load(&servers, &topic, format, &url, events, None).await;
        let txn_topic = format!("bench.bids.txn.{format}.{run}");
        let (txn_sink, _) = load(
            &servers,
            &txn_topic,
            format,
            &url,
            events,
            Some(Duration::from_secs(1)),
        )
        .await;
        let keep = if format == "avro" { DECODE_SAMPLE } else { 0 };
        let (plain, records, bytes, kept) =
            tokio::task::block_in_place(|| plain_loop(&servers, &topic, keep, &[0, 1], false));
        assert_eq!(records, written, "every record in the topic");
        if format == "avro" {
            sample = kept;
        }
        // Rounds, each reading the topic with every consumer in turn: throughput on
        // this machine drifts by a fifth from one minute to the next, so each figure is
        // the median of its rounds, and the ratios compare medians.
        let mut plains = vec![plain];
        let (mut streams, mut ones, mut plain2s, mut twos) = (vec![], vec![], vec![], vec![]);
        let mut copies = vec![];
        for round in 0..rounds {
            if round > 0 {
                plains.push(
                    tokio::task::block_in_place(|| plain_loop(&servers, &topic, 0, &[0, 1], false))
                        .0,
                );
            }
            copies.push(
                tokio::task::block_in_place(|| plain_loop(&servers, &topic, 0, &[0, 1], true)).0,
            );
            streams.push(stream_loop(&servers, &topic, records).await);
            ones.push(tributary_source(&servers, &topic, format, &url, records, 1).await);
            // One consumer per partition: two plain loops on two threads, and the
            // source with a task per partition.
            plain2s.push(tokio::task::block_in_place(|| {
                plain_loops(&servers, &topic)
            }));
            twos.push(tributary_source(&servers, &topic, format, &url, records, 2).await);
        }
        let spread = |ours: &[f64], plain: &[f64]| {
            let r: Vec<String> = ours
                .iter()
                .zip(plain)
                .map(|(o, p)| format!("{:.2}", o / p))
                .collect();
            r.join(" ")
        };
        println!(
            "{format} per round, ratio 1 task: {}; 2 tasks: {}; 1 task to the copy loop: {}",
            spread(&ones, &plains),
            spread(&twos, &plain2s),
            spread(&ones, &copies)
        );
        let copied = median(copies);
        let (plain, streamed, ours, plain2, ours2) = (
            median(plains),
            median(streams),
            median(ones),
            median(plain2s),
            median(twos),
        );
        println!(
            "{:<6} {:>11} {:>14} {:>11} {:>6.0} {:>12} {:>11} {:>6.2} {:>12} {:>12} {:>6.2}",
            format,
            m(sink),
            m(txn_sink),
            m(plain),
            plain * (bytes as f64 / records as f64) / 1e6,
            m(streamed),
            m(ours),
            ours / plain,
            m(plain2),
            m(ours2),
            ours2 / plain2
        );
        println!(
            "{format} copy loop (the plain loop copying each value out): {} rec/s, {:.2} of the \
             plain loop; 1 task {:.2} of it",
            m(copied),
            copied / plain,
            ours / copied
        );
    }
    if sample.is_empty() {
        return;
    }
    let id = u32::from_be_bytes([sample[0][1], sample[0][2], sample[0][3], sample[0][4]]);
    let registry =
        tributary::registry::client::RegistryClient::new(&url, &Default::default()).unwrap();
    let schema = registry.schema_by_id(id).await.unwrap();
    let arrow_avro = decode_arrow_avro(&sample, id, &schema);
    let apache = decode_apache_avro(&sample, &schema);
    println!(
        "decoding {} Avro bids into Arrow: arrow-avro {} rec/s, apache-avro {} rec/s ({:.2}x)",
        sample.len(),
        m(arrow_avro),
        m(apache),
        arrow_avro / apache
    );
}
