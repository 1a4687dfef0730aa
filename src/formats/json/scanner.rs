//! The schema-aware record scanner: one pass over a record's bytes that decides whether
//! it is strict JSON and whether its values fit the schema, converting each scalar value
//! (by the rules of [`super::rules`]) as it checks it.
//!
//! A field is taken one of two ways. The short way ([`Scanner::quick`]) takes a field
//! written as producers mostly write it: its key and colon in place, then a plain
//! string, timestamp or number its column takes as written. Anything else goes the
//! general way ([`Scanner::object`]'s loop), which decides every refusal; the short way
//! never refuses, it only steps aside (ADR 0018).
//!
//! Given columns, the scanner writes each value into its column as it accepts it (a
//! key written twice keeps its last value, the first one cut off); the caller cuts the
//! columns back if the record is refused ([`super::columns`]).

use std::cell::RefCell;
use std::collections::HashMap;

use arrow::compute::kernels::cast_utils::parse_decimal;
use arrow::datatypes::{
    DataType, Decimal32Type, Decimal64Type, Decimal128Type, Decimal256Type, DecimalType, TimeUnit,
};

use super::columns::{Column, ListColumn};
use super::rules::{
    CheckFn, Leaf, LeafCtx, POW10_INT, Slot, SlotNative, Spill, epoch_ms_int, leading_digits,
    leaf_check, timestamp_fast,
};
use crate::dlq::BadRecordReason;

/// Deepest nesting of arrays and objects a record may have.
pub const MAX_DEPTH: usize = 64;

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
    Decimal(fn(&str, u8, i8, &mut Slot, &mut Spill) -> bool, u8, i8),
    /// A column of [`super::rules::leaf_check`]'s types, and which values it takes as
    /// the scanner read them, without its check.
    Leaf(LeafCtx, CheckFn, Fast),
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

/// The values a column takes as the scanner read them (a [`Number`], or a string's
/// text), without calling its check: the same value the check gives, for the most
/// common values. Others go to the check, which converts or refuses them.
#[derive(Clone, Copy)]
enum Fast {
    None,
    /// A signed integer column of this range: an integer of at most 18 digits in it.
    Int(i64, i64),
    /// An unsigned integer column up to this: a non-negative integer of at most 18
    /// digits up to it.
    UInt(u64),
    /// `Float64`: a number without exponent of at most 15 digits (see
    /// [`Number::float`]).
    Float64,
    /// A timestamp column of this unit: a string in the common RFC 3339 shape (see
    /// [`timestamp_fast`]), or an integer of at most 18 digits (milliseconds since the
    /// epoch).
    Timestamp(TimeUnit),
}

impl Fast {
    fn of(dt: &DataType) -> Self {
        let int = |min: i64, max: i64| Fast::Int(min, max);
        match dt {
            DataType::Int8 => int(i8::MIN.into(), i8::MAX.into()),
            DataType::Int16 => int(i16::MIN.into(), i16::MAX.into()),
            DataType::Int32 => int(i32::MIN.into(), i32::MAX.into()),
            DataType::Int64 => int(i64::MIN, i64::MAX),
            DataType::UInt8 => Fast::UInt(u8::MAX.into()),
            DataType::UInt16 => Fast::UInt(u16::MAX.into()),
            DataType::UInt32 => Fast::UInt(u32::MAX.into()),
            DataType::UInt64 => Fast::UInt(u64::MAX),
            DataType::Float64 => Fast::Float64,
            DataType::Timestamp(unit, _) => Fast::Timestamp(*unit),
            _ => Fast::None,
        }
    }

    /// The slot of `n` in such a column, if it takes `n` as read.
    #[inline(always)]
    fn take(self, n: &Number) -> Option<Slot> {
        match self {
            Fast::None => None,
            // Milliseconds since the epoch, as the column's check reads an integer.
            Fast::Timestamp(unit) => n
                .int()
                .and_then(|ms| epoch_ms_int(ms, unit).ok())
                .map(Slot::Int),
            Fast::Int(min, max) => n.int().filter(|v| (min..=max).contains(v)).map(Slot::Int),
            Fast::UInt(max) => n
                .int()
                .and_then(|v| u64::try_from(v).ok())
                .filter(|v| *v <= max)
                .map(Slot::UInt),
            Fast::Float64 => n.float().map(Slot::F64),
        }
    }
}

/// A JSON number as the scanner read it (its text is where the scan began and ended).
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Number {
    negative: bool,
    /// The value of its digits, before and after the point, without the sign (wrapped
    /// past 19 digits, and then not used).
    mantissa: u64,
    /// How many digits it has, before and after the point.
    digits: usize,
    /// How many of them are after the point; `None` if it has an exponent.
    fraction: Option<usize>,
}

/// Exact powers of ten as `f64`, for [`Number::float`].
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

impl Number {
    /// Its value if it is an integer of at most 18 digits (any such value fits an
    /// i64).
    #[inline(always)]
    fn int(&self) -> Option<i64> {
        (self.fraction == Some(0) && self.digits <= 18).then(|| {
            let v = self.mantissa as i64;
            if self.negative { -v } else { v }
        })
    }

    /// Its value as `f64` if it has no exponent and at most 15 digits: then its digits
    /// and the power of ten it is divided by are exact doubles, and their quotient,
    /// rounded once, is the double nearest the number, which `str::parse` gives too
    /// (Clinger's fast path). The sign is applied last, so `-0` is `-0.0`.
    #[inline(always)]
    fn float(&self) -> Option<f64> {
        let fraction = self.fraction?;
        (self.digits <= 15).then(|| {
            let v = self.mantissa as f64 / POW10[fraction];
            if self.negative { -v } else { v }
        })
    }
}

impl Node {
    fn all_unique(&self) -> bool {
        match self {
            Node::List { item, .. } => item.all_unique(),
            Node::Struct(s) => s.all_unique(),
            Node::Map { key, value, .. } => key.all_unique() && value.all_unique(),
            _ => true,
        }
    }
}

