//! Configuration layers: built-in `default.toml` → config file → environment
//! (`TRIBUTARY__SECTION__KEY=value`) → `--set section.key=value` flags. Every layer is
//! merged as TOML and the result deserialized once, refusing unknown keys.

use std::path::Path;

use serde::Deserialize;

use super::PipelineError;

const DEFAULTS: &str = include_str!("default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub run: RunConfig,
    pub registry: RegistryConfig,
    pub pipeline: PipelineDefaults,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub kafka: crate::connectors::kafka::KafkaConfig,
    pub dlq: DlqConfig,
    pub dynamodb: crate::connectors::dynamodb::DynamoConfig,
    pub fallback: FallbackConfig,
    pub query: QueryConfig,
}

/// `tributary query --serve`: the Arrow Flight SQL endpoint (`[query]`, default.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Where the Flight SQL endpoint listens (`--listen` wins).
    pub listen: String,
    /// The bearer token every Flight SQL call must carry ("" for none).
    pub token: String,
}

/// Where Kafka output waits while its cluster is down, and when a cluster counts as
/// down (`[fallback]`, default.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    pub enabled: bool,
    pub store: FallbackStoreKind,
    pub path: String,
    pub failures: u32,
    pub open_after: String,
    pub probe_interval: String,
    pub attempt_timeout: String,
    pub drain_rate: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackStoreKind {
    Local,
    Dynamodb,
}

impl FallbackConfig {
    /// The breaker's settings; errors name the key.
    pub fn breaker(&self) -> Result<crate::fallback::BreakerSettings, PipelineError> {
        let duration = |key: &str, v: &str| {
            crate::connectors::parse_duration(v)
                .map_err(|e| PipelineError::Config(format!("fallback.{key}: {e}")))
        };
        let settings = crate::fallback::BreakerSettings {
            failures: self.failures,
            open_after: duration("open_after", &self.open_after)?,
            probe_interval: duration("probe_interval", &self.probe_interval)?,
        };
        settings
            .check()
            .map_err(|e| PipelineError::Config(e.to_string()))?;
        Ok(settings)
    }

    /// The fallback's settings; errors name the key.
    pub fn settings(&self) -> Result<crate::fallback::FallbackSettings, PipelineError> {
        let attempt_timeout = crate::connectors::parse_duration(&self.attempt_timeout)
            .map_err(|e| PipelineError::Config(format!("fallback.attempt_timeout: {e}")))?;
        if attempt_timeout.is_zero() {
            return Err(PipelineError::Config(
                "fallback.attempt_timeout: must be more than 0".into(),
            ));
        }
        Ok(crate::fallback::FallbackSettings {
            breaker: self.breaker()?,
            attempt_timeout,
            drain_rate: self.drain_rate,
        })
    }

    /// The process's fallback (its store opened at first use), unless disabled.
    pub fn runtime(
        &self,
        dynamodb: &crate::connectors::dynamodb::DynamoConfig,
    ) -> crate::Result<Option<std::sync::Arc<crate::fallback::Fallback>>> {
        if !self.enabled {
            return Ok(None);
        }
        let settings = self.settings()?;
        let (config, dynamodb) = (self.clone(), dynamodb.clone());
        let opener: crate::fallback::runtime::Opener = Box::new(move || {
            config.open(&dynamodb).map_err(|e| match e {
                crate::Error::Fallback(e) => e,
                other => crate::fallback::FallbackError::Config(other.to_string()),
            })
        });
        Ok(Some(std::sync::Arc::new(crate::fallback::Fallback::new(
            settings, opener,
        ))))
    }

    /// Opens the configured fallback store.
    pub fn open(
        &self,
        dynamodb: &crate::connectors::dynamodb::DynamoConfig,
    ) -> crate::Result<std::sync::Arc<dyn crate::fallback::FallbackStore>> {
        Ok(match self.store {
            FallbackStoreKind::Local => std::sync::Arc::new(
                crate::fallback::local::LocalFallbackStore::open(&self.path)?,
            ),
            FallbackStoreKind::Dynamodb => std::sync::Arc::new(
                crate::fallback::dynamodb::DynamoFallbackStore::new(&dynamodb.settings()?),
            ),
        })
    }
}

