//! The value rules shared by the scanner and the decoders: what a scalar JSON value may
//! be for each column type and what it converts to (integers, floats, dates, times,
//! durations, timestamps), and the slots the converted values travel in.

use arrow::array::ArrowPrimitiveType;
use arrow::array::timezone::Tz;
use arrow::compute::kernels::cast_utils::{Parser, string_to_datetime};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, DurationMicrosecondType, DurationMillisecondType,
    DurationNanosecondType, DurationSecondType, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, Time32MillisecondType, Time32SecondType, Time64MicrosecondType,
    Time64NanosecondType, TimeUnit, UInt8Type, UInt16Type, UInt32Type, UInt64Type, i256,
};
use arrow::error::ArrowError;
use chrono::{DateTime, TimeZone, Utc};

/// One JSON value as seen by a scalar column.
#[derive(Debug, Clone, Copy)]
pub(super) enum Leaf<'a> {
    Str(&'a str),
    /// The text of a JSON number.
    Num(&'a str),
    Bool(bool),
    Object,
    Array,
}

impl Leaf<'_> {
    pub(super) fn describe(&self) -> String {
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
pub(super) struct LeafCtx {
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
/// the flat path keeps until its record is accepted (see
/// [`FlatRows`](super::decode::FlatRows)).
///
/// Each column kind fills one variant only (see [`SlotNative`],
/// [`Scanner::leaf`](super::scanner::Scanner::leaf)), so a column reading back a slot of
/// another kind is a bug, not bad input. Slots are moved for every value: wide values
/// are split or boxed to keep them at 24 bytes.
#[derive(Debug, Clone, Default)]
pub(super) enum Slot {
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
pub(super) trait SlotNative: Sized {
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
pub(super) type CheckFn = fn(Leaf<'_>, &LeafCtx, &mut Slot) -> Result<(), String>;

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
pub(super) fn timestamp_text(s: &str, unit: TimeUnit, tz: Option<&Tz>) -> Result<i64, String> {
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
pub(super) fn leaf_check(dt: &DataType) -> Result<Option<(LeafCtx, CheckFn)>, ArrowError> {
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