/// The widest struct whose keys are matched in place against every field's name when
/// the expected one does not match; wider ones scan the key and look it up.
const KEY_SEARCH: usize = 32;

pub(super) struct StructNode {
    /// Name, nullable, node.
    fields: Vec<(String, bool, Node)>,
    /// Field lookup for wide structs; narrow ones are searched linearly.
    index: Option<HashMap<String, usize>>,
    /// Whether any field is non-nullable (so presence must be tracked).
    has_required: bool,
    /// The non-nullable fields among the first 64, a bit each.
    required: u64,
    /// Whether no two fields have the same name.
    pub(super) unique: bool,
    /// Each field's key as it is written without escapes, quotes included (`"name"`),
    /// for matching keys in place; `None` for names that need escaping.
    quoted: Vec<Option<QuotedKey>>,
    /// The same followed by the colon (`"name":`), as records are mostly written: what
    /// [`Scanner::quick`] matches.
    keyed: Vec<Option<QuotedKey>>,
}

/// A field's key as written without escapes, quotes included, and (when it is at most
/// 16 bytes) as a word and a mask, to match it with one comparison instead of a
/// `memcmp` call.
struct QuotedKey {
    bytes: Box<[u8]>,
    word: u128,
    mask: u128,
}

impl QuotedKey {
    fn new(bytes: Box<[u8]>) -> Self {
        let mut padded = [0u8; 16];
        let n = bytes.len().min(16);
        padded[..n].copy_from_slice(&bytes[..n]);
        let mask = match n {
            16 => u128::MAX,
            n => (1u128 << (8 * n)) - 1,
        };
        QuotedKey {
            bytes,
            word: u128::from_le_bytes(padded),
            mask,
        }
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether `b` starts with this key: its first 16 bytes compared as a word, and
    /// only a longer key that matches them compared further (a call).
    #[inline(always)]
    fn starts(&self, b: &[u8]) -> bool {
        match b.first_chunk::<16>() {
            Some(head) => {
                (u128::from_le_bytes(*head) ^ self.word) & self.mask == 0
                    && (self.bytes.len() <= 16 || b.starts_with(&self.bytes))
            }
            None => b.starts_with(&self.bytes),
        }
    }
}

impl StructNode {
    /// Whether no struct of this one's type, its own fields' or theirs, has two fields
    /// of the same name (what writing into columns needs: one column per name).
    pub(super) fn all_unique(&self) -> bool {
        self.unique && self.fields.iter().all(|(_, _, n)| n.all_unique())
    }

    fn find(&self, name: &str) -> Option<usize> {
        match &self.index {
            Some(map) => map.get(name).copied(),
            None => self.fields.iter().position(|(n, _, _)| n == name),
        }
    }

    /// The field whose key, written without escapes, starts `b`, with the length of
    /// that key: field `hint` first (keys usually come in the schema's order), then,
    /// in a struct of at most [`KEY_SEARCH`] fields, each other field in turn (a
    /// record that leaves out optional fields, or orders them its own way). A key
    /// matched in place is the whole JSON string: the name has no quote or backslash,
    /// so the string ends at the quote that closes it. Names are unique, so at most
    /// one field matches.
    fn key_at(&self, b: &[u8], hint: usize) -> Option<(usize, usize)> {
        Self::search(&self.quoted, self.unique, b, hint)
    }

    /// Like [`StructNode::key_at`], for the key and its colon ([`StructNode::keyed`]).
    #[inline(always)]
    fn keyed_at(&self, b: &[u8], hint: usize) -> Option<(usize, usize)> {
        Self::search(&self.keyed, self.unique, b, hint)
    }

    #[inline(always)]
    fn search(
        keys: &[Option<QuotedKey>],
        unique: bool,
        b: &[u8],
        hint: usize,
    ) -> Option<(usize, usize)> {
        if !unique {
            return None;
        }
        match keys.get(hint) {
            Some(Some(q)) if q.starts(b) => Some((hint, q.len())),
            _ => Self::search_others(keys, b, hint),
        }
    }

