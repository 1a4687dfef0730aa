//! The `generator` connector: synthetic, deterministic event streams for demos, tests
//! and benchmarks.
//!
//! Two worlds:
//! - `restaurant` ([`restaurant`]): a quick-service restaurant chain. Reference tables
//!   (`restaurants`, `menu_items`, `customers`) and event streams (`orders`, `kitchen`,
//!   `app`). Events are produced as JSON objects and decoded by
//!   [`JsonDecoder`](crate::formats::json::JsonDecoder), so malformed events take the
//!   same path as records read from a broker.
//! - `nexmark` ([`nexmark`]): the Nexmark auction model (`events`, `bids`, `auctions`,
//!   `persons`), generated straight into Arrow columns, for throughput.
//!
//! Invariants:
//! - Same seed, parallelism and options give the same records, in the same order.
//!   Every entity, order, session and Nexmark event draws from its own ChaCha8 stream
//!   keyed by `(seed, index)`, so an order looks the same in `orders` and `kitchen` and
//!   does not depend on which partition generates it.
//! - Task `p` of `P` generates the units (orders, sessions, entities, Nexmark events)
//!   whose index is `p` modulo `P`; `count` is split as `count / P`, plus one for
//!   `p < count % P`.
//! - `count` counts records as a broker would deliver them: duplicates and malformed
//!   records included (a malformed record is reported and dropped by the decoder, so a
//!   batch can hold fewer rows than records read).
//! - Each record has a schedule (its emission time on the event-time axis). With a rate,
//!   event time advances at wall-clock speed from the run's start and a record is
//!   emitted once its schedule is due; without one (`rate = 0`) records are produced as
//!   fast as downstream takes them. With `warmup`, a fresh run starts that far into its
//!   schedule: the first `warmup` of event time is emitted at once (as a consumer
//!   catching up on a topic would read it), so the streams are at their steady rate —
//!   orders at every stage of their lifecycle — from the start, instead of ramping up
//!   over the lifecycles' length (up to ~40 minutes for a delivery).

mod nexmark;
mod restaurant;

pub use nexmark::{Q5_HOT_ITEMS, Q7_HIGHEST_BID};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use super::{ConnectorError, Options, TableRequest};
use crate::dlq::BadRecords;
use crate::engine::{EngineError, Source, SourceContext, SourceFactory, TaskInfo};

const CONNECTOR: &str = "generator";

/// The time zone of every timestamp column the generator produces.
const UTC_TZ: &str = "+00:00";

/// Default event-time origin: 2026-01-01T00:00:00Z, in milliseconds since the epoch.
const DEFAULT_START_MS: i64 = 1_767_225_600_000;

/// The worlds, for error messages.
const WORLDS: &[&str] = &["restaurant", "nexmark"];

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(UTC_TZ.into()))
}

fn other(message: impl Into<String>) -> crate::Error {
    ConnectorError::Other {
        connector: CONNECTOR,
        message: message.into(),
    }
    .into()
}

// ------------------------------------------------------------------------------------
// Settings
// ------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum World {
    Restaurant,
    Nexmark,
}

impl World {
    fn parse(s: &str) -> Option<World> {
        match s.trim().to_ascii_lowercase().as_str() {
            "restaurant" => Some(World::Restaurant),
            "nexmark" => Some(World::Nexmark),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            World::Restaurant => "restaurant",
            World::Nexmark => "nexmark",
        }
    }

    fn streams(self) -> &'static [&'static str] {
        match self {
            World::Restaurant => restaurant::STREAMS,
            World::Nexmark => nexmark::STREAMS,
        }
    }

    fn schema(self, stream: &str) -> Option<SchemaRef> {
        match self {
            World::Restaurant => restaurant::schema(stream),
            World::Nexmark => nexmark::schema(stream),
        }
    }

    fn default_rate(self) -> f64 {
        match self {
            World::Restaurant => 1000.0,
            World::Nexmark => 0.0,
        }
    }
}

fn parse_world(s: &str) -> crate::Result<World> {
    World::parse(s).ok_or_else(|| {
        other(format!(
            "unknown world '{s}'; worlds are: {}",
            WORLDS.join(", ")
        ))
    })
}

/// Where event time starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTime {
    At(DateTime<Utc>),
    /// The wall clock when the source is planned (or when `write_events` is called).
    Now,
}

impl StartTime {
    fn origin_ms(self) -> i64 {
        match self {
            StartTime::At(t) => t.timestamp_millis(),
            StartTime::Now => Utc::now().timestamp_millis(),
        }
    }
}

impl std::fmt::Display for StartTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartTime::At(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            StartTime::Now => f.write_str("now"),
        }
    }
}

