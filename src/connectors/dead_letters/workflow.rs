//! The admin workflow of the dead-letter queue, shared by `tributary dlq …` and the
//! admin endpoint's `/dlq` routes: both call this code, so they select, check and
//! change dead letters the same way.
//!
//! Owns:
//! - reading a selection from key/value pairs (command-line flags and query strings
//!   alike: [`parse_params`]), with times given as RFC 3339 or as a duration ago
//!   (`2h`, `30m`, `1h30m`);
//! - the admin token check ([`authorize`]);
//! - replay and discard by id or by filter ([`Workflow`]): a filter selects the pending
//!   records it matches, read page by page before anything changes, then changed in
//!   chunks (replay: the store's `replay_chunk`; discard: [`CHUNK`] ids);
//! - editing: the corrected record passes an [`EditValidator`] (the record's table,
//!   planned by the caller: this module knows no pipeline) before the store sees it;
//! - the JSON shapes both sides print (`list`, `show`, `stats`).

use async_trait::async_trait;

use super::{Filter, Page, ReplayOutcome, Result, StatsRow, Store};
use crate::dlq::record::{DeadLetter, PayloadFormat, Status};
use crate::dlq::{BadRecordReason, DlqError};

/// How many ids one store call changes at most.
pub const CHUNK: usize = 500;
/// Records read per page when a filter selects what to change.
const PAGE: usize = 10_000;

/// The most records one listing returns.
pub const MAX_LIMIT: usize = 10_000;

/// What a request selects and asks for, read from key/value pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub filter: Filter,
    /// Whether any filter key was given (an empty filter selects everything).
    pub filtered: bool,
    pub page: Page,
    pub ids: Vec<String>,
    pub dry_run: bool,
    pub reason: Option<String>,
    /// `audit`'s number of entries.
    pub limit: Option<usize>,
}

/// The keys [`parse_params`] reads.
pub const KEYS: [&str; 12] = [
    "pipeline", "domain", "class", "status", "since", "until", "text", "offset", "limit", "ids",
    "dry_run", "reason",
];

/// Reads a selection from `pairs` (empty values are ignored). `now` (ms since the
/// epoch) anchors durations: `since=2h` is two hours before it. Unknown keys, classes,
/// statuses and times are refused, naming what is accepted.
pub fn parse_params<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    now: i64,
) -> Result<Params> {
    let mut p = Params::default();
    for (key, value) in pairs {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let filter = &mut p.filter;
        match key {
            "pipeline" => filter.pipeline = Some(value.to_string()),
            "domain" => filter.domain = Some(value.to_string()),
            "class" => filter.class = Some(parse_class(value)?),
            "status" => filter.status = Some(parse_status(value)?),
            "since" => filter.since = Some(parse_time(value, now)?),
            "until" => filter.until = Some(parse_time(value, now)?),
            "text" => filter.text = Some(value.to_string()),
            "offset" => p.page.offset = parse_number(key, value)?,
            "limit" => {
                let n = parse_number(key, value)?;
                if n == 0 || n > MAX_LIMIT {
                    return Err(DlqError::BadRequest(format!(
                        "limit {n}: give a number from 1 to {MAX_LIMIT}"
                    )));
                }
                p.page.limit = n;
                p.limit = Some(n);
            }
            "ids" => p.ids.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            ),
            "dry_run" => {
                p.dry_run = match value {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(DlqError::BadRequest(format!(
                            "dry_run={value}: use true or false"
                        )));
                    }
                }
            }
            "reason" => p.reason = Some(value.to_string()),
            other => {
                return Err(DlqError::BadRequest(format!(
                    "unknown parameter {other} (known: {})",
                    KEYS.join(", ")
                )));
            }
        }
        if matches!(
            key,
            "pipeline" | "domain" | "class" | "status" | "since" | "until" | "text"
        ) {
            p.filtered = true;
        }
    }
    if let (Some(since), Some(until)) = (p.filter.since, p.filter.until)
        && since >= until
    {
        return Err(DlqError::BadRequest(
            "since is not before until: the filter selects nothing".into(),
        ));
    }
    Ok(p)
}

