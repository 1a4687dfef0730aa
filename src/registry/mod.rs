//! The built-in schema registry: a Confluent-compatible Avro schema registry.
//!
//! Producers and consumers that use Confluent's serializers (Confluent wire format:
//! magic byte 0, a 4-byte big-endian schema id, then the Avro body) talk to it over
//! Confluent's REST API, so no separate registry service is needed for development
//! and small deployments.
//!
//! The module owns:
//! - [`schema`]: the Avro schema model, parser and canonical forms;
//! - [`compat`]: schema resolution (reader vs writer) and compatibility levels;
//! - [`store`]: durable state in a local directory (subjects, versions, global ids,
//!   configuration);
//! - [`Registry`] (here): the registry's operations and rules, on top of the store;
//! - [`server`]: the HTTP/1.1 REST API.
//!
//! Invariants the registry keeps (beyond those of its parts):
//! - a subject's live (not soft-deleted) versions are mutually compatible as the
//!   subject's level (else the global level) required when each was registered:
//!   registration checks and appends under the store's single-writer lock, so two
//!   concurrent registrations cannot both pass against the same latest version;
//! - registering a schema a subject already has as a live version returns that
//!   version's id and changes nothing;
//! - a schema id, once handed out, always denotes the same schema, and stays readable
//!   by id while any version (even soft-deleted) refers to it.
//!
//! Errors are [`RegistryError`], with a stable code (`REG001`…) for logs and the CLI,
//! and Confluent's numeric `error_code` and HTTP status for REST clients.

#![warn(missing_docs)]

pub mod client;
pub mod compat;
pub mod schema;
pub mod server;
pub mod store;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::compat::{CompatibilityLevel, Violation, check_level};
use self::schema::AvroSchema;
use self::store::{State, Store, SubjectRecord};

/// Every error of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// REG001, 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// REG002, 40402.
    #[error("Version {version} not found for subject '{subject}'.")]
    VersionNotFound {
        /// The subject.
        subject: String,
        /// The version asked for.
        version: String,
    },
    /// REG003, 40403: no schema has this id.
    #[error("Schema {0} not found")]
    SchemaIdNotFound(String),
    /// REG004, 40403: the subject has no version with this schema.
    #[error("Schema not found under subject '{0}'")]
    SchemaNotFound(String),
    /// REG005, 40404.
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// REG006, 40405.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// REG007, 40406.
    #[error(
        "Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// REG008, 40407.
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// REG009, 40408.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectLevelNotConfigured(String),
    /// REG010, 42201.
    #[error("Invalid schema: {message} (at {path})")]
    InvalidSchema {
        /// Where in the schema JSON, e.g. `/fields/2/type`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// REG011, 42202.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// REG012, 42203.
    #[error(
        "Invalid compatibility level '{0}'. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel(String),
    /// REG013, 409.
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" (compatibility {level}): {}",
        .messages.join("; ")
    )]
    Incompatible {
        /// The subject.
        subject: String,
        /// The level that was checked.
        level: CompatibilityLevel,
        /// One line per failed rule and previous version.
        messages: Vec<String>,
    },
    /// REG014, 50001.
    #[error("registry store error on {path}: {source}")]
    Store {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// REG015, 50001.
    #[error("registry state file {path} is damaged: {message}")]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// REG016, 50001.
    #[error("registry directory {0} is in use by another registry process")]
    DirectoryLocked(PathBuf),
    /// REG017, 400.
    #[error("Bad request: {0}")]
    BadRequest(String),
    /// REG018, 404.
    #[error("HTTP 404 Not Found: no route for {method} {path}")]
    RouteNotFound {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// REG019, 405.
    #[error("HTTP 405 Method Not Allowed: {method} {path}")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// REG020, 413.
    #[error("Request body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// REG021, 415.
    #[error(
        "Unsupported Content-Type '{0}': use application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json or application/json"
    )]
    UnsupportedMediaType(String),
    /// REG022, 404: schema/subject associations (Confluent's newer API) are not kept.
    #[error(
        "No association found for resource '{0}': this registry keeps no associations; use the subject name strategy (e.g. <topic>-value)"
    )]
    AssociationsUnsupported(String),
    /// REG023: the listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// REG024: a registry client's settings are wrong (URL, credentials, CA file, a
    /// TLS handshake it refuses) or it got an answer it does not understand.
    #[error("schema registry client: {0}")]
    Client(String),
    /// REG025: the registry is not reachable, does not answer in time, or answers
    /// HTTP 5xx, 408 or 429: an outage, retried, never a bad record.
    #[error("schema registry {url} is unavailable: {message}")]
    Unavailable {
        /// The registry, without credentials.
        url: String,
        /// What failed.
        message: String,
    },
    /// REG026: the registry refused the credentials (HTTP 401 or 403).
    #[error(
        "schema registry {url} refused the credentials (HTTP {status}): {message}; check registry.basic_auth_user_info or the URL's user:password"
    )]
    Refused {
        /// The registry, without credentials.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// REG027: an outage lasted longer than `registry.outage_timeout`.
    #[error(
        "schema registry {url} has been unavailable for {:.1}s, longer than registry.outage_timeout: {last_error}",
        .waited.as_secs_f64()
    )]
    Outage {
        /// The registry, without credentials.
        url: String,
        /// How long it was waited out.
        waited: std::time::Duration,
        /// The last failure.
        last_error: String,
    },
    /// REG028: the pipeline was stopped while waiting out an outage.
    #[error(
        "stopped while schema registry {url} was unavailable: the records not decoded yet were neither reported bad nor checkpointed; they are read again from the last checkpoint"
    )]
    StoppedDuringOutage {
        /// The registry, without credentials.
        url: String,
    },
    /// A registry error of one table (its code is the inner error's).
    #[error("table {table}: {source}")]
    InTable {
        /// The table whose registry it is.
        table: String,
        /// What failed.
        #[source]
        source: Box<RegistryError>,
    },
}

