//! The Arrow columns an accepted record's converted values are appended to: a scalar
//! column per leaf type ([`Leaf`]), and list, struct and map columns built from the
//! scanner's [`Tape`]. Every column is compiled from the same type as the scanner node
//! that fills its slots, so a slot of another kind is a bug, not bad input.
//!
//! A scalar column is an enum matched where a value is appended, not a trait object.
//! Fixed-width values are kept in a `Vec` of their native type and handed to Arrow
//! whole when the batch is finished; strings and booleans use Arrow's builders. Which
//! values are null is kept as a byte per value and packed into a bitmap at the end
//! (ADR 0018, addendum "stop 39").

use std::sync::Arc;

use arrow::array::builder::{
    BooleanBuilder, GenericBinaryBuilder, GenericStringBuilder, LargeStringBuilder, StringBuilder,
    StringViewBuilder,
};
use arrow::array::{
    ArrayBuilder, ArrayDataBuilder, ArrayRef, BooleanArray, LargeListArray, ListArray, MapArray,
    NullArray, NullBufferBuilder, OffsetSizeTrait, StructArray, make_array,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer};
use arrow::compute::nullif;
use arrow::datatypes::{ArrowNativeType, DataType, FieldRef, Fields, TimeUnit, i256};

use crate::formats::json::rules::{Slot, SlotNative, Spill};
use crate::formats::json::scanner::{Event, Tape};

/// A column given a slot of another kind: a bug, since a column and its scanner node
/// are compiled from the same type (see [`Leaf::new`]).
#[cold]
fn wrong_slot(slot: &Slot) -> ! {
    unreachable!("a JSON column was given a slot of another kind: {slot:?}")
}

/// The text of a slot of a column that keeps its value's text (strings, hex binary).
#[inline(always)]
fn slot_text<'r>(slot: &Slot, record: &'r str, spill: &'r Spill) -> &'r str {
    match *slot {
        Slot::Span(a, b) => &record[a..b],
        Slot::Unescaped(a, b) => &spill.text[a..b],
        _ => wrong_slot(slot),
    }
}

/// Fixed-width values of a column of type `data_type` whose values are `T`s in Arrow's
/// layout (a date, time, duration, timestamp or decimal is its integer).
pub(super) struct Native<T> {
    data_type: DataType,
    values: Vec<T>,
}

impl<T: ArrowNativeType> Native<T> {
    fn new(data_type: &DataType, capacity: usize) -> Self {
        Native {
            data_type: data_type.clone(),
            values: Vec::with_capacity(capacity),
        }
    }

    fn finish(&mut self, nulls: Option<NullBuffer>) -> Result<ArrayRef, String> {
        let rows = self.values.len();
        // Sized for a batch like this one: the next batch grows no buffer.
        let values = std::mem::replace(&mut self.values, Vec::with_capacity(rows));
        let data = ArrayDataBuilder::new(self.data_type.clone())
            .len(rows)
            .nulls(nulls)
            .add_buffer(Buffer::from_vec(values))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(make_array(data))
    }
}

impl<T: SlotNative + ArrowNativeType> Native<T> {
    #[inline(always)]
    fn append(&mut self, slot: &Slot) {
        match T::from_slot(slot) {
            Some(v) => self.values.push(v),
            None => wrong_slot(slot),
        }
    }
}

/// Binary from hex strings, decoded as arrow-json does: pairs of digits, then a last
/// lone digit as a byte of its own.
pub(super) struct HexColumn<O: OffsetSizeTrait> {
    builder: GenericBinaryBuilder<O>,
    bytes: Vec<u8>,
}

impl<O: OffsetSizeTrait> HexColumn<O> {
    fn new(capacity: usize) -> Box<Self> {
        Box::new(HexColumn {
            builder: GenericBinaryBuilder::with_capacity(capacity, capacity * 8),
            bytes: Vec::new(),
        })
    }

    fn append(&mut self, text: &str) {
        // The scanner let only hex digits through.
        let digit = |c: &u8| (*c as char).to_digit(16).unwrap_or(0) as u8;
        let mut pairs = text.as_bytes().chunks_exact(2);
        self.bytes.clear();
        self.bytes
            .extend((&mut pairs).map(|p| (digit(&p[0]) << 4) | digit(&p[1])));
        self.bytes.extend(pairs.remainder().iter().map(digit));
        self.builder.append_value(&self.bytes);
    }
}

