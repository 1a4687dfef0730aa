//! `tributary run`, `check` and `explain`; and how a run stops.
//!
//! Stopping: SIGTERM, SIGINT (Ctrl-C) and SIGHUP all ask every pipeline to stop (its
//! sources stop, the graph drains, the sinks flush) and mark the process not ready.
//! The stop may take `run.stop_grace`; meanwhile it logs what it waits for (the tasks
//! not ended, the components not up). Past the grace, or at a second signal, the stop
//! is abandoned: the process exits at once with code 3 (ENG008), like a crash, and the
//! next start finishes what was left (with checkpoints, it replays from the last
//! committed one). Exiting without unwinding is deliberate: a sink waiting inside
//! librdkafka (a blocking flush, a transaction commit) cannot be interrupted, and
//! dropping half-done sinks could publish or delete what a checkpoint still owns.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::progress::Progress;
use super::report;
use crate::engine::{EngineError, NodeKind, Runtime, Stopper};
use crate::pipeline::{Config, LoadedPipeline, PipelineError, discover, load_pipeline};
use crate::planner::{PlannedPipeline, SqlPlanner};

/// Resolves pipeline arguments: a path to a file, or a name in the pipelines directory.
fn resolve(config: &Config, args: &[String]) -> crate::Result<Vec<PathBuf>> {
    let dir = Path::new(&config.run.pipelines_dir);
    if args.is_empty() {
        let found = discover(dir)?;
        if found.is_empty() {
            return Err(PipelineError::NotFound {
                name: "*".into(),
                looked: format!("{}/*.yaml", dir.display()),
            }
            .into());
        }
        return Ok(found);
    }
    args.iter()
        .map(|a| {
            let p = PathBuf::from(a);
            if p.exists() {
                return Ok(p);
            }
            for ext in ["yaml", "yml"] {
                let c = dir.join(format!("{a}.{ext}"));
                if c.exists() {
                    return Ok(c);
                }
            }
            Err(PipelineError::NotFound {
                name: a.clone(),
                looked: format!("{a} and {}/{a}.yaml", dir.display()),
            }
            .into())
        })
        .collect()
}

/// Loads and plans every pipeline, reporting every error; `None` if any failed.
async fn plan_all(
    config: &Config,
    args: &[String],
) -> Option<Vec<(LoadedPipeline, PlannedPipeline)>> {
    plan_all_with(config, args, config.connector_env()).await
}

/// [`plan_all`] with the connectors' environment given (`run` adds the fallback).
async fn plan_all_with(
    config: &Config,
    args: &[String],
    env: crate::connectors::ConnectorEnv,
) -> Option<Vec<(LoadedPipeline, PlannedPipeline)>> {
    let (out, ok) = plan_each(config, args, env).await;
    ok.then_some(out)
}

/// Loads and plans every pipeline it can, going on after each error and reporting it
/// (a name not found, a file that does not load or plan, two pipelines of one name):
/// the pipelines that planned, and whether every one did.
pub(super) async fn plan_each(
    config: &Config,
    args: &[String],
    env: crate::connectors::ConnectorEnv,
) -> (Vec<(LoadedPipeline, PlannedPipeline)>, bool) {
    let mut ok = true;
    let mut paths = Vec::new();
    if args.is_empty() {
        match resolve(config, args) {
            Ok(p) => paths = p,
            Err(e) => {
                report(&e);
                return (Vec::new(), false);
            }
        }
    }
    for a in args {
        match resolve(config, std::slice::from_ref(a)) {
            Ok(p) => paths.extend(p),
            Err(e) => {
                report(&e);
                ok = false;
            }
        }
    }
    let planner = SqlPlanner::new().with_env(env);
    let mut out = Vec::new();
    for path in paths {
        let planned = async {
            let loaded = load_pipeline(&path, config)?;
            let planned = loaded.plan(&planner).await?;
            let mut g = planned.graph.clone();
            g.finalize()?;
            Ok::<_, crate::Error>((loaded, planned))
        }
        .await;
        match planned {
            Ok(p) => out.push(p),
            Err(e) => {
                report(&e);
                ok = false;
            }
        }
    }
    let mut names: Vec<&str> = out.iter().map(|(l, _)| l.name.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        eprintln!("error[PIP005]: two pipelines are named {}", w[0]);
        ok = false;
    }
    (out, ok)
}