impl RegistryError {
    /// This error as one of `table`'s.
    pub fn in_table(self, table: &str) -> RegistryError {
        RegistryError::InTable {
            table: table.to_string(),
            source: Box::new(self),
        }
    }

    /// A stable code, e.g. `REG001`.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::SubjectNotFound(_) => "REG001",
            RegistryError::VersionNotFound { .. } => "REG002",
            RegistryError::SchemaIdNotFound(_) => "REG003",
            RegistryError::SchemaNotFound(_) => "REG004",
            RegistryError::SubjectSoftDeleted(_) => "REG005",
            RegistryError::SubjectNotSoftDeleted(_) => "REG006",
            RegistryError::VersionSoftDeleted { .. } => "REG007",
            RegistryError::VersionNotSoftDeleted { .. } => "REG008",
            RegistryError::SubjectLevelNotConfigured(_) => "REG009",
            RegistryError::InvalidSchema { .. } => "REG010",
            RegistryError::InvalidVersion(_) => "REG011",
            RegistryError::InvalidCompatibilityLevel(_) => "REG012",
            RegistryError::Incompatible { .. } => "REG013",
            RegistryError::Store { .. } => "REG014",
            RegistryError::CorruptState { .. } => "REG015",
            RegistryError::DirectoryLocked(_) => "REG016",
            RegistryError::BadRequest(_) => "REG017",
            RegistryError::RouteNotFound { .. } => "REG018",
            RegistryError::MethodNotAllowed { .. } => "REG019",
            RegistryError::PayloadTooLarge { .. } => "REG020",
            RegistryError::UnsupportedMediaType(_) => "REG021",
            RegistryError::AssociationsUnsupported(_) => "REG022",
            RegistryError::Bind { .. } => "REG023",
            RegistryError::Client(_) => "REG024",
            RegistryError::Unavailable { .. } => "REG025",
            RegistryError::Refused { .. } => "REG026",
            RegistryError::Outage { .. } => "REG027",
            RegistryError::StoppedDuringOutage { .. } => "REG028",
            RegistryError::InTable { source, .. } => source.code(),
        }
    }

    /// Confluent's `error_code` for REST responses (e.g. 40401).
    pub fn error_code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound { .. } => 40402,
            RegistryError::SchemaIdNotFound(_) | RegistryError::SchemaNotFound(_) => 40403,
            RegistryError::SubjectSoftDeleted(_) => 40404,
            RegistryError::SubjectNotSoftDeleted(_) => 40405,
            RegistryError::VersionSoftDeleted { .. } => 40406,
            RegistryError::VersionNotSoftDeleted { .. } => 40407,
            RegistryError::SubjectLevelNotConfigured(_) => 40408,
            RegistryError::InvalidSchema { .. } => 42201,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidCompatibilityLevel(_) => 42203,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::Store { .. }
            | RegistryError::CorruptState { .. }
            | RegistryError::DirectoryLocked(_)
            | RegistryError::Bind { .. }
            | RegistryError::Client(_)
            | RegistryError::Unavailable { .. }
            | RegistryError::Refused { .. }
            | RegistryError::Outage { .. }
            | RegistryError::StoppedDuringOutage { .. } => 50001,
            RegistryError::InTable { source, .. } => source.error_code(),
            RegistryError::BadRequest(_) => 400,
            RegistryError::RouteNotFound { .. } | RegistryError::AssociationsUnsupported(_) => 404,
            RegistryError::MethodNotAllowed { .. } => 405,
            RegistryError::PayloadTooLarge { .. } => 413,
            RegistryError::UnsupportedMediaType(_) => 415,
        }
    }

    /// The HTTP status for REST responses.
    pub fn http_status(&self) -> u16 {
        match self.error_code() {
            code @ 400..=599 => code as u16,
            code => (code / 100) as u16,
        }
    }
}

