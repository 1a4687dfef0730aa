//! `tributary query`: SQL over the pipelines' file outputs, printed as a table, CSV
//! or JSON lines, or served over Arrow Flight SQL (`--serve`).
//!
//! The tables are found by planning the pipelines of the pipelines directory (as
//! `tributary explain` does) and asking each sink where its files are
//! (`SinkFactory::output`); `--table NAME=PATH` adds more. A pipeline that does not
//! plan is reported and left out; its tables are missing, the others are queried.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use clap::{Args, ValueEnum};
use futures::StreamExt;

use super::report;
use crate::engine::NodeKind;
use crate::pipeline::{Config, discover};
use crate::query::flight::FlightSqlEndpoint;
use crate::query::{QueryError, QuerySession, TableSpec};

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The SQL statement to run (DataFusion's dialect) over the tables: each file
    /// sink of the pipelines in the pipelines directory (configuration:
    /// run.pipelines_dir), named after its table, and each --table. `SHOW TABLES`
    /// lists them. Not with --serve.
    #[arg(required_unless_present = "serve", conflicts_with = "serve")]
    sql: Option<String>,
    /// How rows are printed: table (aligned, with a header), csv (a header line, then
    /// the rows), json (JSON lines: one object per row).
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Add a table by hand (repeatable): NAME=PATH, where PATH is a directory of
    /// Parquet files (Hive-style key=value directories become string columns), a
    /// .parquet file, or a .jsonl (.json, .ndjson) file.
    #[arg(long = "table", value_name = "NAME=PATH")]
    tables: Vec<String>,
    /// Serve the tables over Arrow Flight SQL (grpc://) until SIGTERM or Ctrl-C,
    /// instead of running one statement; the address is printed once listening.
    #[arg(long)]
    serve: bool,
    /// With --serve: the address to listen on, e.g. 127.0.0.1:0 for a free port
    /// (configuration: query.listen, default 127.0.0.1:32010).
    #[arg(long, requires = "serve")]
    listen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

/// The session with every table declared: the pipelines' sinks, then `extra`. A
/// table that cannot be declared is reported and left out; `Err` only for a bad
/// `--table`.
async fn session(config: &Config, extra: &[String]) -> crate::Result<QuerySession> {
    let session = QuerySession::new();
    let dir = Path::new(&config.run.pipelines_dir);
    let found = discover(dir).unwrap_or_default();
    if !found.is_empty() {
        let (planned, _) = super::run::plan_each(config, &[], config.connector_env()).await;
        for (loaded, planned) in planned {
            for node in &planned.graph.nodes {
                let NodeKind::Sink(f) = &node.kind else {
                    continue;
                };
                let Some(output) = f.output(node.parallelism) else {
                    continue;
                };
                let spec =
                    TableSpec::from_sink(&loaded.name, &node.name, output, node.schema.clone());
                if let Err(e) = session.register(&spec).await {
                    report(&e.into());
                }
            }
        }
    }
    for t in extra {
        session.register(&TableSpec::by_hand(t)?).await?;
    }
    Ok(session)
}

pub(super) async fn query(config: &Config, args: QueryArgs) -> ExitCode {
    let session = match session(config, &args.tables).await {
        Ok(s) => s,
        Err(e) => {
            report(&e);
            return ExitCode::from(2);
        }
    };
    if args.serve {
        let listen = args.listen.as_deref().unwrap_or(&config.query.listen);
        return serve(config, session, listen).await;
    }
    let sql = args.sql.unwrap_or_default();
    match run(&session, &sql, args.format).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = match &e {
                QueryError::Failed(_) => 1,
                _ => 2,
            };
            report(&e.into());
            ExitCode::from(code)
        }
    }
}

/// Runs `sql` and prints its rows in `format` to stdout (a closed stdout ends it
/// quietly).
async fn run(session: &QuerySession, sql: &str, format: Format) -> Result<(), QueryError> {
    let df = session.sql(sql).await?;
    let mut stream = df.execute_stream().await.map_err(crate::query::failed)?;
    let schema = stream.schema();
    let mut out = Output::new(format, schema);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(crate::query::failed)?;
        if !out.write(batch)? {
            return Ok(());
        }
    }
    out.finish()?;
    Ok(())
}

