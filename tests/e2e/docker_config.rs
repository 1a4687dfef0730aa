//! The Docker stack's configuration holds, without Docker: the `tributary` service of
//! docker/compose.yaml runs its image (docker/Dockerfile: `ENTRYPOINT ["tributary"]`,
//! `ENV`, `WORKDIR`) with the compose `environment:`, the directories compose mounts
//! from docker/ and the compose `command:`. Here the built binary gets that same
//! environment (every `TRIBUTARY__*` variable of the image and the service, and the
//! others, e.g. the AWS ones) and `tributary check` plans the pipelines the command
//! runs and every other pipeline file mounted from docker/: a variable that is not a
//! configuration key (error PIP003) or a pipeline that does not plan fails the test,
//! as it would make the container restart in a loop. `check` loads the configuration
//! like `run` does; a wrong variable, an unknown section and each compose variable
//! given a value of the wrong type are shown to be refused, so the check can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_yaml_ng::Value;

use crate::common::*;

fn docker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker")
}

/// What the container of the `tributary` service gets.
struct Service {
    /// The image's `ENV`, overridden by the service's `environment:`.
    env: BTreeMap<String, String>,
    /// The service's own `environment:` only.
    compose_env: BTreeMap<String, String>,
    /// Bind mounts: (directory or file on the host, path in the container).
    mounts: Vec<(PathBuf, String)>,
    /// `command:`, the arguments after the image's `tributary` entrypoint.
    command: Vec<String>,
    /// The image's `WORKDIR`.
    workdir: String,
    depends_on: Vec<String>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `ENV` and the last `WORKDIR` of the Dockerfile (the runtime stage's).
fn dockerfile() -> (BTreeMap<String, String>, String) {
    let file = std::fs::read_to_string(docker_dir().join("Dockerfile")).unwrap();
    let joined = file.replace("\\\n", " ");
    let mut env = BTreeMap::new();
    let mut workdir = None;
    for line in joined.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("Dockerfile ENV: expected KEY=VALUE, got {pair}"));
                env.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        } else if let Some(dir) = line.strip_prefix("WORKDIR ") {
            workdir = Some(dir.trim().to_string());
        }
    }
    (env, workdir.expect("the Dockerfile sets a WORKDIR"))
}

fn service() -> Service {
    let path = docker_dir().join("compose.yaml");
    let compose: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let svc = &compose["services"]["tributary"];
    assert!(
        svc.is_mapping(),
        "{} has a tributary service",
        path.display()
    );

    let mut compose_env = BTreeMap::new();
    match &svc["environment"] {
        Value::Mapping(m) => {
            for (k, v) in m {
                compose_env.insert(text(k), text(v));
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let item = text(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                compose_env.insert(k.to_string(), v.to_string());
            }
        }
        Value::Null => {}
        other => panic!("environment: {other:?}"),
    }

    let mut mounts = Vec::new();
    for v in svc["volumes"].as_sequence().into_iter().flatten() {
        let (source, target) = match v {
            Value::String(s) => {
                let mut parts = s.split(':');
                let source = parts.next().unwrap().to_string();
                let target = parts.next().unwrap_or_default().to_string();
                (source, target)
            }
            long => (text(&long["source"]), text(&long["target"])),
        };
        // Named volumes (`tributary-data:/app/data`) hold no file of the repository.
        if source.starts_with('.') || source.starts_with('/') {
            let host = docker_dir().join(&source);
            assert!(
                host.exists(),
                "mounted {source} exists ({})",
                host.display()
            );
            mounts.push((host, target));
        }
    }

    let command = match &svc["command"] {
        Value::Sequence(items) => items.iter().map(text).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        other => panic!("the tributary service names its command: {other:?}"),
    };
    let depends_on = match &svc["depends_on"] {
        Value::Mapping(m) => m.keys().map(text).collect(),
        Value::Sequence(items) => items.iter().map(text).collect(),
        _ => Vec::new(),
    };

    let (mut env, workdir) = dockerfile();
    env.extend(compose_env.clone());
    Service {
        env,
        compose_env,
        mounts,
        command,
        workdir,
        depends_on,
    }
}

impl Service {
    /// The host file behind a path in the container (relative to `WORKDIR` or absolute),
    /// through the bind mounts; `None` when no mount holds it.
    fn host_path(&self, in_container: &str) -> Option<PathBuf> {
        let absolute = if in_container.starts_with('/') {
            in_container.to_string()
        } else {
            format!("{}/{in_container}", self.workdir.trim_end_matches('/'))
        };
        self.mounts.iter().find_map(|(host, target)| {
            let rest = absolute.strip_prefix(target.as_str())?;
            if rest.is_empty() {
                return Some(host.clone());
            }
            Some(host.join(rest.strip_prefix('/')?))
        })
    }

    /// Every pipeline file the service sees from docker/: those its command names and
    /// every other `*.yaml` of a mounted directory.
    fn pipelines(&self) -> (Vec<PathBuf>, Vec<String>) {
        assert_eq!(
            self.command.first().map(String::as_str),
            Some("run"),
            "the tributary service runs pipelines: {:?}",
            self.command
        );
        let mut files = BTreeSet::new();
        let mut sets = Vec::new();
        let mut args = self.command[1..].iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--set" => sets.push(args.next().expect("--set has a value").clone()),
                "--progress" => {
                    args.next();
                }
                flag if flag.starts_with('-') => {
                    panic!("teach docker_config.rs what {flag} in the command means")
                }
                file => {
                    let host = self.host_path(file).unwrap_or_else(|| {
                        panic!("the command's {file} is mounted from docker/ (volumes)")
                    });
                    assert!(host.is_file(), "{} exists", host.display());
                    files.insert(host);
                }
            }
        }
        assert!(
            !files.is_empty(),
            "the command names the pipelines it runs: {:?}",
            self.command
        );
        for (host, _) in &self.mounts {
            if host.is_dir() {
                for e in std::fs::read_dir(host).unwrap() {
                    let p = e.unwrap().path();
                    if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                        files.insert(p);
                    }
                }
            }
        }
        (files.into_iter().collect(), sets)
    }

    /// `tributary check` of every pipeline, in a fresh working directory holding what
    /// the container's holds from docker/ (a mounted `tributary.toml`), with the
    /// container's environment plus `extra`.
    fn check(&self, extra: &[(&str, &str)]) -> Output {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (files, sets) = self.pipelines();
        let mut c = tributary(d);
        c.envs(&self.env);
        if let Some(toml) = self.host_path("tributary.toml") {
            std::fs::copy(&toml, d.join("tributary.toml")).unwrap();
        }
        if let Some(config) = self.env.get("TRIBUTARY_CONFIG") {
            let host = self
                .host_path(config)
                .unwrap_or_else(|| panic!("TRIBUTARY_CONFIG={config} is mounted from docker/"));
            c.env("TRIBUTARY_CONFIG", host);
        }
        c.envs(extra.iter().copied());
        c.arg("check");
        for s in &sets {
            c.args(["--set", s]);
        }
        c.args(&files);
        c.stdin(std::process::Stdio::null()).output().unwrap()
    }
}