/// Which version of a subject a request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSelector {
    /// `latest` or `-1`: the newest live version.
    Latest,
    /// A version number, 1 to 2^31-1.
    Number(u32),
}

impl VersionSelector {
    /// Parses `latest`, `-1` or a version number; else [`RegistryError::InvalidVersion`].
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        if s.eq_ignore_ascii_case("latest") || s == "-1" {
            return Ok(VersionSelector::Latest);
        }
        match s.parse::<u32>() {
            Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(VersionSelector::Number(n)),
            _ => Err(RegistryError::InvalidVersion(s.to_owned())),
        }
    }
}

/// A version of a subject, with its schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubjectVersion {
    /// The subject.
    pub subject: String,
    /// The version number.
    pub version: u32,
    /// The global schema id.
    pub id: u32,
    /// The schema text.
    pub schema: String,
}

/// Which subjects a listing includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Listing {
    /// Only subjects (versions) that are not soft-deleted.
    #[default]
    Live,
    /// Soft-deleted ones too.
    WithDeleted,
    /// Only soft-deleted ones.
    DeletedOnly,
}

impl Listing {
    /// From Confluent's `deleted` and `deleted_only` query flags.
    pub fn from_flags(deleted: bool, deleted_only: bool) -> Self {
        match (deleted, deleted_only) {
            (_, true) => Listing::DeletedOnly,
            (true, false) => Listing::WithDeleted,
            (false, false) => Listing::Live,
        }
    }

    fn includes(self, deleted: bool) -> bool {
        match self {
            Listing::Live => !deleted,
            Listing::WithDeleted => true,
            Listing::DeletedOnly => deleted,
        }
    }
}

/// The schema registry: its rules, on top of a [`Store`].
#[derive(Debug)]
pub struct Registry {
    store: Store,
}

fn parse_schema(text: &str) -> Result<AvroSchema, RegistryError> {
    if text.trim().is_empty() {
        return Err(RegistryError::InvalidSchema {
            path: "/".into(),
            message: "empty schema".into(),
        });
    }
    AvroSchema::parse(text)
}

/// The subject's record, if it has versions visible with `deleted`.
fn visible<'a>(
    st: &'a State,
    subject: &str,
    deleted: bool,
) -> Result<&'a SubjectRecord, RegistryError> {
    match st.subject(subject) {
        Some(rec) if rec.has_live() || (deleted && !rec.versions.is_empty()) => Ok(rec),
        _ => Err(RegistryError::SubjectNotFound(subject.to_owned())),
    }
}

fn resolve_version(
    rec: &SubjectRecord,
    subject: &str,
    selector: VersionSelector,
    deleted: bool,
) -> Result<store::VersionRecord, RegistryError> {
    let found = match selector {
        VersionSelector::Latest if deleted => rec.versions.last(),
        VersionSelector::Latest => rec.live().next_back(),
        VersionSelector::Number(n) => rec.find(n).filter(|v| deleted || !v.deleted),
    };
    found
        .copied()
        .ok_or_else(|| RegistryError::VersionNotFound {
            subject: subject.to_owned(),
            version: match selector {
                VersionSelector::Latest => "latest".into(),
                VersionSelector::Number(n) => n.to_string(),
            },
        })
}

fn effective_level(st: &State, subject: &str) -> CompatibilityLevel {
    st.subject(subject)
        .and_then(|r| r.compatibility)
        .unwrap_or_else(|| st.global_level())
}

fn subject_version(st: &State, subject: &str, v: store::VersionRecord) -> SubjectVersion {
    SubjectVersion {
        subject: subject.to_owned(),
        version: v.version,
        id: v.id,
        schema: st.schema(v.id).map(|s| s.text.clone()).unwrap_or_default(),
    }
}

fn violation_messages(violations: &[Violation]) -> Vec<String> {
    violations.iter().map(ToString::to_string).collect()
}

impl Registry {
    /// Opens the registry kept in `dir` (created if needed).
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Registry, RegistryError> {
        Ok(Registry {
            store: Store::open(dir).await?,
        })
    }

