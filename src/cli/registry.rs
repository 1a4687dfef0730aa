//! `tributary registry` (the built-in schema registry) and `tributary schemas`
//! (checking and registering the contracts in `schemas/` against a registry).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::report;
use crate::pipeline::Config;
use crate::registry::schema::AvroSchema;

/// Serves the registry until Ctrl-C / SIGTERM.
pub(super) async fn serve(config: &Config, listen: Option<&str>, dir: Option<&Path>) -> ExitCode {
    let listen = listen.unwrap_or(&config.registry.listen);
    let dir = dir.map_or_else(|| PathBuf::from(&config.registry.dir), Path::to_path_buf);
    match crate::registry::run(listen, &dir, super::run::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e.into());
            ExitCode::from(2)
        }
    }
}

/// The contracts in `dir`: (subject, file, schema text), sorted by file name. The
/// subject of `orders.order_placed.avsc` is `orders.order_placed-value` (topic name
/// strategy: the file name is the topic).
fn contracts(dir: &Path) -> Result<Vec<(String, PathBuf, String)>, crate::Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "avsc"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((format!("{stem}-value"), path, text))
        })
        .collect()
}

/// What `tributary schemas` does with each contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SchemasAction {
    /// Parse each file and test it against the registry's latest version of its subject.
    Check,
    /// Register each file as a new version of its subject (refused if incompatible).
    Register,
}

/// Checks (or registers) every `.avsc` in `dir` against the registry at `url`. Exit
/// 0 when all pass; 1 when a schema is invalid or incompatible (each one reported with
/// its file and the registry's reasons); 2 when the registry cannot be reached or
/// refuses the credentials.
pub(super) async fn schemas(
    config: &Config,
    dir: &Path,
    url: Option<&str>,
    action: SchemasAction,
) -> ExitCode {
    let url = url.unwrap_or(&config.registry.url);
    let client = match config
        .registry
        .client_settings()
        .map_err(crate::Error::from)
        .and_then(|s| crate::registry::client::RegistryClient::new(url, &s).map_err(Into::into))
    {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return ExitCode::from(2);
        }
    };
    let contracts = match contracts(dir) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return ExitCode::from(2);
        }
    };
    // Exit 1 says "incompatible": only a registry can say that.
    if let Err(e) = client.check().await {
        report(&e.into());
        return ExitCode::from(2);
    }
    let mut failed = 0;
    for (subject, path, text) in &contracts {
        if let Err(e) = AvroSchema::parse(text) {
            eprintln!("{}: invalid schema: {e}", path.display());
            failed += 1;
            continue;
        }
        let body = serde_json::json!({ "schema": text });
        let (route, verb) = match action {
            SchemasAction::Check => (
                format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"),
                "compatible with the latest version",
            ),
            SchemasAction::Register => (format!("/subjects/{subject}/versions"), "registered"),
        };
        let (status, reply) = match client.post_json(&route, &body).await {
            Ok(r) => r,
            Err(e) => {
                report(&e.into());
                return ExitCode::from(2);
            }
        };
        let code = reply["error_code"].as_u64();
        match (action, status, code) {
            (SchemasAction::Check, 200, _) if reply["is_compatible"] == true => {
                println!("{}: {subject}: {verb}", path.display());
            }
            (SchemasAction::Check, 404, Some(40401 | 40402)) => {
                println!(
                    "{}: {subject}: not registered yet (nothing to be compatible with)",
                    path.display()
                );
            }
            (SchemasAction::Register, 200, _) => {
                println!(
                    "{}: {subject}: {verb} as id {}",
                    path.display(),
                    reply["id"]
                );
            }
            _ => {
                failed += 1;
                let reasons: Vec<String> = reply["messages"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                eprintln!(
                    "{}: {subject}: not {verb} (HTTP {status}{}): {}",
                    path.display(),
                    code.map(|c| format!(", error_code {c}"))
                        .unwrap_or_default(),
                    if reasons.is_empty() {
                        reply["message"].as_str().unwrap_or("").to_string()
                    } else {
                        reasons.join("; ")
                    }
                );
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} schema(s) failed", contracts.len());
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
