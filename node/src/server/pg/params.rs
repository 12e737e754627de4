//! Parameters of the extended protocol: the types announced for `$1`, `$2`, … and the decoding of bound values.
//!
//! [`announced_types`] picks the PostgreSQL type announced in `ParameterDescription` for each parameter: from the
//! type the planner inferred ([`wire_type`]); for a parameter the planner left untyped, from a cast written on it
//! (`$1::bigint`, which the planner does not use for inference); otherwise `text`, so the client sends text the
//! engine casts. [`decode`] turns each bound value into a [`ScalarValue`] of the type it was sent as: the type the
//! client declared in `Parse` when it declared one, the announced type otherwise; text and binary formats both. The
//! engine then casts each value to the type the planner inferred ([`Engine::execute_prepared`]), so a client that
//! binds an `int4` where the column is `int8` still works.
//!
//! Bytes from the network never panic here: a value of the wrong length or an unparsable text is an
//! [`Error::Parameter`] naming the parameter.
//!
//! [`Engine::execute_prepared`]: crate::engine::Engine::execute_prepared

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{DataType as SqlType, Expr, TimezoneInfo, Value, visit_expressions};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use pgwire::api::Type;
use pgwire::api::portal::{Format, Portal};

use crate::error::{Error, Result};

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Largest precision of a [`DataType::Decimal128`].
const DECIMAL128_PRECISION_MAX: u8 = 38;
/// The time zone a `timestamptz` parameter is decoded in (its instant does not depend on it).
const UTC: &str = "+00:00";

/// Returns the PostgreSQL type announced for a parameter the planner typed as `inferred`.
pub(super) fn wire_type(inferred: Option<&DataType>) -> Type {
    let Some(data_type) = inferred else {
        return Type::TEXT;
    };
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        // Unsigned 64-bit values do not fit int8; numeric holds all of them.
        DataType::UInt64 => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            Type::NUMERIC
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Time32(_) | DataType::Time64(_) => Type::TIME,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Dictionary(_, value) => wire_type(Some(value)),
        // Text, and every type without a scalar wire form here (lists, structs, intervals): the client sends text
        // and the engine casts it.
        _ => Type::TEXT,
    }
}

/// Returns the types announced for the parameters of `sql`, whose planned types are `inferred`.
pub(super) fn announced_types(sql: &str, inferred: &[Option<DataType>]) -> Vec<Type> {
    let casts = if inferred.iter().any(Option::is_none) { placeholder_casts(sql) } else { HashMap::new() };
    inferred
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            Some(t) => wire_type(Some(t)),
            None => casts.get(&(i + 1)).cloned().unwrap_or(Type::TEXT),
        })
        .collect()
}

/// Finds parameters written with a cast (`$1::bigint`, `CAST($2 AS date)`) and the PostgreSQL type cast to.
fn placeholder_casts(sql: &str) -> HashMap<usize, Type> {
    let mut casts = HashMap::new();
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return casts;
    };
    let _ = visit_expressions(&statements, |expr| {
        if let Expr::Cast { expr: inner, data_type, .. } = expr
            && let Expr::Value(value) = inner.as_ref()
            && let Value::Placeholder(placeholder) = &value.value
            && let Some(number) = placeholder.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
            && let Some(ty) = sql_type(data_type)
        {
            casts.entry(number).or_insert(ty);
        }
        ControlFlow::<()>::Continue(())
    });
    casts
}

/// The PostgreSQL type of a SQL type name, for the types parameters are commonly cast to.
fn sql_type(data_type: &SqlType) -> Option<Type> {
    Some(match data_type {
        SqlType::Bool | SqlType::Boolean => Type::BOOL,
        SqlType::Int2(_) | SqlType::SmallInt(_) => Type::INT2,
        SqlType::Int(_) | SqlType::Int4(_) | SqlType::Integer(_) => Type::INT4,
        SqlType::Int8(_) | SqlType::BigInt(_) => Type::INT8,
        SqlType::Real | SqlType::Float4 => Type::FLOAT4,
        SqlType::Float8 | SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float(_) => Type::FLOAT8,
        SqlType::Numeric(_) | SqlType::Decimal(_) | SqlType::Dec(_) => Type::NUMERIC,
        SqlType::Text
        | SqlType::Varchar(_)
        | SqlType::CharacterVarying(_)
        | SqlType::CharVarying(_)
        | SqlType::Char(_)
        | SqlType::Character(_)
        | SqlType::String(_) => Type::TEXT,
        SqlType::Bytea => Type::BYTEA,
        SqlType::Date => Type::DATE,
        SqlType::Time(..) => Type::TIME,
        SqlType::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => Type::TIMESTAMPTZ,
        SqlType::Timestamp(..) => Type::TIMESTAMP,
        _ => return None,
    })
}

