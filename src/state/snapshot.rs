//! The byte form of operator state in a checkpoint: a small JSON header (what the
//! operator needs to rebuild its structures) followed by Arrow IPC batches (the
//! state itself, column-oriented, as DataFusion's accumulators hand it out).
//!
//! Layout: 8-byte little-endian header length, the header, then (when there are
//! batches) one Arrow IPC stream. All batches share one schema.

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, Schema};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

use crate::types::{EngineError, Result};

/// A task's state for one checkpoint, taken on the task and turned into bytes off it.
///
/// An operator's snapshot holds its state as Arrow arrays, which are immutable: the
/// task captures them (cheap, reference-counted) and goes on processing, while the
/// checkpoint coordinator encodes them ([`StateBlob::into_bytes`]) on a blocking
/// thread. Cloning shares the arrays.
#[derive(Clone, Debug)]
pub struct StateBlob(Blob);

#[derive(Clone, Debug)]
enum Blob {
    Bytes(Vec<u8>),
    Arrow {
        head: Vec<u8>,
        batches: Vec<Vec<ArrayRef>>,
    },
    Parts(Vec<StateBlob>),
    /// Only what changed since the task's previous snapshot (see [`StateBlob::delta`]).
    Delta(Box<StateBlob>),
}

impl From<Vec<u8>> for StateBlob {
    /// State already encoded (a source's position, a sink's pending output).
    fn from(bytes: Vec<u8>) -> Self {
        StateBlob(Blob::Bytes(bytes))
    }
}

impl StateBlob {
    /// `header` and `batches` (each a list of columns of equal length; every batch the
    /// same column types), to be encoded later in the layout [`decode`] reads. The
    /// header is serialised now.
    pub fn arrow<H: Serialize>(header: &H, batches: Vec<Vec<ArrayRef>>) -> Result<Self> {
        let head = serde_json::to_vec(header)
            .map_err(|e| EngineError::State(format!("encoding operator state: {e}")))?;
        Ok(StateBlob(Blob::Arrow { head, batches }))
    }

    /// Several states of different shapes as one (a join's two sides), each preceded
    /// by its length in 8 little-endian bytes; [`parts`] splits them again.
    pub fn parts(parts: Vec<StateBlob>) -> Self {
        StateBlob(Blob::Parts(parts))
    }

    /// `changes` is a delta: what changed since this task's previous snapshot, to be
    /// applied on top of it at restore. Only returned by
    /// [`Operator::snapshot_changes`](crate::engine::Operator::snapshot_changes); the
    /// checkpoint then references the earlier checkpoints' blobs it builds on.
    pub fn delta(changes: StateBlob) -> Self {
        StateBlob(Blob::Delta(Box::new(changes)))
    }

    /// Whether this is a delta on the task's previous snapshot.
    pub fn is_delta(&self) -> bool {
        matches!(self.0, Blob::Delta(_))
    }

    /// The bytes a checkpoint stores.
    pub fn into_bytes(self) -> Result<Vec<u8>> {
        match self.0 {
            Blob::Bytes(bytes) => Ok(bytes),
            Blob::Arrow { head, batches } => write(&head, &batches),
            Blob::Parts(parts) => {
                let mut out = Vec::new();
                for part in parts {
                    let bytes = part.into_bytes()?;
                    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    out.extend_from_slice(&bytes);
                }
                Ok(out)
            }
            Blob::Delta(changes) => changes.into_bytes(),
        }
    }
}

/// One task's checkpointed state as it is restored: its last full snapshot, then the
/// deltas ([`StateBlob::delta`]) taken on top of it, oldest first.
pub type Chain = Vec<Vec<u8>>;

/// The full snapshots of `chains`, for a restore that takes no deltas: an error if a
/// chain has any.
pub fn full_snapshots(chains: Vec<Chain>) -> Result<Vec<Vec<u8>>> {
    chains
        .into_iter()
        .map(|chain| match <[Vec<u8>; 1]>::try_from(chain) {
            Ok([full]) => Ok(full),
            Err(chain) => Err(EngineError::State(format!(
                "restoring state: {} snapshot(s) in a chain where only one full snapshot is read",
                chain.len()
            ))
            .into()),
        })
        .collect()
}