/// The knobs of a generator besides world, stream, seed and count.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorSettings {
    /// Events per second for the whole source (all partitions); 0 = as fast as
    /// possible. Restaurant: distinct events of the `orders` stream (or `app`), which
    /// sets how many orders (sessions) there are per second of event time; `kitchen`
    /// follows the orders so that both streams agree.
    pub rate: f64,
    /// Event-time origin.
    pub start_time: StartTime,
    /// Most an event's emission lags its event time (in-order ones).
    pub out_of_order: Duration,
    /// Fraction of events emitted more than `out_of_order` after their event time.
    pub late_fraction: f64,
    /// Fraction of events emitted a second time, later, with the same id.
    pub duplicate_fraction: f64,
    /// Fraction of records corrupted (restaurant only): broken JSON, wrong types.
    pub malformed_fraction: f64,
    /// Fraction of orders (restaurant `orders` only) given one extra event after their
    /// last one: a step their lifecycle cannot take (an impossible transition).
    pub impossible_fraction: f64,
    /// With a rate: how much event time a fresh run emits at once before pacing.
    pub warmup: Duration,
}

impl GeneratorSettings {
    /// The defaults of `world`: rate 1000 (restaurant) or 0 (nexmark), start
    /// 2026-01-01T00:00:00Z, no disorder, no duplicates, nothing malformed.
    pub fn defaults(world: &str) -> crate::Result<Self> {
        let world = parse_world(world)?;
        Ok(Self::defaults_of(world))
    }

    fn defaults_of(world: World) -> Self {
        GeneratorSettings {
            rate: world.default_rate(),
            start_time: StartTime::At(
                DateTime::from_timestamp_millis(DEFAULT_START_MS).expect("valid constant"),
            ),
            out_of_order: Duration::ZERO,
            late_fraction: 0.0,
            duplicate_fraction: 0.0,
            malformed_fraction: 0.0,
            impossible_fraction: 0.0,
            warmup: Duration::ZERO,
        }
    }

    /// Reads `rate`, `start_time`, `out_of_order`, `late_fraction`,
    /// `duplicate_fraction`, `malformed_fraction` and `impossible_fraction` from `opts`
    /// (marking them known).
    pub fn from_options(world: &str, opts: &mut Options) -> crate::Result<Self> {
        let world = World::parse(world).ok_or_else(|| {
            opts.invalid(
                "world",
                world,
                format!("unknown world; worlds are: {}", WORLDS.join(", ")),
            )
        })?;
        Self::read(world, opts)
    }

    /// For `tributary generate`: `options` are the `--option key=value` pairs, read as
    /// the SQL options of the same names; unknown ones are refused.
    pub fn from_cli(
        world: &str,
        stream: &str,
        seed: u64,
        options: BTreeMap<String, String>,
    ) -> crate::Result<Self> {
        let _ = seed; // every seed is valid
        let w = parse_world(world)?;
        if w.schema(stream).is_none() {
            return Err(unknown_stream(w, stream));
        }
        let mut opts = Options::new("generate", CONNECTOR, options);
        let settings = Self::read(w, &mut opts)?;
        opts.finish()?;
        Ok(settings)
    }

    fn read(world: World, opts: &mut Options) -> crate::Result<Self> {
        let d = Self::defaults_of(world);
        let rate: f64 = opts.parse("rate", d.rate)?;
        if !rate.is_finite() || rate < 0.0 {
            return Err(opts.invalid(
                "rate",
                &rate.to_string(),
                "expected events per second, 0 or more (0 = as fast as possible)",
            ));
        }
        let start_time = match opts.get("start_time") {
            None => d.start_time,
            Some(v) if v.trim().eq_ignore_ascii_case("now") => StartTime::Now,
            Some(v) => {
                match DateTime::parse_from_rfc3339(v.trim()) {
                    Ok(t) => StartTime::At(t.with_timezone(&Utc)),
                    Err(e) => {
                        return Err(opts.invalid(
                        "start_time",
                        &v,
                        format!("expected an RFC 3339 time such as 2026-01-01T00:00:00Z, or 'now' ({e})"),
                    ));
                    }
                }
            }
        };
        let out_of_order = opts.parse_duration("out_of_order", d.out_of_order)?;
        let late_fraction = fraction(opts, "late_fraction")?;
        let duplicate_fraction = fraction(opts, "duplicate_fraction")?;
        let malformed_fraction = fraction(opts, "malformed_fraction")?;
        let impossible_fraction = fraction(opts, "impossible_fraction")?;
        let warmup = opts.parse_duration("warmup", d.warmup)?;
        if world == World::Nexmark && malformed_fraction > 0.0 {
            return Err(opts.invalid(
                "malformed_fraction",
                &malformed_fraction.to_string(),
                "only the restaurant world produces malformed records",
            ));
        }
        if world == World::Nexmark && impossible_fraction > 0.0 {
            return Err(opts.invalid(
                "impossible_fraction",
                &impossible_fraction.to_string(),
                "only the restaurant world's orders have a lifecycle to break",
            ));
        }
        Ok(GeneratorSettings {
            rate,
            start_time,
            out_of_order,
            late_fraction,
            duplicate_fraction,
            malformed_fraction,
            impossible_fraction,
            warmup,
        })
    }
}

fn fraction(opts: &mut Options, key: &'static str) -> crate::Result<f64> {
    let v: f64 = opts.parse(key, 0.0)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(opts.invalid(key, &v.to_string(), "expected a fraction between 0 and 1"));
    }
    Ok(v)
}

fn unknown_stream(world: World, stream: &str) -> crate::Error {
    other(format!(
        "world '{}' has no stream '{stream}'; its streams are: {}",
        world.name(),
        world.streams().join(", ")
    ))
}

