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
    /// The text of a JSON number, and its value when it is an integer of at most 18
    /// digits (found while scanning it; any such value fits an i64).
    Num(&'a str, Option<i64>),
    Bool(bool),
    Object,
    Array,
}

impl Leaf<'_> {
    pub(super) fn describe(&self) -> String {
        match self {
            Leaf::Str(s) => format!("\"{}\"", clip(s)),
            Leaf::Num(s, _) => clip(s).to_string(),
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
    /// For timestamp columns: the date and hour last read.
    last_hour: LastHour,
}

/// The date and hour (`YYYY-MM-DDTHH`) of the timestamp [`rfc3339_fast`] read last, as
/// the first 13 bytes of a little-endian word, and its seconds since the epoch: a
/// stream's timestamps mostly share it, and then their date is not read again.
#[derive(Debug, Clone, Default)]
pub(super) struct LastHour(std::cell::Cell<Option<(u128, i64)>>);

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
/// the scanned path appends to the value's column
/// ([`Column::append`](super::columns::Column::append)).
///
/// Each column kind fills one variant only (see [`SlotNative`],
/// [`Scanner::leaf`](super::scanner::Scanner::leaf)), so a column reading back a slot of
/// another kind is a bug, not bad input. Slots are moved for every value and never
/// dropped: wide values are split, or kept in the record's [`Spill`], to keep them
/// `Copy` and at 24 bytes.
#[derive(Debug, Clone, Copy, Default)]
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
    /// A 256-bit decimal: where it is in the record's [`Spill::wide`].
    I256(usize),
    F32(f32),
    F64(f64),
    /// The record's text in this byte range: a string's contents (one without escapes),
    /// or a number or boolean written as text.
    Span(usize, usize),
    /// A string's contents with its escapes resolved: this byte range of the record's
    /// [`Spill::text`].
    Unescaped(usize, usize),
}

const _: () = assert!(std::mem::size_of::<Slot>() <= 24);

/// The values of a record's [`Slot`]s that a slot does not hold itself: strings whose
/// escapes were resolved, and 256-bit decimals. Lent to the scanner and cleared before
/// each record, so that a slot is never dropped (a slot holding a box made every slot
/// written or reset run the drop glue).
#[derive(Debug, Default)]
pub(super) struct Spill {
    pub(super) text: String,
    pub(super) wide: Vec<i256>,
}

impl Spill {
    pub(super) fn clear(&mut self) {
        self.text.clear();
        self.wide.clear();
    }

    /// The slot of `text`, copied here.
    pub(super) fn keep_text(&mut self, text: &str) -> Slot {
        let from = self.text.len();
        self.text.push_str(text);
        Slot::Unescaped(from, self.text.len())
    }

    /// The slot of the 256-bit decimal `v`, kept here.
    pub(super) fn keep_wide(&mut self, v: i256) -> Slot {
        self.wide.push(v);
        Slot::I256(self.wide.len() - 1)
    }
}

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
    /// From a number whose text `s` is the integer `v`: the same as
    /// [`NativeLeaf::from_number`], without reading the text again where it can.
    fn from_integer(s: &str, _v: i64) -> Option<Self::Native> {
        Self::from_number(s)
    }
}

