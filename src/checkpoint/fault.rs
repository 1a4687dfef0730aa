//! Fault injection at the phases of a checkpoint, for crash tests: with
//! `TRIBUTARY_FAULT_INJECT` set, the process aborts (as abruptly as `kill -9`: no
//! destructor, no flush, no stop handling) the first time it reaches a named phase,
//! so that every phase is tested on purpose rather than hit by chance.
//!
//! The variable holds comma-separated `phase` or `phase@N` (at the first checkpoint
//! with id ≥ N). Phases, in the order a checkpoint goes through them:
//!
//! | phase | where the process stops |
//! |---|---|
//! | `snapshot` | an operator task has taken its snapshot, before acknowledging it |
//! | `pre-commit` | a sink has pre-committed its output, before acknowledging it |
//! | `blobs-written` | the coordinator has stored every task's state, before the metadata commit |
//! | `metadata-committed` | the checkpoint is committed, before any sink publishes its output |
//! | `sink-committed` | one sink task has published the checkpoint's output (others may not have) |
//! | `restore` | a sink has restored its state (resent or published what a crash left), before reading input |
//! | `fallback-drain-committed` | a Kafka sink's transaction with records drained from the broker-outage fallback has committed, before they are deleted from the store |
//! | `dlq-replay-chunk` | `tributary dlq replay` has replayed chunk N (`@N`: from the Nth) of a bulk replay, before the next |
//!
//! Unset, each check is one atomic load.

use std::sync::OnceLock;

/// The phases of a checkpoint where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Snapshot,
    PreCommit,
    BlobsWritten,
    MetadataCommitted,
    SinkCommitted,
    Restore,
    /// Not a checkpoint's: a bulk dead-letter replay between two chunks.
    ReplayChunk,
    /// Not a checkpoint's: a fallback drain committed to Kafka, not yet deleted from
    /// the store.
    DrainCommitted,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::Snapshot,
        Phase::PreCommit,
        Phase::BlobsWritten,
        Phase::MetadataCommitted,
        Phase::SinkCommitted,
        Phase::Restore,
        Phase::ReplayChunk,
        Phase::DrainCommitted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Snapshot => "snapshot",
            Phase::PreCommit => "pre-commit",
            Phase::BlobsWritten => "blobs-written",
            Phase::MetadataCommitted => "metadata-committed",
            Phase::SinkCommitted => "sink-committed",
            Phase::Restore => "restore",
            Phase::ReplayChunk => "dlq-replay-chunk",
            Phase::DrainCommitted => "fallback-drain-committed",
        }
    }
}

/// The environment variable naming the faults to inject.
pub const VARIABLE: &str = "TRIBUTARY_FAULT_INJECT";

/// Parses the variable's value: (phase, from checkpoint id).
fn parse(value: &str) -> Result<Vec<(Phase, u64)>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (name, from) = match item.split_once('@') {
                Some((n, id)) => (
                    n,
                    id.parse::<u64>()
                        .map_err(|_| format!("{item}: expected phase@checkpoint-id"))?,
                ),
                None => (item, 0),
            };
            let phase = Phase::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| {
                    let names: Vec<_> = Phase::ALL.iter().map(|p| p.name()).collect();
                    format!("{name}: unknown phase (one of {})", names.join(", "))
                })?;
            Ok((phase, from))
        })
        .collect()
}

fn armed() -> &'static [(Phase, u64)] {
    static ARMED: OnceLock<Vec<(Phase, u64)>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let Ok(value) = std::env::var(VARIABLE) else {
            return Vec::new();
        };
        match parse(&value) {
            Ok(faults) => {
                tracing::warn!(faults = %value, "fault injection armed ({VARIABLE}): the process will abort at these checkpoint phases");
                faults
            }
            Err(e) => {
                // A test that asked for a fault must not pass without it.
                eprintln!("error: {VARIABLE}={value}: {e}");
                std::process::exit(2);
            }
        }
    })
}

/// Aborts the process if a fault is armed at `phase` for checkpoint `id` (`None`:
/// a phase outside any checkpoint, such as a restore).
pub fn point(phase: Phase, id: Option<u64>, task: &dyn std::fmt::Display) {
    let faults = armed();
    if faults.is_empty() {
        return;
    }
    if faults
        .iter()
        .any(|(p, from)| *p == phase && id.unwrap_or(u64::MAX) >= *from)
    {
        // Straight to stderr: the log writer may buffer, and nothing runs after this.
        eprintln!(
            "{{\"message\":\"fault injected\",\"phase\":\"{}\",\"checkpoint\":{},\"task\":\"{task}\"}}",
            phase.name(),
            id.map_or("null".to_string(), |i| i.to_string())
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_with_and_without_a_checkpoint_id() {
        assert_eq!(
            parse("pre-commit@3, restore").unwrap(),
            vec![(Phase::PreCommit, 3), (Phase::Restore, 0)]
        );
        assert!(parse("precommit").unwrap_err().contains("unknown phase"));
        assert!(parse("snapshot@x").is_err());
        assert!(parse("").unwrap().is_empty());
    }
}