/// How a scalar column keeps its values: one variant per layout. A null takes a
/// placeholder value (zero, `false`, an empty string); which values are null is kept by
/// the [`Leaf`].
pub(super) enum Values {
    /// A column of type `Null`: only nulls, counted.
    Null(usize),
    Bool(BooleanBuilder),
    I8(Native<i8>),
    I16(Native<i16>),
    I32(Native<i32>),
    I64(Native<i64>),
    U8(Native<u8>),
    U16(Native<u16>),
    U32(Native<u32>),
    U64(Native<u64>),
    I128(Native<i128>),
    I256(Native<i256>),
    F32(Native<f32>),
    F64(Native<f64>),
    Utf8(StringBuilder),
    LargeUtf8(LargeStringBuilder),
    View(StringViewBuilder),
    Hex(Box<HexColumn<i32>>),
    LargeHex(Box<HexColumn<i64>>),
}

/// `$body` for the column `$c` of whichever fixed-width variant `$values` is, but for
/// 256-bit decimals (kept in the spill, not in their slot); the arms after it for the
/// other variants.
macro_rules! each_native {
    ($values:expr, $c:ident => $body:expr, $($rest:tt)*) => {
        match $values {
            Values::I8($c) => $body,
            Values::I16($c) => $body,
            Values::I32($c) => $body,
            Values::I64($c) => $body,
            Values::U8($c) => $body,
            Values::U16($c) => $body,
            Values::U32($c) => $body,
            Values::U64($c) => $body,
            Values::I128($c) => $body,
            Values::F32($c) => $body,
            Values::F64($c) => $body,
            $($rest)*
        }
    };
}

impl Values {
    /// The values of a scalar type `dt` (one the scanner compiles a scalar node for,
    /// filling the slot variant the column reads); `None` for other types.
    fn new(dt: &DataType, capacity: usize) -> Option<Values> {
        let c = capacity;
        Some(match dt {
            DataType::Null => Values::Null(0),
            DataType::Boolean => Values::Bool(BooleanBuilder::with_capacity(c)),
            DataType::Utf8 => Values::Utf8(StringBuilder::with_capacity(c, c * 16)),
            DataType::LargeUtf8 => Values::LargeUtf8(LargeStringBuilder::with_capacity(c, c * 16)),
            DataType::Utf8View => Values::View(StringViewBuilder::with_capacity(c)),
            DataType::Binary => Values::Hex(HexColumn::new(c)),
            DataType::LargeBinary => Values::LargeHex(HexColumn::new(c)),
            DataType::Int8 => Values::I8(Native::new(dt, c)),
            DataType::Int16 => Values::I16(Native::new(dt, c)),
            DataType::Int32
            | DataType::Date32
            | DataType::Time32(TimeUnit::Second | TimeUnit::Millisecond)
            | DataType::Decimal32(_, _) => Values::I32(Native::new(dt, c)),
            DataType::Int64
            | DataType::Date64
            | DataType::Time64(TimeUnit::Microsecond | TimeUnit::Nanosecond)
            | DataType::Duration(_)
            | DataType::Timestamp(_, _)
            | DataType::Decimal64(_, _) => Values::I64(Native::new(dt, c)),
            DataType::UInt8 => Values::U8(Native::new(dt, c)),
            DataType::UInt16 => Values::U16(Native::new(dt, c)),
            DataType::UInt32 => Values::U32(Native::new(dt, c)),
            DataType::UInt64 => Values::U64(Native::new(dt, c)),
            DataType::Decimal128(_, _) => Values::I128(Native::new(dt, c)),
            DataType::Decimal256(_, _) => Values::I256(Native::new(dt, c)),
            DataType::Float32 => Values::F32(Native::new(dt, c)),
            DataType::Float64 => Values::F64(Native::new(dt, c)),
            _ => return None,
        })
    }

    /// Appends `slot` (not a null), the value the scanner converted for this column
    /// from `record` (the text a [`Slot::Span`] is in).
    #[inline(always)]
    fn append(&mut self, slot: &Slot, record: &str, spill: &Spill) {
        each_native!(self, c => c.append(slot),
            Values::I256(c) => match *slot {
                Slot::I256(i) => c.values.push(spill.wide[i]),
                _ => wrong_slot(slot),
            },
            Values::Utf8(b) => b.append_value(slot_text(slot, record, spill)),
            Values::LargeUtf8(b) => b.append_value(slot_text(slot, record, spill)),
            Values::View(b) => b.append_value(slot_text(slot, record, spill)),
            Values::Bool(b) => match slot {
                Slot::Bool(v) => b.append_value(*v),
                _ => wrong_slot(slot),
            },
            Values::Hex(h) => h.append(slot_text(slot, record, spill)),
            Values::LargeHex(h) => h.append(slot_text(slot, record, spill)),
            Values::Null(_) => wrong_slot(slot),
        )
    }