/// Decodes the values bound to a portal; `announced` holds the type announced for each parameter.
///
/// # Errors
///
/// [`Error::Parameter`] when the format codes do not match the values, or a value is malformed for its type.
pub(super) fn decode<S>(portal: &Portal<S>, announced: &[Type]) -> Result<Vec<ScalarValue>> {
    let count = portal.parameters.len();
    if let Format::Individual(codes) = &portal.parameter_format
        && codes.len() != count
    {
        return Err(Error::Parameter {
            detail: format!("{} parameter format codes were sent for {count} parameters", codes.len()),
        });
    }
    let mut values = Vec::with_capacity(count);
    for (index, raw) in portal.parameters.iter().enumerate() {
        let declared = portal.statement.parameter_types.get(index).cloned().flatten().filter(|t| *t != Type::UNKNOWN);
        let ty = declared.or_else(|| announced.get(index).cloned()).unwrap_or(Type::TEXT);
        let binary = portal.parameter_format.is_binary(index);
        values.push(decode_value(index + 1, &ty, raw.as_deref(), binary)?);
    }
    Ok(values)
}

/// Decodes parameter `$number`, sent as `ty` in text or binary format; `None` is SQL NULL.
pub(super) fn decode_value(number: usize, ty: &Type, raw: Option<&[u8]>, binary: bool) -> Result<ScalarValue> {
    let bad = |detail: String| Error::Parameter { detail: format!("parameter ${number} ({}): {detail}", ty.name()) };
    let Some(raw) = raw else {
        return Ok(ScalarValue::try_from(&natural_type(ty)).unwrap_or(ScalarValue::Null));
    };
    if binary { decode_binary(ty, raw) } else { decode_text(ty, raw) }.map_err(bad)
}

/// The Arrow type a value of PostgreSQL type `ty` decodes to before the engine casts it.
fn natural_type(ty: &Type) -> DataType {
    match *ty {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 | Type::OID => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::NUMERIC => DataType::Decimal128(DECIMAL128_PRECISION_MAX, 0),
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Microsecond),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(UTC))),
        _ => DataType::Utf8,
    }
}

type Decoded = std::result::Result<ScalarValue, String>;

fn fixed<const N: usize>(raw: &[u8]) -> std::result::Result<[u8; N], String> {
    raw.try_into().map_err(|_| format!("binary value has {} bytes, expected {N}", raw.len()))
}

fn decode_binary(ty: &Type, raw: &[u8]) -> Decoded {
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(fixed::<1>(raw)?[0] != 0)),
        Type::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(fixed(raw)?))),
        Type::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(fixed(raw)?))),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(fixed(raw)?))),
        Type::OID => ScalarValue::Int64(Some(i64::from(u32::from_be_bytes(fixed(raw)?)))),
        Type::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(fixed(raw)?))),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(fixed(raw)?))),
        Type::NUMERIC => numeric_from_binary(raw)?,
        Type::BYTEA => ScalarValue::Binary(Some(raw.to_vec())),
        Type::DATE => {
            let days = i32::from_be_bytes(fixed(raw)?);
            let days = days.checked_add(PG_EPOCH_DAYS).ok_or("date out of range (infinity is not supported)")?;
            ScalarValue::Date32(Some(days))
        }
        Type::TIME => ScalarValue::Time64Microsecond(Some(i64::from_be_bytes(fixed(raw)?))),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let micros = i64::from_be_bytes(fixed(raw)?)
                .checked_add(PG_EPOCH_MICROS)
                .ok_or("timestamp out of range (infinity is not supported)")?;
            let tz = (*ty == Type::TIMESTAMPTZ).then(|| Arc::from(UTC));
            ScalarValue::TimestampMicrosecond(Some(micros), tz)
        }
        Type::UUID => {
            let b: [u8; 16] = fixed(raw)?;
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            ScalarValue::Utf8(Some(format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            )))
        }
        // jsonb's binary form is a version byte (1) and the JSON text.
        Type::JSONB => match raw.split_first() {
            Some((1, text)) => ScalarValue::Utf8(Some(utf8(text)?.to_string())),
            _ => return Err("unsupported jsonb binary version".into()),
        },
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::UNKNOWN => {
            ScalarValue::Utf8(Some(utf8(raw)?.to_string()))
        }
        _ => return Err("the binary format is not supported for this type; send the value as text".into()),
    })
}