    /// The directory the registry keeps its state in.
    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// Registers `schema` under `subject` and returns its global id. A schema the
    /// subject already has (as a live version) returns the existing id; otherwise the
    /// schema must pass the subject's compatibility level against the live versions.
    /// With `normalize`, the stored text is the schema's normalized form.
    pub async fn register(
        &self,
        subject: &str,
        schema: &str,
        normalize: bool,
    ) -> Result<u32, RegistryError> {
        let parsed = Arc::new(parse_schema(schema)?);
        let identity = parsed.normalized();
        let text = if normalize {
            identity.clone()
        } else {
            schema.to_owned()
        };
        let (id, new_version) = self
            .store
            .update(|st| {
                let existing = st.id_for(&identity);
                if let Some(rec) = st.subject(subject)
                    && let Some(v) = rec.live().find(|v| existing == Some(v.id))
                {
                    return Ok((v.id, None));
                }
                let previous: Vec<(u32, Arc<AvroSchema>)> = st
                    .subject(subject)
                    .map(|rec| {
                        rec.live()
                            .filter_map(|v| st.schema(v.id).map(|s| (v.version, s.parsed.clone())))
                            .collect()
                    })
                    .unwrap_or_default();
                let level = effective_level(st, subject);
                let against: Vec<(u32, &AvroSchema)> =
                    previous.iter().map(|(v, s)| (*v, s.as_ref())).collect();
                let violations = check_level(level, &parsed, &against);
                if !violations.is_empty() {
                    return Err(RegistryError::Incompatible {
                        subject: subject.to_owned(),
                        level,
                        messages: violation_messages(&violations),
                    });
                }
                let id = match existing {
                    Some(id) => id,
                    None => st.insert_schema(text, parsed.clone()),
                };
                Ok((id, Some(st.add_version(subject, id))))
            })
            .await?;
        if let Some(version) = new_version {
            tracing::info!(subject, version, id, "schema registered");
        }
        Ok(id)
    }