impl Config {
    /// What connectors read from the configuration: clusters, the registry's URL and
    /// client settings.
    pub fn connector_env(&self) -> crate::connectors::ConnectorEnv {
        crate::connectors::ConnectorEnv {
            kafka: self.kafka.clone(),
            registry_url: Some(self.registry.url.clone()).filter(|u| !u.is_empty()),
            // Checked when the configuration was loaded.
            registry: self.registry.client_settings().unwrap_or_default(),
            dynamodb: self.dynamodb.clone(),
            fallback: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub pipelines_dir: String,
    /// How long a stop (SIGTERM, SIGINT, SIGHUP) may drain before it is abandoned (a
    /// duration: "30s"); see [`RunConfig::stop_grace`].
    pub stop_grace: String,
}

impl RunConfig {
    /// `stop_grace` as a duration (validated when the configuration is loaded).
    pub fn stop_grace(&self) -> std::time::Duration {
        crate::connectors::parse_duration(&self.stop_grace)
            .expect("run.stop_grace is validated by load_config")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineDefaults {
    pub parallelism: usize,
    pub batch_size: usize,
    pub flush_interval: String,
    pub channel_capacity: usize,
    /// Most state one task of a stateful operator may hold (a size: "1GB", "512MB").
    pub state_memory_limit: String,
    /// Where pipelines with `checkpoint:` keep them (one directory per pipeline).
    pub checkpoint_dir: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Where `tributary registry` listens (Confluent's port by default).
    pub listen: String,
    /// Where it keeps its subjects, versions and ids.
    pub dir: String,
    /// The registry Avro tables (unless they name one), `tributary schemas` and
    /// `tributary check` talk to: `http://` or `https://`, credentials allowed in it
    /// (`https://KEY:SECRET@host`).
    pub url: String,
    /// Confluent's `basic.auth.user.info`: `KEY:SECRET` sent as HTTP basic
    /// authentication ("" for none; credentials in a URL win).
    pub basic_auth_user_info: String,
    /// A PEM file of CA certificates trusted, for HTTPS, besides the built-in roots
    /// ("" for none).
    pub ca_file: String,
    /// The longest one request to the registry may take.
    pub request_timeout: String,
    /// How long an Avro table waits out an unavailable registry (retrying, holding
    /// its records) before the pipeline fails.
    pub outage_timeout: String,
}

impl RegistryConfig {
    /// How clients of the registry connect, authenticate and wait.
    pub fn client_settings(
        &self,
    ) -> Result<crate::registry::client::ClientSettings, PipelineError> {
        let duration = |key: &str, v: &str| {
            crate::connectors::parse_duration(v)
                .map_err(|e| PipelineError::Config(format!("registry.{key}: {e}")))
        };
        let request_timeout = duration("request_timeout", &self.request_timeout)?;
        if request_timeout.is_zero() {
            return Err(PipelineError::Config(
                "registry.request_timeout: must be more than 0".into(),
            ));
        }
        Ok(crate::registry::client::ClientSettings {
            basic_auth_user_info: Some(self.basic_auth_user_info.clone()).filter(|s| !s.is_empty()),
            ca_file: Some(self.ca_file.clone())
                .filter(|s| !s.is_empty())
                .map(Into::into),
            request_timeout,
            outage_timeout: duration("outage_timeout", &self.outage_timeout)?,
        })
    }
}

/// Where dead letters are kept and who may change them (`[dlq]`, default.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    pub store: DlqStoreKind,
    pub path: String,
    pub topic: String,
    pub cluster: String,
    pub admin_token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DlqStoreKind {
    Local,
    Kafka,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// A `section.key` path and a value, parsed as TOML when it is a TOML scalar
/// (`8`, `true`, `"x"`) and taken as a string otherwise.
fn set_path(
    table: &mut toml::Table,
    path: &str,
    raw: &str,
    origin: &str,
) -> Result<(), PipelineError> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(PipelineError::Config(format!(
            "{origin}: '{path}' must be section.key, e.g. admin.listen"
        )));
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let section = table
        .entry(parts[0].to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match section {
        toml::Value::Table(s) => {
            s.insert(parts[1].to_string(), value);
            Ok(())
        }
        _ => Err(PipelineError::Config(format!(
            "{origin}: {} is not a section",
            parts[0]
        ))),
    }
}

/// Loads the configuration. `file`: an explicit config file (must exist), else
/// `./tributary.toml` when present. `env`: the process environment (passed in so tests
/// control it). `sets`: `section.key=value` flags.
pub fn load_config(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    sets: &[String],
) -> Result<Config, PipelineError> {
    let defaults: toml::Table = DEFAULTS.parse().expect("built-in defaults are valid TOML");
    let mut table = defaults.clone();
    // Where each key given by a layer was set (dotted path → place), so an error
    // names the layer and place that caused it: `tributary.toml:3:1`, an environment
    // variable, a --set flag.
    let mut origins: Vec<(String, String)> = Vec::new();
    let default_file = Path::new("tributary.toml");
    let chosen = match file {
        Some(f) => Some(f),
        None if default_file.exists() => Some(default_file),
        None => None,
    };
    if let Some(path) = chosen {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PipelineError::Config(format!("cannot read {}: {e}", path.display())))?;
        let place = |offset: usize| {
            let (line, column) = line_column(&text, offset);
            format!("{}:{line}:{column}", path.display())
        };
        let layer: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map_or_else(|| path.display().to_string(), |s| place(s.start));
            PipelineError::Config(format!("{at}: {}", e.message()))
        })?;
        let leaves = leaf_offsets(&text);
        merge(&mut table, layer.clone());
        if let Err(message) = deserialize(&table) {
            // The first key of the file that is wrong on its own, else the file.
            let culprit = leaves.iter().find(|(key, _)| {
                let mut alone = defaults.clone();
                leaf(&layer, key).is_some_and(|v| {
                    insert_path(&mut alone, key, v.clone());
                    deserialize(&alone).is_err()
                })
            });
            let at = culprit.map_or_else(
                || path.display().to_string(),
                |(key, offset)| format!("{}: {}", place(*offset), key.join(".")),
            );
            return Err(PipelineError::Config(format!("{at}: {message}")));
        }
        origins.extend(
            leaves
                .iter()
                .map(|(key, offset)| (key.join("."), place(*offset))),
        );
    }
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("TRIBUTARY__"))
        .collect();
    env.sort();
    let mut layers: Vec<(String, String, String)> = env
        .into_iter()
        .map(|(k, v)| {
            let path = k["TRIBUTARY__".len()..].to_lowercase().replace("__", ".");
            (path, v, format!("environment variable {k}"))
        })
        .collect();
    for s in sets {
        let Some((path, value)) = s.split_once('=') else {
            return Err(PipelineError::Config(format!(
                "--set {s}: expected section.key=value"
            )));
        };
        layers.push((
            path.trim().to_string(),
            value.trim().to_string(),
            format!("--set {s}"),
        ));
    }
    for (path, value, origin) in layers {
        set_path(&mut table, &path, &value, &origin)?;
        if let Err(message) = deserialize(&table) {
            return Err(PipelineError::Config(format!("{origin}: {message}")));
        }
        origins.push((path, origin));
    }
    let config = deserialize(&table).map_err(PipelineError::Config)?;
    // Checks of values: their messages name the key, which names the place.
    let placed = |e: PipelineError| match e {
        PipelineError::Config(m) => PipelineError::Config(at_origin(m, &origins)),
        other => other,
    };
    let duration = |key: &str, v: &str| {
        crate::connectors::parse_duration(v)
            .map_err(|e| PipelineError::Config(format!("{key}: {e}")))
    };
    duration("pipeline.flush_interval", &config.pipeline.flush_interval).map_err(placed)?;
    duration("run.stop_grace", &config.run.stop_grace).map_err(placed)?;
    config
        .kafka
        .validate()
        .map_err(|m| placed(PipelineError::Config(m)))?;
    config.registry.client_settings().map_err(placed)?;
    config
        .dynamodb
        .settings()
        .map_err(|e| placed(PipelineError::Config(e.to_string())))?;
    config.fallback.settings().map_err(placed)?;
    Ok(config)
}

/// The merged layers as a [`Config`], or what is wrong (with did-you-mean for keys).
fn deserialize(table: &toml::Table) -> Result<Config, String> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| crate::error::with_did_you_mean(e.message().to_string()))
}

