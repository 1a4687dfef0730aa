//! The command line: `run`, `check`, `explain`, `generate`, `query`, `dlq`, …
//!
//! Owns argument parsing, logging setup, and the one place where errors become what the
//! user sees (`error[CODE]: file:line:column: message`) and an exit code: 0 success,
//! 1 a pipeline failed while running, 2 invalid input (configuration, pipeline, SQL),
//! 3 a stop abandoned (`run.stop_grace` over, or a second signal).

pub(crate) mod dlq;
mod fallback;
mod generate;
mod progress;
mod query;
mod registry;
mod run;
mod term;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::pipeline::{Config, LogFormat, load_config};

#[derive(Debug, Parser)]
#[command(
    name = "tributary",
    version,
    about = "Stream processing on Apache DataFusion and Arrow"
)]
pub struct Cli {
    /// Configuration file (default: ./tributary.toml when present; environment:
    /// TRIBUTARY_CONFIG).
    #[arg(long, global = true, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,
    /// Override a configuration key: --set section.key=value (repeatable; wins over
    /// the file and TRIBUTARY__SECTION__KEY variables).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run pipelines (all of pipelines/ when none is named) until their input ends or
    /// Ctrl-C / SIGTERM / SIGHUP (bounded by run.stop_grace; a second signal stops at
    /// once).
    Run {
        /// Pipeline files, `.sql` files, or names of files in the pipelines directory
        /// (configuration: run.pipelines_dir, default pipelines); none: every
        /// pipeline there.
        pipelines: Vec<String>,
        /// Progress view: auto (on when stderr is a terminal), on, off.
        #[arg(long, default_value = "auto")]
        progress: String,
    },
    /// Plan every pipeline and report every error; exit non-zero if any.
    Check {
        /// Pipeline files, `.sql` files, or names of files in the pipelines directory
        /// (configuration: run.pipelines_dir); none: every pipeline there.
        pipelines: Vec<String>,
    },
    /// Print a pipeline's streaming plan: operators, partitioning, parallelism, the
    /// DataFusion plan of each SQL stage, and the files and stores a run writes.
    Explain {
        /// A pipeline file, or the name of one in the pipelines directory
        /// (configuration: run.pipelines_dir).
        pipeline: String,
    },
    /// Write the generator's events as JSON lines, to replay the exact same input.
    Generate(generate::GenerateArgs),
    /// Serve the built-in Confluent-compatible schema registry (REST API, Avro).
    Registry {
        /// Listen address (configuration: registry.listen, default 127.0.0.1:8081).
        #[arg(long)]
        listen: Option<String>,
        /// Directory of its state (configuration: registry.dir, default data/registry).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List a pipeline's committed checkpoints and savepoints.
    Checkpoints {
        /// A pipeline file, or the name of one in the pipelines directory; it must
        /// have a checkpoint: section.
        pipeline: String,
    },
    /// Savepoints: checkpoints taken on request and kept until deleted; a pipeline
    /// resumes from the latest checkpoint, savepoint or not, at the same or another
    /// parallelism. `tributary savepoint PIPELINE [--name LABEL]` is short for
    /// `tributary savepoint take PIPELINE [--name LABEL]`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Savepoint {
        #[command(subcommand)]
        action: Option<SavepointCommand>,
        /// The running pipeline to take a savepoint of (as `savepoint take`).
        #[arg(required = true)]
        pipeline: Option<String>,
        /// A label for it (default savepoint-<id>).
        #[arg(long)]
        name: Option<String>,
    },
    /// The dead-letter queue: list, show, stats, replay, edit, discard, audit.
    Dlq(dlq::DlqArgs),
    /// The broker-outage fallback: what waits to be sent to Kafka.
    Fallback(fallback::FallbackArgs),
    /// SQL over the pipelines' file outputs (Parquet and JSON-lines sinks, as tables
    /// named after them): print the rows, or serve them over Arrow Flight SQL.
    Query(query::QueryArgs),
    /// The Avro contracts in schemas/: check them against a registry, or register them.
    Schemas {
        #[command(subcommand)]
        action: SchemasCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SavepointCommand {
    /// Take a savepoint of a running pipeline (asks its process's admin endpoint,
    /// configuration: admin.listen) and print its checkpoint id.
    Take {
        /// The running pipeline's name.
        pipeline: String,
        /// A label for it (default savepoint-<id>).
        #[arg(long)]
        name: Option<String>,
    },
    /// List a pipeline's checkpoints and savepoints (as `tributary checkpoints`).
    List {
        /// A pipeline file, or the name of one in the pipelines directory.
        pipeline: String,
    },
    /// Delete a savepoint from the pipeline's checkpoint store (no running process
    /// needed); its state blobs go too unless a kept checkpoint builds on them.
    /// Refused for a regular checkpoint (CHK005), an unknown savepoint (CHK006), and the
    /// latest checkpoint, which a restart resumes from (CHK007, unless --force).
    Delete {
        /// A pipeline file, or the name of one in the pipelines directory.
        pipeline: String,
        /// The savepoint: its name (as given to --name) or its checkpoint id.
        savepoint: String,
        /// Delete it even when it is the latest checkpoint: a restart then resumes
        /// from the checkpoint before it, or starts over without one.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Parse every .avsc and test it against the latest version of its subject
    /// (`<file name>-value`); exit 1 if any is invalid or incompatible (for CI).
    Check {
        /// Directory of the .avsc contracts.
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
        /// Registry URL (configuration: registry.url, default http://127.0.0.1:8081).
        #[arg(long)]
        registry: Option<String>,
    },
    /// Register every .avsc as a new version of its subject (refused if incompatible).
    Register {
        /// Directory of the .avsc contracts.
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
        /// Registry URL (configuration: registry.url, default http://127.0.0.1:8081).
        #[arg(long)]
        registry: Option<String>,
    },
}

fn init_logging(config: &Config) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TRIBUTARY_LOG")
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.clone()));
    let json = match config.log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Through the terminal writer shared with `run`'s live view: log lines are written
    // above the view; with none on screen their bytes go to stderr unchanged.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(term::LogLine::default);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Prints an error the one way errors are shown, through the terminal writer (above
/// `run`'s live view if one is on screen).
pub(crate) fn report(e: &crate::Error) {
    use std::fmt::Write;
    if let crate::Error::Several(all) = e {
        all.iter().for_each(report);
        return;
    }
    let mut out = format!("error[{}]: {e}\n", e.code());
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !e.to_string().contains(&text) {
            let _ = writeln!(out, "  caused by: {text}");
        }
        source = s.source();
    }
    term::log(out.as_bytes());
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Generate(args) = &cli.command {
        return generate::generate(args);
    }
    let config = match load_config(cli.config.as_deref(), std::env::vars(), &cli.sets) {
        Ok(c) => c,
        Err(e) => {
            report(&e.into());
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tributary")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cli.command {
            Command::Run {
                pipelines,
                progress,
            } => run::run(&config, &pipelines, &progress).await,
            Command::Check { pipelines } => run::check(&config, &pipelines).await,
            Command::Explain { pipeline } => run::explain(&config, &pipeline).await,
            Command::Checkpoints { pipeline } => run::checkpoints(&config, &pipeline).await,
            Command::Savepoint {
                action,
                pipeline,
                name,
            } => match action {
                Some(SavepointCommand::Take { pipeline, name }) => {
                    run::savepoint(&config, &pipeline, name.as_deref()).await
                }
                Some(SavepointCommand::List { pipeline }) => {
                    run::checkpoints(&config, &pipeline).await
                }
                Some(SavepointCommand::Delete {
                    pipeline,
                    savepoint,
                    force,
                }) => run::delete_savepoint(&config, &pipeline, &savepoint, force).await,
                None => {
                    let pipeline = pipeline.unwrap_or_default();
                    run::savepoint(&config, &pipeline, name.as_deref()).await
                }
            },
            Command::Generate(_) => unreachable!("handled above"),
            Command::Dlq(args) => dlq::dlq(&config, args).await,
            Command::Fallback(args) => fallback::fallback(&config, args).await,
            Command::Query(args) => query::query(&config, args).await,
            Command::Registry { listen, dir } => {
                registry::serve(&config, listen.as_deref(), dir.as_deref()).await
            }
            Command::Schemas { action } => {
                let (dir, url, action) = match action {
                    SchemasCommand::Check { dir, registry } => {
                        (dir, registry, registry::SchemasAction::Check)
                    }
                    SchemasCommand::Register { dir, registry } => {
                        (dir, registry, registry::SchemasAction::Register)
                    }
                };
                registry::schemas(&config, &dir, url.as_deref(), action).await
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every subcommand and every argument (positional or flag, except clap's own
    /// `--help` and `--version`) in `cmd`'s tree without help text, as
    /// `tributary sub … <arg>` paths.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" || arg.is_global_set() && path != "tributary" {
                continue;
            }
            let text = arg
                .get_help()
                .or(arg.get_long_help())
                .map(|h| h.to_string());
            if text.as_deref().is_none_or(|t| t.trim().is_empty()) {
                out.push(format!("{path} <{id}>"));
            }
        }
        for sub in cmd.get_subcommands() {
            let here = format!("{path} {}", sub.get_name());
            if sub.get_name() == "help" {
                continue;
            }
            let text = sub
                .get_about()
                .or(sub.get_long_about())
                .map(|h| h.to_string());
            if text.as_deref().is_none_or(|t| t.trim().is_empty()) {
                out.push(here.clone());
            }
            undocumented(sub, &here, out);
        }
    }

    #[test]
    fn every_subcommand_and_argument_has_help_text() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        undocumented(&cmd, "tributary", &mut missing);
        assert!(
            missing.is_empty(),
            "without help text (add a doc comment):\n  {}",
            missing.join("\n  ")
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
