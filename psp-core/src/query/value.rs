//! Typed values (`Value` in `schema/query.capnp`): what records hold and results carry.
//!
//! Values have one total order, used for grouping, sorting, min and max: null first, then by type
//! (bool, numbers, text, timestamp), and numbers (int, decimal, float) by numeric value, so `2` and
//! `2.00` are the same group key. Floats order by IEEE total order.

use std::cmp::Ordering;
use std::fmt;

use super::QueryError;

/// The type of a field or column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ValueType {
    /// Only nulls.
    Null,
    /// Truth values.
    Bool,
    /// Signed 64-bit integers.
    Int,
    /// 64-bit floats.
    Float,
    /// UTF-8 text.
    Text,
    /// Microseconds since the Unix epoch.
    Timestamp,
    /// Exact decimals.
    Decimal,
}

impl ValueType {
    /// Whether values of this type are numbers (int, float, decimal).
    pub fn is_numeric(self) -> bool {
        matches!(self, ValueType::Int | ValueType::Float | ValueType::Decimal)
    }

    /// The schema's name for the type, as configs spell it.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::Null => "null",
            ValueType::Bool => "bool",
            ValueType::Int => "int",
            ValueType::Float => "float",
            ValueType::Text => "text",
            ValueType::Timestamp => "timestamp",
            ValueType::Decimal => "decimal",
        }
    }
}

impl std::str::FromStr for ValueType {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name {
            "bool" => ValueType::Bool,
            "int" => ValueType::Int,
            "float" => ValueType::Float,
            "text" => ValueType::Text,
            "timestamp" => ValueType::Timestamp,
            "decimal" => ValueType::Decimal,
            other => {
                return Err(format!(
                    "unknown type {other:?} (bool, int, float, text, timestamp or decimal)"
                ));
            }
        })
    }
}

/// Most digits after the decimal point a [`Decimal`] may carry.
pub const MAX_SCALE: u8 = 18;

/// The exact number `units / 10^scale`.
#[derive(Clone, Copy, Debug)]
pub struct Decimal {
    units: i64,
    scale: u8,
}

impl Decimal {
    /// `units / 10^scale`; `None` when the scale is over [`MAX_SCALE`].
    pub fn new(units: i64, scale: u8) -> Option<Self> {
        (scale <= MAX_SCALE).then_some(Self { units, scale })
    }

    /// The number scaled by 10^scale.
    pub fn units(&self) -> i64 {
        self.units
    }

    /// Digits after the decimal point.
    pub fn scale(&self) -> u8 {
        self.scale
    }

    /// The value at a larger scale, exactly; `None` on overflow.
    pub fn rescale(&self, scale: u8) -> Option<Decimal> {
        let factor = 10i64.checked_pow(u32::from(scale.checked_sub(self.scale)?))?;
        Some(Decimal {
            units: self.units.checked_mul(factor)?,
            scale,
        })
    }

    /// The exact sum at the larger of the two scales; `None` on overflow.
    pub fn checked_add(&self, other: &Decimal) -> Option<Decimal> {
        if self.scale == other.scale {
            // The usual case (one currency, one scale): no rescaling.
            return Some(Decimal {
                units: self.units.checked_add(other.units)?,
                scale: self.scale,
            });
        }
        let scale = self.scale.max(other.scale);
        let (a, b) = (self.rescale(scale)?, other.rescale(scale)?);
        Some(Decimal {
            units: a.units.checked_add(b.units)?,
            scale,
        })
    }

    /// `self / divisor`, rounded half away from zero to `scale` digits (more or fewer than
    /// `self` has); `None` when `divisor` is 0 or the result leaves the 64-bit range.
    pub fn div_round(&self, divisor: u64, scale: u8) -> Option<Decimal> {
        if divisor == 0 || scale > MAX_SCALE {
            return None;
        }
        // units / 10^self.scale / divisor = (units * 10^scale) / (divisor * 10^self.scale) / 10^scale;
        // both products fit in i128 (at most about 9.2e36 and 1.8e37).
        let numerator = i128::from(self.units) * 10i128.pow(u32::from(scale));
        let denominator = i128::from(divisor) * 10i128.pow(u32::from(self.scale));
        let quotient = numerator / denominator;
        let remainder = numerator % denominator;
        let rounded = if 2 * remainder.abs() >= denominator {
            quotient + numerator.signum()
        } else {
            quotient
        };
        Some(Decimal {
            units: i64::try_from(rounded).ok()?,
            scale,
        })
    }

