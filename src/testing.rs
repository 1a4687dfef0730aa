//! Helpers the crate's unit tests share (compiled only for tests): running one
//! stateful operator of a planned query by hand, with checkpoints and changes of
//! parallelism where a test says; tapping a running pipeline; comparing results
//! whatever their order; the `(k, v, ts)` test input.

use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};

use crate::state::snapshot::Chain;

use crate::engine::{
    Collector, Graph, Message, NodeKind, NodeSpec, Operator, Partitioning, StateKind, TaskInfo,
    Watermark,
};

/// One input of the driven operator: the stateless steps between the source and it,
/// and the columns its rows are routed by (hash partitioning), if any.
struct Input {
    before: Vec<Box<dyn Operator>>,
    hash: Option<Vec<usize>>,
}

/// Runs the operator of `graph` whose description starts with `describes` directly.
/// Each step `(input, batch, watermark)` sends `batch` through the stateless steps
/// between the source and the operator's input `input`, then to the task that owns
/// each row's key group, followed by `watermark` (to every task) if any; the end of
/// input follows the last step.
///
/// After step `i`, `cuts[i]` (when there) checkpoints it as the runtime does (a task
/// whose previous snapshot was committed may send a delta, which extends its chain):
/// `1` commits the checkpoint and goes on with the same tasks; `2` commits it, then
/// restores every task's chain into new tasks and goes on with those, at the next
/// parallelism of 1 → 2 → 3 → 1 when the operator's inputs are hash-partitioned and it
/// is rescalable (each new task then reads every old task's state, as after a change
/// of parallelism), else at 1; `3` abandons it (the next snapshot is then a full one).
/// Starts at parallelism 1. Returns every batch the tasks emitted.
pub(crate) async fn drive_node(
    graph: &Graph,
    describes: &str,
    steps: &[(usize, RecordBatch, Option<i64>)],
    cuts: &[u8],
) -> Vec<RecordBatch> {
    let node = find(graph, describes);
    let task =
        |n: &NodeSpec, partition: usize, parallelism: usize| task(graph, n, partition, parallelism);
    let mut inputs: Vec<Input> = node
        .inputs
        .iter()
        .map(|(id, partitioning)| {
            let mut before = Vec::new();
            let mut at = *id;
            while let NodeKind::Operator(f) = &graph.nodes[at].kind {
                assert_eq!(f.state_kind(), StateKind::Stateless, "{}", f.describe());
                before.insert(0, f.create(&task(&graph.nodes[at], 0, 1)).unwrap());
                at = graph.nodes[at].inputs[0].0;
            }
            let hash = match partitioning {
                Partitioning::Hash(columns) => Some(columns.clone()),
                _ => None,
            };
            Input { before, hash }
        })
        .collect();
    let NodeKind::Operator(factory) = &node.kind else {
        unreachable!("found among operators")
    };
    let rescalable = factory.rescalable() && inputs.iter().all(|i| i.hash.is_some());
    let (mut out, rx) = Collector::capture(1 << 16);
    let mut tasks = vec![factory.create(&task(node, 0, 1)).unwrap()];
    // Each task's state in the last committed checkpoint, and whether a snapshot was
    // abandoned since.
    let mut chains: Vec<Chain> = vec![Vec::new()];
    let mut abandoned = false;
    for (i, (input, batch, watermark)) in steps.iter().enumerate() {
        let mut batches = vec![batch.clone()];
        for step in inputs[*input].before.iter_mut() {
            let (mut step_out, step_rx) = Collector::capture(1 << 10);
            for b in batches {
                step.process_batch(b, &mut step_out).await.unwrap();
            }
            drop(step_out);
            batches = drain(step_rx).await;
        }
        for b in batches {
            for (t, part) in route(&b, inputs[*input].hash.as_deref(), tasks.len()) {
                tasks[t]
                    .process_input(*input, part, &mut out)
                    .await
                    .unwrap();
            }
        }
        if let Some(w) = watermark {
            for t in tasks.iter_mut() {
                t.handle_watermark(*w, &mut out).await.unwrap();
            }
        }
        let Some(&cut @ 1..=3) = cuts.get(i) else {
            continue;
        };
        for (t, chain) in tasks.iter_mut().zip(chains.iter_mut()) {
            let state = if chain.is_empty() || abandoned {
                t.snapshot()
            } else {
                t.snapshot_changes()
            };
            let state = state.unwrap().expect("operator state");
            if cut == 3 {
                continue;
            }
            if !state.is_delta() {
                chain.clear();
            }
            chain.push(state.into_bytes().unwrap());
        }
        abandoned = cut == 3;
        if cut == 2 {
            let now = tasks.len();
            let next = if rescalable { now % 3 + 1 } else { 1 };
            tasks = (0..next)
                .map(|p| {
                    let mut t = factory.create(&task(node, p, next)).unwrap();
                    let mine = if next == now {
                        chains[p..=p].to_vec()
                    } else {
                        chains.clone()
                    };
                    t.restore_chains(mine).unwrap();
                    t
                })
                .collect();
            // New tasks: their first snapshot is a full one.
            chains = vec![Vec::new(); next];
        }
    }
    for t in tasks.iter_mut() {
        t.handle_watermark(Watermark::END, &mut out).await.unwrap();
        t.on_end(&mut out).await.unwrap();
    }
    drop(out);
    drain(rx).await
}