    /// Finds `schema` among the versions of `subject` (soft-deleted ones too with
    /// `deleted`).
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
        deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let identity = parse_schema(schema)?.normalized();
        let st = self.store.read().await;
        let rec = visible(&st, subject, deleted)?;
        let id = st.id_for(&identity);
        rec.versions
            .iter()
            .rev()
            .filter(|v| deleted || !v.deleted)
            .find(|v| Some(v.id) == id)
            .map(|v| subject_version(&st, subject, *v))
            .ok_or_else(|| RegistryError::SchemaNotFound(subject.to_owned()))
    }

    /// The text of schema `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let st = self.store.read().await;
        Self::referenced(&st, id)?;
        Ok(st.schema(id).map(|s| s.text.clone()).unwrap_or_default())
    }

    /// Fails unless some version (even soft-deleted) refers to schema `id`.
    fn referenced(st: &State, id: u32) -> Result<(), RegistryError> {
        let used = st.schema(id).is_some()
            && st
                .subjects()
                .any(|(_, r)| r.versions.iter().any(|v| v.id == id));
        if used {
            Ok(())
        } else {
            Err(RegistryError::SchemaIdNotFound(id.to_string()))
        }
    }

    /// The `(subject, version)` pairs that use schema `id`.
    pub async fn versions_by_id(
        &self,
        id: u32,
        deleted: bool,
    ) -> Result<Vec<(String, u32)>, RegistryError> {
        let st = self.store.read().await;
        Self::referenced(&st, id)?;
        Ok(st
            .subjects()
            .flat_map(|(name, r)| {
                r.versions
                    .iter()
                    .filter(move |v| v.id == id && (deleted || !v.deleted))
                    .map(move |v| (name.clone(), v.version))
            })
            .collect())
    }

    /// The subjects that use schema `id`.
    pub async fn subjects_by_id(
        &self,
        id: u32,
        deleted: bool,
    ) -> Result<Vec<String>, RegistryError> {
        let mut out: Vec<String> = self
            .versions_by_id(id, deleted)
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        out.dedup();
        Ok(out)
    }

    /// Subject names, sorted, optionally only those starting with `prefix`.
    pub async fn subjects(&self, listing: Listing, prefix: Option<&str>) -> Vec<String> {
        let st = self.store.read().await;
        st.subjects()
            .filter(|(name, _)| prefix.is_none_or(|p| name.starts_with(p)))
            .filter(|(_, r)| !r.versions.is_empty() && listing.includes(!r.has_live()))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The version numbers of `subject`.
    pub async fn versions(
        &self,
        subject: &str,
        listing: Listing,
    ) -> Result<Vec<u32>, RegistryError> {
        let st = self.store.read().await;
        let rec = visible(&st, subject, listing != Listing::Live)?;
        Ok(rec
            .versions
            .iter()
            .filter(|v| listing.includes(v.deleted))
            .map(|v| v.version)
            .collect())
    }

    /// One version of `subject` (soft-deleted ones too with `deleted`).
    pub async fn version(
        &self,
        subject: &str,
        selector: VersionSelector,
        deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let st = self.store.read().await;
        let rec = visible(&st, subject, deleted)?;
        let v = resolve_version(rec, subject, selector, deleted)?;
        Ok(subject_version(&st, subject, v))
    }

    /// Every version of every subject (the latest of each with `latest_only`).
    pub async fn all_versions(
        &self,
        listing: Listing,
        prefix: Option<&str>,
        latest_only: bool,
    ) -> Vec<SubjectVersion> {
        let st = self.store.read().await;
        let mut out = Vec::new();
        for (name, rec) in st.subjects() {
            if prefix.is_some_and(|p| !name.starts_with(p)) {
                continue;
            }
            let versions: Vec<_> = rec
                .versions
                .iter()
                .filter(|v| listing.includes(v.deleted))
                .collect();
            let chosen: &[_] = if latest_only {
                versions
                    .split_last()
                    .map_or(&[], |(l, _)| std::slice::from_ref(l))
            } else {
                &versions
            };
            out.extend(chosen.iter().map(|v| subject_version(&st, name, **v)));
        }
        out
    }

    /// Deletes `subject`: soft (its versions stay readable by id and with
    /// `deleted=true`) or, after a soft delete, permanently. Returns the versions
    /// deleted.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        self.store
            .update(|st| {
                let rec = visible(st, subject, true)?.clone();
                if permanent {
                    if rec.has_live() {
                        return Err(RegistryError::SubjectNotSoftDeleted(subject.to_owned()));
                    }
                    st.remove_subject(subject);
                    Ok(rec.versions.iter().map(|v| v.version).collect())
                } else {
                    if !rec.has_live() {
                        return Err(RegistryError::SubjectSoftDeleted(subject.to_owned()));
                    }
                    let live: Vec<u32> = rec.live().map(|v| v.version).collect();
                    for v in &live {
                        st.set_deleted(subject, *v);
                    }
                    Ok(live)
                }
            })
            .await
    }

    /// Deletes one version: soft, or permanently after a soft delete.
    pub async fn delete_version(
        &self,
        subject: &str,
        selector: VersionSelector,
        permanent: bool,
    ) -> Result<u32, RegistryError> {
        self.store
            .update(|st| {
                let rec = visible(st, subject, true)?;
                let v = match (selector, permanent) {
                    (VersionSelector::Latest, false) => {
                        resolve_version(rec, subject, selector, false)?
                    }
                    _ => resolve_version(rec, subject, selector, true)?,
                };
                if permanent {
                    if !v.deleted {
                        return Err(RegistryError::VersionNotSoftDeleted {
                            subject: subject.to_owned(),
                            version: v.version,
                        });
                    }
                    st.remove_version(subject, v.version);
                } else {
                    if v.deleted {
                        return Err(RegistryError::VersionSoftDeleted {
                            subject: subject.to_owned(),
                            version: v.version,
                        });
                    }
                    st.set_deleted(subject, v.version);
                }
                Ok(v.version)
            })
            .await
    }

    /// Checks `schema` against `subject` under the subject's level, without
    /// registering it: against one version (`Some`: in the level's directions) or
    /// against the versions the level names (`None`). Returns the incompatibilities,
    /// empty when compatible.
    pub async fn check_compatibility(
        &self,
        subject: &str,
        version: Option<VersionSelector>,
        schema: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let parsed = parse_schema(schema)?;
        let st = self.store.read().await;
        let level = effective_level(&st, subject);
        let previous: Vec<(u32, Arc<AvroSchema>)> = match version {
            Some(selector) => {
                let rec = visible(&st, subject, false)?;
                let v = resolve_version(rec, subject, selector, false)?;
                st.schema(v.id)
                    .map(|s| vec![(v.version, s.parsed.clone())])
                    .unwrap_or_default()
            }
            None => match st.subject(subject) {
                Some(rec) => rec
                    .live()
                    .filter_map(|v| st.schema(v.id).map(|s| (v.version, s.parsed.clone())))
                    .collect(),
                None => Vec::new(),
            },
        };
        let against: Vec<(u32, &AvroSchema)> =
            previous.iter().map(|(v, s)| (*v, s.as_ref())).collect();
        Ok(violation_messages(&check_level(level, &parsed, &against)))
    }

    /// The global compatibility level.
    pub async fn global_level(&self) -> CompatibilityLevel {
        self.store.read().await.global_level()
    }

    /// Sets the global compatibility level.
    pub async fn set_global_level(&self, level: CompatibilityLevel) -> Result<(), RegistryError> {
        self.store
            .update(|st| {
                if st.global_level() != level {
                    st.set_global_level(level);
                }
                Ok(())
            })
            .await
    }

    /// Resets the global level to the default (BACKWARD); returns the previous one.
    pub async fn reset_global_level(&self) -> Result<CompatibilityLevel, RegistryError> {
        self.store
            .update(|st| {
                let old = st.global_level();
                if old != CompatibilityLevel::default() {
                    st.set_global_level(CompatibilityLevel::default());
                }
                Ok(old)
            })
            .await
    }

    /// The subject's own level, if set.
    pub async fn subject_level(&self, subject: &str) -> Option<CompatibilityLevel> {
        self.store
            .read()
            .await
            .subject(subject)
            .and_then(|r| r.compatibility)
    }

    /// Sets the subject's own level (the subject need not exist yet).
    pub async fn set_subject_level(
        &self,
        subject: &str,
        level: CompatibilityLevel,
    ) -> Result<(), RegistryError> {
        self.store
            .update(|st| {
                if st.subject(subject).and_then(|r| r.compatibility) != Some(level) {
                    st.set_subject_level(subject, Some(level));
                }
                Ok(())
            })
            .await
    }

    /// Removes the subject's own level (it falls back to the global one); returns the
    /// level it had. [`RegistryError::SubjectNotFound`] if the subject has neither
    /// versions nor a level.
    pub async fn delete_subject_level(
        &self,
        subject: &str,
    ) -> Result<CompatibilityLevel, RegistryError> {
        self.store
            .update(|st| match st.subject(subject) {
                None => Err(RegistryError::SubjectNotFound(subject.to_owned())),
                Some(rec) => match rec.compatibility {
                    Some(old) => {
                        st.set_subject_level(subject, None);
                        Ok(old)
                    }
                    None => Ok(st.global_level()),
                },
            })
            .await
    }
}

