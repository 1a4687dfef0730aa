//! JSON lines: Arrow batches to JSON objects and back.
//!
//! Encoding ([`encode_json_lines`]) writes one object per row. Null values are written
//! as explicit `null` (the key is always present, so every line has the same keys);
//! timestamps are RFC 3339 strings (`…Z` for columns without a time zone, `…+hh:mm` for
//! columns with one); lists are arrays, structs and maps are objects, binary values are
//! hex strings.
//!
//! Decoding ([`JsonDecoder`]) turns one record (one JSON object) at a time into rows of
//! a fixed schema. Each record is checked by a schema-aware scanner (one pass over its
//! bytes, no allocation on the good path) that decides whether the record is strict
//! JSON and whether its values fit the schema, converting each scalar value as it checks
//! it; a refused record is reported to [`BadRecords`] and leaves nothing behind, so one
//! bad record costs nothing to the others. For flat schemas (scalar columns only) the
//! scanner's converted values of an accepted record are appended to Arrow builders: one
//! pass in all. Schemas with structs, lists or maps have arrow-json decode the accepted
//! records in bulk; the scanner accepts a subset of what arrow-json accepts (it mirrors
//! arrow-json's rules, stricter where they are lenient, and converts values as
//! arrow-json does), and timestamps go through arrow-json as text and are converted by
//! the very function the scanner checks them with.
//!
//! Value rules:
//! - Integers: a JSON number with an integral value in range (`1e3` and `2.0` are
//!   accepted, `1.5` is a schema mismatch) or a string holding an integer (`"42"`).
//! - Floats: a JSON number or a string holding one (`"NaN"`, `"inf"` included).
//! - Strings: a JSON string; numbers and booleans are accepted as their text.
//! - Timestamps (any unit, with or without time zone): an RFC 3339 / ISO 8601 string
//!   (one without an offset is read in the column's time zone, UTC if it has none), or
//!   milliseconds since the Unix epoch as a JSON number (or a string holding one),
//!   whatever the column's unit; fractions of a millisecond are kept where the unit
//!   allows, seconds are floored.
//! - Dates: `"YYYY-MM-DD"` or a number of days (Date32) / milliseconds (Date64).
//! - Decimals: a number or a string; binary: a hex string.
//! - A missing key is null; a null or missing value in a non-nullable field is a schema
//!   mismatch. Keys not in the schema are ignored (but must be valid JSON).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::builder::{
    BooleanBuilder, GenericBinaryBuilder, GenericStringBuilder, LargeStringBuilder,
    PrimitiveBuilder, StringBuilder, StringViewBuilder,
};
use arrow::array::timezone::Tz;
use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, LargeListArray, ListArray, MapArray, NullArray,
    OffsetSizeTrait, RecordBatch, RecordBatchOptions, StructArray,
};
use arrow::compute::kernels::cast_utils::{Parser, parse_decimal, string_to_datetime};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal32Type, Decimal64Type, Decimal128Type, Decimal256Type,
    DecimalType, DurationMicrosecondType, DurationMillisecondType, DurationNanosecondType,
    DurationSecondType, FieldRef, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, Schema, SchemaRef, Time32MillisecondType, Time32SecondType, Time64MicrosecondType,
    Time64NanosecondType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
    i256,
};
use arrow::error::ArrowError;
use arrow::json::reader::Decoder;
use arrow::json::writer::LineDelimited;
use arrow::json::{ReaderBuilder, WriterBuilder};
use chrono::{DateTime, TimeZone, Utc};

use super::FormatError;
use crate::dlq::{BadRecordReason, BadRecords};

/// Rows decoded per internal arrow-json decoder run when no capacity is given.
pub const DEFAULT_CAPACITY: usize = 8192;

/// Deepest nesting of arrays and objects a record may have.
pub const MAX_DEPTH: usize = 64;

fn decode_err(message: impl Into<String>) -> crate::Error {
    FormatError::Decode {
        format: "json",
        message: message.into(),
    }
    .into()
}

// ------------------------------------------------------------------------------------
// Encoding
// ------------------------------------------------------------------------------------

/// Appends `batch` to `out` as JSON lines: one object per row, each ended by `\n`.
///
/// Nulls are written as explicit `null`; timestamps as RFC 3339 strings (`Z` for
/// columns without a time zone, which are taken as UTC); lists as arrays; structs and
/// maps as objects; binary as hex strings; non-finite floats as `null`.
pub fn encode_json_lines(batch: &RecordBatch, out: &mut Vec<u8>) -> crate::Result<()> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.fZ".to_string())
        .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.f%:z".to_string())
        .build::<_, LineDelimited>(out);
    let r = writer.write(batch).and_then(|_| writer.finish());
    r.map_err(|e| {
        FormatError::Encode {
            format: "json",
            message: e.to_string(),
        }
        .into()
    })
}

// ------------------------------------------------------------------------------------
// Scalar rules shared by the scanner and the bulk decoder
// ------------------------------------------------------------------------------------

/// One JSON value as seen by a scalar column.
#[derive(Debug, Clone, Copy)]
enum Leaf<'a> {
    Str(&'a str),
    /// The text of a JSON number.
    Num(&'a str),
    Bool(bool),
    Object,
    Array,
}

impl Leaf<'_> {
    fn describe(&self) -> String {
        match self {
            Leaf::Str(s) => format!("\"{}\"", clip(s)),
            Leaf::Num(s) => clip(s).to_string(),
            Leaf::Bool(b) => b.to_string(),
            Leaf::Object => "an object".into(),
            Leaf::Array => "an array".into(),
        }
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// What a scalar check needs to know about its column.
#[derive(Debug, Clone)]
struct LeafCtx {
    data_type: DataType,
    tz: Option<Tz>,
}

fn expected(ctx: &LeafCtx, leaf: Leaf<'_>) -> String {
    format!("expected {}, found {}", ctx.data_type, leaf.describe())
}

/// An integer from the text of a JSON number: an exact integer, or a float with no
/// fraction (`1e3`, `2.0`).
fn int_text(s: &str) -> Option<i128> {
    // Most integers fit an i64, which parses faster.
    if let Ok(v) = s.parse::<i64>() {
        return Some(v.into());
    }
    if let Ok(v) = s.parse::<i128>() {
        return Some(v);
    }
    let f: f64 = s.parse().ok()?;
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 1.0e38).then_some(f as i128)
}

/// A leaf value as converted by the scanner: what the bulk path checks and drops, and
/// the flat path keeps until its record is accepted (see [`FlatRows`]).
///
/// Each column kind fills one variant only (see [`SlotNative`], [`Scanner::leaf`]),
/// so a column reading back a slot of another kind is a bug, not bad input. Slots are
/// moved for every value: wide values are split or boxed to keep them at 24 bytes.
#[derive(Debug, Clone, Default)]
enum Slot {
    /// `null`, or no value yet.
    #[default]
    Null,
    Bool(bool),
    /// Signed integers, dates, times, durations, timestamps, decimals of up to 64 bits.
    Int(i64),
    /// Unsigned integers.
    UInt(u64),
    /// A 128-bit decimal: its low and high halves.
    I128(u64, u64),
    I256(Box<i256>),
    F32(f32),
    F64(f64),
    /// The record's text in this byte range: a string's contents (one without escapes),
    /// or a number or boolean written as text.
    Span(usize, usize),
    /// A string's contents with its escapes resolved.
    Unescaped(Box<str>),
}

const _: () = assert!(std::mem::size_of::<Slot>() <= 24);

/// The native types of the leaf columns, in and out of their [`Slot`] variant.
trait SlotNative: Sized {
    fn into_slot(self) -> Slot;
    /// `None` if `slot` is of another kind.
    fn from_slot(slot: &Slot) -> Option<Self>;
}

macro_rules! int_slot {
    ($variant:ident: $($t:ty),+) => {$(
        impl SlotNative for $t {
            fn into_slot(self) -> Slot {
                Slot::$variant(self.into())
            }
            fn from_slot(slot: &Slot) -> Option<Self> {
                match slot {
                    Slot::$variant(v) => Self::try_from(*v).ok(),
                    _ => None,
                }
            }
        }
    )+};
}
int_slot!(Int: i8, i16, i32, i64);
int_slot!(UInt: u8, u16, u32, u64);

impl SlotNative for i128 {
    fn into_slot(self) -> Slot {
        Slot::I128(self as u64, (self >> 64) as u64)
    }
    fn from_slot(slot: &Slot) -> Option<Self> {
        match slot {
            Slot::I128(low, high) => Some(((*high as i128) << 64) | *low as i128),
            _ => None,
        }
    }
}

impl SlotNative for i256 {
    fn into_slot(self) -> Slot {
        Slot::I256(Box::new(self))
    }
    fn from_slot(slot: &Slot) -> Option<Self> {
        match slot {
            Slot::I256(v) => Some(**v),
            _ => None,
        }
    }
}

macro_rules! other_slot {
    ($($t:ty => $variant:ident),+) => {$(
        impl SlotNative for $t {
            fn into_slot(self) -> Slot {
                Slot::$variant(self)
            }
            fn from_slot(slot: &Slot) -> Option<Self> {
                match slot {
                    Slot::$variant(v) => Some(*v),
                    _ => None,
                }
            }
        }
    )+};
}
other_slot!(f32 => F32, f64 => F64);

/// Columns arrow-json decodes itself: integers, floats, dates, times, durations. The
/// scanner accepts a subset of what arrow-json accepts: from a JSON number, integral
/// values in range (arrow-json would truncate `1.5`; we refuse it); from a string,
/// exactly what arrow's parser accepts. The value is the one arrow-json decodes.
trait NativeLeaf: ArrowPrimitiveType + Parser {
    fn from_number(s: &str) -> Option<Self::Native>;
}

macro_rules! integral_leaf {
    ($($t:ty),+) => {$(
        impl NativeLeaf for $t {
            fn from_number(s: &str) -> Option<Self::Native> {
                int_text(s).and_then(|v| <Self as ArrowPrimitiveType>::Native::try_from(v).ok())
            }
        }
    )+};
}
integral_leaf!(
    Int8Type,
    Int16Type,
    Int32Type,
    Int64Type,
    UInt8Type,
    UInt16Type,
    UInt32Type,
    UInt64Type,
    Date32Type,
    Date64Type,
    Time32SecondType,
    Time32MillisecondType,
    Time64MicrosecondType,
    Time64NanosecondType,
    DurationSecondType,
    DurationMillisecondType,
    DurationMicrosecondType,
    DurationNanosecondType
);

impl NativeLeaf for Float32Type {
    fn from_number(s: &str) -> Option<f32> {
        s.parse().ok()
    }
}

impl NativeLeaf for Float64Type {
    fn from_number(s: &str) -> Option<f64> {
        s.parse().ok()
    }
}

/// Checks a scalar value and converts it into the slot, or says why it does not fit.
/// (An out-parameter: slots are written in place, not moved through results.)
type CheckFn = fn(Leaf<'_>, &LeafCtx, &mut Slot) -> Result<(), String>;

fn check_native<T>(leaf: Leaf<'_>, ctx: &LeafCtx, out: &mut Slot) -> Result<(), String>
where
    T: NativeLeaf,
    T::Native: SlotNative,
{
    let v = match leaf {
        Leaf::Num(s) => T::from_number(s),
        Leaf::Str(s) => <T as Parser>::parse(s),
        _ => None,
    };
    match v {
        Some(v) => {
            *out = v.into_slot();
            Ok(())
        }
        None => Err(expected(ctx, leaf)),
    }
}

/// Epoch milliseconds to `unit`: `None` if `s` is not a number, `Some(Err)` if it is out
/// of range.
fn epoch_ms_to(s: &str, unit: TimeUnit) -> Option<Result<i64, ()>> {
    if let Ok(ms) = s.parse::<i64>() {
        let v = match unit {
            TimeUnit::Second => Some(ms.div_euclid(1000)),
            TimeUnit::Millisecond => Some(ms),
            TimeUnit::Microsecond => ms.checked_mul(1000),
            TimeUnit::Nanosecond => ms.checked_mul(1_000_000),
        };
        return Some(v.ok_or(()));
    }
    if !s.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return None;
    }
    let ms: f64 = s.parse().ok()?;
    let v = match unit {
        TimeUnit::Second => (ms / 1000.0).floor(),
        TimeUnit::Millisecond => ms.floor(),
        TimeUnit::Microsecond => (ms * 1e3).floor(),
        TimeUnit::Nanosecond => (ms * 1e6).floor(),
    };
    let in_range = v.is_finite() && v >= i64::MIN as f64 && v < i64::MAX as f64;
    Some(if in_range { Ok(v as i64) } else { Err(()) })
}

fn datetime_to<T: TimeZone>(d: DateTime<T>, unit: TimeUnit) -> Option<i64> {
    match unit {
        TimeUnit::Second => Some(d.timestamp()),
        TimeUnit::Millisecond => Some(d.timestamp_millis()),
        TimeUnit::Microsecond => Some(d.timestamp_micros()),
        TimeUnit::Nanosecond => d.timestamp_nanos_opt(),
    }
}

/// A timestamp from the text of a JSON string or number: a number is milliseconds since
/// the epoch, anything else an RFC 3339 / ISO 8601 timestamp (read in `tz`, or UTC,
/// when it has no offset).
fn timestamp_text(s: &str, unit: TimeUnit, tz: Option<&Tz>) -> Result<i64, String> {
    if let Some(v) = epoch_ms_to(s, unit) {
        return v.map_err(|_| format!("{} milliseconds since the epoch is out of range", clip(s)));
    }
    let parsed = match tz {
        Some(tz) => string_to_datetime(tz, s).map(|d| datetime_to(d, unit)),
        None => string_to_datetime(&Utc, s).map(|d| datetime_to(d, unit)),
    };
    match parsed {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(format!("\"{}\" is out of range", clip(s))),
        Err(_) => Err(format!(
            "expected an RFC 3339 timestamp or epoch milliseconds, found \"{}\"",
            clip(s)
        )),
    }
}

fn check_timestamp(leaf: Leaf<'_>, ctx: &LeafCtx, out: &mut Slot) -> Result<(), String> {
    let DataType::Timestamp(unit, _) = ctx.data_type else {
        return Err(expected(ctx, leaf));
    };
    match leaf {
        Leaf::Str(s) | Leaf::Num(s) => {
            *out = timestamp_text(s, unit, ctx.tz.as_ref())?.into_slot();
            Ok(())
        }
        _ => Err(format!(
            "expected an RFC 3339 timestamp or epoch milliseconds, found {}",
            leaf.describe()
        )),
    }
}

/// The scalar check of `dt`, for the types checked by [`check_native`] and timestamps.
fn leaf_check(dt: &DataType) -> Result<Option<(LeafCtx, CheckFn)>, ArrowError> {
    let mut tz = None;
    let check: CheckFn = match dt {
        DataType::Int8 => check_native::<Int8Type>,
        DataType::Int16 => check_native::<Int16Type>,
        DataType::Int32 => check_native::<Int32Type>,
        DataType::Int64 => check_native::<Int64Type>,
        DataType::UInt8 => check_native::<UInt8Type>,
        DataType::UInt16 => check_native::<UInt16Type>,
        DataType::UInt32 => check_native::<UInt32Type>,
        DataType::UInt64 => check_native::<UInt64Type>,
        DataType::Float32 => check_native::<Float32Type>,
        DataType::Float64 => check_native::<Float64Type>,
        DataType::Date32 => check_native::<Date32Type>,
        DataType::Date64 => check_native::<Date64Type>,
        DataType::Time32(TimeUnit::Second) => check_native::<Time32SecondType>,
        DataType::Time32(TimeUnit::Millisecond) => check_native::<Time32MillisecondType>,
        DataType::Time64(TimeUnit::Microsecond) => check_native::<Time64MicrosecondType>,
        DataType::Time64(TimeUnit::Nanosecond) => check_native::<Time64NanosecondType>,
        DataType::Duration(TimeUnit::Second) => check_native::<DurationSecondType>,
        DataType::Duration(TimeUnit::Millisecond) => check_native::<DurationMillisecondType>,
        DataType::Duration(TimeUnit::Microsecond) => check_native::<DurationMicrosecondType>,
        DataType::Duration(TimeUnit::Nanosecond) => check_native::<DurationNanosecondType>,
        DataType::Timestamp(_, zone) => {
            if let Some(z) = zone {
                tz = Some(z.parse::<Tz>()?);
            }
            check_timestamp
        }
        _ => return Ok(None),
    };
    let ctx = LeafCtx {
        data_type: dt.clone(),
        tz,
    };
    Ok(Some((ctx, check)))
}

// ------------------------------------------------------------------------------------
// Wire types: timestamps travel through arrow-json as text
// ------------------------------------------------------------------------------------

/// The type arrow-json decodes for a column of type `dt`: timestamps become `Utf8`
/// (numbers arrive as their text) and are converted by [`to_target`].
fn wire_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Timestamp(_, _) => DataType::Utf8,
        DataType::List(f) => DataType::List(wire_field(f)),
        DataType::LargeList(f) => DataType::LargeList(wire_field(f)),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(wire_field).collect()),
        DataType::Map(f, sorted) => DataType::Map(wire_field(f), *sorted),
        other => other.clone(),
    }
}