    /// Compares numerically across scales, without overflow.
    fn cmp_value(&self, other: &Decimal) -> Ordering {
        let scale = self.scale.max(other.scale);
        let widen = |d: &Decimal| i128::from(d.units) * 10i128.pow(u32::from(scale - d.scale));
        widen(self).cmp(&widen(other))
    }

    /// Compares exactly with a float, in the order [`ValueRef::total_cmp`] defines: by numeric
    /// value, with `-0.0` just below zero (so that order stays transitive together with floats'
    /// own total order), infinities and NaNs past every finite number as `f64::total_cmp` puts
    /// them. No rounding: comparing through `to_f64` would make `2^53` and `2^53 + 1` both equal
    /// to the float `2^53` and not to each other, and an order that is not transitive lets the
    /// order of arrival change a merge, or a sort misbehave.
    pub(crate) fn cmp_float(&self, float: f64) -> Ordering {
        if float.is_nan() {
            return if float.is_sign_negative() {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        if float.is_infinite() {
            return if float > 0.0 {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let exact_sign = self.units.signum();
        let float_sign = if float > 0.0 {
            1
        } else if float < 0.0 {
            -1
        } else {
            0
        };
        if exact_sign != float_sign {
            return match exact_sign.cmp(&float_sign) {
                // Zero against -0.0: zero sits just above it.
                Ordering::Equal => Ordering::Greater,
                other => other,
            };
        }
        if exact_sign == 0 {
            // Both zero: equal to +0.0, above -0.0.
            return if float.is_sign_negative() {
                Ordering::Greater
            } else {
                Ordering::Equal
            };
        }
        // Same sign, both nonzero: compare magnitudes |units| / 10^scale and m * 2^e exactly.
        let bits = float.abs().to_bits();
        let (raw_exponent, fraction) = ((bits >> 52) as i32, bits & ((1 << 52) - 1));
        let (mantissa, exponent) = if raw_exponent == 0 {
            (fraction, -1074)
        } else {
            (fraction | (1 << 52), raw_exponent - 1075)
        };
        let exact = u128::from(self.units.unsigned_abs());
        // m * 10^scale < 2^53 * 10^18 < 2^113: fits.
        let float_scaled = u128::from(mantissa) * 10u128.pow(u32::from(self.scale));
        let magnitude = |exact: u128, float_scaled: u128| -> Ordering {
            if exponent >= 0 {
                // exact vs float_scaled * 2^e
                let shift = exponent as u32;
                if shift >= float_scaled.leading_zeros() {
                    Ordering::Less
                } else {
                    exact.cmp(&(float_scaled << shift))
                }
            } else {
                // exact * 2^-e vs float_scaled
                let shift = exponent.unsigned_abs();
                if shift >= exact.leading_zeros() {
                    Ordering::Greater
                } else {
                    (exact << shift).cmp(&float_scaled)
                }
            }
        };
        let ordering = magnitude(exact, float_scaled);
        if exact_sign < 0 {
            ordering.reverse()
        } else {
            ordering
        }
    }

    /// The value as a float (for comparisons with floats and float averages).
    pub fn to_f64(&self) -> f64 {
        self.units as f64 / 10f64.powi(i32::from(self.scale))
    }

    /// Parses `-1234.50`-style text exactly.
    pub fn parse(text: &str) -> Option<Decimal> {
        let text = text.trim();
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && fraction.is_empty()
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let scale = u8::try_from(fraction.len())
            .ok()
            .filter(|&s| s <= MAX_SCALE)?;
        let mut units: i64 = 0;
        for b in whole.bytes().chain(fraction.bytes()) {
            units = units.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
        }
        Some(Decimal {
            units: if negative { -units } else { units },
            scale,
        })
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.cmp_value(other) == Ordering::Equal
    }
}

impl Eq for Decimal {}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.units);
        }
        let divisor = 10u64.pow(u32::from(self.scale));
        let magnitude = self.units.unsigned_abs();
        let sign = if self.units < 0 { "-" } else { "" };
        write!(
            f,
            "{sign}{}.{:0width$}",
            magnitude / divisor,
            magnitude % divisor,
            width = usize::from(self.scale)
        )
    }
}

