//! A row's slot: its shard key's values in a fixed encoding, hashed with xxHash64 (seed 0) modulo
//! [`SLOT_COUNT`].
//!
//! The encoding (docs/rfcs/0001-cluster-data-path.md) is part of the storage format: a row's slot decides which shard
//! stores it, so the encoding never changes and depends only on values, never on the build, the platform or the
//! column's integer width (a literal `5` in a query and a `BIGINT` 5 in a row must land in the same slot). Per key
//! column, in order:
//!
//! | value | bytes |
//! |---|---|
//! | NULL | `0x00` |
//! | signed and unsigned integers, dates, times, timestamps | `0x01`, the value as a big-endian `i64` (unsigned values above `i64::MAX` as a big-endian `u64`) |
//! | floats | `0x01`, the big-endian bits of the value as an `f64`, with −0.0 as 0.0 and every NaN as one NaN |
//! | booleans | `0x01`, then `0x00` or `0x01` |
//! | strings and binaries | `0x01`, the length as a big-endian `u32`, the bytes |
//! | decimals | `0x01`, the unscaled value as a big-endian `i128` |

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, Time32MillisecondType, Time32SecondType, Time64MicrosecondType, Time64NanosecondType, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use quiver_meta::SLOT_COUNT;

use crate::error::{Error, Result};

/// One value of a shard key, as the encoding sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyValue<'a> {
    /// NULL.
    Null,
    /// A signed integer, date, time or timestamp.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A floating-point number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string's or binary's bytes.
    Bytes(&'a [u8]),
    /// A decimal's unscaled value.
    Decimal(i128),
}

impl KeyValue<'_> {
    /// Appends the value's encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match *self {
            KeyValue::Null => out.push(0),
            KeyValue::Int(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_be_bytes());
            }
            KeyValue::UInt(v) => match i64::try_from(v) {
                Ok(v) => KeyValue::Int(v).encode_into(out),
                Err(_) => {
                    out.push(1);
                    out.extend_from_slice(&v.to_be_bytes());
                }
            },
            KeyValue::Float(v) => {
                let v = if v == 0.0 {
                    0.0
                } else if v.is_nan() {
                    f64::NAN
                } else {
                    v
                };
                out.push(1);
                out.extend_from_slice(&v.to_bits().to_be_bytes());
            }
            KeyValue::Bool(v) => out.extend_from_slice(&[1, u8::from(v)]),
            KeyValue::Bytes(v) => {
                out.push(1);
                // Arrow arrays hold at most 2 GiB per value in practice; a longer one keeps the low 32 bits, which
                // still encodes it deterministically.
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            KeyValue::Decimal(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }
}

/// Returns the slot of an encoded key.
pub fn slot_of_encoded(encoded: &[u8]) -> u32 {
    (twox_hash::XxHash64::oneshot(0, encoded) % u64::from(SLOT_COUNT)) as u32
}