/// Everything a task's generator needs, resolved.
#[derive(Debug, Clone)]
struct Params {
    seed: u64,
    /// Events per second for the whole source; 0 = unpaced.
    rate: f64,
    /// Event-time origin, ms since the epoch.
    origin_ms: i64,
    out_of_order_ms: i64,
    late: f64,
    dup: f64,
    malformed: f64,
    impossible: f64,
    partition: u64,
    parallelism: u64,
}

impl Params {
    fn new(
        seed: u64,
        s: &GeneratorSettings,
        origin_ms: i64,
        partition: u64,
        parallelism: u64,
    ) -> Self {
        Params {
            seed,
            rate: s.rate,
            origin_ms,
            out_of_order_ms: i64::try_from(s.out_of_order.as_millis()).unwrap_or(i64::MAX / 4),
            late: s.late_fraction,
            dup: s.duplicate_fraction,
            malformed: s.malformed_fraction,
            impossible: s.impossible_fraction,
            partition,
            parallelism: parallelism.max(1),
        }
    }

    /// Emission delay after event time for one event: in `[0, out_of_order]`, or, for
    /// a late event, beyond it. Always draws the same number of values.
    fn draw_delay(&self, rng: &mut ChaCha8Rng) -> i64 {
        let late = rng.random::<f64>() < self.late;
        let u = rng.random::<f64>();
        let d = self.out_of_order_ms;
        if late {
            let span = 2 * d.max(1000);
            d + 1 + (u * span as f64) as i64
        } else {
            ((u * (d + 1) as f64) as i64).min(d)
        }
    }
}

// ------------------------------------------------------------------------------------
// Determinism helpers
// ------------------------------------------------------------------------------------

/// SplitMix64's finaliser: a bijection on `u64` with good avalanche.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A key for `(seed, tag, index)`; a bijection of `index` for a fixed seed and tag, so
/// distinct indexes never collide.
fn mix(seed: u64, tag: u64, index: u64) -> u64 {
    let key = splitmix64(seed ^ splitmix64(tag));
    splitmix64(key ^ index)
}

/// The random stream of unit `index` of kind `tag`.
fn rng_for(seed: u64, tag: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(seed, tag, index))
}

/// How many of `total` units fall to partition `p` of `n` (units `i` with `i % n == p`).
fn share(total: u64, p: u64, n: u64) -> u64 {
    total / n + u64::from(p < total % n)
}

// ------------------------------------------------------------------------------------
// Generators (one per task) and projection
// ------------------------------------------------------------------------------------

/// One task's record generator. Records are consumed in schedule order into a pending
/// batch with the stream's full schema.
trait Gen: Send {
    /// Schedule of the next record (event-time ms since the epoch), `None` when there
    /// are no more.
    fn peek_schedule(&mut self) -> Option<i64>;
    /// Consumes the next record into the pending batch (it may produce no row: a
    /// malformed record, or an event of another kind than the stream's).
    fn push_next(&mut self, bad: &mut BadRecords) -> crate::Result<()>;
    /// Rows pending since the last `take_batch`.
    fn pending_rows(&self) -> usize;
    fn take_batch(&mut self, bad: &mut BadRecords) -> crate::Result<Option<RecordBatch>>;
}

fn new_gen(world: World, stream: &str, params: &Params) -> crate::Result<Box<dyn Gen>> {
    match world {
        World::Restaurant => restaurant::new_gen(stream, params),
        World::Nexmark => nexmark::new_gen(stream, params),
    }
}

/// Declared columns picked by name out of the stream's schema, cast where declared so.
#[derive(Debug)]
struct Projection {
    schema: SchemaRef,
    /// For each output column: its index in the stream's schema and the type to cast
    /// to, if it differs.
    columns: Vec<(usize, Option<DataType>)>,
    identity: bool,
}

impl Projection {
    fn new(table: &str, stream: &SchemaRef, declared: Option<&SchemaRef>) -> crate::Result<Self> {
        let Some(declared) = declared else {
            return Ok(Projection {
                schema: stream.clone(),
                columns: (0..stream.fields().len()).map(|i| (i, None)).collect(),
                identity: true,
            });
        };
        let refuse = |message: String| -> crate::Error {
            ConnectorError::Schema {
                table: table.into(),
                message,
            }
            .into()
        };
        let mut columns = Vec::with_capacity(declared.fields().len());
        let mut fields: Vec<Field> = Vec::with_capacity(declared.fields().len());
        for want in declared.fields() {
            let found = stream.index_of(want.name()).ok().or_else(|| {
                stream
                    .fields()
                    .iter()
                    .position(|f| f.name().eq_ignore_ascii_case(want.name()))
            });
            let Some(i) = found else {
                let names: Vec<&str> = stream.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(refuse(format!(
                    "column '{}' is not produced by this generator stream; its columns are: {}",
                    want.name(),
                    names.join(", ")
                )));
            };
            let have = stream.field(i);
            let to = want.data_type();
            let cast_to = if have.data_type() == to {
                None
            } else if can_cast_types(have.data_type(), to) {
                Some(to.clone())
            } else {
                return Err(refuse(format!(
                    "column '{}' is {} in the generator stream and cannot be cast to the declared {}",
                    want.name(),
                    have.data_type(),
                    to
                )));
            };
            if have.is_nullable() && !want.is_nullable() {
                return Err(refuse(format!(
                    "column '{}' can be null in the generator stream but is declared NOT NULL",
                    want.name()
                )));
            }
            columns.push((i, cast_to));
            fields.push(
                Field::new(want.name(), to.clone(), want.is_nullable())
                    .with_metadata(want.metadata().clone()),
            );
        }
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            declared.metadata().clone(),
        ));
        let identity = schema == *stream;
        Ok(Projection {
            schema,
            columns,
            identity,
        })
    }

    fn apply(&self, batch: RecordBatch) -> crate::Result<RecordBatch> {
        if self.identity {
            return Ok(batch);
        }
        let mut arrays = Vec::with_capacity(self.columns.len());
        for (i, to) in &self.columns {
            let a = batch.column(*i);
            arrays.push(match to {
                None => a.clone(),
                Some(t) => cast(a, t).map_err(|e| {
                    EngineError::arrow(
                        format!(
                            "generator: casting column {}",
                            self.schema.field(arrays.len()).name()
                        ),
                        e,
                    )
                })?,
            });
        }
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| EngineError::arrow("generator: projecting declared columns", e))
    }
}