fn wire_field(f: &FieldRef) -> FieldRef {
    let dt = wire_type(f.data_type());
    if &dt == f.data_type() {
        f.clone()
    } else {
        Arc::new(f.as_ref().clone().with_data_type(dt))
    }
}

/// Converts an array decoded with [`wire_type`] to `target`.
fn to_target(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, String> {
    if array.data_type() == target {
        return Ok(array.clone());
    }
    match target {
        DataType::Timestamp(unit, zone) => {
            let tz = zone
                .as_ref()
                .map(|z| z.parse::<Tz>())
                .transpose()
                .map_err(|e| e.to_string())?;
            let text = array
                .as_string_opt::<i32>()
                .ok_or_else(|| format!("expected text for {target}"))?;
            macro_rules! build {
                ($t:ty) => {{
                    let mut b = PrimitiveBuilder::<$t>::with_capacity(text.len())
                        .with_data_type(target.clone());
                    for v in text.iter() {
                        match v {
                            None => b.append_null(),
                            Some(s) => b.append_value(timestamp_text(s, *unit, tz.as_ref())?),
                        }
                    }
                    Arc::new(b.finish()) as ArrayRef
                }};
            }
            Ok(match unit {
                TimeUnit::Second => build!(TimestampSecondType),
                TimeUnit::Millisecond => build!(TimestampMillisecondType),
                TimeUnit::Microsecond => build!(TimestampMicrosecondType),
                TimeUnit::Nanosecond => build!(TimestampNanosecondType),
            })
        }
        DataType::Struct(fields) => {
            let s = array.as_struct_opt().ok_or("expected a struct")?;
            let children = s
                .columns()
                .iter()
                .zip(fields.iter())
                .map(|(c, f)| to_target(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            let out = StructArray::try_new(fields.clone(), children, s.nulls().cloned())
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(out))
        }
        DataType::List(f) => {
            let l = array.as_list_opt::<i32>().ok_or("expected a list")?;
            let values = to_target(l.values(), f.data_type())?;
            let out =
                ListArray::try_new(f.clone(), l.offsets().clone(), values, l.nulls().cloned())
                    .map_err(|e| e.to_string())?;
            Ok(Arc::new(out))
        }
        DataType::LargeList(f) => {
            let l = array.as_list_opt::<i64>().ok_or("expected a list")?;
            let values = to_target(l.values(), f.data_type())?;
            let out =
                LargeListArray::try_new(f.clone(), l.offsets().clone(), values, l.nulls().cloned())
                    .map_err(|e| e.to_string())?;
            Ok(Arc::new(out))
        }
        DataType::Map(f, sorted) => {
            let m = array.as_map_opt().ok_or("expected a map")?;
            let entries: ArrayRef = Arc::new(m.entries().clone());
            let entries = to_target(&entries, f.data_type())?;
            let entries = entries
                .as_struct_opt()
                .ok_or("expected map entries")?
                .clone();
            let out = MapArray::try_new(
                f.clone(),
                m.offsets().clone(),
                entries,
                m.nulls().cloned(),
                *sorted,
            )
            .map_err(|e| e.to_string())?;
            Ok(Arc::new(out))
        }
        other => Err(format!("cannot convert {} to {other}", array.data_type())),
    }
}

// ------------------------------------------------------------------------------------
// The per-record scanner
// ------------------------------------------------------------------------------------

/// What the scanner expects of a value: the schema, compiled.
enum Node {
    /// Only `null`.
    Null,
    Bool,
    /// Utf8, LargeUtf8, Utf8View: strings, numbers and booleans (as their text).
    Text,
    /// A hex string.
    Binary,
    /// The parse of the column's decimal type, its precision and scale.
    Decimal(fn(&str, u8, i8, &mut Slot) -> bool, u8, i8),
    Leaf(LeafCtx, CheckFn),
    List {
        item: Box<Node>,
        nullable: bool,
    },
    Struct(StructNode),
    Map {
        key: Box<Node>,
        value: Box<Node>,
        value_nullable: bool,
    },
}

struct StructNode {
    /// Name, nullable, node.
    fields: Vec<(String, bool, Node)>,
    /// Field lookup for wide structs; narrow ones are searched linearly.
    index: Option<HashMap<String, usize>>,
    /// Whether any field is non-nullable (so presence must be tracked).
    has_required: bool,
    /// Whether no two fields have the same name.
    unique: bool,
}

impl StructNode {
    fn find(&self, name: &str) -> Option<usize> {
        match &self.index {
            Some(map) => map.get(name).copied(),
            None => self.fields.iter().position(|(n, _, _)| n == name),
        }
    }

    /// Like [`StructNode::find`], trying field `hint` first (keys usually come in the
    /// schema's order); the same answer, since with unique names there is only one.
    fn find_from(&self, name: &str, hint: usize) -> Option<usize> {
        match self.fields.get(hint) {
            Some((n, _, _)) if self.unique && n == name => Some(hint),
            _ => self.find(name),
        }
    }
}

/// Parses a decimal into `out`: whether it fits.
fn decimal_value<T>(s: &str, precision: u8, scale: i8, out: &mut Slot) -> bool
where
    T: DecimalType,
    T::Native: SlotNative,
{
    match parse_decimal::<T>(s, precision, scale) {
        Ok(v) => {
            *out = v.into_slot();
            true
        }
        Err(_) => false,
    }
}

fn compile_struct(fields: &arrow::datatypes::Fields) -> Result<StructNode, String> {
    let mut out = Vec::with_capacity(fields.len());
    for f in fields.iter() {
        let node = compile(f.data_type()).map_err(|e| format!("{}: {e}", f.name()))?;
        out.push((f.name().clone(), f.is_nullable(), node));
    }
    let index = (out.len() > 8).then(|| {
        let mut m = HashMap::with_capacity(out.len());
        // Arrow's decoder keeps the last field of a given name; so do we.
        for (i, (n, _, _)) in out.iter().enumerate() {
            m.insert(n.clone(), i);
        }
        m
    });
    let has_required = out.iter().any(|(_, nullable, _)| !nullable);
    let mut names: Vec<&str> = out.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort_unstable();
    let unique = names.windows(2).all(|w| w[0] != w[1]);
    Ok(StructNode {
        fields: out,
        index,
        has_required,
        unique,
    })
}

fn compile(dt: &DataType) -> Result<Node, String> {
    if let Some((ctx, check)) = leaf_check(dt).map_err(|e| e.to_string())? {
        return Ok(Node::Leaf(ctx, check));
    }
    Ok(match dt {
        DataType::Null => Node::Null,
        DataType::Boolean => Node::Bool,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Node::Text,
        DataType::Binary | DataType::LargeBinary => Node::Binary,
        DataType::Decimal32(p, s) => Node::Decimal(decimal_value::<Decimal32Type>, *p, *s),
        DataType::Decimal64(p, s) => Node::Decimal(decimal_value::<Decimal64Type>, *p, *s),
        DataType::Decimal128(p, s) => Node::Decimal(decimal_value::<Decimal128Type>, *p, *s),
        DataType::Decimal256(p, s) => Node::Decimal(decimal_value::<Decimal256Type>, *p, *s),
        DataType::List(item) | DataType::LargeList(item) => Node::List {
            item: Box::new(compile(item.data_type())?),
            nullable: item.is_nullable(),
        },
        DataType::Struct(fields) => Node::Struct(compile_struct(fields)?),
        DataType::Map(entries, _) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return Err(format!("map entries of type {} are not supported", entries));
            };
            if kv.len() != 2 {
                return Err("map entries must have a key and a value".into());
            }
            Node::Map {
                key: Box::new(compile(kv[0].data_type())?),
                value: Box::new(compile(kv[1].data_type())?),
                value_nullable: kv[1].is_nullable(),
            }
        }
        other => return Err(format!("type {other} is not supported by the JSON decoder")),
    })
}

/// Why the scanner refused a record.
#[derive(Debug)]
struct Refusal {
    reason: BadRecordReason,
    message: String,
    /// Byte offset in the record.
    at: usize,
    /// Where in the value, innermost first.
    path: Vec<PathSeg>,
}

#[derive(Debug)]
enum PathSeg {
    Field(String),
    Index(usize),
}

impl Refusal {
    fn detail(&self) -> String {
        if self.path.is_empty() {
            return format!("{} (at byte {})", self.message, self.at);
        }
        let mut p = String::new();
        for seg in self.path.iter().rev() {
            match seg {
                PathSeg::Field(f) if p.is_empty() => p.push_str(f),
                PathSeg::Field(f) => {
                    p.push('.');
                    p.push_str(f);
                }
                PathSeg::Index(i) => p.push_str(&format!("[{i}]")),
            }
        }
        format!("field '{p}': {} (at byte {})", self.message, self.at)
    }

    fn within(mut self: Box<Self>, seg: PathSeg) -> Box<Self> {
        self.path.push(seg);
        self
    }
}

/// A scan's result; refusals are boxed to keep the good path's results small.
type Scan<T = ()> = Result<T, Box<Refusal>>;

/// A strict JSON scanner over one record, checking values against a schema.
struct Scanner<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    /// Unescaped text of the last string that had escapes.
    scratch: String,
}

/// Which fields of an object had a non-null value (tracked only when some are required).
enum Present {
    Untracked,
    Bits(u128),
    Many(Vec<bool>),
}

impl Present {
    fn new(node: &StructNode) -> Self {
        match (node.has_required, node.fields.len()) {
            (false, _) => Present::Untracked,
            (true, n) if n <= 128 => Present::Bits(0),
            (true, n) => Present::Many(vec![false; n]),
        }
    }

