//! A source task's checkpointed position as the engine stores it: the source's own
//! bytes (offsets, file positions…) together with the newest event time of each of
//! its splits, so that watermarks resume where they were (a split that sends nothing
//! after a restore does not hold the watermark back for good).
//!
//! Format: the line `tributary-position-v2`, a JSON line `{"event_times": {split:
//! ms}}`, then the source's bytes unchanged. Bytes without the first line are a
//! position written before event times were kept (the source's bytes alone).

use std::collections::BTreeMap;

const MAGIC: &[u8] = b"tributary-position-v2\n";

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Header {
    #[serde(default)]
    event_times: BTreeMap<u64, i64>,
}

/// The stored form of `position` with the splits' `event_times`.
pub(crate) fn encode(position: &[u8], event_times: Option<BTreeMap<u64, i64>>) -> Vec<u8> {
    let header = Header {
        event_times: event_times.unwrap_or_default(),
    };
    let mut out = MAGIC.to_vec();
    // A map of integers always serialises.
    out.extend(serde_json::to_vec(&header).unwrap_or_else(|_| b"{}".to_vec()));
    out.push(b'\n');
    out.extend_from_slice(position);
    out
}

/// The source's bytes and the event times of a stored position.
pub(crate) fn decode(stored: &[u8]) -> super::Result<(&[u8], BTreeMap<u64, i64>)> {
    let Some(rest) = stored.strip_prefix(MAGIC) else {
        return Ok((stored, BTreeMap::new()));
    };
    let end = rest.iter().position(|b| *b == b'\n').ok_or_else(|| {
        super::EngineError::Graph("a checkpointed source position is cut short".into())
    })?;
    let header: Header = serde_json::from_slice(&rest[..end]).map_err(|e| {
        super::EngineError::Graph(format!("a checkpointed source position is unreadable: {e}"))
    })?;
    Ok((&rest[end + 1..], header.event_times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_round_trips_with_its_event_times_and_old_positions_still_read() {
        let times = BTreeMap::from([(0, 1_000), (3, -5)]);
        let stored = encode(b"{\"0\":42}\nrest", Some(times.clone()));
        let (position, got) = decode(&stored).unwrap();
        assert_eq!(position, b"{\"0\":42}\nrest");
        assert_eq!(got, times);
        let (legacy, none) = decode(b"{\"0\":42}").unwrap();
        assert_eq!(legacy, b"{\"0\":42}");
        assert!(none.is_empty());
        assert!(decode(b"tributary-position-v2\n{").is_err());
    }
}