// ------------------------------------------------------------------------------------
// Factory and source
// ------------------------------------------------------------------------------------

struct GeneratorFactory {
    world: World,
    stream: String,
    seed: u64,
    count: Option<u64>,
    settings: GeneratorSettings,
    origin_ms: i64,
    /// Reference tables are bounded by their entities and unpaced.
    reference: bool,
    projection: Arc<Projection>,
}

/// Builds the source of a `connector = 'generator'` table.
pub fn source(req: &TableRequest<'_>, opts: &mut Options) -> crate::Result<Arc<dyn SourceFactory>> {
    let world_name = opts.get("world").unwrap_or_else(|| "restaurant".into());
    let world = World::parse(&world_name).ok_or_else(|| {
        opts.invalid(
            "world",
            &world_name,
            format!("unknown world; worlds are: {}", WORLDS.join(", ")),
        )
    })?;
    let stream = opts.required("stream")?.trim().to_ascii_lowercase();
    let seed: u64 = opts.parse("seed", 42)?;
    let count = match opts.get("count") {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|e| opts.invalid("count", &v, e.to_string()))?,
        ),
    };
    let settings = GeneratorSettings::read(world, opts)?;
    let Some(full) = world.schema(&stream) else {
        return Err(opts.invalid(
            "stream",
            &stream,
            format!(
                "world '{}' has no such stream; its streams are: {}",
                world.name(),
                world.streams().join(", ")
            ),
        ));
    };
    let projection = Projection::new(req.table, &full, req.schema.as_ref())?;
    let reference = world == World::Restaurant && restaurant::is_reference(&stream);
    Ok(Arc::new(GeneratorFactory {
        world,
        stream,
        seed,
        count,
        origin_ms: settings.start_time.origin_ms(),
        settings,
        reference,
        projection: Arc::new(projection),
    }))
}

impl SourceFactory for GeneratorFactory {
    fn schema(&self) -> SchemaRef {
        self.projection.schema.clone()
    }

    fn bounded(&self) -> bool {
        self.reference || self.count.is_some()
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "generator: world={} stream={} seed={}",
            self.world.name(),
            self.stream,
            self.seed
        );
        if !self.reference {
            if self.settings.rate > 0.0 {
                s.push_str(&format!(" rate={}/s", self.settings.rate));
            } else {
                s.push_str(" rate=unlimited");
            }
            if let Some(c) = self.count {
                s.push_str(&format!(" count={c}"));
            }
            s.push_str(&format!(" start_time={}", self.settings.start_time));
            if !self.settings.warmup.is_zero() {
                s.push_str(&format!(" warmup={:?}", self.settings.warmup));
            }
            if !self.settings.out_of_order.is_zero() {
                s.push_str(&format!(" out_of_order={:?}", self.settings.out_of_order));
            }
            for (name, v) in [
                ("late_fraction", self.settings.late_fraction),
                ("duplicate_fraction", self.settings.duplicate_fraction),
                ("malformed_fraction", self.settings.malformed_fraction),
                ("impossible_fraction", self.settings.impossible_fraction),
            ] {
                if v > 0.0 {
                    s.push_str(&format!(" {name}={v}"));
                }
            }
        }
        s
    }

    fn create(&self, task: &TaskInfo) -> crate::Result<Box<dyn Source>> {
        let p = task.partition as u64;
        let n = task.parallelism.max(1) as u64;
        let params = Params::new(self.seed, &self.settings, self.origin_ms, p, n);
        let gen_ = new_gen(self.world, &self.stream, &params)?;
        let paced = !self.reference && self.settings.rate > 0.0;
        Ok(Box::new(GeneratorSource {
            gen_,
            remaining: if self.reference {
                None
            } else {
                self.count.map(|c| share(c, p, n))
            },
            paced,
            rate_per_task: self.settings.rate / n as f64,
            origin_ms: self.origin_ms,
            warmup: self.settings.warmup,
            projection: self.projection.clone(),
            consumed: 0,
        }))
    }

    /// A generator resumes by regenerating its sequence up to the checkpointed
    /// record: its events are a function of the seed and their position.
    fn checkpointable(&self) -> bool {
        true
    }
}

