//! The process's fallback: one store (opened at first use), one breaker per Kafka
//! cluster, the keys waiting in the store per pipeline and topic, and the drain
//! controls per pipeline that `tributary fallback drain|pause|resume` act on (through
//! the admin endpoint). `tributary run` makes one [`Fallback`] and hands it to the
//! connectors (`ConnectorEnv::fallback`); every Kafka sink task of the process shares
//! it, so the tasks of one sink agree on which keys wait (ADR 0016).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::{Breaker, BreakerSettings, BreakerState, FallbackStore, Result, Seq};

/// How the fallback behaves (`[fallback]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackSettings {
    pub breaker: BreakerSettings,
    /// How long one attempt to send a transaction to Kafka may wait for the cluster
    /// before it counts as a failure for the breaker.
    pub attempt_timeout: Duration,
    /// Records per second each sink task drains from the backlog while live output
    /// flows (0: no limit).
    pub drain_rate: u64,
}

impl Default for FallbackSettings {
    fn default() -> Self {
        FallbackSettings {
            breaker: BreakerSettings::default(),
            attempt_timeout: Duration::from_secs(10),
            drain_rate: 5_000,
        }
    }
}

/// Opens the configured store (at the first use, so a process without Kafka sinks
/// never touches it).
pub type Opener = Box<dyn Fn() -> Result<Arc<dyn FallbackStore>> + Send + Sync>;

