//! The registry's durable state in a local directory.
//!
//! Owns: subjects and their versions (version number, global schema id, soft-deleted
//! flag), schemas by global id, the global compatibility level (default BACKWARD) and
//! per-subject levels. It knows nothing of compatibility rules or HTTP: the
//! [`Registry`](super::Registry) decides what to change, this module makes the change
//! durable and visible atomically.
//!
//! # On disk
//!
//! The directory holds `registry.json` (the whole state, pretty-printed JSON with a
//! `format` number), `registry.lock` (held with an exclusive OS file lock while a
//! store is open, so two processes cannot share a directory) and, only while a write
//! is in flight, `registry.json.tmp`.
//!
//! Every change rewrites the state file: write `registry.json.tmp`, `fsync` it,
//! `rename` it over `registry.json`, `fsync` the directory. A crash leaves either the
//! old or the new file, never a torn one; a change is acknowledged only after the
//! rename is durable. A snapshot file was chosen over an append-only log because a
//! registry's state is small (schemas are kilobytes, writes are rare: a producer
//! registers once per schema) and a single file needs no replay, compaction or
//! tail-repair logic; the cost, rewriting the file per change, is negligible at
//! that size.
//!
//! # Invariants
//!
//! - Schema ids are global, start at 1, and are never reused: `next_id` only grows,
//!   and a schema stays in the id table after its versions are deleted (registering
//!   the same schema again gets its old id back).
//! - One id per schema identity: the [`normalized`](super::schema::AvroSchema::normalized)
//!   form. The same schema registered under two subjects has one id.
//! - A subject's versions are sorted, numbered from 1, and every version's id is in
//!   the schema table.
//! - Readers see a consistent snapshot ([`Store::read`]); writers are serialised and
//!   apply a change to a copy that replaces the visible state only once it is on
//!   disk ([`Store::update`]), so a failed write changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};

use super::RegistryError;
use super::compat::CompatibilityLevel;
use super::schema::AvroSchema;

/// The state file's name in the registry directory.
pub const STATE_FILE: &str = "registry.json";
const TMP_FILE: &str = "registry.json.tmp";
const LOCK_FILE: &str = "registry.lock";
const FORMAT: u32 = 1;

/// One version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VersionRecord {
    pub(crate) version: u32,
    pub(crate) id: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) deleted: bool,
}

/// A subject: its versions (sorted) and its own compatibility level, if set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubjectRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) compatibility: Option<CompatibilityLevel>,
    #[serde(default)]
    pub(crate) versions: Vec<VersionRecord>,
}

impl SubjectRecord {
    /// Versions not soft-deleted, oldest first.
    pub(crate) fn live(&self) -> impl DoubleEndedIterator<Item = &VersionRecord> {
        self.versions.iter().filter(|v| !v.deleted)
    }

    pub(crate) fn has_live(&self) -> bool {
        self.live().next().is_some()
    }

    pub(crate) fn find(&self, version: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }
}

/// A registered schema: the text as stored and served, and its parsed form.
#[derive(Debug, Clone)]
pub(crate) struct StoredSchema {
    pub(crate) text: String,
    pub(crate) parsed: Arc<AvroSchema>,
}

#[derive(Serialize, Deserialize)]
struct PersistedSchema {
    schema: String,
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    format: u32,
    next_id: u32,
    compatibility: CompatibilityLevel,
    schemas: BTreeMap<u32, PersistedSchema>,
    subjects: BTreeMap<String, SubjectRecord>,
}

/// The whole registry state, in memory. Mutators mark it dirty.
#[derive(Debug, Clone)]
pub(crate) struct State {
    next_id: u32,
    global: CompatibilityLevel,
    schemas: BTreeMap<u32, StoredSchema>,
    /// Normalized form → id.
    by_identity: HashMap<String, u32>,
    subjects: BTreeMap<String, SubjectRecord>,
    dirty: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            next_id: 1,
            global: CompatibilityLevel::default(),
            schemas: BTreeMap::new(),
            by_identity: HashMap::new(),
            subjects: BTreeMap::new(),
            dirty: false,
        }
    }
}