struct GeneratorSource {
    gen_: Box<dyn Gen>,
    /// Records still to read, when bounded by `count`.
    remaining: Option<u64>,
    paced: bool,
    rate_per_task: f64,
    origin_ms: i64,
    /// Event time a fresh run emits at once before pacing (see the module docs).
    warmup: Duration,
    projection: Arc<Projection>,
    /// Records consumed from the sequence and emitted (the checkpointed position).
    consumed: u64,
}

impl GeneratorSource {
    /// Emits what is pending and records checkpoint `id` at this position.
    async fn checkpoint(&mut self, ctx: &mut SourceContext, id: u64) -> crate::Result<()> {
        self.emit_pending(ctx).await?;
        ctx.checkpoint(id, self.consumed.to_le_bytes().to_vec())
            .await
    }

    /// Skips the first `n` records of the sequence (already emitted before a restart).
    fn fast_forward(&mut self, n: u64) -> crate::Result<()> {
        let mut bad = crate::dlq::BadRecords::detached("restore");
        for _ in 0..n {
            if self.gen_.peek_schedule().is_none() {
                break;
            }
            self.gen_.push_next(&mut bad)?;
            if self.gen_.pending_rows() >= 8192 {
                self.gen_.take_batch(&mut bad)?;
            }
        }
        self.gen_.take_batch(&mut bad)?;
        if let Some(r) = &mut self.remaining {
            *r = r.saturating_sub(n);
        }
        self.consumed = n;
        Ok(())
    }