/// The node of `graph` whose description starts with `describes`.
fn find<'g>(graph: &'g Graph, describes: &str) -> &'g NodeSpec {
    let describe = |n: &NodeSpec| match &n.kind {
        NodeKind::Operator(f) => f.describe(),
        _ => n.name.clone(),
    };
    graph
        .nodes
        .iter()
        .find(|n| describe(n).starts_with(describes))
        .unwrap_or_else(|| {
            let all: Vec<String> = graph.nodes.iter().map(describe).collect();
            panic!("no operator described as {describes:?} in {all:?}")
        })
}

fn task(graph: &Graph, n: &NodeSpec, partition: usize, parallelism: usize) -> TaskInfo {
    TaskInfo {
        pipeline: graph.pipeline.clone().into(),
        node: n.name.clone().into(),
        partition,
        parallelism,
        state: crate::state::memory_backend(),
    }
}

/// A task (partition 0 of 1) of the operator of `graph` whose description starts with
/// `describes`, for tests that call its methods themselves.
pub(crate) fn operator(graph: &Graph, describes: &str) -> Box<dyn Operator> {
    let node = find(graph, describes);
    let NodeKind::Operator(factory) = &node.kind else {
        panic!("{describes:?} is not an operator")
    };
    factory.create(&task(graph, node, 0, 1)).unwrap()
}

/// `batch` split by the task of `tasks` that owns each row's key group (by the columns
/// `hash`); all of it to task 0 without them.
fn route(batch: &RecordBatch, hash: Option<&[usize]>, tasks: usize) -> Vec<(usize, RecordBatch)> {
    let Some(columns) = hash.filter(|_| tasks > 1) else {
        return vec![(0, batch.clone())];
    };
    let keys: Vec<_> = columns.iter().map(|&c| batch.column(c).clone()).collect();
    let groups = crate::engine::key_groups_of_arrays(&keys, batch.num_rows()).unwrap();
    let mut rows = vec![Vec::new(); tasks];
    for (i, kg) in groups.iter().enumerate() {
        rows[crate::engine::partition_of_key_group(*kg, tasks)].push(i as u32);
    }
    rows.into_iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(t, r)| {
            let part = arrow::compute::take_record_batch(batch, &UInt32Array::from(r)).unwrap();
            (t, part)
        })
        .collect()
}

/// Every batch `rx` receives until its senders are gone.
pub(crate) async fn drain(mut rx: tokio::sync::mpsc::Receiver<Message>) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    while let Some(m) = rx.recv().await {
        if let Message::Batch(b) = m {
            batches.push(b);
        }
    }
    batches
}

/// Ends `out` in a blackhole sink and sends each batch that reaches it to the returned
/// channel as it passes: for tests that watch a running pipeline.
pub(crate) fn tap(
    p: &mut crate::pipeline::PipelineBuilder,
    out: crate::pipeline::Stream,
) -> tokio::sync::mpsc::UnboundedReceiver<RecordBatch> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let schema = p.schema(&out);
    let out = p.map(out, "tap", schema, move |b| {
        let _ = tx.send(b.clone());
        Ok(b)
    });
    p.sink(
        out,
        "blackhole",
        Arc::new(crate::connectors::blackhole::BlackholeSink::new(None)),
    )
    .expect("a blackhole takes any schema");
    rx
}

/// Every row of `batches` as a JSON line, sorted: for comparing results whatever the
/// order their rows arrived in.
pub(crate) fn sorted_json_lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut buf = Vec::new();
    for b in batches {
        crate::formats::json::encode_json_lines(b, &mut buf).expect("test rows encode");
    }
    let mut lines: Vec<String> = String::from_utf8(buf)
        .expect("JSON is UTF-8")
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// Test input used across the stateful operators' tests: `(k, v, ts)` rows as a batch
/// of `k BIGINT, v BIGINT, ts TIMESTAMP(ms)`.
pub(crate) fn kvt_batch(rows: &[(i64, i64, i64)]) -> RecordBatch {
    use arrow::array::{Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.2),
            )),
        ],
    )
    .expect("three columns of equal length")
}

/// One change to a record's bytes, for property tests that feed decoders damaged
/// input (each format picks the bytes worth trying).
#[derive(Debug, Clone)]
pub(crate) enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

/// `bytes` with `edits` applied in turn (positions taken modulo the length).
pub(crate) fn apply_edits(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len().max(1);
        match *e {
            Edit::Flip(i, b) if !bytes.is_empty() => bytes[i % n] = b,
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Edit::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i % n);
            }
            Edit::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
            _ => {}
        }
    }
    bytes
}