/// The fallback of one process (see the module docs).
pub struct Fallback {
    settings: FallbackSettings,
    opener: Opener,
    store: tokio::sync::OnceCell<Arc<dyn FallbackStore>>,
    breakers: Mutex<BTreeMap<String, Arc<Breaker>>>,
    waiting: Mutex<HashMap<(String, String), Arc<tokio::sync::OnceCell<Arc<Waiting>>>>>,
    controls: Mutex<BTreeMap<String, Arc<DrainControl>>>,
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("settings", &self.settings)
            .field("store", &self.store.get())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fallback {
    pub fn new(settings: FallbackSettings, opener: Opener) -> Fallback {
        Fallback {
            settings,
            opener,
            store: tokio::sync::OnceCell::new(),
            breakers: Mutex::new(BTreeMap::new()),
            waiting: Mutex::new(HashMap::new()),
            controls: Mutex::new(BTreeMap::new()),
        }
    }

    /// A fallback over a store already open (tests, benchmarks).
    pub fn with_store(settings: FallbackSettings, store: Arc<dyn FallbackStore>) -> Fallback {
        Fallback::new(settings, Box::new(move || Ok(store.clone())))
    }

    pub fn settings(&self) -> &FallbackSettings {
        &self.settings
    }

    /// The store, opened at the first call (a failed open is tried again next time).
    pub async fn store(&self) -> Result<Arc<dyn FallbackStore>> {
        self.store
            .get_or_try_init(|| async { (self.opener)() })
            .await
            .cloned()
    }

    /// The breaker of the cluster at `cluster` (its bootstrap servers).
    pub fn breaker(&self, cluster: &str) -> Arc<Breaker> {
        lock(&self.breakers)
            .entry(cluster.to_string())
            .or_insert_with(|| Arc::new(Breaker::new(cluster, self.settings.breaker)))
            .clone()
    }

    /// The drain control of `pipeline`.
    pub fn control(&self, pipeline: &str) -> Arc<DrainControl> {
        lock(&self.controls)
            .entry(pipeline.to_string())
            .or_default()
            .clone()
    }

    /// The keys of `pipeline`'s output to `topic` with records in the store: read from
    /// the store at the first call, then kept by the sink tasks that append and drain.
    pub async fn waiting(&self, pipeline: &str, topic: &str) -> Result<Arc<Waiting>> {
        let cell = lock(&self.waiting)
            .entry((pipeline.to_string(), topic.to_string()))
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            let store = self.store().await?;
            let keys = store
                .streams(pipeline)
                .await?
                .into_iter()
                .filter(|s| s.topic == topic)
                .map(|s| (s.key, None))
                .collect();
            Ok(Arc::new(Waiting {
                keys: Mutex::new(keys),
            }))
        })
        .await
        .cloned()
    }

    /// What the process knows now: each breaker and each pipeline's drain control.
    pub fn status(&self) -> FallbackStatus {
        FallbackStatus {
            breakers: lock(&self.breakers)
                .values()
                .map(|b| BreakerStatus {
                    cluster: b.cluster().to_string(),
                    state: b.state(),
                    last_error: b.last_error(),
                })
                .collect(),
            pipelines: lock(&self.controls)
                .iter()
                .map(|(p, c)| DrainStatus {
                    pipeline: p.clone(),
                    mode: c.mode(),
                    drained: c.drained.load(Ordering::Relaxed),
                    stored: c.stored.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// The keys of one pipeline's output to one topic that have records in the store,
/// each with the newest sequence this process appended for it (`None`: it was there
/// when the process started). While a key is here, its new records go to the store
/// behind the older ones.
#[derive(Debug, Default)]
pub struct Waiting {
    keys: Mutex<HashMap<Option<Vec<u8>>, Option<Seq>>>,
}

impl Waiting {
    pub fn is_empty(&self) -> bool {
        lock(&self.keys).is_empty()
    }

    pub fn len(&self) -> usize {
        lock(&self.keys).len()
    }

    pub fn contains(&self, key: Option<&[u8]>) -> bool {
        lock(&self.keys).contains_key(&key.map(<[u8]>::to_vec))
    }

    /// The waiting keys, for a drain to go through.
    pub fn keys(&self) -> Vec<Option<Vec<u8>>> {
        lock(&self.keys).keys().cloned().collect()
    }

    /// Records up to `seq` of `key` are stored (call after the store returned).
    pub fn appended(&self, key: Option<&[u8]>, seq: Seq) {
        let mut keys = lock(&self.keys);
        let last = keys.entry(key.map(<[u8]>::to_vec)).or_insert(Some(seq));
        if last.is_none_or(|l| l < seq) {
            *last = Some(seq);
        }
    }

    /// What was last appended for `key` (`Some(None)`: waiting since the start;
    /// `None`: not waiting).
    pub fn last(&self, key: Option<&[u8]>) -> Option<Option<Seq>> {
        lock(&self.keys).get(&key.map(<[u8]>::to_vec)).copied()
    }

    /// `key` has nothing in the store (a read found none): it leaves, unless
    /// something was appended since `seen` ([`Waiting::last`] before the read).
    pub fn forget(&self, key: Option<&[u8]>, seen: Option<Seq>) {
        let mut keys = lock(&self.keys);
        let key = key.map(<[u8]>::to_vec);
        if keys.get(&key) == Some(&seen) {
            keys.remove(&key);
        }
    }

    /// `key`'s records up to `through` are in Kafka and deleted from the store, and
    /// the read that found them found no more (`whole`): the key leaves unless
    /// something newer was appended meanwhile. `true` when it left.
    pub fn drained(&self, key: Option<&[u8]>, through: Seq, whole: bool) -> bool {
        if !whole {
            return false;
        }
        let mut keys = lock(&self.keys);
        let key = key.map(<[u8]>::to_vec);
        match keys.get(&key) {
            Some(last) if last.is_none_or(|l| l <= through) => {
                keys.remove(&key);
                true
            }
            _ => false,
        }
    }
}

/// How a pipeline's backlog drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrainMode {
    /// At `drain_rate` beside live output (the default).
    RateLimited,
    /// As fast as transactions go, until the backlog is empty (`fallback drain`).
    Unlimited,
    /// Not at all (`fallback pause`): waiting keys keep going to the store.
    Paused,
}

/// A pipeline's drain control and counters.
#[derive(Debug, Default)]
pub struct DrainControl {
    paused: AtomicBool,
    unlimited: AtomicBool,
    /// Records sent from the store to Kafka.
    pub drained: AtomicU64,
    /// Records stored in the fallback.
    pub stored: AtomicU64,
}

impl DrainControl {
    pub fn mode(&self) -> DrainMode {
        if self.paused.load(Ordering::Relaxed) {
            DrainMode::Paused
        } else if self.unlimited.load(Ordering::Relaxed) {
            DrainMode::Unlimited
        } else {
            DrainMode::RateLimited
        }
    }

    /// `fallback pause`.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
    }

    /// `fallback resume`: back to the rate-limited drain.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
        self.unlimited.store(false, Ordering::Relaxed);
    }

    /// `fallback drain`: drain without the rate limit until the backlog is empty.
    pub fn drain_now(&self) {
        self.paused.store(false, Ordering::Relaxed);
        self.unlimited.store(true, Ordering::Relaxed);
    }

    /// The backlog is empty: an unlimited drain is over.
    pub fn emptied(&self) {
        self.unlimited.store(false, Ordering::Relaxed);
    }
}

/// `GET /fallback`: the breakers and the drains of a running process.
#[derive(Debug, Clone, Serialize)]
pub struct FallbackStatus {
    pub breakers: Vec<BreakerStatus>,
    pub pipelines: Vec<DrainStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakerStatus {
    pub cluster: String,
    pub state: BreakerState,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrainStatus {
    pub pipeline: String,
    pub mode: DrainMode,
    pub drained: u64,
    pub stored: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(checkpoint: u64, index: u64) -> Seq {
        Seq { checkpoint, index }
    }

    #[test]
    fn a_key_leaves_only_when_drained_past_everything_appended() {
        let w = Waiting::default();
        w.appended(Some(b"k"), seq(1, 0));
        w.appended(Some(b"k"), seq(2, 3));
        assert!(w.contains(Some(b"k")));
        assert!(!w.drained(Some(b"k"), seq(2, 3), false), "a partial read");
        assert!(!w.drained(Some(b"k"), seq(1, 0), true), "appended since");
        assert!(w.drained(Some(b"k"), seq(2, 3), true));
        assert!(!w.contains(Some(b"k")) && w.is_empty());
        // An older append arriving late does not take the newest back.
        w.appended(None, seq(5, 0));
        w.appended(None, seq(4, 0));
        assert!(!w.drained(None, seq(4, 0), true));
        assert!(w.drained(None, seq(5, 0), true));
        // An empty read forgets a key only if nothing was appended since.
        w.appended(Some(b"e"), seq(6, 0));
        let seen = w.last(Some(b"e")).unwrap();
        w.appended(Some(b"e"), seq(7, 0));
        w.forget(Some(b"e"), seen);
        assert!(w.contains(Some(b"e")));
        w.forget(Some(b"e"), w.last(Some(b"e")).unwrap());
        assert!(!w.contains(Some(b"e")));
    }

    #[test]
    fn drain_modes() {
        let c = DrainControl::default();
        assert_eq!(c.mode(), DrainMode::RateLimited);
        c.pause();
        assert_eq!(c.mode(), DrainMode::Paused);
        c.drain_now();
        assert_eq!(c.mode(), DrainMode::Unlimited);
        c.emptied();
        assert_eq!(c.mode(), DrainMode::RateLimited);
        c.pause();
        c.resume();
        assert_eq!(c.mode(), DrainMode::RateLimited);
    }
}