fn parse_number(key: &str, value: &str) -> Result<usize> {
    value
        .parse()
        .map_err(|_| DlqError::BadRequest(format!("{key}={value}: not a number")))
}

/// A failure class by its name (`schema_mismatch`; `schema-mismatch` too).
pub fn parse_class(s: &str) -> Result<BadRecordReason> {
    BadRecordReason::parse(&s.to_ascii_lowercase().replace('-', "_")).ok_or_else(|| {
        let known: Vec<&str> = BadRecordReason::ALL.iter().map(|r| r.as_str()).collect();
        DlqError::BadRequest(format!(
            "unknown failure class {s} (known: {})",
            known.join(", ")
        ))
    })
}

pub fn parse_status(s: &str) -> Result<Status> {
    Status::parse(&s.to_ascii_lowercase()).ok_or_else(|| {
        DlqError::BadRequest(format!(
            "unknown status {s} (known: pending, replayed, discarded)"
        ))
    })
}

/// A time as ms since the epoch: RFC 3339 (`2026-03-01T12:00:00Z`), or a duration
/// before `now` (`90s`, `30m`, `2h`, `7d`, `1h30m`).
pub fn parse_time(s: &str, now: i64) -> Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    match parse_ago(s) {
        Some(ms) => Ok(now - ms),
        None => Err(DlqError::BadRequest(format!(
            "time {s}: give an RFC 3339 time (2026-03-01T12:00:00Z) or a duration ago \
             (30m, 2h, 7d, 1h30m)"
        ))),
    }
}

/// `1h30m` → milliseconds; units s, m, h, d, w.
fn parse_ago(s: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

/// When an admin token is not configured, whether changes are open (the command line:
/// it has file access anyway) or closed (the admin endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unset {
    Open,
    Closed,
}

/// Whether `given` may change dead letters when the configured token is `configured`.
pub fn authorize(configured: &str, given: Option<&str>, unset: Unset) -> Result<()> {
    if configured.is_empty() {
        return match unset {
            Unset::Open => Ok(()),
            Unset::Closed => Err(DlqError::Unauthorized(
                "no admin token is configured (dlq.admin_token): changing dead letters \
                 through the admin endpoint is disabled"
                    .into(),
            )),
        };
    }
    match given.filter(|g| !g.is_empty()) {
        None => Err(DlqError::Unauthorized(
            "changing dead letters needs the admin token (command line: --token or \
             TRIBUTARY_ADMIN_TOKEN; admin endpoint: Authorization: Bearer TOKEN)"
                .into(),
        )),
        Some(g) if same(g.as_bytes(), configured.as_bytes()) => Ok(()),
        Some(_) => Err(DlqError::Unauthorized("the admin token is wrong".into())),
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a corrected record against the record's source table before it is stored.
#[async_trait]
pub trait EditValidator: Send + Sync {
    /// `Err(why)` when `letter`'s table refuses `payload` as one of its records.
    async fn validate(&self, letter: &DeadLetter, payload: &[u8]) -> Result<(), String>;
}

/// What a replay or a discard applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Ids(Vec<String>),
    /// The pending records the filter selects.
    Filter(Filter),
}

impl Target {
    /// Ids or filters, not both, and at least one of them; a filter's status, if any,
    /// must be `pending` (only pending records are replayed or discarded).
    pub fn from_params(p: &Params) -> Result<Self> {
        match (p.ids.is_empty(), p.filtered) {
            (false, true) => Err(DlqError::BadRequest("give ids or filters, not both".into())),
            (false, false) => Ok(Target::Ids(p.ids.clone())),
            (true, false) => Err(DlqError::BadRequest(
                "name the dead letters: ids, or at least one filter (every pending record: \
                 status pending)"
                    .into(),
            )),
            (true, true) => {
                if p.filter.status.is_some_and(|s| s != Status::Pending) {
                    return Err(DlqError::BadRequest(
                        "only pending records are replayed or discarded: drop the status \
                         filter or use status pending"
                            .into(),
                    ));
                }
                Ok(Target::Filter(p.filter.clone()))
            }
        }
    }
}

/// What a replay did, or would do (`dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// The pending records selected (for a dry run: those that would be replayed).
    pub selected: u64,
    /// Selected by a filter but not replayable (no source table): left pending.
    pub not_replayable: u64,
    #[serde(flatten)]
    pub outcome: ReplayOutcome,
}

