//! The stable twin of `payload_decode`: committed inputs, then random JSON
//! texts (well-formed values of every shape, then the same with bytes cut or
//! flipped) and random bytes.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[test]
fn committed_inputs_decode_or_fail_cleanly() {
    let inputs = tandem_fuzz::committed_inputs("payload_decode");
    assert!(inputs.len() >= 10, "the seed corpus is missing");
    for (path, bytes) in inputs {
        eprintln!("{}", path.display());
        tandem_fuzz::payload::run(&bytes);
    }
}

/// JSON text of arbitrary shape, biased towards the shapes the target's
/// types take (objects with their field names, small arrays, numbers at
/// the edges of integer types).
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| serde_json::to_string(&f).expect("encodes")),
        prop_oneof![Just(256), Just(-1), Just(4_294_967_296i64)].prop_map(|n| n.to_string()),
        "[a-z\\\\\"\\u{0}-\\u{7f}é😀]{0,8}"
            .prop_map(|s| serde_json::to_string(&s).expect("encodes")),
    ];
    let key = prop_oneof![
        Just("id"),
        Just("customer"),
        Just("lines"),
        Just("sku"),
        Just("quantity"),
        Just("price"),
        Just("total_cents"),
        Just("note"),
        Just("type"),
        Just("version"),
        Just("Card"),
        Just("Transfer"),
        Just("created"),
        Just("shipped"),
        Just("x"),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A JSON text, then maybe damaged: cut short or with one byte changed.
fn damaged_json() -> impl Strategy<Value = Vec<u8>> {
    (
        json_text(),
        any::<u8>(),
        any::<prop::sample::Index>(),
        0..3u8,
    )
        .prop_map(|(json, byte, at, how)| {
            let mut bytes = json.into_bytes();
            let i = at.index(bytes.len().max(1)).min(bytes.len());
            match how {
                0 => {}
                1 => bytes.truncate(i),
                _ if i < bytes.len() => bytes[i] = byte,
                _ => bytes.push(byte),
            }
            bytes
        })
}

#[test]
fn random_payloads_decode_or_fail_cleanly() {
    let mut runner = TestRunner::new(Config {
        cases: crate::cases(2_000),
        failure_persistence: None,
        ..Config::default()
    });
    let input = prop_oneof![4 => damaged_json(), 1 => prop::collection::vec(any::<u8>(), 0..64)];
    runner
        .run(&input, |bytes| {
            tandem_fuzz::payload::run(&bytes);
            Ok(())
        })
        .unwrap();
}