    fn set(&mut self, i: usize, v: bool) {
        match self {
            Present::Untracked => {}
            Present::Bits(b) if v => *b |= 1 << i,
            Present::Bits(b) => *b &= !(1 << i),
            Present::Many(m) => m[i] = v,
        }
    }

    fn get(&self, i: usize) -> bool {
        match self {
            Present::Untracked => true,
            Present::Bits(b) => b & (1 << i) != 0,
            Present::Many(m) => m[i],
        }
    }
}

/// Where the run of plain string bytes at the start of `b` ends: the index of the
/// first `"`, `\\` or control character, or `b.len()`. Reads 8 bytes at a time.
fn string_stop(b: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    /// The high bit of each byte of `w` below `n` (`n` <= 0x80), exact for the lowest
    /// such byte: a byte at or above `n` borrows nothing from the next one.
    fn below(w: u64, n: u8) -> u64 {
        w.wrapping_sub(ONES * n as u64) & !w & HIGHS
    }
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let hits = below(w ^ (ONES * b'"' as u64), 1)
            | below(w ^ (ONES * b'\\' as u64), 1)
            | below(w, 0x20);
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(b.len() - i)
}

/// A string just scanned: borrowed from the record, or in the scratch buffer.
enum Str {
    Borrowed(usize, usize),
    Scratch,
}

impl<'a> Scanner<'a> {
    fn new(s: &'a str) -> Self {
        Scanner {
            s,
            b: s.as_bytes(),
            i: 0,
            scratch: String::new(),
        }
    }

    fn text(&self, s: &Str) -> &str {
        match *s {
            Str::Borrowed(a, b) => &self.s[a..b],
            Str::Scratch => &self.scratch,
        }
    }