/// Returns the slot of a key given as values, in key column order.
pub fn slot_of_key(values: &[KeyValue<'_>]) -> u32 {
    let mut buf = Vec::with_capacity(16 * values.len());
    for v in values {
        v.encode_into(&mut buf);
    }
    slot_of_encoded(&buf)
}

/// Returns the slot of every row of `batch`, whose shard key is the columns at `key` (indices into the batch).
///
/// # Errors
///
/// [`Error::Internal`] when a key column is missing or of a type that cannot be a shard key (CREATE TABLE refuses
/// such keys, so this is a caller's mistake).
pub fn slots(batch: &RecordBatch, key: &[usize]) -> Result<Vec<u32>> {
    let columns = key
        .iter()
        .map(|i| {
            let array = batch
                .columns()
                .get(*i)
                .ok_or_else(|| Error::Internal(format!("shard key column {i} is missing from the batch")))?;
            Column::of(array)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut buf = Vec::with_capacity(32);
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        buf.clear();
        for c in &columns {
            c.value(row).encode_into(&mut buf);
        }
        out.push(slot_of_encoded(&buf));
    }
    Ok(out)
}

/// A key column, downcast once per batch.
enum Column<'a> {
    Int(&'a dyn Array, Box<dyn Fn(usize) -> i64 + 'a>),
    UInt(&'a dyn Array, Box<dyn Fn(usize) -> u64 + 'a>),
    Float(&'a dyn Array, Box<dyn Fn(usize) -> f64 + 'a>),
    Bool(&'a arrow::array::BooleanArray),
    Bytes(&'a dyn Array, Box<dyn Fn(usize) -> &'a [u8] + 'a>),
    Decimal(&'a arrow::array::Decimal128Array),
}

impl<'a> Column<'a> {
    fn of(array: &'a ArrayRef) -> Result<Self> {
        use DataType as T;
        let a: &'a dyn Array = array.as_ref();
        macro_rules! int {
            ($t:ty) => {{
                let p = a.as_primitive::<$t>();
                Column::Int(a, Box::new(move |i| i64::from(p.value(i))))
            }};
        }
        macro_rules! uint {
            ($t:ty) => {{
                let p = a.as_primitive::<$t>();
                Column::UInt(a, Box::new(move |i| u64::from(p.value(i))))
            }};
        }
        Ok(match a.data_type() {
            T::Int8 => int!(Int8Type),
            T::Int16 => int!(Int16Type),
            T::Int32 => int!(Int32Type),
            T::Int64 => int!(Int64Type),
            T::Date32 => int!(Date32Type),
            T::Date64 => int!(Date64Type),
            T::Time32(TimeUnit::Second) => int!(Time32SecondType),
            T::Time32(TimeUnit::Millisecond) => int!(Time32MillisecondType),
            T::Time64(TimeUnit::Microsecond) => int!(Time64MicrosecondType),
            T::Time64(TimeUnit::Nanosecond) => int!(Time64NanosecondType),
            T::Timestamp(TimeUnit::Second, _) => int!(TimestampSecondType),
            T::Timestamp(TimeUnit::Millisecond, _) => int!(TimestampMillisecondType),
            T::Timestamp(TimeUnit::Microsecond, _) => int!(TimestampMicrosecondType),
            T::Timestamp(TimeUnit::Nanosecond, _) => int!(TimestampNanosecondType),
            T::UInt8 => uint!(UInt8Type),
            T::UInt16 => uint!(UInt16Type),
            T::UInt32 => uint!(UInt32Type),
            T::UInt64 => uint!(UInt64Type),
            T::Float32 => {
                let p = a.as_primitive::<Float32Type>();
                Column::Float(a, Box::new(move |i| f64::from(p.value(i))))
            }
            T::Float64 => {
                let p = a.as_primitive::<Float64Type>();
                Column::Float(a, Box::new(move |i| p.value(i)))
            }
            T::Boolean => Column::Bool(a.as_boolean()),
            T::Utf8 => {
                let s = a.as_string::<i32>();
                Column::Bytes(a, Box::new(move |i| s.value(i).as_bytes()))
            }
            T::LargeUtf8 => {
                let s = a.as_string::<i64>();
                Column::Bytes(a, Box::new(move |i| s.value(i).as_bytes()))
            }
            T::Utf8View => {
                let s = a.as_string_view();
                Column::Bytes(a, Box::new(move |i| s.value(i).as_bytes()))
            }
            T::Binary => {
                let b = a.as_binary::<i32>();
                Column::Bytes(a, Box::new(move |i| b.value(i)))
            }
            T::LargeBinary => {
                let b = a.as_binary::<i64>();
                Column::Bytes(a, Box::new(move |i| b.value(i)))
            }
            T::BinaryView => {
                let b = a.as_binary_view();
                Column::Bytes(a, Box::new(move |i| b.value(i)))
            }
            T::Decimal128(_, _) => Column::Decimal(a.as_primitive::<Decimal128Type>()),
            other => return Err(Error::Internal(format!("a column of type {other} cannot be a shard key"))),
        })
    }

    fn value(&self, row: usize) -> KeyValue<'a> {
        match self {
            Column::Int(a, f) => {
                if a.is_null(row) {
                    KeyValue::Null
                } else {
                    KeyValue::Int(f(row))
                }
            }
            Column::UInt(a, f) => {
                if a.is_null(row) {
                    KeyValue::Null
                } else {
                    KeyValue::UInt(f(row))
                }
            }
            Column::Float(a, f) => {
                if a.is_null(row) {
                    KeyValue::Null
                } else {
                    KeyValue::Float(f(row))
                }
            }
            Column::Bool(a) => {
                if a.is_null(row) {
                    KeyValue::Null
                } else {
                    KeyValue::Bool(a.value(row))
                }
            }
            Column::Bytes(a, f) => {
                if a.is_null(row) {
                    KeyValue::Null
                } else {
                    KeyValue::Bytes(f(row))
                }
            }
            Column::Decimal(a) => {
                if a.is_null(row) {
                    KeyValue::Null
                } else {
                    KeyValue::Decimal(a.value(row))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int32Array, Int64Array, StringArray, UInt64Array};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(columns: Vec<ArrayRef>) -> RecordBatch {
        let fields: Vec<Field> =
            columns.iter().enumerate().map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true)).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
    }

    #[test]
    fn the_hash_is_published_xxhash64_so_slots_never_depend_on_the_build() {
        // xxHash64 of the empty input with seed 0, from the algorithm's specification.
        assert_eq!(twox_hash::XxHash64::oneshot(0, b""), 0xef46db3751d8e999);
        let mut buf = Vec::new();
        KeyValue::Int(1).encode_into(&mut buf);
        assert_eq!(buf, [1, 0, 0, 0, 0, 0, 0, 0, 1]);
        buf.clear();
        KeyValue::Bytes(b"ab").encode_into(&mut buf);
        KeyValue::Null.encode_into(&mut buf);
        assert_eq!(buf, [1, 0, 0, 0, 2, b'a', b'b', 0]);
    }

    #[test]
    fn equal_values_share_a_slot_whatever_the_integer_width() {
        let narrow = batch(vec![Arc::new(Int32Array::from(vec![Some(7), None, Some(-3)]))]);
        let wide = batch(vec![Arc::new(Int64Array::from(vec![Some(7), None, Some(-3)]))]);
        let unsigned = batch(vec![Arc::new(UInt64Array::from(vec![7, 8, 9]))]);
        let a = slots(&narrow, &[0]).expect("slots");
        assert_eq!(a, slots(&wide, &[0]).expect("slots"));
        assert_eq!(a[0], slots(&unsigned, &[0]).expect("slots")[0]);
        assert_eq!(a[0], slot_of_key(&[KeyValue::Int(7)]));
        assert_eq!(a[1], slot_of_key(&[KeyValue::Null]));
        assert!(a.iter().all(|s| *s < SLOT_COUNT));
        let floats = batch(vec![Arc::new(Float64Array::from(vec![0.0, -0.0, f64::NAN, -f64::NAN]))]);
        let f = slots(&floats, &[0]).expect("slots");
        assert_eq!((f[0], f[2]), (f[1], f[3]), "-0.0 is 0.0 and every NaN is one NaN");
    }

    #[test]
    fn a_composite_key_hashes_its_columns_in_order() {
        let b = batch(vec![Arc::new(StringArray::from(vec!["a", "b"])), Arc::new(Int64Array::from(vec![1, 2]))]);
        let both = slots(&b, &[0, 1]).expect("slots");
        assert_eq!(both[0], slot_of_key(&[KeyValue::Bytes(b"a"), KeyValue::Int(1)]));
        assert_eq!(both[1], slot_of_key(&[KeyValue::Bytes(b"b"), KeyValue::Int(2)]));
        let e = slots(&b, &[2]).expect_err("missing column").to_string();
        assert!(e.contains("column 2"), "{e}");
        let list = batch(vec![Arc::new(arrow::array::ListArray::new_null(
            Arc::new(Field::new("item", DataType::Int64, true)),
            1,
        ))]);
        let e = slots(&list, &[0]).expect_err("not hashable").to_string();
        assert!(e.contains("cannot be a shard key"), "{e}");
    }
}