/// Asks each table of `planned` whether the services it needs besides its data (a
/// schema registry) answer; reports every failure. `true` when all do.
async fn preflight(planned: &PlannedPipeline) -> bool {
    let mut ok = true;
    for node in &planned.graph.nodes {
        let checked = match &node.kind {
            NodeKind::Source(f) => f.preflight().await,
            NodeKind::Sink(f) => f.preflight().await,
            NodeKind::Operator(_) => Ok(()),
        };
        if let Err(e) = checked {
            report(&e);
            ok = false;
        }
    }
    ok
}

pub(super) async fn check(config: &Config, args: &[String]) -> ExitCode {
    // Every pipeline that planned is also checked against what it connects to, even
    // when another did not plan: one run of `check` shows every error.
    let (all, mut ok) = plan_each(config, args, config.connector_env()).await;
    for (l, p) in &all {
        if !preflight(p).await {
            ok = false;
            continue;
        }
        println!(
            "ok {} ({} nodes, {})",
            l.name,
            p.graph.nodes.len(),
            if p.graph.bounded() {
                "bounded"
            } else {
                "unbounded"
            }
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

pub(super) async fn explain(config: &Config, arg: &str) -> ExitCode {
    let Some(all) = plan_all(config, &[arg.to_string()]).await else {
        return ExitCode::from(2);
    };
    for (loaded, planned) in all {
        let mut g = planned.graph.clone();
        if let Err(e) = g.finalize() {
            report(&e);
            return ExitCode::from(2);
        }
        print!("{}", g.explain());
        for lookup in &planned.lookups {
            println!("  {lookup}");
        }
        println!("\nwrites:");
        for line in writes(config, &loaded, &g) {
            println!("  {line}");
        }
        for (name, stage) in &planned.stages {
            println!("\nSQL stage {name}, DataFusion physical plan (evaluated per batch):");
            for line in stage.physical_plan().lines() {
                println!("  {line}");
            }
        }
    }
    ExitCode::SUCCESS
}

/// `path` made absolute against the working directory (as the stores resolve it).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// For `explain`: what a run of `loaded` (graph `g`, finalized) writes besides its
/// logs, with the real paths: each file sink's files (one per task), each Parquet
/// sink's directory pattern, the dead-letter store, and the checkpoint store.
fn writes(config: &Config, loaded: &LoadedPipeline, g: &crate::engine::Graph) -> Vec<String> {
    let mut out = Vec::new();
    for node in &g.nodes {
        let NodeKind::Sink(f) = &node.kind else {
            continue;
        };
        let exactly_once = loaded.checkpoint.as_ref().is_some_and(|c| c.exactly_once);
        let what = f
            .writes(node.parallelism, exactly_once)
            .unwrap_or_else(|| f.describe());
        out.push(format!("sink {}: {what}", node.name));
    }
    match config.dlq.store {
        crate::pipeline::DlqStoreKind::Local => out.push(format!(
            "dead letters: {} (dlq.store = local: SQLite, shared by every pipeline; \
             `tributary dlq` reads it)",
            absolute(Path::new(&config.dlq.path)).display()
        )),
        crate::pipeline::DlqStoreKind::Kafka => out.push(format!(
            "dead letters: Kafka topic {} on cluster {} (dlq.store = kafka)",
            config.dlq.topic.replace("{domain}", &pipeline_domain(g)),
            config.dlq.cluster
        )),
    }
    match &loaded.checkpoint {
        None => out.push("checkpoints: none (no checkpoint: section)".to_string()),
        Some(plan) if plan.dynamodb.is_some() => out.push(format!(
            "checkpoints: {}, every {:?}; the newest {} kept, and savepoints",
            plan.location(),
            plan.interval,
            plan.retain
        )),
        Some(plan) => {
            let dir = absolute(&plan.dir);
            out.push(format!(
                "checkpoints: {}/<id>.json (metadata) and {}/<id>/<node>/<task>@<writer> \
                 (state), <id> zero-padded to 20 digits, every {:?}; the newest {} kept, \
                 and savepoints",
                dir.display(),
                dir.display(),
                plan.interval,
                plan.retain
            ));
        }
    }
    out
}

/// The signals that stop a run: SIGTERM, SIGINT (Ctrl-C) and SIGHUP (the terminal
/// closed, or a supervisor asking for a restart), handled alike. Listening for all of
/// them from the start replaces their default action (SIGHUP's kills the process
/// mid-write) and never misses a second signal.
pub(crate) struct StopSignals {
    #[cfg(unix)]
    listeners: Vec<(&'static str, Option<tokio::signal::unix::Signal>)>,
}

impl StopSignals {
    pub(crate) fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listeners = [
                ("SIGTERM", SignalKind::terminate()),
                ("SIGINT", SignalKind::interrupt()),
                ("SIGHUP", SignalKind::hangup()),
            ]
            .into_iter()
            .map(|(name, kind)| (name, signal(kind).ok()))
            .collect();
            StopSignals { listeners }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Waits for the next stop signal; returns its name.
    pub(crate) async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            let waits = self.listeners.iter_mut().filter_map(|(name, l)| {
                let l = l.as_mut()?;
                Some(Box::pin(async move {
                    l.recv().await;
                    *name
                }))
            });
            let waits: Vec<_> = waits.collect();
            if waits.is_empty() {
                return futures::future::pending().await;
            }
            futures::future::select_all(waits).await.0
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Resolves at the first stop signal (for commands that just end on it).
pub(crate) async fn shutdown_signal() {
    StopSignals::listen().next().await;
}

/// What a stop still waits for, per pipeline: its tasks not ended and, among them,
/// the components (Kafka clients, registries…) that are not up, with their errors.
fn waiting_for(pipelines: &[(String, Stopper)]) -> Vec<(String, Vec<String>, Vec<String>)> {
    let components = crate::health::components();
    pipelines
        .iter()
        .filter_map(|(name, s)| {
            let tasks = s.running();
            if tasks.is_empty() {
                return None;
            }
            let troubled = components
                .iter()
                .filter(|c| &c.pipeline == name && c.state != crate::health::State::Up)
                .map(|c| match &c.state {
                    crate::health::State::Retrying { last_error, .. } => format!(
                        "{} ({}) retrying for {:.0}s: {last_error}",
                        c.component,
                        c.kind,
                        c.retrying_for.as_secs_f64()
                    ),
                    other => format!("{} ({}) {}", c.component, c.kind, other.name()),
                })
                .collect();
            Some((name.clone(), tasks, troubled))
        })
        .collect()
}

/// Abandons a stop: says why and what is left (ENG008), then exits with code 3 at
/// once (see the module docs for why without unwinding).
fn abandon(reason: String, pipelines: &[(String, Stopper)]) -> ! {
    let waiting: Vec<String> = waiting_for(pipelines)
        .into_iter()
        .map(|(p, tasks, _)| format!("{p}: {}", tasks.join(", ")))
        .collect();
    let waiting = if waiting.is_empty() {
        "nothing (every task had ended)".to_string()
    } else {
        waiting.join("; ")
    };
    tracing::error!(reason = %reason, waiting = %waiting,
        "stop abandoned: exiting without waiting; with checkpoints the next start replays from the last committed one");
    report(&EngineError::StopAbandoned { reason, waiting }.into());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(3)
}

/// Stops every pipeline at the first signal, bounds the stop by `grace` (logging what
/// it waits for meanwhile) and abandons it past the grace or at a second signal.
async fn stop_on_signals(
    mut signals: StopSignals,
    pipelines: Vec<(String, Stopper)>,
    health: Arc<crate::admin::Health>,
    grace: Duration,
) {
    let first = signals.next().await;
    health.set_stopping();
    tracing::info!(
        signal = first,
        grace_s = grace.as_secs_f64(),
        "stop requested: draining pipelines and flushing sinks"
    );
    for (_, s) in &pipelines {
        s.stop();
    }
    let deadline = tokio::time::Instant::now() + grace;
    let every = (grace / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let started = Instant::now();
    let mut report_every = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            second = signals.next() => {
                tracing::warn!(signal = second, "second stop signal: stopping at once");
                abandon(format!("second signal {second}"), &pipelines);
            }
            _ = tokio::time::sleep_until(deadline) => {
                abandon(format!("run.stop_grace of {} s is over", grace.as_secs_f64()), &pipelines);
            }
            _ = report_every.tick() => {
                for (pipeline, tasks, components) in waiting_for(&pipelines) {
                    tracing::info!(
                        pipeline = %pipeline,
                        tasks = %tasks.join(", "),
                        components = %components.join("; "),
                        stopping_for_s = started.elapsed().as_secs_f64(),
                        left_s = grace.saturating_sub(started.elapsed()).as_secs_f64(),
                        "stop still waiting"
                    );
                }
            }
        }
    }
}

/// Sends `graph`'s dead letters to the configured store (`[dlq]`) and, with the local
/// store, gives its source tables their replay inboxes.
fn route_dead_letters(config: &Config, graph: &mut crate::engine::Graph) -> crate::Result<()> {
    let domain = pipeline_domain(graph);
    let store = super::dlq::open_store_for(config, Some((&graph.pipeline, &domain)))?;
    graph.dead_letters = Some(store.sink(&graph.pipeline)?);
    if config.dlq.store == crate::pipeline::DlqStoreKind::Local {
        crate::connectors::replay_inbox::add_replay_inboxes(
            graph,
            std::path::Path::new(&config.dlq.path),
        )?;
    }
    Ok(())
}

/// The business domain of a pipeline, which names its dead-letter topic: the first
/// part of its first Kafka source's topic (`orders.order_placed` → `orders`), else the
/// pipeline's name.
fn pipeline_domain(graph: &crate::engine::Graph) -> String {
    graph
        .nodes
        .iter()
        .filter_map(|n| match &n.kind {
            NodeKind::Source(f) => {
                let topic = f.topic()?;
                Some(topic.split('.').next().unwrap_or(&topic).to_string())
            }
            _ => None,
        })
        .next()
        .unwrap_or_else(|| graph.pipeline.clone())
}

pub(super) async fn run(config: &Config, args: &[String], progress: &str) -> ExitCode {
    let fallback = match config.fallback.runtime(&config.dynamodb) {
        Ok(f) => f,
        Err(e) => {
            report(&e);
            return ExitCode::from(2);
        }
    };
    let env = crate::connectors::ConnectorEnv {
        fallback: fallback.clone(),
        ..config.connector_env()
    };
    let Some(all) = plan_all_with(config, args, env).await else {
        return ExitCode::from(2);
    };
    // From here on a stop signal is ours (not the default action), even while starting.
    let signals = StopSignals::listen();
    let metrics = crate::admin::install_metrics();
    let health = Arc::new(crate::admin::Health::default());
    let savepoints = Arc::new(crate::admin::Savepoints::default());
    for (loaded, _) in all.iter().filter(|(l, _)| l.checkpoint.is_some()) {
        savepoints.expect(&loaded.name);
    }
    if !config.admin.listen.is_empty() {
        let routes = crate::admin::Routes {
            metrics: Some(metrics),
            health: health.clone(),
            savepoints: savepoints.clone(),
            dlq: Some(super::dlq::http_access(config)),
            fallback: fallback.clone(),
        };
        match crate::admin::serve(&config.admin.listen, routes).await {
            Ok(addr) => tracing::info!(%addr, routes = "/metrics /livez /readyz /healthz /dlq",
                "admin endpoint: /metrics and /healthz"),
            Err(e) => {
                eprintln!(
                    "error[ADM001]: cannot listen on {} for /metrics and the health probes: {e} (set admin.listen, or --set admin.listen='' to disable)",
                    config.admin.listen
                );
                return ExitCode::from(2);
            }
        }
    }
    let mut handles = Vec::new();
    let mut view = Progress::new(progress);
    let mut sink_names: Vec<(String, Vec<String>)> = Vec::new();
    let mut source_names: Vec<(String, Vec<String>)> = Vec::new();
    for (loaded, mut planned) in all {
        if let Err(e) = route_dead_letters(config, &mut planned.graph) {
            report(&e);
            return ExitCode::from(2);
        }
        let kinds: Vec<bool> = planned
            .graph
            .nodes
            .iter()
            .map(|n| matches!(n.kind, NodeKind::Source(_)))
            .collect();
        let sinks: Vec<bool> = planned
            .graph
            .nodes
            .iter()
            .map(|n| matches!(n.kind, NodeKind::Sink(_)))
            .collect();
        let names_of = |want: &[bool]| -> Vec<String> {
            planned
                .graph
                .nodes
                .iter()
                .zip(want)
                .filter(|(_, w)| **w)
                .map(|(n, _)| n.name.clone())
                .collect()
        };
        sink_names.push((loaded.name.clone(), names_of(&sinks)));
        source_names.push((loaded.name.clone(), names_of(&kinds)));
        tracing::info!(
            pipeline = %loaded.name,
            bounded = planned.graph.bounded(),
            nodes = planned.graph.nodes.len(),
            "starting pipeline"
        );
        let mut runtime = loaded.runtime.clone();
        if let Some(plan) = &loaded.checkpoint {
            match plan.settings().await {
                Ok(settings) => {
                    if let Some(m) = &settings.restore {
                        tracing::info!(pipeline = %loaded.name, checkpoint = m.id,
                            store = %plan.location(), "resuming from checkpoint");
                    }
                    runtime.checkpoints = Some(settings);
                }
                Err(e) => {
                    report(&e);
                    return ExitCode::from(2);
                }
            }
        }
        match Runtime::start(planned.graph, runtime) {
            Ok(h) => {
                if let Some(tx) = &h.savepoints {
                    savepoints.register(&loaded.name, tx.clone());
                }
                view.add(&loaded.name, &h.stats, &kinds, &sinks);
                handles.push((loaded.name, h));
            }
            Err(e) => {
                report(&e);
                return ExitCode::from(2);
            }
        }
    }
    // Started once every source and sink task has built its connector, so that each
    // has registered its component before readiness is judged from the table.
    let built: Vec<_> = handles.iter().map(|(_, h)| h.connectors_built()).collect();
    let started = health.clone();
    tokio::spawn(async move {
        futures::future::join_all(built).await;
        started.set_started();
    });
    let stoppers: Vec<_> = handles
        .iter()
        .map(|(name, h)| (name.clone(), h.stopper()))
        .collect();
    let signal_task = tokio::spawn(stop_on_signals(
        signals,
        stoppers,
        health.clone(),
        config.run.stop_grace(),
    ));
    let view_task = view.spawn();
    let mut waits = futures::stream::FuturesUnordered::new();
    let mut stoppers = Vec::new();
    for (name, h) in handles {
        stoppers.push(h.stopper());
        waits.push(async move { (name, h.wait().await) });
    }
    use futures::StreamExt;
    let mut failed = false;
    while let Some((name, result)) = waits.next().await {
        match result {
            Ok(report) => {
                let written: u64 = sink_names
                    .iter()
                    .filter(|(p, _)| p == &name)
                    .flat_map(|(_, sinks)| {
                        report
                            .rows_in
                            .iter()
                            .filter(|(n, _)| sinks.contains(n))
                            .map(|(_, r)| *r)
                    })
                    .sum();
                let read: u64 = source_names
                    .iter()
                    .filter(|(p, _)| p == &name)
                    .flat_map(|(_, srcs)| {
                        report
                            .rows_out
                            .iter()
                            .filter(|(n, _)| srcs.contains(n))
                            .map(|(_, r)| *r)
                    })
                    .sum();
                tracing::info!(
                    pipeline = %name,
                    elapsed_s = report.elapsed.as_secs_f64(),
                    rows_read = read,
                    rows_written = written,
                    bad_records = report.bad_records,
                    "pipeline finished"
                )
            }
            Err(e) => {
                failed = true;
                health.set_failed(&name);
                super::term::eprintln_above!("pipeline {name} failed:");
                report(&e);
                for s in &stoppers {
                    s.stop();
                }
            }
        }
    }
    signal_task.abort();
    view_task.finish().await;
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The pipeline `arg` names and where its checkpoints are; an error when it has no
/// `checkpoint:` section.
fn with_checkpoints(config: &Config, arg: &str) -> crate::Result<LoadedPipeline> {
    let path = resolve(config, &[arg.to_string()])?
        .into_iter()
        .next()
        .ok_or_else(|| PipelineError::Config(format!("no pipeline {arg}")))?;
    let loaded = load_pipeline(&path, config)?;
    if loaded.checkpoint.is_none() {
        return Err(PipelineError::Config(format!(
            "pipeline {} has no checkpoint: section",
            loaded.name
        ))
        .into());
    }
    Ok(loaded)
}

/// `tributary checkpoints PIPELINE`: the committed checkpoints and savepoints.
pub(super) async fn checkpoints(config: &Config, arg: &str) -> ExitCode {
    let listed = async {
        let loaded = with_checkpoints(config, arg)?;
        let plan = loaded
            .checkpoint
            .clone()
            .expect("with_checkpoints checked it");
        let all = plan.store().list().await?;
        Ok::<_, crate::Error>((loaded.name.clone(), plan.location(), all))
    }
    .await;
    match listed {
        Ok((name, dir, all)) => {
            println!("{name}: {} checkpoint(s) in {dir}", all.len());
            println!(
                "{:>8}  {:<24}  {:>9}  {:>12}  {:<10}  {:<16}  savepoint",
                "id", "taken (UTC)", "took ms", "bytes", "tasks", "builds on"
            );
            for m in all {
                let taken = chrono::DateTime::from_timestamp_millis(m.started_ms)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string())
                    .unwrap_or_default();
                let tasks: usize = m.parallelism.values().sum();
                // Earlier checkpoints whose blobs this one's incremental state reads
                // (its bytes are only what it wrote).
                let bases: std::collections::BTreeSet<u64> = m
                    .chains
                    .values()
                    .flatten()
                    .copied()
                    .filter(|id| *id != m.id)
                    .collect();
                let bases = if bases.is_empty() {
                    "-".to_string()
                } else {
                    bases
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "{:>8}  {:<24}  {:>9}  {:>12}  {:<10}  {:<16}  {}",
                    m.id,
                    taken,
                    m.duration_ms,
                    m.bytes,
                    tasks,
                    bases,
                    m.savepoint.as_deref().unwrap_or("")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e);
            ExitCode::from(2)
        }
    }
}

/// `tributary savepoint PIPELINE`: asks the running process (its admin endpoint) for
/// a savepoint and prints its checkpoint id.
pub(super) async fn savepoint(config: &Config, pipeline: &str, name: Option<&str>) -> ExitCode {
    if config.admin.listen.is_empty() {
        eprintln!(
            "error: admin.listen is empty: the running pipeline has no admin endpoint to ask"
        );
        return ExitCode::from(2);
    }
    let url = format!("http://{}", config.admin.listen);
    let mut path = format!("/savepoint?pipeline={pipeline}");
    if let Some(n) = name {
        path.push_str(&format!("&name={n}"));
    }
    // A savepoint is answered when its checkpoint commits: large state takes a while.
    let wait = std::time::Duration::from_secs(600);
    match crate::registry::client::post_json(&url, &path, &serde_json::json!({}), wait).await {
        Ok((200, reply)) => {
            println!(
                "savepoint {} of {pipeline}: checkpoint {}",
                reply["savepoint"].as_str().unwrap_or(""),
                reply["checkpoint"]
            );
            ExitCode::SUCCESS
        }
        Ok((status, reply)) => {
            eprintln!(
                "error: savepoint of {pipeline} refused (HTTP {status}): {}",
                reply["error"].as_str().unwrap_or("no reason given")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: cannot reach {url} (is the pipeline running? admin.listen?): {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tributary savepoint delete PIPELINE SAVEPOINT [--force]`: deletes a savepoint (by
/// name or checkpoint id) from the pipeline's checkpoint store, then its blobs unless a
/// kept checkpoint builds on them (the retention's rule,
/// [`delete_unreferenced_blobs`](crate::checkpoint::coordinator::delete_unreferenced_blobs)).
pub(super) async fn delete_savepoint(
    config: &Config,
    arg: &str,
    which: &str,
    force: bool,
) -> ExitCode {
    use crate::checkpoint::CheckpointError;
    let deleted = async {
        let loaded = with_checkpoints(config, arg)?;
        let plan = loaded
            .checkpoint
            .clone()
            .expect("with_checkpoints checked it");
        let store = plan.store();
        let all = store.list().await?;
        let not_found = |reason: String| -> crate::Error {
            let listed: Vec<String> = all
                .iter()
                .filter_map(|m| Some(format!("{} (checkpoint {})", m.savepoint.as_ref()?, m.id)))
                .collect();
            CheckpointError::SavepointNotFound {
                pipeline: loaded.name.clone(),
                reason,
                location: plan.location(),
                savepoints: if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join(", ")
                },
            }
            .into()
        };
        // By name first (a label may look like a number), then by checkpoint id.
        let named: Vec<_> = all
            .iter()
            .filter(|m| m.savepoint.as_deref() == Some(which))
            .collect();
        let target = match named.as_slice() {
            [m] => *m,
            [] => match which
                .parse::<u64>()
                .ok()
                .and_then(|id| all.iter().find(|m| m.id == id))
            {
                Some(m) => m,
                None => {
                    return Err(not_found(format!(
                        "no savepoint of {} is named or numbered {which}",
                        loaded.name
                    )));
                }
            },
            several => {
                let ids: Vec<String> = several.iter().map(|m| m.id.to_string()).collect();
                return Err(not_found(format!(
                    "{} savepoints are named {which} (checkpoints {}): give the checkpoint id",
                    several.len(),
                    ids.join(", ")
                )));
            }
        };
        let Some(name) = target.savepoint.clone() else {
            return Err(CheckpointError::NotASavepoint {
                pipeline: loaded.name.clone(),
                id: target.id,
            }
            .into());
        };
        // A restart resumes from the latest committed checkpoint (`checkpoint::latest`).
        let before = all.iter().rev().find(|m| m.id < target.id).map(|m| m.id);
        let resumes = match before {
            Some(id) => format!("a restart would resume from checkpoint {id} instead"),
            None => "with no checkpoint before it, a restart would start over".to_string(),
        };
        if all.last().map(|m| m.id) == Some(target.id) && !force {
            return Err(CheckpointError::SavepointInUse {
                pipeline: loaded.name.clone(),
                id: target.id,
                name,
                fallback: resumes,
            }
            .into());
        }
        store.delete_meta(target.id).await?;
        let kept = store.list().await?;
        let still_used = crate::checkpoint::coordinator::delete_unreferenced_blobs(
            store.as_ref(),
            &kept,
            [target.id],
        )
        .await?;
        let latest = crate::checkpoint::latest(store.as_ref())
            .await?
            .map(|m| m.id);
        Ok::<_, crate::Error>((
            loaded.name.clone(),
            plan.location(),
            target.id,
            name,
            still_used.get(&target.id).cloned(),
            latest,
        ))
    }
    .await;
    match deleted {
        Ok((pipeline, location, id, name, still_used, latest)) => {
            println!("deleted savepoint {name} (checkpoint {id}) of {pipeline} from {location}");
            match still_used {
                None => println!("  its state blobs are deleted"),
                Some(by) => {
                    let by: Vec<String> = by.iter().map(u64::to_string).collect();
                    println!(
                        "  its state blobs are kept: checkpoint(s) {} build on them; the \
                         retention deletes them once those are gone",
                        by.join(", ")
                    );
                }
            }
            match latest {
                Some(l) => println!("  a restart resumes from checkpoint {l}"),
                None => println!("  no checkpoint is left: a restart starts over"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e);
            ExitCode::from(2)
        }
    }
}