fn utf8(raw: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(raw).map_err(|e| format!("invalid UTF-8: {e}"))
}

fn decode_text(ty: &Type, raw: &[u8]) -> Decoded {
    let text = utf8(raw)?;
    let trimmed = text.trim();
    let invalid = || format!("invalid input syntax: \"{text}\"");
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(parse_bool(trimmed).ok_or_else(invalid)?)),
        Type::INT2 => ScalarValue::Int16(Some(trimmed.parse().map_err(|_| invalid())?)),
        Type::INT4 => ScalarValue::Int32(Some(trimmed.parse().map_err(|_| invalid())?)),
        Type::INT8 => ScalarValue::Int64(Some(trimmed.parse().map_err(|_| invalid())?)),
        Type::OID => ScalarValue::Int64(Some(i64::from(trimmed.parse::<u32>().map_err(|_| invalid())?))),
        // Rust's float parser accepts PostgreSQL's NaN, Infinity and -Infinity.
        Type::FLOAT4 => ScalarValue::Float32(Some(trimmed.parse().map_err(|_| invalid())?)),
        Type::FLOAT8 => ScalarValue::Float64(Some(trimmed.parse().map_err(|_| invalid())?)),
        Type::NUMERIC => {
            let (mantissa, scale) = parse_numeric(trimmed).ok_or_else(invalid)?;
            ScalarValue::Decimal128(Some(mantissa), DECIMAL128_PRECISION_MAX, scale)
        }
        Type::BYTEA => ScalarValue::Binary(Some(parse_bytea(text).ok_or_else(invalid)?)),
        // Arrow's string-to-temporal casts accept PostgreSQL's ISO output (with `T` or a space, fractional
        // seconds, and for timestamptz an offset such as `+01`, `+0100` or `+01:00`).
        Type::DATE | Type::TIME | Type::TIMESTAMP | Type::TIMESTAMPTZ => ScalarValue::Utf8(Some(trimmed.to_string()))
            .cast_to(&natural_type(ty))
            .map_err(|e| format!("{}: {e}", invalid()))?,
        // Text and every other type: the engine casts the text to the parameter's type.
        _ => ScalarValue::Utf8(Some(text.to_string())),
    })
}

/// Parses PostgreSQL's boolean input forms.
fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Parses a decimal number (`-12.50`, `1e3`, `.5`) into a mantissa and scale of a `Decimal128`.
pub(super) fn parse_numeric(text: &str) -> Option<(i128, i8)> {
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (digits, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], unsigned[at + 1..].parse::<i32>().ok()?),
        None => (unsigned, 0),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut mantissa: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    let mut scale = i32::try_from(frac.len()).ok()?.checked_sub(exponent)?;
    if scale < 0 {
        mantissa = mantissa.checked_mul(10i128.checked_pow(scale.unsigned_abs())?)?;
        scale = 0;
    }
    let scale = i8::try_from(scale).ok().filter(|s| *s <= DECIMAL128_PRECISION_MAX as i8)?;
    if mantissa >= 10i128.pow(u32::from(DECIMAL128_PRECISION_MAX)) {
        return None;
    }
    Some((if negative { -mantissa } else { mantissa }, scale))
}