    async fn emit_pending(&mut self, ctx: &mut SourceContext) -> crate::Result<bool> {
        match self.gen_.take_batch(&mut ctx.bad_records)? {
            Some(batch) => {
                let batch = self.projection.apply(batch)?;
                ctx.out.emit(batch).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Wall-clock offset from the run's start at which a record scheduled at `sched` is
    /// due.
    fn due_offset(&self, sched: i64) -> Duration {
        Duration::from_millis(sched.saturating_sub(self.origin_ms).max(0) as u64)
    }
}

#[async_trait]
impl Source for GeneratorSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> crate::Result<()> {
        self.generate(ctx).await?;
        // Where it ended: checkpoints taken while the rest of the pipeline runs on
        // resume this task there (with nothing left to emit).
        ctx.final_position = Some(self.consumed.to_le_bytes().to_vec());
        Ok(())
    }
}

impl GeneratorSource {
    async fn generate(&mut self, ctx: &mut SourceContext) -> crate::Result<()> {
        let lag = crate::metrics::source_lag(&ctx.task.pipeline, &ctx.task.node);
        lag.set(0.0);
        let size = ctx.batch.size.max(1);
        let flush = ctx.batch.flush_interval;
        if let Some(position) = ctx.restored_positions().await?.pop() {
            let n = position
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(|| {
                    crate::engine::EngineError::State("generator position: 8 bytes expected".into())
                })?;
            self.fast_forward(n)?;
        }
        // Resuming: the schedule goes on from the next record, not from the start.
        let t0 = match self.gen_.peek_schedule() {
            Some(sched) if self.consumed > 0 => Instant::now()
                .checked_sub(self.due_offset(sched))
                .unwrap_or_else(Instant::now),
            // A fresh run: `warmup` of the schedule is already due.
            _ => Instant::now()
                .checked_sub(self.warmup)
                .unwrap_or_else(Instant::now),
        };
        let mut last_emit = t0;
        loop {
            if ctx.stop.is_raised() {
                self.emit_pending(ctx).await?;
                return Ok(());
            }
            if let Some(id) = ctx.checkpoint_due() {
                self.checkpoint(ctx, id).await?;
            }
            let now = Instant::now();
            let elapsed = now.duration_since(t0);
            let mut exhausted = false;
            let mut next_due = None;
            while self.gen_.pending_rows() < size {
                if self.remaining == Some(0) {
                    exhausted = true;
                    break;
                }
                let Some(sched) = self.gen_.peek_schedule() else {
                    exhausted = true;
                    break;
                };
                if self.paced {
                    let due = self.due_offset(sched);
                    if due > elapsed {
                        next_due = Some(due);
                        break;
                    }
                }
                // The record's place in the generated sequence names it in a dead letter.
                ctx.bad_records.origin_mut().position = Some(self.consumed as i64);
                self.gen_.push_next(&mut ctx.bad_records)?;
                self.consumed += 1;
                if let Some(r) = &mut self.remaining {
                    *r -= 1;
                }
            }
            if exhausted {
                self.emit_pending(ctx).await?;
                lag.set(0.0);
                return Ok(());
            }
            if self.paced {
                // How far behind schedule: the next record was due this long ago.
                let behind = match next_due {
                    Some(_) => 0.0,
                    None => match self.gen_.peek_schedule() {
                        Some(s) => {
                            (elapsed.as_secs_f64() - self.due_offset(s).as_secs_f64()).max(0.0)
                        }
                        None => 0.0,
                    },
                };
                lag.set(behind);
            }
            let pending = self.gen_.pending_rows();
            if !self.paced {
                if !self.emit_pending(ctx).await? {
                    // Nothing came out of a whole batch of records (all bad, or none of
                    // the stream's kind): let other tasks run.
                    tokio::task::yield_now().await;
                }
                continue;
            }
            if pending >= size || (pending > 0 && now.duration_since(last_emit) >= flush) {
                self.emit_pending(ctx).await?;
                last_emit = now;
                continue;
            }
            let Some(next_due) = next_due else {
                // Behind schedule but the batch is not full yet: keep reading.
                continue;
            };
            let next_due = t0 + next_due;
            let wake = if pending > 0 {
                let fill = now
                    + Duration::from_secs_f64(
                        (size - pending) as f64 / self.rate_per_task.max(1e-9),
                    )
                    .min(flush);
                (last_emit + flush).min(fill.max(next_due))
            } else {
                next_due
            };
            ctx.pause_until(wake).await;
        }
    }
}

// ------------------------------------------------------------------------------------
// Tools
// ------------------------------------------------------------------------------------

/// The full schema of `stream` in `world`.
pub fn stream_schema(world: &str, stream: &str) -> crate::Result<SchemaRef> {
    let w = parse_world(world)?;
    w.schema(stream).ok_or_else(|| unknown_stream(w, stream))
}

/// Writes `count` records of `stream` (partition 0 of 1) as JSON lines to `out`, and
/// returns how many were written. Restaurant: the raw records the source decodes,
/// malformed and duplicate ones included; reference streams stop at their last entity.
/// Nexmark: the rows, encoded as JSON. Byte-identical for the same arguments (unless
/// `start_time` is `now`).
pub fn write_events(
    stream: &str,
    world: &str,
    seed: u64,
    count: u64,
    settings: &GeneratorSettings,
    out: &mut dyn std::io::Write,
) -> crate::Result<u64> {
    let w = parse_world(world)?;
    if w.schema(stream).is_none() {
        return Err(unknown_stream(w, stream));
    }
    let params = Params::new(seed, settings, settings.start_time.origin_ms(), 0, 1);
    match w {
        World::Restaurant => restaurant::write_lines(stream, &params, count, out),
        World::Nexmark => nexmark::write_lines(stream, &params, count, out),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    use super::*;
    use crate::engine::{
        BatchSettings, Graph, Partitioning, Runtime, RuntimeSettings, Sink, SinkFactory,
    };

    fn options(pairs: &[(&str, &str)]) -> Options {
        Options::new(
            "t",
            CONNECTOR,
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// Plans a generator table through the connector registry (so unknown options are
    /// refused as in SQL).
    pub(super) fn plan(
        pairs: &[(&str, &str)],
        schema: Option<SchemaRef>,
    ) -> crate::Result<Arc<dyn SourceFactory>> {
        let req = TableRequest {
            env: &crate::connectors::ConnectorEnv::default(),
            table: "t",
            schema,
            base_dir: Path::new("."),
        };
        crate::connectors::source(&req, options(pairs))
    }

    struct Collect {
        batches: Arc<Mutex<Vec<RecordBatch>>>,
        first: Arc<tokio::sync::Notify>,
    }

    impl SinkFactory for Collect {
        fn describe(&self) -> String {
            "collect".into()
        }

        fn create(&self, _task: &TaskInfo, _schema: SchemaRef) -> crate::Result<Box<dyn Sink>> {
            Ok(Box::new(Collect {
                batches: self.batches.clone(),
                first: self.first.clone(),
            }))
        }
    }

    #[async_trait]
    impl Sink for Collect {
        async fn write(&mut self, batch: RecordBatch) -> crate::Result<()> {
            self.batches.lock().unwrap().push(batch);
            self.first.notify_one();
            Ok(())
        }

        async fn finish(&mut self) -> crate::Result<()> {
            Ok(())
        }
    }

    /// Runs `factory` with `parallelism` tasks into a collecting sink; returns the
    /// handle, the collected batches and a notification of the first batch.
    fn start(
        factory: Arc<dyn SourceFactory>,
        parallelism: usize,
        batch: BatchSettings,
    ) -> (
        crate::engine::RunHandle,
        Arc<Mutex<Vec<RecordBatch>>>,
        Arc<tokio::sync::Notify>,
    ) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let first = Arc::new(tokio::sync::Notify::new());
        let mut g = Graph::new("generator-test");
        let src = g.add_source("gen", factory, parallelism);
        g.add_sink(
            "collect",
            Arc::new(Collect {
                batches: batches.clone(),
                first: first.clone(),
            }),
            1,
            src,
            Partitioning::RoundRobin,
        )
        .unwrap();
        let settings = RuntimeSettings {
            batch,
            ..RuntimeSettings::default()
        };
        let handle = Runtime::start(g, settings).unwrap();
        (handle, batches, first)
    }

    async fn run_to_end(
        factory: Arc<dyn SourceFactory>,
        parallelism: usize,
        batch: BatchSettings,
    ) -> Vec<RecordBatch> {
        let (handle, batches, _) = start(factory, parallelism, batch);
        handle.wait().await.unwrap();
        let b = batches.lock().unwrap();
        b.clone()
    }

    fn rows(batches: &[RecordBatch]) -> usize {
        batches.iter().map(|b| b.num_rows()).sum()
    }

    fn settings(pairs: &[(&str, &str)], world: &str) -> GeneratorSettings {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GeneratorSettings::from_cli(
            world,
            if world == "nexmark" { "bids" } else { "orders" },
            42,
            map,
        )
        .unwrap()
    }

    fn generated(
        stream: &str,
        world: &str,
        seed: u64,
        count: u64,
        s: &GeneratorSettings,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let n = write_events(stream, world, seed, count, s, &mut out).unwrap();
        assert!(n > 0);
        out
    }

    #[test]
    fn defaults_and_option_errors() {
        let r = GeneratorSettings::defaults("restaurant").unwrap();
        assert_eq!(r.rate, 1000.0);
        assert_eq!(r.start_time.origin_ms(), DEFAULT_START_MS);
        assert_eq!(r.out_of_order, Duration::ZERO);
        assert_eq!(GeneratorSettings::defaults("nexmark").unwrap().rate, 0.0);

        let f = plan(&[("stream", "orders")], None).unwrap();
        assert!(!f.bounded());
        assert_eq!(f.schema(), stream_schema("restaurant", "orders").unwrap());
        let f = plan(&[("stream", "orders"), ("count", "10")], None).unwrap();
        assert!(f.bounded());
        assert!(
            plan(&[("world", "restaurant"), ("stream", "customers")], None)
                .unwrap()
                .bounded()
        );

        let code = |pairs: &[(&str, &str)]| plan(pairs, None).err().map(|e| e.code());
        assert_eq!(
            code(&[("stream", "orders"), ("colour", "red")]),
            Some("CON002")
        );
        assert_eq!(code(&[]), Some("CON003"));
        for bad in [
            ("rate", "-1"),
            ("rate", "fast"),
            ("seed", "-3"),
            ("count", "many"),
            ("late_fraction", "1.5"),
            ("duplicate_fraction", "-0.1"),
            ("start_time", "yesterday"),
            ("out_of_order", "5 parsecs"),
            ("world", "mars"),
            ("stream", "bids"),
        ] {
            assert_eq!(
                code(&[("stream", "orders"), bad]),
                Some("CON004"),
                "{bad:?}"
            );
        }
        // Malformed records are a restaurant-only knob.
        assert_eq!(
            code(&[
                ("world", "nexmark"),
                ("stream", "bids"),
                ("malformed_fraction", "0.1")
            ]),
            Some("CON004")
        );
        let ok = plan(
            &[
                ("world", "nexmark"),
                ("stream", "bids"),
                ("seed", "7"),
                ("rate", "5000"),
                ("count", "100"),
                ("start_time", "2025-06-01T12:00:00+02:00"),
                ("out_of_order", "5s"),
                ("late_fraction", "0.01"),
                ("duplicate_fraction", "0.02"),
            ],
            None,
        )
        .unwrap();
        assert!(ok.describe().contains("rate=5000/s"), "{}", ok.describe());
        assert!(stream_schema("restaurant", "bids").is_err());
        assert!(stream_schema("mars", "orders").is_err());
        let now = plan(&[("stream", "orders"), ("start_time", "now")], None).unwrap();
        assert!(now.describe().contains("start_time=now"));
    }

    #[test]
    fn declared_columns_are_projected_and_cast() {
        let declared = Arc::new(Schema::new(vec![
            Field::new("order_id", DataType::Utf8, true),
            Field::new(
                "event_time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                true,
            ),
            Field::new("total", DataType::Float64, true),
        ]));
        let f = plan(&[("stream", "orders")], Some(declared.clone())).unwrap();
        assert_eq!(f.schema(), declared);
    }

    #[test]
    fn declared_columns_are_refused_when_unknown_or_uncastable() {
        let refused = |field: Field| {
            let e = plan(
                &[("stream", "orders")],
                Some(Arc::new(Schema::new(vec![field]))),
            )
            .err()
            .expect("refused");
            assert_eq!(e.code(), "CON006");
            e.to_string()
        };
        let msg = refused(Field::new("tip", DataType::Float64, true));
        assert!(msg.contains("'tip'"), "{msg}");
        let msg = refused(Field::new("items", DataType::Int64, true));
        assert!(
            msg.contains("'items'") && msg.contains("cannot be cast"),
            "{msg}"
        );
        let msg = refused(Field::new("total", DataType::Float64, false));
        assert!(msg.contains("'total'") && msg.contains("NOT NULL"), "{msg}");
    }

    #[test]
    fn shares_add_up() {
        for count in [0u64, 1, 7, 100, 1001] {
            for n in 1..=8u64 {
                let total: u64 = (0..n).map(|p| share(count, p, n)).sum();
                assert_eq!(total, count);
            }
        }
    }

    #[test]
    fn write_events_is_deterministic() {
        for (world, stream) in [
            ("restaurant", "orders"),
            ("restaurant", "kitchen"),
            ("restaurant", "app"),
            ("restaurant", "customers"),
            ("nexmark", "events"),
            ("nexmark", "bids"),
        ] {
            let mut pairs = vec![
                ("out_of_order", "3s"),
                ("late_fraction", "0.05"),
                ("duplicate_fraction", "0.05"),
            ];
            if world == "restaurant" {
                pairs.push(("malformed_fraction", "0.05"));
            }
            let s = settings(&pairs, world);
            let a = generated(stream, world, 42, 2000, &s);
            let b = generated(stream, world, 42, 2000, &s);
            let c = generated(stream, world, 43, 2000, &s);
            assert!(a == b, "{world}/{stream}: same seed, different bytes");
            assert!(a != c, "{world}/{stream}: different seeds, same bytes");
            if world == "restaurant" {
                assert_eq!(a.iter().filter(|&&c| c == b'\n').count(), 2000);
            }
        }
    }

    #[tokio::test]
    async fn bounded_count_is_exact_and_partitions_add_up() {
        let batch = BatchSettings {
            size: 100,
            flush_interval: Duration::from_millis(50),
        };
        for parallelism in [1, 3] {
            let f = plan(
                &[("stream", "orders"), ("rate", "0"), ("count", "1000")],
                None,
            )
            .unwrap();
            let out = run_to_end(f, parallelism, batch).await;
            assert_eq!(rows(&out), 1000, "parallelism {parallelism}");
            assert!(out.iter().all(|b| b.num_rows() <= 100));
            let ids: std::collections::HashSet<String> = out
                .iter()
                .flat_map(|b| {
                    let a = b.column(0).as_string::<i32>().clone();
                    (0..a.len()).map(move |i| a.value(i).to_string())
                })
                .collect();
            assert_eq!(ids.len(), 1000, "event ids are unique");

            let f = plan(
                &[
                    ("world", "nexmark"),
                    ("stream", "events"),
                    ("count", "1001"),
                ],
                None,
            )
            .unwrap();
            let out = run_to_end(f, parallelism, batch).await;
            assert_eq!(rows(&out), 1001);
        }
        // Reference tables: exactly their entities, whatever the count.
        let f = plan(&[("stream", "restaurants"), ("count", "5")], None).unwrap();
        let out = run_to_end(f, 2, batch).await;
        assert_eq!(rows(&out), 200);
    }

    #[tokio::test]
    async fn declared_projection_applies_to_batches() {
        let declared = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Float64, true),
            Field::new("auction", DataType::Int64, false),
        ]));
        let f = plan(
            &[("world", "nexmark"), ("stream", "bids"), ("count", "500")],
            Some(declared.clone()),
        )
        .unwrap();
        let out = run_to_end(f, 1, BatchSettings::default()).await;
        assert!(rows(&out) > 400);
        for b in &out {
            assert_eq!(b.schema(), declared);
            assert!(
                b.column(1)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .all(|&a| a >= 1000)
            );
        }
    }