impl State {
    pub(crate) fn global_level(&self) -> CompatibilityLevel {
        self.global
    }

    pub(crate) fn set_global_level(&mut self, level: CompatibilityLevel) {
        self.global = level;
        self.dirty = true;
    }

    pub(crate) fn subject(&self, name: &str) -> Option<&SubjectRecord> {
        self.subjects.get(name)
    }

    pub(crate) fn subjects(&self) -> impl Iterator<Item = (&String, &SubjectRecord)> {
        self.subjects.iter()
    }

    pub(crate) fn schema(&self, id: u32) -> Option<&StoredSchema> {
        self.schemas.get(&id)
    }

    pub(crate) fn id_for(&self, identity: &str) -> Option<u32> {
        self.by_identity.get(identity).copied()
    }

    /// Adds a schema under a new id (the caller checked [`State::id_for`]).
    pub(crate) fn insert_schema(&mut self, text: String, parsed: Arc<AvroSchema>) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.by_identity.insert(parsed.normalized(), id);
        self.schemas.insert(id, StoredSchema { text, parsed });
        self.dirty = true;
        id
    }

    /// Appends a version with schema `id` to `subject` (created if needed), numbered
    /// one past the highest existing version, and returns its number.
    pub(crate) fn add_version(&mut self, subject: &str, id: u32) -> u32 {
        let rec = self.subjects.entry(subject.to_owned()).or_default();
        let version = rec.versions.last().map_or(1, |v| v.version + 1);
        rec.versions.push(VersionRecord {
            version,
            id,
            deleted: false,
        });
        self.dirty = true;
        version
    }

    pub(crate) fn set_deleted(&mut self, subject: &str, version: u32) {
        if let Some(v) = self
            .subjects
            .get_mut(subject)
            .and_then(|r| r.versions.iter_mut().find(|v| v.version == version))
        {
            v.deleted = true;
            self.dirty = true;
        }
    }

    pub(crate) fn remove_version(&mut self, subject: &str, version: u32) {
        if let Some(rec) = self.subjects.get_mut(subject) {
            rec.versions.retain(|v| v.version != version);
            self.dirty = true;
        }
        self.drop_if_empty(subject);
    }

    /// Removes the subject, its versions and its configuration.
    pub(crate) fn remove_subject(&mut self, subject: &str) {
        if self.subjects.remove(subject).is_some() {
            self.dirty = true;
        }
    }

    pub(crate) fn set_subject_level(&mut self, subject: &str, level: Option<CompatibilityLevel>) {
        self.subjects
            .entry(subject.to_owned())
            .or_default()
            .compatibility = level;
        self.dirty = true;
        self.drop_if_empty(subject);
    }

    fn drop_if_empty(&mut self, subject: &str) {
        if self
            .subjects
            .get(subject)
            .is_some_and(|r| r.versions.is_empty() && r.compatibility.is_none())
        {
            self.subjects.remove(subject);
        }
    }

    fn to_persisted(&self) -> Persisted {
        Persisted {
            format: FORMAT,
            next_id: self.next_id,
            compatibility: self.global,
            schemas: self
                .schemas
                .iter()
                .map(|(id, s)| {
                    (
                        *id,
                        PersistedSchema {
                            schema: s.text.clone(),
                        },
                    )
                })
                .collect(),
            subjects: self.subjects.clone(),
        }
    }

    fn from_persisted(p: Persisted, path: &Path) -> Result<State, RegistryError> {
        let corrupt = |message: String| RegistryError::CorruptState {
            path: path.to_owned(),
            message,
        };
        if p.format != FORMAT {
            return Err(corrupt(format!(
                "unsupported format {} (this version reads format {FORMAT})",
                p.format
            )));
        }
        let mut state = State {
            next_id: p.next_id,
            global: p.compatibility,
            subjects: p.subjects,
            ..State::default()
        };
        for (id, s) in p.schemas {
            let parsed = AvroSchema::parse(&s.schema)
                .map_err(|e| corrupt(format!("schema {id} does not parse: {e}")))?;
            if id >= state.next_id {
                return Err(corrupt(format!(
                    "schema id {id} is not below next_id {}",
                    state.next_id
                )));
            }
            state.by_identity.entry(parsed.normalized()).or_insert(id);
            state.schemas.insert(
                id,
                StoredSchema {
                    text: s.schema,
                    parsed: Arc::new(parsed),
                },
            );
        }
        for (name, rec) in &state.subjects {
            let mut last = 0;
            for v in &rec.versions {
                if v.version <= last {
                    return Err(corrupt(format!(
                        "subject '{name}': versions are not increasing"
                    )));
                }
                last = v.version;
                if !state.schemas.contains_key(&v.id) {
                    return Err(corrupt(format!(
                        "subject '{name}' version {} refers to unknown schema {}",
                        v.version, v.id
                    )));
                }
            }
        }
        Ok(state)
    }
}

