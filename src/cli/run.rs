//! `tributary run`, `check` and `explain`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use super::progress::Progress;
use super::report;
use crate::engine::{NodeKind, Runtime};
use crate::pipeline::{Config, LoadedPipeline, PipelineError, discover, load_pipeline};
use crate::sql::{PlannedPipeline, SqlPlanner};

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
    let paths = match resolve(config, args) {
        Ok(p) => p,
        Err(e) => {
            report(&e);
            return None;
        }
    };
    let planner = SqlPlanner::new().with_env(crate::connectors::ConnectorEnv::from_config(config));
    let mut ok = true;
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
    ok.then_some(out)
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
    match plan_all(config, args).await {
        Some(all) => {
            let mut reachable = true;
            for (_, p) in &all {
                reachable &= preflight(p).await;
            }
            if !reachable {
                return ExitCode::from(2);
            }
            for (l, p) in &all {
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
            ExitCode::SUCCESS
        }
        None => ExitCode::from(2),
    }
}

pub(super) async fn explain(config: &Config, arg: &str) -> ExitCode {
    let Some(all) = plan_all(config, &[arg.to_string()]).await else {
        return ExitCode::from(2);
    };
    for (_, planned) in all {
        let mut g = planned.graph.clone();
        if let Err(e) = g.finalize() {
            report(&e);
            return ExitCode::from(2);
        }
        print!("{}", g.explain());
        for lookup in &planned.lookups {
            println!("  {lookup}");
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

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return futures::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub(super) async fn run(config: &Config, args: &[String], progress: &str) -> ExitCode {
    let Some(all) = plan_all(config, args).await else {
        return ExitCode::from(2);
    };
    let metrics = crate::admin::install_metrics();
    let health = Arc::new(crate::admin::Health::default());
    let savepoints = Arc::new(crate::admin::Savepoints::default());
    if !config.admin.listen.is_empty() {
        match crate::admin::serve(
            &config.admin.listen,
            metrics,
            health.clone(),
            savepoints.clone(),
        )
        .await
        {
            Ok(addr) => tracing::info!(%addr, "admin endpoint: /metrics and /healthz"),
            Err(e) => {
                eprintln!(
                    "error[ADM001]: cannot listen on {} for /metrics and /healthz: {e} (set admin.listen, or --set admin.listen='' to disable)",
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
    for (loaded, planned) in all {
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
                            dir = %plan.dir.display(), "resuming from checkpoint");
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
    let stoppers: Vec<_> = handles.iter().map(|(_, h)| h.stopper()).collect();
    let signal_task = tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stop requested: draining pipelines and flushing sinks");
        for s in &stoppers {
            s.stop();
        }
    });
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
                health.set_failed();
                eprintln!("pipeline {name} failed:");
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

/// `tributary checkpoints PIPELINE`: the committed checkpoints and savepoints.
pub(super) async fn checkpoints(config: &Config, arg: &str) -> ExitCode {
    let listed = async {
        let path = resolve(config, &[arg.to_string()])?
            .into_iter()
            .next()
            .ok_or_else(|| PipelineError::Config(format!("no pipeline {arg}")))?;
        let loaded = load_pipeline(&path, config)?;
        let Some(plan) = &loaded.checkpoint else {
            return Err(PipelineError::Config(format!(
                "pipeline {} has no checkpoint: section",
                loaded.name
            ))
            .into());
        };
        let all = plan.store().list().await?;
        Ok::<_, crate::Error>((loaded.name.clone(), plan.dir.clone(), all))
    }
    .await;
    match listed {
        Ok((name, dir, all)) => {
            println!("{name}: {} checkpoint(s) in {}", all.len(), dir.display());
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
    match crate::registry::client::post_json(&url, &path, &serde_json::json!({})).await {
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