    #[tokio::test]
    async fn paced_source_keeps_to_its_rate() {
        // 600 events at 2000/s: the last one is due 299.5 ms after the start.
        let f = plan(
            &[
                ("world", "nexmark"),
                ("stream", "events"),
                ("rate", "2000"),
                ("count", "600"),
            ],
            None,
        )
        .unwrap();
        let batch = BatchSettings {
            size: 64,
            flush_interval: Duration::from_millis(20),
        };
        let t0 = std::time::Instant::now();
        let out = run_to_end(f, 1, batch).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(299),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(rows(&out), 600);
        // Batches are cut by the flush interval, not only by size.
        assert!(out.len() >= 10, "{} batches", out.len());
    }

    /// `warmup` of event time is emitted at once; the rest is paced as before.
    #[tokio::test]
    async fn warmup_emits_its_event_time_at_once_then_paces() {
        // 600 events at 2/s are 300 s of schedule: inside a 10-minute warmup.
        let f = plan(
            &[
                ("stream", "orders"),
                ("rate", "2"),
                ("count", "600"),
                ("warmup", "10m"),
            ],
            None,
        )
        .unwrap();
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            run_to_end(f, 1, BatchSettings::default()),
        )
        .await
        .expect("not paced over 300 s");
        assert_eq!(rows(&out), 600);
        // 40 events at 20/s with 1 s of warmup: the second half is paced.
        let f = plan(
            &[
                ("world", "nexmark"),
                ("stream", "events"),
                ("rate", "20"),
                ("count", "40"),
                ("warmup", "1s"),
            ],
            None,
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        let out = run_to_end(f, 1, BatchSettings::default()).await;
        assert_eq!(rows(&out), 40);
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn stop_signal_ends_an_unbounded_source() {
        for stream in ["orders", "app"] {
            let f = plan(&[("stream", stream), ("rate", "200")], None).unwrap();
            let batch = BatchSettings {
                size: 1000,
                flush_interval: Duration::from_millis(10),
            };
            let (handle, batches, first) = start(f, 2, batch);
            first.notified().await;
            handle.stop();
            handle.wait().await.unwrap();
            assert!(rows(&batches.lock().unwrap()) > 0);
        }
        // An unpaced one too.
        let f = plan(&[("world", "nexmark"), ("stream", "bids")], None).unwrap();
        let (handle, batches, first) = start(f, 2, BatchSettings::default());
        first.notified().await;
        handle.stop();
        handle.wait().await.unwrap();
        assert!(rows(&batches.lock().unwrap()) > 0);
    }
}