/// The registry's state, kept in a directory (see the module documentation).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    state: RwLock<Arc<State>>,
    /// Serialises writers (readers only take `state` briefly).
    writer: Mutex<()>,
    /// Holds the directory's lock for the store's lifetime.
    _lock: File,
}

fn io_err(path: &Path, source: std::io::Error) -> RegistryError {
    RegistryError::Store {
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, loading its state file.
    /// Fails if another store has the directory open.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Store, RegistryError> {
        let dir = dir.into();
        tokio::task::spawn_blocking(move || Store::open_blocking(dir))
            .await
            .map_err(|e| RegistryError::Store {
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })?
    }

    fn open_blocking(dir: PathBuf) -> Result<Store, RegistryError> {
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(RegistryError::DirectoryLocked(dir)),
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path, e)),
        }
        let tmp = dir.join(TMP_FILE);
        if tmp.exists() {
            // An interrupted write: the state file is still the previous one.
            fs::remove_file(&tmp).map_err(|e| io_err(&tmp, e))?;
        }
        let path = dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => {
                let persisted: Persisted =
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::CorruptState {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                State::from_persisted(persisted, &path)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err(&path, e)),
        };
        Ok(Store {
            dir,
            state: RwLock::new(Arc::new(state)),
            writer: Mutex::new(()),
            _lock: lock,
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A consistent snapshot of the state.
    pub(crate) async fn read(&self) -> Arc<State> {
        self.state.read().await.clone()
    }

    /// Applies `change` to a copy of the state; when it succeeds and changed
    /// something, writes the copy durably and then makes it visible. When `change`
    /// or the write fails, nothing changes.
    pub(crate) async fn update<T, F>(&self, change: F) -> Result<T, RegistryError>
    where
        F: FnOnce(&mut State) -> Result<T, RegistryError>,
    {
        let _writer = self.writer.lock().await;
        let mut next = State::clone(&*self.read().await);
        next.dirty = false;
        let out = change(&mut next)?;
        if next.dirty {
            next.dirty = false;
            let bytes = serde_json::to_vec_pretty(&next.to_persisted()).map_err(|e| {
                RegistryError::Store {
                    path: self.dir.join(STATE_FILE),
                    source: std::io::Error::other(e),
                }
            })?;
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || write_atomically(&dir, &bytes))
                .await
                .map_err(|e| io_err(&self.dir, std::io::Error::other(e)))??;
            *self.state.write().await = Arc::new(next);
        }
        Ok(out)
    }
}