macro_rules! integral_leaf {
    ($($t:ty),+) => {$(
        impl NativeLeaf for $t {
            fn from_number(s: &str) -> Option<Self::Native> {
                int_text(s).and_then(|v| <Self as ArrowPrimitiveType>::Native::try_from(v).ok())
            }

            fn from_integer(_: &str, v: i64) -> Option<Self::Native> {
                <$t as ArrowPrimitiveType>::Native::try_from(v).ok()
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
        Leaf::Num(s, Some(v)) => T::from_integer(s, v),
        Leaf::Num(s, None) => T::from_number(s),
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
        return Some(epoch_ms_int(ms, unit));
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

fn epoch_out_of_range(s: &str) -> String {
    format!("{} milliseconds since the epoch is out of range", clip(s))
}

/// Integer epoch milliseconds to `unit` (`Err` if out of range).
pub(super) fn epoch_ms_int(ms: i64, unit: TimeUnit) -> Result<i64, ()> {
    match unit {
        TimeUnit::Second => Some(ms.div_euclid(1000)),
        TimeUnit::Millisecond => Some(ms),
        TimeUnit::Microsecond => ms.checked_mul(1000),
        TimeUnit::Nanosecond => ms.checked_mul(1_000_000),
    }
    .ok_or(())
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
/// `last` remembers the last date and hour read, for the next call.
pub(super) fn timestamp_text(
    s: &str,
    unit: TimeUnit,
    tz: Option<&Tz>,
    last: &LastHour,
) -> Result<i64, String> {
    let b = s.as_bytes();
    if let Some(v) = rfc3339_fast(b, unit, tz.is_none(), last) {
        return v.ok_or_else(|| format!("\"{}\" is out of range", clip(s)));
    }
    // `YYYY-MM-DD…` is no number: straight to the timestamp parsers.
    if !dated(b)
        && let Some(v) = epoch_ms_to(s, unit)
    {
        return v.map_err(|_| epoch_out_of_range(s));
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

/// Whether `b` starts as a date does (`YYYY-MM-DD`, the separators only).
fn dated(b: &[u8]) -> bool {
    b.len() >= 10 && b[4] == b'-' && b[7] == b'-'
}

/// The value [`check_timestamp`] gives the string `b` in a timestamp column of `unit`
/// with context `ctx`, when `b` has the common RFC 3339 shape ([`rfc3339_fast`]) and
/// the value is in range; `None` otherwise (then the check decides, and words any
/// refusal).
pub(super) fn timestamp_fast(ctx: &LeafCtx, unit: TimeUnit, b: &[u8]) -> Option<i64> {
    rfc3339_fast(b, unit, ctx.tz.is_none(), &ctx.last_hour).flatten()
}

/// The common shape of RFC 3339 timestamps, `YYYY-MM-DDTHH:MM:SS[.f](Z|±HH:MM)` (`T`,
/// `t` or a space between date and time; 1 to 9 digits of fraction; no offset only if
/// `utc`, the column having no time zone), converted without chrono: `None` for any
/// other text (then [`string_to_datetime`] decides), else the value in `unit`
/// (`Some(None)` if out of range). Gives the values `string_to_datetime` gives: it
/// accepts a subset of what that accepts (a property test compares them). A date and
/// hour the same as `last`'s are not read again.
fn rfc3339_fast(b: &[u8], unit: TimeUnit, utc: bool, last: &LastHour) -> Option<Option<i64>> {
    /// The first 13 bytes of a word: `YYYY-MM-DDTHH`.
    const HOUR: u128 = (1 << 104) - 1;
    if b.len() < 20
        || !dated(b)
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let key = u128::from_le_bytes(*b.first_chunk::<16>()?) & HOUR;
    let hour_secs = match last.0.get() {
        Some((k, secs)) if k == key => secs,
        _ => {
            let secs = date_hour(b)?;
            last.0.set(Some((key, secs)));
            secs
        }
    };
    let (minute, second) = (two(b, 14)?, two(b, 17)?);
    // A leap second (60) is left to chrono.
    if minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u64;
    if b[i] == b'.' {
        // The eight bytes after the dot in a word, read at once: the last eight of the
        // string, shifted, when it is shorter than 28 bytes (none past the dot when
        // the dot ends it); a ninth digit after them, and never a tenth.
        let word = match b.get(20..28) {
            Some(w) => u64::from_le_bytes(w.try_into().ok()?),
            None => u64::from_le_bytes(b[b.len() - 8..].try_into().ok()?)
                .checked_shr(8 * (28 - b.len()) as u32)
                .unwrap_or(0),
        };
        let (mut digits, mut v) = leading_digits(word);
        if digits == 8
            && let Some(&c @ b'0'..=b'9') = b.get(28)
        {
            (digits, v) = (9, v * 10 + u64::from(c - b'0'));
        }
        if digits == 0 || b.get(20 + digits).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        // Nanoseconds per unit of the last digit read: 10^(9 - digits).
        nanos = v * POW10_INT[9 - digits];
        i += 1 + digits;
    }
    let offset: i64 = match &b[i..] {
        [] if utc => 0,
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let secs = (two(b, i + 1)? * 3600 + two(b, i + 4)? * 60) as i64;
            if secs >= 86_400 {
                return None;
            }
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let secs = hour_secs + (minute * 60 + second) as i64 - offset;
    let nanos = nanos as i64;
    Some(match unit {
        TimeUnit::Second => Some(secs),
        TimeUnit::Millisecond => Some(secs * 1000 + nanos / 1_000_000),
        TimeUnit::Microsecond => Some(secs * 1_000_000 + nanos / 1000),
        TimeUnit::Nanosecond => i64::try_from(secs as i128 * 1_000_000_000 + nanos as i128).ok(),
    })
}

/// Powers of ten up to 10^8: the scanner's digits read by words
/// ([`Scanner::digits_into`](super::scanner::Scanner::digits_into)), a timestamp's fraction.
pub(super) const POW10_INT: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// How many of the 8 bytes of `w` (little-endian: the first byte lowest) are ASCII
/// digits before the first other byte, and the value of those digits.
#[inline(always)]
pub(super) fn leading_digits(w: u64) -> (usize, u64) {
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let d = w.wrapping_sub(u64::from_ne_bytes([b'0'; 8]));
    // The high bit of a byte that is not a digit: below '0' it borrows (and wraps to
    // 0x80 or more), above '9' adding 0x76 carries it to 0x80 or more. A borrow or a
    // carry reaches only later bytes, so the first such byte is exact.
    let other = (d | d.wrapping_add(u64::from_ne_bytes([0x76; 8]))) & HIGHS;
    let n = (other.trailing_zeros() / 8) as usize;
    if n == 0 {
        return (0, 0);
    }
    // The n digits to the top bytes (zeros below read as leading zeros), then pairs,
    // quads and the eight combined: the first digit is the most significant.
    let mut v = d << (8 * (8 - n));
    v = (v.wrapping_mul(10) + (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    v = (v.wrapping_mul(100) + (v >> 16)) & 0x0000_ffff_0000_ffff;
    v = (v.wrapping_mul(10_000) + (v >> 32)) & 0x0000_0000_ffff_ffff;
    (n, v)
}

/// Two decimal digits at `b[i..i + 2]`.
#[inline(always)]
fn two(b: &[u8], i: usize) -> Option<u32> {
    let (h, l) = (b[i].wrapping_sub(b'0'), b[i + 1].wrapping_sub(b'0'));
    (h < 10 && l < 10).then_some(h as u32 * 10 + l as u32)
}

/// The seconds since the epoch of `YYYY-MM-DDTHH` at the start of `b` (at least 13
/// bytes, the separators checked by [`rfc3339_fast`]), `None` if it is no valid date
/// and hour.
fn date_hour(b: &[u8]) -> Option<i64> {
    let year = two(b, 0)? as i64 * 100 + two(b, 2)? as i64;
    let (month, day, hour) = (two(b, 5)?, two(b, 8)?, two(b, 11)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days_in_month || hour > 23 {
        return None;
    }
    // Days since the epoch of a proleptic Gregorian date (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month as i64 + 9) % 12) + 2) / 5 + day as i64 - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(days * 86_400 + hour as i64 * 3600)
}

fn check_timestamp(leaf: Leaf<'_>, ctx: &LeafCtx, out: &mut Slot) -> Result<(), String> {
    let DataType::Timestamp(unit, _) = ctx.data_type else {
        return Err(expected(ctx, leaf));
    };
    match leaf {
        Leaf::Num(s, Some(ms)) => {
            let v = epoch_ms_int(ms, unit).map_err(|_| epoch_out_of_range(s))?;
            *out = v.into_slot();
            Ok(())
        }
        Leaf::Str(s) | Leaf::Num(s, None) => {
            *out = timestamp_text(s, unit, ctx.tz.as_ref(), &ctx.last_hour)?.into_slot();
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
        last_hour: LastHour::default(),
    };
    Ok(Some((ctx, check)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The slow path of [`timestamp_text`]: chrono through arrow's parser.
    fn slow(s: &str, unit: TimeUnit, tz: Option<&Tz>) -> Result<i64, String> {
        let parsed = match tz {
            Some(tz) => string_to_datetime(tz, s).map(|d| datetime_to(d, unit)),
            None => string_to_datetime(&Utc, s).map(|d| datetime_to(d, unit)),
        };
        match parsed {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err("out of range".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn stamp() -> impl Strategy<Value = String> {
        let sep = prop::sample::select(vec!["T", "t", " ", "x"]);
        let frac = prop::option::of(prop::collection::vec(0..10u8, 0..12));
        let offset = prop::sample::select(vec![
            "Z", "z", "", "+00:00", "-00:00", "+05:30", "-08:00", "+23:59", "+24:00", "+0530",
            " +05:30", "+05", "-99:99", "Zx", "+05:3a",
        ]);
        (
            0..10_000u32,
            0..14u32,
            0..33u32,
            sep,
            0..26u32,
            0..62u32,
            0..62u32,
            frac,
            offset,
        )
            .prop_map(|(y, mo, d, sep, h, mi, s, frac, off)| {
                let frac = match frac {
                    None => String::new(),
                    Some(f) => {
                        let digits: String = f.iter().map(|d| char::from(b'0' + d)).collect();
                        format!(".{digits}")
                    }
                };
                format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{off}")
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the fast parser accepts, it reads as chrono does through arrow,
        /// whatever date and hour it read before: each stamp is read after the one
        /// before it, and again with the date and hour of the one before.
        #[test]
        fn the_fast_timestamp_parser_agrees_with_arrow(
            stamps in prop::collection::vec(stamp(), 1..6),
            zoned: bool,
        ) {
            let tz: Option<Tz> = zoned.then(|| "+02:00".parse().unwrap());
            let mut read = Vec::new();
            for (i, s) in stamps.iter().enumerate() {
                read.push(s.clone());
                if let Some(before) = i.checked_sub(1).map(|b| &stamps[b])
                    && before.len() >= 13 && s.len() >= 13 && s.is_char_boundary(13) && before.is_char_boundary(13)
                {
                    read.push(format!("{}{}", &before[..13], &s[13..]));
                }
            }
            for unit in [TimeUnit::Second, TimeUnit::Millisecond, TimeUnit::Microsecond, TimeUnit::Nanosecond] {
                let last = LastHour::default();
                for s in &read {
                    if let Some(fast) = rfc3339_fast(s.as_bytes(), unit, tz.is_none(), &last) {
                        let slow = slow(s, unit, tz.as_ref());
                        match fast {
                            Some(v) => prop_assert_eq!(Ok(v), slow, "{} {:?}", s, unit),
                            None => prop_assert!(slow.is_err(), "{} {:?}", s, unit),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_fast_timestamp_parser_takes_the_usual_shapes() {
        let ms = TimeUnit::Millisecond;
        for s in [
            "2015-07-15T00:00:00.123Z",
            "2015-07-15T00:00:00.123+00:00",
            "2024-02-29 23:59:59-08:00",
            "2024-02-29T23:59:59.123456789",
            "2024-02-29T23:59:59.1Z",
            "2024-02-29T23:59:59.12345678Z",
            "2024-02-29T23:59:59.123456789+05:30",
            "2024-02-29T23:59:59.120-08:00",
        ] {
            let fast = rfc3339_fast(s.as_bytes(), ms, true, &LastHour::default())
                .unwrap()
                .unwrap();
            assert_eq!(Ok(fast), slow(s, ms, None), "{s}");
        }
        for s in [
            "2015-07-15T00:00:60Z",
            "2023-02-29T00:00:00Z",
            "2015-07-15",
            "2015-07-15T00:00:00.Z",
            "2015-07-15T00:00:00.",
            "2015-07-15T00:00:00.1234567890Z",
        ] {
            assert!(
                rfc3339_fast(s.as_bytes(), ms, true, &LastHour::default()).is_none(),
                "{s}"
            );
        }
    }
}