    /// [`StructNode::search`] past field `hint`: the fields after it, then those
    /// before. Out of line, so that the expected key's match stays where it is used.
    #[inline(never)]
    fn search_others(keys: &[Option<QuotedKey>], b: &[u8], hint: usize) -> Option<(usize, usize)> {
        if keys.len() > KEY_SEARCH {
            return None;
        }
        let (before, after) = keys.split_at(hint.min(keys.len()));
        let after = after.get(1..).unwrap_or_default();
        // Two plain loops: a chained range measured ~100 instructions a search.
        let find = |keys: &[Option<QuotedKey>], first: usize| {
            for (f, key) in keys.iter().enumerate() {
                if let Some(q) = key
                    && q.starts(b)
                {
                    return Some((first + f, q.len()));
                }
            }
            None
        };
        find(after, hint + 1).or_else(|| find(before, 0))
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
fn decimal_value<T>(s: &str, precision: u8, scale: i8, out: &mut Slot, _: &mut Spill) -> bool
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

/// [`decimal_value`] for 256-bit decimals, which are kept in the record's `spill`.
fn decimal256_value(s: &str, precision: u8, scale: i8, out: &mut Slot, spill: &mut Spill) -> bool {
    match parse_decimal::<Decimal256Type>(s, precision, scale) {
        Ok(v) => {
            *out = spill.keep_wide(v);
            true
        }
        Err(_) => false,
    }
}

pub(super) fn compile_struct(fields: &arrow::datatypes::Fields) -> Result<StructNode, String> {
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
    let required = out
        .iter()
        .take(64)
        .enumerate()
        .filter(|(_, (_, nullable, _))| !nullable)
        .fold(0u64, |bits, (f, _)| bits | 1 << f);
    let mut names: Vec<&str> = out.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort_unstable();
    let unique = names.windows(2).all(|w| w[0] != w[1]);
    let key = |suffix: &str| -> Vec<Option<QuotedKey>> {
        out.iter()
            .map(|(n, _, _)| {
                let plain = n.bytes().all(|c| c != b'"' && c != b'\\' && c >= 0x20);
                plain.then(|| QuotedKey::new(format!("\"{n}\"{suffix}").into_bytes().into()))
            })
            .collect()
    };
    let (quoted, keyed) = (key(""), key(":"));
    Ok(StructNode {
        fields: out,
        index,
        has_required,
        required,
        unique,
        quoted,
        keyed,
    })
}

fn compile(dt: &DataType) -> Result<Node, String> {
    if let Some((ctx, check)) = leaf_check(dt).map_err(|e| e.to_string())? {
        return Ok(Node::Leaf(ctx, check, Fast::of(dt)));
    }
    Ok(match dt {
        DataType::Null => Node::Null,
        DataType::Boolean => Node::Bool,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Node::Text,
        DataType::Binary | DataType::LargeBinary => Node::Binary,
        DataType::Decimal32(p, s) => Node::Decimal(decimal_value::<Decimal32Type>, *p, *s),
        DataType::Decimal64(p, s) => Node::Decimal(decimal_value::<Decimal64Type>, *p, *s),
        DataType::Decimal128(p, s) => Node::Decimal(decimal_value::<Decimal128Type>, *p, *s),
        DataType::Decimal256(p, s) => Node::Decimal(decimal256_value, *p, *s),
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
pub(super) struct Refusal {
    pub(super) reason: BadRecordReason,
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
    pub(super) fn detail(&self) -> String {
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
pub(super) type Scan<T = ()> = Result<T, Box<Refusal>>;

/// A strict JSON scanner over one record, checking values against a schema.
struct Scanner<'a> {
    /// The record's bytes: not known to be UTF-8 until scanned (each string's
    /// characters are checked as it is read; everything else must be ASCII to be
    /// JSON).
    b: &'a [u8],
    i: usize,
    /// Unescaped text of the last string that had escapes.
    scratch: String,
    /// The values of the record's slots that a slot does not hold (in a cell: values
    /// are checked while the record's text is borrowed); cleared before each record.
    spill: RefCell<Spill>,
    /// Whether `\n` ends the record (a line of JSON lines in a longer text) instead of
    /// being whitespace.
    lines: bool,
}

/// The fields of an object whose key was read and its value accepted. A bit each in a
/// word for structs of up to 64 fields (a shift of a `u128` by a variable costs a
/// dozen instructions and a branch; of a `u64`, one). A non-nullable field's null is
/// refused, so a non-nullable field seen has a value.
enum Seen {
    Bits(u64),
    Many(Vec<bool>),
}

impl Seen {
    #[inline(always)]
    fn new(node: &StructNode) -> Self {
        match node.fields.len() {
            n if n <= 64 => Seen::Bits(0),
            n => Seen::Many(vec![false; n]),
        }
    }

    #[inline(always)]
    fn set(&mut self, i: usize) {
        match self {
            Seen::Bits(b) => *b |= 1 << i,
            Seen::Many(m) => m[i] = true,
        }
    }

    #[inline(always)]
    fn get(&self, i: usize) -> bool {
        match self {
            Seen::Bits(b) => b & (1 << i) != 0,
            Seen::Many(m) => m[i],
        }
    }

    /// Whether every non-nullable field of `node` was seen: one comparison for structs
    /// of up to 64 fields.
    fn all_required(&self, node: &StructNode) -> bool {
        match self {
            Seen::Bits(b) => b & node.required == node.required,
            Seen::Many(m) => node
                .fields
                .iter()
                .zip(m)
                .all(|((_, nullable, _), seen)| *nullable || *seen),
        }
    }

    /// Appends a null to the column of each field not seen.
    #[inline(always)]
    fn fill(&self, columns: &mut [Column]) {
        match self {
            Seen::Bits(b) => {
                // At most 64 fields here.
                let all = match columns.len() {
                    64 => u64::MAX,
                    n => (1 << n) - 1,
                };
                let mut absent = !b & all;
                while absent != 0 {
                    columns[absent.trailing_zeros() as usize].append_null();
                    absent &= absent - 1;
                }
            }
            Seen::Many(m) => {
                for (column, _) in columns.iter_mut().zip(m).filter(|(_, seen)| !**seen) {
                    column.append_null();
                }
            }
        }
    }
}

/// Where the run of plain string bytes at the start of `b` ends: the index of the
/// first `"`, `\\` or control character, or `b.len()`; with `ASCII`, also of the first
/// byte that is not ASCII (the start of a character to check as UTF-8). Reads 16 bytes
/// at a time with SSE2 (every x86-64 has it; `safe_arch` wraps the intrinsics),
/// elsewhere 8 at a time in a word; the rest byte by byte.
fn string_stop<const ASCII: bool>(b: &[u8]) -> usize {
    let mut i = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use safe_arch::*;
        let quote = set_splat_i8_m128i(b'"' as i8);
        let backslash = set_splat_i8_m128i(b'\\' as i8);
        let control = set_splat_i8_m128i(0x1f);
        while let Some(chunk) = b.get(i..).and_then(|r| r.first_chunk::<16>()) {
            let v = load_unaligned_m128i(chunk);
            // A byte is a control character when min(byte, 0x1f) is the byte.
            let hits = cmp_eq_mask_i8_m128i(v, quote)
                | cmp_eq_mask_i8_m128i(v, backslash)
                | cmp_eq_mask_i8_m128i(min_u8_m128i(v, control), v);
            // A byte's top bit is set when it is not ASCII.
            let mask = move_mask_i8_m128i(hits) | if ASCII { move_mask_i8_m128i(v) } else { 0 };
            if mask != 0 {
                return i + mask.trailing_zeros() as usize;
            }
            i += 16;
        }
    }
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    /// The high bit of each byte of `w` below `n` (`n` <= 0x80), exact for the lowest
    /// such byte: a byte at or above `n` borrows nothing from the next one.
    fn below(w: u64, n: u8) -> u64 {
        w.wrapping_sub(ONES * n as u64) & !w & HIGHS
    }
    while let Some(chunk) = b.get(i..).and_then(|r| r.first_chunk::<8>()) {
        let w = u64::from_le_bytes(*chunk);
        let hits = below(w ^ (ONES * b'"' as u64), 1)
            | below(w ^ (ONES * b'\\' as u64), 1)
            | below(w, 0x20)
            | if ASCII { w & HIGHS } else { 0 };
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20 || (ASCII && c >= 0x80))
        .unwrap_or(b.len() - i)
}

/// A string just scanned: borrowed from the record, or in the scratch buffer.
enum Str {
    Borrowed(usize, usize),
    Scratch,
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Self {
        Scanner {
            b,
            i: 0,
            scratch: String::new(),
            spill: RefCell::default(),
            lines: false,
        }
    }

    /// Appends `slot`, converted from this record, to `column`.
    #[inline(always)]
    fn put(&mut self, column: &mut Column, slot: &Slot) {
        column.append(slot, self.b, self.spill.get_mut());
    }

    /// The text of `s`.
    fn text(&self, s: &Str) -> Scan<&str> {
        match *s {
            Str::Borrowed(a, b) => self.checked(a, b),
            Str::Scratch => Ok(&self.scratch),
        }
    }

    /// The record's bytes `a..b` as text: a string's contents, or a number, already
    /// scanned (so never refused; the check is what safe code needs).
    fn checked(&self, a: usize, b: usize) -> Scan<&'a str> {
        let whole: &'a [u8] = self.b;
        std::str::from_utf8(&whole[a..b]).map_err(|e| self.not_utf8(a + e.valid_up_to()))
    }

    fn not_utf8(&self, at: usize) -> Box<Refusal> {
        Box::new(Refusal {
            reason: BadRecordReason::Malformed,
            message: "not valid UTF-8".into(),
            at,
            path: vec![],
        })
    }

    /// The slot of a string kept as its text: where it is in the record, or where its
    /// unescaped copy is in the spill.
    fn text_slot(&self, s: &Str) -> Slot {
        match *s {
            Str::Borrowed(a, b) => Slot::Span(a, b),
            Str::Scratch => self.spill.borrow_mut().keep_text(&self.scratch),
        }
    }

    /// The text of `s`, surviving later scans (copied only if it had escapes).
    fn keep(&self, s: &Str) -> Scan<std::borrow::Cow<'a, str>> {
        Ok(match *s {
            Str::Borrowed(a, b) => std::borrow::Cow::Borrowed(self.checked(a, b)?),
            Str::Scratch => std::borrow::Cow::Owned(self.scratch.clone()),
        })
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
                let rest = &self.b[self.i..self.b.len().min(self.i + 4)];
                let valid = match std::str::from_utf8(rest) {
                    Ok(text) => text,
                    Err(e) => std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or_default(),
                };
                match valid.chars().next() {
                    Some(c) => self.syntax(format!("unexpected {c:?}, expected {what}")),
                    None => self.not_utf8(self.i),
                }
            }
        }
    }

    /// Skips whitespace. Records are mostly written without it, so the next byte is
    /// looked at first, inline.
    #[inline(always)]
    fn ws(&mut self) {
        if self.b.get(self.i).is_some_and(|&c| c > b' ') {
            return;
        }
        self.ws_run();
    }

    fn ws_run(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b' ' | b'\t' | b'\r' => self.i += 1,
                b'\n' if !self.lines => self.i += 1,
                _ => return,
            }
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

    /// Where the run of string bytes from `at` ends (at the first quote, backslash or
    /// control character, or the end of the record), its characters checked as UTF-8.
    /// ASCII is run through by [`string_stop`]; from the first byte that is not, the
    /// rest of the run is checked whole (a quote, backslash or control character is
    /// never part of a multi-byte character, so the run ends on a boundary).
    #[inline(always)]
    fn string_run(&self, at: usize) -> Scan<usize> {
        let i = at + string_stop::<true>(&self.b[at..]);
        if self.b.get(i).is_none_or(|&c| c < 0x80) {
            return Ok(i);
        }
        self.utf8_run(i)
    }

    /// [`Scanner::string_run`] from the first byte at `at` that is not ASCII.
    #[inline(never)]
    fn utf8_run(&self, at: usize) -> Scan<usize> {
        let end = at + string_stop::<false>(&self.b[at..]);
        let run = &self.b[at..end];
        // simdutf8's fast check answers yes or no; std finds where a bad run goes wrong.
        if simdutf8::basic::from_utf8(run).is_err()
            && let Err(e) = std::str::from_utf8(run)
        {
            return Err(self.not_utf8(at + e.valid_up_to()));
        }
        Ok(end)
    }

    /// Scans a string; `self.i` is on the opening quote. Its characters are checked as
    /// UTF-8 (a record's bytes are not known to be text before they are scanned).
    fn string(&mut self) -> Scan<Str> {
        self.i += 1;
        let start = self.i;
        self.i = self.string_run(start)?;
        match self.b.get(self.i) {
            None => return Err(self.syntax("unterminated string")),
            Some(b'"') => {
                self.i += 1;
                return Ok(Str::Borrowed(start, self.i - 1));
            }
            Some(b'\\') => {}
            Some(_) => return Err(self.syntax("control character in string")),
        }
        // Slow path: the string has escapes; its text is built in the scratch buffer.
        // Each run between escapes is checked as UTF-8 once, as it is taken as text.
        self.scratch.clear();
        let mut run = start;
        loop {
            self.i += string_stop::<false>(&self.b[self.i..]);
            let text = self.checked(run, self.i)?;
            self.scratch.push_str(text);
            match self.b.get(self.i) {
                None => return Err(self.syntax("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Str::Scratch);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.escape()?;
                    self.scratch.push(c);
                    run = self.i;
                }
                Some(_) => return Err(self.syntax("control character in string")),
            }
        }
    }

    /// The character of the escape sequence at the cursor (past its backslash); the
    /// cursor past it.
    fn escape(&mut self) -> Scan<char> {
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
                return char::from_u32(code)
                    .ok_or_else(|| self.syntax("unpaired surrogate in \\u escape"));
            }
            _ => return Err(self.unexpected("an escape sequence")),
        };
        self.i += 1;
        Ok(c)
    }