/// What a discard did, or would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiscardReport {
    pub dry_run: bool,
    pub selected: u64,
    pub discarded: u64,
}

/// The operations of the admin workflow on one store.
#[derive(Clone)]
pub struct Workflow {
    store: Store,
}

impl Workflow {
    pub fn new(store: Store) -> Self {
        Workflow { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn get(&self, id: &str) -> Result<DeadLetter> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| DlqError::NotFound(id.to_string()))
    }

    /// Every pending record `filter` selects, read page by page before anything
    /// changes (a change moves records out of `pending` and would shift the pages).
    pub async fn pending(&self, filter: &Filter) -> Result<Vec<DeadLetter>> {
        let filter = Filter {
            status: Some(Status::Pending),
            ..filter.clone()
        };
        let mut all: Vec<DeadLetter> = Vec::new();
        loop {
            let page = Page {
                offset: 0,
                limit: PAGE,
                after: all.last().map(|l| (l.first_failure, l.id.clone())),
            };
            let got = self.store.list(&filter, page).await?;
            let n = got.len();
            all.extend(got);
            if n < PAGE {
                return Ok(all);
            }
        }
    }

    /// The records of `ids`, in order; a missing one is refused (DLQ002).
    async fn letters(&self, ids: &[String]) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.get(id).await?);
        }
        Ok(out)
    }

    /// Replays `target`: its ids as given (the store refuses the lot when one is not
    /// replayable), or the replayable pending records of a filter. A dry run reads and
    /// counts, and changes nothing.
    pub async fn replay(
        &self,
        target: &Target,
        actor: &str,
        dry_run: bool,
    ) -> Result<ReplayReport> {
        let mut report = ReplayReport {
            dry_run,
            ..ReplayReport::default()
        };
        let ids: Vec<String> = match target {
            Target::Ids(ids) => {
                let letters = self.letters(ids).await?;
                if let Some(l) = letters.iter().find(|l| l.source.table.is_none()) {
                    return Err(not_replayable(l));
                }
                report.selected = letters
                    .iter()
                    .filter(|l| l.status == Status::Pending)
                    .count() as u64;
                if dry_run {
                    return Ok(report);
                }
                ids.clone()
            }
            Target::Filter(filter) => {
                let (replayable, not): (Vec<_>, Vec<_>) = self
                    .pending(filter)
                    .await?
                    .into_iter()
                    .partition(|l| l.source.table.is_some());
                report.selected = replayable.len() as u64;
                report.not_replayable = not.len() as u64;
                if dry_run {
                    return Ok(report);
                }
                replayable.into_iter().map(|l| l.id).collect()
            }
        };
        for (i, chunk) in ids.chunks(self.store.replay_chunk().max(1)).enumerate() {
            let o = self.store.replay(chunk, actor).await?;
            report.outcome.replayed += o.replayed;
            report.outcome.skipped += o.skipped;
            // Crash tests: abort between two chunks, each replayed and marked at once.
            crate::checkpoint::fault::point(
                crate::checkpoint::fault::Phase::ReplayChunk,
                Some(i as u64 + 1),
                &"dlq replay",
            );
        }
        Ok(report)
    }

    /// Discards `target` with `reason` (required, not blank).
    pub async fn discard(
        &self,
        target: &Target,
        reason: &str,
        actor: &str,
        dry_run: bool,
    ) -> Result<DiscardReport> {
        if reason.trim().is_empty() {
            return Err(DlqError::BadRequest("a discard needs a reason".into()));
        }
        let (ids, selected): (Vec<String>, u64) = match target {
            Target::Ids(ids) => {
                let letters = self.letters(ids).await?;
                let pending = letters.iter().filter(|l| l.status == Status::Pending);
                (ids.clone(), pending.count() as u64)
            }
            Target::Filter(filter) => {
                let ids: Vec<String> = self
                    .pending(filter)
                    .await?
                    .into_iter()
                    .map(|l| l.id)
                    .collect();
                let n = ids.len() as u64;
                (ids, n)
            }
        };
        let mut report = DiscardReport {
            dry_run,
            selected,
            discarded: 0,
        };
        if dry_run {
            return Ok(report);
        }
        for chunk in ids.chunks(CHUNK) {
            report.discarded += self.store.discard(chunk, reason, actor).await?;
        }
        Ok(report)
    }

    /// Replaces the payload of pending record `id` with `payload`, once `validator`
    /// accepts it as a record of the record's table. Refused (DLQ004), changing
    /// nothing, when the record is not pending, has no source table, or the table
    /// refuses the payload.
    pub async fn edit(
        &self,
        id: &str,
        payload: Vec<u8>,
        actor: &str,
        validator: &dyn EditValidator,
    ) -> Result<()> {
        let letter = self.get(id).await?;
        if letter.status != Status::Pending {
            return Err(DlqError::InvalidEdit(format!(
                "dead letter {id} is {}: only pending records can be edited",
                letter.status.as_str()
            )));
        }
        if letter.source.table.is_none() {
            return Err(DlqError::InvalidEdit(format!(
                "dead letter {id} has no source table (it is a row node {} produced, not \
                 one of the pipeline's input records), so it cannot be replayed: \
                 discard it instead",
                letter.node
            )));
        }
        validator
            .validate(&letter, &payload)
            .await
            .map_err(DlqError::InvalidEdit)?;
        self.store.edit(id, payload, actor).await
    }
}