    /// The text of `s`, surviving later scans (copied only if it had escapes).
    fn keep(&self, s: &Str) -> std::borrow::Cow<'a, str> {
        let whole: &'a str = self.s;
        match *s {
            Str::Borrowed(a, b) => std::borrow::Cow::Borrowed(&whole[a..b]),
            Str::Scratch => std::borrow::Cow::Owned(self.scratch.clone()),
        }
    }

    fn syntax(&self, message: impl Into<String>) -> Box<Refusal> {
        Box::new(Refusal {
            reason: BadRecordReason::Malformed,
            message: message.into(),
            at: self.i,
            path: vec![],
        })
    }

    fn mismatch(&self, at: usize, message: impl Into<String>) -> Box<Refusal> {
        Box::new(Refusal {
            reason: BadRecordReason::SchemaMismatch,
            message: message.into(),
            at,
            path: vec![],
        })
    }

    fn unexpected(&self, what: &str) -> Box<Refusal> {
        match self.b.get(self.i) {
            None => self.syntax(format!("unexpected end of input, expected {what}")),
            Some(_) => {
                let c = self.s[self.i..].chars().next().unwrap_or('?');
                self.syntax(format!("unexpected {c:?}, expected {what}"))
            }
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8, what: &str) -> Scan {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.unexpected(what))
        }
    }

    fn literal(&mut self, word: &'static str) -> Scan {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{word}'")))
        }
    }

    fn hex4(&mut self) -> Scan<u32> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.b.get(self.i) {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.unexpected("a hex digit")),
            };
            v = (v << 4) | d as u32;
            self.i += 1;
        }
        Ok(v)
    }

    /// Scans a string; `self.i` is on the opening quote.
    fn string(&mut self) -> Scan<Str> {
        self.i += 1;
        let start = self.i;
        self.i = start + string_stop(&self.b[start..]);
        match self.b.get(self.i) {
            None => return Err(self.syntax("unterminated string")),
            Some(b'"') => {
                self.i += 1;
                return Ok(Str::Borrowed(start, self.i - 1));
            }
            Some(b'\\') => {}
            Some(_) => return Err(self.syntax("control character in string")),
        }
        // Slow path: the string has escapes.
        self.scratch.clear();
        self.scratch.push_str(&self.s[start..self.i]);
        loop {
            let run = self.i;
            while let Some(c) = self.b.get(self.i) {
                if *c == b'"' || *c == b'\\' || *c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            self.scratch.push_str(&self.s[run..self.i]);
            match self.b.get(self.i) {
                None => return Err(self.syntax("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Str::Scratch);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = match self.b.get(self.i) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.i += 1;
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.b[self.i..].starts_with(b"\\u") {
                                    return Err(self.syntax("unpaired surrogate in \\u escape"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.syntax("invalid surrogate pair in \\u escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            match char::from_u32(code) {
                                Some(c) => {
                                    self.scratch.push(c);
                                    continue;
                                }
                                None => {
                                    return Err(self.syntax("unpaired surrogate in \\u escape"));
                                }
                            }
                        }
                        _ => return Err(self.unexpected("an escape sequence")),
                    };
                    self.i += 1;
                    self.scratch.push(c);
                }
                Some(_) => return Err(self.syntax("control character in string")),
            }
        }
    }

    /// Scans a number; `self.i` is on its first character. Returns its text.
    fn number(&mut self) -> Scan<&'a str> {
        let start = self.i;
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.unexpected("a digit")),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !matches!(self.b.get(self.i), Some(b'0'..=b'9')) {
                return Err(self.unexpected("a digit"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if !matches!(self.b.get(self.i), Some(b'0'..=b'9')) {
                return Err(self.unexpected("a digit"));
            }
            self.digits();
        }
        Ok(&self.s[start..self.i])
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Scans any value without checking it against a schema.
    fn skip(&mut self, depth: usize) -> Scan {
        self.ws();
        match self.b.get(self.i) {
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(self.syntax(format!("nested deeper than {MAX_DEPTH} levels")));
                }
                self.i += 1;
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.b.get(self.i) != Some(&b'"') {
                        return Err(self.unexpected("a string key"));
                    }
                    self.string()?;
                    self.ws();
                    self.eat(b':', "':'")?;
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(self.unexpected("',' or '}'")),
                    }
                }
            }
            Some(b'[') => {
                if depth >= MAX_DEPTH {
                    return Err(self.syntax(format!("nested deeper than {MAX_DEPTH} levels")));
                }
                self.i += 1;
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(self.unexpected("',' or ']'")),
                    }
                }
            }
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(|_| ()),
            _ => Err(self.unexpected("a value")),
        }
    }

    /// Checks a scalar value against `node` and converts it into `out`; `Ok(false)`
    /// (and `out` untouched) for the columns that keep the value's text as it is
    /// (strings, hex binary), which the caller locates.
    fn check_leaf(&self, node: &Node, leaf: Leaf<'_>, at: usize, out: &mut Slot) -> Scan<bool> {
        let r = match node {
            Node::Leaf(ctx, check) => check(leaf, ctx, out).map(|_| true),
            Node::Text => match leaf {
                Leaf::Str(_) | Leaf::Num(_) | Leaf::Bool(_) => Ok(false),
                _ => Err(format!("expected a string, found {}", leaf.describe())),
            },
            Node::Bool => match leaf {
                Leaf::Bool(b) => {
                    *out = Slot::Bool(b);
                    Ok(true)
                }
                _ => Err(format!("expected a boolean, found {}", leaf.describe())),
            },
            Node::Binary => match leaf {
                Leaf::Str(s) if s.bytes().all(|c| c.is_ascii_hexdigit()) => Ok(false),
                _ => Err(format!("expected a hex string, found {}", leaf.describe())),
            },
            Node::Decimal(parse, p, s) => match leaf {
                Leaf::Str(t) | Leaf::Num(t) if parse(t, *p, *s, out) => Ok(true),
                Leaf::Str(_) | Leaf::Num(_) => Err(format!(
                    "expected Decimal({p}, {s}), found {}",
                    leaf.describe()
                )),
                _ => Err(format!(
                    "expected Decimal({p}, {s}), found {}",
                    leaf.describe()
                )),
            },
            Node::Null => Err(format!("expected null, found {}", leaf.describe())),
            Node::List { .. } => Err(format!("expected an array, found {}", leaf.describe())),
            Node::Struct(_) | Node::Map { .. } => {
                Err(format!("expected an object, found {}", leaf.describe()))
            }
        };
        r.map_err(|m| self.mismatch(at, m))
    }

    /// Scans a value and checks it against `node`. A null is refused unless `nullable`.
    fn value(&mut self, node: &Node, nullable: bool, depth: usize) -> Scan {
        self.ws();
        match (self.b.get(self.i), node) {
            (Some(b'{'), Node::Struct(s)) => self.object(s, depth, None),
            (
                Some(b'{'),
                Node::Map {
                    key,
                    value,
                    value_nullable,
                },
            ) => self.map(key, value, *value_nullable, depth),
            (Some(b'['), Node::List { item, nullable }) => self.array(item, *nullable, depth),
            _ => self.leaf(node, nullable, depth, &mut Slot::Null),
        }
    }

    /// Scans a value that is not a struct, list or map of `node` (those are refused as
    /// mismatches here; [`Scanner::value`] descends into them), checks it against
    /// `node` and converts it into `out` (left as it was if the value is refused). A
    /// null is refused unless `nullable`.
    fn leaf(&mut self, node: &Node, nullable: bool, depth: usize, out: &mut Slot) -> Scan {
        self.ws();
        let at = self.i;
        let converted = match self.b.get(self.i) {
            Some(b'n') => {
                self.literal("null")?;
                if !nullable {
                    return Err(self.mismatch(at, "null in a non-nullable field"));
                }
                *out = Slot::Null;
                return Ok(());
            }
            // No scalar column takes an object or an array: the check words the refusal.
            Some(b'{') => {
                self.skip(depth)?;
                self.check_leaf(node, Leaf::Object, at, out)?;
                return Err(self.mismatch(at, "expected a scalar, found an object"));
            }
            Some(b'[') => {
                self.skip(depth)?;
                self.check_leaf(node, Leaf::Array, at, out)?;
                return Err(self.mismatch(at, "expected a scalar, found an array"));
            }
            Some(b'"') => {
                let s = self.string()?;
                if !self.check_leaf(node, Leaf::Str(self.text(&s)), at, out)? {
                    *out = match s {
                        Str::Borrowed(a, b) => Slot::Span(a, b),
                        Str::Scratch => Slot::Unescaped(self.scratch.as_str().into()),
                    };
                }
                return Ok(());
            }
            Some(b't') => {
                self.literal("true")?;
                self.check_leaf(node, Leaf::Bool(true), at, out)?
            }
            Some(b'f') => {
                self.literal("false")?;
                self.check_leaf(node, Leaf::Bool(false), at, out)?
            }
            Some(b'-' | b'0'..=b'9') => {
                let n = self.number()?;
                self.check_leaf(node, Leaf::Num(n), at, out)?
            }
            _ => return Err(self.unexpected("a value")),
        };
        if !converted {
            // A number or boolean kept as text: its text in the record.
            *out = Slot::Span(at, self.i);
        }
        Ok(())
    }

    fn array(&mut self, item: &Node, nullable: bool, depth: usize) -> Scan {
        if depth >= MAX_DEPTH {
            return Err(self.syntax(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(());
        }
        let mut n = 0usize;
        loop {
            self.value(item, nullable, depth + 1)
                .map_err(|r| r.within(PathSeg::Index(n)))?;
            n += 1;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.unexpected("',' or ']'")),
            }
        }
    }

    fn map(&mut self, key: &Node, value: &Node, value_nullable: bool, depth: usize) -> Scan {
        if depth >= MAX_DEPTH {
            return Err(self.syntax(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return Err(self.unexpected("a string key"));
            }
            let at = self.i;
            let k = self.string()?;
            let name = self.keep(&k);
            self.check_leaf(key, Leaf::Str(&name), at, &mut Slot::Null)
                .map_err(|r| r.within(PathSeg::Field(name.to_string())))?;
            self.ws();
            self.eat(b':', "':'")?;
            self.value(value, value_nullable, depth + 1)
                .map_err(|r| r.within(PathSeg::Field(name.into_owned())))?;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.unexpected("',' or '}'")),
            }
        }
    }

    /// Scans an object of `node`. With `slots` (one per field, all [`Slot::Null`], and
    /// every field a leaf), also keeps each field's converted value there: the last
    /// one when a key is repeated, as arrow-json does.
    fn object(&mut self, node: &StructNode, depth: usize, mut slots: Option<&mut [Slot]>) -> Scan {
        if depth >= MAX_DEPTH {
            return Err(self.syntax(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let start = self.i;
        self.i += 1;
        // Fields whose last value was present and not null, when some are required.
        let mut present = Present::new(node);
        // The field expected next.
        let mut hint = 0;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
        } else {
            loop {
                self.ws();
                if self.b.get(self.i) != Some(&b'"') {
                    return Err(self.unexpected("a string key"));
                }
                let k = self.string()?;
                let field = node.find_from(self.text(&k), hint);
                self.ws();
                self.eat(b':', "':'")?;
                match field {
                    None => self.skip(depth + 1)?,
                    Some(f) => {
                        hint = f + 1;
                        let (name, nullable, child) = &node.fields[f];
                        self.ws();
                        let is_null = self.b.get(self.i) == Some(&b'n');
                        let r = match slots.as_deref_mut() {
                            Some(slots) => self.leaf(child, *nullable, depth + 1, &mut slots[f]),
                            None => self.value(child, *nullable, depth + 1),
                        };
                        r.map_err(|r| r.within(PathSeg::Field(name.clone())))?;
                        present.set(f, !is_null);
                    }
                }
                self.ws();
                match self.b.get(self.i) {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(self.unexpected("',' or '}'")),
                }
            }
        }
        if node.has_required {
            for (f, (name, nullable, _)) in node.fields.iter().enumerate() {
                if !nullable && !present.get(f) {
                    return Err(self
                        .mismatch(start, "missing value for a non-nullable field")
                        .within(PathSeg::Field(name.clone())));
                }
            }
        }
        Ok(())
    }

    /// Checks a whole record: one object, surrounded by whitespace only. Returns the
    /// byte range of the object. `slots` as for [`Scanner::object`].
    fn record(&mut self, root: &StructNode, slots: Option<&mut [Slot]>) -> Scan<(usize, usize)> {
        self.ws();
        let start = self.i;
        match self.b.get(self.i) {
            None => return Err(self.syntax("empty record")),
            Some(b'{') => self.object(root, 0, slots)?,
            Some(_) => {
                self.skip(0)?;
                self.ws();
                if self.i < self.b.len() {
                    return Err(self.unexpected("end of record"));
                }
                let kind = match self.b[start] {
                    b'[' => "an array",
                    b'"' => "a string",
                    b'n' => "null",
                    b't' | b'f' => "a boolean",
                    _ => "a number",
                };
                return Err(self.mismatch(start, format!("expected a JSON object, found {kind}")));
            }
        }
        let end = self.i;
        self.ws();
        if self.i < self.b.len() {
            return Err(self.unexpected("end of record"));
        }
        Ok((start, end))
    }
}

/// Checks `record` against `root`: `Ok` with the byte range of the object, or why not.
fn scan(record: &[u8], root: &StructNode) -> Scan<(usize, usize)> {
    scan_text(utf8(record)?, root, None)
}

/// `record` as text, or the refusal of a record that is not UTF-8.
fn utf8(record: &[u8]) -> Scan<&str> {
    std::str::from_utf8(record).map_err(|e| {
        Box::new(Refusal {
            reason: BadRecordReason::Malformed,
            message: "not valid UTF-8".into(),
            at: e.valid_up_to(),
            path: vec![],
        })
    })
}

/// Like [`scan`], on a record known to be text. With `slots` (one per root field, every
/// root field a leaf), also leaves there the record's converted values; their contents
/// are unspecified if the record is refused.
fn scan_text(
    text: &str,
    root: &StructNode,
    mut slots: Option<&mut [Slot]>,
) -> Scan<(usize, usize)> {
    if let Some(slots) = slots.as_deref_mut() {
        slots.fill(Slot::Null);
    }
    let mut sc = Scanner::new(text);
    match sc.record(root, slots) {
        Ok(r) => Ok(r),
        Err(r) if r.reason == BadRecordReason::SchemaMismatch => {
            // A schema mismatch in a record that is not JSON at all is malformed.
            let mut syntax = Scanner::new(text);
            syntax.ws();
            match syntax.skip(0).and_then(|_| {
                syntax.ws();
                if syntax.i < syntax.b.len() {
                    Err(syntax.unexpected("end of record"))
                } else {
                    Ok(())
                }
            }) {
                Ok(()) => Err(r),
                Err(syntax_error) => Err(syntax_error),
            }
        }
        Err(r) => Err(r),
    }
}

// ------------------------------------------------------------------------------------
// Flat schemas: the scanner's values straight into builders
// ------------------------------------------------------------------------------------

/// A column of a flat schema, built from the scanner's slots.
trait FlatColumn: Send {
    /// Appends `slot`, the value the scanner converted for this column from `record`
    /// (the text a [`Slot::Span`] is in).
    fn append(&mut self, slot: &Slot, record: &str);
    /// The values appended since the last call.
    fn finish(&mut self) -> ArrayRef;
}

/// A column given a slot of another kind: a bug, since a column's builder and its
/// scanner node are compiled from the same type (see [`flat_column`]).
#[cold]
fn wrong_slot(slot: &Slot) -> ! {
    unreachable!("a JSON column was given a slot of another kind: {slot:?}")
}

/// The text of a slot of a column that keeps its value's text (strings, hex binary).
fn slot_text<'r>(slot: &'r Slot, record: &'r str) -> &'r str {
    match slot {
        Slot::Span(a, b) => &record[*a..*b],
        Slot::Unescaped(s) => s,
        _ => wrong_slot(slot),
    }
}

impl<T> FlatColumn for PrimitiveBuilder<T>
where
    T: ArrowPrimitiveType,
    T::Native: SlotNative,
{
    fn append(&mut self, slot: &Slot, _: &str) {
        match slot {
            Slot::Null => self.append_null(),
            _ => match <T::Native as SlotNative>::from_slot(slot) {
                Some(v) => self.append_value(v),
                None => wrong_slot(slot),
            },
        }
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(PrimitiveBuilder::finish(self))
    }
}

impl FlatColumn for BooleanBuilder {
    fn append(&mut self, slot: &Slot, _: &str) {
        match slot {
            Slot::Null => self.append_null(),
            Slot::Bool(b) => self.append_value(*b),
            _ => wrong_slot(slot),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(BooleanBuilder::finish(self))
    }
}

impl<O: OffsetSizeTrait> FlatColumn for GenericStringBuilder<O> {
    fn append(&mut self, slot: &Slot, record: &str) {
        match slot {
            Slot::Null => self.append_null(),
            _ => self.append_value(slot_text(slot, record)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(GenericStringBuilder::finish(self))
    }
}

impl FlatColumn for StringViewBuilder {
    fn append(&mut self, slot: &Slot, record: &str) {
        match slot {
            Slot::Null => self.append_null(),
            _ => self.append_value(slot_text(slot, record)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(StringViewBuilder::finish(self))
    }
}

/// Binary from hex strings, decoded as arrow-json does: pairs of digits, then a last
/// lone digit as a byte of its own.
struct HexColumn<O: OffsetSizeTrait> {
    builder: GenericBinaryBuilder<O>,
    bytes: Vec<u8>,
}

impl<O: OffsetSizeTrait> FlatColumn for HexColumn<O> {
    fn append(&mut self, slot: &Slot, record: &str) {
        if let Slot::Null = slot {
            self.builder.append_null();
            return;
        }
        // The scanner let only hex digits through.
        let digit = |c: &u8| (*c as char).to_digit(16).unwrap_or(0) as u8;
        let text = slot_text(slot, record).as_bytes();
        let mut pairs = text.chunks_exact(2);
        self.bytes.clear();
        self.bytes
            .extend((&mut pairs).map(|p| (digit(&p[0]) << 4) | digit(&p[1])));
        self.bytes.extend(pairs.remainder().iter().map(digit));
        self.builder.append_value(&self.bytes);
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(self.builder.finish())
    }
}

/// A column of type `Null`: only nulls, counted.
struct NullColumn(usize);

impl FlatColumn for NullColumn {
    fn append(&mut self, slot: &Slot, _: &str) {
        match slot {
            Slot::Null => self.0 += 1,
            _ => wrong_slot(slot),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(NullArray::new(std::mem::take(&mut self.0)))
    }
}

/// The builder of a leaf column of type `dt` (one [`compile`] makes a scalar node of,
/// filling the slot variant the builder reads), `None` for structs, lists and maps.
fn flat_column(dt: &DataType, capacity: usize) -> Option<Box<dyn FlatColumn>> {
    fn native<T>(dt: &DataType, capacity: usize) -> Box<dyn FlatColumn>
    where
        T: ArrowPrimitiveType,
        T::Native: SlotNative,
    {
        Box::new(PrimitiveBuilder::<T>::with_capacity(capacity).with_data_type(dt.clone()))
    }
    fn hex<O: OffsetSizeTrait>(capacity: usize) -> Box<dyn FlatColumn> {
        Box::new(HexColumn {
            builder: GenericBinaryBuilder::<O>::with_capacity(capacity, capacity * 8),
            bytes: Vec::new(),
        })
    }
    let c = capacity;
    Some(match dt {
        DataType::Null => Box::new(NullColumn(0)),
        DataType::Boolean => Box::new(BooleanBuilder::with_capacity(c)),
        DataType::Utf8 => Box::new(StringBuilder::with_capacity(c, c * 16)),
        DataType::LargeUtf8 => Box::new(LargeStringBuilder::with_capacity(c, c * 16)),
        DataType::Utf8View => Box::new(StringViewBuilder::with_capacity(c)),
        DataType::Binary => hex::<i32>(c),
        DataType::LargeBinary => hex::<i64>(c),
        DataType::Int8 => native::<Int8Type>(dt, c),
        DataType::Int16 => native::<Int16Type>(dt, c),
        DataType::Int32 => native::<Int32Type>(dt, c),
        DataType::Int64 => native::<Int64Type>(dt, c),
        DataType::UInt8 => native::<UInt8Type>(dt, c),
        DataType::UInt16 => native::<UInt16Type>(dt, c),
        DataType::UInt32 => native::<UInt32Type>(dt, c),
        DataType::UInt64 => native::<UInt64Type>(dt, c),
        DataType::Float32 => native::<Float32Type>(dt, c),
        DataType::Float64 => native::<Float64Type>(dt, c),
        DataType::Date32 => native::<Date32Type>(dt, c),
        DataType::Date64 => native::<Date64Type>(dt, c),
        DataType::Time32(TimeUnit::Second) => native::<Time32SecondType>(dt, c),
        DataType::Time32(TimeUnit::Millisecond) => native::<Time32MillisecondType>(dt, c),
        DataType::Time64(TimeUnit::Microsecond) => native::<Time64MicrosecondType>(dt, c),
        DataType::Time64(TimeUnit::Nanosecond) => native::<Time64NanosecondType>(dt, c),
        DataType::Duration(TimeUnit::Second) => native::<DurationSecondType>(dt, c),
        DataType::Duration(TimeUnit::Millisecond) => native::<DurationMillisecondType>(dt, c),
        DataType::Duration(TimeUnit::Microsecond) => native::<DurationMicrosecondType>(dt, c),
        DataType::Duration(TimeUnit::Nanosecond) => native::<DurationNanosecondType>(dt, c),
        DataType::Timestamp(TimeUnit::Second, _) => native::<TimestampSecondType>(dt, c),
        DataType::Timestamp(TimeUnit::Millisecond, _) => native::<TimestampMillisecondType>(dt, c),
        DataType::Timestamp(TimeUnit::Microsecond, _) => native::<TimestampMicrosecondType>(dt, c),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => native::<TimestampNanosecondType>(dt, c),
        DataType::Decimal32(_, _) => native::<Decimal32Type>(dt, c),
        DataType::Decimal64(_, _) => native::<Decimal64Type>(dt, c),
        DataType::Decimal128(_, _) => native::<Decimal128Type>(dt, c),
        DataType::Decimal256(_, _) => native::<Decimal256Type>(dt, c),
        _ => return None,
    })
}

/// The rows of a flat schema: every root field a leaf, no two with the same name.
///
/// The scanner converts a record's values into `slots` while it checks them; they are
/// appended to `columns` only once the whole record is accepted, so a refused record
/// leaves nothing behind and an accepted one is never refused afterwards.
struct FlatRows {
    /// One per root field, in order.
    columns: Vec<Box<dyn FlatColumn>>,
    /// The values of the record being scanned, one per column.
    slots: Vec<Slot>,
    /// Rows appended since the last flush.
    rows: usize,
}

impl FlatRows {
    /// `None` unless `schema` (compiled into `root`) is flat. A schema without columns
    /// is left to arrow-json, whose batches of no columns have no rows either.
    fn new(schema: &Schema, root: &StructNode, capacity: usize) -> Option<Self> {
        if !root.unique || schema.fields().is_empty() {
            return None;
        }
        let capacity = capacity.min(DEFAULT_CAPACITY);
        let columns = schema
            .fields()
            .iter()
            .map(|f| flat_column(f.data_type(), capacity))
            .collect::<Option<Vec<_>>>()?;
        Some(FlatRows {
            slots: vec![Slot::Null; columns.len()],
            columns,
            rows: 0,
        })
    }

    fn push(&mut self, record: &[u8], root: &StructNode) -> Scan {
        let text = utf8(record)?;
        scan_text(text, root, Some(&mut self.slots))?;
        for (column, slot) in self.columns.iter_mut().zip(&self.slots) {
            column.append(slot, text);
        }
        self.rows += 1;
        Ok(())
    }

    fn flush(&mut self, schema: &SchemaRef) -> crate::Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let columns = self.columns.iter_mut().map(|c| c.finish()).collect();
        let options =
            RecordBatchOptions::new().with_row_count(Some(std::mem::take(&mut self.rows)));
        RecordBatch::try_new_with_options(schema.clone(), columns, &options)
            .map(Some)
            .map_err(|e| decode_err(e.to_string()))
    }
}

// ------------------------------------------------------------------------------------
// Other schemas: arrow-json behind a safety net
// ------------------------------------------------------------------------------------

fn builder(wire: &SchemaRef, capacity: usize) -> ReaderBuilder {
    ReaderBuilder::new(wire.clone())
        .with_batch_size(capacity.max(1))
        .with_coerce_primitive(true)
}

/// A bad record found after `push` accepted it (a safety net: the scanner and
/// arrow-json disagree); reported by the next `push` or [`JsonDecoder::report_late`].
struct Late {
    reason: BadRecordReason,
    detail: String,
    raw: Vec<u8>,
}

/// The records of schemas that are not flat, accepted by the scanner: decoded by
/// arrow-json in runs of `capacity`, behind the safety net described at
/// [`JsonDecoder`].
struct Bulk {
    schema: SchemaRef,
    /// The schema arrow-json decodes (see [`wire_type`]).
    wire: SchemaRef,
    decoder: Decoder,
    capacity: usize,
    /// The records in `decoder`, back to back; `ends[i]` is where record `i` ends and
    /// `ords[i]` its ordinal among the records accepted since the last flush.
    raw: Vec<u8>,
    ends: Vec<usize>,
    ords: Vec<usize>,
    /// Records accepted since the last flush.
    accepted: usize,
    /// Ordinals of accepted records refused afterwards (see [`JsonDecoder::take_dropped`]).
    dropped: Vec<usize>,
    /// Batches already decoded, in order.
    done: Vec<RecordBatch>,
    done_rows: usize,
    late: Vec<Late>,
}

impl Bulk {
    fn new(schema: SchemaRef, capacity: usize) -> crate::Result<Self> {
        let wire_fields: Vec<FieldRef> = schema.fields().iter().map(wire_field).collect();
        let wire = Arc::new(Schema::new_with_metadata(
            wire_fields,
            schema.metadata().clone(),
        ));
        let decoder = builder(&wire, capacity)
            .build_decoder()
            .map_err(|e| decode_err(e.to_string()))?;
        Ok(Bulk {
            schema,
            wire,
            decoder,
            capacity,
            raw: Vec::new(),
            ends: Vec::new(),
            ords: Vec::new(),
            accepted: 0,
            dropped: Vec::new(),
            done: Vec::new(),
            done_rows: 0,
            late: Vec::new(),
        })
    }

    /// Feeds arrow-json `record`, whose object the scanner accepted at `start..end`.
    fn push(&mut self, record: &[u8], (start, end): (usize, usize), bad: &mut BadRecords) -> bool {
        if self.decoder.len() >= self.capacity {
            self.decode_buffer();
        }
        let object = &record[start..end];
        let before = self.decoder.len();
        let fed = self.decoder.decode(object);
        let clean = matches!(fed, Ok(n) if n == object.len())
            && self.decoder.len() == before + 1
            && !self.decoder.has_partial_record();
        if !clean {
            // The scanner accepted what arrow-json's tokenizer did not: refuse the
            // record and rebuild the decoder from the records before it.
            let detail = match fed {
                Err(e) => e.to_string(),
                Ok(_) => "record not decoded as exactly one object".into(),
            };
            bad.report(BadRecordReason::Malformed, &detail, record);
            self.rebuild();
            return false;
        }
        self.raw.extend_from_slice(object);
        self.ends.push(self.raw.len());
        self.ords.push(self.accepted);
        self.accepted += 1;
        true
    }

    fn buffered(&self) -> usize {
        self.done_rows + self.decoder.len()
    }

    fn flush(&mut self) -> crate::Result<Option<RecordBatch>> {
        self.decode_buffer();
        self.done_rows = 0;
        self.accepted = 0;
        let done = std::mem::take(&mut self.done);
        match done.len() {
            0 => Ok(None),
            1 => Ok(done.into_iter().next()),
            _ => arrow::compute::concat_batches(&self.schema, &done)
                .map(Some)
                .map_err(|e| decode_err(e.to_string())),
        }
    }

    fn report_late(&mut self, bad: &mut BadRecords) {
        for l in self.late.drain(..) {
            bad.report(l.reason, &l.detail, &l.raw);
        }
    }

    fn fresh(&self, capacity: usize) -> Option<Decoder> {
        match builder(&self.wire, capacity).build_decoder() {
            Ok(d) => Some(d),
            Err(e) => {
                // Cannot happen: the same builder built the first decoder.
                tracing::error!(error = %e, "rebuilding the JSON decoder failed");
                None
            }
        }
    }

    /// The buffered records: (ordinal, start, end) in `raw`.
    fn records(&self) -> Vec<(usize, usize, usize)> {
        let mut start = 0;
        self.ends
            .iter()
            .zip(&self.ords)
            .map(|(&e, &o)| {
                let r = (o, start, e);
                start = e;
                r
            })
            .collect()
    }

    fn clear_buffer(&mut self) {
        self.raw.clear();
        self.ends.clear();
        self.ords.clear();
    }

    /// Replaces the decoder by a fresh one fed with the buffered records.
    fn rebuild(&mut self) {
        let Some(fresh) = self.fresh(self.capacity) else {
            return;
        };
        self.decoder = fresh;
        let records = self.records();
        let raw = std::mem::take(&mut self.raw);
        self.clear_buffer();
        for (ord, a, b) in records {
            let rec = &raw[a..b];
            let before = self.decoder.len();
            let ok = matches!(self.decoder.decode(rec), Ok(n) if n == rec.len())
                && self.decoder.len() == before + 1;
            if ok {
                self.raw.extend_from_slice(rec);
                self.ends.push(self.raw.len());
                self.ords.push(ord);
            } else {
                // Only possible if the tokenizer is not deterministic: this record
                // and those re-fed before it (the decoder is started afresh) are
                // refused; keep going.
                let lost = self.records();
                for (o, x, y) in lost.iter().copied().chain([(ord, a, b)]) {
                    let rec = if o == ord {
                        &raw[x..y]
                    } else {
                        &self.raw[x..y]
                    };
                    self.late.push(Late {
                        reason: BadRecordReason::Malformed,
                        detail: "record refused when re-decoded".into(),
                        raw: rec.to_vec(),
                    });
                    self.dropped.push(o);
                }
                if let Some(d) = self.fresh(self.capacity) {
                    self.decoder = d;
                }
                self.clear_buffer();
            }
        }
    }

    /// Decodes the buffered records into `done`.
    fn decode_buffer(&mut self) {
        if self.decoder.is_empty() {
            self.clear_buffer();
            return;
        }
        let decoded = self
            .decoder
            .flush()
            .map_err(|e| e.to_string())
            .and_then(|b| b.map(|b| self.to_schema(b)).transpose());
        match decoded {
            Ok(Some(batch)) => {
                self.done_rows += batch.num_rows();
                self.done.push(batch);
            }
            Ok(None) => {}
            Err(_) => {
                if let Some(d) = self.fresh(self.capacity) {
                    self.decoder = d;
                }
                let records = self.records();
                let raw = std::mem::take(&mut self.raw);
                self.isolate(&raw, &records);
                self.raw = raw;
            }
        }
        self.clear_buffer();
    }

    /// Decodes `records` of `raw` by halves until the refused ones are alone.
    fn isolate(&mut self, raw: &[u8], records: &[(usize, usize, usize)]) {
        let mut stack = vec![records];
        while let Some(part) = stack.pop() {
            if part.is_empty() {
                continue;
            }
            match self.decode_part(raw, part) {
                Ok(Some(batch)) => {
                    self.done_rows += batch.num_rows();
                    self.done.push(batch);
                }
                Ok(None) => {}
                Err(e) if part.len() == 1 => {
                    let (ord, a, b) = part[0];
                    self.dropped.push(ord);
                    self.late.push(Late {
                        reason: BadRecordReason::SchemaMismatch,
                        detail: e,
                        raw: raw[a..b].to_vec(),
                    });
                }
                Err(_) => {
                    let (left, right) = part.split_at(part.len() / 2);
                    // Right first: the stack pops the left half first, keeping order.
                    stack.push(right);
                    stack.push(left);
                }
            }
        }
    }

    fn decode_part(
        &self,
        raw: &[u8],
        part: &[(usize, usize, usize)],
    ) -> Result<Option<RecordBatch>, String> {
        let mut d = self.fresh(part.len()).ok_or("no decoder")?;
        for &(_, a, b) in part {
            d.decode(&raw[a..b]).map_err(|e| e.to_string())?;
        }
        match d.flush().map_err(|e| e.to_string())? {
            Some(b) => self.to_schema(b).map(Some),
            None => Ok(None),
        }
    }

    /// A batch decoded with the wire schema, converted to the decoder's schema.
    fn to_schema(&self, wire: RecordBatch) -> Result<RecordBatch, String> {
        let columns = wire
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| to_target(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())
    }

    /// Test hook: feed a record to the bulk decoder without the scanner, to exercise
    /// the safety net.
    #[cfg(test)]
    fn push_unchecked(&mut self, record: &[u8]) {
        if self.decoder.len() >= self.capacity {
            self.decode_buffer();
        }
        let _ = self.decoder.decode(record);
        self.raw.extend_from_slice(record);
        self.ends.push(self.raw.len());
        self.ords.push(self.accepted);
        self.accepted += 1;
    }
}

/// Decodes JSON records (one object each) into batches of a fixed schema.
///
/// ```text
/// let mut d = JsonDecoder::new(schema)?;
/// for line in lines { d.push(line, &mut bad); }   // bad lines reported and skipped
/// let batch = d.flush()?;                          // every good record, in order
/// ```
///
/// Flat schemas (every column a scalar: numbers, strings, booleans, timestamps, dates,
/// times, durations, decimals, binary; no two columns of the same name) take one pass:
/// the scanner converts each value while it checks it, and the values of an accepted
/// record are appended to Arrow builders. Nothing is refused after `push` accepted it.
///
/// Other schemas (with structs, lists or maps): each record is scanned once by the
/// scanner and decoded once by arrow-json in bulk; its bytes are also copied once into
/// a buffer kept until the next flush (the material of the safety net below).
///
/// Safety net (other schemas only): should arrow-json refuse a buffer of records the
/// scanner accepted, the buffer is split in halves and re-decoded until the refused
/// records are isolated (good records keep their order); those are reported by the
/// next `push` or by [`JsonDecoder::report_late`].
pub struct JsonDecoder {
    schema: SchemaRef,
    root: StructNode,
    rows: Rows,
    /// The rows per flush the decoder is sized for (read by the test hook only).
    #[cfg(test)]
    capacity: usize,
}

/// Where a [`JsonDecoder`]'s accepted records go.
// One per decoder, chosen once: the size of the unused variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Rows {
    Flat(FlatRows),
    Bulk(Bulk),
}

impl std::fmt::Debug for JsonDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonDecoder")
            .field("schema", &self.schema)
            .field("flat", &matches!(self.rows, Rows::Flat(_)))
            .field("buffered", &self.buffered())
            .finish()
    }
}

impl JsonDecoder {
    /// A decoder producing batches of exactly `schema`. Refuses schemas with types the
    /// JSON decoder does not support (dictionaries, unions, fixed-size lists, …).
    pub fn new(schema: SchemaRef) -> crate::Result<Self> {
        Self::with_capacity(schema, DEFAULT_CAPACITY)
    }

    /// Like [`JsonDecoder::new`], sized for flushes of about `capacity` rows (more can be
    /// pushed; with structs, lists or maps they are decoded in runs of `capacity`).
    pub fn with_capacity(schema: SchemaRef, capacity: usize) -> crate::Result<Self> {
        Self::build(schema, capacity, true)
    }

    /// Like [`JsonDecoder::with_capacity`], but always through arrow-json, as schemas
    /// with structs, lists or maps are (the same batches and refusals, at a higher
    /// cost): for comparing the two ways.
    #[doc(hidden)]
    pub fn with_capacity_through_arrow_json(
        schema: SchemaRef,
        capacity: usize,
    ) -> crate::Result<Self> {
        Self::build(schema, capacity, false)
    }

    fn build(schema: SchemaRef, capacity: usize, flat: bool) -> crate::Result<Self> {
        let capacity = capacity.clamp(1, 1 << 20);
        let root =
            compile_struct(schema.fields()).map_err(|e| decode_err(format!("column {e}")))?;
        let rows = match flat
            .then(|| FlatRows::new(&schema, &root, capacity))
            .flatten()
        {
            Some(flat) => Rows::Flat(flat),
            None => Rows::Bulk(Bulk::new(schema.clone(), capacity)?),
        };
        Ok(JsonDecoder {
            schema,
            root,
            rows,
            #[cfg(test)]
            capacity,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes one record (one JSON object, surrounding whitespace allowed). A record
    /// that is not JSON is reported as [`BadRecordReason::Malformed`], one whose values
    /// do not fit the schema as [`BadRecordReason::SchemaMismatch`]; either way it is
    /// skipped and `false` returned.
    pub fn push(&mut self, record: &[u8], bad: &mut BadRecords) -> bool {
        self.push_from(record, None, bad)
    }

    /// Like [`JsonDecoder::push`]; a refusal's detail starts with `origin` (e.g.
    /// `file.jsonl:12`), formatted only if the record is refused.
    pub fn push_from(
        &mut self,
        record: &[u8],
        origin: Option<&dyn std::fmt::Display>,
        bad: &mut BadRecords,
    ) -> bool {
        let refusal = match &mut self.rows {
            Rows::Flat(flat) => match flat.push(record, &self.root) {
                Ok(()) => return true,
                Err(refusal) => refusal,
            },
            Rows::Bulk(bulk) => {
                bulk.report_late(bad);
                match scan(record, &self.root) {
                    Ok(range) => return bulk.push(record, range, bad),
                    Err(refusal) => refusal,
                }
            }
        };
        let detail = match origin {
            Some(o) => format!("{o}: {}", refusal.detail()),
            None => refusal.detail(),
        };
        bad.report(refusal.reason, &detail, record);
        false
    }

    /// Number of good records pushed since the last flush.
    pub fn buffered(&self) -> usize {
        match &self.rows {
            Rows::Flat(flat) => flat.rows,
            Rows::Bulk(bulk) => bulk.buffered(),
        }
    }

    /// Every good record pushed since the last flush, in order, as one batch with
    /// exactly the decoder's schema; `None` when there are none.
    pub fn flush(&mut self) -> crate::Result<Option<RecordBatch>> {
        match &mut self.rows {
            Rows::Flat(flat) => flat.flush(&self.schema),
            Rows::Bulk(bulk) => bulk.flush(),
        }
    }

    /// Which records, counted from 0 at the last flush in the order `push` accepted
    /// them, the safety net refused afterwards: the rows of that flush are the accepted
    /// records without these (always none for flat schemas). Call after `flush`;
    /// callers that pair each record with data of their own (a Kafka record's key,
    /// offset) use it to stay aligned.
    pub fn take_dropped(&mut self) -> Vec<usize> {
        match &mut self.rows {
            Rows::Flat(_) => Vec::new(),
            Rows::Bulk(bulk) => {
                let mut d = std::mem::take(&mut bulk.dropped);
                d.sort_unstable();
                d
            }
        }
    }

    /// Reports the records refused after `push` had accepted them (see the type's
    /// documentation); `push` does this itself, so call it after the last `flush`.
    pub fn report_late(&mut self, bad: &mut BadRecords) {
        if let Rows::Bulk(bulk) = &mut self.rows {
            bulk.report_late(bad);
        }
    }

    /// Test hook: feed a record to the bulk decoder without the scanner, to exercise
    /// the safety net. A decoder on the flat path moves to the arrow-json path first,
    /// the rows it holds becoming its first decoded batch.
    #[cfg(test)]
    fn push_unchecked(&mut self, record: &[u8]) {
        if let Rows::Flat(flat) = &mut self.rows {
            let mut bulk = Bulk::new(self.schema.clone(), self.capacity).unwrap();
            if let Some(batch) = flat.flush(&self.schema).unwrap() {
                bulk.accepted = batch.num_rows();
                bulk.done_rows = batch.num_rows();
                bulk.done.push(batch);
            }
            self.rows = Rows::Bulk(bulk);
        }
        if let Rows::Bulk(bulk) = &mut self.rows {
            bulk.push_unchecked(record);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use arrow::array::{
        BooleanArray, Float64Array, Int32Array, Int64Array, ListBuilder, StringArray,
        StringBuilder, TimestampMicrosecondArray, TimestampMillisecondArray,
        TimestampNanosecondArray, TimestampSecondArray,
    };
    use arrow::datatypes::{Field, Fields};
    use proptest::prelude::*;

    use super::*;

    /// Counts bad-record reports by reason, through the metrics they increment.
    #[derive(Default, Clone)]
    pub(crate) struct Reasons(Arc<Mutex<Vec<String>>>);

    struct ReasonCounter {
        reason: String,
        log: Reasons,
    }

    impl metrics::CounterFn for ReasonCounter {
        fn increment(&self, value: u64) {
            let mut log = self.log.0.lock().unwrap();
            for _ in 0..value {
                log.push(self.reason.clone());
            }
        }
        fn absolute(&self, _value: u64) {}
    }

    impl metrics::Recorder for Reasons {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            if key.name() != "tributary_bad_records_total" {
                return metrics::Counter::noop();
            }
            let reason = key
                .labels()
                .find(|l| l.key() == "reason")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            metrics::Counter::from_arc(Arc::new(ReasonCounter {
                reason,
                log: self.clone(),
            }))
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    impl Reasons {
        pub(crate) fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn field(name: &str, dt: DataType, nullable: bool) -> Field {
        Field::new(name, dt, nullable)
    }

    fn schema(fields: Vec<Field>) -> SchemaRef {
        Arc::new(Schema::new(fields))
    }

    fn lines(bytes: &[u8]) -> Vec<&[u8]> {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect()
    }

    fn decode_all(
        schema: &SchemaRef,
        input: &[&[u8]],
        bad: &mut BadRecords,
    ) -> (Vec<bool>, Option<RecordBatch>) {
        let mut d = JsonDecoder::new(schema.clone()).unwrap();
        let accepted: Vec<bool> = input.iter().map(|r| d.push(r, bad)).collect();
        let batch = d.flush().unwrap();
        d.report_late(bad);
        (accepted, batch)
    }

    /// A batch of every kind of column the round trip covers, nulls included.
    fn sample_batch() -> RecordBatch {
        let item = Arc::new(Field::new("item", DataType::Int64, true));
        let inner = Fields::from(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new_list("tags", Field::new("item", DataType::Utf8, true), true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]);
        let schema = schema(vec![
            field("id", DataType::Int64, false),
            field("small", DataType::Int32, true),
            field("score", DataType::Float64, true),
            field("label", DataType::Utf8, true),
            field("ok", DataType::Boolean, true),
            field(
                "ts_ns",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                true,
            ),
            field(
                "ts_ms_tz",
                DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into())),
                true,
            ),
            field("ts_s", DataType::Timestamp(TimeUnit::Second, None), true),
            field("nums", DataType::List(item.clone()), true),
            field("inner", DataType::Struct(inner.clone()), true),
        ]);
        let mut nums = ListBuilder::new(arrow::array::Int64Builder::new());
        nums.append_value([Some(1), None, Some(3)]);
        nums.append_null();
        nums.append_value([]);
        let mut tags = ListBuilder::new(StringBuilder::new());
        tags.append_value([Some("a"), Some("b\"c")]);
        tags.append_value([None::<&str>]);
        tags.append_null();
        let inner_array = StructArray::try_new(
            inner,
            vec![
                Arc::new(StringArray::from(vec![Some("x"), Some("ünï✓"), None])),
                Arc::new(tags.finish()),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        Some(1_700_000_000_123_456),
                        Some(-1),
                        None,
                    ])
                    .with_timezone("UTC"),
                ),
            ],
            Some(vec![true, true, false].into()),
        )
        .unwrap();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![i64::MAX, -1, 0])),
                Arc::new(Int32Array::from(vec![Some(7), None, Some(i32::MIN)])),
                Arc::new(Float64Array::from(vec![Some(0.1), Some(-1.5e300), None])),
                Arc::new(StringArray::from(vec![
                    Some("plain"),
                    Some("tab\tline\nquote\"\\"),
                    None,
                ])),
                Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
                Arc::new(TimestampNanosecondArray::from(vec![
                    Some(1_700_000_000_123_456_789),
                    None,
                    Some(-5),
                ])),
                Arc::new(
                    TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), Some(0), None])
                        .with_timezone("+02:00"),
                ),
                Arc::new(TimestampSecondArray::from(vec![
                    Some(1_700_000_000),
                    None,
                    Some(-86_400),
                ])),
                Arc::new(nums.finish()),
                Arc::new(inner_array),
            ],
        )
        .unwrap()
    }

    #[test]
    fn round_trip_equals_the_batch() {
        let batch = sample_batch();
        let mut out = Vec::new();
        encode_json_lines(&batch, &mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        // Explicit nulls, RFC 3339 timestamps.
        assert!(text.contains("\"small\":null"), "{text}");
        assert!(
            text.contains("\"ts_ns\":\"2023-11-14T22:13:20.123456789Z\""),
            "{text}"
        );
        assert!(
            text.contains("\"ts_ms_tz\":\"2023-11-15T00:13:20.123+02:00\""),
            "{text}"
        );
        let mut bad = BadRecords::detached("test");
        let (accepted, decoded) = decode_all(&batch.schema(), &lines(&out), &mut bad);
        assert_eq!(accepted, vec![true; 3]);
        assert_eq!(bad.count(), 0);
        assert_eq!(decoded.unwrap(), batch);
    }

    #[test]
    fn timestamps_from_strings_and_epoch_millis_in_every_unit() {
        let units = [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ];
        for unit in units {
            for tz in [None, Some("UTC"), Some("+05:30")] {
                let dt = DataType::Timestamp(unit, tz.map(Into::into));
                let s = schema(vec![field("t", dt.clone(), true)]);
                let input: Vec<&[u8]> = vec![
                    br#"{"t": 1700000000123}"#,
                    br#"{"t": "2023-11-14T22:13:20.123Z"}"#,
                    br#"{"t": "2023-11-15T03:43:20.123+05:30"}"#,
                    br#"{"t": -1000}"#,
                    br#"{"t": "1700000000123"}"#,
                    br#"{"t": null}"#,
                ];
                let mut bad = BadRecords::detached("test");
                let (accepted, batch) = decode_all(&s, &input, &mut bad);
                assert_eq!(accepted, vec![true; 6], "{dt}");
                let batch = batch.unwrap();
                assert_eq!(batch.column(0).data_type(), &dt);
                let as_ms = arrow::compute::cast(
                    batch.column(0),
                    &DataType::Timestamp(TimeUnit::Millisecond, tz.map(Into::into)),
                )
                .unwrap();
                let ms = as_ms.as_primitive::<TimestampMillisecondType>();
                let expect_first = if unit == TimeUnit::Second {
                    1_700_000_000_000
                } else {
                    1_700_000_000_123
                };
                for i in 0..3 {
                    assert_eq!(ms.value(i), expect_first, "{dt} row {i}");
                }
                assert_eq!(ms.value(3), -1000, "{dt}");
                assert_eq!(ms.value(4), expect_first, "{dt}");
                assert!(ms.is_null(5));
            }
        }
    }

    #[test]
    fn sub_millisecond_precision_is_kept() {
        let s = schema(vec![field(
            "t",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        )]);
        let mut bad = BadRecords::detached("test");
        let input: Vec<&[u8]> = vec![
            br#"{"t": "2023-11-14T22:13:20.123456789Z"}"#,
            br#"{"t": 1.5}"#,
        ];
        let (_, batch) = decode_all(&s, &input, &mut bad);
        let batch = batch.unwrap();
        let v = batch.column(0).as_primitive::<TimestampNanosecondType>();
        assert_eq!(v.value(0), 1_700_000_000_123_456_789);
        assert_eq!(v.value(1), 1_500_000);
    }

    fn reasons_of(
        schema: &SchemaRef,
        input: &[&[u8]],
    ) -> (Vec<bool>, Option<RecordBatch>, Vec<String>, u64) {
        let rec = Reasons::default();
        let mut bad = BadRecords::detached("test");
        let (accepted, batch) =
            metrics::with_local_recorder(&rec, || decode_all(schema, input, &mut bad));
        (accepted, batch, rec.take(), bad.count())
    }

    #[test]
    fn bad_records_are_isolated_with_their_reason_and_good_ones_kept_in_order() {
        let s = schema(vec![
            field("id", DataType::Int64, false),
            field("name", DataType::Utf8, true),
            field(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Int32, false))),
                true,
            ),
        ]);
        let input: Vec<&[u8]> = vec![
            br#"{"id": 1, "name": "a", "extra": {"ignored": [1, 2]}}"#,
            br#"{"id": 2, "name": "#,         // truncated
            br#"{"id": "two", "name": "b"}"#, // wrong type
            br#"{"name": "c"}"#,              // missing non-nullable
            br#"{"id": 3, "tags": [1, 2]}"#,
            br#"[{"id": 4}]"#,                      // not an object
            b"{\"id\": 5, \"name\": \"\xff\"}",     // not UTF-8
            br#"{"id": 6, "name": "d"} {"id": 7}"#, // two objects
            br#"{"id": 8, "tags": [1, null]}"#,     // null item in non-nullable list
            br#"{"id": 9 "name": "e"}"#,            // missing comma
            br#"{"id": 1.5}"#,                      // not an integer
            br#"{"id": null}"#,                     // null in non-nullable
            br#"{"id": 10, "name": "f"}"#,
        ];
        let (accepted, batch, reasons, count) = reasons_of(&s, &input);
        assert_eq!(
            accepted,
            vec![
                true, false, false, false, true, false, false, false, false, false, false, false,
                true
            ]
        );
        assert_eq!(
            reasons,
            vec![
                "malformed",
                "schema_mismatch",
                "schema_mismatch",
                "schema_mismatch",
                "malformed",
                "malformed",
                "schema_mismatch",
                "malformed",
                "schema_mismatch",
                "schema_mismatch",
            ]
        );
        assert_eq!(count, 10);
        let batch = batch.unwrap();
        assert_eq!(batch.schema(), s);
        let ids = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 3, 10]);
        let names = batch.column(1).as_string::<i32>();
        assert_eq!(
            names.iter().collect::<Vec<_>>(),
            vec![Some("a"), None, Some("f")]
        );
    }

    #[test]
    fn refusal_details_name_the_field() {
        let inner = Fields::from(vec![Field::new("n", DataType::Int32, false)]);
        let s = schema(vec![field(
            "xs",
            DataType::List(Arc::new(Field::new("item", DataType::Struct(inner), true))),
            true,
        )]);
        let root = compile_struct(s.fields()).unwrap();
        let r = scan(br#"{"xs": [{"n": 1}, {"n": "x"}]}"#, &root).unwrap_err();
        assert_eq!(r.reason, BadRecordReason::SchemaMismatch);
        assert!(
            r.detail()
                .starts_with("field 'xs[1].n': expected Int32, found \"x\""),
            "{}",
            r.detail()
        );
        let r = scan(br#"{"xs": [{}]}"#, &root).unwrap_err();
        assert!(
            r.detail().starts_with("field 'xs[0].n': missing value"),
            "{}",
            r.detail()
        );
        // A type error in a record that is not JSON anyway is malformed.
        let r = scan(br#"{"xs": "oops", "#, &root).unwrap_err();
        assert_eq!(r.reason, BadRecordReason::Malformed);
    }

    #[test]
    fn values_follow_the_documented_rules() {
        let s = schema(vec![
            field("i", DataType::Int8, true),
            field("f", DataType::Float32, true),
            field("s", DataType::Utf8, true),
            field("d", DataType::Date32, true),
            field(
                "m",
                DataType::Map(
                    Arc::new(Field::new(
                        "entries",
                        DataType::Struct(Fields::from(vec![
                            Field::new("key", DataType::Utf8, false),
                            Field::new("value", DataType::Int64, true),
                        ])),
                        false,
                    )),
                    false,
                ),
                true,
            ),
        ]);
        let ok: Vec<&[u8]> = vec![
            br#"{"i": 1e2, "f": "2.5", "s": 12, "d": "2024-02-29", "m": {"a": 1, "b": null}}"#,
            br#"{"i": "-128", "f": 1e-3, "s": true, "d": 19000, "m": {}}"#,
            br#"{"i": 2.0, "s": "\u00e9\ud83d\ude00"}"#,
        ];
        let (accepted, batch, reasons, _) = reasons_of(&s, &ok);
        assert_eq!(accepted, vec![true; 3], "{reasons:?}");
        let batch = batch.unwrap();
        assert_eq!(
            batch.column(0).as_primitive::<Int8Type>().values().to_vec(),
            vec![100, -128, 2]
        );
        let strings = batch.column(2).as_string::<i32>();
        assert_eq!(strings.value(0), "12");
        assert_eq!(strings.value(1), "true");
        assert_eq!(strings.value(2), "é😀");
        let bad: Vec<&[u8]> = vec![
            br#"{"i": 128}"#,
            br#"{"i": 1.5}"#,
            br#"{"i": "1e2"}"#,
            br#"{"f": "abc"}"#,
            br#"{"s": [1]}"#,
            br#"{"d": "2024-02-30"}"#,
            br#"{"m": {"a": "x"}}"#,
            br#"{"s": "\ud800"}"#,
            b"{\"s\": \"a\tb\"}",
            br#"{"i": 01}"#,
            b"",
            b"   ",
            br#"{"i": 1}}"#,
        ];
        let (accepted, _, reasons, _) = reasons_of(&s, &bad);
        assert_eq!(accepted, vec![false; bad.len()]);
        assert_eq!(&reasons[..7], vec!["schema_mismatch"; 7]);
        assert_eq!(&reasons[7..], vec!["malformed"; 6]);
    }

    /// Pins behaviours the flat and arrow-json paths must share: duplicate keys (the
    /// last value wins, every value is checked), escapes, numbers written as strings,
    /// `1e3` into integers, non-finite floats from strings, missing keys, nulls in a
    /// non-nullable field and timestamps as epoch milliseconds.
    #[test]
    fn edge_cases_of_flat_records_are_pinned() {
        let s = schema(vec![
            field("n", DataType::Int32, false),
            field("i", DataType::Int64, true),
            field("f", DataType::Float64, true),
            field("s", DataType::Utf8, true),
            field("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]);
        let input: Vec<&[u8]> = vec![
            br#"{"n": 1, "i": 1, "i": 2}"#,
            br#"{"n": 2, "i": 1, "i": null}"#,
            br#"{"n": 3, "n": null}"#,
            br#"{"n": 4, "i": "x", "i": 5}"#,
            br#"{"n": 5, "s": "a\"b\u00e9\n\/", "s": "last"}"#,
            br#"{"n": 6, "s": "q\"\\"}"#,
            br#"{"n": "7", "i": "-8", "f": "2.5"}"#,
            br#"{"n": 1e3, "i": 2.0, "f": 1E2}"#,
            br#"{"n": 9, "f": "NaN"}"#,
            br#"{"n": 10, "f": "-inf", "s": 1.50}"#,
            br#"{"n": 11}"#,
            br#"{}"#,
            br#"{"n": null}"#,
            br#"{"n": 12, "t": 1700000000123, "s": false}"#,
            br#"{"n": 13, "t": 1.5}"#,
            br#"{"n": 14, "t": "1700000000123"}"#,
            br#"{"n": 15, "t": "2015-07-15T00:00:01.234Z", "unknown": [1, {"a": null}]}"#,
            br#"{"i": 1, "n": 16, "i": 1.5}"#,
            br#"{"n": 17, "n": 18}"#,
        ];
        let (accepted, batch, reasons, _) = reasons_of(&s, &input);
        let expect_accepted = [
            true, true, false, false, true, true, true, true, true, true, true, false, false, true,
            true, true, true, false, true,
        ];
        assert_eq!(accepted, expect_accepted);
        assert_eq!(reasons, vec!["schema_mismatch"; 5]);
        let batch = batch.unwrap();
        let n = batch.column(0).as_primitive::<Int32Type>();
        assert_eq!(
            n.values().to_vec(),
            vec![1, 2, 5, 6, 7, 1000, 9, 10, 11, 12, 13, 14, 15, 18]
        );
        let i = batch.column(1).as_primitive::<Int64Type>();
        assert_eq!(i.value(0), 2);
        assert!(i.is_null(1));
        assert_eq!(i.value(4), -8);
        assert_eq!(i.value(5), 2);
        let f = batch.column(2).as_primitive::<Float64Type>();
        assert_eq!(f.value(4), 2.5);
        assert_eq!(f.value(5), 100.0);
        assert!(f.value(6).is_nan());
        assert_eq!(f.value(7), f64::NEG_INFINITY);
        let st = batch.column(3).as_string::<i32>();
        assert_eq!(st.value(2), "last");
        assert_eq!(st.value(3), "q\"\\");
        assert_eq!(st.value(7), "1.50");
        assert_eq!(st.value(9), "false");
        assert!(st.is_null(8));
        let t = batch.column(4).as_primitive::<TimestampMillisecondType>();
        assert_eq!(t.value(9), 1_700_000_000_123);
        assert_eq!(t.value(10), 1);
        assert_eq!(t.value(11), 1_700_000_000_123);
        assert_eq!(t.value(12), 1_436_918_401_234);
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let s = schema(vec![field("a", DataType::Int32, true)]);
        let mut deep = String::from(r#"{"x": "#);
        deep.push_str(&"[".repeat(100_000));
        deep.push_str(&"]".repeat(100_000));
        deep.push('}');
        let (accepted, _, reasons, _) = reasons_of(&s, &[deep.as_bytes()]);
        assert_eq!(accepted, vec![false]);
        assert_eq!(reasons, vec!["malformed"]);
    }

    #[test]
    fn many_records_are_decoded_in_runs_of_the_capacity() {
        let s = schema(vec![field("n", DataType::Int64, false)]);
        let mut d = JsonDecoder::with_capacity(s, 7).unwrap();
        let mut bad = BadRecords::detached("test");
        for n in 0..100 {
            assert!(d.push(format!(r#"{{"n": {n}}}"#).as_bytes(), &mut bad));
        }
        assert_eq!(d.buffered(), 100);
        let batch = d.flush().unwrap().unwrap();
        assert_eq!(
            batch
                .column(0)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec(),
            (0..100).collect::<Vec<_>>()
        );
        assert_eq!(d.buffered(), 0);
        assert!(d.flush().unwrap().is_none());
    }

    #[test]
    fn records_refused_by_arrow_after_the_scanner_are_isolated() {
        // The scanner is bypassed to exercise the safety net.
        let s = schema(vec![field("n", DataType::Int64, false)]);
        let mut d = JsonDecoder::with_capacity(s, 16).unwrap();
        let mut bad = BadRecords::detached("test");
        for n in 0..10 {
            if n == 6 {
                d.push_unchecked(br#"{"n": "six"}"#);
            } else {
                assert!(d.push(format!(r#"{{"n": {n}}}"#).as_bytes(), &mut bad));
            }
        }
        let batch = d.flush().unwrap().unwrap();
        let got = batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5, 7, 8, 9]);
        assert_eq!(d.take_dropped(), vec![6], "the refused record's ordinal");
        assert!(d.take_dropped().is_empty());
        assert_eq!(bad.count(), 0);
        d.report_late(&mut bad);
        assert_eq!(bad.count(), 1);
    }

    #[test]
    fn dropped_ordinals_count_from_each_flush_across_buffer_decodes() {
        // Capacity 4: the buffer is decoded mid-way; ordinals stay per flush.
        let s = schema(vec![field("n", DataType::Int64, false)]);
        let mut d = JsonDecoder::with_capacity(s, 4).unwrap();
        let mut bad = BadRecords::detached("test");
        for round in 0..2 {
            for n in 0..10 {
                if n == 2 || n == 7 {
                    d.push_unchecked(br#"{"n": "x"}"#);
                } else {
                    assert!(d.push(format!(r#"{{"n": {n}}}"#).as_bytes(), &mut bad));
                }
            }
            let rows = d.flush().unwrap().unwrap().num_rows();
            assert_eq!(rows, 8, "round {round}");
            assert_eq!(d.take_dropped(), vec![2, 7], "round {round}");
        }
    }

    #[test]
    fn unsupported_types_are_refused_up_front() {
        let s = schema(vec![field(
            "d",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        )]);
        let e = JsonDecoder::new(s).unwrap_err();
        assert!(e.to_string().contains("column d"), "{e}");
    }

    fn fuzz_schema() -> SchemaRef {
        let inner = Fields::from(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Float64, true),
        ]);
        schema(vec![
            field("id", DataType::Int64, false),
            field("name", DataType::Utf8, true),
            field(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            field(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
            field("inner", DataType::Struct(inner), true),
            field("flag", DataType::Boolean, true),
        ])
    }

    const VALID: &[&str] = &[
        r#"{"id": 1, "name": "a", "ts": "2024-01-01T00:00:00Z", "tags": ["x", null], "inner": {"k": "q", "v": 1.5}, "flag": true}"#,
        r#"{"id": -9, "ts": 1700000000000, "inner": null, "other": {"deep": [1, {"a": "\u0041"}]}}"#,
        r#"{"id": 3, "name": "\"esc\"\n", "tags": [], "flag": false}"#,
    ];

    /// Feeds `records` to a decoder: pushes never panic, flush never fails, and the
    /// batch holds exactly the accepted records, each of which is strict JSON.
    fn check_robust(records: &[Vec<u8>]) -> Result<(), TestCaseError> {
        let s = fuzz_schema();
        let mut d = JsonDecoder::with_capacity(s.clone(), 4).unwrap();
        let mut bad = BadRecords::detached("fuzz");
        let mut accepted = 0;
        for r in records {
            if d.push(r, &mut bad) {
                accepted += 1;
                let v: serde_json::Value = serde_json::from_slice(r)
                    .map_err(|e| TestCaseError::fail(format!("accepted non-JSON: {e}")))?;
                prop_assert!(v.is_object());
            }
        }
        prop_assert_eq!(d.buffered(), accepted);
        let batch = d.flush().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(batch.map(|b| b.num_rows()).unwrap_or(0), accepted);
        d.report_late(&mut bad);
        prop_assert_eq!(bad.count() as usize, records.len() - accepted);
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Flip(usize, u8),
        Insert(usize, u8),
        Delete(usize),
        Truncate(usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let interesting = prop::sample::select(vec![
            b'{', b'}', b'[', b']', b'"', b'\\', b':', b',', b'0', b'-', b'e', b'.', b'n', b' ',
            0xff, 0xc3, 0x00,
        ]);
        prop_oneof![
            (any::<usize>(), interesting.clone()).prop_map(|(i, b)| Edit::Flip(i, b)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
            (any::<usize>(), interesting).prop_map(|(i, b)| Edit::Insert(i, b)),
            any::<usize>().prop_map(Edit::Delete),
            any::<usize>().prop_map(Edit::Truncate),
        ]
    }

    fn apply(mut r: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for e in edits {
            let n = r.len().max(1);
            match *e {
                Edit::Flip(i, b) if !r.is_empty() => r[i % n] = b,
                Edit::Insert(i, b) => r.insert(i % (r.len() + 1), b),
                Edit::Delete(i) if !r.is_empty() => {
                    r.remove(i % n);
                }
                Edit::Truncate(i) => r.truncate(i % (r.len() + 1)),
                _ => {}
            }
        }
        r
    }

    /// The scalar types of the differential tests, time zones and odd decimals included.
    fn flat_types() -> Vec<DataType> {
        let ts = |unit, tz: Option<&str>| DataType::Timestamp(unit, tz.map(Into::into));
        vec![
            DataType::Null,
            DataType::Boolean,
            DataType::Int8,
            DataType::Int32,
            DataType::Int64,
            DataType::UInt8,
            DataType::UInt64,
            DataType::Float32,
            DataType::Float64,
            DataType::Utf8,
            DataType::LargeUtf8,
            DataType::Utf8View,
            DataType::Binary,
            DataType::LargeBinary,
            DataType::Date32,
            DataType::Date64,
            DataType::Time32(TimeUnit::Second),
            DataType::Time64(TimeUnit::Nanosecond),
            DataType::Duration(TimeUnit::Millisecond),
            ts(TimeUnit::Second, None),
            ts(TimeUnit::Millisecond, None),
            ts(TimeUnit::Microsecond, Some("UTC")),
            ts(TimeUnit::Nanosecond, Some("+05:30")),
            ts(TimeUnit::Millisecond, Some("America/New_York")),
            DataType::Decimal32(5, 1),
            DataType::Decimal64(12, 3),
            DataType::Decimal128(10, 2),
            DataType::Decimal256(40, -2),
        ]
    }

    fn flat_type() -> impl Strategy<Value = DataType> {
        prop::sample::select(flat_types())
    }

    /// Up to 5 scalar columns `c0`, `c1`, …; with `dup`, `c1` is called `c0` (which
    /// keeps such schemas off the flat path).
    fn flat_schema() -> impl Strategy<Value = SchemaRef> {
        (
            prop::collection::vec((flat_type(), any::<bool>()), 0..6),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(cols, dup)| {
                let fields = cols
                    .into_iter()
                    .enumerate()
                    .map(|(i, (dt, nullable))| {
                        let i = if dup && i == 1 { 0 } else { i };
                        field(&format!("c{i}"), dt, nullable)
                    })
                    .collect();
                schema(fields)
            })
    }

    /// JSON values aimed at the edges of the value rules.
    const DIFF_VALUES: &[&str] = &[
        "null",
        "0",
        "-0",
        "-1",
        "1e3",
        "2.0",
        "1.5",
        "-0.0",
        "127",
        "128",
        "-129",
        "255",
        "256",
        "1E2",
        "1e-400",
        "1e400",
        "0.1",
        "123456.789",
        "99999.99",
        "1.23e5",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "1700000000123",
        "-1000",
        "1.5e12",
        // Just above the midpoint of two f32: rounding twice (through f64) goes down.
        "1.000000059604644775390625001",
        "true",
        "false",
        "\"\"",
        "\"42\"",
        "\"-7\"",
        "\"1.5\"",
        "\"1e2\"",
        "\"NaN\"",
        "\"inf\"",
        "\"-inf\"",
        "\"abc\"",
        "\"00ff\"",
        "\"aBc\"",
        "\"0\"",
        "\"\\u0030\\u0031\"",
        "\"a\\\"b\\\\c\\u00e9\\ud83d\\ude00\"",
        "\"2024-02-29\"",
        "\"2024-02-30\"",
        "\"2015-07-15T00:00:01.234Z\"",
        "\"2023-11-15T03:43:20.123456789+05:30\"",
        "\"2023-11-14 22:13:20\"",
        "\"2023-11-14T22:13:20\"",
        "\"1700000000123\"",
        "\"12:34:56\"",
        "\"12:34:56.789\"",
        "\"99999999999999999999999999999\"",
        "[1]",
        "{\"a\": 1}",
        "[]",
        "{}",
    ];

    fn diff_value() -> impl Strategy<Value = String> {
        let text =
            prop::collection::vec(prop::sample::select(b"azAZ09 .:+-TZe\\\"".to_vec()), 0..12)
                .prop_map(|b| {
                    let s: String = b.into_iter().map(char::from).collect();
                    serde_json::to_string(&s).unwrap()
                });
        prop_oneof![
            6 => prop::sample::select(DIFF_VALUES).prop_map(String::from),
            1 => any::<i64>().prop_map(|v| v.to_string()),
            1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|v| format!("{v:e}")),
            1 => any::<f32>().prop_filter("finite", |f| f.is_finite()).prop_map(|v| v.to_string()),
            1 => any::<i64>().prop_map(|v| format!("\"{v}\"")),
            1 => text,
        ]
    }

    /// A value of the kind column type `dt` takes (in range or not).
    fn fitting_value(dt: &DataType) -> BoxedStrategy<String> {
        let int = any::<i64>().prop_map(|v| v.to_string()).boxed();
        let quoted = |st: BoxedStrategy<String>| st.prop_map(|v| format!("\"{v}\"")).boxed();
        let hex = prop::collection::vec(
            prop::sample::select(b"0123456789abcdefABCDEF".to_vec()),
            0..9,
        )
        .prop_map(|b| format!("\"{}\"", String::from_utf8(b).unwrap()))
        .boxed();
        let date = (1900..2100i32, 1..13u32, 1..32u32)
            .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}"))
            .boxed();
        let time = (
            0..25u32,
            0..60u32,
            0..61u32,
            prop::option::of(0..1_000_000_000u32),
        )
            .prop_map(|(h, m, s, f)| match f {
                Some(f) => format!("{h:02}:{m:02}:{s:02}.{f}"),
                None => format!("{h:02}:{m:02}:{s:02}"),
            })
            .boxed();
        let offset = prop::sample::select(vec!["Z", "+05:30", "-08:00", "", "+00:00"]);
        let stamp = (date.clone(), time.clone(), offset)
            .prop_map(|(d, t, o)| format!("\"{d}T{t}{o}\""))
            .boxed();
        let small = (-100_000i64..100_000, 0..4u32)
            .prop_map(|(v, e)| {
                let v = v as f64 / 10f64.powi(e as i32);
                v.to_string()
            })
            .boxed();
        match dt {
            DataType::Null => Just("null".to_string()).boxed(),
            DataType::Boolean => any::<bool>().prop_map(|b| b.to_string()).boxed(),
            DataType::Int8 | DataType::UInt8 => prop_oneof![
                (-300..300i32).prop_map(|v| v.to_string()),
                quoted((-300..300i32).prop_map(|v| v.to_string()).boxed())
            ]
            .boxed(),
            DataType::Int32 | DataType::Int64 | DataType::UInt64 | DataType::Duration(_) => {
                prop_oneof![int.clone(), quoted(int), small.clone()].boxed()
            }
            DataType::Float32 | DataType::Float64 => prop_oneof![
                any::<f64>().prop_map(|v| format!("{v:e}")),
                any::<f32>().prop_map(|v| v.to_string()),
                small.clone(),
                quoted(small),
            ]
            .boxed(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => diff_value().boxed(),
            DataType::Binary | DataType::LargeBinary => hex,
            DataType::Date32 | DataType::Date64 => prop_oneof![
                quoted(date),
                (-100_000..100_000i64).prop_map(|v| v.to_string())
            ]
            .boxed(),
            DataType::Time32(_) | DataType::Time64(_) => {
                prop_oneof![quoted(time), (0..100_000i64).prop_map(|v| v.to_string())].boxed()
            }
            DataType::Timestamp(_, _) => prop_oneof![
                stamp,
                any::<i64>().prop_map(|v| (v >> 20).to_string()),
                small.clone(),
                quoted(small),
            ]
            .boxed(),
            _ => prop_oneof![small.clone(), quoted(small), int].boxed(),
        }
    }

    /// A record for `s`: its columns (most of them) with fitting values or odd ones, in
    /// order or not, a key repeated or unknown now and then, sometimes mutated.
    fn diff_record(s: &SchemaRef) -> BoxedStrategy<Vec<u8>> {
        let columns: Vec<BoxedStrategy<Option<(String, String)>>> = s
            .fields()
            .iter()
            .map(|f| {
                let name = f.name().clone();
                let value = prop_oneof![
                    6 => fitting_value(f.data_type()),
                    1 => diff_value(),
                ];
                prop::option::weighted(0.85, value.prop_map(move |v| (name.clone(), v))).boxed()
            })
            .collect();
        let key = prop::sample::select(vec!["c0", "c1", "c2", "zz", "C0", "c\\u0030"]);
        (
            columns,
            prop::collection::vec((key, diff_value()), 0..2),
            any::<prop::sample::Index>(),
            any::<bool>(),
            prop::collection::vec(edit(), 1..3),
            prop::bool::weighted(0.15),
        )
            .prop_map(|(columns, extra, at, reverse, edits, mutate)| {
                let mut entries: Vec<(String, String)> = columns.into_iter().flatten().collect();
                if reverse {
                    entries.reverse();
                }
                for (k, v) in extra {
                    let i = at.index(entries.len() + 1);
                    entries.insert(i, (k.to_string(), v));
                }
                let body: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("\"{k}\": {v}"))
                    .collect();
                let r = format!("{{{}}}", body.join(", ")).into_bytes();
                if mutate { apply(r, &edits) } else { r }
            })
            .boxed()
    }

    proptest! {
        /// The word-at-a-time search agrees with a byte-at-a-time one.
        #[test]
        fn string_stop_finds_the_first_quote_backslash_or_control(
            b in prop::collection::vec(prop_oneof![
                4 => 0x20u8..=0xff,
                1 => prop::sample::select(vec![b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xa2, 0xdc]),
            ], 0..40),
        ) {
            let naive = b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).unwrap_or(b.len());
            prop_assert_eq!(string_stop(&b), naive);
        }
    }

    /// Every value of [`DIFF_VALUES`] in a column of every type of [`flat_types`]: the
    /// same answers, batches and refusals on both paths.
    #[test]
    fn flat_path_equals_the_arrow_json_path_on_chosen_values() {
        let records: Vec<Vec<u8>> = DIFF_VALUES
            .iter()
            .map(|v| format!(r#"{{"c0": {v}}}"#).into_bytes())
            .collect();
        for dt in flat_types() {
            for nullable in [true, false] {
                let s = schema(vec![field("c0", dt.clone(), nullable)]);
                let new = run_path(&s, &records, 7, true);
                let old = run_path(&s, &records, 7, false);
                assert!(new.0 && !old.0);
                assert_eq!(new.1, old.1, "{dt}: accepted");
                assert_eq!(new.2, old.2, "{dt}: batches");
                assert_eq!(new.4, old.4, "{dt}: reasons");
            }
        }
    }

    /// Runs `records` through a decoder in two flushes: whether it was on the flat
    /// path, what `push` answered, the batches, the dropped ordinals, the refusal
    /// reasons and the number of bad records.
    #[allow(clippy::type_complexity)]
    fn run_path(
        s: &SchemaRef,
        records: &[Vec<u8>],
        capacity: usize,
        flat: bool,
    ) -> (
        bool,
        Vec<bool>,
        Vec<Option<RecordBatch>>,
        Vec<usize>,
        Vec<String>,
        u64,
    ) {
        let rec = Reasons::default();
        let mut bad = BadRecords::detached("diff");
        let (on_flat, accepted, batches, dropped) = metrics::with_local_recorder(&rec, || {
            let mut d = if flat {
                JsonDecoder::with_capacity(s.clone(), capacity)
            } else {
                JsonDecoder::with_capacity_through_arrow_json(s.clone(), capacity)
            }
            .unwrap();
            let mut accepted = Vec::new();
            let mut batches = Vec::new();
            let mut dropped = Vec::new();
            for half in records.chunks(records.len().div_ceil(2).max(1)) {
                accepted.extend(half.iter().map(|r| d.push(r, &mut bad)));
                batches.push(d.flush().unwrap());
                dropped.extend(d.take_dropped());
            }
            d.report_late(&mut bad);
            (matches!(d.rows, Rows::Flat(_)), accepted, batches, dropped)
        });
        (on_flat, accepted, batches, dropped, rec.take(), bad.count())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_break_the_decoder(records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..8)) {
            check_robust(&records)?;
        }

        #[test]
        fn mutated_records_never_break_the_decoder(
            picks in prop::collection::vec((0..VALID.len(), prop::collection::vec(edit(), 0..4)), 1..10)
        ) {
            let records: Vec<Vec<u8>> = picks
                .iter()
                .map(|(i, edits)| apply(VALID[*i].as_bytes().to_vec(), edits))
                .collect();
            check_robust(&records)?;
        }

        /// The flat path and the arrow-json path agree on every record of every flat
        /// schema: the same answers, batches, refusal reasons and refusal details.
        #[test]
        fn flat_path_equals_the_arrow_json_path(
            (s, records) in flat_schema().prop_flat_map(|s| {
                let records = prop::collection::vec(diff_record(&s), 1..12);
                (Just(s), records)
            }),
            capacity in 1..6usize,
        ) {
            let root = compile_struct(s.fields()).unwrap();
            let run = |flat| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_path(&s, &records, capacity, flat)
                }))
            };
            let (new, old) = match (run(true), run(false)) {
                (Ok(new), Ok(old)) => (new, old),
                // arrow-cast's `parse_decimal` overflows (a panic with debug assertions)
                // on exponents near 32767, on either path alike.
                (Err(_), Err(_)) => return Ok(()),
                (new, _) => {
                    return Err(TestCaseError::fail(format!(
                        "only the {} path panicked",
                        if new.is_err() { "flat" } else { "arrow-json" }
                    )));
                }
            };
            let flat = root.unique && !s.fields().is_empty();
            prop_assert_eq!(new.0, flat, "the flat path is taken when it can be");
            prop_assert!(!old.0);
            prop_assert_eq!(&new.1, &old.1, "accepted");
            prop_assert_eq!(&new.2, &old.2, "batches");
            prop_assert_eq!(&new.3, &old.3, "dropped");
            prop_assert_eq!(&new.4, &old.4, "reasons");
            prop_assert_eq!(new.5, old.5, "bad records");
            let mut slots = vec![Slot::Null; s.fields().len()];
            for r in &records {
                let old = scan(r, &root).map_err(|e| (e.reason, e.detail()));
                let new = utf8(r)
                    .and_then(|t| scan_text(t, &root, Some(&mut slots)))
                    .map_err(|e| (e.reason, e.detail()));
                prop_assert_eq!(new, old, "refusal of {}", String::from_utf8_lossy(r));
            }
        }
    }
}