/// Decodes PostgreSQL's binary numeric: digit count, weight, sign, display scale, then base-10000 digits.
fn numeric_from_binary(raw: &[u8]) -> Decoded {
    const NUMERIC_NEG: u16 = 0x4000;
    const NUMERIC_POS: u16 = 0x0000;
    let header: [u8; 8] = raw.get(..8).and_then(|h| h.try_into().ok()).ok_or("numeric value is too short")?;
    let ndigits = usize::from(u16::from_be_bytes([header[0], header[1]]));
    let weight = i32::from(i16::from_be_bytes([header[2], header[3]]));
    let sign = u16::from_be_bytes([header[4], header[5]]);
    let dscale = i32::from(u16::from_be_bytes([header[6], header[7]]));
    if sign != NUMERIC_POS && sign != NUMERIC_NEG {
        return Err("NaN and infinite numerics are not supported".into());
    }
    let digits = &raw[8..];
    if digits.len() != ndigits * 2 {
        return Err(format!("numeric value announces {ndigits} digits but carries {} bytes", digits.len()));
    }
    let overflow = || "numeric value does not fit 38 digits".to_string();
    let mut mantissa: i128 = 0;
    for pair in digits.chunks_exact(2) {
        let digit = u16::from_be_bytes([pair[0], pair[1]]);
        if digit >= 10_000 {
            return Err(format!("invalid numeric digit {digit}"));
        }
        mantissa = mantissa.checked_mul(10_000).and_then(|m| m.checked_add(i128::from(digit))).ok_or_else(overflow)?;
    }
    // `mantissa` holds value × 10000^(ndigits - 1 - weight); bring it to value × 10^dscale.
    let ndigits = i32::try_from(ndigits).map_err(|_| overflow())?;
    let fraction_digits = 4 * (ndigits - 1 - weight);
    let shift = dscale - fraction_digits;
    if ndigits > 0 {
        mantissa = if shift >= 0 {
            10i128.checked_pow(shift.unsigned_abs()).and_then(|p| mantissa.checked_mul(p)).ok_or_else(overflow)?
        } else {
            // These are trailing zeros of the last base-10000 digit beyond the display scale.
            mantissa / 10i128.checked_pow(shift.unsigned_abs()).ok_or_else(overflow)?
        };
    }
    let scale = i8::try_from(dscale).ok().filter(|s| *s <= DECIMAL128_PRECISION_MAX as i8).ok_or_else(overflow)?;
    if mantissa >= 10i128.pow(u32::from(DECIMAL128_PRECISION_MAX)) {
        return Err(overflow());
    }
    let mantissa = if sign == NUMERIC_NEG { -mantissa } else { mantissa };
    Ok(ScalarValue::Decimal128(Some(mantissa), DECIMAL128_PRECISION_MAX, scale))
}