fn not_replayable(l: &DeadLetter) -> DlqError {
    DlqError::NotReplayable {
        id: l.id.clone(),
        reason: format!(
            "it has no source table (a row node {} produced, not an input record)",
            l.node
        ),
    }
}

/// A payload for people: pretty JSON when it is JSON (a row, or UTF-8 JSON bytes),
/// else `None`.
pub fn payload_json(payload: &[u8], format: PayloadFormat) -> Option<serde_json::Value> {
    let parsed = serde_json::from_slice::<serde_json::Value>(payload).ok();
    match format {
        PayloadFormat::Row => parsed,
        PayloadFormat::Bytes => parsed.filter(|v| v.is_object() || v.is_array()),
    }
}

/// `show`'s JSON (and `GET /dlq/ID`'s): the record as stored (payloads in base64),
/// with `payload_decoded` / `original_payload_decoded` when they are JSON.
pub fn show_json(l: &DeadLetter) -> serde_json::Value {
    let mut v = serde_json::to_value(l).unwrap_or_default();
    if let Some(p) = payload_json(&l.payload, l.payload_format) {
        v["payload_decoded"] = p;
    }
    if let Some(p) = l
        .original_payload
        .as_deref()
        .and_then(|o| payload_json(o, l.payload_format))
    {
        v["original_payload_decoded"] = p;
    }
    v
}