/// Opens the registry in `dir`, listens on `listen` (e.g. `127.0.0.1:8081`) and
/// serves the REST API until `shutdown` completes. This is what
/// `tributary registry` runs.
pub async fn run(
    listen: &str,
    dir: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    let registry = Arc::new(Registry::open(dir).await?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RegistryError::Bind {
            addr: listen.to_owned(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_or_else(|_| listen.to_owned(), |a| a.to_string());
    tracing::info!(addr = %local, dir = %dir.display(), "schema registry listening");
    server::serve(listener, registry, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "registry-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ))
    }

    const V1: &str = r#"{"type":"record","name":"Order","namespace":"t","fields":[{"name":"id","type":"long"}]}"#;
    const V2: &str = r#"{"type":"record","name":"Order","namespace":"t","fields":[{"name":"id","type":"long"},{"name":"note","type":["null","string"],"default":null}]}"#;
    const V3_NO_DEFAULT: &str = r#"{"type":"record","name":"Order","namespace":"t","fields":[{"name":"id","type":"long"},{"name":"total","type":"double"}]}"#;

    #[test]
    fn error_codes_and_statuses() {
        let cases: [(RegistryError, &str, u32, u16); 6] = [
            (
                RegistryError::SubjectNotFound("s".into()),
                "REG001",
                40401,
                404,
            ),
            (
                RegistryError::SchemaIdNotFound("3".into()),
                "REG003",
                40403,
                404,
            ),
            (
                RegistryError::InvalidSchema {
                    path: "/".into(),
                    message: "x".into(),
                },
                "REG010",
                42201,
                422,
            ),
            (
                RegistryError::Incompatible {
                    subject: "s".into(),
                    level: CompatibilityLevel::Backward,
                    messages: vec!["a".into(), "b".into()],
                },
                "REG013",
                409,
                409,
            ),
            (
                RegistryError::DirectoryLocked("/x".into()),
                "REG016",
                50001,
                500,
            ),
            (
                RegistryError::PayloadTooLarge { limit: 1 },
                "REG020",
                413,
                413,
            ),
        ];
        for (err, code, error_code, status) in cases {
            assert_eq!(err.code(), code);
            assert_eq!(err.error_code(), error_code);
            assert_eq!(err.http_status(), status);
        }
    }

    #[test]
    fn version_selectors() {
        assert_eq!(
            VersionSelector::parse("latest").unwrap(),
            VersionSelector::Latest
        );
        assert_eq!(
            VersionSelector::parse("-1").unwrap(),
            VersionSelector::Latest
        );
        assert_eq!(
            VersionSelector::parse("7").unwrap(),
            VersionSelector::Number(7)
        );
        for bad in ["0", "-2", "x", "2147483648", ""] {
            assert_eq!(
                VersionSelector::parse(bad).unwrap_err().error_code(),
                42202,
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn register_dedup_evolve_and_refuse() {
        let dir = temp_dir("evolve");
        let reg = Registry::open(&dir).await.unwrap();
        let id1 = reg.register("orders-value", V1, false).await.unwrap();
        assert_eq!(id1, 1);
        // Same schema, other layout: same id, no new version.
        let respelled = V1.replace(
            "\"name\":\"Order\",\"namespace\":\"t\"",
            "\"name\":\"t.Order\"",
        );
        assert_eq!(
            reg.register("orders-value", &respelled, false)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            reg.versions("orders-value", Listing::Live).await.unwrap(),
            [1]
        );
        // Same schema under another subject: same id.
        assert_eq!(reg.register("other-value", V1, false).await.unwrap(), 1);
        assert_eq!(
            reg.subjects_by_id(1, false).await.unwrap(),
            ["orders-value", "other-value"]
        );
        let id2 = reg.register("orders-value", V2, false).await.unwrap();
        assert_eq!(id2, 2);
        let err = reg
            .register("orders-value", V3_NO_DEFAULT, false)
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), 409);
        assert!(
            err.to_string()
                .contains("READER_FIELD_MISSING_DEFAULT_VALUE at /fields/1"),
            "{err}"
        );
        // NONE accepts it.
        reg.set_subject_level("orders-value", CompatibilityLevel::None)
            .await
            .unwrap();
        assert_eq!(
            reg.register("orders-value", V3_NO_DEFAULT, false)
                .await
                .unwrap(),
            3
        );
        let latest = reg
            .version("orders-value", VersionSelector::Latest, false)
            .await
            .unwrap();
        assert_eq!((latest.version, latest.id), (3, 3));
        assert_eq!(latest.schema, V3_NO_DEFAULT);
        // Lookup finds the version of a schema.
        let found = reg.lookup("orders-value", V2, false).await.unwrap();
        assert_eq!((found.version, found.id), (2, 2));
        assert_eq!(
            reg.lookup("other-value", V2, false)
                .await
                .unwrap_err()
                .error_code(),
            40403
        );
        assert_eq!(
            reg.lookup("nope", V2, false)
                .await
                .unwrap_err()
                .error_code(),
            40401
        );
        // Invalid schema.
        assert_eq!(
            reg.register("x", "{\"type\":\"nope\"}", false)
                .await
                .unwrap_err()
                .error_code(),
            42201
        );
        assert_eq!(
            reg.register("x", "", false).await.unwrap_err().error_code(),
            42201
        );
        drop(reg);
        // Everything survives a restart.
        let reg = Registry::open(&dir).await.unwrap();
        assert_eq!(
            reg.versions("orders-value", Listing::Live).await.unwrap(),
            [1, 2, 3]
        );
        assert_eq!(reg.schema_by_id(2).await.unwrap(), V2);
        assert_eq!(
            reg.subject_level("orders-value").await,
            Some(CompatibilityLevel::None)
        );
        assert_eq!(
            reg.register("third", V3_NO_DEFAULT, false).await.unwrap(),
            3
        );
        assert_eq!(reg.register("fourth", "\"string\"", true).await.unwrap(), 4);
        drop(reg);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn transitive_levels_use_every_live_version() {
        let dir = temp_dir("transitive");
        let reg = Registry::open(&dir).await.unwrap();
        let long = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
        let int = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
        let double = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"double"}]}"#;
        reg.set_global_level(CompatibilityLevel::None)
            .await
            .unwrap();
        reg.register("s", long, false).await.unwrap();
        reg.register("s", int, false).await.unwrap();
        reg.set_global_level(CompatibilityLevel::Forward)
            .await
            .unwrap();
        // FORWARD: int (latest) cannot read double.
        assert_eq!(
            reg.check_compatibility("s", None, double)
                .await
                .unwrap()
                .len(),
            1
        );
        reg.set_global_level(CompatibilityLevel::Backward)
            .await
            .unwrap();
        assert!(
            reg.check_compatibility("s", None, double)
                .await
                .unwrap()
                .is_empty()
        );
        // Against version 1 only (long): double reads long.
        assert!(
            reg.check_compatibility("s", Some(VersionSelector::Number(1)), double)
                .await
                .unwrap()
                .is_empty()
        );
        reg.set_global_level(CompatibilityLevel::BackwardTransitive)
            .await
            .unwrap();
        let messages = reg.check_compatibility("s", None, int).await.unwrap();
        // int is already version 2; against all: it cannot read version 1 (long).
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].contains("writer: version 1"), "{messages:?}");
        // Soft-deleted versions do not count.
        reg.delete_version("s", VersionSelector::Number(1), false)
            .await
            .unwrap();
        assert!(
            reg.check_compatibility("s", None, int)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            reg.reset_global_level().await.unwrap(),
            CompatibilityLevel::BackwardTransitive
        );
        assert_eq!(reg.global_level().await, CompatibilityLevel::Backward);
        drop(reg);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn soft_and_permanent_deletes() {
        let dir = temp_dir("delete");
        let reg = Registry::open(&dir).await.unwrap();
        reg.register("s", V1, false).await.unwrap();
        reg.register("s", V2, false).await.unwrap();
        // Permanent first is refused.
        assert_eq!(
            reg.delete_subject("s", true)
                .await
                .unwrap_err()
                .error_code(),
            40405
        );
        assert_eq!(
            reg.delete_version("s", VersionSelector::Number(2), true)
                .await
                .unwrap_err()
                .error_code(),
            40407
        );
        assert_eq!(
            reg.delete_version("s", VersionSelector::Latest, false)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            reg.delete_version("s", VersionSelector::Number(2), false)
                .await
                .unwrap_err()
                .error_code(),
            40406
        );
        assert_eq!(
            reg.version("s", VersionSelector::Number(2), false)
                .await
                .unwrap_err()
                .error_code(),
            40402
        );
        assert_eq!(
            reg.version("s", VersionSelector::Number(2), true)
                .await
                .unwrap()
                .id,
            2
        );
        assert_eq!(
            reg.version("s", VersionSelector::Latest, false)
                .await
                .unwrap()
                .version,
            1
        );
        assert_eq!(reg.delete_subject("s", false).await.unwrap(), [1]);
        assert_eq!(
            reg.delete_subject("s", false)
                .await
                .unwrap_err()
                .error_code(),
            40404
        );
        assert!(reg.subjects(Listing::Live, None).await.is_empty());
        assert_eq!(reg.subjects(Listing::WithDeleted, None).await, ["s"]);
        assert_eq!(reg.subjects(Listing::DeletedOnly, None).await, ["s"]);
        assert_eq!(
            reg.versions("s", Listing::Live)
                .await
                .unwrap_err()
                .error_code(),
            40401
        );
        assert_eq!(
            reg.versions("s", Listing::WithDeleted).await.unwrap(),
            [1, 2]
        );
        // Schemas stay readable by id after a soft delete.
        assert_eq!(reg.schema_by_id(1).await.unwrap(), V1);
        // Registering again continues the numbering; the old id comes back.
        assert_eq!(reg.register("s", V1, false).await.unwrap(), 1);
        assert_eq!(
            reg.versions("s", Listing::WithDeleted).await.unwrap(),
            [1, 2, 3]
        );
        reg.delete_subject("s", false).await.unwrap();
        assert_eq!(reg.delete_subject("s", true).await.unwrap(), [1, 2, 3]);
        assert_eq!(
            reg.delete_subject("s", true)
                .await
                .unwrap_err()
                .error_code(),
            40401
        );
        assert_eq!(reg.schema_by_id(1).await.unwrap_err().error_code(), 40403);
        // Ids are not reused.
        assert_eq!(reg.register("t", "\"int\"", false).await.unwrap(), 3);
        drop(reg);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_registrations_are_serialised() {
        let dir = temp_dir("concurrent");
        let reg = Arc::new(Registry::open(&dir).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..16 {
            let reg = reg.clone();
            tasks.push(tokio::spawn(async move {
                // Each adds its own optional field: all BACKWARD compatible.
                let schema = format!(
                    r#"{{"type":"record","name":"R","fields":[{{"name":"f{i}","type":["null","int"],"default":null}}]}}"#
                );
                let id = reg.register("s", &schema, false).await.unwrap();
                let shared = reg.register(&format!("t{i}"), "\"bytes\"", false).await.unwrap();
                (id, shared)
            }));
        }
        let mut ids = Vec::new();
        let mut shared = Vec::new();
        for t in tasks {
            let (id, s) = t.await.unwrap();
            ids.push(id);
            shared.push(s);
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 16, "one id per distinct schema");
        shared.dedup();
        assert_eq!(shared.len(), 1, "one id for one schema under many subjects");
        let versions = reg.versions("s", Listing::Live).await.unwrap();
        assert_eq!(versions, (1..=16).collect::<Vec<u32>>());
        drop(reg);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn subject_levels() {
        let dir = temp_dir("levels");
        let reg = Registry::open(&dir).await.unwrap();
        assert_eq!(reg.subject_level("s").await, None);
        assert_eq!(
            reg.delete_subject_level("s")
                .await
                .unwrap_err()
                .error_code(),
            40401
        );
        reg.set_subject_level("s", CompatibilityLevel::Full)
            .await
            .unwrap();
        assert_eq!(reg.subject_level("s").await, Some(CompatibilityLevel::Full));
        // A configured subject without versions is not listed.
        assert!(reg.subjects(Listing::WithDeleted, None).await.is_empty());
        assert_eq!(
            reg.delete_subject_level("s").await.unwrap(),
            CompatibilityLevel::Full
        );
        assert_eq!(reg.subject_level("s").await, None);
        drop(reg);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