/// Parses bytea input: hex (`\x0a0b`) or escape format (`a\000b`, `\\`).
fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("\\x") {
        let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !digits.len().is_multiple_of(2) {
            return None;
        }
        return digits
            .chunks_exact(2)
            .map(|pair| std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok()))
            .collect();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = std::str::from_utf8(bytes.get(i + 1..i + 4)?).ok()?;
            out.push(u8::from_str_radix(octal, 8).ok()?);
            i += 4;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(ty: &Type, s: &str) -> ScalarValue {
        decode_value(1, ty, Some(s.as_bytes()), false).expect("decodes")
    }

    fn binary(ty: &Type, b: &[u8]) -> ScalarValue {
        decode_value(1, ty, Some(b), true).expect("decodes")
    }

    #[test]
    fn announces_postgres_types_for_inferred_parameters() {
        assert_eq!(wire_type(Some(&DataType::Int64)), Type::INT8);
        assert_eq!(wire_type(Some(&DataType::UInt32)), Type::INT8);
        assert_eq!(wire_type(Some(&DataType::UInt64)), Type::NUMERIC);
        assert_eq!(wire_type(Some(&DataType::Decimal128(10, 2))), Type::NUMERIC);
        assert_eq!(wire_type(Some(&DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())))), Type::TIMESTAMPTZ);
        assert_eq!(wire_type(Some(&DataType::Utf8View)), Type::TEXT);
        assert_eq!(wire_type(None), Type::TEXT);
    }

    #[test]
    fn announces_the_type_a_parameter_is_cast_to() {
        let types = announced_types(
            "SELECT $1::BIGINT + 1, CAST($2 AS timestamptz), $3, $4::text",
            &[None, None, None, Some(DataType::Int32)],
        );
        assert_eq!(types, vec![Type::INT8, Type::TIMESTAMPTZ, Type::TEXT, Type::INT4]);
    }

    #[test]
    fn decodes_text_parameters() {
        assert_eq!(text(&Type::INT8, " 42 "), ScalarValue::Int64(Some(42)));
        assert_eq!(text(&Type::BOOL, "t"), ScalarValue::Boolean(Some(true)));
        assert_eq!(text(&Type::FLOAT8, "-Infinity"), ScalarValue::Float64(Some(f64::NEG_INFINITY)));
        assert_eq!(text(&Type::NUMERIC, "-12.50"), ScalarValue::Decimal128(Some(-1250), 38, 2));
        assert_eq!(text(&Type::NUMERIC, "1.5e3"), ScalarValue::Decimal128(Some(1500), 38, 0));
        assert_eq!(text(&Type::BYTEA, "\\x0aFF"), ScalarValue::Binary(Some(vec![0x0a, 0xff])));
        assert_eq!(text(&Type::BYTEA, "a\\\\\\001"), ScalarValue::Binary(Some(vec![b'a', b'\\', 1])));
        assert_eq!(text(&Type::DATE, "2024-02-29"), ScalarValue::Date32(Some(19_782)));
        assert_eq!(
            text(&Type::TIMESTAMP, "2024-01-02 03:04:05.5"),
            ScalarValue::TimestampMicrosecond(Some(1_704_164_645_500_000), None)
        );
        assert_eq!(
            text(&Type::TIMESTAMPTZ, "2024-01-02 04:04:05+01:00"),
            ScalarValue::TimestampMicrosecond(Some(1_704_164_645_000_000), Some(UTC.into()))
        );
        assert_eq!(text(&Type::TEXT, "héllo"), ScalarValue::Utf8(Some("héllo".into())));
    }

    #[test]
    fn decodes_binary_parameters() {
        assert_eq!(binary(&Type::INT4, &7i32.to_be_bytes()), ScalarValue::Int32(Some(7)));
        assert_eq!(binary(&Type::FLOAT8, &1.5f64.to_be_bytes()), ScalarValue::Float64(Some(1.5)));
        // 2000-01-02 is day 1 after PostgreSQL's epoch.
        assert_eq!(binary(&Type::DATE, &1i32.to_be_bytes()), ScalarValue::Date32(Some(10_958)));
        assert_eq!(
            binary(&Type::TIMESTAMP, &1_000_000i64.to_be_bytes()),
            ScalarValue::TimestampMicrosecond(Some(PG_EPOCH_MICROS + 1_000_000), None)
        );
        // -1234.5600 as PostgreSQL writes it: digits 1234 and 5600, weight 0, sign negative, display scale 4.
        let mut numeric = Vec::new();
        for v in [2u16, 0, 0x4000, 4, 1234, 5600] {
            numeric.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(binary(&Type::NUMERIC, &numeric), ScalarValue::Decimal128(Some(-12_345_600), 38, 4));
        // 120000 with dscale 0: one digit 12, weight 1.
        let mut numeric = Vec::new();
        for v in [1u16, 1, 0, 0, 12] {
            numeric.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(binary(&Type::NUMERIC, &numeric), ScalarValue::Decimal128(Some(120_000), 38, 0));
        // 0.05 with dscale 2: digit 500, weight -1.
        let mut numeric = Vec::new();
        for v in [1u16, 0xffff, 0, 2, 500] {
            numeric.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(binary(&Type::NUMERIC, &numeric), ScalarValue::Decimal128(Some(5), 38, 2));
    }

    #[test]
    fn malformed_parameters_are_errors_naming_the_parameter() {
        let e = decode_value(2, &Type::INT8, Some(&[1, 2, 3]), true).expect_err("short");
        assert!(e.to_string().contains("$2"), "{e}");
        assert_eq!(e.sqlstate(), "08P01");
        assert!(decode_value(1, &Type::INT4, Some(b"x1"), false).is_err());
        assert!(decode_value(1, &Type::NUMERIC, Some(b"1.2.3"), false).is_err());
        assert!(decode_value(1, &Type::NUMERIC, Some(&[0, 1]), true).is_err());
        assert!(decode_value(1, &Type::BYTEA, Some(b"\\x0"), false).is_err());
        assert_eq!(decode_value(1, &Type::INT8, None, true).expect("null"), ScalarValue::Int64(None));
    }
}