/// An owned typed value.
#[derive(Clone, Debug)]
pub enum Value {
    /// No value.
    Null,
    /// A truth value.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// Microseconds since the Unix epoch.
    Timestamp(i64),
    /// An exact decimal.
    Decimal(Decimal),
}

/// A value borrowed from a record, e.g. text pointing straight into a memory-mapped archive.
#[derive(Clone, Copy, Debug)]
pub enum ValueRef<'a> {
    /// No value.
    Null,
    /// A truth value.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text, borrowed.
    Text(&'a str),
    /// Microseconds since the Unix epoch.
    Timestamp(i64),
    /// An exact decimal.
    Decimal(Decimal),
}

impl Value {
    /// This value, borrowed.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Int(i) => ValueRef::Int(*i),
            Value::Float(x) => ValueRef::Float(*x),
            Value::Text(t) => ValueRef::Text(t),
            Value::Timestamp(t) => ValueRef::Timestamp(*t),
            Value::Decimal(d) => ValueRef::Decimal(*d),
        }
    }

    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        self.as_ref().value_type()
    }

    /// Whether this is null.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl ValueRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> Value {
        match *self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::Float(x) => Value::Float(x),
            ValueRef::Text(t) => Value::Text(t.to_owned()),
            ValueRef::Timestamp(t) => Value::Timestamp(t),
            ValueRef::Decimal(d) => Value::Decimal(d),
        }
    }

    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            ValueRef::Null => ValueType::Null,
            ValueRef::Bool(_) => ValueType::Bool,
            ValueRef::Int(_) => ValueType::Int,
            ValueRef::Float(_) => ValueType::Float,
            ValueRef::Text(_) => ValueType::Text,
            ValueRef::Timestamp(_) => ValueType::Timestamp,
            ValueRef::Decimal(_) => ValueType::Decimal,
        }
    }

    /// Whether this is null.
    pub fn is_null(&self) -> bool {
        matches!(self, ValueRef::Null)
    }

    /// Rank of the type in the total order; numbers share one rank.
    fn rank(&self) -> u8 {
        match self {
            ValueRef::Null => 0,
            ValueRef::Bool(_) => 1,
            ValueRef::Int(_) | ValueRef::Float(_) | ValueRef::Decimal(_) => 2,
            ValueRef::Text(_) => 3,
            ValueRef::Timestamp(_) => 4,
        }
    }

    /// The total order described in the module docs.
    pub fn total_cmp(&self, other: &ValueRef<'_>) -> Ordering {
        let whole = |units: i64| Decimal { units, scale: 0 };
        match (self, other) {
            (ValueRef::Bool(a), ValueRef::Bool(b)) => a.cmp(b),
            (ValueRef::Int(a), ValueRef::Int(b)) => a.cmp(b),
            (ValueRef::Timestamp(a), ValueRef::Timestamp(b)) => a.cmp(b),
            (ValueRef::Text(a), ValueRef::Text(b)) => a.cmp(b),
            (ValueRef::Float(a), ValueRef::Float(b)) => a.total_cmp(b),
            (ValueRef::Decimal(a), ValueRef::Decimal(b)) => a.cmp_value(b),
            (ValueRef::Int(a), ValueRef::Decimal(b)) => whole(*a).cmp_value(b),
            (ValueRef::Decimal(a), ValueRef::Int(b)) => a.cmp_value(&whole(*b)),
            (ValueRef::Int(a), ValueRef::Float(b)) => whole(*a).cmp_float(*b),
            (ValueRef::Float(a), ValueRef::Int(b)) => whole(*b).cmp_float(*a).reverse(),
            (ValueRef::Decimal(a), ValueRef::Float(b)) => a.cmp_float(*b),
            (ValueRef::Float(a), ValueRef::Decimal(b)) => b.cmp_float(*a).reverse(),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    /// Adds `other` into a running sum of the same numeric type, exactly for ints and decimals.
    pub(crate) fn checked_add(&self, other: &ValueRef<'_>) -> Result<Value, QueryError> {
        let overflow = || QueryError::Overflow("a sum exceeds the 64-bit range".into());
        Ok(match (self, other) {
            (ValueRef::Null, v) | (v, ValueRef::Null) => v.to_owned(),
            (ValueRef::Int(a), ValueRef::Int(b)) => {
                Value::Int(a.checked_add(*b).ok_or_else(overflow)?)
            }
            (ValueRef::Float(a), ValueRef::Float(b)) => Value::Float(a + b),
            (ValueRef::Decimal(a), ValueRef::Decimal(b)) => {
                Value::Decimal(a.checked_add(b).ok_or_else(overflow)?)
            }
            (a, b) => {
                return Err(QueryError::Invalid(format!(
                    "cannot add {} to {}",
                    b.value_type().name(),
                    a.value_type().name()
                )));
            }
        })
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_ref().total_cmp(&other.as_ref())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(t) => f.write_str(t),
            Value::Timestamp(t) => {
                match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(*t) * 1_000) {
                    Ok(at) => write!(f, "{at}"),
                    Err(_) => write!(f, "{t}us"),
                }
            }
            Value::Decimal(d) => write!(f, "{d}"),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<Decimal> for Value {
    fn from(v: Decimal) -> Self {
        Value::Decimal(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_add_and_print_exactly() {
        let a = Decimal::parse("1234.50").unwrap();
        let b = Decimal::parse("-0.125").unwrap();
        assert_eq!(a.checked_add(&b).unwrap().to_string(), "1234.375");
        assert_eq!(Decimal::parse("-0.5").unwrap().to_string(), "-0.5");
        assert_eq!(
            Decimal::parse("2").unwrap(),
            Decimal::parse("2.000").unwrap()
        );
        assert!(Decimal::parse("1e5").is_none() && Decimal::parse(".").is_none());
        let max = Decimal::new(i64::MAX, 0).unwrap();
        assert!(max.checked_add(&Decimal::new(1, 0).unwrap()).is_none());
    }

    #[test]
    fn decimal_division_rounds_half_away_from_zero() {
        let d = Decimal::parse("10.00").unwrap();
        assert_eq!(d.div_round(3, 4).unwrap().to_string(), "3.3333");
        assert_eq!(
            Decimal::parse("-0.05")
                .unwrap()
                .div_round(1, 1)
                .unwrap()
                .to_string(),
            "-0.1"
        );
    }

    #[test]
    fn numbers_compare_exactly_across_types_and_the_order_is_transitive() {
        let big = 1i64 << 53;
        let float = Value::Float(big as f64);
        assert_eq!(Value::Int(big), float);
        assert!(float < Value::Int(big + 1), "no rounding through f64");
        let tenth = Value::Decimal(Decimal::parse("0.1").unwrap());
        assert!(
            tenth < Value::Float(0.1),
            "0.1 as a float is slightly more than 0.1"
        );
        assert!(Value::Float(-0.0) < Value::Int(0) && Value::Int(0) == Value::Float(0.0));
        assert!(Value::Int(i64::MAX) < Value::Float(f64::INFINITY));
        assert!(Value::Int(i64::MIN) > Value::Float(f64::NEG_INFINITY));
        assert!(Value::Int(i64::MAX) < Value::Float(9.3e18));
        assert!(Value::Int(i64::MIN) > Value::Float(-9.3e18));
        assert!(Value::Decimal(Decimal::new(1, 18).unwrap()) > Value::Float(f64::from_bits(1)));
        assert!(Value::Int(1) > Value::Float(0.999_999_999_999_999_9));
        assert_eq!(
            Value::Decimal(Decimal::parse("2.5").unwrap()),
            Value::Float(2.5)
        );
        // Transitive over a mixed set: sorting by it and checking every pair agrees.
        let mut values = vec![
            Value::Int(big + 1),
            float.clone(),
            Value::Int(big),
            Value::Decimal(Decimal::new(big * 10 + 5, 1).unwrap()),
            Value::Float(f64::NAN),
            Value::Float(-0.0),
            Value::Int(0),
            Value::Float(0.0),
            tenth,
            Value::Float(0.1),
            Value::Float(f64::NEG_INFINITY),
        ];
        values.sort();
        for (i, a) in values.iter().enumerate() {
            for b in &values[i..] {
                assert!(a <= b, "{a:?} then {b:?}");
            }
        }
    }

    #[test]
    fn numbers_compare_across_types() {
        let two = Value::Int(2);
        assert_eq!(two, Value::Decimal(Decimal::parse("2.00").unwrap()));
        assert!(Value::Null < two && two < Value::Text("a".into()));
        assert!(Value::Float(1.5) < two);
    }
}
