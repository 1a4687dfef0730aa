//! `tributary fallback …`: the broker-outage fallback on the command line.
//!
//! - `status`: what waits in the fallback store, per pipeline and topic (records, keys,
//!   the oldest's age), read from the store itself; and, when a running process
//!   answers on `admin.listen` (`GET /fallback`), its breakers and each pipeline's
//!   drain mode.
//! - `drain`, `pause`, `resume` `--pipeline NAME`: ask the running process (its admin
//!   endpoint's `POST /fallback/…`, like `tributary savepoint`) to drain that
//!   pipeline's backlog without the rate limit until it is empty, to stop draining, or
//!   to drain at `fallback.drain_rate` again. With `dlq.admin_token` set, they send
//!   `--token` / `TRIBUTARY_ADMIN_TOKEN` as the bearer token.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::pipeline::Config;

#[derive(Debug, Args)]
pub(crate) struct FallbackArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Records waiting per pipeline and topic: how many, over how many keys, and how
    /// long the oldest has waited; with a running process, its breakers and drains.
    Status {
        /// Only this pipeline's.
        #[arg(long)]
        pipeline: Option<String>,
        /// table (default) or json (one object per line).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Drain a pipeline's backlog without the rate limit until it is empty (asks the
    /// running process's admin endpoint).
    Drain(ControlArgs),
    /// Stop draining a pipeline's backlog: its waiting keys keep going to the store.
    Pause(ControlArgs),
    /// Drain a pipeline's backlog at `fallback.drain_rate` again (after pause or drain).
    Resume(ControlArgs),
}

#[derive(Debug, Args)]
struct ControlArgs {
    /// The pipeline's name.
    #[arg(long)]
    pipeline: String,
    /// The admin token (dlq.admin_token), when one is configured.
    #[arg(long, env = "TRIBUTARY_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub(super) async fn fallback(config: &Config, args: FallbackArgs) -> ExitCode {
    match args.action {
        Action::Status { pipeline, format } => status(config, pipeline, &format).await,
        Action::Drain(c) => control(config, "drain", c).await,
        Action::Pause(c) => control(config, "pause", c).await,
        Action::Resume(c) => control(config, "resume", c).await,
    }
}

