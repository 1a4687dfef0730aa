//! Runs a [`Graph`]: one tokio task per node and partition, bounded channels between
//! them, first failure stops everything, a stop signal drains the graph. Which tasks
//! have not ended yet is kept ([`Stopper::running`]), so a stop that takes long can say
//! what it waits for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::{BoxStream, select_all};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::exchange::Output;
use super::graph::{Graph, NodeKind};
use super::watermark::{InputWatermarks, Watermark};
use super::{BatchSettings, Collector, EngineError, Message, Result, SourceContext, TaskInfo};
use crate::checkpoint::fault::Phase;
use crate::metrics as m;
use crate::types::NodeStats;

/// Knobs of the runtime, set from the pipeline file and configuration.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Capacity of each channel between two tasks, in batches.
    pub channel_capacity: usize,
    pub batch: BatchSettings,
    /// Where stateful operators keep their state.
    pub state: Arc<dyn crate::state::StateBackend>,
    /// Checkpoints (off when `None`).
    pub checkpoints: Option<crate::checkpoint::CheckpointSettings>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            channel_capacity: 8,
            batch: BatchSettings::default(),
            state: crate::state::memory_backend(),
            checkpoints: None,
        }
    }
}

/// Raised once to ask sources to stop; cloned into every source task.
#[derive(Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// A signal that is never raised (for tests and tools).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        StopSignal(rx)
    }

    pub fn is_raised(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when the signal is raised.
    pub async fn raised(&mut self) {
        // An error means the sender is gone: nobody can raise it any more.
        if self.0.wait_for(|v| *v).await.is_err() {
            futures::future::pending::<()>().await;
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub elapsed: Duration,
    /// Rows emitted by each node, by node name, in graph order.
    pub rows_out: Vec<(String, u64)>,
    /// Rows received by each node (sinks: rows written), in graph order.
    pub rows_in: Vec<(String, u64)>,
    /// Bad records reported by all nodes.
    pub bad_records: u64,
}

/// The tasks of a run that have not ended, as `node[partition]` (the checkpoint
/// coordinator as `checkpoints[0]`).
#[derive(Debug, Default)]
struct Running(std::sync::Mutex<std::collections::BTreeSet<String>>);

/// Removes its task from [`Running`] when the task's future ends or is dropped.
struct Leaving(Arc<Running>, String);

impl Drop for Leaving {
    fn drop(&mut self) {
        if let Ok(mut r) = (self.0).0.lock() {
            r.remove(&self.1);
        }
    }
}

/// How many source and sink tasks have not built their connector yet: until none is
/// left, not every component has registered in the health table, so the pipeline is
/// not ready whatever the table says.
#[derive(Clone)]
struct Unbuilt(Arc<watch::Sender<usize>>);

impl Unbuilt {
    fn built(&self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A running pipeline.
pub struct RunHandle {
    stop: Arc<watch::Sender<bool>>,
    running: Arc<Running>,
    unbuilt: Unbuilt,
    /// Live counters per node, in graph order, for the progress view.
    pub stats: Vec<(String, Arc<NodeStats>)>,
    join: tokio::task::JoinHandle<Result<RunReport>>,
    /// With checkpoints: where savepoints are requested.
    pub savepoints: Option<tokio::sync::mpsc::Sender<crate::checkpoint::SavepointRequest>>,
}

/// Stops a running pipeline from anywhere (signal handlers, other pipelines).
#[derive(Clone)]
pub struct Stopper {
    stop: Arc<watch::Sender<bool>>,
    running: Arc<Running>,
}

impl Stopper {
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// The pipeline's tasks that have not ended yet (`node[partition]`, sorted): what
    /// a stop is still waiting for.
    pub fn running(&self) -> Vec<String> {
        self.running
            .0
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl RunHandle {
    pub fn stopper(&self) -> Stopper {
        Stopper {
            stop: self.stop.clone(),
            running: self.running.clone(),
        }
    }

    /// Resolves once every source and sink task has built its connector (each has
    /// then registered its health probe): from then on readiness can be judged from
    /// the health table.
    pub fn connectors_built(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.unbuilt.0.subscribe();
        async move {
            // A task that failed before building never will: the pipeline fails instead.
            let _ = rx.wait_for(|n| *n == 0).await;
        }
    }

    /// Asks the sources to stop; the graph then drains and the sinks flush.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub async fn wait(self) -> Result<RunReport> {
        match self.join.await {
            Ok(r) => r,
            Err(e) => Err(EngineError::Panicked {
                task: "runtime".into(),
                message: e.to_string(),
            }
            .into()),
        }
    }
}

pub struct Runtime;

/// A task's input channels, each with the index of the graph input (the node's
/// `inputs` position, the "side" of a join) it carries.
type Inputs = Vec<(usize, mpsc::Receiver<Message>)>;

impl Runtime {
    /// Starts every task of `graph` and returns at once.
    pub fn start(mut graph: Graph, settings: RuntimeSettings) -> Result<RunHandle> {
        graph.finalize()?;
        graph.attach_dead_letters();
        let routed = graph.dead_letters.is_some();
        let (stop_tx, stop_rx) = watch::channel(false);
        let pipeline: Arc<str> = graph.pipeline.as_str().into();
        let cap = settings.channel_capacity.max(1);

        // receivers[node][partition] = one receiver per (upstream task) feeding it.
        let mut receivers: Vec<Vec<Inputs>> = graph
            .nodes
            .iter()
            .map(|n| (0..n.parallelism).map(|_| Vec::new()).collect())
            .collect();
        // passive[node][partition] = per receiver: whether it holds no watermark back.
        let mut passive: Vec<Vec<Vec<bool>>> = graph
            .nodes
            .iter()
            .map(|n| (0..n.parallelism).map(|_| Vec::new()).collect())
            .collect();
        // outputs[node][partition] = the senders of each downstream edge.
        let mut outputs: Vec<Vec<Vec<Output>>> = graph
            .nodes
            .iter()
            .map(|n| (0..n.parallelism).map(|_| Vec::new()).collect())
            .collect();
        for (id, node) in graph.nodes.iter().enumerate() {
            for (side, (input, partitioning)) in node.inputs.iter().enumerate() {
                let up = &graph.nodes[*input];
                let fill = m::channel_fill(&pipeline, &node.name);
                for (u, up_outputs) in outputs[*input].iter_mut().enumerate().take(up.parallelism) {
                    let mut senders = Vec::new();
                    let targets: Vec<usize> = if *partitioning == super::Partitioning::Forward {
                        // Equal parallelism, or a changelog kept in order (see
                        // `Partitioning::Forward`).
                        vec![u % node.parallelism]
                    } else {
                        (0..node.parallelism).collect()
                    };
                    for d in targets {
                        let (tx, rx) = mpsc::channel(cap);
                        senders.push(tx);
                        receivers[id][d].push((node.side_of(side), rx));
                        passive[id][d].push(up.passive);
                    }
                    up_outputs.push(
                        Output::new(partitioning.clone(), senders, fill.clone(), cap, u)
                            .on_port(node.port_of(side)),
                    );
                }
            }
        }

        let mut tasks = Tasks {
            set: JoinSet::new(),
            running: Arc::new(Running::default()),
        };
        let connectors = graph
            .nodes
            .iter()
            .filter(|n| matches!(n.kind, NodeKind::Source(_) | NodeKind::Sink(_)))
            .map(|n| n.parallelism)
            .sum();
        let unbuilt = Unbuilt(Arc::new(watch::channel(connectors).0));
        let coordinator = match &settings.checkpoints {
            Some(c) => Some(checkpoint_coordinator(&graph, c)?),
            None => None,
        };
        let mut stats = Vec::new();
        for (id, node) in graph.nodes.iter().enumerate().rev() {
            let node_stats = Arc::new(NodeStats::default());
            stats.push((node.name.clone(), node_stats.clone()));
            let node_name: Arc<str> = node.name.as_str().into();
            for p in (0..node.parallelism).rev() {
                let task = TaskInfo {
                    pipeline: pipeline.clone(),
                    node: node_name.clone(),
                    partition: p,
                    parallelism: node.parallelism,
                    state: settings.state.clone(),
                };
                let bad = crate::dlq::BadRecords::new(
                    &task,
                    node_stats.clone(),
                    node.on_error.unwrap_or(graph.errors),
                    routed,
                    node.replay_table.as_deref(),
                );
                let mut out = Collector::new(
                    std::mem::take(&mut outputs[id][p]),
                    node_stats.clone(),
                    m::rows_out(&pipeline, &node.name),
                    m::batches_out(&pipeline, &node.name),
                    bad.clone(),
                );
                if let Some(et) = &node.event_time {
                    let column = node.schema.index_of(&et.column).map_err(|_| {
                        EngineError::Graph(format!(
                            "{}: no event-time column {}",
                            node.name, et.column
                        ))
                    })?;
                    out.generate_watermarks(column, et.delay, graph.idle_timeout);
                }
                let inputs = std::mem::take(&mut receivers[id][p]);
                let passive_inputs = std::mem::take(&mut passive[id][p]);
                let stats = node_stats.clone();
                let checkpoints = coordinator.as_ref().map(|c| c.task(&node.name, p));
                match &node.kind {
                    NodeKind::Source(f) => {
                        let f = f.clone();
                        let mut ctx = SourceContext {
                            task: task.clone(),
                            out,
                            batch: settings.batch,
                            stop: StopSignal(stop_rx.clone()),
                            bad_records: bad,
                            checkpoints,
                            final_position: None,
                        };
                        let unbuilt = unbuilt.clone();
                        spawn(&mut tasks, task, async move {
                            let r = async {
                                let mut source = f.create(&ctx.task)?;
                                unbuilt.built();
                                source.run(&mut ctx).await?;
                                ctx.out.flush_dead_letters().await
                            }
                            .await;
                            let last = ctx.take_final_position();
                            if let Some(c) = &ctx.checkpoints {
                                c.finished(last.map(|p| Some(p.into())));
                            }
                            ctx.out.close().await;
                            r
                        });
                    }
                    NodeKind::Operator(f) => {
                        let f = f.clone();
                        let env = TaskEnv {
                            task: task.clone(),
                            stats,
                            stop: StopSignal(stop_rx.clone()),
                            checkpoints,
                        };
                        let idle = graph.idle_timeout;
                        spawn(&mut tasks, task, async move {
                            run_operator(env, f.as_ref(), inputs, passive_inputs, out, idle).await
                        });
                    }
                    NodeKind::Sink(f) => {
                        let f = f.clone();
                        let schema = node.schema.clone();
                        let flush = settings.batch.flush_interval;
                        let env = TaskEnv {
                            task: task.clone(),
                            stats,
                            stop: StopSignal(stop_rx.clone()),
                            checkpoints,
                        };
                        let unbuilt = unbuilt.clone();
                        spawn(&mut tasks, task, async move {
                            run_sink(env, f.as_ref(), schema, inputs, out, flush, unbuilt).await
                        });
                    }
                }
            }
        }
        let savepoints = coordinator.as_ref().map(|c| c.savepoints());
        if let Some(c) = coordinator {
            let task = TaskInfo {
                pipeline: pipeline.clone(),
                node: "checkpoints".into(),
                partition: 0,
                parallelism: 1,
                state: settings.state.clone(),
            };
            spawn(&mut tasks, task, c.run());
        }
        stats.reverse();
        let names: Vec<(String, Arc<NodeStats>)> = stats.clone();
        let running = tasks.running.clone();
        let join = tokio::spawn(supervise(tasks.set, names));
        Ok(RunHandle {
            savepoints,
            running,
            unbuilt,
            stop: Arc::new(stop_tx),
            stats,
            join,
        })
    }

    /// Runs `graph` to completion; `stop` resolving asks it to stop and drain.
    pub async fn run(
        graph: Graph,
        settings: RuntimeSettings,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<RunReport> {
        let handle = Runtime::start(graph, settings)?;
        let stopper = handle.stop.clone();
        tokio::pin!(stop);
        let mut join = handle.join;
        tokio::select! {
            r = &mut join => return flatten(r),
            _ = &mut stop => { let _ = stopper.send(true); }
        }
        flatten(join.await)
    }
}

fn flatten(r: Result<Result<RunReport>, tokio::task::JoinError>) -> Result<RunReport> {
    match r {
        Ok(r) => r,
        Err(e) => Err(EngineError::Panicked {
            task: "runtime".into(),
            message: e.to_string(),
        }
        .into()),
    }
}

/// A run's tasks, and which of them have not ended.
struct Tasks {
    set: JoinSet<(TaskInfo, Result<()>)>,
    running: Arc<Running>,
}

/// Spawns one task; a panic inside it becomes an error naming the task.
fn spawn(
    tasks: &mut Tasks,
    task: TaskInfo,
    fut: impl std::future::Future<Output = Result<()>> + Send + 'static,
) {
    use futures::FutureExt;
    let name = format!("{}[{}]", task.node, task.partition);
    if let Ok(mut r) = tasks.running.0.lock() {
        r.insert(name.clone());
    }
    let leaving = Leaving(tasks.running.clone(), name);
    tasks.set.spawn(async move {
        let _leaving = leaving;
        let r = match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
            Ok(r) => r,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(EngineError::Panicked {
                    task: task.to_string(),
                    message,
                }
                .into())
            }
        };
        (task, r)
    });
}

async fn supervise(
    mut tasks: JoinSet<(TaskInfo, Result<()>)>,
    stats: Vec<(String, Arc<NodeStats>)>,
) -> Result<RunReport> {
    let started = Instant::now();
    let mut primary: Option<crate::Error> = None;
    let mut secondary: Option<crate::Error> = None;
    while let Some(joined) = tasks.join_next().await {
        let failure: Option<(crate::Error, bool)> = match joined {
            Ok((_, Ok(()))) => None,
            Ok((task, Err(e)))
                if matches!(e, crate::Error::Engine(EngineError::Panicked { .. })) =>
            {
                tracing::error!(task = %task, error = %e, "operator panicked");
                Some((e, false))
            }
            Ok((task, Err(e))) => {
                let downstream_gone =
                    matches!(e, crate::Error::Engine(EngineError::DownstreamGone));
                tracing::error!(task = %task, error = %e, code = e.code(), "operator failed");
                Some((
                    EngineError::Operator {
                        task: task.to_string(),
                        source: Box::new(e),
                    }
                    .into(),
                    downstream_gone,
                ))
            }
            Err(_) => None, // cancelled by us after a failure
        };
        if let Some((err, is_secondary)) = failure {
            if primary.is_none() && secondary.is_none() {
                tasks.abort_all();
            }
            if is_secondary {
                secondary.get_or_insert(err);
            } else {
                primary.get_or_insert(err);
            }
        }
    }
    if let Some(e) = primary.or(secondary) {
        return Err(e);
    }
    Ok(RunReport {
        elapsed: started.elapsed(),
        rows_out: stats
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.rows_out.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect(),
        rows_in: stats
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.rows_in.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect(),
        bad_records: stats
            .iter()
            .map(|(_, s)| s.bad_records.load(std::sync::atomic::Ordering::Relaxed))
            .sum(),
    })
}

/// Merges a task's input channels into one stream of `(input index, message)`; each
/// input yields its `End` (or, if its sender is dropped, an `End` in its place) once.
/// After an input yields checkpoint barrier `n`, it yields nothing more until `gate`
/// reaches `n` (barrier alignment: the task has taken the checkpoint).
fn merge(inputs: Inputs, gate: watch::Receiver<u64>) -> BoxStream<'static, (usize, Message)> {
    let streams = inputs.into_iter().enumerate().map(move |(i, (_, rx))| {
        let gate = gate.clone();
        futures::stream::unfold(
            (rx, false, 0u64, gate),
            move |(mut rx, done, blocked_on, mut gate)| async move {
                if done {
                    return None;
                }
                if blocked_on > 0 {
                    // The task is gone if the gate's sender is: end this input too.
                    gate.wait_for(|g| *g >= blocked_on).await.ok()?;
                }
                match rx.recv().await {
                    Some(Message::End) | None => Some(((i, Message::End), (rx, true, 0, gate))),
                    Some(Message::Barrier(n)) => {
                        Some(((i, Message::Barrier(n)), (rx, false, n, gate)))
                    }
                    Some(m) => Some(((i, m), (rx, false, 0, gate))),
                }
            },
        )
        .boxed()
    });
    select_all(streams).boxed()
}

/// Barrier alignment of one task: which inputs have delivered the pending barrier.
struct Alignment {
    pending: Option<u64>,
    arrived: Vec<bool>,
    ended: Vec<bool>,
    gate: watch::Sender<u64>,
}

impl Alignment {
    fn new(inputs: usize) -> Self {
        Alignment {
            pending: None,
            arrived: vec![false; inputs],
            ended: vec![false; inputs],
            gate: watch::channel(0).0,
        }
    }

    fn gate(&self) -> watch::Receiver<u64> {
        self.gate.subscribe()
    }

    /// Barrier `id` on input `i`: the checkpoint to take now, if every input that has
    /// not ended has delivered it.
    fn barrier(&mut self, i: usize, id: u64) -> Option<u64> {
        if self.pending != Some(id) {
            self.pending = Some(id);
            self.arrived.iter_mut().for_each(|a| *a = false);
        }
        self.arrived[i] = true;
        self.complete()
    }

    /// Input `i` ended: a pending barrier may now be complete.
    fn ended(&mut self, i: usize) -> Option<u64> {
        self.ended[i] = true;
        self.pending.and_then(|_| self.complete())
    }

    fn complete(&mut self) -> Option<u64> {
        let all = self.arrived.iter().zip(&self.ended).all(|(a, e)| *a || *e);
        if all { self.pending.take() } else { None }
    }

    /// The checkpoint is taken: let the blocked inputs go on.
    fn release(&self, id: u64) {
        let _ = self.gate.send(id);
    }
}

/// Checks that every node of `graph` can be checkpointed and builds the coordinator.
fn checkpoint_coordinator(
    graph: &Graph,
    settings: &crate::checkpoint::CheckpointSettings,
) -> Result<crate::checkpoint::Coordinator> {
    let mut refused = Vec::new();
    for node in &graph.nodes {
        match &node.kind {
            NodeKind::Source(f) if !f.checkpointable() => refused.push(format!(
                "source {} ({}) cannot resume from a position",
                node.name,
                f.describe()
            )),
            NodeKind::Operator(f) if f.state_kind() == super::StateKind::NotCheckpointed => refused
                .push(format!(
                    "operator {} ({}) keeps state that checkpoints do not cover yet",
                    node.name,
                    f.describe()
                )),
            _ => {}
        }
    }
    if !refused.is_empty() {
        return Err(EngineError::Invalid(format!(
            "pipeline {} cannot take checkpoints: {}; run it without checkpoints",
            graph.pipeline,
            refused.join("; ")
        ))
        .into());
    }
    let parallelism = graph
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.parallelism))
        .collect();
    let rescalable = |name: &str| {
        graph
            .nodes
            .iter()
            .find(|n| n.name == name)
            .is_some_and(|n| match &n.kind {
                NodeKind::Source(f) => f.rescalable(),
                NodeKind::Operator(f) => f.rescalable(),
                // Sinks' pending output is committed by one new task each.
                NodeKind::Sink(_) => true,
            })
    };
    let operators = graph
        .nodes
        .iter()
        .filter_map(|n| match &n.kind {
            NodeKind::Operator(f) if f.state_kind() == super::StateKind::Checkpointed => {
                Some((n.name.clone(), f.describe()))
            }
            _ => None,
        })
        .collect();
    crate::checkpoint::Coordinator::new(
        settings.clone(),
        &graph.pipeline,
        parallelism,
        operators,
        rescalable,
    )
}

/// What every operator and sink task carries besides its inputs.
struct TaskEnv {
    task: TaskInfo,
    stats: Arc<NodeStats>,
    stop: StopSignal,
    checkpoints: Option<crate::checkpoint::TaskCheckpoints>,
}

async fn run_operator(
    env: TaskEnv,
    factory: &dyn super::OperatorFactory,
    inputs: Inputs,
    passive: Vec<bool>,
    mut out: Collector,
    idle_timeout: Option<Duration>,
) -> Result<()> {
    let TaskEnv {
        task,
        stats,
        stop,
        mut checkpoints,
    } = env;
    let task = &task;
    let mut op = factory.create(task)?;
    if let Some(c) = &checkpoints {
        let chains = c.restored_chains(crate::checkpoint::Share::All).await?;
        if !chains.is_empty() {
            op.restore_chains(chains.into_iter().map(|(_, chain)| chain).collect())?;
        }
    }
    let mut alignment = Alignment::new(inputs.len());
    let rows_in = m::rows_in(&task.pipeline, &task.node);
    let latency = m::processing_latency(&task.pipeline, &task.node);
    let watermark_gauge = m::watermark(&task.pipeline, &task.node);
    let mut watermarks = InputWatermarks::new(inputs.len(), idle_timeout);
    for (i, _) in passive.iter().enumerate().filter(|(_, p)| **p) {
        watermarks.set_passive(i);
    }
    let sides: Vec<usize> = inputs.iter().map(|(side, _)| *side).collect();
    let mut input = merge(inputs, alignment.gate());
    // Idleness is re-evaluated on a timer; without a timeout the timer never fires.
    let mut idle_check = tokio::time::interval(idle_timeout.unwrap_or(Duration::from_secs(3600)));
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    idle_check.tick().await;
    let tick_every = op.tick_interval();
    let mut ticker = tokio::time::interval(tick_every.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let advanced = tokio::select! {
            msg = input.next() => {
                let Some((i, msg)) = msg else { break };
                let now = Instant::now();
                match msg {
                    Message::Batch(batch) => {
                        watermarks.activity(i, now);
                        let n = batch.num_rows() as u64;
                        stats.rows_in.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        rows_in.increment(n);
                        let t = Instant::now();
                        op.process_input(sides[i], batch, &mut out).await?;
                        latency.record(t.elapsed().as_secs_f64());
                        None
                    }
                    Message::Watermark(wm) => watermarks.watermark(i, wm, now),
                    Message::Barrier(id) => {
                        if let Some(id) = alignment.barrier(i, id) {
                            take_checkpoint(op.as_mut(), &mut out, checkpoints.as_mut(), id).await?;
                            alignment.release(id);
                        }
                        None
                    }
                    // An input that ends because the pipeline is stopping has not
                    // reached the end of time: its open windows are not complete.
                    Message::End => {
                        if let Some(id) = alignment.ended(i) {
                            take_checkpoint(op.as_mut(), &mut out, checkpoints.as_mut(), id).await?;
                            alignment.release(id);
                        }
                        if stop.is_raised() { None } else { watermarks.ended(i, now) }
                    }
                }
            }
            _ = idle_check.tick(), if idle_timeout.is_some() => watermarks.advance(Instant::now()),
            _ = ticker.tick(), if tick_every.is_some() => {
                op.handle_tick(&mut out).await?;
                None
            }
        };
        if let Some(wm) = advanced {
            op.handle_watermark(wm, &mut out).await?;
            let forwarded = if wm == Watermark::END {
                wm
            } else {
                wm.saturating_sub(op.watermark_holdback())
            };
            out.emit_watermark(forwarded).await?;
            if wm != Watermark::END {
                watermark_gauge.set(wm as f64 / 1000.0);
            }
        }
    }
    // At the end of every input, the end of time: every window and timer fires. A
    // stopped pipeline instead drains what was emitted and leaves open state unfired.
    if watermarks.current() != Watermark::END && !stop.is_raised() {
        op.handle_watermark(Watermark::END, &mut out).await?;
        out.emit_watermark(Watermark::END).await?;
    }
    op.on_end(&mut out).await?;
    out.flush_dead_letters().await?;
    if let Some(c) = &checkpoints {
        // Its state once everything is emitted: what later checkpoints hold for it.
        c.finished(Some(op.snapshot()?));
    }
    out.close().await;
    Ok(())
}

/// A sink at the end of its input: pre-commits the next checkpoint triggered (again if
/// one is abandoned) and commits it once the coordinator has (which commits every
/// checkpoint before it too). Without a coordinator any more, returns: `finish`
/// publishes what is left, as before checkpoints.
async fn final_checkpoint(
    sink: &mut dyn super::Sink,
    c: &mut crate::checkpoint::TaskCheckpoints,
) -> Result<()> {
    let mut committed = c.committed();
    // Without waiting out the rest of the interval.
    c.checkpoint_soon();
    while let Some(id) = c.next_trigger().await {
        let state = sink.pre_commit(id).await?;
        c.fault_point(Phase::PreCommit, Some(id));
        c.ack(id, state.map(Into::into));
        let mut triggered = c.clone();
        let done = tokio::select! {
            r = committed.wait_for(|done| *done >= id) => r.is_ok(),
            // Abandoned: take part in the next one.
            _ = triggered.next_trigger() => false,
        };
        if done {
            sink.commit(id).await?;
            c.fault_point(Phase::SinkCommitted, Some(id));
            return Ok(());
        }
    }
    Ok(())
}

/// Snapshots `op` for checkpoint `id` (only its changes when its previous snapshot
/// is committed), acknowledges it and forwards the barrier.
async fn take_checkpoint(
    op: &mut dyn super::Operator,
    out: &mut Collector,
    checkpoints: Option<&mut crate::checkpoint::TaskCheckpoints>,
    id: u64,
) -> Result<()> {
    if let Some(c) = checkpoints {
        let state = if c.previous_committed() {
            op.snapshot_changes()?
        } else {
            op.snapshot()?
        };
        c.fault_point(Phase::Snapshot, Some(id));
        c.ack(id, state);
    }
    out.emit_barrier(id).await
}

async fn run_sink(
    env: TaskEnv,
    factory: &dyn super::SinkFactory,
    schema: arrow::datatypes::SchemaRef,
    inputs: Inputs,
    mut out: Collector,
    flush_every: Duration,
    unbuilt: Unbuilt,
) -> Result<()> {
    let TaskEnv {
        task,
        stats,
        stop,
        mut checkpoints,
    } = env;
    let task = &task;
    let mut sink = factory.create(task, schema)?;
    sink.report_refusals_to(out.bad_records().clone());
    unbuilt.built();
    if let Some(c) = &checkpoints {
        if c.exactly_once && !sink.exactly_once() {
            tracing::warn!(task = %task, "this sink cannot hold output back until a checkpoint \
                commits: its output is at-least-once (a restart may repeat rows)");
        }
        let states = c.restored(crate::checkpoint::Share::Modulo).await?;
        if !states.is_empty() {
            sink.restore(&states).await?;
        }
        if c.restoring() {
            c.fault_point(Phase::Restore, None);
        }
    }
    let rows_in = m::rows_in(&task.pipeline, &task.node);
    let latency = m::processing_latency(&task.pipeline, &task.node);
    let mut alignment = Alignment::new(inputs.len());
    let mut input = merge(inputs, alignment.gate());
    let mut ticker = tokio::time::interval(flush_every.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Exactly-once: checkpoints pre-committed here, made visible once committed.
    let mut committed = checkpoints.as_ref().map(|c| c.committed());
    let exactly_once = checkpoints.as_ref().is_some_and(|c| c.exactly_once);
    let mut uncommitted: Option<u64> = None;
    loop {
        let aligned = tokio::select! {
            msg = input.next() => match msg {
                Some((_, Message::Batch(batch))) => {
                    let n = batch.num_rows() as u64;
                    stats.rows_in.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    rows_in.increment(n);
                    let t = Instant::now();
                    sink.write(batch).await?;
                    latency.record(t.elapsed().as_secs_f64());
                    out.flush_dead_letters().await?;
                    None
                }
                Some((i, Message::Barrier(id))) => alignment.barrier(i, id),
                Some((i, Message::End)) => alignment.ended(i),
                Some(_) => None,
                None => break,
            },
            _ = ticker.tick() => {
                sink.flush().await?;
                out.flush_dead_letters().await?;
                None
            }
            Ok(()) = async { committed.as_mut().expect("guarded").changed().await },
                if committed.is_some() && uncommitted.is_some() => {
                let done = *committed.as_ref().expect("guarded").borrow();
                if let Some(id) = uncommitted.filter(|u| *u <= done) {
                    sink.commit(id).await?;
                    if let Some(c) = &checkpoints {
                        c.fault_point(Phase::SinkCommitted, Some(id));
                    }
                    uncommitted = None;
                }
                None
            }
        };
        if let Some(id) = aligned {
            let state = sink.pre_commit(id).await?;
            if let Some(c) = checkpoints.as_mut() {
                c.fault_point(Phase::PreCommit, Some(id));
                c.ack(id, state.map(Into::into));
            }
            // Its dead letters (refusals up to this barrier), then the barrier.
            out.emit_barrier(id).await?;
            if exactly_once {
                uncommitted = Some(id);
            } else {
                sink.commit(id).await?;
            }
            alignment.release(id);
        }
    }
    // No more refusals: the dead-letter sink may end (and take part in the final
    // checkpoint below).
    out.flush_dead_letters().await?;
    out.close().await;
    if let Some(c) = checkpoints.as_mut()
        && !stop.is_raised()
    {
        // The end of the input: the rest of the output goes out through one more
        // checkpoint, which also records every source at its end, so a restart from
        // it replays nothing.
        final_checkpoint(sink.as_mut(), c).await?;
    }
    if let Some(c) = &checkpoints {
        // At the end of its input a sink has published everything (`finish` below)
        // and holds no state: later checkpoints, for the pipeline's other sinks, go
        // on without it. Stopped, it ends checkpointing, so the committed id is final.
        c.finished((!stop.is_raised()).then_some(None));
        if exactly_once && stop.is_raised() {
            // Stopped mid-input: rows after the last committed checkpoint are replayed
            // by the restart, so they must not become visible now. A checkpoint this
            // sink pre-committed may still be committing: the coordinator ends on the
            // report above, after which the committed id is final.
            let mut committed = c.committed();
            while committed.changed().await.is_ok() {}
            let done = *committed.borrow();
            return sink.close_uncommitted(done).await;
        }
    }
    sink.finish().await
}