/// `stats`' JSON: the groups, the total, and the oldest pending record's first failure
/// and age (seconds) at `now`.
pub fn stats_json(rows: &[StatsRow], now: i64) -> serde_json::Value {
    let oldest = rows
        .iter()
        .filter(|r| r.status == Status::Pending && r.count > 0)
        .map(|r| r.oldest)
        .min();
    serde_json::json!({
        "groups": rows,
        "total": rows.iter().map(|r| r.count).sum::<u64>(),
        "pending": rows.iter().filter(|r| r.status == Status::Pending).map(|r| r.count).sum::<u64>(),
        "oldest_pending": oldest,
        "oldest_pending_age_s": oldest.map(|t| (now - t).max(0) / 1000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn parse(pairs: &[(&str, &str)]) -> Result<Params> {
        parse_params(pairs.iter().copied(), NOW)
    }

    #[test]
    fn filters_read_classes_statuses_and_times() {
        let p = parse(&[
            ("pipeline", "orders"),
            ("class", "schema_mismatch"),
            ("status", "pending"),
            ("since", "2h"),
            ("until", "2027-01-15T08:00:00Z"),
            ("text", "total"),
            ("offset", "10"),
            ("limit", "20"),
            ("domain", ""),
        ])
        .unwrap();
        assert!(p.filtered);
        assert_eq!(
            p.filter,
            Filter {
                pipeline: Some("orders".into()),
                domain: None,
                class: Some(BadRecordReason::SchemaMismatch),
                status: Some(Status::Pending),
                since: Some(NOW - 2 * 3_600_000),
                until: Some(NOW),
                text: Some("total".into()),
            }
        );
        assert_eq!(
            p.page,
            Page {
                offset: 10,
                limit: 20,
                after: None,
            }
        );
        let p = parse(&[("ids", "a, b,,c"), ("dry_run", "true"), ("reason", "dup")]).unwrap();
        assert!(!p.filtered);
        assert_eq!(p.ids, ["a", "b", "c"]);
        assert!(p.dry_run);
        assert_eq!(p.reason.as_deref(), Some("dup"));
        assert_eq!(p.page, Page::default());
    }

    #[test]
    fn durations_ago_and_rfc3339_times() {
        assert_eq!(parse_time("30m", NOW).unwrap(), NOW - 1_800_000);
        assert_eq!(parse_time("90s", NOW).unwrap(), NOW - 90_000);
        assert_eq!(parse_time("1h30m", NOW).unwrap(), NOW - 5_400_000);
        assert_eq!(parse_time("7d", NOW).unwrap(), NOW - 7 * 86_400_000);
        assert_eq!(
            parse_time("2027-01-15T09:00:00+01:00", NOW).unwrap(),
            1_800_000_000_000
        );
        for bad in ["", "h", "2x", "1.5h", "-2h", "yesterday", "2027-01-15"] {
            let e = parse_time(bad, NOW).unwrap_err();
            assert_eq!(e.code(), "DLQ006", "{bad}");
            assert!(e.to_string().contains("RFC 3339"), "{e}");
        }
        let e = parse(&[("since", "1h"), ("until", "2h")]).unwrap_err();
        assert!(e.to_string().contains("since is not before until"), "{e}");
    }

    #[test]
    fn unknown_classes_statuses_and_keys_are_refused_naming_what_is_known() {
        let e = parse(&[("class", "broken")]).unwrap_err();
        assert_eq!(e.code(), "DLQ006");
        assert_eq!(
            e.to_string(),
            "unknown failure class broken (known: malformed, schema_mismatch, constraint, \
             processing, late, lookup_miss, rejected, sink)"
        );
        assert_eq!(
            parse(&[("class", "lookup-miss")]).unwrap().filter.class,
            Some(BadRecordReason::LookupMiss)
        );
        let e = parse(&[("status", "done")]).unwrap_err();
        assert!(
            e.to_string().contains("pending, replayed, discarded"),
            "{e}"
        );
        let e = parse(&[("colour", "red")]).unwrap_err();
        assert!(e.to_string().starts_with("unknown parameter colour"), "{e}");
        for (k, v) in [
            ("limit", "0"),
            ("limit", "x"),
            ("offset", "-1"),
            ("dry_run", "maybe"),
        ] {
            assert_eq!(parse(&[(k, v)]).unwrap_err().code(), "DLQ006", "{k}={v}");
        }
    }

    #[test]
    fn targets_are_ids_or_filters_of_pending_records() {
        let t = |pairs: &[(&str, &str)]| Target::from_params(&parse(pairs).unwrap());
        assert_eq!(
            t(&[("ids", "a,b")]).unwrap(),
            Target::Ids(vec!["a".into(), "b".into()])
        );
        assert!(matches!(
            t(&[("class", "late")]).unwrap(),
            Target::Filter(_)
        ));
        assert!(matches!(
            t(&[("status", "pending")]).unwrap(),
            Target::Filter(_)
        ));
        for refused in [
            &[][..],
            &[("ids", "a"), ("class", "late")],
            &[("status", "discarded")],
        ] {
            assert_eq!(t(refused).unwrap_err().code(), "DLQ006", "{refused:?}");
        }
    }

    #[test]
    fn the_token_is_needed_when_configured_and_closes_the_endpoint_when_not() {
        assert!(authorize("", None, Unset::Open).is_ok());
        assert!(authorize("", Some("anything"), Unset::Open).is_ok());
        let e = authorize("", Some("s3cret"), Unset::Closed).unwrap_err();
        assert_eq!(e.code(), "DLQ005");
        assert!(
            e.to_string().contains("no admin token is configured"),
            "{e}"
        );
        for unset in [Unset::Open, Unset::Closed] {
            assert!(authorize("s3cret", Some("s3cret"), unset).is_ok());
            let missing = authorize("s3cret", None, unset).unwrap_err();
            assert_eq!(missing.code(), "DLQ005");
            assert!(missing.to_string().contains("needs the admin token"));
            assert_eq!(
                authorize("s3cret", Some(""), unset)
                    .unwrap_err()
                    .to_string(),
                missing.to_string()
            );
            for wrong in ["s3cre", "s3cret ", "S3CRET"] {
                let e = authorize("s3cret", Some(wrong), unset).unwrap_err();
                assert_eq!(e.to_string(), "the admin token is wrong");
            }
        }
    }

    #[test]
    fn payloads_show_as_json_when_they_are() {
        let mut l = crate::dlq::record::sample(1);
        l.payload = br#"{"id":"o1","total":-3}"#.to_vec();
        l.original_payload = Some(b"{\"id\":\"o1\",".to_vec());
        let v = show_json(&l);
        assert_eq!(v["payload_decoded"]["total"], -3);
        assert!(v.get("original_payload_decoded").is_none());
        assert_eq!(v["id"], l.id);
        assert!(payload_json(b"42", PayloadFormat::Bytes).is_none());
        assert_eq!(payload_json(b"42", PayloadFormat::Row), Some(42.into()));
        assert!(payload_json(&[0, 159, 146], PayloadFormat::Bytes).is_none());
    }

    #[test]
    fn stats_give_the_oldest_pending_age() {
        let row = |status, count, oldest| StatsRow {
            pipeline: "p".into(),
            failure_class: BadRecordReason::Late,
            status,
            count,
            oldest,
        };
        let v = stats_json(
            &[
                row(Status::Pending, 2, NOW - 60_000),
                row(Status::Discarded, 3, NOW - 3_600_000),
                row(Status::Pending, 1, NOW - 120_000),
            ],
            NOW,
        );
        assert_eq!(v["total"], 6);
        assert_eq!(v["pending"], 3);
        assert_eq!(v["oldest_pending"], NOW - 120_000);
        assert_eq!(v["oldest_pending_age_s"], 120);
        assert_eq!(
            stats_json(&[], NOW)["oldest_pending"],
            serde_json::Value::Null
        );
    }
}