/// `message` prefixed with the place that set the key it names (the longest key
/// given by a layer that it mentions), if any.
fn at_origin(message: String, origins: &[(String, String)]) -> String {
    let named = origins
        .iter()
        .rev()
        .filter(|(key, _)| message.contains(key.as_str()))
        .max_by_key(|(key, _)| key.len());
    match named {
        Some((_, origin)) => format!("{origin}: {message}"),
        None => message,
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Every leaf key of a TOML text (a value that is not a table), in the order
/// written, with the byte offset of its key.
fn leaf_offsets(text: &str) -> Vec<(Vec<String>, usize)> {
    fn walk(
        table: &toml::de::DeTable<'_>,
        prefix: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, usize)>,
    ) {
        for (key, value) in table {
            prefix.push(key.get_ref().to_string());
            match value.get_ref() {
                toml::de::DeValue::Table(t) if !t.is_empty() => walk(t, prefix, out),
                _ => out.push((prefix.clone(), key.span().start)),
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    if let Ok(doc) = toml::de::DeTable::parse(text) {
        walk(doc.get_ref(), &mut Vec::new(), &mut out);
    }
    out.sort_by_key(|(_, offset)| *offset);
    out
}

fn leaf<'t>(table: &'t toml::Table, key: &[String]) -> Option<&'t toml::Value> {
    let (last, parents) = key.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get(p)?.as_table()?;
    }
    t.get(last)
}

fn insert_path(table: &mut toml::Table, key: &[String], value: toml::Value) {
    let Some((last, parents)) = key.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("made a table above");
    }
    t.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_unknown_keys_are_refused() {
        let c = load_config(None, vec![], &[]).unwrap();
        assert_eq!(c.pipeline.parallelism, 1);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "[pipeline]\nparallelism = 3\nbatch_size = 100\n").unwrap();
        let env = vec![(
            "TRIBUTARY__PIPELINE__PARALLELISM".to_string(),
            "5".to_string(),
        )];
        let c = load_config(Some(&f), env.clone(), &[]).unwrap();
        assert_eq!((c.pipeline.parallelism, c.pipeline.batch_size), (5, 100));
        let c = load_config(Some(&f), env, &["pipeline.parallelism=7".into()]).unwrap();
        assert_eq!(c.pipeline.parallelism, 7);

        let bad = vec![(
            "TRIBUTARY__PIPELINE__PARALELISM".to_string(),
            "5".to_string(),
        )];
        let e = load_config(None, bad, &[]).unwrap_err().to_string();
        assert!(e.contains("paralelism"), "{e}");
        std::fs::write(&f, "[nope]\nx = 1\n").unwrap();
        let e = load_config(Some(&f), vec![], &[]).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let e = load_config(None, vec![], &["pipeline.flush_interval=soon".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("flush_interval"), "{e}");
        assert_eq!(c.run.stop_grace(), std::time::Duration::from_secs(30));
        let c = load_config(None, vec![], &["run.stop_grace=2s".into()]).unwrap();
        assert_eq!(c.run.stop_grace(), std::time::Duration::from_secs(2));
        let e = load_config(None, vec![], &["run.stop_grace=forever".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("run.stop_grace"), "{e}");
    }

    /// Each error names the layer and the place that caused it.
    #[test]
    fn errors_name_the_layer_and_place() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tributary.toml");
        let file = f.display().to_string();
        let err = |file: Option<&Path>, env: &[(&str, &str)], sets: &[&str]| {
            let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            load_config(file, env, &sets).unwrap_err().to_string()
        };
        std::fs::write(&f, "[run]\nstop_grace = \"5s\"\n\n[kafka]\nbogus = 1\n").unwrap();
        let e = err(Some(&f), &[], &[]);
        assert!(
            e.contains(&format!("{file}:5:1: kafka.bogus: unknown field `bogus`")),
            "{e}"
        );
        std::fs::write(&f, "[admin]\n  listen = 5\n").unwrap();
        let e = err(Some(&f), &[], &[]);
        assert!(
            e.contains(&format!("{file}:2:3: admin.listen: invalid type")),
            "{e}"
        );
        std::fs::write(&f, "[admin]\nlisten = \n").unwrap();
        let e = err(Some(&f), &[], &[]);
        assert!(e.contains(&format!("{file}:2:")), "{e}");
        std::fs::write(&f, "[run]\n\nstop_grace = \"forever\"\n").unwrap();
        let e = err(Some(&f), &[], &[]);
        assert!(
            e.contains(&format!("{file}:3:1: run.stop_grace: expected a duration")),
            "{e}"
        );
        let e = err(None, &[("TRIBUTARY__ADMIN__LISTEN", "5")], &[]);
        assert!(
            e.contains("environment variable TRIBUTARY__ADMIN__LISTEN: invalid type"),
            "{e}"
        );
        let e = err(None, &[("TRIBUTARY__RUN__STOP_GRACE", "soon")], &[]);
        assert!(
            e.contains("environment variable TRIBUTARY__RUN__STOP_GRACE: run.stop_grace"),
            "{e}"
        );
        let e = err(None, &[], &["run.pipelines_dirr=x"]);
        assert!(e.contains("--set run.pipelines_dirr=x: unknown field `pipelines_dirr` (did you mean `pipelines_dir`?)"), "{e}");
    }

    #[test]
    fn registry_client_settings_come_from_the_registry_section() {
        let c = load_config(None, vec![], &[]).unwrap();
        let s = c.registry.client_settings().unwrap();
        assert_eq!(s.basic_auth_user_info, None);
        assert_eq!(s.ca_file, None);
        assert_eq!(s.outage_timeout, std::time::Duration::from_secs(300));
        assert_eq!(s.request_timeout, std::time::Duration::from_secs(10));
        let env = vec![(
            "TRIBUTARY__REGISTRY__BASIC_AUTH_USER_INFO".to_string(),
            "KEY:SECRET".to_string(),
        )];
        let c = load_config(
            None,
            env,
            &[
                "registry.outage_timeout=2s".into(),
                "registry.ca_file=ca.pem".into(),
            ],
        )
        .unwrap();
        let s = c.registry.client_settings().unwrap();
        assert_eq!(s.basic_auth_user_info.as_deref(), Some("KEY:SECRET"));
        assert_eq!(s.ca_file, Some("ca.pem".into()));
        assert_eq!(s.outage_timeout, std::time::Duration::from_secs(2));
        let e = load_config(None, vec![], &["registry.outage_timeout=soon".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("registry.outage_timeout"), "{e}");
    }
}