/// `fallback drain|pause|resume`: `POST /fallback/{action}?pipeline=…` on the running
/// process.
async fn control(config: &Config, action: &str, args: ControlArgs) -> ExitCode {
    if config.admin.listen.is_empty() {
        eprintln!(
            "error: admin.listen is empty: the running pipeline has no admin endpoint to ask"
        );
        return ExitCode::from(2);
    }
    let url = format!("http://{}", config.admin.listen);
    let pipeline = &args.pipeline;
    let path = format!("/fallback/{action}?pipeline={}", query_escape(pipeline));
    let asked = crate::registry::client::admin_request(
        &url,
        hyper::Method::POST,
        &path,
        None,
        args.token.as_deref(),
    )
    .await;
    match asked {
        Ok((200, reply)) => {
            let said = match reply["mode"].as_str().unwrap_or("") {
                "unlimited" => "drain unlimited until the backlog is empty".to_string(),
                "paused" => {
                    "drain paused: its waiting keys keep going to the fallback store".to_string()
                }
                "rate-limited" => "drain rate-limited (fallback.drain_rate)".to_string(),
                other => format!("drain {other}"),
            };
            println!("pipeline {pipeline}: {said}");
            ExitCode::SUCCESS
        }
        Ok((status, reply)) => {
            let why = reply["error"].as_str().unwrap_or("no reason given");
            match reply["code"].as_str() {
                Some(code) => eprintln!("error[{code}]: fallback {action} of {pipeline}: {why}"),
                None => eprintln!(
                    "error: fallback {action} of {pipeline} refused (HTTP {status}): {why}"
                ),
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            // The admin client is the registry's: say what failed, not "schema registry".
            let why = match e {
                crate::registry::RegistryError::Unavailable { message, .. } => message,
                other => other.to_string(),
            };
            eprintln!("error: cannot reach {url} (is the pipeline running? admin.listen?): {why}");
            ExitCode::FAILURE
        }
    }
}

/// Percent-encodes a query value (a pipeline name is usually plain already).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The running process's `GET /fallback`, if one answers on `admin.listen`.
async fn running_status(config: &Config) -> Option<serde_json::Value> {
    if config.admin.listen.is_empty() {
        return None;
    }
    let url = format!("http://{}", config.admin.listen);
    match crate::registry::client::admin_request(&url, hyper::Method::GET, "/fallback", None, None)
        .await
    {
        Ok((200, reply)) if reply.is_object() => Some(reply),
        _ => None,
    }
}

async fn status(config: &Config, pipeline: Option<String>, format: &str) -> ExitCode {
    if !["table", "json"].contains(&format) {
        eprintln!("error: --format {format}: expected table or json");
        return ExitCode::from(2);
    }
    let backlog = async {
        let store = config.fallback.open(&config.dynamodb)?;
        Ok::<_, crate::Error>(store.backlog(pipeline.as_deref()).await?)
    }
    .await;
    let rows = match backlog {
        Ok(rows) => rows,
        Err(e) => {
            super::report(&e);
            return ExitCode::from(1);
        }
    };
    let running = running_status(config).await;
    let list = |key: &str| -> Vec<serde_json::Value> {
        running
            .as_ref()
            .and_then(|r| r[key].as_array().cloned())
            .unwrap_or_default()
    };
    let breakers = list("breakers");
    let drains: Vec<serde_json::Value> = list("pipelines")
        .into_iter()
        .filter(|d| {
            pipeline
                .as_deref()
                .is_none_or(|p| d["pipeline"].as_str() == Some(p))
        })
        .collect();
    let now = chrono::Utc::now().timestamp_millis();
    let waited = |ms: Option<i64>| ms.map(|t| (now - t).max(0) as f64 / 1000.0);
    if format == "json" {
        for b in &rows {
            let mut v = serde_json::to_value(b).unwrap_or_default();
            v["oldest_waiting_s"] = waited(b.oldest_stored_ms).into();
            println!("{v}");
        }
        for b in breakers {
            println!("{}", serde_json::json!({ "breaker": b }));
        }
        for d in drains {
            println!("{}", serde_json::json!({ "drain": d }));
        }
        return ExitCode::SUCCESS;
    }
    if rows.is_empty() {
        println!("nothing waits in the fallback store");
    } else {
        println!(
            "{:<24} {:<32} {:>10} {:>8} {:>14}",
            "pipeline", "topic", "records", "keys", "oldest waits"
        );
        for b in rows {
            println!(
                "{:<24} {:<32} {:>10} {:>8} {:>13.0}s",
                b.pipeline,
                b.topic,
                b.records,
                b.keys,
                waited(b.oldest_stored_ms).unwrap_or_default()
            );
        }
    }
    if running.is_none() {
        return ExitCode::SUCCESS;
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    println!();
    if breakers.is_empty() {
        println!("the running process uses no kafka cluster yet");
    } else {
        println!("{:<40} {:<10} last error", "kafka cluster", "breaker");
        for b in &breakers {
            println!(
                "{:<40} {:<10} {}",
                text(&b["cluster"]),
                text(&b["state"]),
                text(&b["last_error"])
            );
        }
    }
    if !drains.is_empty() {
        println!();
        println!(
            "{:<24} {:<14} {:>10} {:>10}",
            "pipeline", "drain", "drained", "stored"
        );
        for d in &drains {
            println!(
                "{:<24} {:<14} {:>10} {:>10}",
                text(&d["pipeline"]),
                text(&d["mode"]),
                text(&d["drained"]),
                text(&d["stored"])
            );
        }
    }
    ExitCode::SUCCESS
}
