//! `tributary generate`: the generator's events as JSON lines, byte-identical for the
//! same arguments, so tests and users can replay exactly the input a pipeline saw.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::connectors::generator::{GeneratorSettings, write_events};

#[derive(Debug, Args)]
pub(super) struct GenerateArgs {
    /// The generated world: restaurant or nexmark.
    #[arg(long, default_value = "restaurant")]
    world: String,
    /// Which stream of the world: orders, kitchen, app, restaurants, menu_items,
    /// customers (restaurant); bids, auctions, persons, events (nexmark).
    #[arg(long, default_value = "orders")]
    stream: String,
    /// The random seed: the same seed and options give byte-identical
    /// events, as the generator connector's `seed` option does.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How many events to write.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Write to this file instead of standard output (the default).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Generator options as in SQL, e.g. --option out_of_order=5s (repeatable).
    #[arg(long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
}

pub(super) fn generate(args: &GenerateArgs) -> ExitCode {
    let result = (|| -> crate::Result<u64> {
        let mut map = std::collections::BTreeMap::new();
        for o in &args.options {
            let (k, v) =
                o.split_once('=')
                    .ok_or_else(|| crate::connectors::ConnectorError::Other {
                        connector: "generator",
                        message: format!("--option {o}: expected key=value"),
                    })?;
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
        let settings = GeneratorSettings::from_cli(&args.world, &args.stream, args.seed, map)?;
        let (out, name): (Box<dyn Write>, PathBuf) = match &args.output {
            Some(path) => (
                Box::new(std::fs::File::create(path).map_err(|e| crate::Error::io(path, e))?),
                path.into(),
            ),
            None => (Box::new(std::io::stdout().lock()), "<stdout>".into()),
        };
        let mut w = std::io::BufWriter::new(out);
        let n = write_events(
            &args.stream,
            &args.world,
            args.seed,
            args.count,
            &settings,
            &mut w,
        )?;
        w.flush().map_err(|e| crate::Error::io(name, e))?;
        Ok(n)
    })();
    match result {
        Ok(n) => {
            if args.output.is_some() {
                eprintln!("wrote {n} events");
            }
            ExitCode::SUCCESS
        }
        // The reader closed standard output (`tributary generate | head`): it has what
        // it wanted; a quiet success, as for any Unix filter.
        Err(crate::Error::Io { source, .. })
            if args.output.is_none() && source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            super::report(&e);
            ExitCode::from(2)
        }
    }
}