/// When an operator's snapshot may be a delta rather than a full snapshot: a chain
/// stays short (at most [`MAX_DELTAS`](Self::MAX_DELTAS) deltas) and its deltas
/// together hold fewer rows than the state itself, so a restore never reads more than
/// about twice the state, and garbage collection keeps few old checkpoints for it.
#[derive(Debug, Default)]
pub struct DeltaPolicy {
    deltas: usize,
    rows: usize,
}

impl DeltaPolicy {
    /// Deltas after a full snapshot before the next full one.
    pub const MAX_DELTAS: usize = 9;

    /// Whether the next snapshot, with `changed` of the state's `total` rows changed
    /// since the last one, is a delta; counts it if so. A full snapshot otherwise,
    /// which starts a new chain.
    pub fn delta(&mut self, changed: usize, total: usize) -> bool {
        if self.deltas >= Self::MAX_DELTAS || self.rows + changed > total {
            self.full();
            return false;
        }
        self.deltas += 1;
        self.rows += changed;
        true
    }

    /// A full snapshot was taken: a new chain starts.
    pub fn full(&mut self) {
        *self = DeltaPolicy::default();
    }
}

/// The parts of a state written by [`StateBlob::parts`].
pub fn parts(mut bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let mut parts = Vec::new();
    while !bytes.is_empty() {
        let part = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .and_then(|len| bytes.get(8..8usize.checked_add(len)?))
            .ok_or_else(|| EngineError::State("restoring operator state: truncated part".into()))?;
        bytes = &bytes[8 + part.len()..];
        parts.push(part);
    }
    Ok(parts)
}

/// Encodes `header` and `batches` now (see [`StateBlob::arrow`]).
pub fn encode<H: Serialize>(header: &H, batches: &[Vec<ArrayRef>]) -> Result<Vec<u8>> {
    StateBlob::arrow(header, batches.to_vec())?.into_bytes()
}

fn write(head: &[u8], batches: &[Vec<ArrayRef>]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(head.len() + 8);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(head);
    let Some(first) = batches.first() else {
        return Ok(out);
    };
    let schema = Arc::new(Schema::new(
        first
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let arrow = |e| EngineError::arrow("encoding operator state", e);
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).map_err(arrow)?;
    for columns in batches {
        let rows = columns.first().map_or(0, |c| c.len());
        let batch = RecordBatch::try_new_with_options(
            schema.clone(),
            columns.clone(),
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(arrow)?;
        w.write(&batch).map_err(arrow)?;
    }
    w.finish().map_err(arrow)?;
    drop(w);
    Ok(out)
}

/// Decodes what [`encode`] wrote: the header and each batch's columns.
pub fn decode<H: DeserializeOwned>(bytes: &[u8]) -> Result<(H, Vec<Vec<ArrayRef>>)> {
    let corrupt = |what: String| EngineError::State(format!("restoring operator state: {what}"));
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(|| corrupt("truncated".into()))?;
    let head = bytes
        .get(8..8 + len)
        .ok_or_else(|| corrupt("truncated header".into()))?;
    let header: H = serde_json::from_slice(head).map_err(|e| corrupt(e.to_string()))?;
    let rest = &bytes[8 + len..];
    if rest.is_empty() {
        return Ok((header, Vec::new()));
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(rest), None)
        .map_err(|e| corrupt(e.to_string()))?;
    let mut batches = Vec::new();
    for b in reader {
        let b = b.map_err(|e| corrupt(e.to_string()))?;
        batches.push(b.columns().to_vec());
    }
    Ok((header, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn header_and_batches_round_trip() {
        let batches = vec![
            vec![
                Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
                Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
            ],
            vec![
                Arc::new(Int64Array::from(vec![3])) as ArrayRef,
                Arc::new(StringArray::from(vec!["c"])) as ArrayRef,
            ],
        ];
        let bytes = encode(&(7i64, vec![10i64, 20]), &batches).unwrap();
        let (h, back): ((i64, Vec<i64>), _) = decode(&bytes).unwrap();
        assert_eq!(h, (7, vec![10, 20]));
        assert_eq!(back.len(), 2);
        assert_eq!(back[0][0].as_ref(), batches[0][0].as_ref());
        assert_eq!(back[1][1].as_ref(), batches[1][1].as_ref());
        let (h, none): (u8, _) = decode(&encode(&3u8, &[]).unwrap()).unwrap();
        assert_eq!((h, none.len()), (3, 0));
        assert!(decode::<u8>(&bytes[..5]).is_err());
    }
}
