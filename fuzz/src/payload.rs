//! The `payload_decode` target: arbitrary bytes as a recorded payload
//! (workflow input or output, step output, message, event), decoded into the
//! kinds of types workflows use, through the engine's own codec
//! ([`tandem::payload`]).
//!
//! Properties: decoding never panics; a failure is [`Error::Decode`] naming
//! the payload, classified [`ErrorKind::Invalid`] (so the engine fails the
//! workflow instead of retrying); a success re-encodes to JSON that decodes
//! to the same value and encodes to the same text again (so a replayed step
//! returns exactly what the first execution returned). Also the parsers of
//! the status and step-kind columns: only their own names parse.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tandem::storage::StepKind;
use tandem::{Error, ErrorKind, Status, payload};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<Line>,
    #[serde(default)]
    note: Option<String>,
    total_cents: i64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Line {
    sku: String,
    quantity: u32,
    price: f64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Payment {
    Card { last4: String, amount: i64 },
    Transfer(String, u64),
    Cash(i32),
    Refund,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    Created { id: u64 },
    Shipped { id: u64, carrier: Option<String> },
    Cancelled,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Loose {
    Number(i64),
    Text(String),
    Pair(bool, Option<u8>),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Envelope {
    version: u8,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

/// Decodes `json` as `T`, and checks the properties above.
fn check<T>(json: &str)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let what = || "recorded output of step 0 (\"fuzz\")".to_owned();
    match payload::decode::<T>(json, what) {
        Ok(value) => {
            let encoded = match payload::encode(&value, what) {
                Ok(encoded) => encoded,
                // Only a value holding NUL may be refused, and only so.
                Err(Error::UnstorablePayload { .. }) => {
                    let plain = serde_json::to_string(&value).expect("serializable");
                    let parsed: serde_json::Value =
                        serde_json::from_str(&plain).expect("valid JSON");
                    assert!(
                        holds_nul(&parsed),
                        "{value:?} refused as unstorable without a NUL"
                    );
                    return;
                }
                Err(e) => panic!("decoded {value:?} from {json:?} but cannot re-encode it: {e}"),
            };
            let again: T = payload::decode(&encoded, what).unwrap_or_else(|e| {
                panic!("re-encoded {value:?} as {encoded:?}, which does not decode: {e}")
            });
            assert_eq!(
                again, value,
                "{json:?} -> {encoded:?} decodes to another value"
            );
            let twice = payload::encode(&again, what).expect("encodes");
            assert_eq!(twice, encoded, "encoding is not stable for {json:?}");
        }
        Err(e) => {
            assert!(
                matches!(e, Error::Decode { .. }),
                "decoding {json:?} failed with {e:?}, not Error::Decode"
            );
            assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
            let message = e.to_string();
            assert!(
                message.starts_with("cannot decode recorded output of step 0 (\"fuzz\"): "),
                "the error does not name the payload: {message}"
            );
        }
    }
}

/// Whether any string of a JSON text, keys and values, duplicates
/// included, holds NUL: what PostgreSQL's jsonb refuses (its lexer refuses
/// `\u0000` even in a duplicate key's value that parsing then drops).
pub(crate) struct AnyNul(pub(crate) bool);

impl<'de> Deserialize<'de> for AnyNul {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyNulVisitor)
    }
}

struct AnyNulVisitor;

impl<'de> serde::de::Visitor<'de> for AnyNulVisitor {
    type Value = AnyNul;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON")
    }

    fn visit_str<E>(self, s: &str) -> Result<AnyNul, E> {
        Ok(AnyNul(s.contains('\0')))
    }

    fn visit_bool<E>(self, _: bool) -> Result<AnyNul, E> {
        Ok(AnyNul(false))
    }

    fn visit_i64<E>(self, _: i64) -> Result<AnyNul, E> {
        Ok(AnyNul(false))
    }

    fn visit_u64<E>(self, _: u64) -> Result<AnyNul, E> {
        Ok(AnyNul(false))
    }

    fn visit_f64<E>(self, _: f64) -> Result<AnyNul, E> {
        Ok(AnyNul(false))
    }

    fn visit_unit<E>(self) -> Result<AnyNul, E> {
        Ok(AnyNul(false))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<AnyNul, A::Error> {
        let mut nul = false;
        while let Some(AnyNul(n)) = seq.next_element()? {
            nul |= n;
        }
        Ok(AnyNul(nul))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<AnyNul, A::Error> {
        let mut nul = false;
        while let Some((AnyNul(k), AnyNul(v))) = map.next_entry()? {
            nul |= k | v;
        }
        Ok(AnyNul(nul))
    }
}

fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    // PostgreSQL hands back text, always UTF-8; invalid bytes are what a
    // corrupted row or a foreign writer could at worst look like once read.
    let json = String::from_utf8_lossy(data);
    let json = json.as_ref();
    // The engine's storability check (a byte scan, no parse) refuses valid
    // JSON exactly when jsonb would: when a string in it holds NUL.
    if let Ok(AnyNul(nul)) = serde_json::from_str::<AnyNul>(json) {
        let refused = payload::check_storable(json, || "payload".to_owned()).is_err();
        assert_eq!(refused, nul, "check_storable on {json:?}");
    }
    check::<serde_json::Value>(json);
    check::<()>(json);
    check::<bool>(json);
    check::<u8>(json);
    check::<u32>(json);
    check::<i64>(json);
    check::<u128>(json);
    check::<f64>(json);
    check::<char>(json);
    check::<String>(json);
    check::<Option<u16>>(json);
    check::<Vec<i32>>(json);
    check::<(i32, String, bool)>(json);
    check::<BTreeMap<String, i64>>(json);
    check::<Order>(json);
    check::<Payment>(json);
    check::<Event>(json);
    check::<Loose>(json);
    check::<Envelope>(json);
    check::<Vec<Payment>>(json);
    check::<Option<Box<Order>>>(json);

    // The status and step-kind columns are text the engine parses back.
    let text = json.trim_matches('"');
    if let Some(status) = Status::parse(text) {
        assert_eq!(status.as_str(), text);
    }
    if let Some(kind) = StepKind::parse(text) {
        assert_eq!(kind.as_str(), text);
    }
}
