//! `tributary fallback status`: what waits in the broker-outage fallback store, per
//! pipeline and topic (records, keys, the oldest's age).

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
    /// long the oldest has waited.
    Status {
        /// Only this pipeline's.
        #[arg(long)]
        pipeline: Option<String>,
        /// table (default) or json (one object per line).
        #[arg(long, default_value = "table")]
        format: String,
    },
}

pub(super) async fn fallback(config: &Config, args: FallbackArgs) -> ExitCode {
    let Action::Status { pipeline, format } = args.action;
    if !["table", "json"].contains(&format.as_str()) {
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
    let now = chrono::Utc::now().timestamp_millis();
    let waited = |ms: Option<i64>| ms.map(|t| (now - t).max(0) as f64 / 1000.0);
    if format == "json" {
        for b in &rows {
            let mut v = serde_json::to_value(b).unwrap_or_default();
            v["oldest_waiting_s"] = waited(b.oldest_stored_ms).into();
            println!("{v}");
        }
        return ExitCode::SUCCESS;
    }
    if rows.is_empty() {
        println!("nothing waits in the fallback store");
        return ExitCode::SUCCESS;
    }
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
    ExitCode::SUCCESS
}
