//! The Arrow columns the scanner writes a record's values into while it checks them:
//! a scalar column per leaf type ([`Leaf`]), and list, struct and map columns of
//! columns. Every column is compiled from the same type as the scanner node that
//! fills it, so a value of another kind is a bug, not bad input.
//!
//! A record's values are appended as they are scanned, and taken back if the record
//! is refused: every column can be cut back to a length ([`Column::truncate`]), which
//! cuts its children too. A key written twice in one object keeps its last value the
//! same way (the first one is cut off). Nothing is kept aside to be appended later
//! (ADR 0018, addendum "stop 40").
//!
//! A scalar column is an enum matched where a value is appended, not a trait object.
//! Fixed-width values are kept in a `Vec` of their native type, strings and binaries in
//! a `Vec` of bytes and one of offsets, booleans a byte each; they are handed to Arrow
//! whole when the batch is finished. Which values are null is kept as a byte per value
//! and packed into a bitmap at the end (addendum "stop 39").

use std::sync::Arc;

use arrow::array::{
    ArrayDataBuilder, ArrayRef, BooleanArray, GenericBinaryArray, GenericStringArray,
    LargeListArray, ListArray, MapArray, NullArray, OffsetSizeTrait, StringViewArray, StructArray,
    make_array,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{ArrowNativeType, DataType, FieldRef, Fields, TimeUnit, i256};

use crate::formats::json::rules::{Slot, SlotNative, Spill};

/// A column given a slot of another kind: a bug, since a column and its scanner node
/// are compiled from the same type (see [`Leaf::new`]).
#[cold]
fn wrong_slot(slot: &Slot) -> ! {
    unreachable!("a JSON column was given a slot of another kind: {slot:?}")
}

/// The text of a slot of a column that keeps its value's text (strings, hex binary), as
/// bytes: the scanner's spans are whole strings of the record, and the batch's text is
/// checked once when it is finished (slicing a `str` checks both ends of every value).
#[inline(always)]
fn slot_text<'r>(slot: &Slot, record: &'r [u8], spill: &'r Spill) -> &'r [u8] {
    match *slot {
        Slot::Span(a, b) => &record[a..b],
        Slot::Unescaped(a, b) => &spill.text.as_bytes()[a..b],
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

/// Variable-length values (strings, binaries): their bytes end to end, and where each
/// one ends. An `O` too narrow for the bytes appended is reported when the batch is
/// finished.
pub(super) struct Bytes<O> {
    ends: Vec<O>,
    bytes: Vec<u8>,
    overflow: bool,
}

impl<O: OffsetSizeTrait> Bytes<O> {
    fn new(capacity: usize) -> Self {
        let mut ends = Vec::with_capacity(capacity + 1);
        ends.push(O::usize_as(0));
        Bytes {
            ends,
            bytes: Vec::with_capacity(capacity * 16),
            overflow: false,
        }
    }

    /// Ends the value whose bytes were appended since the last one ended.
    #[inline(always)]
    fn end_value(&mut self) {
        match O::from_usize(self.bytes.len()) {
            Some(end) => self.ends.push(end),
            None => {
                self.overflow = true;
                self.ends.push(O::usize_as(0));
            }
        }
    }

    #[inline(always)]
    fn append(&mut self, value: &[u8]) {
        self.bytes.extend_from_slice(value);
        self.end_value();
    }

    fn truncate(&mut self, len: usize) {
        self.ends.truncate(len + 1);
        self.bytes.truncate(self.ends[len].as_usize());
    }

    /// The offsets and bytes appended since the last call; the vectors are left sized
    /// for a batch like this one.
    fn take(&mut self) -> Result<(OffsetBuffer<O>, Buffer), String> {
        if std::mem::take(&mut self.overflow) {
            self.truncate(0);
            return Err(format!(
                "more bytes in one batch than a {}-bit offset holds",
                8 * O::get_byte_width()
            ));
        }
        let (rows, bytes) = (self.ends.len(), self.bytes.len());
        let ends = std::mem::replace(&mut self.ends, Vec::with_capacity(rows));
        self.ends.push(O::usize_as(0));
        let bytes = std::mem::replace(&mut self.bytes, Vec::with_capacity(bytes));
        // Monotonic: each end is the length of the bytes when it was appended.
        Ok((
            OffsetBuffer::new(ScalarBuffer::from(ends)),
            Buffer::from_vec(bytes),
        ))
    }

    /// The strings appended since the last call ([`Bytes::take`]), `nulls` where they
    /// are null: their text is checked here, once for the batch.
    fn strings(&mut self, nulls: Option<NullBuffer>) -> Result<GenericStringArray<O>, String> {
        let (offsets, bytes) = self.take()?;
        GenericStringArray::try_new(offsets, bytes, nulls).map_err(|e| e.to_string())
    }

    /// The binaries appended since the last call ([`Bytes::take`]), `nulls` where they
    /// are null.
    fn binaries(&mut self, nulls: Option<NullBuffer>) -> Result<GenericBinaryArray<O>, String> {
        let (offsets, bytes) = self.take()?;
        GenericBinaryArray::try_new(offsets, bytes, nulls).map_err(|e| e.to_string())
    }
}

/// The bytes of a hex string, decoded as arrow-json does: pairs of digits, then a last
/// lone digit as a byte of its own.
fn append_hex<O: OffsetSizeTrait>(b: &mut Bytes<O>, text: &[u8]) {
    // The scanner let only hex digits through.
    let digit = |c: &u8| (*c as char).to_digit(16).unwrap_or(0) as u8;
    let mut pairs = text.chunks_exact(2);
    b.bytes
        .extend((&mut pairs).map(|p| (digit(&p[0]) << 4) | digit(&p[1])));
    b.bytes.extend(pairs.remainder().iter().map(digit));
    b.end_value();
}

/// How a scalar column keeps its values: one variant per layout. A null takes a
/// placeholder value (zero, `false`, an empty string); which values are null is kept by
/// the [`Leaf`].
pub(super) enum Values {
    /// A column of type `Null`: only nulls, counted.
    Null(usize),
    /// A byte per value, 1 for `true`.
    Bool(Vec<u8>),
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
    Utf8(Bytes<i32>),
    LargeUtf8(Bytes<i64>),
    /// `Utf8View`: kept as large strings, viewed when finished.
    View(Bytes<i64>),
    Hex(Bytes<i32>),
    LargeHex(Bytes<i64>),
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
            DataType::Boolean => Values::Bool(Vec::with_capacity(c)),
            DataType::Utf8 => Values::Utf8(Bytes::new(c)),
            DataType::LargeUtf8 => Values::LargeUtf8(Bytes::new(c)),
            DataType::Utf8View => Values::View(Bytes::new(c)),
            DataType::Binary => Values::Hex(Bytes::new(c)),
            DataType::LargeBinary => Values::LargeHex(Bytes::new(c)),
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
    fn append(&mut self, slot: &Slot, record: &[u8], spill: &Spill) {
        each_native!(self, c => c.append(slot),
            Values::I256(c) => match *slot {
                Slot::I256(i) => c.values.push(spill.wide[i]),
                _ => wrong_slot(slot),
            },
            Values::Utf8(b) => b.append(slot_text(slot, record, spill)),
            Values::LargeUtf8(b) => b.append(slot_text(slot, record, spill)),
            Values::View(b) => b.append(slot_text(slot, record, spill)),
            Values::Bool(b) => match slot {
                Slot::Bool(v) => b.push(u8::from(*v)),
                _ => wrong_slot(slot),
            },
            Values::Hex(h) => append_hex(h, slot_text(slot, record, spill)),
            Values::LargeHex(h) => append_hex(h, slot_text(slot, record, spill)),
            Values::Null(_) => wrong_slot(slot),
        )
    }

    /// Appends a null's placeholder.
    #[inline(always)]
    fn append_placeholder(&mut self) {
        each_native!(self, c => c.values.push(Default::default()),
            Values::I256(c) => c.values.push(Default::default()),
            Values::Null(n) => *n += 1,
            Values::Bool(b) => b.push(0),
            Values::Utf8(b) => b.end_value(),
            Values::LargeUtf8(b) => b.end_value(),
            Values::View(b) => b.end_value(),
            Values::Hex(b) => b.end_value(),
            Values::LargeHex(b) => b.end_value(),
        )
    }

    /// Keeps the first `len` values.
    fn truncate(&mut self, len: usize) {
        each_native!(self, c => c.values.truncate(len),
            Values::I256(c) => c.values.truncate(len),
            Values::Null(n) => *n = len.min(*n),
            Values::Bool(b) => b.truncate(len),
            Values::Utf8(b) => b.truncate(len),
            Values::LargeUtf8(b) => b.truncate(len),
            Values::View(b) => b.truncate(len),
            Values::Hex(b) => b.truncate(len),
            Values::LargeHex(b) => b.truncate(len),
        )
    }

    /// The values appended since the last call, `nulls` where they are null; the
    /// vectors are left sized for a batch like this one (finishing leaves them no
    /// capacity otherwise).
    fn finish(&mut self, nulls: Option<NullBuffer>) -> Result<ArrayRef, String> {
        Ok(each_native!(self, c => return c.finish(nulls),
            Values::I256(c) => return c.finish(nulls),
            Values::Null(n) => Arc::new(NullArray::new(std::mem::take(n))),
            Values::Bool(b) => {
                let bits = packed(b);
                b.clear();
                Arc::new(BooleanArray::new(bits, nulls))
            }
            Values::Utf8(b) => Arc::new(b.strings(nulls)?),
            Values::LargeUtf8(b) => Arc::new(b.strings(nulls)?),
            Values::View(b) => Arc::new(StringViewArray::from(&b.strings(nulls)?)),
            Values::Hex(b) => Arc::new(b.binaries(nulls)?),
            Values::LargeHex(b) => Arc::new(b.binaries(nulls)?),
        ))
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
    fn append(&mut self, slot: &Slot, record: &[u8], spill: &Spill) {
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
        let nulls = take_nulls(&mut self.valid);
        self.values.finish(nulls)
    }
}

/// The bits of `bytes` (a byte per value, 1 when set): eight bytes packed into one by a
/// multiplication, each byte's bit landing in the top byte in order.
fn packed(bytes: &[u8]) -> BooleanBuffer {
    let gather =
        |word: [u8; 8]| (u64::from_le_bytes(word).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8;
    let mut chunks = bytes.chunks_exact(8);
    let mut bits: Vec<u8> = (&mut chunks)
        .map(|c| gather(c.try_into().unwrap_or_default()))
        .collect();
    if !chunks.remainder().is_empty() {
        let mut last = [0u8; 8];
        last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        bits.push(gather(last));
    }
    BooleanBuffer::new(Buffer::from_vec(bits), 0, bytes.len())
}

/// The null buffer of the validity bytes `valid` (none if all are valid), which are
/// cleared.
fn take_nulls(valid: &mut Vec<u8>) -> Option<NullBuffer> {
    let nulls = valid.contains(&0).then(|| NullBuffer::new(packed(valid)));
    valid.clear();
    nulls
}

/// A column the scanner writes into: a scalar one, or a list, struct or map of columns.
/// A map is a list of entries whose keys and values are two columns.
// Built once per decoder and appended to for every value: a scalar column is kept in
// place (no pointer to follow per value); the size of the enum costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Column {
    Leaf(Leaf),
    List(Box<ListColumn>),
    Struct(Box<StructColumn>),
}

/// Lists and maps: where each value's items end, then the items (key, value pairs for
/// maps).
pub(super) struct ListColumn {
    /// The item field (a map's entries field).
    item: FieldRef,
    large: bool,
    ends: Vec<i64>,
    /// 1 for a valid value, 0 for a null.
    valid: Vec<u8>,
    /// Items, or a map's keys.
    pub(super) child: Column,
    /// A map's values, and whether its keys are sorted.
    pub(super) map: Option<(Column, bool)>,
}

impl ListColumn {
    /// A map's values column.
    pub(super) fn map_values(&mut self) -> &mut Column {
        match &mut self.map {
            Some((values, _)) => values,
            None => wrong_kind("map"),
        }
    }

    /// Ends a list (or map) whose items (entries) were appended to the child columns
    /// since the last one ended.
    #[inline(always)]
    pub(super) fn end_value(&mut self) {
        self.ends.push(self.child.len() as i64);
        self.valid.push(1);
    }
}

pub(super) struct StructColumn {
    fields: Fields,
    /// 1 for a valid value, 0 for a null.
    valid: Vec<u8>,
    /// One per field.
    pub(super) children: Vec<Column>,
}

impl StructColumn {
    /// Ends a struct whose fields were appended to the children.
    #[inline(always)]
    pub(super) fn end_value(&mut self) {
        self.valid.push(1);
    }
}

/// A column of another kind than its scanner node: a bug, since both are compiled from
/// the same type.
#[cold]
fn wrong_kind(expected: &str) -> ! {
    unreachable!("a JSON {expected} was given a column of another kind")
}

impl Column {
    /// This list or map column.
    #[inline(always)]
    pub(super) fn as_list(&mut self) -> &mut ListColumn {
        match self {
            Column::List(l) => l,
            _ => wrong_kind("list or map"),
        }
    }

    /// This struct column.
    #[inline(always)]
    pub(super) fn as_struct(&mut self) -> &mut StructColumn {
        match self {
            Column::Struct(s) => s,
            _ => wrong_kind("struct"),
        }
    }

    /// The column of a field of type `dt`; `None` for types the scanner refuses.
    pub(super) fn new(dt: &DataType, capacity: usize) -> Option<Column> {
        if let Some(leaf) = Leaf::new(dt, capacity) {
            return Some(Column::Leaf(leaf));
        }
        let list = |item: &FieldRef, large, child, map| {
            let mut ends = Vec::with_capacity(capacity + 1);
            ends.push(0);
            Column::List(Box::new(ListColumn {
                item: item.clone(),
                large,
                ends,
                valid: Vec::with_capacity(capacity),
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
                valid: Vec::with_capacity(capacity),
                children: fields
                    .iter()
                    .map(|f| Column::new(f.data_type(), capacity))
                    .collect::<Option<_>>()?,
            })),
            _ => return None,
        })
    }

    /// The number of values appended since the last [`Column::finish`].
    pub(super) fn len(&self) -> usize {
        match self {
            Column::Leaf(c) => c.valid.len(),
            Column::List(l) => l.valid.len(),
            Column::Struct(s) => s.valid.len(),
        }
    }

    /// Appends `slot`, a scalar the scanner converted from `record` for this column, or
    /// a null (of any column).
    #[inline(always)]
    pub(super) fn append(&mut self, slot: &Slot, record: &[u8], spill: &Spill) {
        match self {
            Column::Leaf(c) => c.append(slot, record, spill),
            column => match slot {
                Slot::Null => column.append_null(),
                _ => wrong_slot(slot),
            },
        }
    }

    /// Appends a null: a scalar's in place, a list's, struct's or map's out of line.
    #[inline(always)]
    pub(super) fn append_null(&mut self) {
        match self {
            Column::Leaf(c) => c.append_null(),
            nested => nested.append_nested_null(),
        }
    }

    fn append_nested_null(&mut self) {
        match self {
            Column::Leaf(c) => c.append_null(),
            Column::List(l) => {
                l.ends.push(l.child.len() as i64);
                l.valid.push(0);
            }
            Column::Struct(s) => {
                s.children.iter_mut().for_each(Column::append_null);
                s.valid.push(0);
            }
        }
    }

    /// Keeps the first `len` values (and, of a list or map, their items; of a struct,
    /// their fields).
    pub(super) fn truncate(&mut self, len: usize) {
        match self {
            Column::Leaf(c) => {
                c.values.truncate(len);
                c.valid.truncate(len);
            }
            Column::List(l) => {
                l.ends.truncate(len + 1);
                l.valid.truncate(len);
                let items = l.ends[len] as usize;
                l.child.truncate(items);
                if let Some((values, _)) = &mut l.map {
                    values.truncate(items);
                }
            }
            Column::Struct(s) => {
                s.valid.truncate(len);
                s.children.iter_mut().for_each(|c| c.truncate(len));
            }
        }
    }

    /// Takes back the last value: a key written again in one object keeps its last
    /// value.
    pub(super) fn pop(&mut self) {
        self.truncate(self.len() - 1);
    }

    /// The values appended since the last call.
    pub(super) fn finish(&mut self) -> Result<ArrayRef, String> {
        Ok(match self {
            Column::Leaf(c) => c.finish()?,
            Column::List(l) => {
                let child = l.child.finish()?;
                let ends = std::mem::replace(&mut l.ends, vec![0]);
                let nulls = take_nulls(&mut l.valid);
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
                                offsets32(ends)?,
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
                            OffsetBuffer::new(ends.into()),
                            child,
                            nulls,
                        )
                        .map_err(|e| e.to_string())?,
                    ),
                    None => Arc::new(
                        ListArray::try_new(l.item.clone(), offsets32(ends)?, child, nulls)
                            .map_err(|e| e.to_string())?,
                    ),
                }
            }
            Column::Struct(s) => {
                let len = s.valid.len();
                let nulls = take_nulls(&mut s.valid);
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
        /// The packed bits say of each value what its byte said.
        #[test]
        fn packed_validity_keeps_each_value_in_its_place(
            valid in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let bytes: Vec<u8> = valid.iter().map(|&v| u8::from(v)).collect();
            let nulls = arrow::buffer::NullBuffer::new(packed(&bytes));
            prop_assert_eq!(nulls.len(), valid.len());
            prop_assert_eq!(nulls.iter().collect::<Vec<_>>(), valid.clone());
            prop_assert_eq!(nulls.null_count(), valid.iter().filter(|v| !**v).count());
        }
    }
}