/// Replaces the state file with `bytes`: temp file, fsync, rename, fsync directory.
fn write_atomically(dir: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let tmp = dir.join(TMP_FILE);
    let path = dir.join(STATE_FILE);
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "registry-store-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn schema(text: &str) -> Arc<AvroSchema> {
        Arc::new(AvroSchema::parse(text).unwrap())
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = temp_dir("reopen");
        {
            let store = Store::open(&dir).await.unwrap();
            let id = store
                .update(|st| {
                    let id = st.insert_schema("\"string\"".into(), schema("\"string\""));
                    st.add_version("a-value", id);
                    st.add_version("b-value", id);
                    let v = st.add_version("a-value", id);
                    st.set_deleted("a-value", v);
                    st.set_subject_level("b-value", Some(CompatibilityLevel::Full));
                    st.set_global_level(CompatibilityLevel::None);
                    Ok(id)
                })
                .await
                .unwrap();
            assert_eq!(id, 1);
        }
        let store = Store::open(&dir).await.unwrap();
        let st = store.read().await;
        assert_eq!(st.global_level(), CompatibilityLevel::None);
        assert_eq!(st.schema(1).unwrap().text, "\"string\"");
        assert_eq!(st.id_for("\"string\""), Some(1));
        let a = st.subject("a-value").unwrap();
        assert_eq!(
            a.versions,
            [
                VersionRecord {
                    version: 1,
                    id: 1,
                    deleted: false
                },
                VersionRecord {
                    version: 2,
                    id: 1,
                    deleted: true
                }
            ]
        );
        assert_eq!(
            st.subject("b-value").unwrap().compatibility,
            Some(CompatibilityLevel::Full)
        );
        // Ids keep growing after a restart.
        let id = store
            .update(|st| Ok(st.insert_schema("\"int\"".into(), schema("\"int\""))))
            .await
            .unwrap();
        assert_eq!(id, 2);
        drop(st);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn failed_change_changes_nothing() {
        let dir = temp_dir("failed");
        let store = Store::open(&dir).await.unwrap();
        let err = store
            .update(|st| -> Result<(), RegistryError> {
                st.set_global_level(CompatibilityLevel::Full);
                Err(RegistryError::SubjectNotFound("x".into()))
            })
            .await;
        assert!(err.is_err());
        assert_eq!(
            store.read().await.global_level(),
            CompatibilityLevel::Backward
        );
        assert!(!dir.join(STATE_FILE).exists(), "nothing written");
        // A change that changes nothing writes nothing.
        store.update(|_| Ok(())).await.unwrap();
        assert!(!dir.join(STATE_FILE).exists());
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn directory_is_locked_and_leftovers_are_handled() {
        let dir = temp_dir("lock");
        let store = Store::open(&dir).await.unwrap();
        assert!(matches!(
            Store::open(&dir).await,
            Err(RegistryError::DirectoryLocked(_))
        ));
        store
            .update(|st| {
                st.set_global_level(CompatibilityLevel::Forward);
                Ok(())
            })
            .await
            .unwrap();
        drop(store);
        // A crash mid-write leaves a temp file: ignored and removed.
        fs::write(dir.join(TMP_FILE), b"{ torn").unwrap();
        let store = Store::open(&dir).await.unwrap();
        assert_eq!(
            store.read().await.global_level(),
            CompatibilityLevel::Forward
        );
        assert!(!dir.join(TMP_FILE).exists());
        drop(store);
        // A damaged state file is reported, not silently replaced.
        fs::write(dir.join(STATE_FILE), b"{\"format\": 1").unwrap();
        let err = Store::open(&dir).await.unwrap_err();
        assert_eq!(err.code(), "REG015");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn removal_and_empty_subjects() {
        let dir = temp_dir("remove");
        let store = Store::open(&dir).await.unwrap();
        store
            .update(|st| {
                let id = st.insert_schema("\"long\"".into(), schema("\"long\""));
                st.add_version("s", id);
                st.add_version("s", id);
                st.remove_version("s", 2);
                assert_eq!(st.add_version("s", id), 2, "numbering follows the highest");
                st.remove_subject("s");
                assert!(st.subject("s").is_none());
                st.set_subject_level("t", Some(CompatibilityLevel::None));
                st.set_subject_level("t", None);
                assert!(st.subject("t").is_none(), "an empty subject is dropped");
                Ok(())
            })
            .await
            .unwrap();
        let text = fs::read_to_string(dir.join(STATE_FILE)).unwrap();
        assert!(text.contains("\"next_id\": 2"), "{text}");
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }
}