    /// Appends a null's placeholder.
    #[inline(always)]
    fn append_placeholder(&mut self) {
        each_native!(self, c => c.values.push(Default::default()),
            Values::I256(c) => c.values.push(Default::default()),
            Values::Null(n) => *n += 1,
            Values::Bool(b) => b.append_value(false),
            Values::Utf8(b) => b.append_value(""),
            Values::LargeUtf8(b) => b.append_value(""),
            Values::View(b) => b.append_value(""),
            Values::Hex(h) => h.builder.append_value([]),
            Values::LargeHex(h) => h.builder.append_value([]),
        )
    }

    /// The values appended since the last call, `nulls` where they are null; the
    /// builders are left sized for a batch like this one (finishing leaves them no
    /// capacity otherwise).
    fn finish(&mut self, nulls: Option<NullBuffer>) -> Result<ArrayRef, String> {
        fn strings<O: OffsetSizeTrait>(b: &mut GenericStringBuilder<O>) -> ArrayRef {
            let (rows, bytes) = (ArrayBuilder::len(b), b.values_slice().len());
            let array = b.finish();
            *b = GenericStringBuilder::with_capacity(rows, bytes);
            Arc::new(array)
        }
        let array: ArrayRef = each_native!(self, c => return c.finish(nulls),
            Values::I256(c) => return c.finish(nulls),
            Values::Null(n) => return Ok(Arc::new(NullArray::new(std::mem::take(n)))),
            Values::Bool(b) => {
                let rows = ArrayBuilder::len(b);
                let array = b.finish();
                *b = BooleanBuilder::with_capacity(rows);
                Arc::new(array)
            }
            Values::Utf8(b) => strings(b),
            Values::LargeUtf8(b) => strings(b),
            Values::View(b) => {
                let rows = ArrayBuilder::len(b);
                let array = b.finish();
                *b = StringViewBuilder::with_capacity(rows);
                Arc::new(array)
            }
            Values::Hex(h) => Arc::new(h.builder.finish()),
            Values::LargeHex(h) => Arc::new(h.builder.finish()),
        );
        match nulls {
            // The builders' values are valid text already: setting the nulls through
            // `nullif` does not check them again, as building the array anew would.
            Some(nulls) => {
                nullif(&array, &BooleanArray::new(!nulls.inner(), None)).map_err(|e| e.to_string())
            }
            None => Ok(array),
        }
    }
}

/// A scalar column: its values, and which of them are valid, a byte per row. Marking
/// a value valid or null is one store (an Arrow null buffer builder, once a column has
/// had a null, sets a bit and checks its buffer's length for every value). The bytes
/// are packed into a bitmap when the batch is finished (none when every value is
/// valid).
pub(super) struct Leaf {
    values: Values,
    /// 1 for a valid value, 0 for a null.
    valid: Vec<u8>,
}

impl Leaf {
    fn new(dt: &DataType, capacity: usize) -> Option<Leaf> {
        Some(Leaf {
            values: Values::new(dt, capacity)?,
            valid: Vec::with_capacity(capacity),
        })
    }

    /// Appends `slot`, the value the scanner converted for this column from `record`.
    #[inline(always)]
    fn append(&mut self, slot: &Slot, record: &str, spill: &Spill) {
        if let Slot::Null = slot {
            return self.append_null();
        }
        self.values.append(slot, record, spill);
        self.valid.push(1);
    }

    #[inline(always)]
    fn append_null(&mut self) {
        self.values.append_placeholder();
        self.valid.push(0);
    }

    fn finish(&mut self) -> Result<ArrayRef, String> {
        let nulls = self.valid.contains(&0).then(|| packed(&self.valid));
        self.valid.clear();
        self.values.finish(nulls)
    }
}

/// The null buffer of `valid` (a byte per value, 1 when valid): eight bytes packed
/// into one by a multiplication, each byte's bit landing in the top byte in order.
fn packed(valid: &[u8]) -> NullBuffer {
    let gather =
        |word: [u8; 8]| (u64::from_le_bytes(word).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8;
    let mut chunks = valid.chunks_exact(8);
    let mut bits: Vec<u8> = (&mut chunks)
        .map(|c| gather(c.try_into().unwrap_or_default()))
        .collect();
    if !chunks.remainder().is_empty() {
        let mut last = [0u8; 8];
        last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        bits.push(gather(last));
    }
    NullBuffer::new(BooleanBuffer::new(Buffer::from_vec(bits), 0, valid.len()))
}

/// A record the scanner accepted, and what it kept of it: the record's text (where a
/// [`Slot::Span`] is), the values its slots do not hold, and the tape of its lists,
/// structs and maps.
pub(super) struct Scanned<'r> {
    pub(super) record: &'r str,
    pub(super) spill: &'r Spill,
    pub(super) tape: &'r Tape,
}

