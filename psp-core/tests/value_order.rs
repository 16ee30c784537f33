//! The order of values is total and transitive across numeric types (ints, exact decimals,
//! floats with their infinities, NaNs and signed zeros), and exact: a merge keys groups by it and
//! sorts rows by it, so an order that rounded through floats would let one source's float key
//! change which group another source's records land in, depending on arrival.

use proptest::prelude::*;
use psp_core::query::{Decimal, Value};

fn number() -> impl Strategy<Value = Value> {
    let near = |base: i64| (-3i64..=3).prop_map(move |d| base.saturating_add(d));
    let edge_ints = prop_oneof![
        near(1 << 53),
        near(-(1 << 53)),
        near(i64::MAX),
        near(i64::MIN),
        -5i64..5,
        any::<i64>(),
    ];
    prop_oneof![
        edge_ints.clone().prop_map(Value::Int),
        (edge_ints, 0u8..=18).prop_map(|(u, s)| Value::Decimal(Decimal::new(u, s).unwrap())),
        prop_oneof![
            Just(f64::NAN),
            Just(-f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(0.0),
            Just(-0.0),
            Just((1u64 << 53) as f64),
            Just(9.223_372_036_854_776e18),
            Just(0.1),
            Just(f64::from_bits(1)),
            any::<f64>(),
            (-5i64..5).prop_map(|i| i as f64 / 4.0),
        ]
        .prop_map(Value::Float),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn the_order_is_antisymmetric_and_transitive(a in number(), b in number(), c in number()) {
        prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
        if a <= b && b <= c {
            prop_assert!(a <= c, "{:?} <= {:?} <= {:?}", a, b, c);
        }
        if a == b && b == c {
            prop_assert_eq!(&a, &c);
        }
    }

    #[test]
    fn ints_and_floats_compare_as_the_numbers_they_are(i in any::<i64>(), f in any::<f64>()) {
        prop_assume!(f.is_finite());
        // An exact reference: both sides as i128 numerators over a common power of two.
        let expected = if f.trunc() == f && f.abs() < 9.3e18 {
            (i as i128).cmp(&(f as i128))
        } else if f >= 9.3e18 {
            std::cmp::Ordering::Less
        } else if f <= -9.3e18 {
            std::cmp::Ordering::Greater
        } else {
            // f has a fraction: compare i with floor(f), ties broken by the fraction.
            let floor = f.floor() as i128;
            if (i as i128) <= floor { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater }
        };
        let expected = if i == 0 && f == 0.0 && f.is_sign_negative() {
            std::cmp::Ordering::Greater
        } else {
            expected
        };
        prop_assert_eq!(Value::Int(i).cmp(&Value::Float(f)), expected);
    }
}