    /// Scans a number; `self.i` is on its first character.
    fn number(&mut self) -> Scan<Number> {
        let negative = self.b.get(self.i) == Some(&b'-');
        if negative {
            self.i += 1;
        }
        let int_start = self.i;
        // The value as the digits go by; it wraps past 19 digits, and is then not used.
        let mut mantissa = 0u64;
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits_into(&mut mantissa),
            _ => return Err(self.unexpected("a digit")),
        }
        let mut digits = self.i - int_start;
        let mut fraction = Some(0);
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !matches!(self.b.get(self.i), Some(b'0'..=b'9')) {
                return Err(self.unexpected("a digit"));
            }
            let from = self.i;
            self.digits_into(&mut mantissa);
            digits += self.i - from;
            fraction = Some(self.i - from);
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
            fraction = None;
        }
        Ok(Number {
            negative,
            mantissa,
            digits,
            fraction,
        })
    }

    /// The number at `at` if it is short and plain, as records mostly write them: an
    /// integer part of 1 to 15 digits without leading zero, then optionally a point
    /// and 1 to 7 digits, and no exponent; read a word at a time, without a branch per
    /// digit ([`leading_digits`]). With where it ends; `None` for any other number and
    /// for anything that is not one ([`Scanner::number`] then reads it, or refuses
    /// it), and where fewer than 8 bytes follow a run of digits.
    #[inline(always)]
    fn short_number(&self, at: usize) -> Option<(Number, usize)> {
        let b = self.b;
        let word = |i: usize| {
            b.get(i..)?
                .first_chunk::<8>()
                .map(|w| u64::from_le_bytes(*w))
        };
        let negative = b.get(at) == Some(&b'-');
        let int_start = at + usize::from(negative);
        let (mut digits, mut mantissa) = leading_digits(word(int_start)?);
        if digits == 8 {
            let (more, value) = leading_digits(word(int_start + 8)?);
            if more == 8 {
                return None;
            }
            mantissa = mantissa.wrapping_mul(POW10_INT[more]).wrapping_add(value);
            digits += more;
        }
        if digits == 0 || (digits > 1 && b[int_start] == b'0') {
            return None;
        }
        let mut end = int_start + digits;
        let mut fraction = 0;
        if b.get(end) == Some(&b'.') {
            let (n, value) = leading_digits(word(end + 1)?);
            if n == 0 || n == 8 {
                return None;
            }
            mantissa = mantissa.wrapping_mul(POW10_INT[n]).wrapping_add(value);
            digits += n;
            fraction = n;
            end += 1 + n;
        }
        if let Some(b'e' | b'E') = b.get(end) {
            return None;
        }
        let n = Number {
            negative,
            mantissa,
            digits,
            fraction: Some(fraction),
        };
        Some((n, end))
    }

    /// Scans digits, adding them to `v` (wrapping). Reads 8 bytes at a time where
    /// there are 8 ([`leading_digits`]): no branch per digit to mispredict at the end
    /// of a short number.
    fn digits_into(&mut self, v: &mut u64) {
        while let Some(word) = self.b.get(self.i..).and_then(|r| r.first_chunk::<8>()) {
            let (n, value) = leading_digits(u64::from_le_bytes(*word));
            *v = v.wrapping_mul(POW10_INT[n]).wrapping_add(value);
            self.i += n;
            if n < 8 {
                return;
            }
        }
        while let Some(&c @ b'0'..=b'9') = self.b.get(self.i) {
            *v = v.wrapping_mul(10).wrapping_add((c - b'0') as u64);
            self.i += 1;
        }
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
            Node::Leaf(ctx, check, _) => check(leaf, ctx, out).map(|_| true),
            Node::Text => match leaf {
                Leaf::Str(_) | Leaf::Num(..) | Leaf::Bool(_) => Ok(false),
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
                Leaf::Str(t) | Leaf::Num(t, _)
                    if parse(t, *p, *s, out, &mut self.spill.borrow_mut()) =>
                {
                    Ok(true)
                }
                Leaf::Str(_) | Leaf::Num(..) => Err(format!(
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

    /// Scans a value and checks it against `node`, appending it to `column` if there is
    /// one. A null is refused unless `nullable`.
    fn value(
        &mut self,
        node: &Node,
        nullable: bool,
        depth: usize,
        column: Option<&mut Column>,
    ) -> Scan {
        self.ws();
        match (self.b.get(self.i), node) {
            (Some(b'{'), Node::Struct(s)) => match column.map(Column::as_struct) {
                Some(c) => {
                    self.object(s, depth, Some(&mut c.children))?;
                    c.end_value();
                    Ok(())
                }
                None => self.object(s, depth, None),
            },
            (
                Some(b'{'),
                Node::Map {
                    key,
                    value,
                    value_nullable,
                },
            ) => self.map(
                key,
                value,
                *value_nullable,
                depth,
                column.map(Column::as_list),
            ),
            (Some(b'['), Node::List { item, nullable }) => {
                self.array(item, *nullable, depth, column.map(Column::as_list))
            }
            _ => {
                let mut slot = Slot::Null;
                self.leaf(node, nullable, depth, &mut slot)?;
                if let Some(column) = column {
                    self.put(column, &slot);
                }
                Ok(())
            }
        }
    }

    /// Scans a value that is not a struct, list or map of `node` (those are refused as
    /// mismatches here; [`Scanner::value`] descends into them), checks it against
    /// `node` and converts it into `out` (left as it was if the value is refused). A
    /// null is refused unless `nullable`.
    fn leaf(&mut self, node: &Node, nullable: bool, depth: usize, out: &mut Slot) -> Scan {
        self.ws();
        // The values a column takes as written, without its check.
        if self.quick_value(node, self.i, out) {
            return Ok(());
        }
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
                // A string column keeps any string as it is (one with escapes here).
                if matches!(node, Node::Text)
                    || !self.check_leaf(node, Leaf::Str(self.text(&s)?), at, out)?
                {
                    *out = self.text_slot(&s);
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
                let text = self.checked(at, self.i)?;
                self.check_leaf(node, Leaf::Num(text, n.int()), at, out)?
            }
            _ => return Err(self.unexpected("a value")),
        };
        if !converted {
            // A number or boolean kept as text: its text in the record.
            *out = Slot::Span(at, self.i);
        }
        Ok(())
    }

    /// Scans the array or map at the cursor (opened by `[` or `{`, closed by `close`):
    /// its entries, each by `entry` (given its index), separated by commas.
    #[inline(always)]
    fn entries(
        &mut self,
        depth: usize,
        close: u8,
        mut entry: impl FnMut(&mut Self, usize) -> Scan,
    ) -> Scan {
        if depth >= MAX_DEPTH {
            return Err(self.syntax(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&close) {
            self.i += 1;
            return Ok(());
        }
        let mut n = 0usize;
        loop {
            entry(self, n)?;
            n += 1;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(&c) if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => {
                    let expected = if close == b']' {
                        "',' or ']'"
                    } else {
                        "',' or '}'"
                    };
                    return Err(self.unexpected(expected));
                }
            }
        }
    }

    fn array(
        &mut self,
        item: &Node,
        nullable: bool,
        depth: usize,
        mut column: Option<&mut ListColumn>,
    ) -> Scan {
        self.entries(depth, b']', |sc, n| {
            let items = column.as_deref_mut().map(|l| &mut l.child);
            sc.value(item, nullable, depth + 1, items)
                .map_err(|r| r.within(PathSeg::Index(n)))
        })?;
        if let Some(l) = column {
            l.end_value();
        }
        Ok(())
    }

    fn map(
        &mut self,
        key: &Node,
        value: &Node,
        value_nullable: bool,
        depth: usize,
        mut column: Option<&mut ListColumn>,
    ) -> Scan {
        self.entries(depth, b'}', |sc, _| {
            sc.ws();
            if sc.b.get(sc.i) != Some(&b'"') {
                return Err(sc.unexpected("a string key"));
            }
            let at = sc.i;
            let k = sc.string()?;
            let name = sc.keep(&k)?;
            let mut slot = Slot::Null;
            let converted = sc
                .check_leaf(key, Leaf::Str(&name), at, &mut slot)
                .map_err(|r| r.within(PathSeg::Field(name.to_string())))?;
            if let Some(l) = column.as_deref_mut() {
                if !converted {
                    slot = sc.text_slot(&k);
                }
                sc.put(&mut l.child, &slot);
            }
            sc.ws();
            sc.eat(b':', "':'")?;
            let values = column.as_deref_mut().map(ListColumn::map_values);
            sc.value(value, value_nullable, depth + 1, values)
                .map_err(|r| r.within(PathSeg::Field(name.into_owned())))
        })?;
        if let Some(l) = column {
            l.end_value();
        }
        Ok(())
    }

    /// Scans an object of `node`. With `columns` (one per field), also appends each
    /// field's value to its column, and a null to the column of each field absent; the
    /// last value when a key is repeated, as arrow-json does.
    fn object(
        &mut self,
        node: &StructNode,
        depth: usize,
        mut columns: Option<&mut [Column]>,
    ) -> Scan {
        if depth >= MAX_DEPTH {
            return Err(self.syntax(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let start = self.i;
        self.i += 1;
        let mut seen = Seen::new(node);
        // The field expected next.
        let mut hint = 0;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
        } else {
            loop {
                // The short way matches the key at the cursor (whitespace before it
                // makes it step aside to the general way, which takes any).
                if let Some(f) = self.quick(node, hint, &seen, columns.as_deref_mut()) {
                    seen.set(f);
                    hint = f + 1;
                    // The separator looked at here too, not shared with the general
                    // way's below: sharing it measured 2-7% slower on bids and kitchen.
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => {
                            self.i += 1;
                            continue;
                        }
                        Some(b'}') => {
                            self.i += 1;
                            break;
                        }
                        _ => return Err(self.unexpected("',' or '}'")),
                    }
                }
                self.ws();
                if self.b.get(self.i) != Some(&b'"') {
                    return Err(self.unexpected("a string key"));
                }
                self.field(node, &mut hint, depth, columns.as_deref_mut(), &mut seen)?;
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
        if node.has_required && !seen.all_required(node) {
            for (f, (name, nullable, _)) in node.fields.iter().enumerate() {
                if !nullable && !seen.get(f) {
                    return Err(self
                        .mismatch(start, "missing value for a non-nullable field")
                        .within(PathSeg::Field(name.clone())));
                }
            }
        }
        if let Some(columns) = columns {
            seen.fill(columns);
        }
        Ok(())
    }

    /// The field at the cursor (a key, its colon and its value) of an object of `node`,
    /// the general way: any key, whitespace and value, and every refusal. `hint`,
    /// `columns` and `seen` are [`Scanner::object`]'s.
    fn field(
        &mut self,
        node: &StructNode,
        hint: &mut usize,
        depth: usize,
        columns: Option<&mut [Column]>,
        seen: &mut Seen,
    ) -> Scan {
        let field = match node.key_at(&self.b[self.i..], *hint) {
            Some((f, len)) => {
                self.i += len;
                Some(f)
            }
            None => {
                let k = self.string()?;
                node.find_from(self.text(&k)?, *hint)
            }
        };
        self.ws();
        self.eat(b':', "':'")?;
        match field {
            None => self.skip(depth + 1)?,
            Some(f) => {
                *hint = f + 1;
                let (name, nullable, child) = &node.fields[f];
                let mut column = columns.map(|c| &mut c[f]);
                // A key written again keeps its last value.
                if let Some(c) = column.as_deref_mut()
                    && seen.get(f)
                {
                    c.pop();
                }
                self.value(child, *nullable, depth + 1, column)
                    .map_err(|r| r.within(PathSeg::Field(name.clone())))?;
                seen.set(f);
            }
        }
        Ok(())
    }

    /// The field at the cursor taken the short way when it is written as records
    /// mostly are: a key of `node` as the schema names it, followed by its colon
    /// (field `hint` tried first, as [`StructNode::key_at`] does), then a value its
    /// column takes as written: a string without escapes for a text column, an RFC
    /// 3339 string or an integer for a timestamp, a number [`Fast`] takes. The value
    /// is appended to its column of `columns` if there are columns, the cursor moved
    /// past it, and the field returned. Anything else (a key `seen` already, when
    /// there are columns) returns `None` with the cursor and the columns untouched,
    /// and the general path takes the field from its key: the same value or the same
    /// refusal, by the same rules.
    #[inline(always)]
    fn quick(
        &mut self,
        node: &StructNode,
        hint: usize,
        seen: &Seen,
        columns: Option<&mut [Column]>,
    ) -> Option<usize> {
        let (f, len) = node.keyed_at(&self.b[self.i..], hint)?;
        let at = self.i + len;
        let mut slot = Slot::Null;
        match columns {
            Some(columns) => {
                if seen.get(f) {
                    return None;
                }
                let column = columns.get_mut(f)?;
                if !self.quick_value(&node.fields[f].2, at, &mut slot) {
                    return None;
                }
                self.put(column, &slot);
                Some(f)
            }
            None => self
                .quick_value(&node.fields[f].2, at, &mut slot)
                .then_some(f),
        }
    }

    /// [`Scanner::quick`]'s value of a column of `node`, at `at`, written straight
    /// into `out` (a slot built on the stack and copied whole stalls on its partial
    /// writes); the cursor past it. False with the cursor and `out` untouched if it
    /// is not one the short way takes.
    #[inline(always)]
    fn quick_value(&mut self, node: &Node, at: usize, out: &mut Slot) -> bool {
        match (node, self.b.get(at)) {
            (Node::Text, Some(b'"')) => match self.plain_string(at) {
                Some((a, b)) => {
                    *out = Slot::Span(a, b);
                    self.i = b + 1;
                    true
                }
                None => false,
            },
            (Node::Leaf(ctx, _, Fast::Timestamp(unit)), Some(b'"')) => {
                if let Some((a, b)) = self.plain_string(at)
                    && let Some(v) = timestamp_fast(ctx, *unit, &self.b[a..b])
                {
                    *out = Slot::Int(v);
                    self.i = b + 1;
                    true
                } else {
                    false
                }
            }
            (Node::Leaf(_, _, fast), Some(b'-' | b'0'..=b'9')) if !matches!(fast, Fast::None) => {
                // Matched whole: `if let … &&` drops the result through a call.
                match self
                    .short_number(at)
                    .and_then(|(n, end)| Some((fast.take(&n)?, end)))
                {
                    Some((slot, end)) => {
                        *out = slot;
                        self.i = end;
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }

    /// The string whose opening quote is at `at`, if it has no escape or control
    /// character and is UTF-8: the range of its contents.
    #[inline(always)]
    fn plain_string(&self, at: usize) -> Option<(usize, usize)> {
        let start = at + 1;
        // Text that is not UTF-8 steps aside too: the general way refuses it.
        let end = self.string_run(start).ok()?;
        (self.b.get(end) == Some(&b'"')).then_some((start, end))
    }

    /// Checks a whole record: one object, surrounded by whitespace only. Returns the
    /// byte range of the object. `columns` as for [`Scanner::object`].
    fn record(
        &mut self,
        root: &StructNode,
        columns: Option<&mut [Column]>,
    ) -> Scan<(usize, usize)> {
        self.ws();
        let start = self.i;
        match self.b.get(self.i) {
            None => return Err(self.syntax("empty record")),
            Some(b'{') => self.object(root, 0, columns)?,
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

    /// Checks the record on the line that starts at the cursor: a JSON object,
    /// surrounded by whitespace other than `\n`. Returns where the line ends: past its
    /// `\n`, or at the end of the text. `columns` as for [`Scanner::object`].
    fn line(&mut self, root: &StructNode, columns: Option<&mut [Column]>) -> Scan<usize> {
        self.ws();
        if self.b.get(self.i) != Some(&b'{') {
            return Err(self.unexpected("a JSON object"));
        }
        self.object(root, 0, columns)?;
        self.ws();
        match self.b.get(self.i) {
            None => Ok(self.i),
            Some(b'\n') => Ok(self.i + 1),
            Some(_) => Err(self.unexpected("end of record")),
        }
    }
}

/// Where a scanned record's values are written: a column per root field, and the
/// values being converted that the record's text does not hold (cleared first).
pub(super) struct Sink<'k> {
    pub(super) columns: &'k mut [Column],
    pub(super) spill: &'k mut Spill,
}

/// Runs `scan` on `sc` with `sink`'s columns, and its spill (cleared) lent to it.
fn lend<'a, T>(
    sc: &mut Scanner<'a>,
    sink: Option<Sink<'_>>,
    scan: impl FnOnce(&mut Scanner<'a>, Option<&mut [Column]>) -> Scan<T>,
) -> Scan<T> {
    let Some(Sink { columns, spill }) = sink else {
        return scan(sc, None);
    };
    spill.clear();
    std::mem::swap(sc.spill.get_mut(), spill);
    let scanned = scan(sc, Some(columns));
    std::mem::swap(sc.spill.get_mut(), spill);
    scanned
}

/// Like [`scan_record`] with a sink, for the record on the line of `text` (lines end
/// at `\n`) that starts at byte `at`: where the line ends (past its `\n`, or at the
/// end of `text`) if it holds a record that fits, its values appended to the sink's
/// columns; `None` if not, without saying why (the caller then cuts the columns back
/// and takes the line on its own to [`scan_record`], which gives the refusal).
/// Decoding a chunk of lines this way finds their ends while scanning them, instead
/// of searching for each one first.
pub(super) fn scan_line(
    text: &[u8],
    at: usize,
    root: &StructNode,
    sink: Sink<'_>,
) -> Option<usize> {
    let mut sc = Scanner::new(text);
    sc.i = at;
    sc.lines = true;
    lend(&mut sc, Some(sink), |sc, columns| sc.line(root, columns)).ok()
}

/// Checks `record` against `root`: `Ok` with the byte range of the object, or why
/// not. A record that is not UTF-8 is malformed: the scanner checks each string's
/// characters as it reads them, and anything else must be ASCII to be JSON. With a
/// sink, also appends the record's values to its columns (see [`Sink`]); if the
/// record is refused, the columns may hold part of it, for the caller to cut back.
pub(super) fn scan_record(
    record: &[u8],
    root: &StructNode,
    sink: Option<Sink<'_>>,
) -> Scan<(usize, usize)> {
    let mut sc = Scanner::new(record);
    let scanned = lend(&mut sc, sink, |sc, columns| sc.record(root, columns));
    match scanned {
        Ok(r) => Ok(r),
        Err(r) if r.reason == BadRecordReason::SchemaMismatch => {
            // A schema mismatch in a record that is not JSON at all is malformed.
            let mut syntax = Scanner::new(record);
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The word-at-a-time search agrees with a byte-at-a-time one, stopping at
        /// bytes that are not ASCII or running through them.
        #[test]
        fn string_stop_finds_the_first_quote_backslash_or_control(
            b in prop::collection::vec(prop_oneof![
                4 => 0x20u8..=0xff,
                1 => prop::sample::select(vec![b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xa2, 0xdc]),
            ], 0..80),
        ) {
            let naive = |ascii: bool| b
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20 || (ascii && c >= 0x80))
                .unwrap_or(b.len());
            prop_assert_eq!(string_stop::<false>(&b), naive(false));
            prop_assert_eq!(string_stop::<true>(&b), naive(true));
        }

        /// The digits at the start of a word are counted and valued as one at a time.
        #[test]
        fn leading_digits_agree_with_a_byte_at_a_time_reading(
            w in prop::array::uniform8(prop_oneof![
                3 => b'0'..=b'9',
                1 => any::<u8>(),
                1 => prop::sample::select(vec![b'/', b':', 0x00, 0xff, 0x80, 0xb0, 0xb9, 0xc9]),
            ]),
        ) {
            let n = w.iter().take_while(|c| c.is_ascii_digit()).count();
            let v = w[..n].iter().fold(0u64, |v, c| v * 10 + (c - b'0') as u64);
            prop_assert_eq!(leading_digits(u64::from_le_bytes(w)), (n, v));
        }

        /// A key matched by words agrees with `starts_with`, for keys of up to 16 bytes
        /// (one word) and longer, and records that end before 16 bytes.
        #[test]
        fn a_quoted_key_matches_as_starts_with_does(
            key in prop::collection::vec(prop::sample::select(vec![b'"', b'a', b'b', 0xc3]), 1..24),
            b in prop::collection::vec(prop::sample::select(vec![b'"', b'a', b'b', 0xc3]), 0..40),
            prefix: bool,
        ) {
            let b = if prefix { [&key[..], &b[..]].concat() } else { b };
            let q = QuotedKey::new(key.clone().into_boxed_slice());
            prop_assert_eq!(q.starts(&b), b.starts_with(&key));
        }

        /// The short way reads a number as [`Scanner::number`] does wherever it takes
        /// one (the same value and end), and it takes every plain number of up to 15
        /// digits before the point and 7 after it that 8 bytes or more follow.
        #[test]
        fn a_short_number_is_read_as_the_general_way_reads_it(
            s in "-?(0|[0-9]{0,17})(\\.[0-9]{0,9})?([eE][+-]?[0-9]{1,2})?",
            after in prop::sample::select(vec!["", "}", ",", ",\"a\":12345}", " ]  \n        ", "/:\u{80}"]),
        ) {
            let text = format!("{s}{after}");
            let mut sc = Scanner::new(text.as_bytes());
            let general = sc.number().ok().map(|n| (n, sc.i));
            let short = Scanner::new(text.as_bytes()).short_number(0);
            if short.is_some() {
                prop_assert_eq!(&short, &general, "{}", text);
            }
            let (int, fraction) = s.trim_start_matches('-').split_once('.').unwrap_or((s.trim_start_matches('-'), "0"));
            let plain = !s.contains(['e', 'E'])
                && (1..=15).contains(&int.len())
                && (int == "0" || !int.starts_with('0'))
                && (1..=7).contains(&fraction.len());
            if plain && after.len() >= 8 {
                prop_assert!(short.is_some(), "{}", text);
            }
        }

        /// A number's value, found as its digits are scanned, is what `str::parse`
        /// reads: as an integer, for every integer of up to 18 digits (longer ones,
        /// fractions and exponents have none: their text decides); as a double, for
        /// every number of up to 15 digits without exponent (others have none).
        #[test]
        fn a_short_number_is_valued_as_str_parse_values_it(
            s in "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,17})?([eE][+-]?[0-9]{1,2})?",
            after in prop::sample::select(vec!["", "}", ",", ",\"a\":1}", " ]  \n        ", "/:\u{80}"]),
        ) {
            // Followed by what may follow a number, so the digits are read both by
            // words and, near the end, byte by byte.
            let text = format!("{s}{after}");
            let mut sc = Scanner::new(text.as_bytes());
            let n = sc.number().unwrap();
            prop_assert_eq!(sc.i, s.len());
            let digits = s.chars().filter(char::is_ascii_digit).count();
            let exponent = s.contains(['e', 'E']);
            match n.int() {
                Some(v) => prop_assert_eq!(Ok(v), s.parse::<i64>()),
                None => prop_assert!(digits > 18 || s.contains(['.', 'e', 'E']), "{}", s),
            }
            let mantissa_digits = s.split(['e', 'E']).next().unwrap_or("")
                .chars().filter(char::is_ascii_digit).count();
            match n.float() {
                // Bit for bit: `-0` is `-0.0`.
                Some(v) => prop_assert_eq!(v.to_bits(), s.parse::<f64>().unwrap().to_bits(), "{}", s),
                None => prop_assert!(exponent || mantissa_digits > 15, "{}", s),
            }
        }
    }
}