/// A column built from the scanner's values: a scalar one, or a list, struct or map of
/// columns (built from the events the scanner recorded on its [`Tape`]). A map is a list
/// of entries whose keys and values are two columns.
// Built once per decoder and appended to for every value: a scalar column is kept in
// place (no pointer to follow per value); the size of the enum costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Column {
    Leaf(Leaf),
    List(Box<ListColumn>),
    Struct(Box<StructColumn>),
}

/// Lists and maps: an offset per value, then the items (key, value pairs for maps).
pub(super) struct ListColumn {
    /// The item field (a map's entries field).
    item: FieldRef,
    large: bool,
    offsets: Vec<i64>,
    nulls: NullBufferBuilder,
    /// Items, or a map's keys.
    child: Column,
    /// A map's values, and whether its keys are sorted.
    map: Option<(Column, bool)>,
}

pub(super) struct StructColumn {
    fields: Fields,
    nulls: NullBufferBuilder,
    children: Vec<Column>,
    len: usize,
}

/// A column given events it was not compiled for: a bug, since a column and its
/// scanner node are compiled from the same type.
#[cold]
fn wrong_event(event: &Event) -> ! {
    unreachable!("a JSON column was given an event of another kind: {event:?}")
}

impl Column {
    /// The column of a field of type `dt`; `None` for types the scanner refuses.
    pub(super) fn new(dt: &DataType, capacity: usize) -> Option<Column> {
        if let Some(leaf) = Leaf::new(dt, capacity) {
            return Some(Column::Leaf(leaf));
        }
        let list = |item: &FieldRef, large, child, map| {
            let mut offsets = Vec::with_capacity(capacity + 1);
            offsets.push(0);
            Column::List(Box::new(ListColumn {
                item: item.clone(),
                large,
                offsets,
                nulls: NullBufferBuilder::new(capacity),
                child,
                map,
            }))
        };
        Some(match dt {
            DataType::List(item) => {
                list(item, false, Column::new(item.data_type(), capacity)?, None)
            }
            DataType::LargeList(item) => {
                list(item, true, Column::new(item.data_type(), capacity)?, None)
            }
            DataType::Map(entries, sorted) => {
                let DataType::Struct(kv) = entries.data_type() else {
                    return None;
                };
                let [key, value] = kv.iter().collect::<Vec<_>>()[..] else {
                    return None;
                };
                let keys = Column::new(key.data_type(), capacity)?;
                let values = Column::new(value.data_type(), capacity)?;
                list(entries, false, keys, Some((values, *sorted)))
            }
            DataType::Struct(fields) => Column::Struct(Box::new(StructColumn {
                fields: fields.clone(),
                nulls: NullBufferBuilder::new(capacity),
                children: fields
                    .iter()
                    .map(|f| Column::new(f.data_type(), capacity))
                    .collect::<Option<_>>()?,
                len: 0,
            })),
            _ => return None,
        })
    }

    /// Whether this is a scalar column (its values never go through the tape).
    pub(super) fn is_leaf(&self) -> bool {
        matches!(self, Column::Leaf(_))
    }

    /// Appends a root field's value: `slot` as the scanner left it (a scalar, a null,
    /// or the range of the tape a list, struct or map took) from the record `scanned`.
    #[inline(always)]
    pub(super) fn append(&mut self, slot: &Slot, scanned: &Scanned<'_>) {
        match (self, slot) {
            (Column::Leaf(c), _) => c.append(slot, scanned.record, scanned.spill),
            (column, Slot::Null) => column.append_null(),
            (column, Slot::Span(from, _)) => {
                column.replay_nested(scanned, *from);
            }
            (_, slot) => wrong_slot(slot),
        }
    }

    fn append_null(&mut self) {
        match self {
            Column::Leaf(c) => c.append_null(),
            Column::List(l) => {
                let last = l.offsets[l.offsets.len() - 1];
                l.offsets.push(last);
                l.nulls.append_null();
            }
            Column::Struct(s) => {
                s.children.iter_mut().for_each(Column::append_null);
                s.nulls.append_null();
                s.len += 1;
            }
        }
    }

