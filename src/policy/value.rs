//! Tenant values: the scalar every document of a field-mode collection carries, compared as MongoDB compares.
//!
//! MongoDB's `$eq` matches numbers across types (`42 == NumberLong(42) == 42.0 == NumberDecimal("42")`), so a
//! policy with `value = 42` for one tenant and `{ "$numberLong" = "42" }` for another would let each read the
//! other's rows. [`TenantValue`] is the only way a tenant value exists in a compiled policy: it is one of the
//! types the proxy can compare exactly (strings, integers, ObjectIds, binary/UUIDs), and [`TenantValue::matches`]
//! and [`TenantValue::canonical_key`] follow the server's equality, so `check` can refuse collisions and the
//! verify and stamping checks accept what the server would treat as the same value (the Node.js driver sends
//! integers above 2^31 as doubles).
//!
//! What it must never do: compare with Rust's structural equality, which says `Int32(42) != Int64(42)`.

use bson::raw::{CStr, CString};
use bson::{Bson, RawBson, RawBsonRef};

/// The tenant field of a field-mode rule: a plain top-level field name, valid by construction (non-empty, no
/// `$` prefix, no `.`, no NUL), so every condition and stamp built with it is the one intended.
///
/// The name is also held shared (`Arc<str>`): every command on a field-mode namespace hands it to its reply's
/// plan ([`crate::engine::Withhold`]), which then takes a reference instead of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldName {
    name: CString,
    shared: std::sync::Arc<str>,
}

impl FieldName {
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.starts_with('$') || name.contains('.') {
            return Err(format!("{name:?} is not a plain top-level field name"));
        }
        let cstring = CString::try_from(name).map_err(|_| format!("{name:?} contains NUL"))?;
        Ok(Self { name: cstring, shared: name.into() })
    }

    pub fn as_str(&self) -> &str {
        self.name.as_str()
    }

    pub fn as_cstr(&self) -> &CStr {
        self.name.as_ref()
    }

    /// The name, shared.
    pub fn shared(&self) -> std::sync::Arc<str> {
        self.shared.clone()
    }
}

impl std::ops::Deref for FieldName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for FieldName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for FieldName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's value, valid by construction.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantValue {
    bson: Bson,
    raw: RawBson,
}

impl TenantValue {
    /// Accepts the types whose equality the proxy can decide exactly: non-empty strings, Int32/Int64,
    /// ObjectIds and binary (UUIDs). Doubles and decimals are refused: their equality with other numbers is
    /// the server's to decide, and integers cover every use of a numeric tenant id.
    pub fn new(bson: Bson) -> Result<Self, String> {
        match &bson {
            Bson::String(s) if s.is_empty() => return Err("must not be an empty string".into()),
            Bson::String(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::ObjectId(_) | Bson::Binary(_) => {}
            other => {
                return Err(format!(
                    "a tenant value must be a string, an integer, an ObjectId or a UUID/binary, not {:?}",
                    other.element_type()
                ))
            }
        }
        let raw = RawBson::try_from(bson.clone()).map_err(|e| format!("cannot be encoded: {e}"))?;
        Ok(Self { bson, raw })
    }

    /// The value as configured, to stamp and to build conditions with.
    pub fn raw(&self) -> &RawBson {
        &self.raw
    }

    pub fn bson(&self) -> &Bson {
        &self.bson
    }

    fn integer(&self) -> Option<i64> {
        match self.bson {
            Bson::Int32(n) => Some(i64::from(n)),
            Bson::Int64(n) => Some(n),
            _ => None,
        }
    }

    /// Whether the server's `$eq` would find `given` equal to this value.
    pub fn matches(&self, given: RawBsonRef<'_>) -> bool {
        match self.integer() {
            Some(n) => numeric_equals(given, n),
            None => given == self.raw.as_raw_bson_ref(),
        }
    }

    /// Whether `given` is this value in exactly the configured type (nothing to canonicalise).
    pub fn is_exact(&self, given: RawBsonRef<'_>) -> bool {
        given == self.raw.as_raw_bson_ref()
    }

    /// A key equal for two values exactly when the server would find them equal.
    pub fn canonical_key(&self) -> String {
        match self.integer() {
            Some(n) => format!("number:{n}"),
            None => format!("{:?}", self.bson),
        }
    }
}

/// Whether a BSON number equals the integer `n` as the server compares numbers.
fn numeric_equals(given: RawBsonRef<'_>, n: i64) -> bool {
    match given {
        RawBsonRef::Int32(v) => i64::from(v) == n,
        RawBsonRef::Int64(v) => v == n,
        // Inside [-2^63, 2^63) an integral double converts to i64 exactly; outside, `as` would saturate.
        RawBsonRef::Double(d) => {
            d.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&d) && d as i64 == n
        }
        RawBsonRef::Decimal128(d) => decimal_equals(&d.to_string(), n),
        _ => false,
    }
}