/// Prints batches as they come (csv, json) or all at the end (table: aligned).
struct Output {
    format: Format,
    schema: SchemaRef,
    held: Vec<RecordBatch>,
    csv: Option<arrow::csv::Writer<std::io::BufWriter<std::io::Stdout>>>,
    json: Option<arrow::json::LineDelimitedWriter<std::io::BufWriter<std::io::Stdout>>>,
}

/// A write error: a closed stdout (`| head`) is the end, not an error.
fn write_error(e: arrow::error::ArrowError) -> Result<bool, QueryError> {
    if let arrow::error::ArrowError::IoError(_, io) = &e
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        return Ok(false);
    }
    Err(QueryError::Failed(format!("cannot write the rows: {e}")))
}

impl Output {
    fn new(format: Format, schema: SchemaRef) -> Self {
        let stdout = || std::io::BufWriter::new(std::io::stdout());
        Output {
            format,
            schema,
            held: Vec::new(),
            csv: (format == Format::Csv).then(|| {
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(stdout())
            }),
            json: (format == Format::Json).then(|| {
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build(stdout())
            }),
        }
    }

    /// `false`: stdout is closed, stop.
    fn write(&mut self, batch: RecordBatch) -> Result<bool, QueryError> {
        let written = match self.format {
            Format::Table => {
                self.held.push(batch);
                Ok(())
            }
            Format::Csv => self.csv.as_mut().map_or(Ok(()), |w| w.write(&batch)),
            Format::Json => self.json.as_mut().map_or(Ok(()), |w| w.write(&batch)),
        };
        written.map_or_else(write_error, |()| Ok(true))
    }

    fn finish(mut self) -> Result<bool, QueryError> {
        let done = match self.format {
            Format::Table => {
                let text =
                    arrow::util::pretty::pretty_format_batches_with_schema(self.schema, &self.held)
                        .map_err(|e| QueryError::Failed(e.to_string()))?;
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "{text}")
                    .and_then(|()| stdout.flush())
                    .map_err(|e| arrow::error::ArrowError::IoError(e.to_string(), e))
            }
            Format::Csv => match self.csv.take() {
                // The header even without rows: an empty batch writes it.
                Some(mut w) => w
                    .write(&RecordBatch::new_empty(self.schema.clone()))
                    .and_then(|()| w.into_inner().flush().map_err(Into::into)),
                None => Ok(()),
            },
            Format::Json => match self.json.take() {
                Some(mut w) => w
                    .finish()
                    .and_then(|()| w.into_inner().flush().map_err(Into::into)),
                None => Ok(()),
            },
        };
        done.map_or_else(write_error, |()| Ok(true))
    }
}

/// Serves the Flight SQL endpoint on `listen` until a stop signal.
async fn serve(config: &Config, session: QuerySession, listen: &str) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            report(
                &QueryError::Serve {
                    listen: listen.to_string(),
                    message: format!("cannot listen: {e} (set query.listen or --listen)"),
                }
                .into(),
            );
            return ExitCode::from(2);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            report(&crate::Error::io(listen, e));
            return ExitCode::from(2);
        }
    };
    let tables: Vec<String> = session.tables().await.into_iter().map(|(n, _)| n).collect();
    let auth = if config.query.token.is_empty() {
        "none"
    } else {
        "bearer token"
    };
    tracing::info!(url = %format!("grpc://{addr}"), tables = %tables.join(", "), auth,
        "flight sql endpoint listening: connect an ADBC or JDBC Flight SQL driver to its url");
    println!("grpc://{addr}");
    let _ = std::io::stdout().flush();
    let endpoint = FlightSqlEndpoint::new(session, Some(config.query.token.clone()));
    // At a stop signal the endpoint finishes the calls in flight, within run.stop_grace.
    let (stopped, stopping) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        super::run::shutdown_signal().await;
        let _ = stopped.send(());
    };
    let grace = config.run.stop_grace();
    let overdue = async move {
        if stopping.await.is_err() {
            return futures::future::pending().await;
        }
        tokio::time::sleep(grace).await;
        tracing::warn!(
            grace_s = grace.as_secs_f64(),
            "flight sql calls still running after run.stop_grace: stopping without them"
        );
    };
    let served = tokio::select! {
        r = endpoint.serve(listener, signal) => r,
        () = overdue => Ok(()),
    };
    match served {
        Ok(()) => {
            tracing::info!("flight sql endpoint stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e.into());
            ExitCode::FAILURE
        }
    }
}