    /// Appends the value recorded at event `at` of `tape`; returns the event after it.
    /// A scalar is appended here, without a call; a list, struct or map by
    /// [`Column::replay_nested`].
    #[inline(always)]
    fn replay(&mut self, scanned: &Scanned<'_>, at: usize) -> usize {
        match (self, &scanned.tape.events[at]) {
            (Column::Leaf(c), Event::Value(slot)) => {
                c.append(slot, scanned.record, scanned.spill);
                at + 1
            }
            (column, _) => column.replay_nested(scanned, at),
        }
    }

    /// [`Column::replay`] for a list, struct or map (or a null one).
    fn replay_nested(&mut self, scanned: &Scanned<'_>, at: usize) -> usize {
        let tape = scanned.tape;
        let event = &tape.events[at];
        match (self, event) {
            (column, Event::Value(Slot::Null)) => column.append_null(),
            (Column::List(l), &Event::Open { end, .. }) => {
                let mut next = at + 1;
                let mut n = 0;
                while next < end {
                    next = l.child.replay(scanned, next);
                    if let Some((values, _)) = &mut l.map {
                        next = values.replay(scanned, next);
                    }
                    n += 1;
                }
                let last = l.offsets[l.offsets.len() - 1];
                l.offsets.push(last + n);
                l.nulls.append_non_null();
                return end;
            }
            (Column::Struct(s), &Event::Open { end, fields }) => {
                for (child, &(a, b)) in s.children.iter_mut().zip(&tape.fields[fields..]) {
                    if a == b {
                        child.append_null();
                    } else {
                        child.replay(scanned, a);
                    }
                }
                s.nulls.append_non_null();
                s.len += 1;
                return end;
            }
            _ => wrong_event(event),
        }
        at + 1
    }

    /// The values appended since the last call.
    pub(super) fn finish(&mut self) -> Result<ArrayRef, String> {
        Ok(match self {
            Column::Leaf(c) => c.finish()?,
            Column::List(l) => {
                let child = l.child.finish()?;
                let offsets = std::mem::replace(&mut l.offsets, vec![0]);
                let nulls = l.nulls.finish();
                match &mut l.map {
                    Some((values, sorted)) => {
                        let DataType::Struct(kv) = l.item.data_type() else {
                            return Err(format!("map entries of type {}", l.item.data_type()));
                        };
                        let entries =
                            StructArray::try_new(kv.clone(), vec![child, values.finish()?], None)
                                .map_err(|e| e.to_string())?;
                        Arc::new(
                            MapArray::try_new(
                                l.item.clone(),
                                offsets32(offsets)?,
                                entries,
                                nulls,
                                *sorted,
                            )
                            .map_err(|e| e.to_string())?,
                        )
                    }
                    None if l.large => Arc::new(
                        LargeListArray::try_new(
                            l.item.clone(),
                            OffsetBuffer::new(offsets.into()),
                            child,
                            nulls,
                        )
                        .map_err(|e| e.to_string())?,
                    ),
                    None => Arc::new(
                        ListArray::try_new(l.item.clone(), offsets32(offsets)?, child, nulls)
                            .map_err(|e| e.to_string())?,
                    ),
                }
            }
            Column::Struct(s) => {
                let nulls = s.nulls.finish();
                let len = std::mem::take(&mut s.len);
                if s.fields.is_empty() {
                    Arc::new(StructArray::new_empty_fields(len, nulls))
                } else {
                    let children = s
                        .children
                        .iter_mut()
                        .map(Column::finish)
                        .collect::<Result<Vec<_>, _>>()?;
                    Arc::new(
                        StructArray::try_new(s.fields.clone(), children, nulls)
                            .map_err(|e| e.to_string())?,
                    )
                }
            }
        })
    }
}

fn offsets32(offsets: Vec<i64>) -> Result<OffsetBuffer<i32>, String> {
    let offsets = offsets
        .into_iter()
        .map(i32::try_from)
        .collect::<Result<Vec<i32>, _>>()
        .map_err(|_| "more list items in one batch than a List holds".to_string())?;
    Ok(OffsetBuffer::new(offsets.into()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::packed;

    proptest! {
        /// The packed null buffer says of each value what its byte said.
        #[test]
        fn packed_validity_keeps_each_value_in_its_place(
            valid in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let bytes: Vec<u8> = valid.iter().map(|&v| u8::from(v)).collect();
            let nulls = packed(&bytes);
            prop_assert_eq!(nulls.len(), valid.len());
            prop_assert_eq!(nulls.iter().collect::<Vec<_>>(), valid.clone());
            prop_assert_eq!(nulls.null_count(), valid.iter().filter(|v| !**v).count());
        }
    }
}