fn pipeline_name(file: &Path) -> String {
    let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    text(&doc["name"])
}

#[test]
fn the_compose_environment_is_accepted_and_every_mounted_pipeline_checks() {
    let svc = service();
    let vars: Vec<&String> = svc
        .compose_env
        .keys()
        .filter(|k| k.starts_with("TRIBUTARY__"))
        .collect();
    assert!(
        !vars.is_empty(),
        "the service configures Tributary through TRIBUTARY__* variables"
    );
    let (files, _) = svc.pipelines();
    // The compose stack's registry service, here a built-in registry on a free port:
    // `check` asks it about the Avro sinks' contracts.
    let registry_dir = tempfile::tempdir().unwrap();
    let (_registry, url) = crate::registry::start_registry(registry_dir.path());
    // and the dynamodb service, the tests' DynamoDB-API server (its tables looked up).
    let dynamodb = std::env::var("TRIBUTARY_TEST_DYNAMODB")
        .expect("TRIBUTARY_TEST_DYNAMODB: run scripts/test, or scripts/dynamodb start");
    let o = svc.check(&[
        ("TRIBUTARY__REGISTRY__URL", url.as_str()),
        ("TRIBUTARY__DYNAMODB__ENDPOINT", dynamodb.as_str()),
    ]);
    println!(
        "tributary check with {} TRIBUTARY__* variables ({vars:?}) of {} files:\n{}",
        svc.env
            .keys()
            .filter(|k| k.starts_with("TRIBUTARY__"))
            .count(),
        files.len(),
        stdout(&o)
    );
    ok(&o);
    for f in &files {
        let name = pipeline_name(f);
        assert!(
            stdout(&o).contains(&format!("ok {name} ")),
            "check planned {name} ({}):\n{}",
            f.display(),
            stdout(&o)
        );
    }
}

#[test]
fn the_compose_stack_runs_its_pipelines_against_its_own_services() {
    let svc = service();
    // Each service tributary waits for is an address in its configuration (the Kafka
    // cluster's servers, the DynamoDB endpoint), so the pipelines use the stack.
    for dep in &svc.depends_on {
        assert!(
            svc.compose_env
                .iter()
                .any(|(k, v)| k.starts_with("TRIBUTARY__") && v.contains(&format!("{dep}:"))),
            "a TRIBUTARY__ variable points at the {dep} service: {:?}",
            svc.compose_env
        );
    }
    assert!(
        svc.depends_on.iter().any(|d| d == "kafka"),
        "tributary waits for kafka: {:?}",
        svc.depends_on
    );
    let (files, _) = svc.pipelines();
    let sql: String = files
        .iter()
        .map(|f| {
            let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            let sql = text(&doc["sql"]);
            let path = f.parent().unwrap().join(&sql);
            std::fs::read_to_string(&path).unwrap_or(sql)
        })
        .collect();
    assert!(
        sql.contains("connector = 'kafka'"),
        "the stack's pipelines read or write Kafka"
    );
}

/// A failed `check` with a configuration error (PIP003) naming `what`.
fn refused(o: &Output, what: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "refused ({what}):\n{}", stdout(o));
    assert!(
        err.contains("error[PIP003]") && err.contains(what),
        "PIP003 naming {what}:\n{err}"
    );
}

#[test]
fn a_wrong_variable_beside_the_compose_environment_is_refused() {
    let svc = service();
    // The key compose once set: bootstrap servers belong to a cluster, not to [kafka].
    refused(
        &svc.check(&[("TRIBUTARY__KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")]),
        "bootstrap_servers",
    );
    refused(&svc.check(&[("TRIBUTARY__NOPE__X", "1")]), "nope");
    // Each compose variable is read by `check`: a value of the wrong type is refused.
    for k in svc
        .compose_env
        .keys()
        .filter(|k| k.starts_with("TRIBUTARY__"))
    {
        let o = svc.check(&[(k.as_str(), "[1]")]);
        assert!(
            !o.status.success() && stderr(&o).contains("error[PIP003]"),
            "{k}=[1] is refused:\n{}",
            stderr(&o)
        );
    }
}