/// Whether a decimal string is zero.
pub fn decimal_is_zero(text: &str) -> bool {
    decimal_equals(text, 0)
}

/// Whether a decimal string (`42`, `-4.20E+1`, `42.000`) denotes exactly the integer `n`.
fn decimal_equals(text: &str, n: i64) -> bool {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match unsigned.split_once(['E', 'e']) {
        Some((m, e)) => match e.parse::<i32>() {
            Ok(e) => (m, e),
            Err(_) => return false,
        },
        None => (unsigned, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit())
    {
        return false;
    }
    let digits = format!("{int_part}{frac_part}");
    // value = digits × 10^(exponent − len(frac_part))
    let Ok(frac_len) = i32::try_from(frac_part.len()) else { return false };
    let shift = exponent - frac_len;
    let integer_digits = if shift >= 0 {
        if shift > 40 {
            return digits.bytes().all(|b| b == b'0') && n == 0;
        }
        let zeros = usize::try_from(shift).unwrap_or(0);
        format!("{digits}{}", "0".repeat(zeros))
    } else {
        let cut = usize::try_from(-shift).unwrap_or(usize::MAX);
        if cut > digits.len() {
            return digits.bytes().all(|b| b == b'0') && n == 0;
        }
        let (whole, fraction) = digits.split_at(digits.len() - cut);
        if !fraction.bytes().all(|b| b == b'0') {
            return false;
        }
        whole.to_owned()
    };
    let trimmed = integer_digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return n == 0;
    }
    let expected = n.unsigned_abs().to_string();
    trimmed == expected && (negative == (n < 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::Decimal128;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal128 {
        Decimal128::from_str(s).unwrap()
    }

    #[test]
    fn integers_match_across_numeric_types_like_the_server() {
        let v = TenantValue::new(Bson::Int32(42)).unwrap();
        assert!(v.matches(RawBsonRef::Int32(42)));
        assert!(v.matches(RawBsonRef::Int64(42)));
        assert!(v.matches(RawBsonRef::Double(42.0)));
        assert!(v.matches(RawBsonRef::Decimal128(dec("42"))));
        assert!(v.matches(RawBsonRef::Decimal128(dec("42.000"))));
        assert!(v.matches(RawBsonRef::Decimal128(dec("4.2E+1"))));
        assert!(!v.matches(RawBsonRef::Double(42.5)));
        assert!(!v.matches(RawBsonRef::Decimal128(dec("42.1"))));
        assert!(!v.matches(RawBsonRef::Decimal128(dec("-42"))));
        assert!(!v.matches(RawBsonRef::String("42")));
        assert!(!v.matches(RawBsonRef::Double(f64::NAN)));
        let big = TenantValue::new(Bson::Int64(3_000_000_000)).unwrap();
        assert!(big.matches(RawBsonRef::Double(3e9)));
        let max = TenantValue::new(Bson::Int64(i64::MAX)).unwrap();
        // 2^63 as a double saturates to i64::MAX when cast, but is not equal to it.
        assert!(!max.matches(RawBsonRef::Double(9.223_372_036_854_776e18)));
        let zero = TenantValue::new(Bson::Int32(0)).unwrap();
        assert!(zero.matches(RawBsonRef::Decimal128(dec("-0"))));
        assert!(zero.matches(RawBsonRef::Double(-0.0)));
    }

    #[test]
    fn equal_numbers_have_one_key_and_other_types_keep_theirs() {
        let a = TenantValue::new(Bson::Int32(42)).unwrap();
        let b = TenantValue::new(Bson::Int64(42)).unwrap();
        assert_eq!(a.canonical_key(), b.canonical_key());
        let s = TenantValue::new(Bson::String("42".into())).unwrap();
        assert_ne!(a.canonical_key(), s.canonical_key());
        assert!(s.matches(RawBsonRef::String("42")) && !s.matches(RawBsonRef::String("42 ")));
        assert!(!s.matches(RawBsonRef::Int32(42)));
    }

    #[test]
    fn only_exactly_comparable_types_are_tenant_values() {
        assert!(TenantValue::new(Bson::Double(1.0)).is_err());
        assert!(TenantValue::new(Bson::Decimal128(dec("1"))).is_err());
        assert!(TenantValue::new(Bson::Boolean(true)).is_err());
        assert!(TenantValue::new(Bson::String(String::new())).is_err());
        assert!(TenantValue::new(Bson::ObjectId(bson::oid::ObjectId::new())).is_ok());
    }
}
